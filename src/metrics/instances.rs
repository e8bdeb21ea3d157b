//! Supervisor-derived metrics: instances per unit and state, and restarts, computed from the
//! snapshots the supervisor publishes. This task only reads snapshots; it never calls the
//! supervisor and never holds a snapshot across an await.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;

use super::{Metrics, UnitLabels, UnitStateLabels};
use crate::reconcile::snapshot::Snapshot;

/// Every state an instance can be in (`InstanceState::name`); each unit gets a series for each,
/// zeros included, so that alerts on a state need no `absent()`.
pub const STATES: [&str; 9] = [
    "pending",
    "starting",
    "running",
    "unhealthy",
    "backoff",
    "draining",
    "stopping",
    "exited",
    "failed",
];

/// Turns snapshots into metric values. `restarts` remembers, per instance generation, the
/// restart count already added to the unit's counter, so that the counter only grows: an
/// instance replaced by a new generation takes its restarts out of the snapshot, not out of
/// the counter.
#[derive(Debug, Default)]
pub struct Follower {
    seen: HashMap<(String, u64), u32>,
    units: HashSet<String>,
}

impl Follower {
    pub fn apply(&mut self, m: &Metrics, snap: &Snapshot) {
        let mut seen = HashMap::with_capacity(self.seen.len());
        for (name, unit) in &snap.units {
            let mut counts = [0i64; STATES.len()];
            let mut added = 0u64;
            for i in &unit.instances {
                if let Some(k) = STATES.iter().position(|s| *s == i.info.state) {
                    counts[k] += 1;
                }
                let key = (name.clone(), i.info.generation);
                let before = self.seen.get(&key).copied().unwrap_or(0);
                added += u64::from(i.info.restarts.saturating_sub(before));
                seen.insert(key, i.info.restarts.max(before));
            }
            for (state, n) in STATES.iter().zip(counts) {
                m.instances
                    .get_or_create(&UnitStateLabels {
                        unit: name.clone(),
                        state,
                    })
                    .set(n);
            }
            m.restarts
                .get_or_create(&UnitLabels { unit: name.clone() })
                .inc_by(added);
        }
        self.seen = seen;
        let now: HashSet<String> = snap.units.keys().cloned().collect();
        for gone in self.units.difference(&now) {
            for state in STATES {
                m.instances.remove(&UnitStateLabels {
                    unit: gone.clone(),
                    state,
                });
            }
            m.restarts.remove(&UnitLabels { unit: gone.clone() });
        }
        self.units = now;
    }
}

/// Follows the supervisor's snapshots until the channel closes.
pub async fn follow(metrics: Arc<Metrics>, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
    let mut f = Follower::default();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        f.apply(&metrics, &snap);
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}
