//! docker compose file → one container unit per service.
//!
//! Interpolates `${VAR}` forms first (as compose does, on values only), then maps each service's
//! keys onto `[container]`, `[env]`, `[restart]`, `[health]`, `instances`, `port` and
//! `depends_on`, and notes every key or value it cannot carry over. docs/import.md lists the
//! mapping; keep the two in step.
//!
//! This file holds the whole-file passes (interpolation, unit names, dependencies, host-port
//! overlaps, top-level volumes and networks); `service` maps one service's keys, and `syntax`
//! reads the small syntaxes inside values (ports, durations, sizes, curl/wget probes).

use std::collections::{BTreeMap, BTreeSet};

use super::doc::{UnitDoc, Value};
use super::interpolate::interpolate;
use super::yaml::{self, Kind, Node};
use super::{finish, unit_name, Context, Error, Import, Note};

mod service;
mod syntax;

use service::Service;

/// Converts a compose file.
pub(crate) fn convert(text: &str, cx: &Context<'_>) -> Result<Import, Error> {
    let mut root = yaml::parse(text).map_err(|e| Error::Syntax {
        path: cx.file.to_path_buf(),
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    let mut notes = Vec::new();
    let format = |message: &str| Error::Format {
        path: cx.file.to_path_buf(),
        message: message.to_string(),
    };
    if root.map().is_none() {
        return Err(format("expected a compose file: a mapping with `services`"));
    }
    interpolate_all(&mut root, cx, &mut notes);
    let services = match root.get("services") {
        Some(s) if s.map().is_some_and(|m| !m.is_empty()) => s.clone(),
        Some(_) => return Err(format("`services` holds no services")),
        None => {
            return Err(format(
                "expected a compose file: there is no `services` key",
            ))
        }
    };
    let project = project_name(&root, cx);
    let file_note = |notes: &mut Vec<Note>, key: &str, message: String| {
        notes.push(Note {
            source: String::new(),
            key: key.to_string(),
            message,
        })
    };
    for (key, value) in root.map().unwrap_or_default() {
        match key.as_str() {
            "services" | "version" | "name" | "volumes" | "networks" => {}
            k if k.starts_with("x-") => {}
            "secrets" | "configs" => file_note(
                &mut notes,
                key,
                "chain has no secrets or configs; mount the files with container.volumes".into(),
            ),
            "include" => file_note(
                &mut notes,
                key,
                "included files are not followed; import each of them".into(),
            ),
            _ => file_note(
                &mut notes,
                key,
                format!("not translated ({})", value.kind_name()),
            ),
        }
    }
    let globals = Globals {
        project: project.clone(),
        volumes: root.get("volumes").cloned(),
        networks: root.get("networks").cloned(),
    };
    note_definitions(&globals, &mut notes);

    // Unit names first, so that depends_on can name them.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut taken = BTreeSet::new();
    for (service, _) in services.map().unwrap_or_default() {
        let name = unit_name(service, &taken);
        if &name != service {
            notes.push(Note {
                source: service.clone(),
                key: String::new(),
                message: format!(
                    "the unit is named {name:?} (unit names are letters, digits, `-` and `_`); other containers reach it as {name:?}"
                ),
            });
        }
        taken.insert(name.clone());
        names.insert(service.clone(), name);
    }

    let mut converted: Vec<Converted> = Vec::new();
    for (service, body) in services.map().unwrap_or_default() {
        let mut s = Service {
            doc: UnitDoc::new(&names[service], service),
            notes: &mut notes,
            deps: Vec::new(),
            policy: "never",
        };
        if body.map().is_none() {
            s.note(
                "",
                format!(
                    "expected a mapping of service keys, found {}",
                    body.kind_name()
                ),
            );
            continue;
        }
        if s.convert(service, body, &globals, cx) {
            converted.push(Converted {
                doc: s.doc,
                deps: s.deps,
                policy: s.policy,
            });
        }
    }
    let mut docs = dependencies(converted, &names, &mut notes);
    port_overlaps(&mut docs, &mut notes);
    let position = |source: &str| {
        services
            .map()
            .unwrap_or_default()
            .iter()
            .position(|(s, _)| s == source)
    };
    notes.sort_by_key(|n| position(&n.source).map_or(0, |i| i + 1));
    Ok(finish(docs, notes, cx.out_dir))
}

/// Top-level definitions the services refer to.
pub(super) struct Globals {
    pub project: String,
    pub volumes: Option<Node>,
    pub networks: Option<Node>,
}

/// A converted service waiting for the dependency pass.
struct Converted {
    doc: UnitDoc,
    deps: Vec<Dep>,
    policy: &'static str,
}

/// One `depends_on` entry as written: service name, chain condition, compose key path.
pub(super) struct Dep {
    pub service: String,
    pub condition: &'static str,
    pub key: String,
}

/// Resolves `depends_on` against the converted services: unknown services and cycles are
/// dropped with a note, and `completed` on a unit that always restarts becomes `started`.
fn dependencies(
    services: Vec<Converted>,
    names: &BTreeMap<String, String>,
    notes: &mut Vec<Note>,
) -> Vec<UnitDoc> {
    let converted: BTreeMap<&str, &'static str> = services
        .iter()
        .map(|s| (s.doc.source.as_str(), s.policy))
        .collect();
    let mut edges: BTreeMap<String, Vec<(String, &'static str, String)>> = BTreeMap::new();
    for s in &services {
        let from = s.doc.source.clone();
        let mut kept: Vec<(String, &'static str, String)> = Vec::new();
        for d in &s.deps {
            let note = |notes: &mut Vec<Note>, m: String| {
                notes.push(Note {
                    source: from.clone(),
                    key: d.key.clone(),
                    message: m,
                })
            };
            if d.service == from {
                note(notes, "a service cannot depend on itself; left out".into());
                continue;
            }
            let Some(policy) = converted.get(d.service.as_str()) else {
                let why = if names.contains_key(&d.service) {
                    "was not converted".to_string()
                } else {
                    let close = names
                        .keys()
                        .filter(|n| {
                            n.contains(d.service.as_str()) || d.service.contains(n.as_str())
                        })
                        .map(|n| format!(" (did you mean {n:?}?)"))
                        .next()
                        .unwrap_or_default();
                    format!("is not defined in the file{close}")
                };
                note(
                    notes,
                    format!("service {:?} {why}; the dependency is left out", d.service),
                );
                continue;
            };
            let mut condition = d.condition;
            if condition == "completed" && *policy == "always" {
                note(
                    notes,
                    format!(
                        "{:?} always restarts, so it never completes; waits for \"started\"",
                        d.service
                    ),
                );
                condition = "started";
            }
            if kept.iter().any(|(n, _, _)| n == &d.service) {
                continue;
            }
            kept.push((d.service.clone(), condition, d.key.clone()));
        }
        edges.insert(from, kept);
    }
    // Break cycles: depth-first in file order, dropping an edge that leads back onto the path.
    let order: Vec<String> = services.iter().map(|s| s.doc.source.clone()).collect();
    let mut state: BTreeMap<String, u8> = BTreeMap::new();
    for start in &order {
        break_cycles(start, &mut edges, &mut state, notes);
    }
    services
        .into_iter()
        .map(|s| {
            let mut doc = s.doc;
            let deps = edges.remove(&doc.source).unwrap_or_default();
            if !deps.is_empty() {
                let value = if deps.iter().all(|(_, c, _)| *c == "started") {
                    Value::Array(
                        deps.iter()
                            .map(|(n, _, _)| Value::Str(names[n].clone()))
                            .collect(),
                    )
                } else {
                    Value::Table(
                        deps.iter()
                            .map(|(n, c, _)| (names[n].clone(), Value::Str(c.to_string())))
                            .collect(),
                    )
                };
                doc.set("", "depends_on", value);
            }
            doc
        })
        .collect()
}

/// 0 unvisited, 1 on the current path, 2 done.
fn break_cycles(
    node: &str,
    edges: &mut BTreeMap<String, Vec<(String, &'static str, String)>>,
    state: &mut BTreeMap<String, u8>,
    notes: &mut Vec<Note>,
) {
    if state.get(node).copied().unwrap_or(0) != 0 {
        return;
    }
    state.insert(node.to_string(), 1);
    let targets: Vec<(String, String)> = edges
        .get(node)
        .map(|v| v.iter().map(|(t, _, k)| (t.clone(), k.clone())).collect())
        .unwrap_or_default();
    for (t, key) in targets {
        match state.get(&t).copied().unwrap_or(0) {
            1 => {
                if let Some(v) = edges.get_mut(node) {
                    v.retain(|(x, _, _)| x != &t);
                }
                notes.push(Note {
                    source: node.to_string(),
                    key,
                    message: format!("depending on {t:?} closes a dependency cycle; left out"),
                });
            }
            0 => break_cycles(&t, edges, state, notes),
            _ => {}
        }
    }
    state.insert(node.to_string(), 2);
}

/// Fixed host ports of two units must not overlap in chain: the later unit gets `port = "auto"`
/// (not published on the host) and a note.
fn port_overlaps(docs: &mut [UnitDoc], notes: &mut Vec<Note>) {
    let mut claimed: Vec<(u64, u64, String)> = Vec::new();
    for d in docs.iter_mut() {
        let n = match d.get("", "instances") {
            Some(Value::Int(n)) => (*n).max(1) as u64,
            _ => 1,
        };
        let range = match d.get("", "port") {
            Some(Value::Int(p)) => Some((*p as u64, *p as u64 + n - 1)),
            Some(Value::Str(s)) => s
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))),
            _ => None,
        };
        let Some((a, b)) = range else { continue };
        if let Some((_, _, other)) = claimed.iter().find(|(x, y, _)| a <= *y && *x <= b) {
            notes.push(Note {
                source: d.source.clone(),
                key: "ports".into(),
                message: format!("host ports {a}-{b} overlap those of unit {other:?}; not published (port = \"auto\")"),
            });
            d.remove("port");
            d.remove("container.bind");
            continue;
        }
        claimed.push((a, b, d.name.clone()));
    }
}

/// Interpolates every string value under `services`, `volumes`, `networks` and `name`, noting
/// each unset variable once per service.
fn interpolate_all(root: &mut Node, cx: &Context<'_>, notes: &mut Vec<Note>) {
    let yaml::Value::Map(entries) = &mut root.value else {
        return;
    };
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for (key, value) in entries.iter_mut() {
        if key.starts_with("x-") {
            continue;
        }
        if key == "services" {
            if let yaml::Value::Map(services) = &mut value.value {
                for (name, body) in services.iter_mut() {
                    walk(body, name, "", cx, notes, &mut seen);
                }
            }
        } else {
            walk(value, "", key, cx, notes, &mut seen);
        }
    }
}

fn walk(
    node: &mut Node,
    source: &str,
    path: &str,
    cx: &Context<'_>,
    notes: &mut Vec<Note>,
    seen: &mut BTreeSet<(String, String)>,
) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match &mut node.value {
        yaml::Value::Scalar(s, Kind::Str) if s.contains('$') => {
            let (out, missing) = interpolate(s, cx.env);
            *s = out;
            for m in missing {
                if !seen.insert((source.to_string(), m.name.clone())) {
                    continue;
                }
                let message = match m.required {
                    Some(msg) => format!(
                        "variable {} is required{} but not set in the environment or .env; compose refuses to start, the unit has an empty value",
                        m.name,
                        if msg.is_empty() { String::new() } else { format!(" ({msg:?})") }
                    ),
                    None => format!("variable {} is not set in the environment or .env; an empty string is used, as compose does", m.name),
                };
                notes.push(Note {
                    source: source.to_string(),
                    key: path.to_string(),
                    message,
                });
            }
        }
        yaml::Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, source, &format!("{path}[{i}]"), cx, notes, seen);
            }
        }
        yaml::Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                walk(v, source, &join(k), cx, notes, seen);
            }
        }
        _ => {}
    }
}

/// compose's project name: `name:`, else `COMPOSE_PROJECT_NAME`, else the file's directory;
/// lowercase letters, digits, `-` and `_`.
fn project_name(root: &Node, cx: &Context<'_>) -> String {
    let raw = root
        .get("name")
        .and_then(Node::text)
        .map(str::to_string)
        .or_else(|| (cx.env)("COMPOSE_PROJECT_NAME").filter(|s| !s.is_empty()))
        .unwrap_or_else(|| dir_name(cx));
    let name: String = raw
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let name = name.trim_start_matches(['-', '_']).to_string();
    if name.is_empty() {
        "default".into()
    } else {
        name
    }
}

pub(super) fn dir_name(cx: &Context<'_>) -> String {
    cx.dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into())
}

/// A named volume's engine name: `name:` or external as written, else compose's
/// `<project>_<volume>`, so that the data compose created is found again.
pub(super) fn volume_name(name: &str, g: &Globals) -> String {
    engine_name(name, g.volumes.as_ref(), &g.project)
}

/// A network's engine name, as for volumes but unprefixed when compose would prefix it: chain
/// creates the networks it needs, and the unit should name the network the way the file does.
pub(super) fn network_name(name: &str, g: &Globals) -> String {
    let def = g.networks.as_ref().and_then(|n| n.get(name));
    if let Some(n) = def.and_then(|d| d.get("name")).and_then(Node::text) {
        return n.to_string();
    }
    name.to_string()
}

fn engine_name(name: &str, defs: Option<&Node>, project: &str) -> String {
    let def = defs.and_then(|d| d.get(name));
    if let Some(n) = def.and_then(|d| d.get("name")).and_then(Node::text) {
        return n.to_string();
    }
    let external = def.and_then(|d| d.get("external"));
    if let Some(ext) = external {
        if ext.as_bool() == Some(true) {
            return name.to_string();
        }
        if let Some(n) = ext.get("name").and_then(Node::text) {
            return n.to_string();
        }
    }
    format!("{project}_{name}")
}

/// File-level notes about the top-level `volumes` and `networks` definitions.
fn note_definitions(g: &Globals, notes: &mut Vec<Note>) {
    for (name, def) in g.volumes.as_ref().and_then(Node::map).unwrap_or_default() {
        let key = format!("volumes.{name}");
        if let Some(d) = def
            .get("driver")
            .and_then(Node::text)
            .filter(|d| *d != "local")
        {
            notes.push(Note {
                source: String::new(),
                key: format!("{key}.driver"),
                message: format!("{d:?}: the engine creates volumes with its default driver; create this one yourself first"),
            });
        }
        if def.get("driver_opts").is_some() {
            notes.push(Note {
                source: String::new(),
                key: format!("{key}.driver_opts"),
                message: "not translated; create the volume yourself first (docker volume create) with these options".into(),
            });
        }
    }
    for (name, def) in g.networks.as_ref().and_then(Node::map).unwrap_or_default() {
        for (k, _) in def.map().unwrap_or_default() {
            if matches!(k.as_str(), "name" | "external")
                || (k == "driver" && def.get(k).and_then(Node::text) == Some("bridge"))
            {
                continue;
            }
            notes.push(Note {
                source: String::new(),
                key: format!("networks.{name}.{k}"),
                message: "not translated: chain creates missing networks as plain bridge networks; units reach each other by unit name on chain's own network anyway".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
