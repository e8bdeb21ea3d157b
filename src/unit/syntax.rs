//! TOML syntax errors, each reported once and without the cascade that error recovery produces.
//!
//! toml's recoverable parser reports every error it meets, but after a mistake such as an
//! unclosed array the rest of the file parses as garbage and yields dozens of follow-on errors.
//! So we report the first error, blank out the lines of the value it is in (keeping byte offsets),
//! parse again, and repeat; an unclosed bracket is reported at the bracket and ends the search,
//! since everything after it belongs to it.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::decode::Value;

/// At most this many syntax errors are reported for one file.
const MAX_ERRORS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// Byte offset in the original text.
    pub(crate) at: usize,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

/// The syntax errors of `text`, sorted by position; empty when `text` is valid TOML.
pub(crate) fn check(text: &str) -> Vec<SyntaxError> {
    let (_, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Vec::new();
    }
    let mut work = text.to_owned();
    let mut out: Vec<SyntaxError> = Vec::new();
    while out.len() < MAX_ERRORS {
        let (root, errors) = DeTable::parse_recoverable(&work);
        let Some(first) = errors
            .iter()
            .min_by_key(|e| e.span().map_or(usize::MAX, |s| s.start))
        else {
            break;
        };
        let at = floor_char(&work, first.span().map_or(0, |s| s.start));
        if out.last().is_some_and(|prev| prev.at >= at) {
            // Blanking did not move past the error; stop rather than repeat ourselves.
            break;
        }
        let container = outermost_value(&work, &root, at);
        let unclosed = errors.iter().find(|e| {
            e.message().starts_with("unclosed array")
                || e.message().starts_with("unclosed inline table")
        });
        if let (Some(unclosed), Some(c)) = (unclosed, &container) {
            if let Some(close) = missing_close(&work, c) {
                out.push(SyntaxError {
                    at: c.start,
                    message: unclosed.message().to_string(),
                    hint: Some(format!(
                        "close it with `{close}`; everything after it was read as part of it"
                    )),
                });
                break;
            }
        }
        out.push(describe(&work, at, first.message()));
        if at >= work.trim_end().len() {
            // At the end of the file: something unclosed swallowed the rest; nothing more to learn.
            break;
        }
        blank_lines(&mut work, container.unwrap_or(at..at));
    }
    out
}

/// Rewords toml's message where we can say more, and adds a hint.
fn describe(text: &str, at: usize, message: &str) -> SyntaxError {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = text[line_start..line_end].trim();
    let rest_of_line = text[at..line_end].trim_end_matches('\r');
    let token: String = rest_of_line
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | ']' | '}' | '#'))
        .collect();
    let mut message = message.to_string();
    let hint = if message.starts_with("string values must be quoted") && !token.is_empty() {
        Some(format!(
            "quote the value: \"{}\"",
            token.replace('"', "\\\"")
        ))
    } else if message == "duplicate key" {
        if line.starts_with('[') {
            let header = line
                .split(']')
                .next()
                .unwrap_or(line)
                .trim_start_matches('[');
            message = format!("duplicate section [{}]", header.trim());
            Some("a section can appear only once; merge the two".into())
        } else {
            let key: String = rest_of_line
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '=' | '.'))
                .collect();
            message = format!("duplicate key `{key}`");
            Some("a key can appear only once in a table".into())
        }
    } else if message.starts_with("unclosed table") {
        Some("close the section header with `]`".into())
    } else if message.starts_with("missing escaped value") {
        Some("write `\\\\` for a backslash, or use a 'literal string' in single quotes".into())
    } else if message.starts_with("invalid basic string") && rest_of_line.trim().is_empty() {
        Some("close the string with `\"` before the end of the line".into())
    } else {
        None
    };
    SyntaxError { at, message, hint }
}

/// The span of the outermost value (not a `[section]`) that contains byte `at`.
fn outermost_value(text: &str, root: &Spanned<DeTable<'_>>, at: usize) -> Option<Range<usize>> {
    fn walk(text: &str, table: &DeTable<'_>, at: usize) -> Option<Range<usize>> {
        table.iter().find_map(|(_, v)| in_value(text, v, at))
    }
    fn in_value(text: &str, v: &Value<'_>, at: usize) -> Option<Range<usize>> {
        let span = v.span();
        let inline = text.as_bytes().get(span.start) == Some(&b'{');
        match v.get_ref() {
            // Sections and dotted tables are not values: look inside.
            DeValue::Table(t) if !inline => walk(text, t, at),
            DeValue::Array(a) if a.first().is_some_and(|f| f.span().start == span.start) => {
                a.iter().find_map(|item| match item.get_ref() {
                    DeValue::Table(t) => walk(text, t, at),
                    _ => None,
                })
            }
            _ => (span.start <= at && at <= span.end).then_some(span),
        }
    }
    walk(text, root.get_ref(), at)
}

/// The closing bracket a value lacks, if it is an array or inline table that is not closed.
fn missing_close(text: &str, span: &Range<usize>) -> Option<char> {
    let body = text.get(span.clone())?;
    let close = match body.as_bytes().first()? {
        b'[' => ']',
        b'{' => '}',
        _ => return None,
    };
    (!body.trim_end().ends_with(close)).then_some(close)
}

/// The largest char boundary at or before `i` (spans from the parser are boundaries already; this
/// only guards the slicing below).
fn floor_char(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Replaces every line touched by `range` with spaces, keeping byte offsets and line numbers.
fn blank_lines(text: &mut String, range: Range<usize>) {
    let start = text[..floor_char(text, range.start)]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let end_from = floor_char(text, range.end.max(range.start));
    let end = text[end_from..]
        .find('\n')
        .map_or(text.len(), |i| end_from + i);
    let mut bytes = std::mem::take(text).into_bytes();
    for b in &mut bytes[start..end] {
        if *b != b'\n' {
            *b = b' ';
        }
    }
    // Whole lines were replaced, so the text is still valid UTF-8.
    *text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(text: &str) -> Vec<(usize, String)> {
        check(text).into_iter().map(|e| (e.at, e.message)).collect()
    }

    /// Valid TOML has no syntax errors.
    #[test]
    fn valid() {
        assert!(check("a = 1\n[b]\nc = [1, 2]\n").is_empty());
        assert!(check("").is_empty());
    }

    /// Independent mistakes on different lines are all reported, in order.
    #[test]
    fn several_independent_errors() {
        let text = "a = 5s\nb = \"ok\"\nc = 1 2\n";
        let got = messages(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, 4);
        assert!(got[0].1.starts_with("string values must be quoted"));
        assert_eq!(got[1].0, text.find("1 2").unwrap());
    }

    /// An unclosed array is reported once, at its bracket, instead of at every line it swallowed.
    #[test]
    fn unclosed_array() {
        let text = "[process]\ncommand = \"x\"\nargs = [\"a\",\nkill_timeout = \"5s\"\n[restart]\npolicy = \"always\"\n";
        let errors = check(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].at, text.find("[\"a\"").unwrap());
        assert!(errors[0].message.starts_with("unclosed array"));
    }

    /// An unclosed inline table is reported at its brace.
    #[test]
    fn unclosed_inline_table() {
        let text = "depends_on = { db = \"healthy\"\n[process]\ncommand = \"y\"\n";
        let errors = check(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].at, text.find('{').unwrap());
        assert!(errors[0].message.starts_with("unclosed inline table"));
    }

    /// Duplicate keys and sections name the key.
    #[test]
    fn duplicates() {
        let got = messages("[process]\ncommand = \"x\"\ncommand = \"y\"\n[process]\n");
        assert_eq!(got[0].1, "duplicate key `command`");
        assert_eq!(got[1].1, "duplicate section [process]");
    }
}
