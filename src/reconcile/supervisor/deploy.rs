//! Deploys, as the supervisor carries them out: a new deployment begins (file change, apply,
//! `chainctl deploy`, reload, restart, rollback, watch), `plan` moves it along, and this file
//! acts on what `plan` decides: run the verify probe, switch traffic, complete, abort (roll back
//! or halt). Every deploy is recorded for `chainctl history` and persisted with the unit so a
//! restarted chaind resumes it, or rolls it back when its deadline passed meanwhile.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Current, Msg, Supervisor, Unit};
use crate::api::wire::{ApiError, ErrorCode};
use crate::reconcile::instance::InstanceState;
use crate::reconcile::plan::{AbortCause, Verify};
use crate::reconcile::snapshot::unix_ms;
use crate::store::{DeployRecord, DeployState};
use crate::unit::{Revision, Strategy, UnitSpec};

/// A deploy in progress.
#[derive(Debug, Clone)]
pub(super) struct Deploy {
    pub deployment: u64,
    pub started: Instant,
    pub started_ms: u64,
    pub from: Revision,
    pub to: Revision,
    pub strategy: Strategy,
    pub trigger: String,
    pub caller: Option<u32>,
    pub verify: Verify,
    pub verify_error: Option<String>,
    pub switched: bool,
    pub halted: bool,
}

/// The deployment that last completed: what traffic goes to, and what a failed deploy
/// returns to.
#[derive(Clone)]
pub(super) struct Stable {
    pub deployment: u64,
    pub current: Current,
}

/// Blue-green's previous set, kept out of rotation for an instant rollback.
#[derive(Clone)]
pub(super) struct Kept {
    pub deployment: u64,
    pub until: Instant,
    pub until_ms: u64,
    pub current: Current,
}

/// Which of a unit's ready instances get traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Routing {
    All,
    /// Every deployment but this one (a blue-green kept set, after a rolling deploy).
    AllBut(u64),
    Only(u64),
    Older {
        below: u64,
        kept: Option<u64>,
    },
}

impl Routing {
    pub fn routes(self, deployment: u64) -> bool {
        match self {
            Routing::All => true,
            Routing::AllBut(d) => deployment != d,
            Routing::Only(d) => deployment == d,
            Routing::Older { below, kept } => deployment < below && Some(deployment) != kept,
        }
    }
}

/// How a deploy ended, for waiting callers.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub deployment: u64,
    pub result: Result<(), String>,
}

impl Supervisor {
    /// Makes `current` the wanted version under a new deployment number. Older instances are
    /// replaced by the unit's strategy (or all at once when `immediate`). `previous` is the
    /// version wanted before, when it differs from the current one (a new file revision).
    pub(super) fn begin_deployment(
        &mut self,
        name: &str,
        trigger: &str,
        caller: Option<u32>,
        immediate: bool,
        previous: Option<Current>,
        strategy: Option<Strategy>,
    ) -> Option<u64> {
        let now = Instant::now();
        let u = self.units.get_mut(name)?;
        let cur = u.current.clone()?;
        // A deploy still running is superseded: its instances are replaced like any older ones.
        // If its whole set is ready, it is what serves: a failure of the next deploy returns
        // to it.
        if let Some(old) = u.deploy.take() {
            let count = previous.as_ref().unwrap_or(&cur).spec.instances;
            let all_ready = (0..count).all(|index| {
                u.instances.iter().any(|i| {
                    i.index == index
                        && i.deployment == old.deployment
                        && matches!(i.state, InstanceState::Running { healthy: true, .. })
                })
            });
            if all_ready && !old.halted {
                u.stable = Some(Stable {
                    deployment: old.deployment,
                    current: previous.clone().unwrap_or_else(|| cur.clone()),
                });
            }
            self.finish_record(
                name,
                &old,
                "superseded",
                Some("a newer deploy began".into()),
            );
        }
        let u = self.units.get_mut(name)?;
        u.last_deployment = u.last_deployment.max(u.deployment) + 1;
        u.deployment = u.last_deployment;
        u.immediate = immediate;
        let strategy = strategy.unwrap_or(cur.spec.deploy.strategy);
        let verify = Deploy::verify_for(strategy, &cur);
        let from = u
            .stable
            .as_ref()
            .map(|s| s.current.revision.clone())
            .unwrap_or_else(|| Revision(String::new()));
        let d = Deploy {
            deployment: u.deployment,
            started: now,
            started_ms: unix_ms(SystemTime::now()),
            from: from.clone(),
            to: cur.revision.clone(),
            strategy: if immediate {
                Strategy::Rolling
            } else {
                strategy
            },
            trigger: trigger.to_string(),
            caller,
            verify,
            verify_error: None,
            switched: false,
            halted: false,
        };
        let deployment = d.deployment;
        let how = if immediate {
            "all at once".to_string()
        } else {
            strategy.as_str().to_string()
        };
        let what = if from.0.is_empty() {
            format!("revision {}", cur.revision)
        } else {
            format!("revision {} → {}", from, cur.revision)
        };
        self.put_record(name, &d, "in_progress", None);
        if let Some(u) = self.units.get_mut(name) {
            u.deploy = Some(d);
        }
        self.persist_unit(name);
        self.emit(
            name,
            None,
            "deploy",
            format!("deploying {what} ({how}, trigger: {trigger})"),
        );
        Some(deployment)
    }

    /// Blue-green: GET the verify path on every new instance.
    pub(super) fn start_verify(&mut self, name: &str) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        let Some(d) = u.deploy.as_mut() else { return };
        let Some(spec) = u
            .current
            .as_ref()
            .and_then(|c| c.spec.deploy.verify.clone())
        else {
            d.verify = Verify::Passed;
            return;
        };
        d.verify = Verify::Running;
        let deployment = d.deployment;
        let addrs: Vec<(u32, std::net::SocketAddr)> = u
            .instances
            .iter()
            .filter(|i| i.deployment == deployment)
            .filter_map(|i| Some((i.index, i.addr?)))
            .collect();
        let tx = self.tx.clone();
        let unit = name.to_string();
        self.emit(
            name,
            None,
            "deploy",
            format!(
                "verifying the new set: GET {} expecting {}",
                spec.path, spec.status
            ),
        );
        tokio::spawn(async move {
            let mut result = Ok(());
            for (index, addr) in addrs {
                if let Err(e) = verify_one(addr, &spec).await {
                    result = Err(format!("instance {index}: {e}"));
                    break;
                }
            }
            let _ = tx.send(Msg::Verified {
                unit,
                deployment,
                result,
            });
        });
    }

    pub(super) fn on_verified(&mut self, name: &str, deployment: u64, result: Result<(), String>) {
        let Some(d) = self
            .units
            .get_mut(name)
            .and_then(|u| u.deploy.as_mut())
            .filter(|d| d.deployment == deployment)
        else {
            return;
        };
        match result {
            Ok(()) => {
                d.verify = Verify::Passed;
                self.persist_unit(name);
                self.emit(name, None, "deploy", "verify passed".into());
            }
            Err(e) => {
                d.verify = Verify::Failed;
                d.verify_error = Some(e);
            }
        }
    }

    /// Blue-green: traffic goes to the new set from the next snapshot on.
    pub(super) fn switch(&mut self, name: &str) {
        let now = Instant::now();
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        let Some(d) = u.deploy.as_mut() else { return };
        d.switched = true;
        let d = d.clone();
        let keep = u
            .current
            .as_ref()
            .map(|c| c.spec.deploy.keep_previous)
            .unwrap_or_default();
        if !keep.is_zero() {
            if let Some(prev) = u.stable.clone() {
                u.kept = Some(Kept {
                    deployment: prev.deployment,
                    until: now + keep,
                    until_ms: unix_ms(SystemTime::now() + keep),
                    current: prev.current,
                });
            }
        }
        let kept = if keep.is_zero() {
            String::new()
        } else {
            format!(
                "; the previous set stays out of rotation for {}",
                crate::unit::format_duration(keep)
            )
        };
        self.put_record(name, &d, "in_progress", None);
        self.persist_unit(name);
        self.emit(
            name,
            None,
            "deploy",
            format!("switched traffic to revision {}{kept}", d.to),
        );
    }

    pub(super) fn complete(&mut self, name: &str) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        let Some(d) = u.deploy.take() else { return };
        if let Some(cur) = u.current.clone() {
            u.stable = Some(Stable {
                deployment: d.deployment,
                current: cur,
            });
        }
        u.failed_revision = None;
        u.outcome = Some(Outcome {
            deployment: d.deployment,
            result: Ok(()),
        });
        let took = d.started.elapsed();
        self.finish_record(name, &d, "succeeded", None);
        self.persist_unit(name);
        self.emit(
            name,
            None,
            "deploy",
            format!(
                "revision {} deployed in {}",
                d.to,
                crate::unit::format_duration(round(took))
            ),
        );
    }

    /// A deploy failed: go back to the stable version (auto_rollback), or halt.
    pub(super) fn abort(&mut self, name: &str, cause: &AbortCause) {
        let reason = self.abort_reason(name, cause);
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        let Some(mut d) = u.deploy.take() else { return };
        let auto = u
            .current
            .as_ref()
            .is_none_or(|c| c.spec.deploy.auto_rollback);
        u.outcome = Some(Outcome {
            deployment: d.deployment,
            result: Err(reason.clone()),
        });
        match (auto, u.stable.clone()) {
            (true, Some(stable)) => {
                // The stable set never stopped serving: wanting it again stops the new one.
                u.failed_revision = Some(d.to.clone());
                u.current = Some(stable.current.clone());
                u.deployment = stable.deployment;
                u.immediate = false;
                self.finish_record(name, &d, "rolled_back", Some(reason.clone()));
                self.persist_unit(name);
                self.emit(
                    name,
                    None,
                    "deploy-failed",
                    format!(
                        "deploy of revision {} failed: {reason}; rolled back to revision {}",
                        d.to, stable.current.revision
                    ),
                );
            }
            (_, stable) => {
                d.halted = true;
                let why = if stable.is_none() {
                    "nothing to roll back to"
                } else {
                    "auto_rollback is off"
                };
                self.finish_record(name, &d, "halted", Some(reason.clone()));
                if let Some(u) = self.units.get_mut(name) {
                    u.deploy = Some(d.clone());
                }
                self.persist_unit(name);
                self.emit(name, None, "deploy-failed", format!("deploy of revision {} failed: {reason}; halted ({why}), the previous version keeps serving", d.to));
            }
        }
        if let Some(u) = self.units.get_mut(name) {
            u.last_error = Some(format!("deploy failed: {reason}"));
        }
    }

    fn abort_reason(&self, name: &str, cause: &AbortCause) -> String {
        let Some(u) = self.units.get(name) else {
            return String::new();
        };
        let d = u.deploy.as_ref();
        match cause {
            AbortCause::Failed { index, generation } => {
                let why = u
                    .instances
                    .iter()
                    .find(|i| i.gen == *generation)
                    .map(|i| match &i.state {
                        InstanceState::Failed { reason } => reason.clone(),
                        InstanceState::Exited { status } => format!("stopped ({status})"),
                        other => other.name().to_string(),
                    })
                    .unwrap_or_default();
                format!("new instance {index} failed: {why}")
            }
            AbortCause::Deadline => {
                let deadline = u
                    .current
                    .as_ref()
                    .map(|c| c.spec.deploy.healthy_deadline)
                    .unwrap_or_default();
                let laggard = d.and_then(|d| {
                    u.instances
                        .iter()
                        .filter(|i| i.deployment == d.deployment)
                        .find(|i| !matches!(i.state, InstanceState::Running { healthy: true, .. }))
                });
                let detail = laggard
                    .map(|i| {
                        let last = i
                            .last_check_error
                            .as_deref()
                            .map(|e| format!(", last check: {e}"))
                            .unwrap_or_default();
                        format!(": instance {} is {}{last}", i.index, i.state.name())
                    })
                    .unwrap_or_default();
                format!(
                    "the new instances were not healthy within {}{detail}",
                    crate::unit::format_duration(deadline)
                )
            }
            AbortCause::Verify => {
                let e = d.and_then(|d| d.verify_error.clone()).unwrap_or_default();
                format!("verify failed: {e}")
            }
        }
    }

    /// `chainctl rollback`: abort the deploy in progress, or deploy an earlier revision
    /// (`to`, or the one before the stable revision). Instant when that revision's set is still
    /// kept (blue-green keep_previous).
    pub(super) fn rollback(
        &mut self,
        name: &str,
        to: Option<&str>,
        caller: Option<u32>,
    ) -> Result<u64, ApiError> {
        let err = |code, message: String| ApiError { code, message };
        let u = self
            .units
            .get(name)
            .ok_or_else(|| err(ErrorCode::UnitNotFound, format!("no unit named {name}")))?;
        // A deploy in progress (or halted) is undone by going back to the stable set.
        if to.is_none() {
            if let (Some(d), Some(stable)) = (u.deploy.clone(), u.stable.clone()) {
                let u = self.units.get_mut(name).expect("checked");
                u.deploy = None;
                u.failed_revision = Some(d.to.clone());
                u.current = Some(stable.current.clone());
                u.deployment = stable.deployment;
                u.outcome = Some(Outcome {
                    deployment: d.deployment,
                    result: Err("rolled back".into()),
                });
                // Callers waiting on the undone deploy learn it now; the rollback itself is
                // complete at once (the stable set never stopped serving), for its own caller.
                self.check_waiters();
                if let Some(u) = self.units.get_mut(name) {
                    u.outcome = Some(Outcome {
                        deployment: stable.deployment,
                        result: Ok(()),
                    });
                }
                self.finish_record(
                    name,
                    &d,
                    "rolled_back",
                    Some(format!(
                        "rolled back by uid {}",
                        caller.map_or("?".into(), |c| c.to_string())
                    )),
                );
                self.persist_unit(name);
                self.emit(
                    name,
                    None,
                    "rollback",
                    format!(
                        "deploy of revision {} rolled back to revision {}",
                        d.to, stable.current.revision
                    ),
                );
                return Ok(stable.deployment);
            }
        }
        let current = u.current.clone().ok_or_else(|| {
            err(
                ErrorCode::UnitInvalid,
                format!("unit {name} has no valid definition"),
            )
        })?;
        let target: Revision = match to {
            Some(prefix) => self
                .store
                .revisions(name)
                .unwrap_or_default()
                .into_iter()
                .rev()
                .map(|r| Revision(r.revision))
                .find(|r| r.0.starts_with(prefix))
                .ok_or_else(|| {
                    err(
                        ErrorCode::NotFound,
                        format!("unit {name} has no revision starting with {prefix}"),
                    )
                })?,
            None => self
                .store
                .deploys(name, 200)
                .unwrap_or_default()
                .into_iter()
                .rev()
                .filter(|r| r.outcome == "succeeded" && r.to_revision == current.revision.0)
                .map(|r| Revision(r.from_revision))
                .find(|r| !r.0.is_empty() && *r != current.revision)
                .ok_or_else(|| {
                    err(
                        ErrorCode::OperationFailed,
                        format!("unit {name} has no earlier revision to roll back to"),
                    )
                })?,
        };
        if target == current.revision {
            return Err(err(
                ErrorCode::OperationFailed,
                format!("unit {name} already runs revision {target}"),
            ));
        }
        let spec: UnitSpec = self
            .store
            .revision(name, &target.0)
            .ok()
            .flatten()
            .map(|r| r.spec)
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("revision {target} of {name} is not in the store"),
                )
            })?;
        let file_revision = current.revision.clone();
        let kept = u.kept.clone().filter(|k| k.current.revision == target);
        let u = self.units.get_mut(name).expect("checked");
        let previous = u.current.replace(Current {
            spec: Arc::new(spec),
            revision: target.clone(),
        });
        // Hold the file's version back until the file changes or someone deploys it.
        u.failed_revision = Some(file_revision);
        let deployment = self
            .begin_deployment(name, "rollback", caller, false, previous, None)
            .unwrap_or(0);
        if let Some(k) = kept {
            self.adopt_kept(name, &k, deployment);
        }
        Ok(deployment)
    }

    /// Instant rollback: the kept set becomes the new deployment and traffic switches to it.
    fn adopt_kept(&mut self, name: &str, kept: &Kept, deployment: u64) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        let gens: Vec<u64> = u
            .instances
            .iter()
            .filter(|i| i.deployment == kept.deployment && i.state.has_process())
            .map(|i| i.gen)
            .collect();
        for i in u.instances.iter_mut().filter(|i| gens.contains(&i.gen)) {
            i.deployment = deployment;
        }
        u.kept = None;
        if let Some(d) = u.deploy.as_mut() {
            d.switched = true;
            d.verify = Verify::Passed;
        }
        for g in gens {
            self.persist_instance(name, g);
        }
        self.persist_unit(name);
        self.emit(
            name,
            None,
            "rollback",
            format!(
                "instant rollback: the kept set of revision {} serves again",
                kept.current.revision
            ),
        );
    }

    /// Which instances the proxy routes for a unit. Rolling routes every ready instance;
    /// blue-green routes the older sets until the switch (the new set when nothing older is
    /// ready: serving the new beats serving nothing), then only the current one. A kept set is
    /// never routed.
    pub(super) fn routing(u: &Unit) -> Routing {
        let kept = u.kept.as_ref().map(|k| k.deployment);
        if u.current.is_none() || u.strategy() != Strategy::BlueGreen {
            return kept.map_or(Routing::All, Routing::AllBut);
        }
        match &u.deploy {
            Some(d) if !d.switched => {
                let older_ready = u.instances.iter().any(|i| {
                    i.deployment < u.deployment
                        && Some(i.deployment) != kept
                        && matches!(i.state, InstanceState::Running { healthy: true, .. })
                });
                if older_ready {
                    Routing::Older {
                        below: u.deployment,
                        kept,
                    }
                } else {
                    Routing::Only(u.deployment)
                }
            }
            _ => Routing::Only(u.deployment),
        }
    }

    fn put_record(&mut self, name: &str, d: &Deploy, outcome: &str, reason: Option<String>) {
        let rec = DeployRecord {
            v: 1,
            unit: name.to_string(),
            deployment: d.deployment,
            from_revision: d.from.0.clone(),
            to_revision: d.to.0.clone(),
            strategy: d.strategy.as_str().to_string(),
            trigger: d.trigger.clone(),
            caller: d.caller,
            started_ms: d.started_ms,
            finished_ms: (outcome != "in_progress").then(|| unix_ms(SystemTime::now())),
            outcome: outcome.to_string(),
            reason,
        };
        if let Err(e) = self.store.put_deploy(&rec) {
            tracing::error!(unit = name, error = %e, "cannot store deploy record");
        }
        self.dirty = true;
    }

    fn finish_record(&mut self, name: &str, d: &Deploy, outcome: &str, reason: Option<String>) {
        self.put_record(name, d, outcome, reason);
    }
}

impl Deploy {
    /// Blue-green deploys of a unit with `[deploy.verify]` probe the new set before switching.
    pub(super) fn verify_for(strategy: Strategy, cur: &Current) -> Verify {
        if strategy == Strategy::BlueGreen && cur.spec.deploy.verify.is_some() {
            Verify::NotRun
        } else {
            Verify::None
        }
    }

    pub(super) fn to_state(&self) -> DeployState {
        DeployState {
            deployment: self.deployment,
            started_ms: self.started_ms,
            from_revision: self.from.0.clone(),
            to_revision: self.to.0.clone(),
            strategy: self.strategy.as_str().to_string(),
            trigger: self.trigger.clone(),
            caller: self.caller,
            switched: self.switched,
            verified: self.verify == Verify::Passed,
            halted: self.halted,
        }
    }

    /// Rebuilds a deploy after a restart of chaind; its clock continues from the recorded start.
    pub(super) fn from_state(s: &DeployState, has_verify: bool) -> Deploy {
        let strategy = if s.strategy == "blue-green" {
            Strategy::BlueGreen
        } else {
            Strategy::Rolling
        };
        let elapsed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH + Duration::from_millis(s.started_ms))
            .unwrap_or_default();
        let now = Instant::now();
        Deploy {
            deployment: s.deployment,
            started: now.checked_sub(elapsed).unwrap_or(now),
            started_ms: s.started_ms,
            from: Revision(s.from_revision.clone()),
            to: Revision(s.to_revision.clone()),
            strategy,
            trigger: s.trigger.clone(),
            caller: s.caller,
            // A probe that was running when chaind died runs again.
            verify: match (has_verify && strategy == Strategy::BlueGreen, s.verified) {
                (false, _) => Verify::None,
                (true, true) => Verify::Passed,
                (true, false) => Verify::NotRun,
            },
            verify_error: None,
            switched: s.switched,
            halted: s.halted,
        }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// One verify request: plain HTTP/1.1 GET, status and optional body substring checked.
async fn verify_one(
    addr: std::net::SocketAddr,
    spec: &crate::unit::VerifySpec,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET {} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: chain-verify\r\nConnection: close\r\n\r\n", spec.path);
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.take(1 << 20)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(spec.timeout, io).await.map_err(|_| {
        format!(
            "no answer within {}",
            crate::unit::format_duration(spec.timeout)
        )
    })??;
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("not an HTTP response")?;
    if status != spec.status {
        return Err(format!(
            "GET {} answered {status}, expected {}",
            spec.path, spec.status
        ));
    }
    if let Some(want) = &spec.body {
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        if !body.contains(want.as_str()) {
            return Err(format!("GET {} body does not contain {want:?}", spec.path));
        }
    }
    Ok(())
}
