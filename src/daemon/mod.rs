//! Wiring: builds the store, the supervisor, the API listener and the unit-file watcher, runs
//! them as named tasks, and shuts them down in a fixed order: stop accepting API calls, stop
//! (or leave) the workloads through the supervisor, flush the store, remove the socket.
//!
//! `Daemon::run(config, shutdown)` is the single entry point; tests pass their own shutdown
//! future.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use tokio::net::UnixListener;
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use crate::api::server::{self, Access, ControlPlane};
use crate::api::wire::*;
use crate::proxy::tls::CertStore;
use crate::reconcile::snapshot::Snapshot;
use crate::reconcile::supervisor::{Command, Config as SupConfig, Supervisor, SupervisorHandle};
use crate::store::{EventRecord, Store};
use crate::watch::{DirWatch, WatchOptions};

/// Name of the group whose members may use the API besides root and the daemon's user.
pub const GROUP: &str = "chain";

#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub units_dir: PathBuf,
    pub profile: Option<String>,
    /// On shutdown, leave workloads running (they are re-adopted by the next chaind).
    pub leave_running: bool,
    /// chaind.toml, with command-line overrides applied.
    pub settings: crate::config::Config,
}

impl Config {
    pub fn socket(&self) -> PathBuf {
        self.root.join(crate::paths::SOCKET_NAME)
    }
}

pub struct Daemon;

impl Daemon {
    pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        std::fs::create_dir_all(&cfg.root)
            .with_context(|| format!("creating {}", cfg.root.display()))?;
        if !cfg.units_dir.exists() {
            std::fs::create_dir_all(&cfg.units_dir)
                .with_context(|| format!("creating units directory {}", cfg.units_dir.display()))?;
            tracing::info!(dir = %cfg.units_dir.display(), "created empty units directory");
        }
        let units_dir = cfg
            .units_dir
            .canonicalize()
            .unwrap_or_else(|_| cfg.units_dir.clone());
        let socket = cfg.socket();
        refuse_second_daemon(&socket).await?;

        let store = Store::open(&cfg.root.join("state")).with_context(|| {
            format!(
                "opening the store in {} (is another chaind using this root?)",
                cfg.root.display()
            )
        })?;
        let sup_cfg = SupConfig {
            root: cfg.root.clone(),
            units_dir: units_dir.clone(),
            logs_dir: cfg.root.join("logs"),
            run_dir: cfg.root.join("run"),
            port_range: cfg.settings.port_range,
            cpus: chain_agent::host::cpu_count(),
            profile: cfg.profile.clone(),
            docker_socket: cfg.settings.docker.socket.clone(),
            docker_network: cfg.settings.docker.network.clone(),
        };
        let (mut supervisor, handle) =
            Supervisor::new(sup_cfg.clone(), store).context("starting the supervisor")?;
        // Listeners are created here and only here, so that handing them to a successor chaind
        // (SCM_RIGHTS) stays a local change.
        let proxy_stop = CancellationToken::new();
        let mut proxy_tasks = Vec::new();
        let mut proxy_handle = None;
        let (mut http_addr, mut https_addr) = (None, None);
        let mut _cert_watch = None;
        // The certificate store and the HTTP-01 answers, for the ACME manager.
        let (mut acme_certs, mut acme_challenges) = (None, None);
        // The admin listener (GET /metrics) and the metrics it serves exist only when configured.
        let admin = match cfg.settings.admin.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin listener on {addr}"))?,
            ),
            None => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let metrics = admin.as_ref().map(|_| crate::metrics::Metrics::new());
        let pcfg = &cfg.settings.proxy;
        if pcfg.http.is_some() || pcfg.https.is_some() {
            let http = match pcfg.http {
                Some(addr) => Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding the HTTP listener on {addr}"))?,
                ),
                None => None,
            };
            let https = match pcfg.https {
                Some(addr) => {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding the HTTPS listener on {addr}"))?;
                    let (certs, errors) =
                        CertStore::new(&cfg.settings.certificates, &cfg.root.join("tls"));
                    for e in errors {
                        tracing::error!("{e}");
                    }
                    _cert_watch = watch_certificates(&certs);
                    acme_certs = Some(certs.clone());
                    Some((listener, certs))
                }
                None => None,
            };
            let (proxy, tasks) = crate::proxy::Proxy::start(
                handle.snapshot.clone(),
                http,
                https,
                pcfg,
                crate::proxy::observe::Observer::new(pcfg, metrics.clone())
                    .context("opening the access log")?,
                cfg.settings.proxy_workers(),
                proxy_stop.clone(),
            )
            .context("starting the proxy")?;
            (http_addr, https_addr) = (proxy.http_addr, proxy.https_addr);
            tracing::info!(http = ?http_addr, https = ?https_addr, "proxy listening");
            proxy_tasks = tasks;
            acme_challenges = http_addr.map(|_| proxy.acme_challenges());
            proxy_handle = Some(proxy.clone());
            supervisor.set_proxy(proxy);
        }
        if let (Some(listener), Some(m)) = (admin, &metrics) {
            tracing::info!(admin = ?admin_addr, "admin listener serving /metrics");
            proxy_tasks.extend(crate::metrics::export::start(
                listener,
                m.clone(),
                handle.snapshot.clone(),
                proxy_stop.clone(),
            ));
        }
        // Runs even without listeners, to say why routes with `acme = true` get no certificate.
        proxy_tasks.push(crate::proxy::acme::start(
            cfg.settings.acme.clone(),
            &cfg.root,
            handle.snapshot.clone(),
            acme_certs,
            acme_challenges,
            proxy_stop.clone(),
        ));

        // Watch before the first load, so no change can fall between the load and the watch.
        let watcher_handle = handle.clone();
        let _units_watch = DirWatch::start(
            WatchOptions { paths: vec![units_dir.clone()], recursive: false, ignore: vec![], debounce: Duration::from_millis(100) },
            move |_| watcher_handle.units_changed(),
        )
        .map_err(|e| tracing::error!(dir = %units_dir.display(), error = %e, "cannot watch the units directory; use `chainctl apply`"))
        .ok();
        // Serve the API only once the supervisor has adopted what was running and loaded the
        // unit files, so the first answer is never an empty, wrong picture.
        let mut first = handle.snapshot.clone();
        let sup_run = supervisor.run();
        let group = chain_agent::host::group_id(GROUP);
        let listener = bind_socket(&socket, group)?;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            sup_run.await;
            "supervisor"
        });
        if first.changed().await.is_err() {
            bail!("the supervisor stopped during start-up");
        }
        let api_stop = CancellationToken::new();
        let api_close = CancellationToken::new();
        let cp = Plane {
            handle: handle.clone(),
            info: Arc::new(VersionInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                root: cfg.root.display().to_string(),
                units_dir: units_dir.display().to_string(),
                profile: None,
                http: http_addr.map(|a| a.to_string()),
                https: https_addr.map(|a| a.to_string()),
                admin: admin_addr.map(|a| a.to_string()),
                store_id: handle.store.store_id().unwrap_or_default(),
            }),
            logs_dir: sup_cfg.logs_dir.clone(),
            events: {
                let (tx, _) = broadcast::channel(1024);
                tx
            },
            proxy: proxy_handle.clone(),
        };
        cp.forward_events();
        let access = Access {
            daemon_uid: chain_agent::host::euid(),
            group,
        };
        {
            let stop = api_stop.clone();
            let close = api_close.clone();
            let cp = cp.clone();
            tasks.spawn(async move {
                server::serve(listener, cp, access, stop, close).await;
                "api"
            });
        }
        tracing::info!(socket = %socket.display(), units = %units_dir.display(), "chaind ready");

        tokio::pin!(shutdown);
        let early = tokio::select! {
            _ = &mut shutdown => None,
            done = tasks.join_next() => Some(done),
        };
        if let Some(done) = early {
            let name = match done {
                Some(Ok(name)) => name,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a chaind task panicked");
                    "unknown"
                }
                None => "none",
            };
            tracing::error!(
                task = name,
                "a chaind task ended unexpectedly; shutting down"
            );
        }

        // 1. Stop accepting API connections (open ones get their answers below).
        api_stop.cancel();
        // 2. Stop or leave the workloads.
        let (done_tx, done_rx) = oneshot::channel();
        if handle
            .command(Command::Shutdown {
                leave_running: cfg.leave_running,
                done: done_tx,
            })
            .is_ok()
        {
            let _ = done_rx.await;
        }
        // 3. The proxy stops once the workloads it drained are gone, and the API connections
        // still open (log followers, answered waiters) close.
        proxy_stop.cancel();
        api_close.cancel();
        for t in proxy_tasks {
            let _ = t.await;
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(name) => tracing::debug!(task = name, "task ended"),
                Err(e) if e.is_cancelled() => {}
                Err(e) => tracing::error!(error = %e, "task failed"),
            }
        }
        // 4. The supervisor flushed the store on its way out; 5. the socket goes.
        let _ = std::fs::remove_file(&socket);
        tracing::info!("chaind stopped");
        Ok(())
    }
}

/// If a daemon already answers on the socket, starting a second one would steal it.
async fn refuse_second_daemon(socket: &Path) -> anyhow::Result<()> {
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            bail!(
                "another chaind is already listening on {}",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    Ok(())
}

/// Creates the socket with mode 0600, or 0660 owned by the `chain` group when it exists.
fn bind_socket(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = match group {
        Some(gid) => match std::os::unix::fs::chown(path, None, Some(gid)) {
            Ok(()) => 0o660,
            // A non-root daemon outside the group cannot hand the socket to it: stay private.
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "cannot give the socket to group {GROUP}; keeping it private (0600)");
                0o600
            }
        },
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// The daemon's [`ControlPlane`]: reads from supervisor snapshots, commands to the supervisor.
#[derive(Clone)]
struct Plane {
    handle: SupervisorHandle,
    proxy: Option<crate::proxy::Proxy>,
    info: Arc<VersionInfo>,
    logs_dir: PathBuf,
    events: broadcast::Sender<EventInfo>,
}

impl Plane {
    fn snap(&self) -> Arc<Snapshot> {
        self.handle.snapshot.borrow().clone()
    }

    /// Re-publishes store events in wire form for API followers.
    fn forward_events(&self) {
        let mut rx = self.handle.events.subscribe();
        let tx = self.events.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let _ = tx.send(event_info(&ev));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.handle.command(make(tx))?;
        rx.await.map_err(|_| ApiError {
            code: ErrorCode::ShuttingDown,
            message: "chaind is shutting down".into(),
        })?
    }
}

impl ControlPlane for Plane {
    fn version(&self) -> VersionInfo {
        let mut v = (*self.info).clone();
        v.profile = self.snap().profile.clone();
        v
    }

    fn instances(&self) -> Vec<InstanceInfo> {
        self.snap().instances()
    }

    fn units(&self) -> Vec<UnitSummary> {
        self.snap()
            .units
            .values()
            .map(|u| u.summary.clone())
            .collect()
    }

    fn unit_status(&self, name: &str) -> Result<UnitStatus, ApiError> {
        let snap = self.snap();
        let u = snap
            .units
            .get(name)
            .ok_or_else(|| server::unit_not_found(name))?;
        let now = SystemTime::now();
        let spec = u.spec.as_deref();
        let events = self.events(20, Some(name))?;
        Ok(UnitStatus {
            summary: u.summary.clone(),
            description: spec.map(|s| s.description.clone()).unwrap_or_default(),
            command: spec.map(|s| match &s.container {
                Some(c) => {
                    let cmd = c.command.as_ref().map(|w| w.join(" ")).unwrap_or_default();
                    format!("container {} {cmd}", c.image)
                        .trim_end()
                        .to_string()
                }
                None => std::iter::once(s.process.command.as_str())
                    .chain(s.process.args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
            }),
            restart_policy: spec.map(|s| s.restart.policy.as_str().to_string()),
            health: spec.and_then(|s| s.health.as_ref()).map(|h| {
                let what = match &h.check {
                    crate::unit::HealthCheck::Http { path } => format!("http {path}"),
                    crate::unit::HealthCheck::Tcp => "tcp".to_string(),
                    crate::unit::HealthCheck::Exec { command } => {
                        format!("exec {}", command.join(" "))
                    }
                };
                format!("{what} every {}", crate::unit::format_duration(h.interval))
            }),
            port: spec.map(|s| match s.port {
                crate::unit::PortSpec::Auto => "auto".to_string(),
                crate::unit::PortSpec::None => "none".to_string(),
                crate::unit::PortSpec::Fixed { base } => base.to_string(),
                crate::unit::PortSpec::Range { start, end } => format!("{start}-{end}"),
            }),
            depends_on: spec
                .map(|s| {
                    s.depends_on
                        .iter()
                        .map(|d| format!("{} ({})", d.unit, d.condition.as_str()))
                        .collect()
                })
                .unwrap_or_default(),
            profile: spec.and_then(|s| s.profile.clone()),
            instances: u.instances.iter().map(|i| i.to_wire(now)).collect(),
            events,
            last_error: u.last_error.clone(),
        })
    }

    fn unit_spec(&self, name: &str) -> Result<serde_json::Value, ApiError> {
        let snap = self.snap();
        let u = snap
            .units
            .get(name)
            .ok_or_else(|| server::unit_not_found(name))?;
        let spec = u.spec.as_ref().ok_or_else(|| ApiError {
            code: ErrorCode::UnitInvalid,
            message: format!(
                "unit {name} has no valid definition: {}",
                u.summary.errors.join("; ")
            ),
        })?;
        serde_json::to_value(&**spec).map_err(|e| ApiError {
            code: ErrorCode::Internal,
            message: e.to_string(),
        })
    }

    async fn apply(&self, req: ApplyRequest) -> Result<ApplyResult, ApiError> {
        let profile = req.profile.map(|p| Some(p).filter(|p| !p.is_empty()));
        self.ask(|reply| Command::Apply { profile, reply }).await
    }

    async fn unit_action(
        &self,
        name: &str,
        action: UnitAction,
        wait: bool,
        caller: Option<u32>,
    ) -> Result<ActionResult, ApiError> {
        let unit = name.to_string();
        self.ask(|reply| Command::Unit {
            unit,
            action,
            wait,
            caller,
            reply,
        })
        .await
    }

    async fn deploy(
        &self,
        name: &str,
        request: DeployRequest,
        wait: bool,
        caller: Option<u32>,
    ) -> Result<ActionResult, ApiError> {
        let unit = name.to_string();
        self.ask(|reply| Command::Deploy {
            unit,
            request,
            wait,
            caller,
            reply,
        })
        .await
    }

    async fn rollback(
        &self,
        name: &str,
        req: RollbackRequest,
        wait: bool,
        caller: Option<u32>,
    ) -> Result<ActionResult, ApiError> {
        let unit = name.to_string();
        self.ask(|reply| Command::Rollback {
            unit,
            to: req.to,
            wait,
            caller,
            reply,
        })
        .await
    }

    async fn gc(&self, req: GcRequest) -> Result<GcResult, ApiError> {
        self.ask(|reply| Command::Gc {
            dry_run: req.dry_run,
            all: req.all,
            reply,
        })
        .await
    }

    fn history(&self, name: &str, n: usize) -> Result<Vec<DeployInfo>, ApiError> {
        if !self.has_unit(name) {
            return Err(server::unit_not_found(name));
        }
        let recs = self.handle.store.deploys(name, n).map_err(|e| ApiError {
            code: ErrorCode::Internal,
            message: format!("reading history: {e}"),
        })?;
        Ok(recs
            .into_iter()
            .map(|r| DeployInfo {
                deployment: r.deployment,
                started: chain_agent::logs::format_timestamp(
                    SystemTime::UNIX_EPOCH + Duration::from_millis(r.started_ms),
                ),
                from_revision: r.from_revision,
                to_revision: r.to_revision,
                strategy: r.strategy,
                trigger: r.trigger,
                caller: r.caller,
                outcome: r.outcome,
                duration_ms: r.finished_ms.map(|f| f.saturating_sub(r.started_ms)),
                reason: r.reason,
            })
            .collect())
    }

    fn diff(&self, name: &str) -> Result<DiffInfo, ApiError> {
        let snap = self.snap();
        let u = snap
            .units
            .get(name)
            .ok_or_else(|| server::unit_not_found(name))?;
        let overrides = self
            .handle
            .store
            .units()
            .ok()
            .and_then(|units| units.into_iter().find(|r| r.name == name))
            .map(|r| r.overrides)
            .unwrap_or_default();
        let ctx = crate::unit::ResolveCtx {
            profile: snap.profile.clone(),
            cpus: chain_agent::host::cpu_count(),
            overrides: [(name.to_string(), overrides)].into_iter().collect(),
        };
        let path = std::path::Path::new(&u.summary.file);
        let running = u
            .spec
            .as_deref()
            .map(|s| serde_json::to_value(s).unwrap_or_default());
        let (file, errors) = match crate::unit::load_file(path, &ctx) {
            Ok(l) => (
                Some((
                    l.revision,
                    serde_json::to_value(&l.spec).unwrap_or_default(),
                )),
                Vec::new(),
            ),
            Err(errs) => (None, errs.iter().map(|e| e.to_string()).collect()),
        };
        let mut changes = Vec::new();
        if let (Some(old), Some((_, new))) = (&running, &file) {
            json_diff("", old, new, &mut changes);
        }
        Ok(DiffInfo {
            unit: name.to_string(),
            running: u.summary.revision.clone(),
            file: file.map(|(r, _)| r.0),
            changes,
            errors,
        })
    }

    fn events(&self, n: usize, unit: Option<&str>) -> Result<Vec<EventInfo>, ApiError> {
        self.handle
            .store
            .recent_events(n, unit)
            .map(|evs| evs.iter().map(event_info).collect())
            .map_err(|e| ApiError {
                code: ErrorCode::Internal,
                message: format!("reading events: {e}"),
            })
    }

    fn subscribe_events(&self) -> broadcast::Receiver<EventInfo> {
        self.events.subscribe()
    }

    fn logs_dir(&self) -> PathBuf {
        self.logs_dir.clone()
    }

    fn routes(&self) -> Vec<RouteInfo> {
        let Some(proxy) = &self.proxy else {
            return Vec::new();
        };
        let snap = self.snap();
        proxy.routes(|unit, generation| {
            snap.units
                .get(unit)?
                .instances
                .iter()
                .find(|i| i.info.generation == generation)
                .map(|i| i.info.instance)
        })
    }

    fn has_unit(&self, name: &str) -> bool {
        self.snap().units.contains_key(name)
    }
}

/// Every leaf that differs between two JSON values, as dotted paths.
fn json_diff(path: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<Change>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                json_diff(
                    &p,
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(Change {
            path: path.to_string(),
            old: a.clone(),
            new: b.clone(),
        }),
        _ => {}
    }
}

fn event_info(ev: &EventRecord) -> EventInfo {
    EventInfo {
        seq: ev.seq,
        time: chain_agent::logs::format_timestamp(
            SystemTime::UNIX_EPOCH + Duration::from_millis(ev.ts_ms),
        ),
        unit: ev.unit.clone(),
        instance: ev.instance,
        kind: ev.kind.clone(),
        message: ev.message.clone(),
    }
}

/// Reloads the certificate files when their directories change; a file that fails keeps its
/// previous version and is reported.
fn watch_certificates(certs: &Arc<CertStore>) -> Option<DirWatch> {
    let dirs = certs.watched_dirs();
    if dirs.is_empty() {
        return None;
    }
    let store = certs.clone();
    let opts = WatchOptions {
        paths: dirs,
        recursive: false,
        ignore: vec![],
        debounce: Duration::from_millis(200),
    };
    match DirWatch::start(opts, move |path| {
        let errors = store.reload();
        if errors.is_empty() {
            tracing::info!(changed = %path.display(), "certificates reloaded");
        }
        for e in errors {
            tracing::error!("{e}; keeping the previous version");
        }
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch certificate files; they will not be reloaded");
            None
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop chaind with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
