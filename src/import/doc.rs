//! A unit file being generated: keys grouped in sections, with comments, rendered as readable
//! TOML; and removal of a key by the dotted path that a unit error names
//! (`container.volumes[2]`, `depends_on.redis`), so that a key chain rejects can be left out.

use std::fmt::Write as _;

/// A TOML value as the generated files use them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Value>),
    /// An inline table (`{ db = "healthy" }`).
    Table(Vec<(String, Value)>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<Vec<String>> for Value {
    fn from(v: Vec<String>) -> Value {
        Value::Array(v.into_iter().map(Value::Str).collect())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub value: Value,
    /// Written after the value: `key = value  # comment`.
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Section {
    /// Dotted name: `container`, `profile.staging.env`; empty for the top-level keys.
    pub name: String,
    pub entries: Vec<Entry>,
}

/// One generated unit file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnitDoc {
    /// The unit name (the file is `<name>.toml`).
    pub name: String,
    /// The compose service or PM2 app it comes from, for notes.
    pub source: String,
    /// Comment lines at the top of the file, without `# `.
    pub header: Vec<String>,
    /// Top-level keys first (name ""), then sections in the order they were first used.
    pub sections: Vec<Section>,
}

impl UnitDoc {
    pub fn new(name: &str, source: &str) -> UnitDoc {
        UnitDoc {
            name: name.to_string(),
            source: source.to_string(),
            header: Vec::new(),
            sections: vec![Section {
                name: String::new(),
                entries: Vec::new(),
            }],
        }
    }

    /// Sets `key` in `section` ("" for top level), replacing an earlier value.
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<Value>) {
        self.set_with(section, key, value.into(), None);
    }

    /// [`UnitDoc::set`] with a comment after the value.
    pub fn set_commented(
        &mut self,
        section: &str,
        key: &str,
        value: impl Into<Value>,
        comment: &str,
    ) {
        self.set_with(section, key, value.into(), Some(comment.to_string()));
    }

    fn set_with(&mut self, section: &str, key: &str, value: Value, comment: Option<String>) {
        let s = self.section_mut(section);
        let entry = Entry {
            key: key.to_string(),
            value,
            comment,
        };
        match s.entries.iter_mut().find(|e| e.key == key) {
            Some(e) => *e = entry,
            None => s.entries.push(entry),
        }
    }

    pub fn get(&self, section: &str, key: &str) -> Option<&Value> {
        self.sections
            .iter()
            .find(|s| s.name == section)?
            .entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    fn section_mut(&mut self, name: &str) -> &mut Section {
        let i = match self.sections.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                self.sections.push(Section {
                    name: name.to_string(),
                    entries: Vec::new(),
                });
                self.sections.len() - 1
            }
        };
        &mut self.sections[i]
    }

    /// Removes what a unit error's key path points at: an array item, an inline-table key, an
    /// entry, or a whole section. Returns false when nothing matched.
    pub fn remove(&mut self, path: &str) -> bool {
        if path.is_empty() {
            return false;
        }
        // The longest section name that prefixes the path owns it; top level owns the rest.
        let owner = self
            .sections
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                !s.name.is_empty()
                    && (path == s.name
                        || path.starts_with(&format!("{}.", s.name))
                        || path.starts_with(&format!("{}[", s.name)))
            })
            .max_by_key(|(_, s)| s.name.len())
            .map(|(i, _)| i)
            .unwrap_or(0);
        let section = &mut self.sections[owner];
        if path == section.name {
            self.sections.remove(owner);
            return true;
        }
        let rest = if section.name.is_empty() {
            path
        } else {
            &path[section.name.len() + 1..]
        };
        // A key may itself hold dots (`env."A.B"` is reported as `env.A.B`).
        let (key, tail) = match section.entries.iter().any(|e| e.key == rest) {
            true => (rest, ""),
            false => split_key(rest),
        };
        let Some(i) = section.entries.iter().position(|e| e.key == key) else {
            return false;
        };
        // A path into the value that matches nothing there removes the whole entry.
        if tail.is_empty() || !remove_in(&mut section.entries[i].value, tail) {
            section.entries.remove(i);
        }
        if section.entries.is_empty() && !section.name.is_empty() {
            self.sections.remove(owner);
        }
        true
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            if line.is_empty() {
                out.push_str("#\n");
            } else {
                let _ = writeln!(out, "# {line}");
            }
        }
        for s in &self.sections {
            if s.entries.is_empty() {
                continue;
            }
            if !s.name.is_empty() {
                if !out.is_empty() {
                    out.push('\n');
                }
                let name: Vec<String> = s.name.split('.').map(key).collect();
                let _ = writeln!(out, "[{}]", name.join("."));
            }
            for e in &s.entries {
                let _ = write!(out, "{} = {}", key(&e.key), render_value(&e.value, true));
                if let Some(c) = &e.comment {
                    let _ = write!(out, "  # {c}");
                }
                out.push('\n');
            }
        }
        out
    }
}

/// `volumes[2].x` → (`volumes`, `[2].x`); `a.b` → (`a`, `.b`).
fn split_key(s: &str) -> (&str, &str) {
    match s.find(['.', '[']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Removes `[i]` or `.key` (and deeper) inside a value; false when the path does not match.
fn remove_in(v: &mut Value, tail: &str) -> bool {
    if let Some(inner) = tail.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return false;
        };
        let Ok(i) = inner[..close].parse::<usize>() else {
            return false;
        };
        let Value::Array(items) = v else {
            return false;
        };
        if i >= items.len() {
            return false;
        }
        let rest = &inner[close + 1..];
        if rest.is_empty() || !remove_in(&mut items[i], rest) {
            items.remove(i);
        }
        return true;
    }
    if let Some(inner) = tail.strip_prefix('.') {
        let (k, rest) = split_key(inner);
        // `depends_on.db` names the item "db" of `depends_on = ["db", ...]`.
        if let Value::Array(items) = v {
            let before = items.len();
            items.retain(|i| !matches!(i, Value::Str(s) if s == inner));
            return items.len() < before;
        }
        let Value::Table(entries) = v else {
            return false;
        };
        let Some(i) = entries.iter().position(|(name, _)| name == k) else {
            return false;
        };
        if rest.is_empty() || !remove_in(&mut entries[i].1, rest) {
            entries.remove(i);
        }
        return true;
    }
    false
}

/// A bare key when it can be one, else a quoted key.
pub(crate) fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        quote(k)
    }
}

/// A TOML basic string.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Arrays that do not fit on a line are written one item per line (top level only).
fn render_value(v: &Value, top: bool) -> String {
    match v {
        Value::Str(s) => quote(s),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => {
            let s = f.to_string();
            if s.contains(['.', 'e', 'E', 'i', 'N']) {
                s
            } else {
                format!("{s}.0")
            }
        }
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(|i| render_value(i, false)).collect();
            let one_line = format!("[{}]", parts.join(", "));
            if !top || one_line.len() <= 72 || parts.len() < 2 {
                one_line
            } else {
                let mut s = String::from("[\n");
                for p in parts {
                    let _ = writeln!(s, "    {p},");
                }
                s.push(']');
                s
            }
        }
        Value::Table(entries) => {
            if entries.is_empty() {
                return "{}".into();
            }
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), render_value(v, false)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UnitDoc {
        let mut d = UnitDoc::new("web", "web");
        d.header.push("from compose service \"web\"".into());
        d.set("", "instances", Value::Int(3));
        d.set(
            "",
            "depends_on",
            Value::Table(vec![
                ("db".into(), "healthy".into()),
                ("cache".into(), "started".into()),
            ]),
        );
        d.set("container", "image", "nginx:1.25");
        d.set(
            "container",
            "volumes",
            vec![
                "./a:/a".to_string(),
                "b:/b".to_string(),
                "/very/long/host/path/to/something:/target/path/in/container:ro".to_string(),
            ],
        );
        d.set("container", "cpus", Value::Float(1.0));
        d.set_commented("restart", "policy", "always", "compose: unless-stopped");
        d.set("env", "A.B", "x \"y\"\n");
        d
    }

    /// The rendered file is valid TOML with the expected layout.
    #[test]
    fn renders_readable_toml() {
        let text = sample().render();
        assert_eq!(
            text,
            r#"# from compose service "web"
instances = 3
depends_on = { db = "healthy", cache = "started" }

[container]
image = "nginx:1.25"
volumes = [
    "./a:/a",
    "b:/b",
    "/very/long/host/path/to/something:/target/path/in/container:ro",
]
cpus = 1.0

[restart]
policy = "always"  # compose: unless-stopped

[env]
"A.B" = "x \"y\"\n"
"#
        );
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["env"]["A.B"].as_str(), Some("x \"y\"\n"));
    }

    /// Key paths from unit errors remove array items, inline-table keys, entries and sections.
    #[test]
    fn removes_by_key_path() {
        let cases: &[(&str, bool, &str)] = &[
            ("container.volumes[1]", true, "b:/b"),
            ("depends_on.db", true, "db = "),
            ("container.volumes.b:/b", true, "b:/b"),
            ("container.cpus", true, "cpus"),
            ("restart", true, "[restart]"),
            ("env.A.B", true, "A.B"),
            ("container.nope", false, ""),
            ("", false, ""),
        ];
        for (path, removed, gone) in cases {
            let mut d = sample();
            assert_eq!(d.remove(path), *removed, "{path}");
            if *removed {
                assert!(!d.render().contains(gone), "{path}: {}", d.render());
            }
        }
        let mut d = sample();
        assert!(d.remove("container.image"));
        assert!(d.remove("container.volumes"));
        assert!(d.remove("container.cpus"));
        assert!(!d.render().contains("[container]"));
    }
}
