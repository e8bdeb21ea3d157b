//! `[container]`: run each instance as a Docker container.
//!
//! Decoding only; the container driver is `chain_agent::driver::container`. The stop keys
//! (`stop_signal`, `kill_timeout`, `listen_timeout`) and `env_file` are shared with
//! `[process]` and land in the same [`ProcessSection`], so the supervisor treats both kinds
//! alike.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use toml::de::DeValue;

use super::process::{decode_env_files, decode_listen_timeout, decode_stop};
use crate::unit::decode::{int_value, Decoder, Field, Table};
use crate::unit::file::{normalize_path, ProcessSection};
use crate::unit::spec::{ContainerConfig, Gpus, PullPolicy, VolumeSource, VolumeSpec};

/// Docker's own lower limit for a memory limit.
const MIN_MEMORY: u64 = 6 << 20;
const MAX_CPUS: f64 = 1024.0;

/// Networks chain does not let a unit join: they replace the container's network stack.
const RESERVED_NETWORKS: &[&str] = &["host", "none"];

pub(crate) fn decode_container(
    d: &mut Decoder<'_>,
    mut t: Table<'_, '_>,
    dir: &Path,
    shown_dir: &Path,
    unit_port_none: bool,
) -> (ProcessSection, ContainerConfig) {
    let mut p = ProcessSection::placeholder(dir);
    let mut c = ContainerConfig {
        image: String::new(),
        pull: PullPolicy::Missing,
        command: None,
        entrypoint: None,
        working_dir: None,
        port: None,
        bind: "127.0.0.1".into(),
        volumes: Vec::new(),
        networks: Vec::new(),
        labels: BTreeMap::new(),
        millicpus: None,
        memory: None,
        user: None,
        read_only: false,
        init: false,
        gpus: None,
    };
    match t.take(d, "image") {
        Some(f) => {
            if let Some(image) = f.non_empty_string(d) {
                if check_image(d, &f, &image) {
                    c.image = image;
                }
            }
        }
        None => t.missing(
            d,
            "image",
            "missing required key `image` in [container]".into(),
            Some("add image = \"name:tag\" (a local image, or one the engine can pull)".into()),
        ),
    }
    if let Some(f) = t.take(d, "pull") {
        if let Some(v) = f.choice(
            d,
            "pull policy",
            &PullPolicy::ALL,
            &[("if_not_present", "missing"), ("if-not-present", "missing")],
        ) {
            c.pull = match v {
                "always" => PullPolicy::Always,
                "never" => PullPolicy::Never,
                _ => PullPolicy::Missing,
            };
        }
    }
    if let Some(f) = t.take(d, "command") {
        c.command = words(d, &f, false);
    }
    if let Some(f) = t.take(d, "entrypoint") {
        c.entrypoint = words(d, &f, true);
    }
    if let Some(f) = t.take(d, "working_dir") {
        if let Some(w) = f.non_empty_string(d) {
            if w.starts_with('/') {
                c.working_dir = Some(w);
            } else {
                f.error(
                    d,
                    format!(
                        "`working_dir` must be an absolute path inside the container, found {w:?}"
                    ),
                    Some(format!("write \"/{}\"", w.trim_start_matches("./"))),
                );
            }
        }
    }
    if let Some(f) = t.take(d, "port") {
        if let DeValue::String(s) = f.value.get_ref() {
            // "80", "80/tcp", "8080:80": the container port is the last one before the protocol.
            let hint = s
                .rsplit(':')
                .next()
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.trim().parse::<u16>().ok())
                .map(|p| format!("write port = {p}"));
            f.type_error(
                d,
                "the port number the app listens on inside the container",
                hint,
            );
        } else if let Some(n) = f.u32(d, 1, 65535) {
            if unit_port_none {
                f.key_error(
                    d,
                    "`container.port` is set, but the unit has port = \"none\"",
                    Some("remove port = \"none\" so that chain reaches the container on its port, or remove container.port".into()),
                );
            } else {
                c.port = Some(n as u16);
            }
        }
    }
    if let Some(f) = t.take(d, "bind") {
        if let Some(s) = f.non_empty_string(d) {
            match s.trim().parse::<IpAddr>() {
                Ok(ip) => c.bind = ip.to_string(),
                Err(_) => f.error(
                    d,
                    format!("invalid bind address {s:?}"),
                    Some(
                        "give an IP address of this host, such as \"127.0.0.1\" or \"0.0.0.0\""
                            .into(),
                    ),
                ),
            }
        }
    }
    if let Some(f) = t.take(d, "volumes") {
        for item in f
            .strings(d, "an array of \"source:target[:ro]\" strings")
            .unwrap_or_default()
        {
            match parse_volume(&item.value, dir) {
                Ok(v) => c.volumes.push(v),
                Err((message, hint)) => d.error(item.at, item.path, message, hint),
            }
        }
        let mut targets: Vec<&str> = c.volumes.iter().map(|v| v.target.as_str()).collect();
        targets.sort_unstable();
        if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
            f.error(
                d,
                format!("two volumes are mounted at {}", w[0]),
                Some("each target path takes one volume".into()),
            );
        }
    }
    if let Some(f) = t.take(d, "networks") {
        for item in f
            .strings(d, "an array of network names")
            .unwrap_or_default()
        {
            let name = item.value.trim();
            if RESERVED_NETWORKS.contains(&name) {
                d.error(
                    item.at,
                    item.path,
                    format!("network {name:?} replaces the container's network, which chain needs to reach it"),
                    Some("remove it; chain puts every container on its own bridge network".into()),
                );
            } else if !valid_network_name(name) {
                d.error(
                    item.at,
                    item.path,
                    format!("invalid network name {name:?}"),
                    Some("network names are letters, digits, `_`, `.` and `-`, and start with a letter or digit".into()),
                );
            } else if c.networks.iter().any(|n| n == name) {
                d.error(
                    item.at,
                    item.path,
                    format!("network {name:?} is listed twice"),
                    None,
                );
            } else {
                c.networks.push(name.to_string());
            }
        }
    }
    if let Some(f) = t.take(d, "labels") {
        if let Some(mut lt) = f.table_with(
            d,
            Some("write labels = { \"com.example.team\" = \"web\" }".into()),
        ) {
            for l in lt.take_rest() {
                if l.name.starts_with("chain.") {
                    l.key_error(
                        d,
                        format!("label `{}` is reserved", l.name),
                        Some("chain sets chain.unit, chain.instance, chain.revision and the other chain.* labels itself".into()),
                    );
                    continue;
                }
                if let Some(v) = l.string(d) {
                    c.labels.insert(l.name.to_string(), v);
                }
            }
        }
    }
    if let Some(f) = t.take(d, "cpus") {
        c.millicpus = cpus(d, &f);
    }
    if let Some(f) = t.take(d, "memory") {
        if let Some(v) = f.size(d) {
            if v < MIN_MEMORY {
                f.error(
                    d,
                    format!(
                        "`memory` must be at least 6MiB (the engine's minimum), found {v} bytes"
                    ),
                    Some("remove the key for no limit".into()),
                );
            } else {
                c.memory = Some(v);
            }
        }
    }
    if let Some(f) = t.take(d, "user") {
        if let DeValue::Integer(_) = f.value.get_ref() {
            c.user = f.u32(d, 0, u32::MAX).map(|n| n.to_string());
        } else if let Some(u) = f.non_empty_string(d) {
            if u.contains(char::is_whitespace) || u.matches(':').count() > 1 {
                f.error(
                    d,
                    format!("invalid user {u:?}"),
                    Some(
                        "write a user name or id, optionally with a group: \"1000\" or \"app:app\""
                            .into(),
                    ),
                );
            } else {
                c.user = Some(u);
            }
        }
    }
    if let Some(v) = t.take(d, "read_only").and_then(|f| f.bool(d)) {
        c.read_only = v;
    }
    if let Some(v) = t.take(d, "init").and_then(|f| f.bool(d)) {
        c.init = v;
    }
    if let Some(f) = t.take(d, "gpus") {
        c.gpus = gpus(d, &f);
    }
    if let Some(f) = t.take(d, "env_file") {
        p.env_files = decode_env_files(d, &f, dir, shown_dir);
    }
    decode_stop(d, &mut t, &mut p);
    decode_listen_timeout(d, &mut t, &mut p);
    t.end(d);
    (p, c)
}

/// Image references: no whitespace, and a lowercase repository (Docker rejects uppercase).
fn check_image(d: &mut Decoder<'_>, f: &Field<'_, '_>, image: &str) -> bool {
    if image.contains(|ch: char| ch.is_whitespace() || ch.is_control()) || image.starts_with('-') {
        f.error(
            d,
            format!("invalid image reference {image:?}"),
            Some("write name[:tag] or name@sha256:digest, such as \"nginx:1.25-alpine\"".into()),
        );
        return false;
    }
    let repository = image.split('@').next().unwrap_or(image);
    // A colon after the last slash starts the tag; one before it is a registry port.
    let repository = match repository.rfind(':') {
        Some(i) if !repository[i..].contains('/') => &repository[..i],
        _ => repository,
    };
    // The registry host (first component with a dot, colon or "localhost") may have capitals.
    let path = match repository.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => repository,
    };
    if path.chars().any(|ch| ch.is_ascii_uppercase()) {
        f.error(
            d,
            format!("invalid image reference {image:?}: repository names are lowercase"),
            Some(format!("write {:?}", image.to_ascii_lowercase())),
        );
        return false;
    }
    true
}

/// `command` and `entrypoint`: an array of words, or a string split as a shell splits words
/// (quotes and backslashes, no expansion), as compose does.
fn words(d: &mut Decoder<'_>, f: &Field<'_, '_>, allow_empty: bool) -> Option<Vec<String>> {
    let list = match f.value.get_ref() {
        DeValue::String(s) => match split_words(s) {
            Ok(w) => w,
            Err(e) => {
                f.error(
                    d,
                    format!("cannot split `{}` into words: {e}", f.name),
                    Some("close the quote, or write an array of words".into()),
                );
                return None;
            }
        },
        _ => f
            .strings(d, "a string or an array of strings")?
            .into_iter()
            .map(|i| i.value)
            .collect(),
    };
    if list.is_empty() && !allow_empty {
        f.error(
            d,
            format!("`{}` must not be empty", f.name),
            Some("remove the key to keep the image's own".into()),
        );
        return None;
    }
    Some(list)
}

/// Splits like a POSIX shell: whitespace separates words; single quotes keep everything;
/// double quotes keep everything but `\"`, `\\`, `\$` and `` \` ``; a backslash outside quotes
/// keeps the next character. No expansion of any kind.
pub(crate) fn split_words(s: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unclosed single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unclosed double quote"),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unclosed double quote"),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err("trailing backslash"),
            },
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
    Ok(words)
}

/// `source:target[:ro|rw]`. A source starting with `/`, `.` or `~` is a host path (relative
/// to the unit file's directory); anything else names a volume.
pub(crate) fn parse_volume(text: &str, dir: &Path) -> Result<VolumeSpec, (String, Option<String>)> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => {
            return Err((
                format!("volume {text:?} has no source"),
                Some(format!(
                    "name the volume (\"data:{target}\") or give a host path (\"./data:{target}\")"
                )),
            ))
        }
        [source, target] => (*source, *target, None),
        [source, target, mode] => (*source, *target, Some(*mode)),
        _ => {
            return Err((
                format!("invalid volume {text:?}"),
                Some("write \"source:target\" or \"source:target:ro\"".into()),
            ))
        }
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err((
                format!("invalid volume mode {other:?} in {text:?}; expected ro or rw"),
                None,
            ))
        }
    };
    if !target.starts_with('/') {
        return Err((
            format!("volume target {target:?} must be an absolute path inside the container"),
            Some(format!(
                "write \"{source}:/{}\"",
                target.trim_start_matches("./")
            )),
        ));
    }
    if source.is_empty() {
        return Err((format!("volume {text:?} has an empty source"), None));
    }
    let source = if source.starts_with('/') || source.starts_with('.') {
        VolumeSource::Bind(normalize_path(&dir.join(source)))
    } else if let Some(rest) = source.strip_prefix('~') {
        let home = std::env::var_os("HOME").unwrap_or_default();
        let rest = rest.trim_start_matches('/');
        VolumeSource::Bind(normalize_path(&Path::new(&home).join(rest)))
    } else if valid_network_name(source) {
        VolumeSource::Volume(source.to_string())
    } else {
        return Err((
            format!("invalid volume name {source:?}"),
            Some("host paths start with `/` or `./`; volume names are letters, digits, `_`, `.` and `-`".into()),
        ));
    };
    let target = match target.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    Ok(VolumeSpec {
        source,
        target: target.to_string(),
        read_only,
    })
}

/// Docker's rule for network and volume names.
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128
}

/// `cpus = 1.5` → 1500 thousandths.
fn cpus(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<u32> {
    let v = match f.value.get_ref() {
        DeValue::Integer(i) => int_value(i).map(|n| n as f64),
        DeValue::Float(x) => x.as_str().replace('_', "").parse::<f64>().ok(),
        DeValue::String(s) => {
            let hint = s
                .trim()
                .parse::<f64>()
                .ok()
                .map(|n| format!("write cpus = {n} without quotes"));
            f.type_error(d, "a number of CPUs such as 1.5", hint);
            return None;
        }
        _ => {
            f.type_error(d, "a number of CPUs such as 1.5", None);
            return None;
        }
    };
    match v {
        Some(x) if x.is_finite() && (0.001..=MAX_CPUS).contains(&x) => {
            Some((x * 1000.0).round() as u32)
        }
        _ => {
            f.error(
                d,
                format!("`cpus` must be more than 0 and at most {MAX_CPUS}"),
                Some("remove the key for no limit".into()),
            );
            None
        }
    }
}

fn gpus(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<Gpus> {
    match f.value.get_ref() {
        DeValue::String(s) if s.as_ref() == "all" => Some(Gpus::All),
        DeValue::Integer(_) => match f.u32(d, 0, 1024)? {
            0 => None,
            n => Some(Gpus::Count(n)),
        },
        _ => {
            f.type_error(d, "a number of GPUs or \"all\"", None);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        let ok = |s: &str| split_words(s).unwrap();
        assert_eq!(
            ok("redis-server --appendonly yes"),
            ["redis-server", "--appendonly", "yes"]
        );
        assert_eq!(
            ok("  sh -c 'echo $HOME && ls'  "),
            ["sh", "-c", "echo $HOME && ls"]
        );
        assert_eq!(
            ok(r#"a "b c" d\ e "x\"y" ''"#),
            ["a", "b c", "d e", "x\"y", ""]
        );
        assert_eq!(
            ok("postgres\n  -c max_connections=200"),
            ["postgres", "-c", "max_connections=200"]
        );
        assert_eq!(ok(""), Vec::<String>::new());
        assert!(split_words("echo 'x").is_err());
        assert!(split_words("echo \"x").is_err());
        assert!(split_words("echo \\").is_err());
    }

    #[test]
    fn volumes() {
        let dir = Path::new("/srv/units");
        let v = parse_volume("./data:/data", dir).unwrap();
        assert_eq!(v.source, VolumeSource::Bind("/srv/units/data".into()));
        assert_eq!((v.target.as_str(), v.read_only), ("/data", false));
        let v = parse_volume("/etc/ssl/:/etc/ssl/:ro", dir).unwrap();
        assert_eq!(v.source, VolumeSource::Bind("/etc/ssl".into()));
        assert_eq!((v.target.as_str(), v.read_only), ("/etc/ssl", true));
        let v = parse_volume("pgdata:/var/lib/postgresql/data", dir).unwrap();
        assert_eq!(v.source, VolumeSource::Volume("pgdata".into()));
        assert_eq!(
            parse_volume("../shared:/s:rw", dir).unwrap().source,
            VolumeSource::Bind("/srv/shared".into())
        );
        for bad in [
            "/data",
            "x:data",
            "x:/d:rx",
            "a:b:c:d",
            ":/d",
            "bad name:/d",
        ] {
            assert!(parse_volume(bad, dir).is_err(), "{bad}");
        }
    }
}
