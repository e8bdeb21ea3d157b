//! `chainctl import`: turn a docker compose file or a PM2 ecosystem file into unit files.
//!
//! The converters ([`compose`], [`pm2`]) are pure: text, the input file's path, the output
//! directory and an environment lookup in, an [`Import`] out, which holds the unit files as TOML
//! text and a [`Note`] for everything that could not be translated exactly. Before returning,
//! every generated file is checked with [`crate::unit::parse`] and the set with
//! [`crate::unit::validate_set`]; a key chain rejects is left out with a note, so what is
//! written always loads. The IO edge ([`compose_file`], [`pm2_file`], [`write`]) reads the
//! input, `.env` and the environment, runs `node` for `.js` ecosystem files, and writes files.
//! This module never talks to chaind. docs/import.md is the user-facing description.

mod compose;
mod doc;
mod interpolate;
mod pm2;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use doc::UnitDoc;

/// How long `node` may take to evaluate an ecosystem file.
const NODE_TIMEOUT: Duration = Duration::from_secs(20);

/// Unit keys a unit cannot do without: when chain rejects one of them, the unit is dropped.
const REQUIRED_KEYS: &[&str] = &[
    "",
    "container",
    "container.image",
    "process",
    "process.command",
];

/// The result of a conversion: unit files, in input order, and what was not translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// (unit name, TOML text); the file is `<name>.toml`.
    pub units: Vec<(String, String)>,
    pub notes: Vec<Note>,
}

/// Something in the input that the units do not carry over exactly, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The compose service or PM2 app; empty for the file as a whole.
    pub source: String,
    /// The input key (`build`, `ports[1]`, `environment.DB`), or a unit key for keys chain rejected.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.source.is_empty(), self.key.is_empty()) {
            (true, true) => write!(f, "{}", self.message),
            (true, false) => write!(f, "{}: {}", self.key, self.message),
            (false, true) => write!(f, "{}: {}", self.source, self.message),
            (false, false) => write!(f, "{}: {}: {}", self.source, self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A YAML or JSON syntax error; line and column are 1-based.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file parses but is not what the command expects (no `services`, no `apps`).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error(
        "{}: node is not on PATH, and a .js ecosystem file needs it to be evaluated; install Node.js, \
         or convert the file to JSON (`node -e 'console.log(JSON.stringify(require(\"./{}\"), null, 2))' > ecosystem.json`, \
         or copy the object into a .json file) and import that",
        path.display(),
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    )]
    NoNode { path: PathBuf },
    #[error("{}: node could not evaluate the file: {message}", path.display())]
    Node { path: PathBuf, message: String },
    #[error(
        "refusing to overwrite {}; use --force to replace {}",
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        if paths.len() == 1 { "it" } else { "them" }
    )]
    Exists { paths: Vec<PathBuf> },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a converter needs besides the text: where the input and the units live, and the
/// variables it may read. Paths are absolute and normalized.
pub(crate) struct Context<'a> {
    /// The input file.
    pub file: &'a Path,
    /// The directory the unit files are written to; relative paths in them are relative to it.
    pub out_dir: &'a Path,
    /// Environment lookup (compose: the process environment over `.env`).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Whether a file exists (env files must exist for the unit to load).
    pub exists: &'a dyn Fn(&Path) -> bool,
}

impl Context<'_> {
    fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("/"))
    }

    fn file_name(&self) -> String {
        self.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Reads a compose file, the `.env` beside it and the process environment, and converts.
///
/// # Errors
///
/// The file cannot be read, is not YAML (with line and column), or has no services.
pub fn compose_file(path: &Path, out_dir: &Path) -> Result<Import, Error> {
    let file = absolute(path);
    let text = read(&file)?;
    let dot_env = match std::fs::read_to_string(file.with_file_name(".env")) {
        Ok(text) => parse_dot_env(&text),
        Err(_) => BTreeMap::new(),
    };
    // The process environment wins over .env, as in compose.
    let lookup = |name: &str| {
        std::env::var(name)
            .ok()
            .or_else(|| dot_env.get(name).cloned())
    };
    let out = absolute(out_dir);
    let cx = Context {
        file: &file,
        out_dir: &out,
        env: &lookup,
        exists: &|p: &Path| p.is_file(),
    };
    compose::convert(&text, &cx)
}

/// Reads a PM2 ecosystem file (JSON, YAML, or JavaScript evaluated with node) and converts.
///
/// # Errors
///
/// The file cannot be read or evaluated, or holds no apps.
pub fn pm2_file(path: &Path, out_dir: &Path) -> Result<Import, Error> {
    let file = absolute(path);
    let ext = file
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let value = match ext.as_str() {
        "js" | "cjs" | "mjs" => {
            let json = eval_with_node(&file)?;
            serde_json::from_str(&json).map_err(|e| Error::Node {
                path: file.clone(),
                message: format!("its output is not JSON: {e}"),
            })?
        }
        "yml" | "yaml" => {
            let text = read(&file)?;
            let node = yaml::parse(&text).map_err(|e| Error::Syntax {
                path: file.clone(),
                line: e.line,
                column: e.column,
                message: e.message,
            })?;
            pm2::yaml_to_json(&node)
        }
        _ => {
            let text = read(&file)?;
            serde_json::from_str(&text).map_err(|e| Error::Syntax {
                path: file.clone(),
                line: e.line(),
                column: e.column(),
                message: json_message(&e),
            })?
        }
    };
    let out = absolute(out_dir);
    let cx = Context {
        file: &file,
        out_dir: &out,
        env: &|name: &str| std::env::var(name).ok(),
        exists: &|p: &Path| p.is_file(),
    };
    pm2::convert(&value, &cx)
}

/// Writes every unit file into `out_dir` (created if needed). Without `force`, nothing is
/// written when any of the files exists.
///
/// # Errors
///
/// A file exists (without `force`), or a file or the directory cannot be written.
pub fn write(import: &Import, out_dir: &Path, force: bool) -> Result<Vec<PathBuf>, Error> {
    let paths: Vec<PathBuf> = import
        .units
        .iter()
        .map(|(name, _)| out_dir.join(format!("{name}.toml")))
        .collect();
    if !force {
        let existing: Vec<PathBuf> = paths.iter().filter(|p| p.exists()).cloned().collect();
        if !existing.is_empty() {
            return Err(Error::Exists { paths: existing });
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    for (path, (_, text)) in paths.iter().zip(&import.units) {
        std::fs::write(path, text).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(paths)
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// serde_json's message without its " at line L column C" suffix (the error shows them).
fn json_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Evaluates a JavaScript ecosystem file with node (as PM2 loads it) and returns it as JSON.
fn eval_with_node(file: &Path) -> Result<String, Error> {
    // import() loads CommonJS (module.exports arrives as `default`) and ES modules alike.
    const SCRIPT: &str = "import(require('url').pathToFileURL(process.argv[1]).href)\
        .then((m) => { let v = m.default ?? m; if (typeof v === 'function') v = v(); \
        process.stdout.write(JSON.stringify(v)); })\
        .catch((e) => { console.error(String((e && e.stack) || e)); process.exit(1); });";
    let mut child = Command::new("node")
        .arg("-e")
        .arg(SCRIPT)
        .arg(file)
        .current_dir(file.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NoNode {
                path: file.to_path_buf(),
            },
            _ => Error::Node {
                path: file.to_path_buf(),
                message: format!("cannot start node: {e}"),
            },
        })?;
    // Read the pipes on threads so that a large output cannot block the child.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + NODE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Node {
                    path: file.to_path_buf(),
                    message: format!("node did not finish within {}s", NODE_TIMEOUT.as_secs()),
                });
            }
            Err(e) => {
                return Err(Error::Node {
                    path: file.to_path_buf(),
                    message: e.to_string(),
                })
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        // node prints the file and line of the problem, then a stack; the first lines say it.
        let first: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(5)
            .collect();
        return Err(Error::Node {
            path: file.to_path_buf(),
            message: first.join("\n"),
        });
    }
    Ok(stdout)
}

/// `.env`: `NAME=value` lines, `#` comments, optional `export`, single quotes literal,
/// double quotes with `\n`, `\"` and `\\`, unquoted values trimmed (a ` #` starts a comment).
fn parse_dot_env(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = if let Some(v) = value.strip_prefix('\'') {
            v.split('\'').next().unwrap_or("").to_string()
        } else if let Some(v) = value.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => out.push('\n'),
                        Some(c) => out.push(c),
                        None => {}
                    },
                    c => out.push(c),
                }
            }
            out
        } else {
            match value.find(" #") {
                Some(i) => value[..i].trim_end().to_string(),
                None => value.to_string(),
            }
        };
        vars.insert(name.trim().to_string(), value);
    }
    vars
}

/// Checks every unit with chain's own parser and the set with its set validation; leaves out
/// each key chain rejects (with a note) and drops a unit that cannot do without the key.
pub(crate) fn finish(mut docs: Vec<UnitDoc>, mut notes: Vec<Note>, out_dir: &Path) -> Import {
    let path_of = |name: &str| out_dir.join(format!("{name}.toml"));
    // Each file on its own first.
    docs.retain_mut(|d| {
        for _ in 0..16 {
            match crate::unit::parse(&path_of(&d.name), &d.render()) {
                Ok(_) => return true,
                Err(errors) => {
                    if !leave_out(d, &errors, &mut notes) {
                        return false;
                    }
                }
            }
        }
        drop_unit(d, "chain still rejects the generated file", &mut notes);
        false
    });
    // Then the set: dependencies, cycles, port overlaps, routes.
    for _ in 0..8 {
        let files: Vec<crate::unit::UnitFile> = docs
            .iter()
            .filter_map(|d| crate::unit::parse(&path_of(&d.name), &d.render()).ok())
            .collect();
        let names: BTreeSet<String> = docs.iter().map(|d| d.name.clone()).collect();
        let errors = crate::unit::validate_set(&files, &names);
        if errors.is_empty() {
            break;
        }
        let mut by_unit: BTreeMap<String, Vec<crate::unit::UnitError>> = BTreeMap::new();
        for e in errors {
            let stem = e
                .file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            by_unit.entry(stem).or_default().push(e);
        }
        docs.retain_mut(|d| match by_unit.get(&d.name) {
            Some(errors) => {
                leave_out(d, errors, &mut notes)
                    && crate::unit::parse(&path_of(&d.name), &d.render()).is_ok()
            }
            None => true,
        });
    }
    Import {
        units: docs.iter().map(|d| (d.name.clone(), d.render())).collect(),
        notes,
    }
}

/// Removes the keys named by `errors`; false (with a note) when the unit cannot be kept.
fn leave_out(d: &mut UnitDoc, errors: &[crate::unit::UnitError], notes: &mut Vec<Note>) -> bool {
    for e in errors {
        let why = match &e.hint {
            Some(h) => format!("{} ({h})", e.message),
            None => e.message.clone(),
        };
        if REQUIRED_KEYS.contains(&e.key.as_str()) || !d.remove(&e.key) {
            drop_unit(d, &why, notes);
            return false;
        }
        notes.push(Note {
            source: d.source.clone(),
            key: format!("unit key {}", e.key),
            message: format!("left out: chain rejects it: {why}"),
        });
    }
    true
}

fn drop_unit(d: &UnitDoc, why: &str, notes: &mut Vec<Note>) {
    notes.push(Note {
        source: d.source.clone(),
        key: String::new(),
        message: format!("not converted: {why}"),
    });
}

/// A unit name from a compose service or PM2 app name: characters outside the unit-name rule
/// become `-`, leading `-`/`_` go, and a name already taken gets a `-2`, `-3`, ... suffix.
pub(crate) fn unit_name(raw: &str, taken: &BTreeSet<String>) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut base: String = mapped
        .trim_start_matches(['-', '_'])
        .chars()
        .take(64)
        .collect();
    if base.is_empty() {
        base = "unit".into();
    }
    if !taken.contains(&base) {
        return base;
    }
    (2..)
        .map(|n| {
            let suffix = format!("-{n}");
            let keep = 64 - suffix.len();
            format!("{}{suffix}", base.chars().take(keep).collect::<String>())
        })
        .find(|n| !taken.contains(n))
        .expect("some suffix is free")
}

/// `path` made absolute (against the current directory) and normalized.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// Removes `.` and resolves `..` lexically.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A path written relative to `from` (or absolute, or `~/...`), rewritten relative to `to`,
/// so that a unit file in `to` points at the same file. Absolute and home paths are kept.
pub(crate) fn rebase(written: &str, from: &Path, to: &Path) -> String {
    if written.starts_with('/') || written.starts_with('~') {
        return written.to_string();
    }
    let target = normalize(&from.join(written));
    let rel = relative(&target, to);
    let s = rel.to_string_lossy().into_owned();
    if s.is_empty() {
        ".".into()
    } else {
        s
    }
}

/// [`rebase`] for bind-mount sources, which chain recognises by a leading `/`, `.` or `~`.
pub(crate) fn rebase_bind(written: &str, from: &Path, to: &Path) -> String {
    let s = rebase(written, from, to);
    if s.starts_with(['/', '.', '~']) {
        s
    } else {
        format!("./{s}")
    }
}

/// The relative path from directory `base` to `target` (both absolute and normalized).
fn relative(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<Component> = target.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

/// Splits a command line into words as a POSIX shell would, without expansion: whitespace
/// separates, single quotes keep everything, double quotes keep all but `\"`, `\\`, `\$`, `` \` ``,
/// and a backslash outside quotes keeps the next character. None for an unclosed quote.
pub(crate) fn split_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => word.push(c),
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are mapped onto the unit-name rule and made unique.
    #[test]
    fn unit_names() {
        let taken: BTreeSet<String> = ["web".to_string(), "web-2".to_string()].into();
        let cases = [
            ("api", "api"),
            ("my.app", "my-app"),
            ("_worker", "worker"),
            ("web", "web-3"),
            ("...", "unit"),
            ("Ünï", "-n-"),
        ];
        for (raw, want) in cases {
            let got = unit_name(raw, &taken);
            assert_eq!(got, want.trim_start_matches('-'), "{raw}");
            assert!(crate::unit::valid_unit_name(&got), "{got}");
        }
        assert_eq!(unit_name(&"x".repeat(80), &taken).len(), 64);
    }

    /// Relative paths keep pointing at the same file from the output directory.
    #[test]
    fn rebased_paths() {
        let cases = [
            ("./data", "/srv/app", "/srv/app", "data"),
            ("./data", "/srv/app", "/srv/app/units", "../data"),
            (
                "data/x.env",
                "/srv/app",
                "/tmp/out",
                "../../srv/app/data/x.env",
            ),
            ("../shared", "/srv/app", "/srv/app/units", "../../shared"),
            ("/abs/path", "/srv/app", "/x", "/abs/path"),
            ("~/cfg", "/srv/app", "/x", "~/cfg"),
            (".", "/srv/app", "/srv/app", "."),
        ];
        for (written, from, to, want) in cases {
            assert_eq!(
                rebase(written, Path::new(from), Path::new(to)),
                want,
                "{written} {to}"
            );
        }
        assert_eq!(
            rebase_bind("./data", Path::new("/a"), Path::new("/a")),
            "./data"
        );
        assert_eq!(
            rebase_bind("./data", Path::new("/a"), Path::new("/a/u")),
            "../data"
        );
    }

    /// `.env` lines as compose reads them.
    #[test]
    fn dot_env() {
        let vars = parse_dot_env(
            "# comment\nA=1\nexport B = two \nC='x # y'\nD=\"l1\\nl2\"\nE=v # note\n\nnot a line\n",
        );
        let want: BTreeMap<String, String> = [
            ("A", "1"),
            ("B", "two"),
            ("C", "x # y"),
            ("D", "l1\nl2"),
            ("E", "v"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(vars, want);
    }

    /// Shell-like word splitting for command strings.
    #[test]
    fn words() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("a b  c", Some(&["a", "b", "c"])),
            ("--port 3000 'x y'", Some(&["--port", "3000", "x y"])),
            (r#"a "b \"c\"" d\ e"#, Some(&["a", "b \"c\"", "d e"])),
            ("", Some(&[])),
            ("'open", None),
        ];
        for (s, want) in cases {
            let got = split_words(s);
            let want: Option<Vec<String>> = want.map(|w| w.iter().map(|x| x.to_string()).collect());
            assert_eq!(got, want, "{s}");
        }
    }
}
