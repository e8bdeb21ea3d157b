//! `watch`: restart on file changes.

use std::path::{Path, PathBuf};

use toml::de::DeValue;

use crate::unit::decode::{Decoder, Field};
use crate::unit::file::{defaults, normalize_path, WatchSection};

pub(crate) fn decode_watch(
    d: &mut Decoder<'_>,
    f: &Field<'_, '_>,
    cwd: &Path,
) -> Option<WatchSection> {
    let mut w = WatchSection {
        enabled: true,
        paths: vec![cwd.to_path_buf()],
        ignore: Vec::new(),
        debounce: defaults::WATCH_DEBOUNCE,
    };
    let expected = "true, false, an array of paths or a [watch] table";
    match f.value.get_ref() {
        DeValue::Boolean(true) => Some(w),
        DeValue::Boolean(false) => None,
        DeValue::Array(_) => {
            w.paths = watch_paths(d, f, cwd)?;
            Some(w)
        }
        DeValue::Table(_) => {
            let mut t = f.table(d)?;
            let mut ok = true;
            if let Some(f) = t.take(d, "paths") {
                match watch_paths(d, &f, cwd) {
                    Some(p) => w.paths = p,
                    None => ok = false,
                }
            }
            if let Some(f) = t.take(d, "ignore") {
                match f.strings(d, "an array of glob patterns") {
                    Some(items) => {
                        for item in items {
                            match globset::Glob::new(&item.value) {
                                Ok(_) => w.ignore.push(item.value),
                                Err(e) => {
                                    d.error(
                                        item.at,
                                        item.path,
                                        format!("invalid glob {:?}: {}", item.value, e.kind()),
                                        None,
                                    );
                                    ok = false;
                                }
                            }
                        }
                    }
                    None => ok = false,
                }
            }
            if let Some(v) = t.take(d, "debounce").and_then(|f| f.duration(d)) {
                w.debounce = v;
            }
            if let Some(v) = t.take(d, "enabled").and_then(|f| f.bool(d)) {
                w.enabled = v;
            }
            t.end(d);
            ok.then_some(w)
        }
        DeValue::String(s) => {
            let hint = match s.as_ref() {
                "true" | "false" => format!("write watch = {s} without quotes"),
                _ => format!("write watch = [{s:?}]"),
            };
            f.type_error(d, expected, Some(hint));
            None
        }
        _ => {
            f.type_error(d, expected, None);
            None
        }
    }
}

fn watch_paths(d: &mut Decoder<'_>, f: &Field<'_, '_>, cwd: &Path) -> Option<Vec<PathBuf>> {
    let items = f.strings(d, "an array of paths")?;
    if items.is_empty() {
        f.error(
            d,
            "watch needs at least one path",
            Some("use watch = false to turn watching off".into()),
        );
        return None;
    }
    let mut paths = Vec::new();
    for item in items {
        if item.value.trim().is_empty() {
            d.error(
                item.at,
                item.path,
                "watch path must not be empty",
                Some("write \".\" for the working directory".into()),
            );
            return None;
        }
        paths.push(normalize_path(&cwd.join(&item.value)));
    }
    Some(paths)
}
