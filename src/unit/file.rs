//! The parsed unit file: [`UnitFile`] and [`parse`], which decodes every section of one file
//! and collects every problem in it.
//!
//! Parsing is pure: no file is read here (env files are read by [`super::load`] and merged by
//! [`super::resolve`]); relative paths are joined lexically onto the unit file's directory.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use super::decode::{Decoder, Table};
use super::error::{Pos, UnitError};
use super::section::{
    decode_container, decode_depends_on, decode_deploy, decode_env, decode_health,
    decode_instances, decode_logs, decode_port, decode_process, decode_profiles, decode_restart,
    decode_routes, decode_watch,
};
use super::spec::{
    DependencyCondition, HealthCheck, HealthSpec, LogSpec, PortSpec, RestartPolicy, RestartSpec,
    RouteSpec,
};
use super::syntax;
use super::valid_unit_name;

/// Every key of the unit file format, as dotted paths; `<name>` stands for a name the user picks.
/// docs/units.md documents each of them (a test checks it), and the decoder asks for exactly these.
pub const KEYS: &[&str] = &[
    "description",
    "instances",
    "port",
    "depends_on",
    "process",
    "process.command",
    "process.args",
    "process.cwd",
    "process.user",
    "process.group",
    "process.env_file",
    "process.stop_signal",
    "process.kill_timeout",
    "process.max_memory",
    "process.listen_timeout",
    "container",
    "container.image",
    "container.pull",
    "container.command",
    "container.entrypoint",
    "container.working_dir",
    "container.port",
    "container.bind",
    "container.volumes",
    "container.networks",
    "container.labels",
    "container.cpus",
    "container.memory",
    "container.user",
    "container.read_only",
    "container.init",
    "container.gpus",
    "container.env_file",
    "container.stop_signal",
    "container.kill_timeout",
    "container.listen_timeout",
    "env",
    "profile",
    "profile.<name>.env",
    "restart",
    "restart.policy",
    "restart.delay",
    "restart.max_delay",
    "restart.min_uptime",
    "restart.max_restarts",
    "restart.window",
    "health",
    "health.type",
    "health.path",
    "health.command",
    "health.interval",
    "health.timeout",
    "health.retries",
    "health.start_period",
    "health.start_interval",
    "health.restart_after",
    "watch",
    "watch.paths",
    "watch.ignore",
    "watch.debounce",
    "watch.enabled",
    "logs",
    "logs.max_size",
    "logs.max_files",
    "route",
    "route.host",
    "route.path",
    "route.strip_prefix",
    "route.policy",
    "route.connect_timeout",
    "route.timeout",
    "route.max_body",
    "route.max_fails",
    "route.fail_timeout",
    "route.https_redirect",
    "route.headers",
    "route.compress",
    "route.rate_limit",
    "route.rate_limit.rps",
    "route.rate_limit.burst",
    "route.acme",
    "deploy",
    "deploy.strategy",
    "deploy.max_surge",
    "deploy.max_unavailable",
    "deploy.min_healthy_time",
    "deploy.healthy_deadline",
    "deploy.drain_timeout",
    "deploy.auto_rollback",
    "deploy.keep_previous",
    "deploy.verify",
    "deploy.verify.path",
    "deploy.verify.status",
    "deploy.verify.body",
    "deploy.verify.timeout",
];

/// Defaults of optional keys; docs/units.md states the same values.
pub mod defaults {
    use std::time::Duration;

    pub const INSTANCES: u32 = 1;
    pub const MAX_INSTANCES: u32 = 1024;
    pub const STOP_SIGNAL: &str = "SIGTERM";
    pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);
    pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const RESTART_DELAY: Duration = Duration::from_millis(100);
    pub const RESTART_MAX_DELAY: Duration = Duration::from_secs(30);
    pub const MIN_UPTIME: Duration = Duration::from_secs(10);
    pub const MAX_RESTARTS: u32 = 10;
    pub const RESTART_WINDOW: Duration = Duration::from_secs(300);
    pub const HEALTH_PATH: &str = "/health";
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub const HEALTH_RETRIES: u32 = 3;
    pub const HEALTH_START_PERIOD: Duration = Duration::ZERO;
    pub const HEALTH_START_INTERVAL: Duration = Duration::from_millis(250);
    pub const HEALTH_RESTART_AFTER: u32 = 5;
    pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(500);
    pub const LOG_MAX_SIZE: u64 = 10 << 20;
    pub const LOG_MIN_SIZE: u64 = 4 << 10;
    pub const LOG_MAX_FILES: u32 = 5;
    pub const LOG_MAX_FILES_LIMIT: u32 = 100;
    pub const ROUTE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const ROUTE_MAX_BODY: u64 = 10 << 20;
    pub const ROUTE_MAX_FAILS: u32 = 1;
    pub const ROUTE_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Signals accepted by `stop_signal`, normalised.
pub const STOP_SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGWINCH",
];

/// Environment variables chain sets for every instance; units may not set them.
pub const RESERVED_ENV: &[&str] = &["PORT", "CHAIN_UNIT", "CHAIN_INSTANCE", "CHAIN_INSTANCE_UID"];

/// A parsed, not yet resolved unit file.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitFile {
    /// The file stem (`web.toml` → `web`).
    pub name: String,
    /// The file as it was given (relative paths stay relative, for error messages).
    pub path: PathBuf,
    /// The directory relative paths in the file are resolved against: absolute when loaded with
    /// [`super::load_file`] or [`super::load_dir`], the lexical parent of `path` with [`parse`].
    pub dir: PathBuf,
    pub description: String,
    pub instances: Instances,
    /// Where `instances` is written ([`Pos::START`] when absent).
    pub instances_pos: Pos,
    pub port: PortSpec,
    /// Where `port` is written ([`Pos::START`] when absent).
    pub port_pos: Pos,
    pub depends_on: Vec<DependsOn>,
    /// `[process]`, or for a container unit the stop settings and env files of `[container]`
    /// (with an empty command).
    pub process: ProcessSection,
    /// `[container]`, when the unit runs containers.
    pub container: Option<crate::unit::spec::ContainerConfig>,
    /// `[env]` as written (values stringified); env files and profiles are merged by resolve.
    pub env: BTreeMap<String, String>,
    pub profiles: BTreeMap<String, Profile>,
    pub restart: RestartSpec,
    pub health: Option<HealthSpec>,
    pub watch: Option<WatchSection>,
    pub logs: LogSpec,
    pub routes: Vec<RouteSpec>,
    pub deploy: crate::unit::spec::DeploySpec,
    /// Where the first `[[route]]` is written ([`Pos::START`] when there is none).
    pub routes_pos: Pos,
}

/// `instances` as written: a count, or `"max"` (one per CPU, known only at resolve time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    Count(u32),
    Max,
}

/// One `depends_on` entry, with its position for set-level errors (missing unit, cycle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependsOn {
    pub unit: String,
    pub condition: DependencyCondition,
    pub pos: Pos,
}

/// `[process]`, with `cwd` already joined onto the unit's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSection {
    /// As written; the supervisor resolves a relative path containing `/` against [`UnitFile::dir`].
    pub command: String,
    pub args: Vec<String>,
    /// Absolute when [`UnitFile::dir`] is.
    pub cwd: PathBuf,
    pub user: Option<String>,
    pub group: Option<String>,
    pub env_files: Vec<EnvFileRef>,
    /// Normalised (`"term"` → `"SIGTERM"`).
    pub stop_signal: String,
    pub kill_timeout: Duration,
    pub max_memory: Option<u64>,
    pub listen_timeout: Duration,
}

/// One `env_file` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvFileRef {
    /// Joined onto [`UnitFile::dir`]: the key of the `env_files` map given to [`super::resolve`].
    pub path: PathBuf,
    /// Joined onto the directory of [`UnitFile::path`], for error messages.
    pub shown: PathBuf,
    /// Where the entry is written in the unit file.
    pub pos: Pos,
}

/// One `[profile.<name>]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    pub env: BTreeMap<String, String>,
    pub pos: Pos,
}

/// `watch`, with paths already joined onto the process's working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSection {
    pub enabled: bool,
    pub paths: Vec<PathBuf>,
    pub ignore: Vec<String>,
    pub debounce: Duration,
}

/// Parses one unit file; the unit name is the file stem.
///
/// Pure: relative paths in the file are joined onto the lexical parent of `path`.
///
/// # Errors
///
/// Every problem in the file, sorted by position: TOML syntax errors alone when there are any
/// (what follows a syntax error cannot be read reliably), otherwise every decoding problem.
pub fn parse(path: &Path, text: &str) -> Result<UnitFile, Vec<UnitError>> {
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    parse_in(path, &dir, text)
}

/// [`parse`] with relative paths resolved against `dir` rather than `path`'s parent.
pub(crate) fn parse_in(path: &Path, dir: &Path, text: &str) -> Result<UnitFile, Vec<UnitError>> {
    let mut d = Decoder::new(path, text);
    let name = unit_name(&mut d, path);
    let syntax_errors = syntax::check(text);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            d.error(e.at, "", e.message, e.hint);
        }
        return Err(d.into_errors());
    }
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            // `syntax::check` found nothing, so this cannot happen; report it rather than panic.
            d.error(
                e.span().map_or(0, |s| s.start),
                "",
                e.message().to_string(),
                None,
            );
            return Err(d.into_errors());
        }
    };
    let shown_dir = path.parent().unwrap_or(Path::new(""));
    let file = decode(&mut d, &root, name, path, dir, shown_dir);
    if d.has_errors() {
        Err(d.into_errors())
    } else {
        Ok(file)
    }
}

fn unit_name(d: &mut Decoder<'_>, path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !valid_unit_name(&stem) {
        d.error(
            0,
            "",
            format!("invalid unit name {stem:?} (the unit name is the file name without .toml)"),
            Some(format!("rename the file; {NAME_RULE}")),
        );
    }
    stem
}

pub(crate) const NAME_RULE: &str =
    "names are 1 to 64 letters, digits, `-` and `_`, and start with a letter or digit";

fn decode(
    d: &mut Decoder<'_>,
    root: &toml::Spanned<DeTable<'_>>,
    name: String,
    path: &Path,
    dir: &Path,
    shown_dir: &Path,
) -> UnitFile {
    let mut top = Table::root(d, root);
    let description = top
        .take(d, "description")
        .and_then(|f| f.string(d))
        .unwrap_or_default();

    let (instances, instances_pos) = match top.take(d, "instances") {
        Some(f) => (
            decode_instances(d, &f).unwrap_or(Instances::Count(defaults::INSTANCES)),
            d.pos(f.at()),
        ),
        None => (Instances::Count(defaults::INSTANCES), Pos::START),
    };
    let (port, port_pos) = match top.take(d, "port") {
        Some(f) => (decode_port(d, &f).unwrap_or(PortSpec::Auto), d.pos(f.at())),
        None => (PortSpec::Auto, Pos::START),
    };
    let depends_on = top
        .take(d, "depends_on")
        .map(|f| decode_depends_on(d, &f, &name))
        .unwrap_or_default();

    let process_field = top.take(d, "process");
    let container_field = top.take(d, "container");
    let process = match &process_field {
        Some(f) => {
            let hint = f
                .scalar_string()
                .map(|s| format!("write [process] with command = {s:?}"));
            f.table_with(d, hint)
                .map(|t| decode_process(d, t, dir, shown_dir))
        }
        None => None,
    };
    let container = match &container_field {
        Some(f) => {
            let hint = f
                .scalar_string()
                .map(|s| format!("write [container] with image = {s:?}"));
            f.table_with(d, hint)
                .map(|t| decode_container(d, t, dir, shown_dir, port == PortSpec::None))
        }
        None => None,
    };
    match (&process_field, &container_field) {
        (None, None) => top.missing(
            d,
            "process",
            "missing required section [process] or [container]".into(),
            Some("add a [process] section with command = \"path/to/program\", or a [container] section with image = \"name:tag\"".into()),
        ),
        (Some(_), Some(c)) => d.error(
            c.key_span.start,
            "container",
            "a unit runs either a process or a container, not both",
            Some("keep [process] or [container], and put the other in a unit file of its own".into()),
        ),
        _ => {}
    }
    let (process, container) = match (process, container) {
        (Some(p), _) => (p, None),
        (None, Some((p, c))) => (p, Some(c)),
        (None, None) => (ProcessSection::placeholder(dir), None),
    };

    let env = top
        .take(d, "env")
        .map(|f| decode_env(d, &f))
        .unwrap_or_default();
    let profiles = top
        .take(d, "profile")
        .map(|f| decode_profiles(d, &f))
        .unwrap_or_default();
    let restart = top
        .take(d, "restart")
        .and_then(|f| decode_restart(d, &f))
        .unwrap_or_else(default_restart);
    let health = top.take(d, "health").and_then(|f| decode_health(d, &f));
    let watch = top
        .take(d, "watch")
        .and_then(|f| decode_watch(d, &f, &process.cwd));
    let logs = top
        .take(d, "logs")
        .and_then(|f| decode_logs(d, &f))
        .unwrap_or(LogSpec {
            max_size: defaults::LOG_MAX_SIZE,
            max_files: defaults::LOG_MAX_FILES,
        });
    let deploy = top.take(d, "deploy").and_then(|f| decode_deploy(d, &f));
    let (routes, routes_at) = match top.take(d, "route") {
        Some(f) => (decode_routes(d, &f), Some(f.at())),
        None => (Vec::new(), None),
    };
    top.end(d);

    // Checks across sections.
    if let (Some((deploy, at)), PortSpec::Fixed { .. }) = (&deploy, port) {
        if deploy.strategy == crate::unit::spec::Strategy::BlueGreen {
            d.error(
                *at,
                "deploy.strategy",
                "blue-green runs the new set next to the old one, which fixed ports do not allow",
                Some("use port = \"auto\" (the proxy finds the instances), or strategy = \"rolling\"".into()),
            );
        }
    }
    if let (Some(at), PortSpec::None) = (routes_at, port) {
        d.error(
            at,
            "route",
            "a route needs the instances' port, but the unit has port = \"none\"",
            Some("remove port = \"none\" (ports default to \"auto\")".into()),
        );
    }
    for (i, r) in routes.iter().enumerate() {
        if routes[..i]
            .iter()
            .any(|o| o.host == r.host && o.path == r.path)
        {
            let host = r.host.as_deref().unwrap_or("any host");
            d.error(
                routes_at.unwrap_or(0),
                format!("route[{i}]"),
                format!("two routes for {host} with path {:?}", r.path),
                Some("merge them, or give them different paths".into()),
            );
        }
    }
    if let (Some((health, type_at)), PortSpec::None) = (&health, port) {
        let kind = match health.check {
            HealthCheck::Http { .. } => Some("http"),
            HealthCheck::Tcp => Some("tcp"),
            HealthCheck::Exec { .. } => None,
        };
        if let Some(kind) = kind {
            d.error(
                *type_at,
                "health.type",
                format!("a {kind:?} health check needs a port, but the unit has port = \"none\""),
                Some("use type = \"exec\", or give the unit a port".into()),
            );
        }
    }

    UnitFile {
        name,
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        description,
        instances,
        instances_pos,
        port,
        port_pos,
        depends_on,
        process,
        container,
        env,
        profiles,
        restart,
        health: health.map(|(h, _)| h),
        watch,
        logs,
        routes_pos: routes_at.map_or(Pos::START, |at| d.pos(at)),
        deploy: deploy.map(|(s, _)| s).unwrap_or_default(),
        routes,
    }
}

impl ProcessSection {
    /// Stands in for a missing or broken `[process]` so that the other sections are still checked.
    pub(crate) fn placeholder(dir: &Path) -> Self {
        ProcessSection {
            command: String::new(),
            args: Vec::new(),
            cwd: normalize_path(dir),
            user: None,
            group: None,
            env_files: Vec::new(),
            stop_signal: defaults::STOP_SIGNAL.into(),
            kill_timeout: defaults::KILL_TIMEOUT,
            max_memory: None,
            listen_timeout: defaults::LISTEN_TIMEOUT,
        }
    }
}

pub(crate) fn default_restart() -> RestartSpec {
    RestartSpec {
        policy: RestartPolicy::Always,
        delay: defaults::RESTART_DELAY,
        max_delay: defaults::RESTART_MAX_DELAY,
        min_uptime: defaults::MIN_UPTIME,
        max_restarts: defaults::MAX_RESTARTS,
        window: defaults::RESTART_WINDOW,
    }
}

/// Removes `.` components and folds `..` into the preceding component, without touching the disk.
pub(crate) fn normalize_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let last_is_normal =
                    matches!(out.components().next_back(), Some(Component::Normal(_)));
                if last_is_normal {
                    out.pop();
                } else if !matches!(out.components().next_back(), Some(Component::RootDir)) {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `.` and `..` are folded lexically; `..` never climbs above the root.
    #[test]
    fn paths_are_normalized() {
        let n = |p: &str| normalize_path(Path::new(p)).display().to_string();
        assert_eq!(n("/srv/app/./units/../.env"), "/srv/app/.env");
        assert_eq!(n("/srv/app/."), "/srv/app");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("units/../../x"), "../x");
        assert_eq!(n(""), ".");
        assert_eq!(n("./."), ".");
    }

    /// Every key the decoder asks for is in KEYS, and every key in KEYS is asked for.
    #[test]
    fn keys_match_the_decoder() {
        let text = r#"
description = "d"
instances = 1
port = "auto"
depends_on = []
[process]
command = "x"
[container]
labels = {}
[env]
[profile.p]
[restart]
[health]
type = "http"
[watch]
[logs]
[deploy]
strategy = "blue-green"
[deploy.verify]
path = "/"
[[route]]
rate_limit = { rps = 1 }
"#;
        let mut d = Decoder::new(Path::new("t.toml"), text);
        let root = DeTable::parse(text).unwrap();
        let _ = decode(
            &mut d,
            &root,
            "t".into(),
            Path::new("t.toml"),
            Path::new("/"),
            Path::new(""),
        );
        let requested: Vec<&str> = d.requested().iter().map(String::as_str).collect();
        let mut keys = KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(requested, keys);
    }
}
