//! The IO edge of the module: read unit files and their env files from disk, then parse, resolve
//! and validate them with the pure functions. One bad file never hides the others.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use super::error::{LineIndex, UnitError};
use super::file::{parse_in, UnitFile};
use super::resolve::{resolve_with, ResolveCtx};
use super::set::validate_set_with;
use super::spec::{Revision, UnitSpec};

/// What [`load_dir`] found: every unit is either loaded or has errors, never both.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub units: BTreeMap<String, Loaded>,
    /// Problems per unit name (file stem); key `""` holds problems with the directory itself.
    pub errors: BTreeMap<String, Vec<UnitError>>,
}

/// A unit that parsed, resolved and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub file: UnitFile,
    pub spec: UnitSpec,
    pub revision: Revision,
}

/// Loads one unit file: parse, read its env files, resolve. No set validation.
///
/// # Errors
///
/// Every problem in the file and its env files, or the reason it could not be read.
pub fn load_file(path: &Path, ctx: &ResolveCtx) -> Result<Loaded, Vec<UnitError>> {
    let file = parse_file(path, ctx)?;
    resolve_file(file, ctx)
}

/// Loads every `*.toml` file in `dir` (not recursive; hidden files and editor backups skipped),
/// then validates the set. Never fails as a whole because of one bad file.
pub fn load_dir(dir: &Path, ctx: &ResolveCtx) -> LoadReport {
    let mut report = LoadReport::default();
    let paths = match unit_paths(dir) {
        Ok(paths) => paths,
        Err(e) => {
            let message = format!("cannot read unit directory: {}", io_reason(&e));
            report
                .errors
                .insert(String::new(), vec![UnitError::whole_file(dir, message)]);
            return report;
        }
    };
    let mut all_names = BTreeSet::new();
    let mut parsed = Vec::new();
    for path in paths {
        let name = stem(&path);
        all_names.insert(name.clone());
        match parse_file(&path, ctx) {
            Ok(file) => parsed.push(file),
            Err(errors) => {
                report.errors.insert(name, errors);
            }
        }
    }
    let mut set_errors: BTreeMap<String, Vec<UnitError>> = BTreeMap::new();
    for e in validate_set_with(&parsed, &all_names, Some(ctx.cpus)) {
        set_errors.entry(stem(&e.file)).or_default().push(e);
    }
    for file in parsed {
        let name = file.name.clone();
        let set = set_errors.remove(&name).unwrap_or_default();
        match resolve_file(file, ctx) {
            Ok(loaded) if set.is_empty() => {
                report.units.insert(name, loaded);
            }
            Ok(_) => {
                report.errors.insert(name, set);
            }
            Err(mut errors) => {
                errors.extend(set);
                report.errors.insert(name, errors);
            }
        }
    }
    report
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The unit files of `dir`, sorted: `*.toml`, not hidden, not editor leftovers, files only.
fn unit_paths(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let skip = name.starts_with('.')
            || name.starts_with('#')
            || name.ends_with('~')
            || !name.ends_with(".toml");
        if skip {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a linked unit file counts, a directory named x.toml does not.
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn parse_file(path: &Path, ctx: &ResolveCtx) -> Result<UnitFile, Vec<UnitError>> {
    let bytes = std::fs::read(path).map_err(|e| {
        vec![UnitError::whole_file(
            path,
            format!("cannot read unit file: {}", io_reason(&e)),
        )]
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes());
            let lossy_prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]);
            let pos = LineIndex::new(&text).pos(&text, lossy_prefix.len());
            return Err(vec![UnitError::at(
                path,
                pos,
                "",
                "the file is not valid UTF-8",
                None,
            )]);
        }
    };
    let text = match ctx.overrides.get(&stem(path)).filter(|o| !o.is_empty()) {
        Some(overrides) => apply_overrides(&text, overrides).map_err(|message| {
            vec![UnitError::whole_file(
                path,
                format!("with chainctl deploy --set overrides: {message}"),
            )]
        })?,
        None => text,
    };
    // Relative paths inside the file resolve against the absolute directory, so that the spec
    // does not depend on the daemon's working directory; messages keep the path as given.
    let dir = path.parent().unwrap_or(Path::new(""));
    let dir = std::path::absolute(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .map(|d| super::file::normalize_path(&d))
    .unwrap_or_else(|_| dir.to_path_buf());
    parse_in(path, &dir, &text)
}

fn resolve_file(file: UnitFile, ctx: &ResolveCtx) -> Result<Loaded, Vec<UnitError>> {
    let mut texts: BTreeMap<PathBuf, Result<String, String>> = BTreeMap::new();
    for f in &file.process.env_files {
        texts.entry(f.path.clone()).or_insert_with(|| {
            std::fs::read(&f.path)
                .map_err(|e| io_reason(&e))
                .and_then(|b| String::from_utf8(b).map_err(|_| "not valid UTF-8".to_string()))
        });
    }
    let spec = resolve_with(&file, ctx, &|p: &Path| match texts.get(p) {
        Some(Ok(text)) => Ok(text.as_str()),
        Some(Err(reason)) => Err(Some(reason.clone())),
        None => Err(None),
    })?;
    let revision = spec.revision();
    Ok(Loaded {
        file,
        spec,
        revision,
    })
}

/// A short, stable reason for an IO error (without the OS error number).
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "not found".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "is a directory".into(),
        io::ErrorKind::NotADirectory => "not a directory".into(),
        _ => e.to_string(),
    }
}

/// Applies `key = value` overrides to a unit file's TOML: each key is a dotted path (created
/// as needed), each value TOML (`4`, `true`, `["a"]`) or, failing that, a string. Keys are
/// checked against the unit format so a typo is an error, not a silently ignored table.
pub fn apply_overrides(text: &str, overrides: &[(String, String)]) -> Result<String, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
    for (key, value) in overrides {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("invalid key {key:?}"));
        }
        let schema: Vec<&str> = match parts.as_slice() {
            ["env", _] => vec!["env"],
            ["profile", _, "env", _] => vec!["profile.<name>.env"],
            _ => vec![],
        };
        let known = if schema.is_empty() {
            super::file::KEYS.contains(&key.as_str())
        } else {
            true
        };
        if !known || key.starts_with("route") {
            return Err(format!("unknown or unsupported key {key:?}; use a unit key such as instances, env.NAME or process.args"));
        }
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut table = &mut doc;
        for p in &parts[..parts.len() - 1] {
            let entry = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| format!("{key}: `{p}` is not a table"))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), parsed);
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}
