//! Record types kept in sled. These are serialization contracts: add fields with
//! `#[serde(default)]` only, and bump `v` with a migration when a field changes meaning.

use serde::{Deserialize, Serialize};

use crate::unit::UnitSpec;

/// The last good desired state of a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    pub v: u32,
    pub name: String,
    /// Unit file this spec came from.
    pub path: String,
    pub revision: String,
    pub spec: UnitSpec,
    /// Increases on every change of revision, `reload` and `restart`: instances started for an
    /// older deployment are replaced.
    pub deployment: u64,
    /// Set by `chainctl stop`, cleared by `chainctl start`.
    #[serde(default)]
    pub stopped: bool,
    /// The highest deployment number handed out (numbers are never reused).
    #[serde(default)]
    pub last_deployment: u64,
    /// The deployment that last completed (traffic goes to it), and its revision.
    #[serde(default)]
    pub stable: Option<(u64, String)>,
    /// A deploy in progress, to resume (or roll back) after a restart of chaind.
    #[serde(default)]
    pub deploy: Option<DeployState>,
    /// Blue-green's previous set kept out of rotation: deployment, revision, until (unix ms).
    #[serde(default)]
    pub kept: Option<(u64, String, u64)>,
    /// A revision whose deploy failed: not deployed again until the file changes or someone
    /// asks (`chainctl deploy`).
    #[serde(default)]
    pub failed_revision: Option<String>,
    /// `chainctl deploy --set key=value` overrides applied on top of the unit file.
    #[serde(default)]
    pub overrides: Vec<(String, String)>,
    /// This deployment replaces everything at once (`chainctl restart`).
    #[serde(default)]
    pub immediate: bool,
}

/// The parts of a deploy in progress that a restarted chaind needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployState {
    pub deployment: u64,
    pub started_ms: u64,
    pub from_revision: String,
    pub to_revision: String,
    pub strategy: String,
    pub trigger: String,
    #[serde(default)]
    pub caller: Option<u32>,
    #[serde(default)]
    pub switched: bool,
    #[serde(default)]
    pub verified: bool,
    #[serde(default)]
    pub halted: bool,
}

/// One deploy, for `chainctl history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub v: u32,
    pub unit: String,
    pub deployment: u64,
    pub from_revision: String,
    pub to_revision: String,
    pub strategy: String,
    /// file | apply | deploy | reload | restart | rollback | watch
    pub trigger: String,
    #[serde(default)]
    pub caller: Option<u32>,
    pub started_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// in_progress | succeeded | failed | rolled_back | halted | superseded
    pub outcome: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub v: u32,
    pub unit: String,
    pub revision: String,
    pub first_seen_ms: u64,
    pub spec: UnitSpec,
}

/// One instance incarnation. Written before spawn (without pid: the intent) and again once the
/// process runs, so that a chaind killed in between still finds the process through its tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub v: u32,
    pub unit: String,
    pub index: u32,
    pub generation: u64,
    pub deployment: u64,
    pub revision: String,
    pub tag: String,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub start_time: Option<u64>,
    #[serde(default)]
    pub port: Option<u16>,
    pub stdout: String,
    pub stderr: String,
    /// Wall-clock start (unix ms), for uptime after re-adoption.
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restarts: u32,
    /// Set when the instance is being stopped on purpose (its exit must not be restarted).
    #[serde(default)]
    pub stopping: bool,
    /// The engine's id of the instance's current container (container units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl InstanceRecord {
    pub fn key_of(unit: &str, index: u32, generation: u64) -> String {
        format!("{unit}/{index:05}/{generation:020}")
    }

    pub fn key(&self) -> String {
        Self::key_of(&self.unit, self.index, self.generation)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub v: u32,
    /// Assigned by `Store::append_event`.
    pub seq: u64,
    pub ts_ms: u64,
    pub unit: String,
    #[serde(default)]
    pub instance: Option<u32>,
    /// Stable machine-readable kind, e.g. `started`, `ready`, `exited`, `backoff`, `failed`.
    pub kind: String,
    pub message: String,
}
