//! Container instances: the supervisor's side of the container driver.
//!
//! A container instance goes through the same state machine, plan and deploy engine as a
//! process; what differs is carried out here:
//! - Starting is asynchronous (image, network, create, start are API calls): `spawn_container`
//!   marks the instance `starting` with an attempt number and a task reports
//!   [`Msg::ContainerStarted`]; a report for an attempt that is no longer wanted (the instance
//!   was stopped, removed or restarted meanwhile) removes the container it created.
//! - Exits come from the engine's wait API, output from its log stream, and an exited
//!   container is removed once its output is read (`cleanup_container`; shutdown waits for
//!   these removals).
//! - After a chaind restart, containers are found by their `chain.store` and `chain.tag`
//!   labels and adopted; a start that was in flight when chaind died is found the same way.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chain_agent::driver::container::{
    ContainerInfo, ContainerSpec, MountSource, MountSpec, Pull, Started,
};
use chain_agent::driver::process::{ProcessId, Retry};
use chain_agent::logs::{self, Attachment};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    error_chain, incarnation_tag, short_id, AfterStop, Effect, Event, InstanceState, Msg,
    Supervisor,
};
use crate::api::wire::{ApiError, GcContainer, GcResult};
use crate::store::InstanceRecord;
use crate::unit::{Gpus, PortSpec, PullPolicy, UnitSpec, VolumeSource};

/// How long an exited container's log stream may take to deliver its last lines before the
/// container is removed anyway.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Supervisor {
    /// Starts a new container for the instance; the result arrives as `Msg::ContainerStarted`.
    pub(super) fn spawn_container(&mut self, unit: &str, gen: u64) {
        let network = self.cfg.docker_network.clone();
        let store_id = self.store_id.clone();
        let Some(inst) = self.instance_mut(unit, gen) else {
            return;
        };
        let spec = inst.spec.clone();
        let Some(c) = spec.container.as_ref() else {
            return;
        };
        let n = inst.attempts;
        inst.attempts += 1;
        let tag = incarnation_tag(&store_id, unit, inst.index, gen, n);
        inst.tag = tag.clone();
        inst.starting = Some(n);
        let index = inst.index;
        let port = container_port(&spec, inst.port);
        let publish = match (spec.port, port, inst.port) {
            (PortSpec::Fixed { .. } | PortSpec::Range { .. }, Some(_), Some(host)) => {
                Some((c.bind.clone(), host))
            }
            _ => None,
        };
        let labels = [
            ("chain.store", store_id.clone()),
            ("chain.unit", unit.to_string()),
            ("chain.instance", index.to_string()),
            ("chain.generation", gen.to_string()),
            ("chain.deployment", inst.deployment.to_string()),
            ("chain.revision", inst.revision.0.clone()),
            ("chain.tag", tag.clone()),
        ];
        let cspec = ContainerSpec {
            name: container_name(&store_id, unit, index, gen, n),
            image: c.image.clone(),
            pull: match c.pull {
                PullPolicy::Missing => Pull::Missing,
                PullPolicy::Always => Pull::Always,
                PullPolicy::Never => Pull::Never,
            },
            command: c.command.clone(),
            entrypoint: c.entrypoint.clone(),
            working_dir: c.working_dir.clone(),
            env: container_env(&spec, index, port, &tag),
            labels: c
                .labels
                .clone()
                .into_iter()
                .chain(labels.map(|(k, v)| (k.to_string(), v)))
                .collect(),
            port,
            publish,
            mounts: c
                .volumes
                .iter()
                .map(|v| MountSpec {
                    source: match &v.source {
                        VolumeSource::Bind(p) => MountSource::Bind(p.clone()),
                        VolumeSource::Volume(n) => MountSource::Volume(n.clone()),
                    },
                    target: v.target.clone(),
                    read_only: v.read_only,
                })
                .collect(),
            network,
            networks: c.networks.clone(),
            aliases: vec![unit.to_string()],
            nano_cpus: c.millicpus.map(|m| i64::from(m) * 1_000_000),
            memory: c.memory.and_then(|m| i64::try_from(m).ok()),
            user: c.user.clone(),
            read_only: c.read_only,
            init: c.init,
            gpus: c.gpus.map(|g| match g {
                Gpus::All => -1,
                Gpus::Count(n) => i64::from(n),
            }),
            stop_signal: spec.process.stop_signal.clone(),
            stop_timeout: spec.process.kill_timeout,
        };
        // The tag is recorded before the container exists: a chaind that dies meanwhile finds
        // the container by it.
        self.persist_instance(unit, gen);
        let (tx, driver, unit) = (self.tx.clone(), self.containers.clone(), unit.to_string());
        let leftovers = vec![
            format!("chain.store={store_id}"),
            format!("chain.unit={unit}"),
            format!("chain.generation={gen}"),
        ];
        tokio::spawn(async move {
            // A container of this instance still running here was started by a chaind that
            // never saw the start finish (or could not reach the engine): it goes first, so the
            // instance never runs twice.
            if let Ok(old) = driver.list(&leftovers).await {
                for o in old.into_iter().filter(|o| o.running) {
                    tracing::warn!(unit, container = %o.name, "removing a leftover container of this instance");
                    let _ = driver.remove(&o.id).await;
                }
            }
            let note = {
                let (tx, unit) = (tx.clone(), unit.clone());
                move |message: String| {
                    let _ = tx.send(Msg::Note {
                        unit: unit.clone(),
                        index: Some(index),
                        kind: "pull",
                        message,
                    });
                }
            };
            let result = driver
                .start(&cspec, &note)
                .await
                .map_err(|e| (error_chain(&e), e.retry() == Retry::Permanent));
            let _ = tx.send(Msg::ContainerStarted {
                unit,
                gen,
                n,
                result,
            });
        });
    }

    pub(super) fn on_container_started(
        &mut self,
        unit: &str,
        gen: u64,
        n: u32,
        result: Result<Started, (String, bool)>,
    ) {
        let wanted = self
            .instance(unit, gen)
            .is_some_and(|i| i.starting == Some(n) && matches!(i.state, InstanceState::Pending));
        let started = match result {
            Ok(started) if !wanted => {
                self.cleanup_container(started.id, None);
                return;
            }
            Err(_) if !wanted => return,
            Err((error, permanent)) => {
                if let Some(inst) = self.instance_mut(unit, gen) {
                    inst.starting = None;
                }
                self.instance_event(unit, gen, Event::SpawnFailed { error, permanent });
                return;
            }
            Ok(started) => started,
        };
        let index = match self.instance(unit, gen) {
            Some(i) => i.index,
            None => return,
        };
        let attachment = self.attach_container_logs(unit, index, &started.id, None);
        let Some(inst) = self.instance_mut(unit, gen) else {
            return;
        };
        inst.starting = None;
        let port = container_port(&inst.spec, inst.port);
        inst.addr = started.ip.zip(port).map(|(ip, p)| SocketAddr::new(ip, p));
        inst.container = Some(started.id.clone());
        let image = inst
            .spec
            .container
            .as_ref()
            .map(|c| c.image.clone())
            .unwrap_or_default();
        let at = inst.addr.map(|a| format!(" at {a}")).unwrap_or_default();
        let id = ProcessId {
            pid: started.pid,
            start_time: chain_agent::procfs::start_time(started.pid).unwrap_or(0),
        };
        self.watch_container(unit, gen, index, started.pid, started.id.clone());
        let what = format!("container {} ({image}){at}", short_id(&started.id));
        self.spawned(unit, gen, id, attachment, what);
    }

    /// Reports the container's exit as `Msg::Exited` (with an OOM note first when the engine
    /// killed it for its memory limit).
    fn watch_container(&self, unit: &str, gen: u64, index: u32, pid: i32, id: String) {
        let (tx, driver, unit) = (self.tx.clone(), self.containers.clone(), unit.to_string());
        tokio::spawn(async move {
            let exit = driver.wait(&id).await;
            if exit.oom_killed {
                let _ = tx.send(Msg::Note {
                    unit: unit.clone(),
                    index: Some(index),
                    kind: "memory",
                    message: format!(
                        "container {} was killed by the engine: out of memory at its memory limit",
                        short_id(&id)
                    ),
                });
            }
            let _ = tx.send(Msg::Exited {
                unit,
                gen,
                pid,
                status: exit.status,
            });
        });
    }

    fn attach_container_logs(
        &mut self,
        unit: &str,
        index: u32,
        id: &str,
        since: Option<SystemTime>,
    ) -> Option<Attachment> {
        let logs_dir = self.cfg.logs_dir.clone();
        let rx = self.containers.logs(id, since);
        let log = self.units.get_mut(unit)?.log(&logs_dir)?;
        match log.attach_chunks(&index.to_string(), rx) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(unit, error = %e, "cannot attach container logs");
                None
            }
        }
    }

    /// Removes a container in the background once its output is read; shutdown waits for it.
    pub(super) fn cleanup_container(&mut self, id: String, attachment: Option<Attachment>) {
        self.cleanups += 1;
        let (tx, driver) = (self.tx.clone(), self.containers.clone());
        tokio::spawn(async move {
            if let Some(a) = attachment {
                let _ = tokio::time::timeout(LOG_DRAIN_TIMEOUT, a.finished()).await;
            }
            if let Err(e) = driver.remove(&id).await {
                tracing::warn!(container = %short_id(&id), error = %e, "cannot remove container");
            }
            let _ = tx.send(Msg::CleanupDone);
        });
    }

    /// This chaind's containers by `chain.tag`, with pids (None: the engine is unreachable).
    /// Asks the engine only when some unit or instance record involves containers.
    pub(super) async fn own_containers(&self) -> Option<HashMap<String, ContainerInfo>> {
        let units = self.store.units().unwrap_or_default();
        let records = self.store.instances().unwrap_or_default();
        let involved = units.iter().any(|u| u.spec.container.is_some())
            || records.iter().any(|r| r.container.is_some());
        if !involved {
            return Some(HashMap::new());
        }
        let list = match self
            .containers
            .list(&[format!("chain.store={}", self.store_id)])
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers; their instances count as lost");
                return None;
            }
        };
        let mut out = HashMap::new();
        for mut c in list {
            if c.running {
                // The list has no pids; inspect has.
                if let Ok(Some(full)) = self.containers.inspect(&c.id).await {
                    c = full;
                }
            }
            if let Some(tag) = c.labels.get("chain.tag").cloned() {
                out.insert(tag, c);
            }
        }
        Some(out)
    }

    /// Re-attaches to the container an earlier chaind left for this record.
    /// `found`: None when the engine could not be asked, Some(None) when it has no such
    /// container.
    pub(super) fn recover_container(
        &mut self,
        rec: InstanceRecord,
        spec: Arc<UnitSpec>,
        found: Option<Option<ContainerInfo>>,
        now: Instant,
    ) {
        let unit = rec.unit.clone();
        let gen = rec.generation;
        let index = rec.index;
        let mut inst = self.instance_from_record(&rec, &spec);
        self.units
            .entry(unit.clone())
            .or_insert_with(|| super::Unit::new(&unit, std::path::PathBuf::new()));
        let since = last_output_time(&self.cfg.logs_dir, &unit, index);
        let running = match found {
            Some(Some(c)) if c.running => c,
            other => {
                let why = match other {
                    None => "the Docker engine could not be asked about its container".to_string(),
                    Some(Some(c)) => {
                        // Keep what it wrote while chaind was down, then remove it.
                        let attachment = self.attach_container_logs(&unit, index, &c.id, since);
                        self.cleanup_container(c.id.clone(), attachment);
                        format!("container {} exited while chaind was down", short_id(&c.id))
                    }
                    Some(None) => "its container is gone".to_string(),
                };
                inst.state = InstanceState::Starting { since: now };
                inst.spawned_at = Some(now);
                if let Some(u) = self.units.get_mut(&unit) {
                    u.instances.push(inst);
                }
                self.emit(&unit, Some(index), "lost", why);
                if rec.stopping {
                    self.instance_event(
                        &unit,
                        gen,
                        Event::Stop {
                            then: AfterStop::Remove,
                        },
                    );
                }
                self.instance_event(
                    &unit,
                    gen,
                    Event::Exited {
                        status: chain_agent::driver::process::ExitStatus::Unknown,
                    },
                );
                return;
            }
        };
        let port = container_port(&spec, inst.port);
        let network = &self.cfg.docker_network;
        inst.addr = running
            .ips
            .get(network)
            .copied()
            .zip(port)
            .map(|(ip, p)| SocketAddr::new(ip, p));
        inst.container = Some(running.id.clone());
        inst.tag = running.labels.get("chain.tag").cloned().unwrap_or(inst.tag);
        inst.proc = Some(ProcessId {
            pid: running.pid,
            start_time: chain_agent::procfs::start_time(running.pid).unwrap_or(0),
        });
        inst.spawned_at = Some(now);
        inst.state = if rec.stopping {
            InstanceState::Stopping {
                deadline: now + spec.process.kill_timeout,
                then: AfterStop::Remove,
                killed: false,
            }
        } else if rec.ready {
            InstanceState::Running {
                since: now,
                healthy: true,
            }
        } else {
            InstanceState::Starting { since: now }
        };
        if let Some(u) = self.units.get_mut(&unit) {
            u.instances.push(inst);
        }
        let attachment = self.attach_container_logs(&unit, index, &running.id, since);
        if let Some(i) = self.instance_mut(&unit, gen) {
            i.attachment = attachment;
        }
        self.watch_container(&unit, gen, index, running.pid, running.id.clone());
        tracing::info!(unit = %unit, instance = index, container = %short_id(&running.id), "re-adopted");
        self.persist_instance(&unit, gen);
        self.emit(
            &unit,
            Some(index),
            "adopted",
            format!("re-adopted container {}", short_id(&running.id)),
        );
        if rec.stopping {
            self.do_effect(&unit, gen, Effect::Signal);
            let deadline = now + spec.process.kill_timeout;
            self.do_effect(&unit, gen, Effect::ArmKillTimer { at: deadline });
        } else {
            self.start_probe(&unit, gen);
        }
    }

    /// `chainctl gc`: removes containers labelled with this chaind's store that no instance
    /// owns (and with `all`, those of other chaind roots too).
    pub(super) fn gc(
        &mut self,
        dry_run: bool,
        all: bool,
        reply: oneshot::Sender<Result<GcResult, ApiError>>,
    ) {
        // Owned: every (unit, generation) this chaind has an instance for; generations handed
        // out after this point (starts racing with the gc) are above the high-water mark.
        let owned: HashSet<(String, u64)> = self
            .units
            .values()
            .flat_map(|u| u.instances.iter().map(|i| (u.name.clone(), i.gen)))
            .collect();
        let high_water = self.store.current_generation().unwrap_or(u64::MAX);
        let (driver, store_id) = (self.containers.clone(), self.store_id.clone());
        tokio::spawn(async move {
            let list = match driver.list(&["chain.store".to_string()]).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = reply.send(Err(ApiError {
                        code: crate::api::wire::ErrorCode::EngineUnavailable,
                        message: error_chain(&e),
                    }));
                    return;
                }
            };
            let mut out = Vec::new();
            for c in list {
                let store = c.labels.get("chain.store").cloned();
                let unit = c.labels.get("chain.unit").cloned();
                let gen = c
                    .labels
                    .get("chain.generation")
                    .and_then(|g| g.parse::<u64>().ok());
                let ours = store.as_deref() == Some(store_id.as_str());
                if ours {
                    let is_owned = match (&unit, gen) {
                        (Some(u), Some(g)) => owned.contains(&(u.clone(), g)) || g > high_water,
                        _ => false,
                    };
                    if is_owned {
                        continue;
                    }
                }
                let action = if !ours && !all {
                    "kept-other-store".to_string()
                } else if dry_run {
                    "would-remove".to_string()
                } else {
                    match driver.remove(&c.id).await {
                        Ok(()) => "removed".to_string(),
                        Err(e) => format!("failed: {}", error_chain(&e)),
                    }
                };
                out.push(GcContainer {
                    id: short_id(&c.id).to_string(),
                    name: c.name,
                    unit,
                    store,
                    state: if c.running {
                        "running".into()
                    } else {
                        c.status
                    },
                    action,
                });
            }
            let _ = reply.send(Ok(GcResult { containers: out }));
        });
    }
}

/// The port the app listens on inside the container: `container.port`, else the instance's.
fn container_port(spec: &UnitSpec, instance_port: Option<u16>) -> Option<u16> {
    if matches!(spec.port, PortSpec::None) {
        return None;
    }
    spec.container
        .as_ref()
        .and_then(|c| c.port)
        .or(instance_port)
}

/// Unique on the engine (the store id tells chaind roots apart) and readable in `docker ps`.
fn container_name(store_id: &str, unit: &str, index: u32, gen: u64, n: u32) -> String {
    let store = store_id.get(..8).unwrap_or(store_id);
    format!("chain-{unit}-{index}-{gen}-{n}-{store}")
}

/// The unit's environment plus chain's per-instance keys; nothing of chaind's own.
fn container_env(
    spec: &UnitSpec,
    index: u32,
    port: Option<u16>,
    tag: &str,
) -> Vec<(String, String)> {
    let mut env = spec.env.clone();
    env.insert("CHAIN_UNIT".into(), spec.name.clone());
    env.insert("CHAIN_INSTANCE".into(), index.to_string());
    env.insert("CHAIN_INSTANCE_UID".into(), tag.to_string());
    if let Some(p) = port {
        env.insert("PORT".into(), p.to_string());
    }
    env.into_iter().collect()
}

/// When the instance's last line of output (not chaind's own lines) was written, so that an
/// adopted container's log stream resumes after it.
fn last_output_time(logs_dir: &std::path::Path, unit: &str, index: u32) -> Option<SystemTime> {
    let lines = logs::tail(logs_dir, unit, 200, Some(&index.to_string())).ok()?;
    lines
        .iter()
        .rev()
        .filter_map(|l| logs::parse_line(l))
        .find(|l| l.stream != "sys")
        .and_then(|l| logs::parse_timestamp_ms(&l.ts))
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_store_and_attempt() {
        assert_eq!(
            container_name("0123456789abcdef", "web", 2, 17, 3),
            "chain-web-2-17-3-01234567"
        );
    }
}
