//! Read-only snapshots of supervisor state, published after every supervisor turn over a
//! `watch` channel. API reads (`ls`, `status`, `inspect`) and the stats sampler use them, so a
//! read never waits for the supervisor and never sees a half-applied turn.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::wire::{InstanceInfo, UnitSummary};
use crate::unit::UnitSpec;

#[derive(Debug, Default)]
pub struct Snapshot {
    pub units: BTreeMap<String, UnitSnap>,
    pub profile: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UnitSnap {
    pub summary: UnitSummary,
    pub spec: Option<Arc<UnitSpec>>,
    pub deployment: u64,
    pub instances: Vec<InstSnap>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InstSnap {
    pub info: InstanceInfo,
    /// Where the proxy and probes reach the instance: `127.0.0.1:port` for a process, the
    /// container's address on chain's network for a container.
    pub addr: Option<std::net::SocketAddr>,
    /// Wall-clock start, so uptime is computed at read time.
    pub started: Option<SystemTime>,
}

impl InstSnap {
    pub fn to_wire(&self, now: SystemTime) -> InstanceInfo {
        let mut info = self.info.clone();
        info.uptime_secs = self
            .started
            .filter(|_| info.pid.is_some())
            .and_then(|s| now.duration_since(s).ok())
            .map(|d| d.as_secs());
        info
    }
}

impl Snapshot {
    /// Every instance, ordered by unit, index, generation.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let now = SystemTime::now();
        self.units
            .values()
            .flat_map(|u| u.instances.iter().map(move |i| i.to_wire(now)))
            .collect()
    }

    /// Root pids of running instances (for the stats sampler).
    pub fn pids(&self) -> Vec<i32> {
        self.units
            .values()
            .flat_map(|u| u.instances.iter().filter_map(|i| i.info.pid))
            .collect()
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
