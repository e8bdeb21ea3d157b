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

mod forward;
pub mod table;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::reconcile::snapshot::Snapshot;
use forward::ProxyBody;
pub use table::RouteTable;
use table::{HostPattern, Route, Upstream};

type HttpClient = Client<HttpConnector, ProxyBody>;

/// State shared by the listener's connections, the table builder and drains.
pub struct Shared {
    table: ArcSwap<RouteTable>,
    /// One pooled client per distinct connect timeout (routes may differ).
    clients: ArcSwap<HashMap<Duration, HttpClient>>,
    /// Every upstream any table has used and that may still be in use. Only the builder and
    /// drains touch it, never the request path.
    registry: Mutex<HashMap<(String, u64), Arc<Upstream>>>,
}

impl Shared {
    fn client(&self, connect_timeout: Duration) -> HttpClient {
        if let Some(c) = self.clients.load().get(&connect_timeout) {
            return c.clone();
        }
        new_client(connect_timeout)
    }
}

fn new_client(connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(http)
}

/// Handle to the proxy: drains, and the address it listens on.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    pub http_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// No table and no request holds the instance any more.
    Drained,
    /// Requests were still in flight at the deadline.
    TimedOut { inflight: usize },
}

impl Proxy {
    /// Binds nothing; starts the table builder on `snapshots`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Proxy {
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(RouteTable::default()),
            clients: ArcSwap::from_pointee(HashMap::new()),
            registry: Mutex::new(HashMap::new()),
        });
        tokio::spawn(build_tables(shared.clone(), snapshots));
        Proxy {
            shared,
            http_addr: None,
        }
    }

    /// Serves HTTP on `listener` until `stop` is cancelled.
    pub fn serve_http(
        &mut self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.http_addr = listener.local_addr().ok();
        tokio::spawn(serve(listener, self.shared.clone(), stop))
    }

    /// Waits until the instance receives no traffic: it is in no route table and no request
    /// to it is in flight (or picking it), or `timeout` passes.
    pub async fn drain(&self, unit: &str, generation: u64, timeout: Duration) -> DrainOutcome {
        let key = (unit.to_string(), generation);
        let Some(up) = self.registry().get(&key).cloned() else {
            return DrainOutcome::Drained;
        };
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
}

/// The table's single writer: rebuilds it from every new supervisor snapshot.
async fn build_tables(shared: Arc<Shared>, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
    let epoch = Instant::now();
    let mut cursors: HashMap<(String, Option<String>, String), Arc<AtomicUsize>> = HashMap::new();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let table = {
            let mut registry = shared.registry.lock().unwrap_or_else(|p| p.into_inner());
            let table = build(&snap, &mut registry, &mut cursors, epoch);
            // Forget upstreams nothing holds any more (not this table, no request, no drain).
            registry.retain(|_, up| Arc::strong_count(up) > 1);
            table
        };
        let mut timeouts: Vec<Duration> = table
            .routes
            .iter()
            .map(|r| r.spec.connect_timeout)
            .collect();
        timeouts.sort();
        timeouts.dedup();
        let clients = shared.clients.load();
        if timeouts.iter().any(|t| !clients.contains_key(t)) {
            let mut next = (**clients).clone();
            for t in timeouts {
                next.entry(t).or_insert_with(|| new_client(t));
            }
            shared.clients.store(Arc::new(next));
        }
        shared.table.store(Arc::new(table));
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

fn build(
    snap: &Snapshot,
    registry: &mut HashMap<(String, u64), Arc<Upstream>>,
    cursors: &mut HashMap<(String, Option<String>, String), Arc<AtomicUsize>>,
    epoch: Instant,
) -> RouteTable {
    let mut routes = Vec::new();
    for (name, unit) in &snap.units {
        let Some(spec) = &unit.spec else { continue };
        if spec.routes.is_empty() {
            continue;
        }
        let upstreams: Vec<Arc<Upstream>> = unit
            .instances
            .iter()
            .filter(|i| i.info.ready)
            .filter_map(|i| {
                let port = i.info.port?;
                let key = (name.clone(), i.info.generation);
                Some(
                    registry
                        .entry(key)
                        .or_insert_with(|| {
                            Arc::new(Upstream::new(
                                name,
                                i.info.generation,
                                ([127, 0, 0, 1], port).into(),
                                epoch,
                            ))
                        })
                        .clone(),
                )
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
                spec: r.clone(),
                upstreams: upstreams.clone(),
                cursor,
            });
        }
    }
    RouteTable { routes }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| forward::handle(shared.clone(), peer, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(error = %e, %peer, "proxy connection ended");
                },
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        });
    }
}
