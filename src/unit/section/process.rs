//! `[process]`: what to run and how to stop it.

use std::path::Path;

use toml::de::DeValue;

use crate::unit::decode::{int_value, Decoder, Field, Table};
use crate::unit::file::{normalize_path, EnvFileRef, ProcessSection, STOP_SIGNALS};
use crate::unit::hint;

pub(crate) fn decode_process(
    d: &mut Decoder<'_>,
    mut t: Table<'_, '_>,
    dir: &Path,
    shown_dir: &Path,
) -> ProcessSection {
    let mut p = ProcessSection::placeholder(dir);
    match t.take(d, "command") {
        Some(f) => match f.value.get_ref() {
            DeValue::Array(items) => {
                let words: Vec<String> = items
                    .iter()
                    .filter_map(|i| i.get_ref().as_str())
                    .map(|s| format!("{s:?}"))
                    .collect();
                let hint = match words.split_first() {
                    Some((program, [])) => format!("write command = {program}"),
                    Some((program, rest)) => {
                        format!("write command = {program} and args = [{}]", rest.join(", "))
                    }
                    None => "write command = \"path/to/program\"".into(),
                };
                f.type_error(d, "a string", Some(hint));
            }
            _ => {
                if let Some(c) = f.non_empty_string(d) {
                    p.command = c;
                }
            }
        },
        None => t.missing(
            d,
            "command",
            "missing required key `command` in [process]".into(),
            Some("add command = \"path/to/program\"".into()),
        ),
    }
    if let Some(f) = t.take(d, "args") {
        if let Some(items) = f.strings(d, "an array of strings") {
            p.args = items.into_iter().map(|i| i.value).collect();
        }
    }
    if let Some(f) = t.take(d, "cwd") {
        if let Some(cwd) = f.non_empty_string(d) {
            p.cwd = normalize_path(&dir.join(cwd));
        }
    }
    p.user = t.take(d, "user").and_then(|f| user_or_group(d, &f));
    p.group = t.take(d, "group").and_then(|f| user_or_group(d, &f));
    if let Some(f) = t.take(d, "env_file") {
        p.env_files = decode_env_files(d, &f, dir, shown_dir);
    }
    decode_stop(d, &mut t, &mut p);
    if let Some(f) = t.take(d, "max_memory") {
        if let Some(v) = f.size(d) {
            if v == 0 {
                f.error(
                    d,
                    "`max_memory` must be greater than 0",
                    Some("remove the key for no limit".into()),
                );
            } else {
                p.max_memory = Some(v);
            }
        }
    }
    decode_listen_timeout(d, &mut t, &mut p);
    t.end(d);
    p
}

/// `env_file`: a path or an array of paths, relative to the unit file's directory.
pub(crate) fn decode_env_files(
    d: &mut Decoder<'_>,
    f: &Field<'_, '_>,
    dir: &Path,
    shown_dir: &Path,
) -> Vec<EnvFileRef> {
    let mut out = Vec::new();
    for item in f
        .string_or_strings(d, "a path or an array of paths")
        .unwrap_or_default()
    {
        if item.value.trim().is_empty() {
            d.error(item.at, item.path, "env file path must not be empty", None);
            continue;
        }
        out.push(EnvFileRef {
            path: normalize_path(&dir.join(&item.value)),
            shown: normalize_path(&shown_dir.join(&item.value)),
            pos: d.pos(item.at),
        });
    }
    out
}

/// `stop_signal` and `kill_timeout`, shared by [process] and [container].
pub(crate) fn decode_stop(d: &mut Decoder<'_>, t: &mut Table<'_, '_>, p: &mut ProcessSection) {
    if let Some(f) = t.take(d, "stop_signal") {
        if let Some(s) = decode_signal(d, &f) {
            p.stop_signal = s;
        }
    }
    if let Some(v) = t.take(d, "kill_timeout").and_then(|f| f.duration(d)) {
        p.kill_timeout = v;
    }
}

/// `listen_timeout`, shared by [process] and [container].
pub(crate) fn decode_listen_timeout(
    d: &mut Decoder<'_>,
    t: &mut Table<'_, '_>,
    p: &mut ProcessSection,
) {
    if let Some(v) = t
        .take(d, "listen_timeout")
        .and_then(|f| f.positive_duration(d))
    {
        p.listen_timeout = v;
    }
}

/// A user or group: a name, or a numeric id (as a string or an integer).
fn user_or_group(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<String> {
    if let DeValue::Integer(_) = f.value.get_ref() {
        return f.u32(d, 0, u32::MAX).map(|n| n.to_string());
    }
    let s = f.non_empty_string(d)?;
    if s.contains(|c: char| c.is_whitespace() || c == ':') {
        f.error(
            d,
            format!("invalid `{}` {s:?}", f.name),
            Some("give one user or group name, or a numeric id".into()),
        );
        return None;
    }
    Some(s)
}

pub(crate) fn decode_signal(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<String> {
    let list = STOP_SIGNALS.join(", ");
    match f.value.get_ref() {
        DeValue::String(s) => {
            let upper = s.trim().to_ascii_uppercase();
            let full = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            if let Some(sig) = STOP_SIGNALS.iter().find(|sig| **sig == full) {
                return Some((*sig).to_string());
            }
            let hint = hint::closest(&full, STOP_SIGNALS).map(|c| format!("did you mean \"{c}\"?"));
            f.error(
                d,
                format!("invalid stop signal {s:?}; expected one of: {list}"),
                hint,
            );
            None
        }
        DeValue::Integer(i) => {
            let by_number = [
                (1, "SIGHUP"),
                (2, "SIGINT"),
                (3, "SIGQUIT"),
                (9, "SIGKILL"),
                (10, "SIGUSR1"),
                (12, "SIGUSR2"),
                (15, "SIGTERM"),
                (28, "SIGWINCH"),
            ];
            let n = int_value(i);
            let hint = by_number
                .iter()
                .find(|(k, _)| Some(*k) == n)
                .map(|(_, name)| format!("write \"{name}\""));
            f.type_error(d, "a signal name such as \"SIGTERM\"", hint);
            None
        }
        _ => {
            f.type_error(d, "a signal name such as \"SIGTERM\"", None);
            None
        }
    }
}
