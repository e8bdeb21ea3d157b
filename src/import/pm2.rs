//! PM2 ecosystem file (as JSON) → one process unit per app.
//!
//! The `.js` form is evaluated by the IO edge with node and arrives here as JSON, like the
//! `.json` and YAML forms. docs/import.md and the PM2 table in docs/units.md describe the
//! mapping; keep them in step.

use std::path::Path;
use std::time::Duration;

use serde_json::Value as Json;

use super::doc::{UnitDoc, Value};
use super::yaml::{self, Kind, Node};
use super::{finish, normalize, rebase, split_words, unit_name, Context, Error, Import, Note};
use crate::unit::{format_duration, format_size, parse_duration, parse_size, RESERVED_ENV};

/// PM2's interpreters by script extension (PM2 runs anything else directly).
const INTERPRETERS: &[(&str, &str)] = &[
    ("js", "node"),
    ("cjs", "node"),
    ("mjs", "node"),
    ("py", "python"),
    ("sh", "bash"),
    ("rb", "ruby"),
    ("php", "php"),
    ("pl", "perl"),
    ("coffee", "coffee"),
];

/// PM2's log options: chain writes its own log files.
const LOG_KEYS: &[&str] = &[
    "error_file",
    "out_file",
    "log_file",
    "merge_logs",
    "combine_logs",
    "log_date_format",
    "time",
    "log_type",
    "disable_logs",
    "pid_file",
];

/// Keys handled by [`App::convert`] (besides `env_<name>` and the log keys).
const HANDLED: &[&str] = &[
    "name",
    "script",
    "args",
    "cwd",
    "interpreter",
    "exec_interpreter",
    "interpreter_args",
    "node_args",
    "instances",
    "exec_mode",
    "env",
    "port",
    "max_memory_restart",
    "min_uptime",
    "max_restarts",
    "restart_delay",
    "exp_backoff_restart_delay",
    "autorestart",
    "kill_timeout",
    "listen_timeout",
    "wait_ready",
    "shutdown_with_message",
    "watch",
    "ignore_watch",
    "watch_delay",
    "cron_restart",
    "uid",
    "gid",
    "user",
];

/// Converts an ecosystem object: `{ apps: [...] }`, a bare array of apps, or one app.
pub(crate) fn convert(value: &Json, cx: &Context<'_>) -> Result<Import, Error> {
    let format = |message: &str| Error::Format {
        path: cx.file.to_path_buf(),
        message: message.to_string(),
    };
    let mut notes = Vec::new();
    let apps: Vec<&Json> = match value {
        Json::Array(items) => items.iter().collect(),
        Json::Object(o) => match o.get("apps") {
            Some(Json::Array(items)) => items.iter().collect(),
            Some(app @ Json::Object(_)) => vec![app],
            Some(_) => return Err(format("`apps` must be a list of apps")),
            None if o.contains_key("script") => vec![value],
            None => {
                return Err(format(
                    "expected a PM2 ecosystem file: an object with `apps`",
                ))
            }
        },
        _ => {
            return Err(format(
                "expected a PM2 ecosystem file: an object with `apps`",
            ))
        }
    };
    if apps.is_empty() {
        return Err(format("`apps` holds no apps"));
    }
    if let Json::Object(o) = value {
        if o.contains_key("deploy") {
            notes.push(Note {
                source: String::new(),
                key: "deploy".into(),
                message: "PM2's remote deployment (git pull, post-deploy hooks) has no equivalent; chain deploys the unit files it is given".into(),
            });
        }
    }
    let mut taken = std::collections::BTreeSet::new();
    let mut docs = Vec::new();
    for (i, app) in apps.into_iter().enumerate() {
        let Json::Object(_) = app else {
            notes.push(Note {
                source: format!("apps[{i}]"),
                key: String::new(),
                message: "not converted: expected an object".into(),
            });
            continue;
        };
        let script = app.get("script").and_then(text);
        let source = app
            .get("name")
            .and_then(text)
            .or_else(|| {
                script.as_deref().map(|s| {
                    let base = s.rsplit('/').next().unwrap_or(s);
                    base.split('.').next().unwrap_or(base).to_string()
                })
            })
            .unwrap_or_else(|| format!("app-{i}"));
        let name = unit_name(&source, &taken);
        let mut a = App {
            doc: UnitDoc::new(&name, &source),
            notes: &mut notes,
        };
        if name != source {
            a.note(
                "name",
                format!("the unit is named {name:?} (unit names are letters, digits, `-` and `_`)"),
            );
        }
        if a.convert(app, cx) {
            taken.insert(name);
            docs.push(a.doc);
        }
    }
    Ok(finish(docs, notes, cx.out_dir))
}

struct App<'n> {
    doc: UnitDoc,
    notes: &'n mut Vec<Note>,
}

impl App<'_> {
    fn note(&mut self, key: &str, message: impl Into<String>) {
        self.notes.push(Note {
            source: self.doc.source.clone(),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn convert(&mut self, app: &Json, cx: &Context<'_>) -> bool {
        let get = |k: &str| app.get(k).filter(|v| !v.is_null());
        self.doc.header.push(format!(
            "from PM2 app {:?} in {} (chainctl import pm2)",
            self.doc.source,
            cx.file_name()
        ));
        let Some(script) = get("script").and_then(text) else {
            self.note("script", "not converted: the app has no script");
            return false;
        };
        let dir = cx.dir();
        let cwd_written = get("cwd").and_then(text);
        let cwd = normalize(&dir.join(cwd_written.as_deref().unwrap_or(".")));

        // instances and port first: they are the top-level keys.
        if let Some(v) = get("instances") {
            self.instances(v);
        }
        let env = get("env");
        let port = env
            .and_then(|e| e.get("PORT"))
            .map(|p| (p, "env.PORT"))
            .or_else(|| get("port").map(|p| (p, "port")));
        if let Some((p, key)) = port {
            match text(p)
                .and_then(|s| s.trim().parse::<u16>().ok())
                .filter(|p| *p > 0)
            {
                Some(p) => {
                    let comment = match self.doc.get("", "instances") {
                        Some(Value::Int(1)) | None => format!("PM2: {key}"),
                        _ => format!("instance i listens on {p} + i"),
                    };
                    self.doc
                        .set_commented("", "port", Value::Int(p.into()), &comment);
                }
                None => self.note(
                    key,
                    format!(
                        "{} is not a port number; chain picks one (port = \"auto\")",
                        p
                    ),
                ),
            }
        }
        if get("exec_mode")
            .and_then(text)
            .is_some_and(|m| m.contains("cluster"))
        {
            self.note(
                "exec_mode",
                "there is no cluster module: each instance is its own process with its own PORT, and chain's proxy \
                 balances between them; the app must listen on $PORT",
            );
        }

        // [process]
        let p = "process";
        let interpreter = get("interpreter")
            .or_else(|| get("exec_interpreter"))
            .and_then(text)
            .filter(|i| !i.is_empty());
        let ext = Path::new(&script)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let interpreter = match interpreter.as_deref() {
            Some("none") => None,
            Some(i) => Some(i.to_string()),
            None => INTERPRETERS
                .iter()
                .find(|(e, _)| *e == ext)
                .map(|(_, i)| i.to_string()),
        };
        let mut args: Vec<String> = Vec::new();
        for key in ["interpreter_args", "node_args"] {
            if key == "node_args" && interpreter.as_deref().is_some_and(|i| !i.ends_with("node")) {
                if get(key).is_some() {
                    self.note(key, "only applies when the interpreter is node; left out");
                }
                continue;
            }
            if let Some(v) = get(key) {
                args.extend(self.words(v, key));
            }
        }
        let command = match interpreter {
            Some(i) => {
                args.push(script.clone());
                i
            }
            None => {
                // A program run directly: chain resolves a relative command with a `/` against
                // the unit file's directory, PM2 against cwd.
                let path = cwd.join(&script);
                if script.starts_with('/') || script.contains('/') || (cx.exists)(&path) {
                    let s = rebase(&script, &cwd, cx.out_dir);
                    if s.contains('/') {
                        s
                    } else {
                        format!("./{s}")
                    }
                } else {
                    script.clone()
                }
            }
        };
        if let Some(v) = get("args") {
            args.extend(self.words(v, "args"));
        }
        self.doc.set(p, "command", command);
        if !args.is_empty() {
            self.doc.set(p, "args", args);
        }
        self.doc.set(
            p,
            "cwd",
            rebase(cwd_written.as_deref().unwrap_or("."), dir, cx.out_dir),
        );
        if let Some(u) = get("uid").or_else(|| get("user")).and_then(text) {
            self.doc.set(p, "user", u);
        }
        if let Some(g) = get("gid").and_then(text) {
            self.doc.set(p, "group", g);
        }
        if let Some(v) = get("max_memory_restart") {
            match v {
                Json::Number(n) => match n.as_u64() {
                    Some(b) => self.doc.set(p, "max_memory", format_size(b)),
                    None => self.note("max_memory_restart", "expected a size such as \"300M\""),
                },
                _ => match text(v) {
                    Some(s) if parse_size(&s).is_ok() => self.doc.set(p, "max_memory", s),
                    _ => self.note(
                        "max_memory_restart",
                        format!("{v} is not a size such as \"300M\""),
                    ),
                },
            }
        }
        for (key, unit_key) in [
            ("kill_timeout", "kill_timeout"),
            ("listen_timeout", "listen_timeout"),
        ] {
            if let Some(v) = get(key) {
                match self.millis(v, key) {
                    Some(d) if !(d.is_zero() && key == "listen_timeout") => {
                        self.doc.set(p, unit_key, format_duration(d))
                    }
                    Some(_) => self.note(key, "0 has no equivalent; chain's default applies"),
                    None => {}
                }
            }
        }

        // [env] and profiles.
        if let Some(env) = env {
            self.env(env, "env", "env");
        }
        if let Json::Object(o) = app {
            for (k, v) in o {
                if let Some(profile) = k.strip_prefix("env_") {
                    if crate::unit::valid_unit_name(profile) {
                        self.env(v, k, &format!("profile.{profile}.env"));
                    } else {
                        self.note(k, format!("profile name {profile:?} is not a valid name (letters, digits, `-`, `_`); left out"));
                    }
                }
            }
        }

        self.restart(&get);
        self.watch(&get);
        self.rest(app);
        true
    }

    fn instances(&mut self, v: &Json) {
        match v {
            Json::Number(n) => match n.as_i64() {
                Some(0) => self
                    .doc
                    .set_commented("", "instances", "max", "PM2: 0 (one per CPU)"),
                Some(n) if n > 0 => self.doc.set("", "instances", Value::Int(n)),
                Some(n) => {
                    self.note(
                        "instances",
                        format!("{n} (all CPUs but {}) has no equivalent; the unit runs one per CPU (\"max\")", -n),
                    );
                    self.doc
                        .set_commented("", "instances", "max", &format!("PM2: {n}"));
                }
                None => self.note("instances", format!("{n} is not a count")),
            },
            _ => match text(v).as_deref().map(str::trim) {
                Some("max") => self.doc.set("", "instances", "max"),
                Some(s) => match s.parse::<i64>() {
                    Ok(n) => self.instances(&Json::from(n)),
                    Err(_) => self.note("instances", format!("{s:?} is not a count or \"max\"")),
                },
                None => self.note("instances", "expected a count or \"max\""),
            },
        }
    }

    /// `[env]` or a profile's env from a PM2 env object; PORT is the top-level `port`.
    fn env(&mut self, env: &Json, key: &str, section: &str) {
        let Json::Object(vars) = env else {
            self.note(key, "expected an object of variables");
            return;
        };
        for (name, value) in vars {
            let k = format!("{key}.{name}");
            if name == "PORT" {
                if section != "env" {
                    self.note(
                        &k,
                        format!("{value}: a profile cannot change the port; chain's port is the top-level `port` key"),
                    );
                }
                continue;
            }
            if RESERVED_ENV.contains(&name.as_str()) {
                self.note(
                    &k,
                    format!("{name} is left out: chain sets it for each instance"),
                );
                continue;
            }
            match text(value) {
                Some(v) => self.doc.set(section, name, v),
                None if value.is_null() => {}
                None => self.note(
                    &k,
                    "only strings, numbers and booleans can be environment values; left out",
                ),
            }
        }
    }

    fn restart<'j>(&mut self, get: &dyn Fn(&str) -> Option<&'j Json>) {
        let r = "restart";
        if get("autorestart").and_then(Json::as_bool) == Some(false) {
            self.doc
                .set_commented(r, "policy", "never", "PM2: autorestart false");
        }
        if let Some(d) = get("min_uptime").and_then(|v| self.millis(v, "min_uptime")) {
            self.doc.set(r, "min_uptime", format_duration(d));
        }
        if let Some(v) = get("max_restarts") {
            match v.as_u64() {
                Some(n) => self.doc.set_commented(
                    r,
                    "max_restarts",
                    Value::Int(n as i64),
                    "within restart.window (PM2 counts unstable restarts in a row)",
                ),
                None => self.note("max_restarts", "expected a number"),
            }
        }
        if let Some(d) = get("exp_backoff_restart_delay")
            .and_then(|v| self.millis(v, "exp_backoff_restart_delay"))
        {
            // PM2 doubles the delay up to 15 s.
            self.doc.set(r, "delay", format_duration(d));
            self.doc.set(
                r,
                "max_delay",
                format_duration(d.max(Duration::from_secs(15))),
            );
            if get("restart_delay").is_some() {
                self.note(
                    "restart_delay",
                    "left out: exp_backoff_restart_delay sets the delay",
                );
            }
        } else if let Some(d) = get("restart_delay").and_then(|v| self.millis(v, "restart_delay")) {
            // A fixed delay: backoff capped at the delay itself.
            self.doc.set(r, "delay", format_duration(d));
            self.doc.set_commented(
                r,
                "max_delay",
                format_duration(d),
                "PM2 waits a fixed delay",
            );
        }
    }

    fn watch<'j>(&mut self, get: &dyn Fn(&str) -> Option<&'j Json>) {
        let paths: Option<Vec<String>> = match get("watch") {
            Some(Json::Bool(true)) => Some(Vec::new()),
            Some(Json::Bool(false)) | None => None,
            Some(Json::Array(items)) => Some(items.iter().filter_map(text).collect()),
            Some(v) => text(v).map(|s| vec![s]),
        };
        let ignore: Vec<String> = match get("ignore_watch") {
            Some(Json::Array(items)) => items.iter().filter_map(text).collect(),
            Some(v) => text(v).into_iter().collect(),
            None => Vec::new(),
        };
        let delay = get("watch_delay").and_then(|v| self.millis(v, "watch_delay"));
        let Some(paths) = paths else {
            for k in ["ignore_watch", "watch_delay", "watch_options"] {
                if get(k).is_some() {
                    self.note(k, "left out: the app is not watched");
                }
            }
            return;
        };
        if ignore.is_empty() && delay.is_none() {
            if paths.is_empty() {
                self.doc.set("", "watch", Value::Bool(true));
            } else {
                self.doc.set("", "watch", paths);
            }
            return;
        }
        if !paths.is_empty() {
            self.doc.set("watch", "paths", paths);
        }
        if !ignore.is_empty() {
            self.doc.set_commented(
                "watch",
                "ignore",
                ignore,
                "globs; PM2 also took regular expressions",
            );
        }
        if let Some(d) = delay {
            self.doc.set("watch", "debounce", format_duration(d));
        }
        if get("watch_options").is_some() {
            self.note("watch_options", "chokidar options have no equivalent");
        }
    }

    /// Notes for the keys [`App::convert`] does not map.
    fn rest(&mut self, app: &Json) {
        let Json::Object(o) = app else { return };
        let logs: Vec<&str> = LOG_KEYS
            .iter()
            .copied()
            .filter(|k| o.contains_key(*k))
            .collect();
        if !logs.is_empty() {
            self.note(
                &logs.join(", "),
                "chain writes each unit's stdout and stderr to its own log files (under chaind's DIR/logs), timestamps every line \
                 and keeps one log per unit: read them with `chainctl logs`; [logs] sets rotation",
            );
        }
        for (k, v) in o {
            if HANDLED.contains(&k.as_str())
                || LOG_KEYS.contains(&k.as_str())
                || k.starts_with("env_")
            {
                match k.as_str() {
                    "wait_ready" if v.as_bool() == Some(true) => self.note(
                        k,
                        "chain has no ready message (process.send('ready')): an instance is ready when its port accepts \
                         connections; for a real check add [health] with type = \"http\" and path = \"/health\" (or your app's)",
                    ),
                    "shutdown_with_message" if v.as_bool() == Some(true) => self.note(
                        k,
                        "chain stops instances with a signal (process.stop_signal, SIGTERM by default), not a message",
                    ),
                    "cron_restart" => self.note(
                        k,
                        "chain has no scheduled restarts; run `chainctl restart NAME` from cron or a systemd timer",
                    ),
                    _ => {}
                }
                continue;
            }
            let why = match k.as_str() {
                "increment_var" => {
                    "chain gives each instance its own PORT and CHAIN_INSTANCE (0, 1, ...)"
                }
                "instance_var" => "chain sets CHAIN_INSTANCE (0, 1, ...) in every instance",
                "stop_exit_codes" => {
                    "chain's restart.policy = \"on-failure\" treats exit code 0 as done"
                }
                "namespace" => "chain has no namespaces",
                "source_map_support" | "vizion" | "automation" | "pmx" | "treekill" | "force"
                | "filter_env" | "append_env_name" => "PM2 internals have no equivalent",
                _ => "not translated: chain has no equivalent",
            };
            self.note(k, why);
        }
    }

    /// A string (split into words) or a list of strings.
    fn words(&mut self, v: &Json, key: &str) -> Vec<String> {
        match v {
            Json::Array(items) => items.iter().filter_map(text).collect(),
            _ => match text(v) {
                Some(s) => split_words(&s).unwrap_or_else(|| {
                    self.note(key, "has an unclosed quote; split at spaces");
                    s.split_whitespace().map(str::to_string).collect()
                }),
                None => Vec::new(),
            },
        }
    }

    /// PM2 times: a number of milliseconds, a string of digits (ms), or a string with a unit.
    fn millis(&mut self, v: &Json, key: &str) -> Option<Duration> {
        let d = match v {
            Json::Number(n) => n
                .as_f64()
                .filter(|x| *x >= 0.0)
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            Json::String(s) => match s.trim().parse::<f64>() {
                Ok(ms) if ms >= 0.0 => Some(Duration::from_secs_f64(ms / 1000.0)),
                _ => parse_duration(s.trim()).ok(),
            },
            _ => None,
        };
        if d.is_none() {
            self.note(
                key,
                format!("{v} is not a time (milliseconds, or a string such as \"10s\")"),
            );
        }
        d
    }
}

/// The text of a string, number or boolean.
fn text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A YAML ecosystem file as the JSON PM2 would read.
pub(crate) fn yaml_to_json(node: &Node) -> Json {
    match &node.value {
        yaml::Value::Null => Json::Null,
        yaml::Value::Scalar(s, Kind::Bool) => Json::Bool(s.eq_ignore_ascii_case("true")),
        yaml::Value::Scalar(s, Kind::Int) => s
            .parse::<i64>()
            .map(Json::from)
            .unwrap_or_else(|_| Json::String(s.clone())),
        yaml::Value::Scalar(s, Kind::Float) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(s.clone())),
        yaml::Value::Scalar(s, Kind::Str) => Json::String(s.clone()),
        yaml::Value::Seq(items) => Json::Array(items.iter().map(yaml_to_json).collect()),
        yaml::Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), yaml_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Converts one app (JSON) with the ecosystem file in /srv/app and units in
    /// /srv/app/units; checks that every unit parses and the set validates.
    fn run(app: &str) -> Import {
        let value: Json = serde_json::from_str(&format!("{{\"apps\": [{app}]}}")).unwrap();
        let cx = Context {
            file: Path::new("/srv/app/ecosystem.config.js"),
            out_dir: Path::new("/srv/app/units"),
            env: &|_: &str| None,
            exists: &|p: &Path| p.ends_with("bin/server"),
        };
        let import = convert(&value, &cx).unwrap_or_else(|e| panic!("{e}\n{app}"));
        let mut files = Vec::new();
        for (name, text) in &import.units {
            match crate::unit::parse(&cx.out_dir.join(format!("{name}.toml")), text) {
                Ok(f) => files.push(f),
                Err(e) => panic!("{name} does not parse: {e:?}\n{text}"),
            }
        }
        let names = import.units.iter().map(|(n, _)| n.clone()).collect();
        let errors = crate::unit::validate_set(&files, &names);
        assert!(errors.is_empty(), "{errors:?}");
        import
    }

    fn value(import: &Import, key: &str) -> Option<String> {
        let text = &import.units.first()?.1;
        let mut v: &toml::Value = &toml::from_str::<toml::Value>(text).ok()?;
        for part in key.split('.') {
            v = v.get(part)?;
        }
        Some(v.to_string())
    }

    /// Each PM2 key maps onto the unit key docs/units.md names.
    #[test]
    fn mapping_rules() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, Option<&str>)] = &[
            (r#"{"name": "web", "script": "server.js"}"#, "process.command", Some(r#""node""#)),
            (r#"{"name": "web", "script": "server.js"}"#, "process.args", Some(r#"["server.js"]"#)),
            (r#"{"name": "web", "script": "server.js"}"#, "process.cwd", Some("\"..\"")),
            (r#"{"name": "web", "script": "server.js", "args": "--port 1 'a b'"}"#, "process.args", Some(r#"["server.js", "--port", "1", "a b"]"#)),
            (r#"{"name": "web", "script": "server.js", "args": ["-v"], "node_args": "--max-old-space-size=512"}"#, "process.args", Some(r#"["--max-old-space-size=512", "server.js", "-v"]"#)),
            (r#"{"name": "w", "script": "worker.py", "interpreter": "/usr/bin/python3", "interpreter_args": ["-u"]}"#, "process.command", Some(r#""/usr/bin/python3""#)),
            (r#"{"name": "w", "script": "worker.py", "interpreter": "/usr/bin/python3", "interpreter_args": ["-u"]}"#, "process.args", Some(r#"["-u", "worker.py"]"#)),
            (r#"{"name": "w", "script": "run.sh"}"#, "process.command", Some(r#""bash""#)),
            (r#"{"name": "w", "script": "npm", "args": "start"}"#, "process.command", Some(r#""npm""#)),
            (r#"{"name": "w", "script": "npm", "args": "start"}"#, "process.args", Some(r#"["start"]"#)),
            (r#"{"name": "w", "script": "bin/server", "interpreter": "none"}"#, "process.command", Some(r#""../bin/server""#)),
            (r#"{"name": "w", "script": "x.js", "cwd": "api"}"#, "process.cwd", Some(r#""../api""#)),
            (r#"{"name": "w", "script": "x.js", "cwd": "/opt/api"}"#, "process.cwd", Some(r#""/opt/api""#)),
            (r#"{"name": "w", "script": "x.js", "instances": 4}"#, "instances", Some("4")),
            (r#"{"name": "w", "script": "x.js", "instances": "max"}"#, "instances", Some(r#""max""#)),
            (r#"{"name": "w", "script": "x.js", "instances": 0}"#, "instances", Some(r#""max""#)),
            (r#"{"name": "w", "script": "x.js", "instances": "2"}"#, "instances", Some("2")),
            (r#"{"name": "w", "script": "x.js", "env": {"PORT": 8080, "A": 1, "B": true}}"#, "port", Some("8080")),
            (r#"{"name": "w", "script": "x.js", "env": {"PORT": 8080, "A": 1, "B": true}}"#, "env.A", Some(r#""1""#)),
            (r#"{"name": "w", "script": "x.js", "env": {"PORT": 8080, "A": 1, "B": true}}"#, "env.PORT", None),
            (r#"{"name": "w", "script": "x.js", "port": 3000}"#, "port", Some("3000")),
            (r#"{"name": "w", "script": "x.js", "env_production": {"NODE_ENV": "production"}}"#, "profile.production.env.NODE_ENV", Some(r#""production""#)),
            (r#"{"name": "w", "script": "x.js", "max_memory_restart": "300M"}"#, "process.max_memory", Some(r#""300M""#)),
            (r#"{"name": "w", "script": "x.js", "max_memory_restart": 1048576}"#, "process.max_memory", Some(r#""1MiB""#)),
            (r#"{"name": "w", "script": "x.js", "min_uptime": 5000}"#, "restart.min_uptime", Some(r#""5s""#)),
            (r#"{"name": "w", "script": "x.js", "min_uptime": "1m"}"#, "restart.min_uptime", Some(r#""1m""#)),
            (r#"{"name": "w", "script": "x.js", "min_uptime": "2000"}"#, "restart.min_uptime", Some(r#""2s""#)),
            (r#"{"name": "w", "script": "x.js", "max_restarts": 3}"#, "restart.max_restarts", Some("3")),
            (r#"{"name": "w", "script": "x.js", "restart_delay": 4000}"#, "restart.delay", Some(r#""4s""#)),
            (r#"{"name": "w", "script": "x.js", "restart_delay": 4000}"#, "restart.max_delay", Some(r#""4s""#)),
            (r#"{"name": "w", "script": "x.js", "exp_backoff_restart_delay": 100}"#, "restart.max_delay", Some(r#""15s""#)),
            (r#"{"name": "w", "script": "x.js", "autorestart": false}"#, "restart.policy", Some(r#""never""#)),
            (r#"{"name": "w", "script": "x.js", "autorestart": true}"#, "restart", None),
            (r#"{"name": "w", "script": "x.js", "kill_timeout": 1600}"#, "process.kill_timeout", Some(r#""1s600ms""#)),
            (r#"{"name": "w", "script": "x.js", "listen_timeout": 8000}"#, "process.listen_timeout", Some(r#""8s""#)),
            (r#"{"name": "w", "script": "x.js", "watch": true}"#, "watch", Some("true")),
            (r#"{"name": "w", "script": "x.js", "watch": ["src"]}"#, "watch", Some(r#"["src"]"#)),
            (r#"{"name": "w", "script": "x.js", "watch": ["src"], "ignore_watch": ["node_modules", "*.log"], "watch_delay": 1000}"#, "watch.ignore", Some(r#"["node_modules", "*.log"]"#)),
            (r#"{"name": "w", "script": "x.js", "watch": true, "watch_delay": 1000}"#, "watch.debounce", Some(r#""1s""#)),
            (r#"{"name": "w", "script": "x.js", "watch": false, "ignore_watch": ["x"]}"#, "watch", None),
            (r#"{"name": "w", "script": "x.js", "uid": "www", "gid": "www"}"#, "process.group", Some(r#""www""#)),
        ];
        for (app, key, want) in cases {
            let import = run(app);
            assert_eq!(
                value(&import, key).as_deref(),
                *want,
                "{app}\n---\n{}",
                import.units[0].1
            );
        }
    }

    /// What cannot be translated is noted under the PM2 key, with the reason.
    #[test]
    fn notes() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            (r#"{"name": "w", "script": "x.js", "exec_mode": "cluster"}"#, "exec_mode", "must listen on $PORT"),
            (r#"{"name": "w", "script": "x.js", "instances": -1}"#, "instances", "all CPUs but 1"),
            (r#"{"name": "w", "script": "x.js", "env_staging": {"PORT": 1}}"#, "env_staging.PORT", "a profile cannot change the port"),
            (r#"{"name": "w", "script": "x.js", "env": {"CHAIN_INSTANCE": "1"}}"#, "env.CHAIN_INSTANCE", "chain sets it"),
            (r#"{"name": "w", "script": "x.js", "wait_ready": true}"#, "wait_ready", "[health]"),
            (r#"{"name": "w", "script": "x.js", "shutdown_with_message": true}"#, "shutdown_with_message", "signal"),
            (r#"{"name": "w", "script": "x.js", "error_file": "e.log", "time": true}"#, "error_file, time", "chainctl logs"),
            (r#"{"name": "w", "script": "x.js", "cron_restart": "0 * * * *"}"#, "cron_restart", "no scheduled restarts"),
            (r#"{"name": "w", "script": "x.js", "watch": false, "ignore_watch": ["x"]}"#, "ignore_watch", "not watched"),
            (r#"{"name": "w", "script": "x.js", "increment_var": "PORT"}"#, "increment_var", "its own PORT"),
            (r#"{"name": "w", "script": "x.js", "kill_timeout": "soon"}"#, "kill_timeout", "not a time"),
            (r#"{"name": "w", "script": "x.js", "node_args": "--x", "interpreter": "python"}"#, "node_args", "only applies when the interpreter is node"),
            (r#"{"name": "my app", "script": "x.js"}"#, "name", "\"my-app\""),
            (r#"{"name": "w"}"#, "script", "no script"),
            (r#"{"name": "w", "script": "x.js", "something": 1}"#, "something", "no equivalent"),
            (r#"{"name": "w", "script": "x.js", "max_memory_restart": "lots"}"#, "max_memory_restart", "not a size"),
        ];
        for (app, key, contains) in cases {
            let import = run(app);
            assert!(
                import
                    .notes
                    .iter()
                    .any(|n| n.key == *key && n.message.contains(contains)),
                "{app}\nwant note {key}: {contains}\ngot {:#?}",
                import.notes
            );
        }
    }

    /// The ecosystem object's shapes: `{apps: [...]}`, a bare array, one app; a name from the
    /// script when there is none; errors for what is not an ecosystem file.
    #[test]
    fn shapes() {
        let cx = Context {
            file: Path::new("/srv/app/ecosystem.json"),
            out_dir: Path::new("/srv/app/units"),
            env: &|_: &str| None,
            exists: &|_: &Path| false,
        };
        let names = |v: Json| -> Vec<String> {
            convert(&v, &cx)
                .unwrap()
                .units
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(
            names(serde_json::json!([{"script": "api/index.js"}, {"name": "w", "script": "w.js"}])),
            ["index", "w"]
        );
        assert_eq!(
            names(serde_json::json!({"name": "one", "script": "a.js"})),
            ["one"]
        );
        assert_eq!(
            names(
                serde_json::json!({"apps": [{"name": "a", "script": "a.js"}, {"name": "a", "script": "b.js"}]})
            ),
            ["a", "a-2"]
        );
        for bad in [
            serde_json::json!({"apps": []}),
            serde_json::json!({"x": 1}),
            serde_json::json!(3),
        ] {
            assert!(convert(&bad, &cx).is_err(), "{bad}");
        }
    }

    /// YAML ecosystem files read as the same JSON.
    #[test]
    fn yaml_form() {
        let node = yaml::parse("apps:\n  - name: w\n    script: w.js\n    instances: 2\n    watch: true\n    env: {A: '1'}\n").unwrap();
        assert_eq!(
            yaml_to_json(&node),
            serde_json::json!({"apps": [{"name": "w", "script": "w.js", "instances": 2, "watch": true, "env": {"A": "1"}}]})
        );
    }
}
