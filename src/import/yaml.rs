//! A YAML document as a tree of [`Node`]s that remember their line and column.
//!
//! Built on `saphyr_parser`'s event stream: this module resolves anchors and aliases, merge keys
//! (`<<: *a` and `<<: [*a, *b]`, which YAML 1.2 parsers leave to the application), and plain
//! scalars into null, booleans, integers, floats and strings (the core schema, as compose reads
//! it). It reports syntax errors and duplicate keys with their line and column. It knows nothing
//! about compose.

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Span};

/// Alias expansion may not grow the tree past this many nodes ("billion laughs").
const MAX_NODES: usize = 1_000_000;

/// One value of the document and where it starts (1-based line and column; 0 when unknown).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    /// A scalar: its text as written (after YAML unescaping) and what it resolved to.
    Scalar(String, Kind),
    Seq(Vec<Node>),
    /// Entries in document order; merged entries take the place of their `<<` key.
    Map(Vec<(String, Node)>),
}

/// What a non-null scalar resolved to. Quoted and block scalars are always strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int,
    Float,
    Str,
}

/// A syntax error, a duplicate key or a bad alias, with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Node {
    pub fn new(value: Value) -> Node {
        Node {
            value,
            line: 0,
            column: 0,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The text of any non-null scalar (`4`, `true` and `"x"` alike).
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// A boolean, written as a YAML boolean or as the string "true" or "false".
    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Scalar(s, Kind::Bool | Kind::Str) => match s.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A non-negative integer, written as a number or as a string of digits.
    pub fn as_u64(&self) -> Option<u64> {
        let s = self.text()?.trim();
        s.parse::<u64>().ok()
    }

    /// A number, written as one or as a string.
    pub fn as_f64(&self) -> Option<f64> {
        self.text()?.trim().parse::<f64>().ok()
    }

    pub fn seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn map(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.map()?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A short description of the value's type, for notes ("a list", "a mapping").
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar(..) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parses the first document of `text`; an empty stream is a null node.
pub(crate) fn parse(text: &str) -> Result<Node, YamlError> {
    let mut b = Builder {
        anchors: HashMap::new(),
        stack: Vec::new(),
        root: None,
        nodes: 0,
        documents: 0,
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        b.event(event, span)?;
    }
    Ok(b.root.unwrap_or(Node::new(Value::Null)))
}

/// A collection being built, with the anchor to record when it ends.
enum Frame {
    Seq {
        anchor: usize,
        at: Marker,
        items: Vec<Node>,
    },
    Map {
        anchor: usize,
        at: Marker,
        /// Keys and values as they come; `pending` holds a key waiting for its value.
        entries: Vec<(Node, Node)>,
        pending: Option<Node>,
    },
}

struct Builder {
    anchors: HashMap<usize, Node>,
    stack: Vec<Frame>,
    root: Option<Node>,
    nodes: usize,
    documents: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(error_at(
                        span.start,
                        "the file holds more than one YAML document (`---`); keep one".into(),
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.map(|t| t.suffix.clone());
                let value = resolve_scalar(&text, style, tag.as_deref());
                let node = at(value, span.start);
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node, span.start)?;
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    return Err(error_at(
                        span.start,
                        "alias to an anchor that is not defined before it".into(),
                    ));
                };
                self.nodes += count(&node);
                if self.nodes > MAX_NODES {
                    return Err(error_at(
                        span.start,
                        format!(
                            "the document expands to more than {MAX_NODES} values through aliases"
                        ),
                    ));
                }
                self.push(node, span.start)?;
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                anchor,
                at: span.start,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                anchor,
                at: span.start,
                entries: Vec::new(),
                pending: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = self
                    .stack
                    .pop()
                    .expect("the parser balances collection start and end events");
                let (node, anchor, start) = match frame {
                    Frame::Seq {
                        anchor,
                        at: m,
                        items,
                    } => (at(Value::Seq(items), m), anchor, m),
                    Frame::Map {
                        anchor,
                        at: m,
                        entries,
                        ..
                    } => (at(Value::Map(merge(entries)?), m), anchor, m),
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node, start)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// Adds a finished node to the collection being built, or makes it the root.
    fn push(&mut self, node: Node, start: Marker) -> Result<(), YamlError> {
        self.nodes += 1;
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries, pending, ..
            }) => match pending.take() {
                None => {
                    if !matches!(node.value, Value::Scalar(..) | Value::Null) {
                        return Err(error_at(
                            start,
                            format!("mapping keys must be scalars, found {}", node.kind_name()),
                        ));
                    }
                    *pending = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }
}

fn at(value: Value, m: Marker) -> Node {
    Node {
        value,
        line: m.line(),
        column: m.col() + 1,
    }
}

fn error_at(m: Marker, message: String) -> YamlError {
    YamlError {
        line: m.line(),
        column: m.col() + 1,
        message,
    }
}

fn count(node: &Node) -> usize {
    1 + match &node.value {
        Value::Seq(items) => items.iter().map(count).sum(),
        Value::Map(entries) => entries.iter().map(|(_, v)| 1 + count(v)).sum(),
        _ => 0,
    }
}

/// Builds a mapping's entries: duplicate keys are errors, and each `<<` key is replaced by the
/// entries of the mapping (or list of mappings) it names that the mapping does not set itself.
/// Among several merged mappings the first one that has a key wins, as the merge key spec says.
fn merge(entries: Vec<(Node, Node)>) -> Result<Vec<(String, Node)>, YamlError> {
    let key_text = |k: &Node| k.text().unwrap_or("").to_string();
    let mut own: HashMap<String, (usize, usize)> = HashMap::new();
    for (k, _) in &entries {
        if is_merge_key(k) {
            continue;
        }
        let name = key_text(k);
        if let Some((line, column)) = own.insert(name.clone(), (k.line, k.column)) {
            return Err(YamlError {
                line: k.line,
                column: k.column,
                message: format!("duplicate key {name:?} (first at line {line}, column {column})"),
            });
        }
    }
    let mut out: Vec<(String, Node)> = Vec::with_capacity(entries.len());
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (k, v) in entries {
        if !is_merge_key(&k) {
            let name = key_text(&k);
            seen.insert(name.clone());
            out.push((name, v));
            continue;
        }
        let sources: Vec<Node> = match v.value {
            Value::Map(_) => vec![v],
            Value::Seq(items) => items,
            _ => {
                return Err(YamlError {
                    line: v.line,
                    column: v.column,
                    message: format!(
                        "the merge key `<<` takes a mapping or a list of mappings, found {}",
                        v.kind_name()
                    ),
                })
            }
        };
        for source in sources {
            let Value::Map(merged) = source.value else {
                return Err(YamlError {
                    line: source.line,
                    column: source.column,
                    message: format!(
                        "the merge key `<<` takes mappings, found {}",
                        source.kind_name()
                    ),
                });
            };
            for (name, value) in merged {
                if own.contains_key(&name) || seen.contains(&name) {
                    continue;
                }
                seen.insert(name.clone());
                out.push((name, value));
            }
        }
    }
    Ok(out)
}

fn is_merge_key(k: &Node) -> bool {
    matches!(&k.value, Value::Scalar(s, Kind::Str) if s == "<<")
}

/// The core schema: plain `null`, `~` and empty are null; `true`/`false` booleans; decimal,
/// `0x` and `0o` integers; decimal floats and `.inf`/`.nan`. Quoted and block scalars, and
/// `!!str`, are strings.
fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> Value {
    let s = |k| Value::Scalar(text.to_string(), k);
    if style != ScalarStyle::Plain || tag == Some("str") {
        return s(Kind::Str);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => return s(Kind::Bool),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "-.inf" | "-.Inf" | ".nan" | ".NaN" | ".NAN" => {
            return s(Kind::Float)
        }
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let is_int = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        || text
            .strip_prefix("0x")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
        || text
            .strip_prefix("0o")
            .is_some_and(|o| !o.is_empty() && o.bytes().all(|b| (b'0'..=b'7').contains(&b)));
    if is_int {
        return s(Kind::Int);
    }
    let is_float = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.parse::<f64>().is_ok();
    if is_float {
        return s(Kind::Float);
    }
    s(Kind::Str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(n: &Node) -> String {
        match &n.value {
            Value::Null => "~".into(),
            Value::Scalar(s, _) => s.clone(),
            Value::Seq(items) => format!(
                "[{}]",
                items.iter().map(text_of).collect::<Vec<_>>().join(", ")
            ),
            Value::Map(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", text_of(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Anchors, aliases and merge keys resolve the way compose files use them: own keys win
    /// over merged ones, the first merged mapping wins over later ones, and merged entries
    /// take the place of the `<<` key.
    #[test]
    fn anchors_aliases_and_merge_keys() {
        let cases: &[(&str, &str)] = &[
            ("a: &x 1\nb: *x", "{a: 1, b: 1}"),
            (
                "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3",
                "{base: {x: 1, y: 2}, c: {x: 1, y: 3}}",
            ),
            ("c:\n  y: 3\n  <<: *b\nbase: &b {x: 1}", "error"),
            (
                "a: &a {x: 1, z: 1}\nb: &b {x: 2, y: 2}\nc:\n  <<: [*a, *b]\n  k: 0",
                "{a: {x: 1, z: 1}, b: {x: 2, y: 2}, c: {x: 1, z: 1, y: 2, k: 0}}",
            ),
            ("l: &l [1, 2]\nm: *l", "{l: [1, 2], m: [1, 2]}"),
            (
                "x-r: &r\n  restart: always\ns:\n  image: a\n  <<: *r",
                "{x-r: {restart: always}, s: {image: a, restart: always}}",
            ),
            ("s:\n  <<: {a: 1}\n  <<: {b: 2}", "{s: {a: 1, b: 2}}"),
            ("s:\n  <<: 3", "error"),
        ];
        for (src, want) in cases {
            let got = match parse(src) {
                Ok(n) => text_of(&n),
                Err(_) => "error".into(),
            };
            assert_eq!(&got, want, "{src}");
        }
    }

    /// Plain scalars resolve by the core schema; quoted ones stay strings.
    #[test]
    fn scalars() {
        let doc = parse("a: 1\nb: '1'\nc: 1.5\nd: true\ne: ~\nf:\ng: 80:80\nh: 0x1F\ni: 1e3\nj: yes\nk: !!str 5").unwrap();
        let kinds: Vec<(String, Option<Kind>)> = doc
            .map()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let kind = match &v.value {
                    Value::Scalar(_, kind) => Some(*kind),
                    _ => None,
                };
                (k.clone(), kind)
            })
            .collect();
        let want = [
            ("a", Some(Kind::Int)),
            ("b", Some(Kind::Str)),
            ("c", Some(Kind::Float)),
            ("d", Some(Kind::Bool)),
            ("e", None),
            ("f", None),
            ("g", Some(Kind::Str)),
            ("h", Some(Kind::Int)),
            ("i", Some(Kind::Float)),
            ("j", Some(Kind::Str)),
            ("k", Some(Kind::Str)),
        ];
        for ((k, kind), (wk, wkind)) in kinds.iter().zip(want) {
            assert_eq!((k.as_str(), *kind), (wk, wkind));
        }
        assert_eq!(doc.get("c").and_then(Node::text), Some("1.5"));
    }

    /// Errors carry the line and column of the problem.
    #[test]
    fn errors_have_positions() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            ("a: 1\nb: [1, 2\n", (3, 1), ""),
            ("a: 1\na: 2\n", (2, 1), "duplicate key \"a\""),
            ("a: *nope\n", (1, 4), "anchor"),
            ("a:\n  b: 1\n c: 2\n", (3, 2), ""),
            ("a: 1\n---\nb: 2\n", (2, 1), "more than one YAML document"),
        ];
        for (src, (line, column), contains) in cases {
            let e = parse(src).unwrap_err();
            assert_eq!((e.line, e.column), (*line, *column), "{src:?}: {e:?}");
            assert!(e.message.contains(contains), "{e:?}");
        }
    }

    /// Aliases that would expand without bound are refused.
    #[test]
    fn billion_laughs() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            src.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let e = parse(&src).unwrap_err();
        assert!(e.message.contains("expands"), "{e:?}");
    }
}
