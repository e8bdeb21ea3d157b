//! The supervisor: the one task that owns instance state.
//!
//! Everything else talks to it through [`SupervisorHandle`] (a closed [`Command`] set) or
//! reports into its message channel: process exits, probe results, timers, stats samples, file
//! changes. Each message is one turn: update state through the pure [`instance::step`], run
//! [`plan::plan`] and carry out its actions, write the store, flush it, publish a [`Snapshot`].
//!
//! Owned here and nowhere else: the unit table, every instance's state, the port pool, and all
//! store writes. The decisions themselves live in the pure modules; this file only executes.

mod container;
mod deploy;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chain_agent::driver::container::{ContainerDriver, ContainerInfo, Started};
use chain_agent::driver::process::{
    self as driver, CommandSpec, ExitStatus, ExitWatch, ProcessDriver, ProcessId, ProcessSpec,
    Retry, UserIds,
};
use chain_agent::health::{self, Probe};
use chain_agent::host::{self, Sample};
use chain_agent::logs::{Attachment, Rotation, UnitLog};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::instance::{self, AfterStop, Ctx, Effect, Event, InstanceState};
use super::plan::{self, Action, InstView, Phase, Rollout, Tracked, UnitView, Want};
use super::ports::PortPool;
use super::restart::History;
use super::snapshot::{unix_ms, InstSnap, Snapshot, UnitSnap};
use crate::api::wire::{
    ActionResult, ApiError, ApplyResult, ErrorCode, InstanceInfo, UnitAction, UnitErrors,
    UnitSummary,
};
use crate::proxy::{DrainOutcome, Proxy};
use crate::store::{EventRecord, InstanceRecord, RevisionRecord, Store, UnitRecord};
use crate::unit::{self, HealthCheck, PortSpec, ResolveCtx, Revision, UnitError, UnitSpec};
use crate::watch::{DirWatch, WatchOptions};

/// Where things live and how the supervisor behaves; fixed for the daemon's lifetime.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub units_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// FIFOs of running instances.
    pub run_dir: PathBuf,
    pub port_range: (u16, u16),
    pub cpus: u32,
    /// Applied at start-up when the store has no active profile yet.
    pub profile: Option<String>,
    /// The Docker engine container units run on.
    pub docker_socket: PathBuf,
    /// The bridge network containers join (chain reaches them on it).
    pub docker_network: String,
}

/// Requests from the API.
#[derive(Debug)]
pub enum Command {
    Apply {
        /// `Some(None)` clears the profile, `None` keeps it.
        profile: Option<Option<String>>,
        reply: oneshot::Sender<Result<ApplyResult, ApiError>>,
    },
    Unit {
        unit: String,
        action: UnitAction,
        wait: bool,
        caller: Option<u32>,
        reply: oneshot::Sender<Result<ActionResult, ApiError>>,
    },
    Deploy {
        unit: String,
        request: crate::api::wire::DeployRequest,
        wait: bool,
        caller: Option<u32>,
        reply: oneshot::Sender<Result<ActionResult, ApiError>>,
    },
    Rollback {
        unit: String,
        to: Option<String>,
        wait: bool,
        caller: Option<u32>,
        reply: oneshot::Sender<Result<ActionResult, ApiError>>,
    },
    Shutdown {
        leave_running: bool,
        done: oneshot::Sender<()>,
    },
    /// Remove containers with chain's labels that no instance owns.
    Gc {
        dry_run: bool,
        all: bool,
        reply: oneshot::Sender<Result<crate::api::wire::GcResult, ApiError>>,
    },
}

#[derive(Debug)]
enum Msg {
    Cmd(Command),
    UnitsChanged,
    Exited {
        unit: String,
        gen: u64,
        pid: i32,
        status: ExitStatus,
    },
    Probe {
        unit: String,
        gen: u64,
        pid: i32,
        result: Result<(), String>,
    },
    Listening {
        unit: String,
        gen: u64,
        pid: i32,
    },
    Timer {
        unit: String,
        gen: u64,
        kind: TimerKind,
        at: Instant,
    },
    Drained {
        unit: String,
        gen: u64,
        outcome: DrainOutcome,
    },
    Stats(HashMap<i32, Sample>),
    Verified {
        unit: String,
        deployment: u64,
        result: Result<(), String>,
    },
    /// A time-based condition of `plan` may have changed (min_healthy_time, a deploy
    /// deadline, a kept set's expiry): plan again.
    Tick,
    WatchFired {
        unit: String,
        path: PathBuf,
    },
    /// A container start (`n`-th attempt of the instance) finished.
    ContainerStarted {
        unit: String,
        gen: u64,
        n: u32,
        result: Result<Started, (String, bool)>,
    },
    /// An event from a background task (image pull progress, OOM kills).
    Note {
        unit: String,
        index: Option<u32>,
        kind: &'static str,
        message: String,
    },
    /// A background container removal finished.
    CleanupDone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Kill,
    Backoff,
    Listen,
}

/// Cheap, cloneable way in: commands, the unit-file watcher, and the read side.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::UnboundedSender<Msg>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub events: broadcast::Sender<EventRecord>,
    pub store: Store,
}

impl SupervisorHandle {
    pub fn command(&self, cmd: Command) -> Result<(), ApiError> {
        self.tx.send(Msg::Cmd(cmd)).map_err(|_| ApiError {
            code: ErrorCode::ShuttingDown,
            message: "chaind is shutting down".into(),
        })
    }

    /// The units directory changed: re-read it.
    pub fn units_changed(&self) {
        let _ = self.tx.send(Msg::UnitsChanged);
    }
}

struct Unit {
    name: String,
    path: PathBuf,
    /// The wanted version (what the current deployment runs).
    current: Option<Current>,
    /// Problems in the file as it is now (the last good version keeps running).
    errors: Vec<UnitError>,
    removed: bool,
    stopped: bool,
    /// The wanted deployment; instances of other deployments are replaced or stopped.
    deployment: u64,
    /// The highest deployment number handed out (a rolled-back deployment's number is never
    /// reused, so its leftover instances are always told apart).
    last_deployment: u64,
    /// This deployment replaces everything at once (`chainctl restart`).
    immediate: bool,
    stable: Option<deploy::Stable>,
    deploy: Option<deploy::Deploy>,
    kept: Option<deploy::Kept>,
    /// A revision that failed to deploy (or was rolled back): not deployed again from the file
    /// until the file changes or someone runs `chainctl deploy`.
    failed_revision: Option<Revision>,
    /// How the last deployment someone waits for ended.
    outcome: Option<deploy::Outcome>,
    overrides: Vec<(String, String)>,
    instances: Vec<Instance>,
    log: Option<UnitLog>,
    waiting: Option<String>,
    watcher: Option<DirWatch>,
    last_error: Option<String>,
}

#[derive(Clone)]
struct Current {
    spec: Arc<UnitSpec>,
    revision: Revision,
}

struct Instance {
    index: u32,
    gen: u64,
    deployment: u64,
    revision: Revision,
    spec: Arc<UnitSpec>,
    state: InstanceState,
    history: History,
    tag: String,
    port: Option<u16>,
    proc: Option<ProcessId>,
    spawned_at: Option<Instant>,
    started_wall: Option<SystemTime>,
    restarts: u32,
    /// Since when the instance has been ready without interruption.
    ready_since: Option<Instant>,
    health_failures: u32,
    last_check_error: Option<String>,
    stats: Option<Sample>,
    probe: Option<AbortHandle>,
    attachment: Option<Attachment>,
    stdout: PathBuf,
    stderr: PathBuf,
    env: Vec<(String, String)>,
    /// Where the proxy and probes reach it: `127.0.0.1:port` for a process, the container's
    /// address (known once it started) for a container.
    addr: Option<SocketAddr>,
    /// The engine's id of the current container (container units).
    container: Option<String>,
    /// A container start is in flight: the attempt number it was given.
    starting: Option<u32>,
    /// Container start attempts so far (each gets its own container name).
    attempts: u32,
}

struct Waiter {
    unit: String,
    action: UnitAction,
    deployment: u64,
    reply: oneshot::Sender<Result<ActionResult, ApiError>>,
}

pub struct Supervisor {
    cfg: Arc<Config>,
    store: Store,
    driver: ProcessDriver,
    containers: ContainerDriver,
    /// Container removals running in the background (chaind waits for them at shutdown).
    cleanups: usize,
    store_id: String,
    units: BTreeMap<String, Unit>,
    ports: PortPool,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    events: broadcast::Sender<EventRecord>,
    profile: Option<String>,
    shutting_down: bool,
    shutdown_done: Option<oneshot::Sender<()>>,
    waiters: Vec<Waiter>,
    rng: u64,
    dirty: bool,
    base_env: Vec<(String, String)>,
    /// Set by the daemon when a proxy listens: instances behind routes are drained before
    /// they are stopped.
    proxy: Option<Proxy>,
    /// When the pending `Tick` fires, if one is armed.
    tick_armed: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("process driver: {0}")]
    Driver(#[from] driver::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Supervisor {
    /// Opens nothing itself: the daemon hands in the store. Re-adopts instances recorded by an
    /// earlier chaind, then loads the unit files.
    pub fn new(cfg: Config, store: Store) -> Result<(Supervisor, SupervisorHandle), Error> {
        for dir in [&cfg.logs_dir, &cfg.run_dir] {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let driver = ProcessDriver::new()?;
        let store_id = store.store_id()?;
        let seed = crate::store::random_u64();
        let (tx, rx) = mpsc::unbounded_channel();
        let (snapshot, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        let (events, _) = broadcast::channel(1024);
        let profile = match store.profile()? {
            Some(p) => Some(p),
            None => {
                if let Some(p) = &cfg.profile {
                    store.set_profile(Some(p))?;
                }
                cfg.profile.clone()
            }
        };
        let base_env = std::env::vars()
            .filter(|(k, _)| {
                !k.starts_with("CHAIN_")
                    && !k.starts_with("LISTEN_")
                    && k != "NOTIFY_SOCKET"
                    && k != "PORT"
            })
            .collect();
        let handle = SupervisorHandle {
            tx: tx.clone(),
            snapshot: snapshot_rx,
            events: events.clone(),
            store: store.clone(),
        };
        let containers = ContainerDriver::new(cfg.docker_socket.clone());
        let sup = Supervisor {
            ports: PortPool::new(cfg.port_range.0, cfg.port_range.1, seed),
            containers,
            cleanups: 0,
            cfg: Arc::new(cfg),
            store,
            driver,
            store_id,
            units: BTreeMap::new(),
            tx,
            rx,
            snapshot,
            events,
            profile,
            shutting_down: false,
            shutdown_done: None,
            waiters: Vec::new(),
            rng: seed | 1,
            dirty: false,
            base_env,
            proxy: None,
            tick_armed: None,
        };
        Ok((sup, handle))
    }

    /// Instances behind routes will be drained through this proxy before they stop.
    pub fn set_proxy(&mut self, proxy: Proxy) {
        self.proxy = Some(proxy);
    }

    /// Runs until a shutdown command completes.
    pub async fn run(mut self) {
        let containers = self.own_containers().await;
        self.recover(containers);
        self.apply_units("start");
        self.spawn_stats_task();
        self.turn_end();
        while let Some(msg) = self.rx.recv().await {
            self.handle(msg);
            self.turn_end();
            if self.shutting_down && self.all_stopped() {
                break;
            }
            if self.shutdown_done.is_some() && !self.shutting_down {
                break;
            }
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final store flush failed");
        }
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(ApiError {
                code: ErrorCode::ShuttingDown,
                message: "chaind is shutting down".into(),
            }));
        }
        if let Some(done) = self.shutdown_done.take() {
            let _ = done.send(());
        }
    }

    fn all_stopped(&self) -> bool {
        self.cleanups == 0
            && self.units.values().all(|u| {
                u.instances
                    .iter()
                    .all(|i| !i.state.has_process() && i.starting.is_none())
            })
    }

    // --- start-up ----------------------------------------------------------------------------

    /// Rebuilds units from their last good records and re-attaches to the processes an earlier
    /// chaind left running. Nothing is started here: `plan` decides after the unit files load.
    fn recover(&mut self, containers: Option<HashMap<String, ContainerInfo>>) {
        let units = match self.store.units() {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "cannot read units from the store");
                Vec::new()
            }
        };
        for rec in units {
            let mut u = Unit::new(&rec.name, PathBuf::from(&rec.path));
            u.current = Some(Current {
                revision: Revision(rec.revision.clone()),
                spec: Arc::new(rec.spec.clone()),
            });
            u.deployment = rec.deployment;
            u.last_deployment = rec.last_deployment.max(rec.deployment);
            u.stopped = rec.stopped;
            u.immediate = rec.immediate;
            u.overrides = rec.overrides.clone();
            u.failed_revision = rec.failed_revision.clone().map(Revision);
            let spec_of = |rev: &str| {
                self.store
                    .revision(&rec.name, rev)
                    .ok()
                    .flatten()
                    .map(|r| Arc::new(r.spec))
            };
            u.stable = rec.stable.as_ref().and_then(|(d, rev)| {
                Some(deploy::Stable {
                    deployment: *d,
                    current: Current {
                        spec: spec_of(rev)?,
                        revision: Revision(rev.clone()),
                    },
                })
            });
            u.kept = rec.kept.as_ref().and_then(|(d, rev, until_ms)| {
                let left =
                    Duration::from_millis(until_ms.saturating_sub(unix_ms(SystemTime::now())));
                Some(deploy::Kept {
                    deployment: *d,
                    until: Instant::now() + left,
                    until_ms: *until_ms,
                    current: Current {
                        spec: spec_of(rev)?,
                        revision: Revision(rev.clone()),
                    },
                })
            });
            let has_verify = rec.spec.deploy.verify.is_some();
            u.deploy = rec
                .deploy
                .as_ref()
                .map(|s| deploy::Deploy::from_state(s, has_verify));
            self.units.insert(rec.name.clone(), u);
        }
        let records = match self.store.instances() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read instances from the store");
                Vec::new()
            }
        };
        let now = Instant::now();
        for rec in records {
            self.recover_instance(rec, now, containers.as_ref());
        }
    }

    fn recover_instance(
        &mut self,
        rec: InstanceRecord,
        now: Instant,
        containers: Option<&HashMap<String, ContainerInfo>>,
    ) {
        let spec = self
            .units
            .get(&rec.unit)
            .and_then(|u| u.current.clone())
            .map(|c| c.spec)
            .or_else(|| self.revision_spec(&rec.unit, &rec.revision));
        if let Some(spec) = spec.clone().filter(|s| s.container.is_some()) {
            let found = containers.map(|c| {
                let by_id = rec
                    .container
                    .as_ref()
                    .and_then(|id| c.values().find(|i| &i.id == id));
                by_id.or_else(|| c.get(&rec.tag)).cloned()
            });
            self.recover_container(rec, spec, found, now);
            return;
        }
        let found = match (rec.pid, rec.start_time) {
            (Some(pid), Some(start_time)) => Some(ProcessId { pid, start_time }),
            // chaind died between spawn and recording the pid: find the process by its tag.
            _ => ProcessDriver::find_tagged(&rec.tag)
                .into_iter()
                .min_by_key(|p| (p.start_time, p.pid)),
        };
        let watch = match found {
            Some(id) => match self.driver.adopt(id) {
                Ok(Some(w)) => Some((id, w)),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(unit = %rec.unit, pid = id.pid, error = %e, "cannot adopt");
                    None
                }
            },
            None => None,
        };
        let Some(spec) = spec else {
            // No spec to run it by: stop what is there and forget it.
            if let Some((id, _)) = &watch {
                self.driver.kill_all(*id, &rec.tag);
            }
            let _ = self
                .store
                .remove_instance(&rec.unit, rec.index, rec.generation);
            return;
        };
        let unit_name = rec.unit.clone();
        let mut inst = self.instance_from_record(&rec, &spec);
        let u = self
            .units
            .entry(unit_name.clone())
            .or_insert_with(|| Unit::new(&unit_name, PathBuf::new()));
        let label = rec.index.to_string();
        match watch {
            Some((id, w)) => {
                inst.proc = Some(id);
                // Uptime survives the restart of chaind; the policy counts from now.
                inst.spawned_at = Some(now);
                inst.state = if rec.stopping {
                    let deadline = now + spec.process.kill_timeout;
                    InstanceState::Stopping {
                        deadline,
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
                let log = u.log(&self.cfg.logs_dir);
                inst.attachment =
                    log.and_then(|l| l.attach(&label, &inst.stdout, &inst.stderr).ok());
                spawn_exit_watch(&self.tx, &unit_name, inst.gen, id.pid, w);
                tracing::info!(unit = %unit_name, instance = rec.index, pid = id.pid, "re-adopted");
                let stopping = rec.stopping;
                u.instances.push(inst);
                self.emit(
                    &unit_name,
                    Some(rec.index),
                    "adopted",
                    format!("re-adopted pid {}", id.pid),
                );
                if stopping {
                    self.do_effect(&unit_name, rec.generation, Effect::Signal);
                    let deadline = now + spec.process.kill_timeout;
                    self.do_effect(
                        &unit_name,
                        rec.generation,
                        Effect::ArmKillTimer { at: deadline },
                    );
                } else {
                    self.start_probe(&unit_name, rec.generation);
                }
            }
            None => {
                // It ended while chaind was down: the restart policy decides as for any exit.
                inst.state = InstanceState::Starting { since: now };
                inst.spawned_at = Some(now);
                u.instances.push(inst);
                let stopping = rec.stopping;
                self.emit(
                    &unit_name,
                    Some(rec.index),
                    "lost",
                    "exited while chaind was down".into(),
                );
                if stopping {
                    self.instance_event(
                        &unit_name,
                        rec.generation,
                        Event::Stop {
                            then: AfterStop::Remove,
                        },
                    );
                    self.instance_event(
                        &unit_name,
                        rec.generation,
                        Event::Exited {
                            status: ExitStatus::Unknown,
                        },
                    );
                } else {
                    self.instance_event(
                        &unit_name,
                        rec.generation,
                        Event::Exited {
                            status: ExitStatus::Unknown,
                        },
                    );
                }
            }
        }
    }

    /// An instance as recorded, in state Pending with no process; reserves its port.
    fn instance_from_record(&mut self, rec: &InstanceRecord, spec: &Arc<UnitSpec>) -> Instance {
        if let Some(p) = rec.port {
            self.ports.reserve(p);
        }
        let env = instance_env(&self.base_env, spec, rec.index, rec.port);
        Instance {
            index: rec.index,
            gen: rec.generation,
            deployment: rec.deployment,
            revision: Revision(rec.revision.clone()),
            spec: spec.clone(),
            state: InstanceState::Pending,
            history: History::default(),
            tag: rec.tag.clone(),
            port: rec.port,
            proc: None,
            spawned_at: None,
            started_wall: rec
                .started_ms
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
            restarts: rec.restarts,
            ready_since: None,
            health_failures: 0,
            last_check_error: None,
            stats: None,
            probe: None,
            attachment: None,
            stdout: PathBuf::from(&rec.stdout),
            stderr: PathBuf::from(&rec.stderr),
            env,
            addr: rec
                .port
                .filter(|_| spec.container.is_none())
                .map(health::localhost),
            container: None,
            starting: None,
            attempts: rec
                .tag
                .rsplit('.')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .map_or(0, |n| n + 1),
        }
    }

    fn revision_spec(&self, unit: &str, revision: &str) -> Option<Arc<UnitSpec>> {
        let revs = self.store.revisions(unit).ok()?;
        revs.into_iter()
            .find(|r| r.revision == revision)
            .map(|r| Arc::new(r.spec))
    }

    // --- messages ----------------------------------------------------------------------------

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Cmd(cmd) => self.command(cmd),
            Msg::UnitsChanged => {
                if !self.shutting_down {
                    self.apply_units("file");
                }
            }
            Msg::Exited {
                unit,
                gen,
                pid,
                status,
            } => self.on_exit(&unit, gen, pid, status),
            Msg::Probe {
                unit,
                gen,
                pid,
                result,
            } => self.on_probe(&unit, gen, pid, result),
            Msg::Listening { unit, gen, pid } => {
                if self
                    .instance(&unit, gen)
                    .is_some_and(|i| i.proc.map(|p| p.pid) == Some(pid))
                {
                    self.instance_event(&unit, gen, Event::Ready);
                }
            }
            Msg::Timer {
                unit,
                gen,
                kind,
                at,
            } => self.on_timer(&unit, gen, kind, at),
            Msg::Drained { unit, gen, outcome } => {
                let draining = self
                    .instance(&unit, gen)
                    .is_some_and(|i| matches!(i.state, InstanceState::Draining { .. }));
                if draining {
                    let index = self.instance(&unit, gen).map(|i| i.index);
                    let (kind, message) = match outcome {
                        DrainOutcome::Drained => (
                            "drained",
                            "out of rotation, no request in flight".to_string(),
                        ),
                        DrainOutcome::TimedOut { inflight } => (
                            "drain",
                            format!("drain timed out with {inflight} requests in flight"),
                        ),
                    };
                    self.emit(&unit, index, kind, message);
                    self.instance_event(&unit, gen, Event::Drained);
                }
            }
            Msg::Stats(samples) => self.on_stats(samples),
            Msg::Verified {
                unit,
                deployment,
                result,
            } => self.on_verified(&unit, deployment, result),
            Msg::Tick => self.tick_armed = None,
            Msg::ContainerStarted {
                unit,
                gen,
                n,
                result,
            } => self.on_container_started(&unit, gen, n, result),
            Msg::Note {
                unit,
                index,
                kind,
                message,
            } => self.emit(&unit, index, kind, message),
            Msg::CleanupDone => self.cleanups = self.cleanups.saturating_sub(1),
            Msg::WatchFired { unit, path } => {
                let live = self
                    .units
                    .get(&unit)
                    .is_some_and(|u| u.current.is_some() && !u.stopped && !u.removed);
                if live && !self.shutting_down {
                    self.emit(
                        &unit,
                        None,
                        "watch",
                        format!("{} changed; reloading", path.display()),
                    );
                    self.begin_deployment(&unit, "watch", None, false, None, None);
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Apply { profile, reply } => {
                if self.shutting_down {
                    let _ = reply.send(Err(shutting_down()));
                    return;
                }
                if let Some(p) = profile {
                    let p = p.filter(|s| !s.is_empty());
                    if let Err(e) = self.store.set_profile(p.as_deref()) {
                        tracing::error!(error = %e, "cannot store profile");
                    }
                    self.dirty = true;
                    self.profile = p;
                }
                let result = self.apply_units("apply");
                let _ = reply.send(Ok(result));
            }
            Command::Unit {
                unit,
                action,
                wait,
                caller,
                reply,
            } => {
                let result = self.unit_action(&unit, action, caller);
                self.answer(unit, action, wait, result, reply);
            }
            Command::Deploy {
                unit,
                request,
                wait,
                caller,
                reply,
            } => {
                let result = self.deploy_command(&unit, &request, caller);
                self.answer(unit, UnitAction::Deploy, wait, result, reply);
            }
            Command::Rollback {
                unit,
                to,
                wait,
                caller,
                reply,
            } => {
                let result = if self.shutting_down {
                    Err(shutting_down())
                } else {
                    self.rollback(&unit, to.as_deref(), caller)
                };
                self.answer(unit, UnitAction::Rollback, wait, result, reply);
            }
            Command::Shutdown {
                leave_running,
                done,
            } => {
                self.shutdown_done = Some(done);
                for w in self.waiters.drain(..) {
                    let _ = w.reply.send(Err(shutting_down()));
                }
                if leave_running {
                    tracing::info!("shutting down, leaving workloads running");
                } else {
                    tracing::info!("shutting down: stopping instances in reverse dependency order");
                    self.shutting_down = true;
                }
            }
            Command::Gc {
                dry_run,
                all,
                reply,
            } => self.gc(dry_run, all, reply),
        }
    }

    /// Replies now, or once the action completes (`wait`).
    fn answer(
        &mut self,
        unit: String,
        action: UnitAction,
        wait: bool,
        result: Result<u64, ApiError>,
        reply: oneshot::Sender<Result<ActionResult, ApiError>>,
    ) {
        match result {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(deployment) => {
                let w = Waiter {
                    unit,
                    action,
                    deployment,
                    reply,
                };
                if wait {
                    self.waiters.push(w);
                } else {
                    let result = self.action_result(&w, false);
                    let _ = w.reply.send(Ok(result));
                }
            }
        }
    }

    /// `chainctl deploy`: update the unit's overrides, reload its file, and deploy it (a new
    /// deployment even when nothing changed).
    fn deploy_command(
        &mut self,
        name: &str,
        req: &crate::api::wire::DeployRequest,
        caller: Option<u32>,
    ) -> Result<u64, ApiError> {
        if self.shutting_down {
            return Err(shutting_down());
        }
        let strategy = match req.strategy.as_deref() {
            None => None,
            Some("rolling") => Some(crate::unit::Strategy::Rolling),
            Some("blue-green") => Some(crate::unit::Strategy::BlueGreen),
            Some(other) => {
                return Err(ApiError {
                    code: ErrorCode::BadRequest,
                    message: format!("unknown strategy {other:?}; expected rolling or blue-green"),
                });
            }
        };
        let mut set = Vec::new();
        for kv in &req.set {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(ApiError {
                    code: ErrorCode::BadRequest,
                    message: format!("--set {kv:?}: expected key=value"),
                });
            };
            set.push((k.trim().to_string(), v.to_string()));
        }
        let Some(u) = self.units.get_mut(name) else {
            return Err(ApiError {
                code: ErrorCode::UnitNotFound,
                message: format!("no unit named {name}"),
            });
        };
        let fixed_port = u
            .current
            .as_ref()
            .is_some_and(|c| matches!(c.spec.port, PortSpec::Fixed { .. }));
        if strategy == Some(crate::unit::Strategy::BlueGreen) && fixed_port {
            return Err(ApiError {
                code: ErrorCode::BadRequest,
                message: format!(
                    "unit {name} has a fixed port: blue-green runs the new set next to the old one, which fixed ports do not allow"
                ),
            });
        }
        let saved = u.overrides.clone();
        if req.reset {
            u.overrides.clear();
        }
        u.overrides
            .retain(|(k, _)| !req.unset.contains(k) && !set.iter().any(|(s, _)| s == k));
        u.overrides.extend(set);
        u.failed_revision = None;
        u.stopped = false;
        let before = (
            u.current.as_ref().map(|c| c.revision.clone()),
            u.last_deployment,
        );
        let result = self.apply_units("deploy");
        if let Some(bad) = result.invalid.iter().find(|e| e.unit == name) {
            // Keep the overrides as they were: a bad --set must not stick.
            if let Some(u) = self.units.get_mut(name) {
                u.overrides = saved;
            }
            return Err(ApiError {
                code: ErrorCode::UnitInvalid,
                message: bad.errors.join("\n"),
            });
        }
        let u = self.units.get(name).ok_or_else(|| ApiError {
            code: ErrorCode::UnitNotFound,
            message: format!("no unit named {name}"),
        })?;
        let after = (
            u.current.as_ref().map(|c| c.revision.clone()),
            u.last_deployment,
        );
        if before == after || u.deploy.is_none() {
            self.begin_deployment(name, "deploy", caller, false, None, strategy);
        } else if let Some(u) = self.units.get_mut(name) {
            // The new revision has already begun deploying with the file's strategy.
            if let (Some(d), Some(cur)) = (u.deploy.as_mut(), u.current.as_ref()) {
                d.trigger = "deploy".into();
                d.caller = caller;
                if let Some(s) = strategy {
                    d.strategy = s;
                    d.verify = deploy::Deploy::verify_for(s, cur);
                }
            }
        }
        self.persist_unit(name);
        Ok(self.units[name].deployment)
    }

    fn unit_action(
        &mut self,
        name: &str,
        action: UnitAction,
        caller: Option<u32>,
    ) -> Result<u64, ApiError> {
        if self.shutting_down {
            return Err(shutting_down());
        }
        let Some(u) = self.units.get_mut(name) else {
            return Err(ApiError {
                code: ErrorCode::UnitNotFound,
                message: format!("no unit named {name}"),
            });
        };
        if u.current.is_none() || u.removed {
            let detail = u
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(ApiError {
                code: ErrorCode::UnitInvalid,
                message: format!(
                    "unit {name} has no valid definition to {}{detail}",
                    action.as_str()
                ),
            });
        }
        match action {
            UnitAction::Start => {
                u.stopped = false;
                let terminal: Vec<u64> = u
                    .instances
                    .iter()
                    .filter(|i| i.deployment == u.deployment && i.state.is_terminal())
                    .map(|i| i.gen)
                    .collect();
                for gen in terminal {
                    self.instance_event(
                        name,
                        gen,
                        Event::Stop {
                            then: AfterStop::Restart,
                        },
                    );
                }
            }
            UnitAction::Stop => u.stopped = true,
            UnitAction::Restart | UnitAction::Reload => {
                u.stopped = false;
                let immediate = action == UnitAction::Restart;
                self.begin_deployment(name, action.as_str(), caller, immediate, None, None);
            }
            UnitAction::Deploy | UnitAction::Rollback => {}
        }
        let deployment = self.units[name].deployment;
        self.persist_unit(name);
        self.emit(
            name,
            None,
            action.as_str(),
            format!("{} requested", action.as_str()),
        );
        Ok(deployment)
    }

    fn on_exit(&mut self, unit: &str, gen: u64, pid: i32, status: ExitStatus) {
        let driver = self.driver.clone();
        let Some(inst) = self.instance_mut(unit, gen) else {
            return;
        };
        let Some(proc) = inst.proc.filter(|p| p.pid == pid) else {
            return;
        };
        let container = inst.container.take();
        if container.is_none() {
            // No orphan left: whatever the main process leaves behind goes with it.
            background_kill(&driver, proc, &inst.tag);
        }
        if let Some(p) = inst.probe.take() {
            p.abort();
        }
        inst.proc = None;
        let index = inst.index;
        let text = match &container {
            Some(id) => format!("container {} {status}", short_id(id)),
            None => format!("pid {pid} {status}"),
        };
        let cleanup = container.map(|id| (id, inst.attachment.take()));
        self.unit_log_system(unit, index, &text);
        if let Some((id, attachment)) = cleanup {
            self.cleanup_container(id, attachment);
        }
        self.persist_instance(unit, gen);
        self.instance_event(unit, gen, Event::Exited { status });
    }

    fn on_probe(&mut self, unit: &str, gen: u64, pid: i32, result: Result<(), String>) {
        let now = Instant::now();
        let Some(inst) = self.instance_mut(unit, gen) else {
            return;
        };
        if inst.proc.map(|p| p.pid) != Some(pid) {
            return;
        }
        let Some(health) = inst.spec.health.clone() else {
            return;
        };
        let healthy_now = matches!(inst.state, InstanceState::Running { healthy: true, .. });
        match result {
            Ok(()) => {
                inst.health_failures = 0;
                inst.last_check_error = None;
                if !healthy_now {
                    self.instance_event(unit, gen, Event::Ready);
                }
            }
            Err(reason) => {
                let in_grace = inst
                    .spawned_at
                    .is_some_and(|t| now < t + health.start_period);
                inst.last_check_error = Some(reason.clone());
                match inst.state {
                    // Not ready yet: failures are reported once; `listen_timeout` bounds how
                    // long the instance may take to become ready.
                    InstanceState::Starting { .. } if !in_grace => {
                        inst.health_failures += 1;
                        if inst.health_failures == 1 {
                            let index = inst.index;
                            self.emit(
                                unit,
                                Some(index),
                                "health",
                                format!("not ready yet: {reason}"),
                            );
                        }
                    }
                    InstanceState::Running { .. } if !in_grace => {
                        inst.health_failures += 1;
                        let n = inst.health_failures;
                        let index = inst.index;
                        if n == 1 || n == health.retries || n == health.restart_after {
                            self.emit(
                                unit,
                                Some(index),
                                "health",
                                format!("health check failed ({n}): {reason}"),
                            );
                        }
                        if healthy_now && n >= health.retries {
                            self.instance_event(unit, gen, Event::Unhealthy);
                        }
                        if health.restart_after > 0 && n >= health.restart_after {
                            let reason = format!("health check failed {n} times: {reason}");
                            self.instance_event(
                                unit,
                                gen,
                                Event::Stop {
                                    then: AfterStop::Recover { reason },
                                },
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn on_timer(&mut self, unit: &str, gen: u64, kind: TimerKind, at: Instant) {
        let Some(inst) = self.instance(unit, gen) else {
            return;
        };
        match (kind, &inst.state) {
            (
                TimerKind::Kill,
                InstanceState::Stopping {
                    deadline,
                    killed: false,
                    ..
                },
            ) if *deadline == at => self.instance_event(unit, gen, Event::KillTimeout),
            (TimerKind::Backoff, InstanceState::Backoff { until, .. }) if *until == at => {
                self.instance_event(unit, gen, Event::BackoffElapsed)
            }
            (TimerKind::Listen, InstanceState::Starting { .. })
                if inst
                    .spawned_at
                    .is_some_and(|s| s + inst.spec.process.listen_timeout <= at) =>
            {
                let within = unit::format_duration(inst.spec.process.listen_timeout);
                let reason = match (&inst.spec.health, &inst.last_check_error) {
                    (Some(_), Some(last)) => {
                        format!("not ready within {within} (last check: {last})")
                    }
                    (Some(_), None) => format!("not ready within {within}"),
                    (None, _) => format!(
                        "did not accept connections on port {} within {within}",
                        inst.port.unwrap_or(0)
                    ),
                };
                self.instance_event(
                    unit,
                    gen,
                    Event::Stop {
                        then: AfterStop::Recover { reason },
                    },
                );
            }
            _ => {}
        }
    }

    fn on_stats(&mut self, samples: HashMap<i32, Sample>) {
        let mut over = Vec::new();
        for u in self.units.values_mut() {
            for inst in &mut u.instances {
                let Some(pid) = inst.proc.map(|p| p.pid) else {
                    continue;
                };
                inst.stats = samples.get(&pid).copied();
                let (Some(limit), Some(s)) = (inst.spec.process.max_memory, inst.stats) else {
                    continue;
                };
                let live = matches!(
                    inst.state,
                    InstanceState::Starting { .. } | InstanceState::Running { .. }
                );
                if live && s.rss_bytes > limit {
                    over.push((u.name.clone(), inst.gen, inst.index, s.rss_bytes, limit));
                }
            }
        }
        for (unit, gen, index, rss, limit) in over {
            let reason = format!(
                "memory {} exceeded max_memory {}",
                unit::format_size(rss),
                unit::format_size(limit)
            );
            self.emit(&unit, Some(index), "memory", reason.clone());
            self.instance_event(
                &unit,
                gen,
                Event::Stop {
                    then: AfterStop::Recover { reason },
                },
            );
        }
    }

    // --- unit files --------------------------------------------------------------------------

    /// Reads the units directory and makes it the desired state. A unit whose file is broken
    /// keeps its last good version; a unit whose file is gone is stopped.
    fn apply_units(&mut self, trigger: &str) -> ApplyResult {
        let ctx = ResolveCtx {
            profile: self.profile.clone(),
            cpus: self.cfg.cpus,
            overrides: self
                .units
                .iter()
                .filter(|(_, u)| !u.overrides.is_empty())
                .map(|(n, u)| (n.clone(), u.overrides.clone()))
                .collect(),
        };
        let report = unit::load_dir(&self.cfg.units_dir, &ctx);
        // Every unit with a file, good or bad: the others' files are gone.
        let present: std::collections::BTreeSet<String> = report
            .units
            .keys()
            .chain(report.errors.keys())
            .cloned()
            .collect();
        let mut result = ApplyResult {
            profile: self.profile.clone(),
            ..Default::default()
        };

        for (name, loaded) in report.units {
            let u = self
                .units
                .entry(name.clone())
                .or_insert_with(|| Unit::new(&name, loaded.file.path.clone()));
            let had_errors = !u.errors.is_empty();
            u.errors.clear();
            u.path = loaded.file.path.clone();
            let was_removed = std::mem::replace(&mut u.removed, false);
            let same = u
                .current
                .as_ref()
                .is_some_and(|c| c.revision == loaded.revision);
            if same && !was_removed {
                result.unchanged.push(name.clone());
                if had_errors {
                    self.emit(&name, None, "valid", "unit file is valid again".into());
                }
                continue;
            }
            // A revision that failed (or was rolled back) is not deployed again from the file.
            if u.failed_revision.as_ref() == Some(&loaded.revision)
                && u.current.is_some()
                && !was_removed
            {
                result.held.push(name.clone());
                continue;
            }
            u.failed_revision = None;
            let _ = self.store.put_revision(&RevisionRecord {
                v: 1,
                unit: name.clone(),
                revision: loaded.revision.0.clone(),
                first_seen_ms: unix_ms(SystemTime::now()),
                spec: loaded.spec.clone(),
            });
            let u = self.units.get_mut(&name).expect("inserted above");
            let new = Current {
                spec: Arc::new(loaded.spec.clone()),
                revision: loaded.revision.clone(),
            };
            let in_place = !was_removed
                && u.deploy.is_none()
                && u.current
                    .as_ref()
                    .is_some_and(|c| instance_key(&c.spec) == instance_key(&new.spec));
            let old = u.current.replace(new.clone());
            if let (Some(log), Some(c)) = (&u.log, &u.current) {
                log.set_rotation(rotation(&c.spec));
            }
            let watch_changed = old.as_ref().map(|o| &o.spec.watch) != Some(&loaded.spec.watch);
            if in_place {
                // Nothing that makes a process changed (routes, deploy, health, counts...):
                // the running instances take the new spec as they are.
                self.update_in_place(&name, &new);
            }
            self.persist_unit(&name);
            match &old {
                None => {
                    result.added.push(name.clone());
                    self.emit(
                        &name,
                        None,
                        "added",
                        format!("revision {}", loaded.revision),
                    );
                }
                Some(o) => {
                    result.updated.push(name.clone());
                    let how = if in_place { " (no restart needed)" } else { "" };
                    self.emit(
                        &name,
                        None,
                        "updated",
                        format!("revision {} → {}{how}", o.revision, loaded.revision),
                    );
                }
            }
            if !in_place {
                self.begin_deployment(&name, trigger, None, false, old.clone(), None);
            }
            if watch_changed || was_removed {
                self.setup_watch(&name);
            }
        }

        for (name, errors) in report.errors {
            if name.is_empty() {
                for e in &errors {
                    tracing::error!("{e}");
                }
                result.invalid.push(UnitErrors {
                    unit: String::new(),
                    errors: errors.iter().map(|e| e.to_string()).collect(),
                });
                continue;
            }
            let path = self.cfg.units_dir.join(format!("{name}.toml"));
            let u = self
                .units
                .entry(name.clone())
                .or_insert_with(|| Unit::new(&name, path));
            u.removed = false;
            let changed = u.errors != errors;
            u.errors = errors.clone();
            let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            if changed {
                let keeps = if u.current.is_some() {
                    "; the running version is kept"
                } else {
                    ""
                };
                let first = lines.first().cloned().unwrap_or_default();
                let more = if lines.len() > 1 {
                    format!(" (and {} more)", lines.len() - 1)
                } else {
                    String::new()
                };
                u.last_error = Some(first.clone());
                self.emit(&name, None, "invalid", format!("{first}{more}{keeps}"));
            }
            result.invalid.push(UnitErrors {
                unit: name.clone(),
                errors: lines,
            });
        }

        let listed: Vec<String> = self
            .units
            .iter()
            .filter(|(n, u)| !u.removed && !present.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in listed {
            if let Some(u) = self.units.get_mut(&name) {
                u.removed = true;
                u.errors.clear();
                u.watcher = None;
            }
            let _ = self.store.remove_unit(&name);
            self.dirty = true;
            result.removed.push(name.clone());
            self.emit(&name, None, "removed", "unit file removed; stopping".into());
        }
        result
    }

    fn setup_watch(&mut self, name: &str) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        u.watcher = None;
        let Some(spec) = u.current.as_ref().and_then(|c| c.spec.watch.clone()) else {
            return;
        };
        let tx = self.tx.clone();
        let unit = name.to_string();
        let opts = WatchOptions {
            paths: spec.paths.clone(),
            recursive: true,
            ignore: spec.ignore.clone(),
            debounce: spec.debounce,
        };
        match DirWatch::start(opts, move |path| {
            let _ = tx.send(Msg::WatchFired {
                unit: unit.clone(),
                path,
            });
        }) {
            Ok(w) => u.watcher = Some(w),
            Err(e) => {
                let msg = format!(
                    "cannot watch {}: {e}",
                    spec.paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.emit(name, None, "watch", msg);
            }
        }
    }

    // --- the plan ------------------------------------------------------------------------

    fn reconcile(&mut self) {
        for _ in 0..4 {
            let views: Vec<UnitView> = self.units.values().map(|u| u.view()).collect();
            let actions = plan::plan(&views, self.shutting_down, Instant::now());
            let mut waiting: BTreeMap<String, String> = BTreeMap::new();
            let mut acted = false;
            for action in actions {
                match action {
                    Action::Start { unit, index } => {
                        acted = true;
                        self.start_instance(&unit, index);
                    }
                    Action::Stop { unit, generation } => {
                        acted = true;
                        self.instance_event(
                            &unit,
                            generation,
                            Event::Stop {
                                then: AfterStop::Remove,
                            },
                        );
                    }
                    Action::Forget { unit, generation } => {
                        acted = true;
                        self.remove_instance(&unit, generation);
                    }
                    Action::Wait { unit, reason } => {
                        waiting.insert(unit, reason);
                    }
                    Action::Verify { unit } => {
                        acted = true;
                        self.start_verify(&unit);
                    }
                    Action::Switch { unit } => {
                        acted = true;
                        self.switch(&unit);
                    }
                    Action::Complete { unit } => {
                        acted = true;
                        self.complete(&unit);
                    }
                    Action::Abort { unit, cause } => {
                        acted = true;
                        self.abort(&unit, &cause);
                    }
                }
            }
            let names: Vec<String> = self.units.keys().cloned().collect();
            for name in names {
                let reason = waiting.remove(&name);
                let u = self.units.get_mut(&name).expect("listed above");
                if u.waiting != reason {
                    u.waiting = reason.clone();
                    if let Some(r) = reason {
                        self.emit(&name, None, "waiting", r);
                    }
                }
            }
            if !acted {
                break;
            }
        }
        // Units that are gone and have nothing left are forgotten.
        self.units.retain(|_, u| {
            !u.instances.is_empty() || (!u.removed && (u.current.is_some() || !u.errors.is_empty()))
        });
    }

    /// A new spec that makes the same processes: running instances take it as they are, and
    /// restart their health checks when those changed.
    fn update_in_place(&mut self, name: &str, new: &Current) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        let deployment = u.deployment;
        if let Some(stable) = u.stable.as_mut().filter(|s| s.deployment == deployment) {
            stable.current = new.clone();
        }
        let mut reprobe = Vec::new();
        for inst in u
            .instances
            .iter_mut()
            .filter(|i| i.deployment == deployment)
        {
            if inst.spec.health != new.spec.health && inst.proc.is_some() {
                reprobe.push(inst.gen);
            }
            inst.spec = new.spec.clone();
            inst.revision = new.revision.clone();
        }
        for gen in reprobe {
            self.start_probe(name, gen);
        }
        let gens: Vec<u64> = self.units[name].instances.iter().map(|i| i.gen).collect();
        for gen in gens {
            self.persist_instance(name, gen);
        }
    }

    fn start_instance(&mut self, unit: &str, index: u32) {
        let Some(u) = self.units.get_mut(unit) else {
            return;
        };
        let Some(cur) = u.current.clone() else { return };
        let gen = match self.store.next_generation() {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot allocate a generation");
                return;
            }
        };
        let dir = self.cfg.run_dir.join(unit);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!(error = %e, dir = %dir.display(), "cannot create run dir");
        }
        let port = self.ports.allocate(&cur.spec.port, index);
        let (port, port_error) = match port {
            Ok(p) => (p, None),
            Err(e) => (None, Some(e)),
        };
        let inst = Instance {
            index,
            gen,
            deployment: u.deployment,
            revision: cur.revision.clone(),
            spec: cur.spec.clone(),
            state: InstanceState::Pending,
            history: History::default(),
            tag: incarnation_tag(&self.store_id, unit, index, gen, 0),
            port,
            proc: None,
            spawned_at: None,
            started_wall: None,
            restarts: 0,
            ready_since: None,
            health_failures: 0,
            last_check_error: None,
            stats: None,
            probe: None,
            attachment: None,
            stdout: dir.join(format!("{gen}.0.out")),
            stderr: dir.join(format!("{gen}.0.err")),
            env: instance_env(&self.base_env, &cur.spec, index, port),
            addr: port
                .filter(|_| cur.spec.container.is_none())
                .map(health::localhost),
            container: None,
            starting: None,
            attempts: 0,
        };
        u.instances.push(inst);
        self.persist_instance(unit, gen);
        match port_error {
            Some(error) => self.instance_event(
                unit,
                gen,
                Event::SpawnFailed {
                    error,
                    permanent: true,
                },
            ),
            None => self.do_effect(unit, gen, Effect::Spawn),
        }
    }

    // --- state machine and effects -----------------------------------------------------------

    fn instance_event(&mut self, unit: &str, gen: u64, event: Event) {
        let jitter = self.next_jitter();
        let now = Instant::now();
        let has_proxy = self.proxy.is_some();
        let Some(inst) = self.instance_mut(unit, gen) else {
            return;
        };
        let drain_timeout =
            (has_proxy && !inst.spec.routes.is_empty()).then_some(inst.spec.deploy.drain_timeout);
        let ctx = Ctx {
            drain_timeout,
            restart: &inst.spec.restart,
            kill_timeout: inst.spec.process.kill_timeout,
            now,
            jitter,
            spawned_at: inst.spawned_at,
        };
        match instance::step(&inst.state, &inst.history, &event, &ctx) {
            Ok(step) => {
                let was_ready = matches!(inst.state, InstanceState::Running { healthy: true, .. });
                inst.state = step.state;
                inst.history = step.history;
                let is_ready = matches!(inst.state, InstanceState::Running { healthy: true, .. });
                if is_ready && !was_ready {
                    inst.ready_since = Some(now);
                } else if !is_ready {
                    inst.ready_since = None;
                }
                if was_ready != is_ready || matches!(event, Event::Stop { .. }) {
                    self.persist_instance(unit, gen);
                }
                for effect in step.effects {
                    self.do_effect(unit, gen, effect);
                }
            }
            Err(illegal) => {
                tracing::error!(
                    unit,
                    gen,
                    state = illegal.state,
                    event = illegal.event,
                    "illegal instance transition ignored"
                );
            }
        }
    }

    fn do_effect(&mut self, unit: &str, gen: u64, effect: Effect) {
        match effect {
            Effect::Spawn => self.spawn(unit, gen),
            Effect::Signal => {
                let driver = self.driver.clone();
                let containers = self.containers.clone();
                let Some(inst) = self.instance_mut(unit, gen) else {
                    return;
                };
                if let Some(p) = inst.probe.take() {
                    p.abort();
                }
                if let Some(id) = inst.container.clone() {
                    let sig = inst.spec.process.stop_signal.clone();
                    let unit = unit.to_string();
                    tokio::spawn(async move {
                        if let Err(e) = containers.signal(&id, &sig).await {
                            tracing::warn!(unit, gen, error = %e, "cannot signal container");
                        }
                    });
                    return;
                }
                let sig = driver::signal_from_name(&inst.spec.process.stop_signal)
                    .unwrap_or(libc::SIGTERM);
                if let Some(proc) = inst.proc {
                    // Signalling scans /proc for tagged descendants: keep it off this task.
                    let (tag, unit) = (inst.tag.clone(), unit.to_string());
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = driver.signal(proc, &tag, sig) {
                            tracing::warn!(unit, gen, error = %e, "cannot signal instance");
                        }
                    });
                }
            }
            Effect::Kill => {
                let Some(inst) = self.instance(unit, gen) else {
                    return;
                };
                if let Some(id) = inst.container.clone() {
                    let containers = self.containers.clone();
                    let unit = unit.to_string();
                    tokio::spawn(async move {
                        if let Err(e) = containers.signal(&id, "SIGKILL").await {
                            tracing::warn!(unit, gen, error = %e, "cannot kill container");
                        }
                    });
                    return;
                }
                if let Some(proc) = inst.proc {
                    background_kill(&self.driver, proc, &inst.tag);
                }
            }
            Effect::ArmKillTimer { at } => self.arm(unit, gen, TimerKind::Kill, at),
            Effect::Drain { deadline } => {
                let Some(proxy) = self.proxy.clone() else {
                    self.instance_event(unit, gen, Event::Drained);
                    return;
                };
                if let Some(p) = self.instance_mut(unit, gen).and_then(|i| i.probe.take()) {
                    p.abort();
                }
                let tx = self.tx.clone();
                let unit = unit.to_string();
                tokio::spawn(async move {
                    let timeout = deadline.saturating_duration_since(Instant::now());
                    let outcome = proxy.drain(&unit, gen, timeout).await;
                    let _ = tx.send(Msg::Drained { unit, gen, outcome });
                });
            }
            Effect::ArmBackoff { at } => self.arm(unit, gen, TimerKind::Backoff, at),
            Effect::Remove => self.remove_instance(unit, gen),
            Effect::Emit { kind, message } => {
                let Some(inst) = self.instance(unit, gen) else {
                    return;
                };
                let index = inst.index;
                if matches!(kind, "failed" | "backoff" | "exited") {
                    if let Some(u) = self.units.get_mut(unit) {
                        if kind != "exited" || message != "exit code 0" {
                            u.last_error = Some(format!("instance {index}: {message}"));
                        }
                    }
                }
                self.emit(unit, Some(index), kind, message);
            }
        }
    }

    fn arm(&self, unit: &str, gen: u64, kind: TimerKind, at: Instant) {
        let tx = self.tx.clone();
        let unit = unit.to_string();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _ = tx.send(Msg::Timer {
                unit,
                gen,
                kind,
                at,
            });
        });
    }

    fn spawn(&mut self, unit: &str, gen: u64) {
        let unit_dir = self
            .units
            .get(unit)
            .and_then(|u| u.path.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let logs_dir = self.cfg.logs_dir.clone();
        let Some(inst) = self.instance(unit, gen) else {
            return;
        };
        if inst.spec.container.is_some() {
            self.spawn_container(unit, gen);
            return;
        }
        if !self.recheck_port(unit, gen) {
            return;
        }
        let Some(inst) = self.instance(unit, gen) else {
            return;
        };
        let spec = inst.spec.clone();
        let user = match resolve_user(&spec) {
            Ok(u) => u,
            Err(error) => {
                self.instance_event(
                    unit,
                    gen,
                    Event::SpawnFailed {
                        error,
                        permanent: true,
                    },
                );
                return;
            }
        };
        let program = resolve_program(&spec.process.command, &unit_dir);
        // Every incarnation gets fresh FIFOs and a fresh tag: a reader of the previous one must
        // never see the next process as a writer, and the sweep of the previous one's leftovers
        // (running in the background) must never find the next process.
        let n = inst.restarts + u32::from(inst.spawned_at.is_some());
        let tag = incarnation_tag(&self.store_id, unit, inst.index, gen, n);
        let (stdout, stderr) = {
            let dir = self.cfg.run_dir.join(unit);
            (
                dir.join(format!("{gen}.{n}.out")),
                dir.join(format!("{gen}.{n}.err")),
            )
        };
        let _ = std::fs::remove_file(&inst.stdout);
        let _ = std::fs::remove_file(&inst.stderr);
        let pspec = ProcessSpec {
            program: program.clone(),
            args: spec.process.args.clone(),
            cwd: spec.process.cwd.clone(),
            env: inst.env.clone(),
            user,
            stdout,
            stderr,
            tag,
        };
        let result = self.driver.start(&pspec);
        match result {
            Ok((id, watch)) => {
                let label = self
                    .instance(unit, gen)
                    .map(|i| i.index.to_string())
                    .unwrap_or_default();
                let attachment = self
                    .units
                    .get_mut(unit)
                    .and_then(|u| u.log(&logs_dir))
                    .and_then(
                        |log| match log.attach(&label, &pspec.stdout, &pspec.stderr) {
                            Ok(a) => Some(a),
                            Err(e) => {
                                tracing::warn!(unit, error = %e, "cannot attach logs");
                                None
                            }
                        },
                    );
                let Some(inst) = self.instance_mut(unit, gen) else {
                    return;
                };
                inst.tag = pspec.tag.clone();
                inst.stdout = pspec.stdout.clone();
                inst.stderr = pspec.stderr.clone();
                spawn_exit_watch(&self.tx, unit, gen, id.pid, watch);
                self.spawned(unit, gen, id, attachment, format!("pid {}", id.pid));
            }
            Err(e) => {
                let permanent = e.retry() == Retry::Permanent;
                self.instance_event(
                    unit,
                    gen,
                    Event::SpawnFailed {
                        error: error_chain(&e),
                        permanent,
                    },
                );
            }
        }
    }

    /// Before a process instance is spawned (again): if another process took its port while it
    /// was down, a pool or range port moves to a free one (PORT, readiness address, record); a
    /// fixed port, or no free port left, fails this spawn as a crash would (backoff, then a
    /// retry). False when the spawn must not go ahead.
    fn recheck_port(&mut self, unit: &str, gen: u64) -> bool {
        let Some(inst) = self.instance(unit, gen) else {
            return false;
        };
        let Some(old) = inst.port else { return true };
        let (index, spec) = (inst.index, inst.spec.clone());
        match self.ports.recheck(&spec.port, old) {
            Ok(None) => true,
            Ok(Some(new)) => {
                let env = instance_env(&self.base_env, &spec, index, Some(new));
                let Some(inst) = self.instance_mut(unit, gen) else {
                    return false;
                };
                inst.env = env;
                inst.port = Some(new);
                inst.addr = Some(health::localhost(new));
                self.persist_instance(unit, gen);
                let message = format!(
                    "port {old} is taken by another process; the instance moves to port {new}"
                );
                self.emit(unit, Some(index), "port", message);
                true
            }
            Err(error) => {
                self.emit(unit, Some(index), "port", error.clone());
                let permanent = false;
                self.instance_event(unit, gen, Event::SpawnFailed { error, permanent });
                false
            }
        }
    }

    /// Bookkeeping once an instance's process or container runs: record it, report it, and
    /// start watching its readiness.
    fn spawned(
        &mut self,
        unit: &str,
        gen: u64,
        id: ProcessId,
        attachment: Option<Attachment>,
        what: String,
    ) {
        let Some(inst) = self.instance_mut(unit, gen) else {
            return;
        };
        if inst.spawned_at.is_some() {
            inst.restarts += 1;
        }
        inst.proc = Some(id);
        inst.spawned_at = Some(Instant::now());
        inst.started_wall = Some(SystemTime::now());
        inst.health_failures = 0;
        inst.attachment = attachment;
        let index = inst.index;
        let port = inst.port;
        self.persist_instance(unit, gen);
        let where_ = port.map(|p| format!(" on port {p}")).unwrap_or_default();
        self.emit(unit, Some(index), "started", format!("{what}{where_}"));
        self.instance_event(unit, gen, Event::Spawned);
        self.start_probe(unit, gen);
    }

    /// Readiness and health for a freshly spawned (or adopted) instance.
    fn start_probe(&mut self, unit: &str, gen: u64) {
        let tx = self.tx.clone();
        let driver = self.driver.clone();
        let Some(inst) = self.instance(unit, gen) else {
            return;
        };
        let Some(pid) = inst.proc.map(|p| p.pid) else {
            return;
        };
        let unit_s = unit.to_string();
        let spec = inst.spec.clone();
        // An address that refuses at once: an http/tcp check without a port fails clearly.
        let no_addr = health::localhost(0);
        let task = match (&spec.health, inst.addr) {
            (Some(h), addr) => {
                let ready_deadline = Instant::now() + spec.process.listen_timeout;
                self.arm(unit, gen, TimerKind::Listen, ready_deadline);
                let probe = match (&h.check, &inst.container) {
                    (HealthCheck::Http { path }, _) => Probe::Http {
                        addr: addr.unwrap_or(no_addr),
                        path: path.clone(),
                    },
                    (HealthCheck::Tcp, _) => Probe::Tcp {
                        addr: addr.unwrap_or(no_addr),
                    },
                    (HealthCheck::Exec { command }, Some(id)) => Probe::ContainerExec {
                        driver: self.containers.clone(),
                        id: id.clone(),
                        command: command.clone(),
                    },
                    (HealthCheck::Exec { command }, None) => Probe::Exec(CommandSpec {
                        program: command.first().cloned().unwrap_or_default(),
                        args: command.iter().skip(1).cloned().collect(),
                        cwd: spec.process.cwd.clone(),
                        env: inst.env.clone(),
                        user: resolve_user(&spec).ok().flatten(),
                    }),
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let mut passed = false;
                    loop {
                        let result = health::check(&probe, h.timeout, &driver).await;
                        passed |= result.is_ok();
                        if tx
                            .send(Msg::Probe {
                                unit: unit_s.clone(),
                                gen,
                                pid,
                                result,
                            })
                            .is_err()
                        {
                            return;
                        }
                        tokio::time::sleep(if passed { h.interval } else { h.start_interval })
                            .await;
                    }
                })
            }
            (None, Some(addr)) => {
                let listen_deadline = Instant::now() + spec.process.listen_timeout;
                self.arm(unit, gen, TimerKind::Listen, listen_deadline);
                tokio::spawn(async move {
                    let mut delay = Duration::from_millis(10);
                    loop {
                        if health::port_accepts(addr).await {
                            let _ = tx.send(Msg::Listening {
                                unit: unit_s,
                                gen,
                                pid,
                            });
                            return;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(200));
                    }
                })
            }
            (None, None) => {
                self.instance_event(unit, gen, Event::Ready);
                return;
            }
        };
        if let Some(inst) = self.instance_mut(unit, gen) {
            if let Some(old) = inst.probe.replace(task.abort_handle()) {
                old.abort();
            }
        }
    }

    fn remove_instance(&mut self, unit: &str, gen: u64) {
        let Some(u) = self.units.get_mut(unit) else {
            return;
        };
        let Some(pos) = u.instances.iter().position(|i| i.gen == gen) else {
            return;
        };
        let inst = u.instances.remove(pos);
        if let Some(p) = inst.probe {
            p.abort();
        }
        if let Some(port) = inst.port {
            self.ports.release(port);
        }
        // The log reader drains the FIFOs to EOF by itself; the paths can go now.
        let _ = std::fs::remove_file(&inst.stdout);
        let _ = std::fs::remove_file(&inst.stderr);
        if let Err(e) = self.store.remove_instance(unit, inst.index, gen) {
            tracing::error!(unit, gen, error = %e, "cannot remove instance record");
        }
        self.dirty = true;
    }

    // --- persistence, events, snapshots ----------------------------------------------------

    fn persist_unit(&mut self, name: &str) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        let Some(cur) = &u.current else { return };
        let rec = UnitRecord {
            v: 1,
            name: name.to_string(),
            path: u.path.display().to_string(),
            revision: cur.revision.0.clone(),
            spec: (*cur.spec).clone(),
            deployment: u.deployment,
            stopped: u.stopped,
            last_deployment: u.last_deployment,
            stable: u
                .stable
                .as_ref()
                .map(|st| (st.deployment, st.current.revision.0.clone())),
            deploy: u.deploy.as_ref().map(|d| d.to_state()),
            kept: u
                .kept
                .as_ref()
                .map(|k| (k.deployment, k.current.revision.0.clone(), k.until_ms)),
            failed_revision: u.failed_revision.as_ref().map(|r| r.0.clone()),
            overrides: u.overrides.clone(),
            immediate: u.immediate,
        };
        if let Err(e) = self.store.put_unit(&rec) {
            tracing::error!(unit = name, error = %e, "cannot store unit");
        }
        self.dirty = true;
    }

    fn persist_instance(&mut self, unit: &str, gen: u64) {
        let Some(inst) = self.instance(unit, gen) else {
            return;
        };
        let rec = InstanceRecord {
            v: 1,
            unit: unit.to_string(),
            index: inst.index,
            generation: gen,
            deployment: inst.deployment,
            revision: inst.revision.0.clone(),
            tag: inst.tag.clone(),
            pid: inst.proc.map(|p| p.pid),
            start_time: inst.proc.map(|p| p.start_time),
            port: inst.port,
            stdout: inst.stdout.display().to_string(),
            stderr: inst.stderr.display().to_string(),
            started_ms: inst.started_wall.map(unix_ms),
            ready: matches!(inst.state, InstanceState::Running { healthy: true, .. }),
            restarts: inst.restarts,
            stopping: matches!(
                inst.state,
                InstanceState::Stopping {
                    then: AfterStop::Remove,
                    ..
                } | InstanceState::Draining {
                    then: AfterStop::Remove,
                    ..
                }
            ),
            container: inst.container.clone(),
        };
        if let Err(e) = self.store.put_instance(&rec) {
            tracing::error!(unit, gen, error = %e, "cannot store instance");
        }
        self.dirty = true;
    }

    fn emit(&mut self, unit: &str, instance: Option<u32>, kind: &str, message: String) {
        tracing::info!(unit, instance, kind, "{message}");
        let mut ev = EventRecord {
            v: 1,
            seq: 0,
            ts_ms: unix_ms(SystemTime::now()),
            unit: unit.to_string(),
            instance,
            kind: kind.to_string(),
            message,
        };
        if let Err(e) = self.store.append_event(&mut ev) {
            tracing::error!(error = %e, "cannot store event");
        }
        self.dirty = true;
        let _ = self.events.send(ev);
    }

    fn unit_log_system(&mut self, unit: &str, index: u32, text: &str) {
        let logs_dir = self.cfg.logs_dir.clone();
        if let Some(log) = self.units.get_mut(unit).and_then(|u| u.log(&logs_dir)) {
            log.system(&index.to_string(), text);
        }
    }

    /// End of a turn: plan, answer waiters, flush, publish.
    fn turn_end(&mut self) {
        // A kept set whose time is up is no longer kept: plan stops it as any older set.
        let now = Instant::now();
        let expired: Vec<String> = self
            .units
            .iter()
            .filter(|(_, u)| u.kept.as_ref().is_some_and(|k| k.until <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            if let Some(u) = self.units.get_mut(&name) {
                u.kept = None;
            }
            self.persist_unit(&name);
        }
        self.reconcile();
        self.arm_tick();
        self.check_waiters();
        if self.dirty {
            if let Err(e) = self.store.flush() {
                tracing::error!(error = %e, "store flush failed");
            }
            self.dirty = false;
        }
        self.publish();
    }

    /// Arms one timer for the earliest instant at which `plan` could decide differently with
    /// nothing else happening: a new instance turning healthy after min_healthy_time, a deploy
    /// deadline, a kept set's expiry.
    fn arm_tick(&mut self) {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for u in self.units.values() {
            let Some(cur) = &u.current else { continue };
            if let Some(d) = u.deploy.as_ref().filter(|d| !d.halted) {
                consider(d.started + cur.spec.deploy.healthy_deadline);
                let min = cur.spec.deploy.min_healthy_time;
                for i in u.instances.iter().filter(|i| i.deployment == u.deployment) {
                    if let Some(since) = i.ready_since {
                        consider(since + min);
                    }
                }
            }
            if let Some(k) = &u.kept {
                consider(k.until);
            }
        }
        let now = Instant::now();
        let Some(at) = next.filter(|t| *t > now) else {
            return;
        };
        if self
            .tick_armed
            .is_some_and(|armed| armed <= at && armed > now)
        {
            return;
        }
        self.tick_armed = Some(at);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _ = tx.send(Msg::Tick);
        });
    }

    fn check_waiters(&mut self) {
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            match self.waiter_outcome(&w) {
                None => self.waiters.push(w),
                Some(Ok(())) => {
                    let result = self.action_result(&w, true);
                    let _ = w.reply.send(Ok(result));
                }
                Some(Err(e)) => {
                    let _ = w.reply.send(Err(e));
                }
            }
        }
    }

    /// None while in progress.
    fn waiter_outcome(&self, w: &Waiter) -> Option<Result<(), ApiError>> {
        let failed = |message: String| {
            Some(Err(ApiError {
                code: ErrorCode::OperationFailed,
                message,
            }))
        };
        let Some(u) = self.units.get(&w.unit) else {
            return failed(format!("unit {} was removed", w.unit));
        };
        if w.action == UnitAction::Stop {
            return u
                .instances
                .iter()
                .all(|i| !i.state.has_process())
                .then_some(Ok(()));
        }
        if u.stopped || u.removed {
            return failed(format!("unit {} was stopped", w.unit));
        }
        if w.action != UnitAction::Start {
            // Deployments (reload, restart, deploy, rollback) end with an outcome.
            if let Some(o) = u.outcome.as_ref().filter(|o| o.deployment == w.deployment) {
                return Some(o.result.clone().map_err(|message| ApiError {
                    code: ErrorCode::OperationFailed,
                    message,
                }));
            }
            let still_running = u
                .deploy
                .as_ref()
                .is_some_and(|d| d.deployment == w.deployment && !d.halted);
            if !still_running && u.last_deployment > w.deployment {
                return failed(format!(
                    "unit {} was changed again before the {} completed",
                    w.unit,
                    w.action.as_str()
                ));
            }
            return None;
        }
        let count = u.current.as_ref().map(|c| c.spec.instances).unwrap_or(0);
        let current = |i: &&Instance| i.deployment == u.deployment && i.index < count;
        if let Some(bad) = u.instances.iter().filter(current).find(|i| {
            matches!(
                i.state,
                InstanceState::Failed { .. } | InstanceState::Exited { .. }
            ) && !matches!(
                i.state,
                InstanceState::Exited {
                    status: ExitStatus::Code(0)
                }
            )
        }) {
            let why = match &bad.state {
                InstanceState::Failed { reason } => reason.clone(),
                InstanceState::Exited { status } => status.to_string(),
                _ => String::new(),
            };
            return failed(format!(
                "instance {} of {} failed: {why}",
                bad.index, w.unit
            ));
        }
        let done_index = |index: u32| {
            u.instances.iter().filter(current).any(|i| {
                i.index == index
                    && matches!(
                        i.state,
                        InstanceState::Running { healthy: true, .. }
                            | InstanceState::Exited {
                                status: ExitStatus::Code(0)
                            }
                    )
            })
        };
        (0..count).all(done_index).then_some(Ok(()))
    }

    fn action_result(&self, w: &Waiter, completed: bool) -> ActionResult {
        let now = SystemTime::now();
        let instances = self
            .units
            .get(&w.unit)
            .map(|u| {
                u.instances
                    .iter()
                    .map(|i| i.snap(&u.name).to_wire(now))
                    .collect()
            })
            .unwrap_or_default();
        ActionResult {
            unit: w.unit.clone(),
            action: w.action,
            deployment: w.deployment,
            completed,
            instances,
        }
    }

    fn publish(&self) {
        let mut snap = Snapshot {
            units: BTreeMap::new(),
            profile: self.profile.clone(),
        };
        for (name, u) in &self.units {
            let routing = Self::routing(u);
            let instances: Vec<InstSnap> = u
                .instances
                .iter()
                .map(|i| {
                    let mut s = i.snap(name);
                    s.info.routed = s.info.ready && routing.routes(i.deployment);
                    s
                })
                .collect();
            let desired = u.current.as_ref().map(|c| c.spec.instances).unwrap_or(0);
            let ready = instances.iter().filter(|i| i.info.ready).count() as u32;
            let state = if u.removed {
                "removed"
            } else if u.current.is_none() {
                "invalid"
            } else if u.stopped {
                "stopped"
            } else {
                "active"
            };
            snap.units.insert(
                name.clone(),
                UnitSnap {
                    summary: UnitSummary {
                        name: name.clone(),
                        state: state.to_string(),
                        file: u.path.display().to_string(),
                        revision: u.current.as_ref().map(|c| c.revision.0.clone()),
                        instances_desired: if u.stopped || u.removed { 0 } else { desired },
                        instances_ready: ready,
                        errors: u.errors.iter().map(|e| e.to_string()).collect(),
                        waiting: u.waiting.clone(),
                    },
                    spec: u.current.as_ref().map(|c| c.spec.clone()),
                    deployment: u.deployment,
                    instances,
                    last_error: u
                        .errors
                        .first()
                        .map(|e| e.to_string())
                        .or_else(|| u.last_error.clone()),
                },
            );
        }
        self.snapshot.send_replace(Arc::new(snap));
    }

    fn spawn_stats_task(&self) {
        let tx = self.tx.clone();
        let mut snapshots = self.snapshot.subscribe();
        tokio::spawn(async move {
            let mut sampler = Some(host::Sampler::new());
            // max_memory is checked at least every 2 s (the sample is the cost: see docs/benchmarks.md).
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let pids = snapshots.borrow_and_update().pids();
                if pids.is_empty() {
                    continue;
                }
                let Some(mut s) = sampler.take() else { return };
                let Ok((s, samples)) = tokio::task::spawn_blocking(move || {
                    let samples = s.sample(&pids);
                    (s, samples)
                })
                .await
                else {
                    return;
                };
                sampler = Some(s);
                if tx.send(Msg::Stats(samples)).is_err() {
                    return;
                }
            }
        });
    }

    // --- helpers -------------------------------------------------------------------------

    fn instance(&self, unit: &str, gen: u64) -> Option<&Instance> {
        self.units
            .get(unit)?
            .instances
            .iter()
            .find(|i| i.gen == gen)
    }

    fn instance_mut(&mut self, unit: &str, gen: u64) -> Option<&mut Instance> {
        self.units
            .get_mut(unit)?
            .instances
            .iter_mut()
            .find(|i| i.gen == gen)
    }

    /// xorshift64*: jitter for backoff; seeded from the OS at start.
    fn next_jitter(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Unit {
    fn new(name: &str, path: PathBuf) -> Unit {
        Unit {
            name: name.to_string(),
            path,
            current: None,
            errors: Vec::new(),
            removed: false,
            stopped: false,
            deployment: 0,
            last_deployment: 0,
            immediate: false,
            stable: None,
            deploy: None,
            kept: None,
            failed_revision: None,
            outcome: None,
            overrides: Vec::new(),
            instances: Vec::new(),
            log: None,
            waiting: None,
            watcher: None,
            last_error: None,
        }
    }

    /// The unit's log writer, opened on first use.
    fn log(&mut self, logs_dir: &Path) -> Option<&UnitLog> {
        if self.log.is_none() {
            let rot = self
                .current
                .as_ref()
                .map(|c| rotation(&c.spec))
                .unwrap_or(Rotation {
                    max_size: 10 << 20,
                    max_files: 5,
                });
            match UnitLog::open(logs_dir, &self.name, rot) {
                Ok(l) => self.log = Some(l),
                Err(e) => tracing::error!(unit = %self.name, error = %e, "cannot open log file"),
            }
        }
        self.log.as_ref()
    }

    /// The strategy of the deployment under way (`chainctl deploy --strategy` may differ
    /// from the file's), else the file's.
    fn strategy(&self) -> crate::unit::Strategy {
        match (&self.deploy, &self.current) {
            (Some(d), _) if d.deployment == self.deployment => d.strategy,
            (_, Some(c)) => c.spec.deploy.strategy,
            (_, None) => crate::unit::Strategy::Rolling,
        }
    }

    fn view(&self) -> UnitView {
        let want = self
            .current
            .as_ref()
            .filter(|_| !self.stopped && !self.removed)
            .map(|c| {
                let d = &c.spec.deploy;
                let rollout = match (self.immediate, self.strategy()) {
                    (true, _) => Rollout::Immediate,
                    (false, crate::unit::Strategy::BlueGreen) => Rollout::BlueGreen,
                    (false, crate::unit::Strategy::Rolling) => Rollout::Rolling {
                        max_surge: d.max_surge,
                        max_unavailable: d.max_unavailable,
                    },
                };
                Want {
                    count: c.spec.instances,
                    deployment: self.deployment,
                    rollout,
                    surge: !matches!(c.spec.port, PortSpec::Fixed { .. }),
                    depends_on: c.spec.depends_on.clone(),
                    tracked: self
                        .deploy
                        .as_ref()
                        .filter(|dep| dep.deployment == self.deployment)
                        .map(|dep| Tracked {
                            started: dep.started,
                            healthy_deadline: d.healthy_deadline,
                            min_healthy_time: d.min_healthy_time,
                            verify: dep.verify,
                            switched: dep.switched,
                            halted: dep.halted,
                        }),
                    kept: self.kept.as_ref().map(|k| (k.deployment, k.until)),
                }
            });
        UnitView {
            name: self.name.clone(),
            want,
            instances: self
                .instances
                .iter()
                .map(|i| InstView {
                    index: i.index,
                    generation: i.gen,
                    deployment: i.deployment,
                    phase: i.phase(),
                    ready_since: i.ready_since,
                })
                .collect(),
        }
    }
}

impl Instance {
    fn phase(&self) -> Phase {
        match &self.state {
            InstanceState::Pending => Phase::Pending,
            InstanceState::Starting { .. } => Phase::Starting,
            InstanceState::Running { healthy: true, .. } => Phase::Ready,
            InstanceState::Running { healthy: false, .. } => Phase::Unready,
            InstanceState::Backoff { .. } => Phase::Backoff,
            InstanceState::Draining {
                then: AfterStop::Remove,
                ..
            } => Phase::Draining,
            InstanceState::Stopping {
                then: AfterStop::Remove,
                ..
            } => Phase::Stopping,
            InstanceState::Stopping { .. } | InstanceState::Draining { .. } => Phase::Restarting,
            InstanceState::Exited { status } => Phase::Exited {
                success: status.success(),
            },
            InstanceState::Failed { .. } => Phase::Failed,
        }
    }

    fn snap(&self, unit: &str) -> InstSnap {
        let detail = match &self.state {
            InstanceState::Failed { reason } => Some(reason.clone()),
            InstanceState::Exited { status } => Some(status.to_string()),
            InstanceState::Backoff { until, attempt } => Some(format!(
                "restart in {} (attempt {})",
                unit::format_duration(Duration::from_millis(
                    until.saturating_duration_since(Instant::now()).as_millis() as u64
                )),
                attempt + 1
            )),
            InstanceState::Stopping { killed: true, .. } => Some("killed".into()),
            _ => None,
        };
        InstSnap {
            info: InstanceInfo {
                unit: unit.to_string(),
                instance: self.index,
                generation: self.gen,
                state: self.state.name().to_string(),
                detail,
                ready: matches!(self.state, InstanceState::Running { healthy: true, .. }),
                routed: false,
                deployment: self.deployment,
                pid: self.proc.map(|p| p.pid),
                port: self.port,
                container: self.container.as_deref().map(|id| short_id(id).to_string()),
                address: self.addr.map(|a| a.to_string()),
                uptime_secs: None,
                restarts: self.restarts,
                cpu_percent: self.stats.map(|s| s.cpu_percent),
                rss_bytes: self.stats.map(|s| s.rss_bytes),
                revision: self.revision.short().to_string(),
            },
            started: self.started_wall,
            addr: self.addr,
        }
    }
}

fn spawn_exit_watch(
    tx: &mpsc::UnboundedSender<Msg>,
    unit: &str,
    gen: u64,
    pid: i32,
    watch: ExitWatch,
) {
    let tx = tx.clone();
    let unit = unit.to_string();
    tokio::spawn(async move {
        let status = watch.await;
        let _ = tx.send(Msg::Exited {
            unit,
            gen,
            pid,
            status,
        });
    });
}

/// What makes a process: a change here needs new instances, a change anywhere else in the spec
/// (routes, deploy, health, restart, counts, logs) applies to the running ones.
fn instance_key(spec: &UnitSpec) -> String {
    let key = serde_json::json!({
        "process": spec.process,
        "container": spec.container,
        "env": spec.env,
        "port": spec.port,
    });
    key.to_string()
}

/// An error and its sources, `outer: inner: innermost`, without repeating a source that the
/// outer message already includes.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        src = s.source();
    }
    text
}

/// The 12-hex-digit form of a container id that `docker ps` shows.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The tag of one incarnation (one process) of an instance: unique on the host.
fn incarnation_tag(store_id: &str, unit: &str, index: u32, gen: u64, n: u32) -> String {
    format!("{store_id}.{unit}.{index}.{gen}.{n}")
}

/// SIGKILLs whatever is left of an instance's process tree, off the supervisor task (it scans
/// /proc).
fn background_kill(driver: &ProcessDriver, proc: ProcessId, tag: &str) {
    let (driver, tag) = (driver.clone(), tag.to_string());
    tokio::task::spawn_blocking(move || driver.kill_all(proc, &tag));
}

fn shutting_down() -> ApiError {
    ApiError {
        code: ErrorCode::ShuttingDown,
        message: "chaind is shutting down".into(),
    }
}

fn rotation(spec: &UnitSpec) -> Rotation {
    Rotation {
        max_size: spec.logs.max_size,
        max_files: spec.logs.max_files,
    }
}

/// The environment of one instance: chaind's own, the unit's, then chain's per-instance keys.
fn instance_env(
    base: &[(String, String)],
    spec: &UnitSpec,
    index: u32,
    port: Option<u16>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = base.iter().cloned().collect();
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("CHAIN_UNIT".into(), spec.name.clone());
    env.insert("CHAIN_INSTANCE".into(), index.to_string());
    if let Some(p) = port {
        env.insert("PORT".into(), p.to_string());
    }
    env.into_iter().collect()
}

/// A command with a slash is relative to the unit file's directory; a bare name is found in PATH.
fn resolve_program(command: &str, unit_dir: &Path) -> String {
    let p = Path::new(command);
    if command.contains('/') && p.is_relative() {
        unit_dir.join(p).display().to_string()
    } else {
        command.to_string()
    }
}

fn resolve_user(spec: &UnitSpec) -> Result<Option<UserIds>, String> {
    let p = &spec.process;
    if p.user.is_none() && p.group.is_none() {
        return Ok(None);
    }
    let uid = host::euid();
    let me = host::lookup_user(&uid.to_string()).ok();
    let mut ids = match &p.user {
        Some(u) => host::lookup_user(u).map_err(|e| format!("user {u}: {e}"))?,
        None => me
            .clone()
            .ok_or_else(|| "cannot look up the current user".to_string())?,
    };
    if let Some(g) = &p.group {
        ids.gid = host::lookup_group(g).map_err(|e| format!("group {g}: {e}"))?;
        ids.groups = vec![ids.gid];
    }
    if uid != 0 && (ids.uid != uid || me.as_ref().is_some_and(|m| m.gid != ids.gid)) {
        return Err(format!(
            "running as user {} requires chaind to run as root (it runs as uid {uid})",
            p.user.as_deref().or(p.group.as_deref()).unwrap_or("?")
        ));
    }
    Ok(Some(ids))
}
