//! Env files (`env_file = ".env"`): `KEY=VALUE` lines, as dotenv and compose read them.
//!
//! Supported: `#` comment lines and blank lines, an optional `export ` prefix, unquoted values
//! (trimmed; ` #` starts a comment), `'single-quoted'` values taken literally, and
//! `"double-quoted"` values with the escapes `\n`, `\"` and `\\`. Values do not span lines.

use std::path::Path;

use super::error::{Pos, UnitError};
use super::file::RESERVED_ENV;
use super::section::{reserved_env_hint, valid_env_name, ENV_NAME_RULE};

/// The variables of an env file in file order (a later duplicate overrides an earlier one when
/// merged), and its problems, reported against `shown` (the env file's path for humans).
pub(crate) fn parse_env_file(shown: &Path, text: &str) -> (Vec<(String, String)>, Vec<UnitError>) {
    let mut vars = Vec::new();
    let mut errors = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (n, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let line_no = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let mut error = |byte: usize, key: &str, message: String, hint: Option<&str>| {
            let column = line[..byte.min(line.len())].chars().count() + 1;
            let pos = Pos {
                line: line_no,
                column: u32::try_from(column).unwrap_or(u32::MAX),
            };
            errors.push(UnitError::at(
                shown,
                pos,
                key,
                message,
                hint.map(str::to_string),
            ));
        };
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let mut start = line.len() - content.len();
        if let Some(rest) = content.strip_prefix("export") {
            if rest.starts_with([' ', '\t']) {
                start += line[start + 6..].len() - line[start + 6..].trim_start().len() + 6;
            }
        }
        let Some(eq) = line[start..].find('=').map(|i| start + i) else {
            error(
                start,
                "",
                format!("expected KEY=VALUE, found {:?}", truncate(&line[start..])),
                Some("each line is KEY=VALUE, a # comment, or blank"),
            );
            continue;
        };
        let key = line[start..eq].trim_end();
        if key.is_empty() {
            error(start, "", "missing variable name before `=`".into(), None);
            continue;
        }
        if !valid_env_name(key) {
            error(
                start,
                key,
                format!("invalid environment variable name `{key}`"),
                Some(ENV_NAME_RULE),
            );
            continue;
        }
        if RESERVED_ENV.contains(&key) {
            let hint = reserved_env_hint(key);
            error(start, key, format!("`{key}` is reserved"), Some(&hint));
            continue;
        }
        let after_eq = &line[eq + 1..];
        let value_start = eq + 1 + (after_eq.len() - after_eq.trim_start().len());
        let value = &line[value_start..];
        match parse_value(value) {
            Ok(v) => vars.push((key.to_string(), v)),
            Err((offset, message, hint)) => error(value_start + offset, key, message, hint),
        }
    }
    (vars, errors)
}

type ValueError = (usize, String, Option<&'static str>);

/// Parses the value part of a line (after `=` and leading whitespace).
fn parse_value(value: &str) -> Result<String, ValueError> {
    let (out, end) = match value.chars().next() {
        Some('"') => {
            let mut out = String::new();
            let mut chars = value.char_indices().skip(1);
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => out.push('\n'),
                        Some((_, '"')) => out.push('"'),
                        Some((_, '\\')) => out.push('\\'),
                        Some((_, other)) => {
                            return Err((
                                i,
                                format!("unknown escape `\\{other}` in a double-quoted value"),
                                Some("double-quoted values know \\n, \\\" and \\\\; use single quotes for a literal backslash"),
                            ))
                        }
                        None => break,
                    },
                    c => out.push(c),
                }
            }
            let Some(end) = end else {
                return Err((
                    0,
                    "unterminated double-quoted value".into(),
                    Some("values cannot span lines; close the quote, and write \\n for a newline"),
                ));
            };
            (out, end)
        }
        Some('\'') => match value[1..].find('\'') {
            Some(i) => (value[1..=i].to_string(), i + 2),
            None => {
                return Err((
                    0,
                    "unterminated single-quoted value".into(),
                    Some("values cannot span lines; close the quote"),
                ))
            }
        },
        _ => {
            // An unquoted value ends at a ` #` comment.
            let end = value
                .char_indices()
                .find(|&(i, c)| c == '#' && value[..i].ends_with([' ', '\t']))
                .map_or(value.len(), |(i, _)| i);
            return Ok(value[..end].trim_end().to_string());
        }
    };
    let rest = value[end..].trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        let offset = value.len() - rest.len();
        return Err((
            offset,
            "unexpected text after the closing quote".into(),
            Some("quote the whole value, or start a comment with #"),
        ));
    }
    if out.contains('\0') {
        return Err((0, "value must not contain a NUL character".into(), None));
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 40 {
        s.chars().take(37).collect::<String>() + "..."
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        let (vars, errors) = parse_env_file(Path::new(".env"), text);
        assert!(errors.is_empty(), "{errors:?}");
        vars
    }

    fn errors(text: &str) -> Vec<String> {
        parse_env_file(Path::new("u/.env"), text)
            .1
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The dotenv forms people write: comments, export, quotes, escapes, inline comments, CRLF.
    #[test]
    fn accepted_forms() {
        let text = "\u{feff}# comment\n\nA=1\nexport B = two words \nC=\"x\\ny \\\"q\\\" \\\\\"\nD='lit\\n $X'  # c\nE=v # comment\nF=a#b\nG=\nH=\"\" \r\n  I=indented\nexport=3\n";
        let want = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "x\ny \"q\" \\"),
            ("D", "lit\\n $X"),
            ("E", "v"),
            ("F", "a#b"),
            ("G", ""),
            ("H", ""),
            ("I", "indented"),
            ("export", "3"),
        ];
        let got = vars(text);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    /// Each bad line is reported with the env file's own line and column.
    #[test]
    fn bad_lines() {
        assert_eq!(
            errors("A=1\nnot a pair\n"),
            ["u/.env:2:1: expected KEY=VALUE, found \"not a pair\"\n  hint: each line is KEY=VALUE, a # comment, or blank"]
        );
        assert_eq!(
            errors("1A=x"),
            ["u/.env:1:1: 1A: invalid environment variable name `1A`\n  hint: names are letters, digits and `_`, and do not start with a digit"]
        );
        assert_eq!(errors("A=\"open")[0], "u/.env:1:3: A: unterminated double-quoted value\n  hint: values cannot span lines; close the quote, and write \\n for a newline");
        assert_eq!(
            errors("A='open")[0].lines().next().unwrap(),
            "u/.env:1:3: A: unterminated single-quoted value"
        );
        assert_eq!(
            errors("A=\"a\\qb\"")[0].lines().next().unwrap(),
            "u/.env:1:5: A: unknown escape `\\q` in a double-quoted value"
        );
        assert_eq!(
            errors("A=\"a\" b")[0].lines().next().unwrap(),
            "u/.env:1:7: A: unexpected text after the closing quote"
        );
        assert_eq!(
            errors("=x")[0],
            "u/.env:1:1: missing variable name before `=`"
        );
        assert!(errors("PORT=3000")[0].starts_with("u/.env:1:1: PORT: `PORT` is reserved"));
        assert_eq!(errors("é=1\nB=é\"x").len(), 1);
    }
}
