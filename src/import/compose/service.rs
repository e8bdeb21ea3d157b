//! One compose service → one unit: the key-by-key mapping and its notes.

use std::collections::BTreeSet;
use std::time::Duration;

use super::syntax::{
    compose_bytes, go_duration, http_probe, long_port, shell_http_probe, short_port,
};
use super::{network_name, volume_name, Dep, Globals};
use crate::import::doc::{UnitDoc, Value};
use crate::import::yaml::{self, Kind, Node};
use crate::import::{rebase, rebase_bind, Context, Note};
use crate::unit::{format_duration, format_size, RESERVED_ENV};

/// Images that usually sit in front of the other services as a reverse proxy.
const REVERSE_PROXIES: &[&str] = &["nginx", "traefik", "haproxy", "caddy", "envoy", "httpd"];

/// Service keys with a fixed reason why chain does not carry them over.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("container_name", "chain names containers itself, one per instance; other containers reach the unit by its unit name"),
    ("hostname", "containers are reached by the unit name on chain's network"),
    ("domainname", "containers are reached by the unit name on chain's network"),
    ("profiles", "chain runs every unit in the directory; delete the unit file if it belongs to a profile you do not run"),
    ("extends", "not followed; copy the keys of the extended service into this one and import again"),
    ("secrets", "chain has no secrets; mount the file with container.volumes (read-only) or pass it in env_file"),
    ("configs", "chain has no configs; mount the file with container.volumes"),
    ("logging", "chain keeps each unit's logs itself ([logs] sets rotation; `chainctl logs`)"),
    ("links", "not needed: every unit reaches the others by unit name on chain's network"),
    ("external_links", "not needed: every unit reaches the others by unit name on chain's network"),
    ("extra_hosts", "chain has no equivalent"),
    ("dns", "chain has no equivalent"),
    ("dns_search", "chain has no equivalent"),
    ("dns_opt", "chain has no equivalent"),
    ("cap_add", "chain has no equivalent"),
    ("cap_drop", "chain has no equivalent"),
    ("privileged", "chain does not run privileged containers"),
    ("devices", "chain maps only GPUs (container.gpus)"),
    ("ulimits", "chain has no equivalent"),
    ("sysctls", "chain has no equivalent"),
    ("tmpfs", "chain has no tmpfs mounts; a named volume persists instead"),
    ("shm_size", "chain has no equivalent"),
    ("security_opt", "chain has no equivalent"),
    ("ipc", "chain has no equivalent"),
    ("pid", "chain has no equivalent"),
    ("tty", "chain does not attach a terminal"),
    ("stdin_open", "chain does not attach stdin"),
    ("platform", "the engine runs the image for its own platform"),
    ("runtime", "chain uses the engine's default runtime; container.gpus asks for the NVIDIA runtime"),
    ("volumes_from", "list the volumes themselves in container.volumes"),
    ("network_mode", "chain puts every container on its own bridge network"),
    ("memswap_limit", "chain sets only a memory limit (container.memory)"),
    ("mem_reservation", "chain has no reservations"),
    ("mem_swappiness", "chain has no equivalent"),
    ("oom_kill_disable", "chain has no equivalent"),
    ("oom_score_adj", "chain has no equivalent"),
    ("cpu_shares", "chain sets only a CPU limit (container.cpus)"),
    ("cpu_quota", "chain sets only a CPU limit (container.cpus)"),
    ("cpu_period", "chain sets only a CPU limit (container.cpus)"),
    ("cpuset", "chain sets only a CPU limit (container.cpus)"),
    ("cpu_count", "chain sets only a CPU limit (container.cpus)"),
    ("cpu_percent", "chain sets only a CPU limit (container.cpus)"),
    ("pids_limit", "chain has no equivalent"),
    ("cgroup_parent", "chain has no equivalent"),
    ("userns_mode", "chain has no equivalent"),
    ("group_add", "chain has no equivalent"),
    ("mac_address", "chain has no equivalent"),
    ("develop", "compose watch has no equivalent for containers"),
    ("post_start", "chain has no lifecycle hooks"),
    ("pre_stop", "chain has no lifecycle hooks"),
];

/// A service being converted.
pub(super) struct Service<'n> {
    pub doc: UnitDoc,
    pub notes: &'n mut Vec<Note>,
    pub deps: Vec<Dep>,
    /// The restart policy written, for `completed` dependencies on this unit.
    pub policy: &'static str,
}

/// What the port keys said, gathered before `port` and `container.port` are written.
#[derive(Default)]
struct Ports {
    container: Option<u16>,
    host: Option<Value>,
    bind: Option<String>,
}

impl Service<'_> {
    pub fn note(&mut self, key: &str, message: impl Into<String>) {
        self.notes.push(Note {
            source: self.doc.source.clone(),
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// Fills the unit; false when the service cannot become a unit (no image and no build).
    pub fn convert(&mut self, service: &str, svc: &Node, g: &Globals, cx: &Context<'_>) -> bool {
        self.doc.header.push(format!(
            "from compose service {service:?} in {} (chainctl import compose)",
            cx.file_name()
        ));
        if !self.image(service, svc, g, cx) {
            return false;
        }
        let replicas = self.replicas(svc);
        let mut ports = Ports::default();
        self.ports(svc, replicas, &mut ports);
        self.expose(svc, &mut ports);
        let env = self.environment(svc, cx, &mut ports);
        let health = self.healthcheck(svc, &mut ports);

        for (key, value) in svc.map().unwrap_or_default() {
            let c = "container";
            match key.as_str() {
                "command" | "entrypoint" => {
                    if let Some(v) = words_value(value, key == "entrypoint") {
                        self.doc.set(c, key, v);
                    } else if !value.is_null() {
                        self.note(
                            key,
                            format!("expected a string or a list, found {}", value.kind_name()),
                        );
                    }
                }
                "working_dir" => {
                    if let Some(w) = value.text() {
                        self.doc.set(c, "working_dir", w);
                    }
                }
                "user" => match &value.value {
                    yaml::Value::Scalar(s, Kind::Int) => {
                        self.doc.set(c, "user", Value::Int(s.parse().unwrap_or(0)))
                    }
                    _ => {
                        if let Some(u) = value.text() {
                            self.doc.set(c, "user", u);
                        }
                    }
                },
                "read_only" | "init" => match value.as_bool() {
                    Some(b) => self.doc.set(c, key, Value::Bool(b)),
                    None => self.note(key, "expected true or false"),
                },
                "pull_policy" => self.pull_policy(value),
                _ => {}
            }
        }
        match ports.container {
            Some(p) => {
                self.doc.set("container", "port", Value::Int(p.into()));
                if let Some(host) = ports.host.clone() {
                    self.doc.set("", "port", host);
                    self.doc.set(
                        "container",
                        "bind",
                        ports.bind.clone().unwrap_or_else(|| "0.0.0.0".into()),
                    );
                }
            }
            None => self.doc.set_commented(
                "",
                "port",
                "none",
                "compose gives no port (ports, expose, PORT); set container.port for a readiness check",
            ),
        }
        self.volumes(svc, g, cx);
        self.networks(svc, g);
        self.env_files(svc, cx);
        self.resources(svc);
        self.stop(svc);
        self.labels(svc);
        if !env.is_empty() {
            for (k, v) in env {
                self.doc.set("env", &k, v);
            }
        }
        self.restart(svc);
        if let Some(h) = health {
            for (k, v) in h {
                self.doc.set("health", &k, v);
            }
        }
        self.depends_on(svc);
        if let Some(n) = replicas.filter(|n| *n != 1) {
            self.doc.set("", "instances", Value::Int(n as i64));
            // instances reads better first.
            let top = &mut self.doc.sections[0].entries;
            let last = top.pop().expect("just set");
            top.insert(0, last);
        }
        self.unsupported(svc);
        true
    }

    fn image(&mut self, service: &str, svc: &Node, g: &Globals, cx: &Context<'_>) -> bool {
        let image = svc.get("image").and_then(Node::text).map(str::to_string);
        let build = svc.get("build").filter(|b| !b.is_null());
        let image = match (image, build) {
            (Some(image), None) => image,
            (image, Some(build)) => {
                let named = image.is_some();
                let image = image.unwrap_or_else(|| default_image(&g.project, service));
                let command = build_command(&image, build);
                let why = if named {
                    "chain runs images and does not build them"
                } else {
                    "chain runs images and does not build them; the unit runs the image compose would build"
                };
                self.note(
                    "build",
                    format!(
                        "{why}: build it first, in the directory of {}, with `{command}` (or push it to a registry and set container.image)",
                        cx.file_name()
                    ),
                );
                self.doc
                    .header
                    .push(format!("build the image first: {command}"));
                image
            }
            (None, None) => {
                self.note(
                    "image",
                    "not converted: the service has neither `image` nor `build`",
                );
                return false;
            }
        };
        self.doc.set("container", "image", image.as_str());
        let base = image
            .rsplit('/')
            .next()
            .unwrap_or(&image)
            .split([':', '@'])
            .next()
            .unwrap_or("");
        if REVERSE_PROXIES.contains(&base) && svc.get("ports").is_some() {
            self.note(
                "ports",
                "this looks like a reverse proxy in front of the other services: chain's proxy can replace it \
                 (give the units it forwards to [[route]] tables and start chaind with --http/--https); \
                 until then it runs as before, on the ports below",
            );
        }
        true
    }

    fn pull_policy(&mut self, value: &Node) {
        let policy = match value.text().unwrap_or("") {
            "always" => "always",
            "never" => "never",
            "missing" | "if_not_present" => "missing",
            other => {
                self.note(
                    "pull_policy",
                    format!("{other:?} has no equivalent; chain pulls missing images (container.pull = \"missing\")"),
                );
                return;
            }
        };
        self.doc.set("container", "pull", policy);
    }

    /// `deploy.replicas`, else `scale`.
    fn replicas(&mut self, svc: &Node) -> Option<u64> {
        let deploy = svc.get("deploy");
        if let Some(mode) = deploy.and_then(|d| d.get("mode")).and_then(Node::text) {
            if mode == "global" {
                self.note("deploy.mode", "\"global\" (one per node) has no equivalent on one host; the unit runs one instance");
            }
        }
        let from = |n: Option<&Node>| n.and_then(Node::as_u64);
        match from(deploy.and_then(|d| d.get("replicas"))).or_else(|| from(svc.get("scale"))) {
            Some(n) if n > 1024 => {
                self.note(
                    "deploy.replicas",
                    format!("{n} replicas is more than chain's 1024 instances"),
                );
                None
            }
            other => other,
        }
    }

    fn ports(&mut self, svc: &Node, replicas: Option<u64>, ports: &mut Ports) {
        let Some(items) = svc.get("ports").and_then(Node::seq) else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let key = format!("ports[{i}]");
            let parsed = match item.map() {
                Some(_) => long_port(item),
                None => item
                    .text()
                    .ok_or_else(|| "expected a string or a mapping".to_string())
                    .and_then(short_port),
            };
            let p = match parsed {
                Ok(p) => p,
                Err(why) => {
                    self.note(&key, format!("not translated: {why}"));
                    continue;
                }
            };
            if p.protocol != "tcp" {
                self.note(
                    &key,
                    format!(
                        "{} ports are not published: chain publishes TCP only",
                        p.protocol
                    ),
                );
                continue;
            }
            if p.container.0 != p.container.1 {
                self.note(&key, format!("{:?}: a container port range has no equivalent; chain uses one port per unit", p.text));
                continue;
            }
            if ports.container.is_some() {
                self.note(
                    &key,
                    format!(
                        "{:?} is not published: a unit has one port, and it is the first mapping's",
                        p.text
                    ),
                );
                continue;
            }
            ports.container = Some(p.container.0);
            match p.host {
                Some((h, e)) if h != 0 && h == e => {
                    ports.host = Some(Value::Int(h.into()));
                    if let Some(n) = replicas.filter(|n| *n > 1) {
                        self.note(
                            &key,
                            format!(
                                "host port {h} with {n} replicas: compose cannot publish one host port {n} times; chain gives instance i the port {h} + i ({h}-{})",
                                u64::from(h) + n - 1
                            ),
                        );
                    }
                    if h == 80 || h == 443 {
                        self.note(
                            &key,
                            format!("chaind's proxy listens on port {h} when started with --{} :{h}; only one of them can have it", if h == 80 { "http" } else { "https" }),
                        );
                    }
                }
                Some((h, e)) if h != 0 => ports.host = Some(Value::Str(format!("{h}-{e}"))),
                _ => {}
            }
            if ports.host.is_some() {
                match p.ip {
                    Some(ip) => ports.bind = Some(ip),
                    None => self.note(
                        &key,
                        "published on every address (bind = \"0.0.0.0\") as compose does; chain's default is 127.0.0.1, which keeps it off the network",
                    ),
                }
            }
        }
    }

    fn expose(&mut self, svc: &Node, ports: &mut Ports) {
        let Some(items) = svc.get("expose").and_then(Node::seq) else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let key = format!("expose[{i}]");
            let text = item.text().unwrap_or("");
            let port = text
                .split('/')
                .next()
                .and_then(|p| p.trim().parse::<u16>().ok())
                .filter(|p| *p > 0);
            match (port, ports.container) {
                (Some(p), None) => ports.container = Some(p),
                (Some(p), Some(c)) if p == c => {}
                _ => self.note(
                    &key,
                    format!("{text:?} not translated: a unit has one port"),
                ),
            }
        }
    }

    /// `[env]` entries; `PORT` goes to `container.port`.
    fn environment(
        &mut self,
        svc: &Node,
        cx: &Context<'_>,
        ports: &mut Ports,
    ) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = Vec::new();
        let mut raw: Vec<(String, Option<String>, String)> = Vec::new();
        match svc.get("environment").map(|n| &n.value) {
            Some(yaml::Value::Map(entries)) => {
                for (k, v) in entries {
                    raw.push((
                        k.clone(),
                        v.text().map(str::to_string),
                        format!("environment.{k}"),
                    ));
                }
            }
            Some(yaml::Value::Seq(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let text = item.text().unwrap_or("");
                    match text.split_once('=') {
                        Some((k, v)) => raw.push((
                            k.to_string(),
                            Some(v.to_string()),
                            format!("environment[{i}]"),
                        )),
                        None => raw.push((text.to_string(), None, format!("environment[{i}]"))),
                    }
                }
            }
            Some(yaml::Value::Null) | None => {}
            Some(_) => self.note("environment", "expected a mapping or a list"),
        }
        for (name, value, key) in raw {
            let value = match value {
                Some(v) => v,
                None => match (cx.env)(&name) {
                    Some(v) => v,
                    None => {
                        self.note(
                            &key,
                            format!("{name} has no value and is not set in the environment or .env; left out, as compose leaves it out"),
                        );
                        continue;
                    }
                },
            };
            if name == "PORT" {
                match (value.trim().parse::<u16>(), ports.container) {
                    (Ok(p), None) if p > 0 => {
                        ports.container = Some(p);
                        self.note(
                            &key,
                            format!("chain sets PORT itself: it is container.port = {p}"),
                        );
                    }
                    (Ok(p), Some(c)) if p == c => {
                        self.note(
                            &key,
                            format!("chain sets PORT itself, to container.port ({c})"),
                        );
                    }
                    _ => self.note(
                        &key,
                        format!(
                            "PORT={value:?} is left out: chain sets PORT to container.port{}",
                            match ports.container {
                                Some(c) => format!(" ({c})"),
                                None => String::new(),
                            }
                        ),
                    ),
                }
                continue;
            }
            if RESERVED_ENV.contains(&name.as_str()) {
                self.note(
                    &key,
                    format!("{name} is left out: chain sets it for each instance"),
                );
                continue;
            }
            out.retain(|(k, _)| k != &name);
            out.push((name, Value::Str(value)));
        }
        out
    }

    /// `[health]` keys, or None without a check; an http check's port may become the
    /// container port.
    fn healthcheck(&mut self, svc: &Node, ports: &mut Ports) -> Option<Vec<(String, Value)>> {
        let hc = svc.get("healthcheck")?;
        if hc.get("disable").and_then(Node::as_bool) == Some(true) {
            return None;
        }
        let test = hc.get("test")?;
        let (shell, args): (Option<String>, Vec<String>) = match &test.value {
            yaml::Value::Scalar(s, _) => (Some(s.clone()), Vec::new()),
            yaml::Value::Seq(items) => {
                let words: Vec<String> = items
                    .iter()
                    .filter_map(|i| i.text().map(str::to_string))
                    .collect();
                match words.first().map(String::as_str) {
                    Some("NONE") => return None,
                    Some("CMD") => (None, words[1..].to_vec()),
                    Some("CMD-SHELL") => (Some(words[1..].join(" ")), Vec::new()),
                    _ => {
                        self.note("healthcheck.test", "expected [\"CMD\", ...], [\"CMD-SHELL\", \"...\"] or a string; no health check");
                        return None;
                    }
                }
            }
            _ => return None,
        };
        let mut out: Vec<(String, Value)> = Vec::new();
        let probe = match &shell {
            Some(s) => shell_http_probe(s),
            None => http_probe(&args),
        };
        match probe {
            Some((port, path)) => {
                out.push(("type".into(), "http".into()));
                out.push(("path".into(), path.into()));
                match ports.container {
                    None => ports.container = Some(port),
                    Some(c) if c != port => self.note(
                        "healthcheck.test",
                        format!("the test connects to port {port}; chain's http check connects to container.port ({c})"),
                    ),
                    Some(_) => {}
                }
            }
            None => {
                out.push(("type".into(), "exec".into()));
                let command = match shell {
                    Some(s) => vec!["sh".to_string(), "-c".to_string(), s],
                    None => args,
                };
                out.push(("command".into(), command.into()));
            }
        }
        let mut interval = None;
        for key in ["interval", "timeout", "start_period", "start_interval"] {
            let Some(v) = hc.get(key) else { continue };
            match v.text().map(go_duration) {
                // chain wants interval, timeout and start_interval above zero; compose reads 0 as its default.
                Some(Ok(d)) if d.is_zero() && key != "start_period" => {}
                Some(Ok(d)) => {
                    if key == "interval" {
                        interval = Some(d);
                    }
                    out.push((key.into(), format_duration(d).into()));
                }
                Some(Err(why)) => self.note(&format!("healthcheck.{key}"), why),
                None => self.note(
                    &format!("healthcheck.{key}"),
                    "expected a duration such as \"30s\"",
                ),
            }
        }
        // chain wants timeout <= interval; chain's interval default is 5s.
        let interval = interval.unwrap_or(Duration::from_secs(5));
        if let Some(i) = out.iter().position(|(k, _)| k == "timeout") {
            if let Value::Str(t) = &out[i].1 {
                if crate::unit::parse_duration(t).is_ok_and(|t| t > interval) {
                    self.note(
                        "healthcheck.timeout",
                        format!("{t} is longer than the interval ({}); chain needs timeout <= interval, so the timeout is the interval", format_duration(interval)),
                    );
                    out[i].1 = format_duration(interval).into();
                }
            }
        }
        if let Some(r) = hc.get("retries") {
            match r.as_u64() {
                Some(n) if n >= 1 => out.push(("retries".into(), Value::Int(n as i64))),
                _ => self.note(
                    "healthcheck.retries",
                    "expected a number of at least 1; chain's default (3) applies",
                ),
            }
        }
        Some(out)
    }

    fn volumes(&mut self, svc: &Node, g: &Globals, cx: &Context<'_>) {
        let Some(items) = svc.get("volumes").and_then(Node::seq) else {
            return;
        };
        let mut out: Vec<String> = Vec::new();
        let mut targets = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("volumes[{i}]");
            let (source, target, ro, kind) = match item.map() {
                Some(_) => {
                    let kind = item
                        .get("type")
                        .and_then(Node::text)
                        .unwrap_or("volume")
                        .to_string();
                    let source = item.get("source").and_then(Node::text).map(str::to_string);
                    let Some(target) = item.get("target").and_then(Node::text) else {
                        self.note(&key, "has no target; left out");
                        continue;
                    };
                    let ro = item
                        .get("read_only")
                        .and_then(Node::as_bool)
                        .unwrap_or(false);
                    match kind.as_str() {
                        "bind" | "volume" => {}
                        other => {
                            self.note(&key, format!("{other} mounts have no equivalent; left out"));
                            continue;
                        }
                    }
                    (source, target.to_string(), ro, kind)
                }
                None => {
                    let text = item.text().unwrap_or("");
                    let parts: Vec<&str> = text.split(':').collect();
                    let (source, target, mode) = match parts.as_slice() {
                        [t] => (None, *t, ""),
                        [s, t] => (Some(*s), *t, ""),
                        [s, t, m] => (Some(*s), *t, *m),
                        _ => {
                            self.note(&key, format!("{text:?} not translated"));
                            continue;
                        }
                    };
                    let mut ro = false;
                    for opt in mode.split(',').filter(|o| !o.is_empty()) {
                        match opt {
                            "ro" => ro = true,
                            "rw" => {}
                            other => self.note(
                                &key,
                                format!("mount option {other:?} has no equivalent; left out"),
                            ),
                        }
                    }
                    let kind = match source {
                        Some(s) if s.starts_with(['/', '.', '~']) => "bind",
                        _ => "volume",
                    };
                    (
                        source.map(str::to_string),
                        target.to_string(),
                        ro,
                        kind.to_string(),
                    )
                }
            };
            let Some(source) = source.filter(|s| !s.is_empty()) else {
                self.note(
                    &key,
                    format!("anonymous volume at {target} left out: chain needs a name so that a new container finds the same data; write \"NAME:{target}\" in container.volumes"),
                );
                continue;
            };
            let source = if kind == "bind" {
                rebase_bind(&source, cx.dir(), cx.out_dir)
            } else {
                let engine = volume_name(&source, g);
                if engine != source {
                    self.note(
                        &key,
                        format!("named volume {source:?} is the engine's {engine:?}, the name compose gave it, so the data compose stored is used"),
                    );
                }
                engine
            };
            if !targets.insert(target.clone()) {
                self.note(&key, format!("a second volume at {target} is left out"));
                continue;
            }
            out.push(if ro {
                format!("{source}:{target}:ro")
            } else {
                format!("{source}:{target}")
            });
        }
        if !out.is_empty() {
            self.doc.set("container", "volumes", out);
        }
    }

    fn networks(&mut self, svc: &Node, g: &Globals) {
        let mut names: Vec<String> = Vec::new();
        match svc.get("networks").map(|n| &n.value) {
            Some(yaml::Value::Seq(items)) => {
                names.extend(items.iter().filter_map(Node::text).map(str::to_string));
            }
            Some(yaml::Value::Map(entries)) => {
                for (name, opts) in entries {
                    names.push(name.clone());
                    for (k, _) in opts.map().unwrap_or_default() {
                        match k.as_str() {
                            "aliases" => self.note(
                                &format!("networks.{name}.aliases"),
                                "aliases have no equivalent: containers are reached by the unit name",
                            ),
                            other => self.note(&format!("networks.{name}.{other}"), "has no equivalent"),
                        }
                    }
                }
            }
            _ => return,
        }
        let mut out: Vec<String> = Vec::new();
        for name in names {
            if name == "default" {
                continue;
            }
            let engine = network_name(&name, g);
            if matches!(engine.as_str(), "host" | "none") {
                self.note(
                    &format!("networks.{name}"),
                    "chain needs the container on its own bridge network; left out",
                );
                continue;
            }
            if !out.contains(&engine) {
                out.push(engine);
            }
        }
        if !out.is_empty() {
            self.doc.set("container", "networks", out);
        }
    }

    fn env_files(&mut self, svc: &Node, cx: &Context<'_>) {
        let Some(v) = svc.get("env_file") else { return };
        let items: Vec<&Node> = match &v.value {
            yaml::Value::Seq(items) => items.iter().collect(),
            yaml::Value::Null => return,
            _ => vec![v],
        };
        let mut out: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = if v.seq().is_some() {
                format!("env_file[{i}]")
            } else {
                "env_file".into()
            };
            let (path, required) = match item.map() {
                Some(_) => (
                    item.get("path").and_then(Node::text).unwrap_or(""),
                    item.get("required").and_then(Node::as_bool).unwrap_or(true),
                ),
                None => (item.text().unwrap_or(""), true),
            };
            if path.is_empty() {
                continue;
            }
            let absolute = crate::import::normalize(&cx.dir().join(path));
            if !(cx.exists)(&absolute) {
                let why = if required {
                    "compose would refuse to start"
                } else {
                    "it is optional"
                };
                self.note(&key, format!("{} does not exist ({why}); left out, since chain reads env files when it loads the unit", absolute.display()));
                continue;
            }
            out.push(rebase(path, cx.dir(), cx.out_dir));
        }
        match out.len() {
            0 => {}
            1 => self.doc.set("container", "env_file", out.remove(0)),
            _ => self.doc.set("container", "env_file", out),
        }
    }

    /// Limits and GPU reservations from `deploy.resources`, `mem_limit`, `cpus` and `gpus`.
    fn resources(&mut self, svc: &Node) {
        let resources = svc.get("deploy").and_then(|d| d.get("resources"));
        let limits = resources.and_then(|r| r.get("limits"));
        let cpus = limits
            .and_then(|l| l.get("cpus"))
            .map(|v| (v, "deploy.resources.limits.cpus"))
            .or_else(|| svc.get("cpus").map(|v| (v, "cpus")));
        if let Some((v, key)) = cpus {
            match v.as_f64() {
                Some(x) if x > 0.0 => self.doc.set("container", "cpus", Value::Float(x)),
                _ => self.note(key, "expected a number of CPUs"),
            }
        }
        let memory = limits
            .and_then(|l| l.get("memory"))
            .map(|v| (v, "deploy.resources.limits.memory"))
            .or_else(|| svc.get("mem_limit").map(|v| (v, "mem_limit")));
        if let Some((v, key)) = memory {
            match v.text().map(compose_bytes) {
                Some(Some(n)) => self.doc.set("container", "memory", format_size(n)),
                _ => self.note(key, "expected a size such as \"512M\""),
            }
        }
        for (k, _) in limits.and_then(Node::map).unwrap_or_default() {
            if !matches!(k.as_str(), "cpus" | "memory") {
                self.note(&format!("deploy.resources.limits.{k}"), "has no equivalent");
            }
        }
        let reservations = resources.and_then(|r| r.get("reservations"));
        for (k, v) in reservations.and_then(Node::map).unwrap_or_default() {
            let key = format!("deploy.resources.reservations.{k}");
            match k.as_str() {
                "devices" => {
                    for (i, dev) in v.seq().unwrap_or_default().iter().enumerate() {
                        self.gpu_device(dev, &format!("{key}[{i}]"));
                    }
                }
                _ => self.note(
                    &key,
                    "chain reserves nothing but GPUs (container.gpus); the reservation is left out",
                ),
            }
        }
        if let Some(v) = svc.get("gpus") {
            match (v.text(), v.seq()) {
                (Some("all"), _) => self.doc.set("container", "gpus", "all"),
                (_, Some(devs)) => {
                    for (i, dev) in devs.iter().enumerate() {
                        self.gpu_device(dev, &format!("gpus[{i}]"));
                    }
                }
                _ => self.note("gpus", "expected \"all\" or a list of devices"),
            }
        }
    }

    fn gpu_device(&mut self, dev: &Node, key: &str) {
        let caps: Vec<&str> = dev
            .get("capabilities")
            .and_then(Node::seq)
            .unwrap_or_default()
            .iter()
            .filter_map(Node::text)
            .collect();
        let is_gpu =
            caps.contains(&"gpu") || dev.get("driver").and_then(Node::text) == Some("nvidia");
        if !is_gpu {
            self.note(
                key,
                "only GPU devices have an equivalent (container.gpus); left out",
            );
            return;
        }
        if let Some(d) = dev
            .get("driver")
            .and_then(Node::text)
            .filter(|d| *d != "nvidia")
        {
            self.note(
                &format!("{key}.driver"),
                format!("{d:?}: container.gpus asks the engine for NVIDIA GPUs"),
            );
        }
        if dev.get("device_ids").is_some() {
            self.note(
                &format!("{key}.device_ids"),
                "chain asks for a number of GPUs, not given ones; the count of ids is used",
            );
        }
        for cap in caps
            .iter()
            .filter(|c| !matches!(**c, "gpu" | "utility" | "compute"))
        {
            self.note(
                &format!("{key}.capabilities"),
                format!("{cap:?} has no equivalent"),
            );
        }
        let count = match (dev.get("count"), dev.get("device_ids").and_then(Node::seq)) {
            (Some(c), _) if c.text() == Some("all") => Value::Str("all".into()),
            (Some(c), _) => match c.as_u64() {
                Some(n) => Value::Int(n as i64),
                None => {
                    self.note(&format!("{key}.count"), "expected a number or \"all\"");
                    return;
                }
            },
            (None, Some(ids)) => Value::Int(ids.len() as i64),
            // compose's default count is all GPUs.
            (None, None) => Value::Str("all".into()),
        };
        self.doc.set("container", "gpus", count);
    }

    fn stop(&mut self, svc: &Node) {
        if let Some(s) = svc.get("stop_signal").and_then(Node::text) {
            self.doc.set("container", "stop_signal", s);
        }
        if let Some(v) = svc.get("stop_grace_period") {
            match v.text().map(go_duration) {
                Some(Ok(d)) => self
                    .doc
                    .set("container", "kill_timeout", format_duration(d)),
                Some(Err(why)) => self.note("stop_grace_period", why),
                None => {}
            }
        }
    }

    fn labels(&mut self, svc: &Node) {
        let Some(v) = svc.get("labels") else { return };
        let mut out: Vec<(String, String)> = Vec::new();
        match &v.value {
            yaml::Value::Map(entries) => {
                for (k, v) in entries {
                    out.push((k.clone(), v.text().unwrap_or("").to_string()));
                }
            }
            yaml::Value::Seq(items) => {
                for item in items {
                    let t = item.text().unwrap_or("");
                    let (k, v) = t.split_once('=').unwrap_or((t, ""));
                    out.push((k.to_string(), v.to_string()));
                }
            }
            _ => {}
        }
        for (k, v) in out {
            self.doc.set("container.labels", &k, v);
        }
    }

    fn restart(&mut self, svc: &Node) {
        let r = "restart";
        if let Some(v) = svc.get("restart").and_then(Node::text) {
            let (policy, max) = match v.split_once(':') {
                Some(("on-failure", n)) => ("on-failure", n.parse::<i64>().ok()),
                _ => (v, None),
            };
            match policy {
                "no" => self.doc.set(r, "policy", "never"),
                "always" => self.doc.set(r, "policy", "always"),
                "unless-stopped" => {
                    self.doc
                        .set_commented(r, "policy", "always", "compose: unless-stopped");
                    self.note(
                        "restart",
                        "\"unless-stopped\" is \"always\": a unit stopped with `chainctl stop` stays stopped until `chainctl start`",
                    );
                }
                "on-failure" => {
                    self.doc.set(r, "policy", "on-failure");
                    if let Some(n) = max {
                        self.doc.set_commented(
                            r,
                            "max_restarts",
                            Value::Int(n),
                            "within restart.window (compose counts them all)",
                        );
                    }
                }
                other => {
                    self.note(
                        "restart",
                        format!("unknown policy {other:?}; compose's default (no restart) is used"),
                    );
                    self.doc.set(r, "policy", "never");
                }
            }
        } else if let Some(rp) = svc.get("deploy").and_then(|d| d.get("restart_policy")) {
            let policy = match rp.get("condition").and_then(Node::text).unwrap_or("any") {
                "none" => "never",
                "on-failure" => "on-failure",
                _ => "always",
            };
            self.doc.set(r, "policy", policy);
            if let Some(n) = rp.get("max_attempts").and_then(Node::as_u64) {
                self.doc.set_commented(
                    r,
                    "max_restarts",
                    Value::Int(n as i64),
                    "within restart.window (compose counts them all)",
                );
            }
            if let Some(Ok(d)) = rp.get("delay").and_then(Node::text).map(go_duration) {
                self.doc.set(r, "delay", format_duration(d));
                self.doc.set(
                    r,
                    "max_delay",
                    format_duration(d.max(Duration::from_secs(30))),
                );
            }
            if let Some(Ok(d)) = rp.get("window").and_then(Node::text).map(go_duration) {
                self.doc.set_commented(
                    r,
                    "min_uptime",
                    format_duration(d),
                    "compose: restart_policy.window",
                );
            }
        } else {
            self.doc
                .set_commented(r, "policy", "never", "compose's default: no restart key");
        }
        self.policy = match self.doc.get(r, "policy") {
            Some(Value::Str(p)) if p == "always" => "always",
            Some(Value::Str(p)) if p == "on-failure" => "on-failure",
            _ => "never",
        };
    }

    fn depends_on(&mut self, svc: &Node) {
        match svc.get("depends_on").map(|n| &n.value) {
            Some(yaml::Value::Seq(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(s) = item.text() {
                        self.deps.push(Dep {
                            service: s.to_string(),
                            condition: "started",
                            key: format!("depends_on[{i}]"),
                        });
                    }
                }
            }
            Some(yaml::Value::Map(entries)) => {
                for (name, opts) in entries {
                    let key = format!("depends_on.{name}");
                    let condition = match opts.get("condition").and_then(Node::text) {
                        None | Some("service_started") => "started",
                        Some("service_healthy") => "healthy",
                        Some("service_completed_successfully") => "completed",
                        Some(other) => {
                            self.note(
                                &key,
                                format!("unknown condition {other:?}; waits for \"started\""),
                            );
                            "started"
                        }
                    };
                    if opts.get("required").and_then(Node::as_bool) == Some(false) {
                        self.note(
                            &format!("{key}.required"),
                            "chain dependencies are always required",
                        );
                    }
                    if opts.get("restart").and_then(Node::as_bool) == Some(true) {
                        self.note(
                            &format!("{key}.restart"),
                            "chain does not restart a unit when its dependency restarts",
                        );
                    }
                    self.deps.push(Dep {
                        service: name.clone(),
                        condition,
                        key,
                    });
                }
            }
            _ => {}
        }
    }

    /// Notes for every key that has no equivalent (handled keys are skipped).
    fn unsupported(&mut self, svc: &Node) {
        const HANDLED: &[&str] = &[
            "image",
            "build",
            "command",
            "entrypoint",
            "working_dir",
            "user",
            "read_only",
            "init",
            "pull_policy",
            "ports",
            "expose",
            "environment",
            "env_file",
            "healthcheck",
            "volumes",
            "networks",
            "labels",
            "restart",
            "depends_on",
            "deploy",
            "scale",
            "mem_limit",
            "cpus",
            "gpus",
            "stop_signal",
            "stop_grace_period",
        ];
        for (key, value) in svc.map().unwrap_or_default() {
            if HANDLED.contains(&key.as_str()) || key.starts_with("x-") {
                if key == "deploy" {
                    for (k, _) in value.map().unwrap_or_default() {
                        if !matches!(
                            k.as_str(),
                            "replicas" | "resources" | "restart_policy" | "mode"
                        ) {
                            let why = match k.as_str() {
                                "update_config" | "rollback_config" => "chain's [deploy] section sets how a new version replaces the running one (rolling or blue-green)",
                                "labels" => "service labels have no equivalent (container labels are container.labels)",
                                _ => "has no equivalent on one host",
                            };
                            self.note(&format!("deploy.{k}"), why);
                        }
                    }
                }
                continue;
            }
            let why = UNSUPPORTED
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, why)| why.to_string())
                .unwrap_or_else(|| "not translated: chain has no equivalent".into());
            let message = match (key.as_str(), value.text()) {
                ("container_name", Some(name)) => format!("{name:?}: {why}"),
                ("network_mode", Some(mode)) => format!("{mode:?}: {why}"),
                _ => why,
            };
            self.note(key, message);
        }
    }
}

/// The image compose builds for a service without `image`: `<project>-<service>`.
fn default_image(project: &str, service: &str) -> String {
    format!("{project}-{service}").to_ascii_lowercase()
}

/// The `docker build` command line that builds what `build:` describes.
fn build_command(image: &str, build: &Node) -> String {
    let (context, dockerfile, target) = match build.map() {
        Some(_) => (
            build
                .get("context")
                .and_then(Node::text)
                .unwrap_or(".")
                .to_string(),
            build
                .get("dockerfile")
                .and_then(Node::text)
                .map(str::to_string),
            build.get("target").and_then(Node::text).map(str::to_string),
        ),
        None => (build.text().unwrap_or(".").to_string(), None, None),
    };
    let mut cmd = format!("docker build -t {image}");
    if let Some(f) = dockerfile.filter(|f| f != "Dockerfile") {
        let path = if f.starts_with('/') {
            f
        } else {
            format!("{}/{f}", context.trim_end_matches('/'))
        };
        cmd.push_str(&format!(" -f {path}"));
    }
    if let Some(t) = target {
        cmd.push_str(&format!(" --target {t}"));
    }
    if let Some(args) = build.get("args") {
        let pairs: Vec<String> = match &args.value {
            yaml::Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| format!("{k}={}", v.text().unwrap_or("")))
                .collect(),
            yaml::Value::Seq(items) => items
                .iter()
                .filter_map(Node::text)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        for p in pairs {
            cmd.push_str(&format!(" --build-arg {p}"));
        }
    }
    cmd.push(' ');
    cmd.push_str(&context);
    cmd
}

/// `command` and `entrypoint`: a string stays a string (chain splits it as compose does), a list
/// stays a list; an empty entrypoint string clears the image's.
fn words_value(v: &Node, entrypoint: bool) -> Option<Value> {
    match &v.value {
        yaml::Value::Scalar(s, _) if s.trim().is_empty() && entrypoint => {
            Some(Value::Array(Vec::new()))
        }
        yaml::Value::Scalar(s, _) => Some(Value::Str(s.trim().to_string())),
        yaml::Value::Seq(items) => Some(Value::Array(
            items
                .iter()
                .map(|i| Value::Str(i.text().unwrap_or("").to_string()))
                .collect(),
        )),
        _ => None,
    }
}
