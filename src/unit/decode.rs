//! A small decoding layer over toml's spanned [`DeTable`] tree.
//!
//! A [`Table`] is a cursor over one TOML table: section decoders [`take`](Table::take) the keys
//! they know, read them with the typed getters of [`Field`] (which report type errors with the
//! value's position), and finally call [`Table::end`], which reports every key nobody took as
//! unknown, with a "did you mean" hint built from the keys that were asked for.
//! Problems go to the [`Decoder`], which collects all of them; nothing here stops at the first one.
//! New sections (`[container]`, `[[route]]`, `[deploy]`) plug in as one more function over a `Table`.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeInteger, DeTable, DeValue};
use toml::Spanned;

use super::error::{LineIndex, Pos, UnitError};
use super::file::KEYS;
use super::hint;
use super::quantity::{self, format_duration, format_size, parse_duration, parse_size};

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Collects the problems found while decoding one file.
pub(crate) struct Decoder<'s> {
    src: &'s str,
    file: PathBuf,
    lines: LineIndex,
    /// Problems with the byte offset they are reported at, for sorting.
    errors: Vec<(usize, UnitError)>,
    /// Schema paths of every key a decoder asked for (`profile.<name>.env`), to check [`KEYS`].
    requested: BTreeSet<String>,
}

impl<'s> Decoder<'s> {
    pub(crate) fn new(file: &Path, src: &'s str) -> Self {
        Decoder {
            src,
            file: file.to_path_buf(),
            lines: LineIndex::new(src),
            errors: Vec::new(),
            requested: BTreeSet::new(),
        }
    }

    pub(crate) fn src(&self) -> &'s str {
        self.src
    }

    pub(crate) fn pos(&self, offset: usize) -> Pos {
        self.lines.pos(self.src, offset)
    }

    pub(crate) fn error(
        &mut self,
        at: usize,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let e = UnitError::at(&self.file, self.pos(at), key, message, hint);
        self.errors.push((at, e));
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn requested(&self) -> &BTreeSet<String> {
        &self.requested
    }

    /// Every problem, sorted by position (ties keep the order they were found in).
    pub(crate) fn into_errors(mut self) -> Vec<UnitError> {
        self.errors.sort_by_key(|(at, _)| *at);
        self.errors.into_iter().map(|(_, e)| e).collect()
    }
}

/// How a table was written, which decides how problems with it are worded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableKind {
    /// The document itself.
    Root,
    /// `[name]` or `[[name]]`.
    Header,
    /// `name = { ... }`.
    Inline,
    /// Implied by a dotted key (`name.key = 1`) or a deeper header (`[name.sub]`).
    Dotted,
}

fn table_kind(src: &str, span: &Range<usize>) -> TableKind {
    match src.as_bytes().get(span.start) {
        Some(b'[') => TableKind::Header,
        Some(b'{') => TableKind::Inline,
        _ if span.is_empty() && span.start == 0 => TableKind::Root,
        _ => TableKind::Dotted,
    }
}

/// `path.key`, quoting `key` as TOML would when it is not a bare key (`env."MY-VAR"` stays readable).
pub(crate) fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '<' || c == '>');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

struct Entry<'a, 'i> {
    name: &'a str,
    key_span: Range<usize>,
    value: &'a Value<'i>,
    taken: bool,
}

/// A cursor over one TOML table; see the module docs.
pub(crate) struct Table<'a, 'i> {
    /// Dotted key path shown in errors (`profile.staging`).
    path: String,
    /// Path with dynamic parts replaced (`profile.<name>`), used for hints and [`KEYS`].
    schema: String,
    span: Range<usize>,
    kind: TableKind,
    entries: Vec<Entry<'a, 'i>>,
    known: Vec<&'static str>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn root(d: &Decoder<'_>, root: &'a Spanned<DeTable<'i>>) -> Self {
        let mut t = Self::new(d, String::new(), String::new(), root.span(), root.get_ref());
        t.kind = TableKind::Root;
        t
    }

    fn new(
        d: &Decoder<'_>,
        path: String,
        schema: String,
        span: Range<usize>,
        table: &'a DeTable<'i>,
    ) -> Self {
        let mut entries: Vec<Entry<'a, 'i>> = table
            .iter()
            .map(|(k, v)| Entry {
                name: k.get_ref().as_ref(),
                key_span: k.span(),
                value: v,
                taken: false,
            })
            .collect();
        // Source order, so that maps such as `depends_on` keep the order they were written in.
        entries.sort_by_key(|e| e.key_span.start);
        let kind = table_kind(d.src, &span);
        Table {
            path,
            schema,
            span,
            kind,
            entries,
            known: Vec::new(),
        }
    }

    /// Byte offset of the table's header (or of its key, or of `{`), where missing keys are reported.
    pub(crate) fn at(&self) -> usize {
        self.span.start
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Takes `key` out of the table, if present; either way `key` becomes a known key of the table.
    pub(crate) fn take(&mut self, d: &mut Decoder<'_>, key: &'static str) -> Option<Field<'a, 'i>> {
        self.known.push(key);
        d.requested.insert(join(&self.schema, key));
        let entry = self
            .entries
            .iter_mut()
            .find(|e| !e.taken && e.name == key)?;
        entry.taken = true;
        Some(Field {
            name: entry.name,
            path: join(&self.path, key),
            schema: join(&self.schema, key),
            key_span: entry.key_span.clone(),
            value: entry.value,
        })
    }

    /// Takes every remaining entry, for tables that are maps (`[env]`, `depends_on`, `[profile]`).
    pub(crate) fn take_rest(&mut self) -> Vec<Field<'a, 'i>> {
        let schema = join(&self.schema, "<name>");
        self.entries
            .iter_mut()
            .filter(|e| !e.taken)
            .map(|e| {
                e.taken = true;
                Field {
                    name: e.name,
                    path: join(&self.path, e.name),
                    schema: schema.clone(),
                    key_span: e.key_span.clone(),
                    value: e.value,
                }
            })
            .collect()
    }

    /// Reports that required `key` is missing, at the table's header; unless the table holds an
    /// unknown key that is probably a misspelling of it, which [`Table::end`] reports instead.
    pub(crate) fn missing(
        &self,
        d: &mut Decoder<'_>,
        key: &'static str,
        message: String,
        hint: Option<String>,
    ) {
        let misspelled = self.entries.iter().filter(|e| !e.taken).any(|e| {
            hint::closest(e.name, &[key]).is_some()
                || hint::unknown_key_hint(&self.schema, e.name, &[key])
                    .is_some_and(|h| h.contains(&format!("`{key}`")))
        });
        if !misspelled {
            d.error(self.at(), join(&self.path, key), message, hint);
        }
    }

    /// Reports every entry that was not taken as an unknown key.
    pub(crate) fn end(self, d: &mut Decoder<'_>) {
        let mut known = self.known.clone();
        known.sort_unstable();
        known.dedup();
        for e in self.entries.iter().filter(|e| !e.taken) {
            let path = join(&self.path, e.name);
            let is_section = matches!(e.value.get_ref(), DeValue::Table(_))
                && table_kind(d.src, &e.value.span()) == TableKind::Header;
            let message = if is_section {
                format!("unknown section [{path}]")
            } else if self.kind == TableKind::Root {
                format!("unknown key `{}`", e.name)
            } else {
                format!("unknown key `{}` in [{}]", e.name, self.path)
            };
            let top_level_section = KEYS
                .iter()
                .find(|k| hint::normalize(k) == hint::normalize(e.name) && !k.contains('.'));
            let hint = match top_level_section {
                Some(k) if is_section && self.kind != TableKind::Root => Some(format!(
                    "[{k}] is a section of its own: write [{k}], not [{path}]"
                )),
                _ => hint::unknown_key_hint(&self.schema, e.name, &known).map(|h| {
                    // Hints name tables by schema (`profile.<name>`); show the user's own name.
                    let h = if self.schema.contains('<') {
                        h.replace(&self.schema, &self.path)
                    } else {
                        h
                    };
                    if is_section {
                        // Suggest the section spelling for a misspelled section.
                        h.replace("did you mean `", "did you mean [")
                            .replace("`?", "]?")
                    } else {
                        h
                    }
                }),
            };
            d.error(e.key_span.start, path, message, hint);
        }
    }
}

/// One key of a table with its value, read with the typed getters below.
pub(crate) struct Field<'a, 'i> {
    /// The key itself (`kill_timeout`).
    pub(crate) name: &'a str,
    /// Dotted path shown in errors (`process.kill_timeout`).
    pub(crate) path: String,
    pub(crate) schema: String,
    pub(crate) key_span: Range<usize>,
    pub(crate) value: &'a Value<'i>,
}

/// A string item of an array, with its position and key path (`process.args[1]`).
pub(crate) struct Item {
    pub(crate) value: String,
    pub(crate) at: usize,
    pub(crate) path: String,
}

/// Keys whose PM2 counterpart is a number of milliseconds.
const PM2_MILLISECONDS: &[&str] = &["kill_timeout", "listen_timeout", "min_uptime", "delay"];

impl<'a, 'i> Field<'a, 'i> {
    /// Byte offset of the value.
    pub(crate) fn at(&self) -> usize {
        self.value.span().start
    }

    /// The value's kind and, for scalars, the value itself: `integer 5`, `string "x"`, `an array`.
    pub(crate) fn found(&self, d: &Decoder<'_>) -> String {
        describe(d.src(), self.value)
    }

    /// Reports "expected {expected}, found {what the value is}" at the value.
    pub(crate) fn type_error(&self, d: &mut Decoder<'_>, expected: &str, hint: Option<String>) {
        let message = format!("expected {expected}, found {}", self.found(d));
        d.error(self.at(), self.path.clone(), message, hint);
    }

    /// Reports a problem with the value at the value.
    pub(crate) fn error(
        &self,
        d: &mut Decoder<'_>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        d.error(self.at(), self.path.clone(), message, hint);
    }

    /// Reports a problem with the key at the key.
    pub(crate) fn key_error(
        &self,
        d: &mut Decoder<'_>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        d.error(self.key_span.start, self.path.clone(), message, hint);
    }

    pub(crate) fn str(&self, d: &mut Decoder<'_>, expected: &str) -> Option<&'a str> {
        match self.value.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                let number = matches!(
                    self.value.get_ref(),
                    DeValue::Integer(_) | DeValue::Float(_)
                );
                let hint = scalar_text(self.value)
                    .filter(|_| number)
                    .map(|t| format!("write \"{t}\""));
                self.type_error(d, expected, hint);
                None
            }
        }
    }

    /// A string that can be passed to a process (no NUL character).
    pub(crate) fn string(&self, d: &mut Decoder<'_>) -> Option<String> {
        let s = self.str(d, "a string")?;
        if s.contains('\0') {
            self.error(d, "must not contain a NUL character", None);
            return None;
        }
        Some(s.to_string())
    }

    pub(crate) fn non_empty_string(&self, d: &mut Decoder<'_>) -> Option<String> {
        let s = self.string(d)?;
        if s.trim().is_empty() {
            self.error(d, format!("`{}` must not be empty", self.name), None);
            return None;
        }
        Some(s)
    }

    pub(crate) fn bool(&self, d: &mut Decoder<'_>) -> Option<bool> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            DeValue::String(s) if matches!(s.as_ref(), "true" | "false") => {
                self.type_error(
                    d,
                    "true or false",
                    Some(format!("write {s} without quotes")),
                );
                None
            }
            _ => {
                self.type_error(d, "true or false", None);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn int(&self, d: &mut Decoder<'_>, min: i128, max: i128) -> Option<i128> {
        // u32::MAX is "no limit" for counts; "from 1 to 4294967295" would only confuse.
        let unbounded = max >= i128::from(u32::MAX);
        let expected = match (unbounded, min) {
            (true, 0) => "a non-negative integer".to_string(),
            (true, _) => format!("an integer of at least {min}"),
            (false, _) => format!("an integer from {min} to {max}"),
        };
        match self.value.get_ref() {
            DeValue::Integer(i) => {
                let n = int_value(i).filter(|n| (min..=max).contains(n));
                if n.is_none() {
                    let message = match (unbounded, min) {
                        (true, 0) if int_value(i).is_some_and(|n| n < 0) => {
                            format!("`{}` must not be negative, found {i}", self.name)
                        }
                        (true, _) if int_value(i).is_some_and(|n| n < min) => {
                            format!("`{}` must be at least {min}, found {i}", self.name)
                        }
                        (true, _) => format!("`{}` is too large, found {i}", self.name),
                        (false, _) => {
                            format!("`{}` must be from {min} to {max}, found {i}", self.name)
                        }
                    };
                    self.error(d, message, None);
                }
                n
            }
            DeValue::String(s) if s.trim().parse::<i128>().is_ok() => {
                let hint = Some(format!("write {} without quotes", s.trim()));
                self.type_error(d, &expected, hint);
                None
            }
            _ => {
                self.type_error(d, &expected, None);
                None
            }
        }
    }

    pub(crate) fn u32(&self, d: &mut Decoder<'_>, min: u32, max: u32) -> Option<u32> {
        self.int(d, min.into(), max.into())
            .and_then(|n| u32::try_from(n).ok())
    }

    /// A duration string (`"5s"`); a bare number gets a hint with the units spelled out.
    pub(crate) fn duration(&self, d: &mut Decoder<'_>) -> Option<Duration> {
        let expected = "a duration string such as \"5s\"";
        let pm2 = PM2_MILLISECONDS.contains(&self.name);
        match self.value.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(v) => Some(v),
                Err(message) => {
                    let hint = if let Some(fixed) = quantity::suggest_duration(s) {
                        format!("write \"{fixed}\"")
                    } else if let Ok(n) = s.trim().parse::<u64>() {
                        number_duration_hint(n, pm2)
                    } else if s
                        .trim()
                        .parse::<f64>()
                        .is_ok_and(|x| x.is_finite() && x >= 0.0)
                    {
                        format!("write \"{0}s\" or \"{0}ms\"", s.trim())
                    } else {
                        "use a number and a unit, e.g. \"5s\", \"250ms\", \"1m30s\"".into()
                    };
                    self.error(d, message, Some(hint));
                    None
                }
            },
            DeValue::Integer(i) => {
                let hint = int_value(i)
                    .and_then(|n| u64::try_from(n).ok())
                    .map(|n| number_duration_hint(n, pm2));
                self.type_error(d, expected, hint);
                None
            }
            DeValue::Float(f) => {
                let hint = Some(format!("write \"{f}s\" or \"{f}m\""));
                self.type_error(d, expected, hint);
                None
            }
            _ => {
                self.type_error(d, expected, None);
                None
            }
        }
    }

    /// A duration that is not zero.
    pub(crate) fn positive_duration(&self, d: &mut Decoder<'_>) -> Option<Duration> {
        let v = self.duration(d)?;
        if v.is_zero() {
            self.error(d, format!("`{}` must be longer than 0s", self.name), None);
            return None;
        }
        Some(v)
    }

    /// A size string (`"512MiB"`).
    pub(crate) fn size(&self, d: &mut Decoder<'_>) -> Option<u64> {
        let expected = "a size string such as \"512MiB\"";
        match self.value.get_ref() {
            DeValue::String(s) => match parse_size(s) {
                Ok(v) => Some(v),
                Err(message) => {
                    let hint = match quantity::suggest_size(s) {
                        Some(fixed) => format!("write \"{fixed}\""),
                        None => {
                            "use a number and a unit, e.g. \"512MiB\", \"1G\", \"100MB\"".into()
                        }
                    };
                    self.error(d, message, Some(hint));
                    None
                }
            },
            DeValue::Integer(i) => {
                let hint = int_value(i).and_then(|n| u64::try_from(n).ok()).map(|n| {
                    let unit = format_size(n);
                    if unit.ends_with("iB") {
                        format!("write \"{unit}\" (or \"{n}\" for bytes)")
                    } else {
                        format!("write \"{n}\" for bytes, or a unit such as \"512MiB\"")
                    }
                });
                self.type_error(d, expected, hint);
                None
            }
            _ => {
                self.type_error(d, expected, None);
                None
            }
        }
    }

    /// One of `accepted`; anything else is reported with the accepted list and, when close, a correction.
    pub(crate) fn choice(
        &self,
        d: &mut Decoder<'_>,
        what: &str,
        accepted: &[&'static str],
        aliases: &[(&str, &str)],
    ) -> Option<&'static str> {
        let list = accepted.join(", ");
        let DeValue::String(s) = self.value.get_ref() else {
            let quoted: Vec<String> = accepted.iter().map(|a| format!("\"{a}\"")).collect();
            let hint = match self.value.get_ref() {
                DeValue::Boolean(b) => hint::choice_hint(&b.to_string(), accepted, aliases),
                _ => None,
            };
            self.type_error(d, &format!("one of {}", quoted.join(", ")), hint);
            return None;
        };
        if let Some(v) = accepted.iter().find(|a| **a == s.as_ref()) {
            return Some(v);
        }
        let message = format!("invalid {what} {s:?}; expected one of: {list}");
        self.error(d, message, hint::choice_hint(s, accepted, aliases));
        None
    }

    /// An array of strings (each item checked on its own, so every bad item is reported).
    pub(crate) fn strings(&self, d: &mut Decoder<'_>, expected: &str) -> Option<Vec<Item>> {
        let DeValue::Array(items) = self.value.get_ref() else {
            let hint = match self.value.get_ref() {
                DeValue::String(s) => {
                    let words: Vec<String> =
                        s.split_whitespace().map(|w| format!("{w:?}")).collect();
                    Some(format!("write [{}]", words.join(", ")))
                }
                _ => None,
            };
            self.type_error(d, expected, hint);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.path);
            match item.get_ref() {
                DeValue::String(s) if s.contains('\0') => {
                    d.error(
                        item.span().start,
                        path,
                        "must not contain a NUL character",
                        None,
                    );
                    ok = false;
                }
                DeValue::String(s) => out.push(Item {
                    value: s.to_string(),
                    at: item.span().start,
                    path,
                }),
                _ => {
                    let hint = scalar_text(item).map(|t| format!("write \"{t}\""));
                    let message = format!("expected a string, found {}", describe(d.src(), item));
                    d.error(item.span().start, path, message, hint);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A string or an array of strings (`env_file`).
    pub(crate) fn string_or_strings(
        &self,
        d: &mut Decoder<'_>,
        expected: &str,
    ) -> Option<Vec<Item>> {
        match self.value.get_ref() {
            DeValue::String(_) => self.string(d).map(|value| {
                vec![Item {
                    value,
                    at: self.at(),
                    path: self.path.clone(),
                }]
            }),
            DeValue::Array(_) => self.strings(d, expected),
            _ => {
                self.type_error(d, expected, None);
                None
            }
        }
    }

    /// An array of tables (`[[route]]`), one cursor per element; the elements' schema is the
    /// array's own key path, so their keys are `route.host`, not `route[0].host`.
    pub(crate) fn tables(
        &self,
        d: &mut Decoder<'_>,
        hint: Option<String>,
    ) -> Option<Vec<Table<'a, 'i>>> {
        let DeValue::Array(items) = self.value.get_ref() else {
            self.type_error(d, &format!("an array of tables [[{}]]", self.path), hint);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => out.push(Table::new(
                    d,
                    format!("{}[{i}]", self.path),
                    self.schema.clone(),
                    item.span(),
                    t,
                )),
                _ => {
                    let message = format!("expected a table, found {}", describe(d.src(), item));
                    d.error(
                        item.span().start,
                        format!("{}[{i}]", self.path),
                        message,
                        hint.clone(),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// The value as a table cursor.
    pub(crate) fn table(&self, d: &mut Decoder<'_>) -> Option<Table<'a, 'i>> {
        self.table_with(d, None)
    }

    /// The value as a table cursor, with a hint for values of other types.
    pub(crate) fn table_with(
        &self,
        d: &mut Decoder<'_>,
        hint: Option<String>,
    ) -> Option<Table<'a, 'i>> {
        match self.value.get_ref() {
            DeValue::Table(t) => Some(Table::new(
                d,
                self.path.clone(),
                self.schema.clone(),
                self.value.span(),
                t,
            )),
            DeValue::Array(a) if is_array_of_tables(self.value, a) => {
                let hint = Some(format!("write [{}] with single brackets", self.path));
                self.type_error(d, &format!("a table [{}]", self.path), hint);
                None
            }
            _ => {
                self.type_error(d, &format!("a table [{}]", self.path), hint);
                None
            }
        }
    }

    /// A scalar (string, number, boolean, datetime) as text; `None` for arrays and tables.
    pub(crate) fn scalar_string(&self) -> Option<String> {
        match self.value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => scalar_text(self.value),
        }
    }
}

/// A hint for a duration written as a bare number.
fn number_duration_hint(n: u64, pm2_milliseconds: bool) -> String {
    if pm2_milliseconds {
        let canonical = format_duration(Duration::from_millis(n));
        if canonical == format!("{n}ms") {
            format!("PM2 gives milliseconds; write \"{n}ms\", or \"{n}s\" if you meant seconds")
        } else {
            format!("PM2 gives milliseconds; write \"{n}ms\" or \"{canonical}\"")
        }
    } else {
        format!("write \"{n}s\" or \"{n}ms\"")
    }
}

/// The integer's value; `None` only when it does not fit in an `i128`.
pub(crate) fn int_value(i: &DeInteger<'_>) -> Option<i128> {
    i128::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
}

/// Numbers, booleans and datetimes as plain text (`5`, `1.5`, `true`); `None` for other values.
pub(crate) fn scalar_text(v: &Value<'_>) -> Option<String> {
    match v.get_ref() {
        DeValue::Integer(i) => Some(int_value(i).map_or_else(|| i.to_string(), |n| n.to_string())),
        DeValue::Float(f) => Some(
            f.as_str()
                .replace('_', "")
                .parse::<f64>()
                .map_or_else(|_| f.to_string(), |x| x.to_string()),
        ),
        DeValue::Boolean(b) => Some(b.to_string()),
        DeValue::Datetime(dt) => Some(dt.to_string()),
        DeValue::String(_) | DeValue::Array(_) | DeValue::Table(_) => None,
    }
}

/// `integer 5`, `string "x"`, `an array`, ... for "expected X, found Y" messages.
pub(crate) fn describe(src: &str, v: &Value<'_>) -> String {
    match v.get_ref() {
        DeValue::String(s) => {
            let mut q = format!("{s:?}");
            if q.chars().count() > 60 {
                q = q.chars().take(56).collect::<String>() + "...\"";
            }
            format!("string {q}")
        }
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(dt) => format!("datetime {dt}"),
        DeValue::Array(a) if is_array_of_tables(v, a) => "an array of tables".into(),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => match table_kind(src, &v.span()) {
            TableKind::Header => "a section".into(),
            _ => "a table".into(),
        },
    }
}

/// `[[name]]` arrays share their span with their first table; value arrays start before their items.
fn is_array_of_tables(v: &Value<'_>, a: &toml::de::DeArray<'_>) -> bool {
    a.first().is_some_and(|first| {
        matches!(first.get_ref(), DeValue::Table(_)) && first.span().start == v.span().start
    })
}
