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
