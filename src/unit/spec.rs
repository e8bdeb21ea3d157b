//! The resolved unit spec: what the supervisor runs.
//!
//! A [`UnitSpec`] is produced by [`super::resolve`] from a parsed [`super::UnitFile`]: env files are
//! merged in, the active env profile is applied, `instances = "max"` becomes a number and relative
//! paths become absolute. Its canonical JSON form is a contract: it is hashed into the unit's
//! [`Revision`], stored in sled and shown by `chainctl inspect`. Add fields only with a
//! `#[serde(default)]` so that older stored revisions still load.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A fully resolved unit, ready to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Resolved instance count (`"max"` already replaced by the CPU count).
    pub instances: u32,
    pub port: PortSpec,
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    pub process: ProcessConfig,
    /// Merged environment: env files, then `[env]`, then the active profile's env.
    /// `PORT`, `CHAIN_UNIT` and `CHAIN_INSTANCE` are added per instance by the supervisor.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The env profile that was applied, when the unit defines the active profile.
    #[serde(default)]
    pub profile: Option<String>,
    pub restart: RestartSpec,
    #[serde(default)]
    pub health: Option<HealthSpec>,
    #[serde(default)]
    pub watch: Option<WatchSpec>,
    pub logs: LogSpec,
    /// `[[route]]`: how the proxy reaches this unit's ready instances.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// `[deploy]`: how a new version replaces the running one. Left out of the JSON when it is
    /// the default, so specs written before `[deploy]` existed keep their revision.
    #[serde(default, skip_serializing_if = "DeploySpec::is_default")]
    pub deploy: DeploySpec,
    /// `[container]`: the instances are Docker containers. `process` then holds only what every
    /// driver shares (stop signal, kill and listen timeouts, the unit's directory as `cwd`) and
    /// its `command` is empty. Left out of the JSON when None, so process units keep their
    /// revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerConfig>,
}

/// `[container]`: what the container driver creates for each instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Image reference as written (`nginx:1.25-alpine`, `registry:5000/app@sha256:…`).
    pub image: String,
    #[serde(default)]
    pub pull: PullPolicy,
    /// Replaces the image's CMD; None keeps it.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replaces the image's ENTRYPOINT; None keeps it.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The port the app listens on inside the container; None = the instance's `PORT`.
    #[serde(default)]
    pub port: Option<u16>,
    /// Host address the container port is published on when the unit has a fixed port or a
    /// range (`"auto"` publishes nothing: chain reaches the container on its own network).
    pub bind: String,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Docker networks joined besides chain's own, created when missing.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Extra labels; `chain.*` labels are chain's own.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// CPU limit in thousandths of a CPU (`cpus = 1.5` → 1500).
    #[serde(default)]
    pub millicpus: Option<u32>,
    /// Memory limit in bytes (the engine OOM-kills above it).
    #[serde(default)]
    pub memory: Option<u64>,
    /// `user`, `user:group`, or numeric ids, as Docker takes them.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    /// Run an init process (tini) as PID 1 that reaps zombies and forwards signals.
    #[serde(default)]
    pub init: bool,
    /// NVIDIA GPUs requested from the engine.
    #[serde(default)]
    pub gpus: Option<Gpus>,
}

/// When the image is pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Pull only when the image is not present locally.
    #[default]
    Missing,
    /// Pull before every container start (a failed pull falls back to a local image).
    Always,
    /// Never pull: a missing image is an error.
    Never,
}

impl PullPolicy {
    pub const ALL: [&'static str; 3] = ["missing", "always", "never"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

/// One `volumes` entry: `source:target[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub source: VolumeSource,
    /// Absolute path inside the container.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeSource {
    /// A host path (absolute; relative paths in the file are joined onto its directory).
    Bind(PathBuf),
    /// A named volume managed by the engine (created on first use).
    Volume(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gpus {
    Count(u32),
    All,
}

/// `[deploy]`: the strategy and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub strategy: Strategy,
    /// Rolling: instances allowed above `instances` while replacing.
    pub max_surge: u32,
    /// Rolling: ready instances allowed below `instances` while replacing.
    pub max_unavailable: u32,
    /// A new instance counts as healthy once it has been ready this long.
    #[serde(with = "duration_str")]
    pub min_healthy_time: Duration,
    /// The new instances must all be healthy within this time of the deploy's start, or the
    /// deploy fails.
    #[serde(with = "duration_str")]
    pub healthy_deadline: Duration,
    /// Old instances may finish in-flight requests (and open WebSockets) this long.
    #[serde(with = "duration_str")]
    pub drain_timeout: Duration,
    /// A failed deploy goes back to the version that was serving; false leaves it halted for
    /// inspection (the old version keeps serving either way).
    pub auto_rollback: bool,
    /// Blue-green: keep the previous set running (out of rotation) this long after the switch,
    /// so that a rollback is instant.
    #[serde(with = "duration_str")]
    pub keep_previous: Duration,
    /// Blue-green: a request the new set must answer as expected before traffic switches.
    #[serde(default)]
    pub verify: Option<VerifySpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Replace instances a few at a time, each batch after the previous one is healthy.
    Rolling,
    /// Start a whole new set next to the old one, switch traffic at once, then drain the old.
    BlueGreen,
}

impl Strategy {
    pub const ALL: [&'static str; 2] = ["rolling", "blue-green"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rolling => "rolling",
            Self::BlueGreen => "blue-green",
        }
    }
}

/// `[deploy.verify]`: GET `path` on every new instance; the status must match, and the body
/// must contain `body` when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifySpec {
    pub path: String,
    pub status: u16,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            strategy: Strategy::Rolling,
            max_surge: 1,
            max_unavailable: 0,
            min_healthy_time: Duration::ZERO,
            healthy_deadline: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(30),
            auto_rollback: true,
            keep_previous: Duration::ZERO,
            verify: None,
        }
    }
}

impl DeploySpec {
    pub fn is_default(&self) -> bool {
        *self == DeploySpec::default()
    }
}

/// One `[[route]]`: requests for `host` whose path starts with `path` go to the unit's ready
/// instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Exact host (`api.example.com`) or wildcard (`*.example.com`), lowercase; None = any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, starting with `/`. The longest matching prefix wins.
    pub path: String,
    /// Remove `path` from the request path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    pub policy: BalancePolicy,
    /// Time to connect to an instance.
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    /// Time for an instance to start its response (headers); 504 after that.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Largest request body accepted, in bytes; larger gets 413.
    pub max_body: u64,
    /// Failures within `fail_timeout` after which an instance is skipped for `fail_timeout`;
    /// 0 disables passive health.
    pub max_fails: u32,
    #[serde(with = "duration_str")]
    pub fail_timeout: Duration,
    /// Redirect plain HTTP to HTTPS; None = when the host has a certificate.
    #[serde(default)]
    pub https_redirect: Option<bool>,
    /// gzip text responses for clients that accept it, when the app did not compress.
    #[serde(default = "yes")]
    pub compress: bool,
    /// Response headers to set (overriding chain's defaults and the app's); an empty value
    /// removes the header.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Requests allowed per client IP (token bucket); None = unlimited. Skipped when None, so
    /// that the revisions of units written before this key keep their hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Obtain `host`'s certificate by ACME (HTTP-01 answered by the proxy). Skipped when false,
    /// so that the revisions of units written before this key keep their hash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acme: bool,
}

/// `route.rate_limit`: nginx's `limit_req rate=RPS burst=BURST nodelay`, per client IP.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Sustained requests per second (more than 0; may be fractional).
    pub rps: f64,
    /// Requests allowed at once above the sustained rate: the bucket holds `burst + 1`.
    #[serde(default)]
    pub burst: u32,
}

/// `rps` is validated finite and positive, so equality is reflexive.
impl Eq for RateLimit {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    RoundRobin,
    LeastConn,
    /// The same client IP goes to the same instance while it is ready (rendezvous hashing:
    /// when instances come and go, only the clients of those instances move).
    IpHash,
    /// A cookie pins a client to the instance that served it first (Socket.IO long polling).
    Cookie,
}

impl BalancePolicy {
    pub const ALL: [&'static str; 4] = ["round_robin", "least_conn", "ip_hash", "cookie"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConn => "least_conn",
            Self::IpHash => "ip_hash",
            Self::Cookie => "cookie",
        }
    }
}

/// How an instance gets its `PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum PortSpec {
    /// A free port from the daemon's pool (default).
    Auto,
    /// No port: the instance is ready as soon as it runs (workers, queues).
    None,
    /// Instance `i` gets `base + i`.
    Fixed { base: u16 },
    /// A free port from this unit's own range (inclusive).
    Range { start: u16, end: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub unit: String,
    pub condition: DependencyCondition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    /// Every instance of the dependency has been spawned.
    Started,
    /// Every instance of the dependency is ready (healthy, or its port accepts).
    Healthy,
    /// The dependency ran to completion with exit code 0 (one-shot units such as migrations).
    Completed,
}

impl DependencyCondition {
    pub const ALL: [&'static str; 3] = ["started", "healthy", "completed"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Healthy => "healthy",
            Self::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// Program to run: an absolute path, a path relative to the unit file's directory
    /// (when it contains a `/`), or a bare name looked up in `PATH`.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Absolute working directory (default: the unit file's directory).
    pub cwd: PathBuf,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// Signal name sent to the process group to stop an instance, e.g. `"SIGTERM"`.
    pub stop_signal: String,
    /// Time between the stop signal and SIGKILL.
    #[serde(with = "duration_str")]
    pub kill_timeout: Duration,
    /// RSS limit of the whole process tree in bytes; exceeded → restart.
    #[serde(default)]
    pub max_memory: Option<u64>,
    /// Without a health check, how long the instance may take to accept on its port.
    #[serde(with = "duration_str")]
    pub listen_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// First backoff delay; doubles on every consecutive crash.
    #[serde(with = "duration_str")]
    pub delay: Duration,
    /// Backoff cap.
    #[serde(with = "duration_str")]
    pub max_delay: Duration,
    /// An instance that ran at least this long counts as stable: its backoff resets.
    #[serde(with = "duration_str")]
    pub min_uptime: Duration,
    /// More than this many restarts within `window` → the instance is `failed` (crash loop).
    pub max_restarts: u32,
    #[serde(with = "duration_str")]
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub const ALL: [&'static str; 3] = ["always", "on-failure", "never"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub check: HealthCheck,
    #[serde(with = "duration_str")]
    pub interval: Duration,
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Consecutive failures before a ready instance is taken out of rotation (unready).
    pub retries: u32,
    /// Failures during this period after start do not count.
    #[serde(with = "duration_str")]
    pub start_period: Duration,
    /// Probe interval used until the instance is first ready, so that readiness is seen quickly.
    #[serde(with = "duration_str", default = "default_start_interval")]
    pub start_interval: Duration,
    /// Consecutive failures before the instance is restarted; 0 = never restart on health.
    pub restart_after: u32,
}

fn default_start_interval() -> Duration {
    crate::unit::defaults::HEALTH_START_INTERVAL
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum HealthCheck {
    /// GET `path` on the instance's port; 2xx and 3xx are healthy.
    Http { path: String },
    /// TCP connect to the instance's port.
    Tcp,
    /// Run a command (with the instance's environment); exit code 0 is healthy.
    Exec { command: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// Absolute paths watched recursively.
    pub paths: Vec<PathBuf>,
    /// Glob patterns (relative to each watched path) whose changes are ignored.
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(with = "duration_str")]
    pub debounce: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// Rotate the unit's log file when it reaches this many bytes.
    pub max_size: u64,
    /// Rotated files kept besides the live one.
    pub max_files: u32,
}

/// Content hash of a resolved spec (SHA-256 of its canonical JSON, hex).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub String);

impl Revision {
    /// The 12-hex-digit prefix shown to humans.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

fn yes() -> bool {
    true
}

/// Durations as strings (`"250ms"`, `"5s"`, `"1m30s"`) in every serialized form.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::unit::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        crate::unit::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}
