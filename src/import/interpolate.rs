//! Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?message}`, `${VAR?message}`, `${VAR:+other}`, `${VAR+other}` and `$$` for a `$`.
//!
//! Variables come from a lookup function (the process environment over the `.env` file next to
//! the compose file); this module does no IO. Defaults may themselves hold `${...}`.

/// A variable that was used but not set (or set empty where the form needs a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missing {
    pub name: String,
    /// The message of `${VAR:?message}`: compose refuses to start without the variable.
    pub required: Option<String>,
}

/// Interpolates one string. Unset variables become empty strings, as in compose, and are
/// returned so that they can be reported.
pub(crate) fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> (String, Vec<Missing>) {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    expand(s, lookup, &mut out, &mut missing);
    (out, missing)
}

fn expand(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    missing: &mut Vec<Missing>,
) {
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner_start) = after.strip_prefix('{') {
            match closing_brace(inner_start) {
                Some(end) => {
                    braced(&inner_start[..end], lookup, out, missing);
                    rest = &inner_start[end + 1..];
                }
                None => {
                    // An unclosed `${`: compose rejects the file; keep the text as written.
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            let len = name_len(after);
            if len == 0 {
                out.push('$');
                rest = after;
            } else {
                let name = &after[..len];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => missing.push(Missing {
                        name: name.to_string(),
                        required: None,
                    }),
                }
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
}

/// The body of `${...}`: a name, optionally followed by an operator and a word.
fn braced(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    missing: &mut Vec<Missing>,
) {
    let len = name_len(body);
    let (name, op) = body.split_at(len);
    let value = lookup(name);
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let word = |op_len: usize, out: &mut String, missing: &mut Vec<Missing>| {
        expand(&op[op_len..], lookup, out, missing)
    };
    match op {
        "" => match value {
            Some(v) => out.push_str(&v),
            None => missing.push(Missing {
                name: name.to_string(),
                required: None,
            }),
        },
        _ if op.starts_with(":-") => {
            if non_empty {
                out.push_str(value.as_deref().unwrap_or_default());
            } else {
                word(2, out, missing);
            }
        }
        _ if op.starts_with('-') => {
            if set {
                out.push_str(value.as_deref().unwrap_or_default());
            } else {
                word(1, out, missing);
            }
        }
        _ if op.starts_with(":?") || op.starts_with('?') => {
            let ok = if op.starts_with(':') { non_empty } else { set };
            if ok {
                out.push_str(value.as_deref().unwrap_or_default());
            } else {
                let skip = if op.starts_with(':') { 2 } else { 1 };
                let mut message = String::new();
                expand(&op[skip..], lookup, &mut message, missing);
                missing.push(Missing {
                    name: name.to_string(),
                    required: Some(message),
                });
            }
        }
        _ if op.starts_with(":+") => {
            if non_empty {
                word(2, out, missing);
            }
        }
        _ if op.starts_with('+') => {
            if set {
                word(1, out, missing);
            }
        }
        _ => {
            // Not a form compose knows (`${1x}`, `${a b}`): keep it as written.
            out.push_str("${");
            out.push_str(body);
            out.push('}');
        }
    }
}

/// The index of the `}` that closes a `${`, counting nested `${...}` in defaults.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Length of the variable name at the start of `s`: `[A-Za-z_][A-Za-z0-9_]*`.
fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.first()
        .is_none_or(|c| !(c.is_ascii_alphabetic() || *c == b'_'))
    {
        return 0;
    }
    b.iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
        .unwrap_or(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form compose documents, with set, empty and unset variables.
    #[test]
    fn forms() {
        let lookup = |name: &str| match name {
            "SET" => Some("v".to_string()),
            "EMPTY" => Some(String::new()),
            "NESTED" => Some("n".to_string()),
            _ => None,
        };
        let cases: &[(&str, &str, &[&str])] = &[
            ("plain", "plain", &[]),
            ("${SET}", "v", &[]),
            ("$SET/x", "v/x", &[]),
            ("a${SET}b", "avb", &[]),
            ("${UNSET}", "", &["UNSET"]),
            ("$UNSET", "", &["UNSET"]),
            ("${UNSET:-d}", "d", &[]),
            ("${EMPTY:-d}", "d", &[]),
            ("${EMPTY-d}", "", &[]),
            ("${UNSET-d}", "d", &[]),
            ("${SET:-d}", "v", &[]),
            ("${UNSET:-${NESTED}x}", "nx", &[]),
            ("${UNSET:-${ALSO_UNSET}}", "", &["ALSO_UNSET"]),
            ("${SET:+alt}", "alt", &[]),
            ("${EMPTY:+alt}", "", &[]),
            ("${EMPTY+alt}", "alt", &[]),
            ("${UNSET+alt}", "", &[]),
            ("${UNSET:?need it}", "", &["UNSET"]),
            ("${EMPTY?need it}", "", &[]),
            ("$$", "$", &[]),
            ("$${SET}", "${SET}", &[]),
            ("cost: 5$", "cost: 5$", &[]),
            ("${SET", "${SET", &[]),
            ("${1x}", "${1x}", &[]),
            (
                "postgres://${U:-app}:${P}@db/${DB:-x}",
                "postgres://app:@db/x",
                &["P"],
            ),
        ];
        for (input, want, unset) in cases {
            let (got, missing) = interpolate(input, &lookup);
            assert_eq!(&got, want, "{input}");
            let names: Vec<&str> = missing.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(&names, unset, "{input}");
        }
        let (_, missing) = interpolate("${X:?set X first}", &lookup);
        assert_eq!(missing[0].required.as_deref(), Some("set X first"));
    }
}
