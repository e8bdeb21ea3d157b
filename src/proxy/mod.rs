//! The proxy: HTTP listener, routing on an immutable [`RouteTable`], load balancing over the
//! units' ready instances, and draining.
//!
//! Invariants:
//! - The proxy never reads the store and never calls the supervisor. It receives whole
//!   supervisor snapshots over a watch channel and rebuilds its table from them (one builder
//!   task is the table's only writer).
//! - The request path never waits on a lock: it loads the current table from an `ArcSwap`.
//! - [`Proxy::drain`] returns only once no table and no request holds the instance (or at the
//!   timeout), so an instance that is stopped after draining drops no request.

pub mod access_log;
pub mod acme;
mod compress;
mod forward;
pub mod limit;
pub mod listen;
mod load;
pub mod observe;
mod pool;
pub mod table;
pub mod tls;
mod upgrade;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::reconcile::snapshot::Snapshot;
pub use table::RouteTable;
use table::{HostPattern, Route, Upstream};

/// State shared by the listener's connections, the table builder and drains.
pub struct Shared {
    table: ArcSwap<RouteTable>,
    /// Every upstream any table has used and that may still be in use. Only the builder and
    /// drains touch it, never the request path.
    registry: Mutex<HashMap<(String, u64), Arc<Upstream>>>,
    /// Certificates, when an HTTPS listener runs: HTTP requests for hosts that have one are
    /// redirected to HTTPS.
    certs: Option<Arc<tls::CertStore>>,
    /// Port of the HTTPS listener, for redirect locations.
    https_port: Option<u16>,
    /// HTTP-01 tokens the ACME manager publishes; read only for `/.well-known/acme-challenge/`.
    acme: Arc<acme::Challenges>,
    /// Metrics and the access log, when configured; read-only after start.
    observe: observe::Observer,
    /// Bumped whenever an upstream is retired or forgotten: each proxy worker then closes its
    /// idle connections to instances that are leaving (see `pool`).
    retired: watch::Sender<u64>,
    /// Most header fields an HTTP/2 request may carry (hyper counts HTTP/1.1's itself).
    max_headers: usize,
}

impl Shared {
    /// Tells the workers to drop idle connections to retired or forgotten upstreams.
    fn upstreams_retired(&self) {
        self.retired.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("starting proxy workers: {0}")]
    Io(#[from] std::io::Error),
}

/// Handle to the proxy: drains, and the addresses it listens on.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// No table and no request holds the instance any more.
    Drained,
    /// Requests were still in flight at the deadline.
    TimedOut { inflight: usize },
}

impl Proxy {
    /// Starts the table builder on `snapshots` and serves the given listeners (created by the
    /// daemon) on `workers` threads until `stop`.
    pub fn start(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        http: Option<TcpListener>,
        https: Option<(TcpListener, Arc<tls::CertStore>)>,
        cfg: &ProxyConfig,
        observer: observe::Observer,
        workers: listen::Workers,
        stop: CancellationToken,
    ) -> Result<(Proxy, Vec<tokio::task::JoinHandle<()>>), StartError> {
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        let https_addr = https.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(RouteTable::default()),
            registry: Mutex::new(HashMap::new()),
            certs: https.as_ref().map(|(_, c)| c.clone()),
            https_port: https_addr.map(|a| a.port()),
            acme: Arc::default(),
            observe: observer,
            retired: watch::channel(0).0,
            max_headers: cfg.max_headers as usize,
        });
        let mut tasks = vec![tokio::spawn(build_tables(shared.clone(), snapshots))];
        let mut listeners = Vec::new();
        if let Some(l) = http {
            listeners.push(listen::Listener {
                socket: l.into_std()?,
                tls: None,
            });
        }
        if let Some((l, certs)) = https {
            listeners.push(listen::Listener {
                socket: l.into_std()?,
                tls: Some(listen::tls_acceptor(&certs)?),
            });
        }
        // One limiter for both listeners and every worker: the limit is per client.
        let limiter = listen::ConnLimiter::new(cfg.max_connections_per_ip);
        tasks.extend(listen::spawn_workers(
            workers, &listeners, &shared, cfg, &limiter, &stop,
        )?);
        Ok((
            Proxy {
                shared,
                http_addr,
                https_addr,
            },
            tasks,
        ))
    }

    /// Waits until the instance receives no traffic: it is in no route table and no request
    /// to it is in flight (or picking it), or `timeout` passes.
    pub async fn drain(&self, unit: &str, generation: u64, timeout: Duration) -> DrainOutcome {
        let key = (unit.to_string(), generation);
        let Some(up) = self.registry().get(&key).cloned() else {
            return DrainOutcome::Drained;
        };
        // Requests already on their way finish; connections to it are not reused.
        up.retire();
        self.shared.upstreams_retired();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let registered = self
                .registry()
                .get(&key)
                .is_some_and(|x| Arc::ptr_eq(x, &up));
            let others = Arc::strong_count(&up) - 1 - usize::from(registered);
            if others == 0 {
                return DrainOutcome::Drained;
            }
            if tokio::time::Instant::now() >= deadline {
                let inflight = up.inflight.load(std::sync::atomic::Ordering::Relaxed);
                return DrainOutcome::TimedOut { inflight };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Arc<Upstream>>> {
        self.shared
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The current table (for `chainctl routes` and tests).
    pub fn table(&self) -> Arc<RouteTable> {
        self.shared.table.load_full()
    }

    /// The routes as the API shows them; `index` maps (unit, generation) to an instance index.
    pub fn routes(
        &self,
        index: impl Fn(&str, u64) -> Option<u32>,
    ) -> Vec<crate::api::wire::RouteInfo> {
        use crate::api::wire::{RouteInfo, RouteInstance};
        self.table()
            .routes
            .iter()
            .map(|r| RouteInfo {
                unit: r.unit.clone(),
                host: r.spec.host.clone(),
                path: r.spec.path.clone(),
                policy: r.spec.policy.as_str().to_string(),
                instances: r
                    .upstreams
                    .iter()
                    .map(|u| RouteInstance {
                        instance: index(&u.unit, u.generation),
                        generation: u.generation,
                        addr: u.addr.to_string(),
                        inflight: u.inflight.load(std::sync::atomic::Ordering::Relaxed) as u64,
                        down: u.is_down(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Where the ACME manager publishes HTTP-01 answers (served on the plain-HTTP listener).
    pub fn acme_challenges(&self) -> Arc<acme::Challenges> {
        self.shared.acme.clone()
    }
}

/// The table's single writer: rebuilds it from every new supervisor snapshot.
async fn build_tables(shared: Arc<Shared>, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
    let epoch = Instant::now();
    let mut cursors: HashMap<(String, Option<String>, String), Arc<AtomicUsize>> = HashMap::new();
    let mut extras = observe::Extras::new(shared.observe.metrics.clone());
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let (table, forgot) = {
            let mut registry = shared.registry.lock().unwrap_or_else(|p| p.into_inner());
            let table = build(&snap, &mut registry, &mut cursors, &mut extras, epoch);
            extras.finish_build();
            // Forget upstreams nothing holds any more (not this table, no request, no drain).
            let before = registry.len();
            registry.retain(|_, up| Arc::strong_count(up) > 1);
            (table, registry.len() != before)
        };
        shared.table.store(Arc::new(table));
        if forgot {
            shared.upstreams_retired();
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

fn build(
    snap: &Snapshot,
    registry: &mut HashMap<(String, u64), Arc<Upstream>>,
    cursors: &mut HashMap<(String, Option<String>, String), Arc<AtomicUsize>>,
    extras: &mut observe::Extras,
    epoch: Instant,
) -> RouteTable {
    let mut routes = Vec::new();
    for (name, unit) in &snap.units {
        let Some(spec) = &unit.spec else { continue };
        if spec.routes.is_empty() {
            continue;
        }
        for i in &unit.instances {
            extras.keep_instance(name, i.info.instance);
        }
        let upstreams: Vec<Arc<Upstream>> = unit
            .instances
            .iter()
            .filter(|i| i.info.routed)
            .filter_map(|i| {
                let addr = i.addr?;
                let key = (name.clone(), i.info.generation);
                // A restarted container comes back at a new address under the same generation.
                if registry.get(&key).is_none_or(|up| up.addr != addr) {
                    let up = Upstream::new(name, i.info.generation, addr, epoch)
                        .with_stats(extras.instance(name, i.info.instance));
                    registry.insert(key.clone(), Arc::new(up));
                }
                registry.get(&key).cloned()
            })
            .collect();
        for r in &spec.routes {
            let cursor = cursors
                .entry((name.clone(), r.host.clone(), r.path.clone()))
                .or_insert_with(|| Arc::new(AtomicUsize::new(0)))
                .clone();
            routes.push(Route {
                unit: name.clone(),
                host: r.host.as_deref().map(HostPattern::parse),
                spec: Arc::new(r.clone()),
                response_headers: Arc::new(forward::parse_header_rules(&r.headers)),
                upstreams: upstreams.clone(),
                cursor,
                limiter: extras.limiter(name, r),
                stats: extras.route(name, r),
            });
        }
    }
    RouteTable { routes }
}
