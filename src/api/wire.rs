//! `api::wire`: every message that crosses the Unix socket. The only definition of the
//! protocol, shared by the server and `chainctl`. Versioned by the `/v1` path prefix: within v1,
//! fields are only added (clients ignore unknown fields), never renamed or removed.

use serde::{Deserialize, Serialize};

pub const API_PREFIX: &str = "/v1";

/// Stable error codes. Clients branch on `code`, humans read `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed (bad JSON, bad query parameter).
    BadRequest,
    /// The caller may not perform this mutating call (SO_PEERCRED check).
    Forbidden,
    /// No such endpoint.
    NotFound,
    MethodNotAllowed,
    /// No unit of that name is loaded.
    UnitNotFound,
    /// The unit's file has errors and there is no earlier good version to act on.
    UnitInvalid,
    /// A reload or start did not complete: an instance failed.
    OperationFailed,
    /// The daemon is shutting down.
    ShuttingDown,
    /// A service chaind depends on (the Docker engine) does not answer.
    EngineUnavailable,
    Internal,
    /// A code this client does not know (sent by a newer daemon).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Forbidden => 403,
            Self::NotFound | Self::UnitNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::UnitInvalid => 422,
            Self::OperationFailed => 409,
            Self::ShuttingDown | Self::EngineUnavailable => 503,
            Self::Internal | Self::Unknown => 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    pub pid: u32,
    pub root: String,
    pub units_dir: String,
    #[serde(default)]
    pub profile: Option<String>,
    /// Address of the HTTP proxy listener, when there is one.
    #[serde(default)]
    pub http: Option<String>,
    /// Address of the HTTPS proxy listener, when there is one.
    #[serde(default)]
    pub https: Option<String>,
    /// Address of the admin listener (`GET /metrics`), when there is one.
    #[serde(default)]
    pub admin: Option<String>,
    /// This root's store id: the `chain.store` label of its containers.
    #[serde(default)]
    pub store_id: String,
}

/// One row of `chainctl ls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub unit: String,
    pub instance: u32,
    pub generation: u64,
    /// pending | starting | running | unhealthy | backoff | stopping | exited | failed
    pub state: String,
    /// Extra words about the state: the failure reason, the backoff delay, the exit status.
    #[serde(default)]
    pub detail: Option<String>,
    pub ready: bool,
    /// The proxy sends it traffic (ready, and for blue-green in the serving set).
    #[serde(default)]
    pub routed: bool,
    /// The deployment it belongs to (a deploy runs old and new deployments side by side).
    #[serde(default)]
    pub deployment: u64,
    pub pid: Option<i32>,
    pub port: Option<u16>,
    /// Container units: the container's id (12 hex digits).
    #[serde(default)]
    pub container: Option<String>,
    /// Where chain reaches the instance (`127.0.0.1:PORT`, or the container's address).
    #[serde(default)]
    pub address: Option<String>,
    pub uptime_secs: Option<u64>,
    pub restarts: u32,
    pub cpu_percent: Option<f32>,
    pub rss_bytes: Option<u64>,
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventInfo {
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub unit: String,
    #[serde(default)]
    pub instance: Option<u32>,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitSummary {
    pub name: String,
    /// active | stopped | removed | invalid (never loaded successfully)
    pub state: String,
    pub file: String,
    pub revision: Option<String>,
    pub instances_desired: u32,
    pub instances_ready: u32,
    /// Problems in the unit file right now (the last good version keeps running).
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub waiting: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitStatus {
    #[serde(flatten)]
    pub summary: UnitSummary,
    pub description: String,
    pub command: Option<String>,
    pub restart_policy: Option<String>,
    pub health: Option<String>,
    pub port: Option<String>,
    pub depends_on: Vec<String>,
    pub profile: Option<String>,
    pub instances: Vec<InstanceInfo>,
    /// The last 20 events of this unit, oldest first.
    pub events: Vec<EventInfo>,
    /// The newest failure: a file error, a failed instance or the last abnormal exit.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// Switch the active env profile (`""` clears it); absent keeps the current one.
    #[serde(default)]
    pub profile: Option<String>,
}

/// `POST /v1/gc`: remove containers with chain's labels that no instance owns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// List what would be removed, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also remove containers of other chaind roots on this engine (their `chain.store`
    /// differs); by default they are listed and kept.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcResult {
    pub containers: Vec<GcContainer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcContainer {
    /// 12 hex digits.
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub unit: Option<String>,
    /// The `chain.store` label: which chaind root created it.
    #[serde(default)]
    pub store: Option<String>,
    /// Engine status ("running", "exited", …).
    pub state: String,
    /// removed | would-remove | kept-other-store | failed: …
    pub action: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Units whose files have problems, with every problem (file:line:column: message).
    pub invalid: Vec<UnitErrors>,
    /// Units whose file holds a revision that failed to deploy (or was rolled back): it is not
    /// deployed again until the file changes or `chainctl deploy` asks for it.
    #[serde(default)]
    pub held: Vec<String>,
    pub profile: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitErrors {
    pub unit: String,
    pub errors: Vec<String>,
}

/// start | stop | restart | reload
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitAction {
    Start,
    Stop,
    Restart,
    Reload,
    Deploy,
    Rollback,
}

impl UnitAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Reload => "reload",
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => Self::Start,
            "stop" => Self::Stop,
            "restart" => Self::Restart,
            "reload" => Self::Reload,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResult {
    pub unit: String,
    pub action: UnitAction,
    /// The deployment the unit is now at (restart and reload create a new one).
    pub deployment: u64,
    /// True when the call waited until the action completed.
    pub completed: bool,
    pub instances: Vec<InstanceInfo>,
}

/// One row of `chainctl routes`: a route and the ready instances behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub unit: String,
    /// None: any host.
    pub host: Option<String>,
    pub path: String,
    pub policy: String,
    pub instances: Vec<RouteInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteInstance {
    /// The instance index (as in `ls`), when it is still known to the supervisor.
    pub instance: Option<u32>,
    pub generation: u64,
    pub addr: String,
    /// Requests in flight (WebSockets count while open).
    pub inflight: u64,
    /// Skipped by passive health after failed attempts.
    pub down: bool,
}

/// `POST /v1/units/{unit}/deploy`: deploy the unit file now, with optional overrides.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeployRequest {
    /// `key=value` overrides on top of the unit file (kept until unset or reset).
    #[serde(default)]
    pub set: Vec<String>,
    /// Override keys to drop.
    #[serde(default)]
    pub unset: Vec<String>,
    /// Drop every override.
    #[serde(default)]
    pub reset: bool,
    /// This deploy only: `rolling` or `blue-green`.
    #[serde(default)]
    pub strategy: Option<String>,
}

/// `POST /v1/units/{unit}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// A revision (or a prefix of one) to go to; default: undo the deploy in progress, else
    /// the revision before the current one.
    #[serde(default)]
    pub to: Option<String>,
}

/// One row of `chainctl history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployInfo {
    pub deployment: u64,
    /// RFC 3339, UTC.
    pub started: String,
    pub from_revision: String,
    pub to_revision: String,
    pub strategy: String,
    /// file | apply | deploy | reload | restart | rollback | watch | start
    pub trigger: String,
    /// The uid that asked, when it came through the API.
    pub caller: Option<u32>,
    /// in_progress | succeeded | failed | rolled_back | halted | superseded
    pub outcome: String,
    pub duration_ms: Option<u64>,
    pub reason: Option<String>,
}

/// `chainctl diff`: what the next deploy changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffInfo {
    pub unit: String,
    /// The revision running (wanted) now.
    pub running: Option<String>,
    /// The revision the unit file (with overrides and profile) resolves to.
    pub file: Option<String>,
    /// One entry per changed key: `path`, old and new JSON values (null when absent).
    pub changes: Vec<Change>,
    /// Problems that keep the file from deploying.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub old: serde_json::Value,
    pub new: serde_json::Value,
}

/// One line of `logs` output (NDJSON when streamed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub time: String,
    pub unit: String,
    pub instance: String,
    /// out | err | sys
    pub stream: String,
    pub text: String,
}
