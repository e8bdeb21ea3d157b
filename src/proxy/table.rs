//! The route table: an immutable snapshot the request path reads without locks, and the
//! upstreams it points to.
//!
//! Tables are rebuilt by [`super::Builder`] whenever the supervisor publishes a new snapshot
//! and swapped in atomically. [`Upstream`] objects outlive tables: the same `Arc<Upstream>` is
//! reused for an instance across rebuilds, so in-flight counts and passive-health state carry
//! over. Its strong count is the drain signal: once no table and no request holds it, the
//! instance receives no more traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::unit::{BalancePolicy, RouteSpec};

/// A routable instance.
#[derive(Debug)]
pub struct Upstream {
    pub unit: String,
    pub generation: u64,
    /// Stable identity (unit + generation hashed): the affinity cookie's value and the
    /// rendezvous-hash key.
    pub id: u64,
    pub addr: SocketAddr,
    /// Requests forwarded and not finished (response body not yet fully sent).
    pub inflight: AtomicUsize,
    /// Passive health: failures in the current window, window start and down-until, in ms
    /// since `epoch`.
    fails: AtomicU32,
    window_start: AtomicU64,
    down_until: AtomicU64,
    epoch: Instant,
    /// This instance's metric series, when metrics are on (set by the table builder).
    pub stats: Option<Arc<crate::metrics::InstanceStats>>,
    /// Set once the instance is leaving (draining, or gone from the tables): its pooled
    /// connections are closed rather than reused.
    retired: std::sync::atomic::AtomicBool,
}

impl Upstream {
    pub fn new(unit: &str, generation: u64, addr: SocketAddr, epoch: Instant) -> Upstream {
        Upstream {
            unit: unit.to_string(),
            generation,
            id: stable_hash(&(unit, generation)),
            addr,
            inflight: AtomicUsize::new(0),
            fails: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
            epoch,
            stats: None,
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    pub fn with_stats(mut self, stats: Option<Arc<crate::metrics::InstanceStats>>) -> Upstream {
        self.stats = stats;
        self
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_down(&self) -> bool {
        // No clock read for an upstream that never failed (the request path asks every time).
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && until > self.now_ms()
    }

    /// Records a failed attempt; after `max_fails` within `fail_timeout` the upstream is
    /// skipped for `fail_timeout` (nginx's max_fails / fail_timeout).
    pub fn record_failure(&self, spec: &RouteSpec) {
        if spec.max_fails == 0 {
            return;
        }
        let now = self.now_ms();
        let window = spec.fail_timeout.as_millis() as u64;
        let start = self.window_start.load(Ordering::Relaxed);
        let count = if now.saturating_sub(start) > window {
            self.window_start.store(now, Ordering::Relaxed);
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if count >= spec.max_fails {
            self.down_until.store(now + window, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            self.window_start.store(now, Ordering::Relaxed);
        }
    }

    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }
}

/// Holds one unit of in-flight count on an upstream (and the upstream itself) until dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<Upstream>);

impl InflightGuard {
    pub fn new(up: Arc<Upstream>) -> InflightGuard {
        up.inflight.fetch_add(1, Ordering::AcqRel);
        if let Some(s) = &up.stats {
            s.inflight.inc();
        }
        InflightGuard(up)
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
        if let Some(s) = &self.0.stats {
            s.inflight.dec();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches one or more labels in front.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(h: &str) -> HostPattern {
        match h.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
            None => HostPattern::Exact(h.to_string()),
        }
    }

    fn rank(&self, host: &str) -> Option<u8> {
        match self {
            HostPattern::Exact(h) => (h == host).then_some(2),
            HostPattern::Wildcard(suffix) => {
                (host.len() > suffix.len() && host.ends_with(suffix.as_str())).then_some(1)
            }
        }
    }
}

#[derive(Debug)]
pub struct Route {
    pub unit: String,
    pub host: Option<HostPattern>,
    pub spec: Arc<RouteSpec>,
    /// `headers` from the spec, parsed once: None removes the header.
    pub response_headers: Arc<
        Vec<(
            hyper::header::HeaderName,
            Option<hyper::header::HeaderValue>,
        )>,
    >,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Round-robin cursor, shared by every table built for this route.
    pub cursor: Arc<AtomicUsize>,
    /// `rate_limit`'s buckets, shared by every table built for this route (None: unlimited).
    pub limiter: Option<Arc<super::limit::RateLimiter>>,
    /// This route's metric series, when metrics are on.
    pub stats: Option<Arc<crate::metrics::RouteStats>>,
}

/// What a pick may depend on besides the route: the client, for affinity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Client<'a> {
    pub ip: Option<std::net::IpAddr>,
    /// The affinity cookie's value, when the request carries one.
    pub cookie: Option<&'a str>,
}

/// A hash that is the same in every chaind of one build (cookie values survive restarts).
pub fn stable_hash<T: std::hash::Hash>(v: &T) -> u64 {
    use std::hash::Hasher;
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x636861696e, 0x61666669);
    v.hash(&mut h);
    h.finish()
}

impl Route {
    /// Picks an upstream by the route's policy, skipping `exclude` and upstreams marked down
    /// (unless every one is down: then any may be tried, as nginx does).
    pub fn pick(&self, exclude: Option<&Arc<Upstream>>) -> Option<Arc<Upstream>> {
        self.pick_for(exclude, Client::default())
    }

    pub fn pick_for(
        &self,
        exclude: Option<&Arc<Upstream>>,
        client: Client<'_>,
    ) -> Option<Arc<Upstream>> {
        // No allocation on this path: the candidates are filtered in place, as often as
        // needed (a route has a handful of instances).
        let usable = |u: &Arc<Upstream>| exclude.is_none_or(|x| !Arc::ptr_eq(x, u));
        let any_up = self.upstreams.iter().any(|u| usable(u) && !u.is_down());
        let candidate = |u: &&Arc<Upstream>| usable(u) && (!any_up || !u.is_down());
        let candidates = || self.upstreams.iter().filter(candidate);
        let n = candidates().count();
        if n == 0 {
            return None;
        }
        if self.spec.policy == BalancePolicy::Cookie {
            let wanted = client.cookie.and_then(|c| u64::from_str_radix(c, 16).ok());
            if let Some(u) = wanted.and_then(|id| candidates().find(|u| u.id == id)) {
                return Some(u.clone());
            }
        }
        if let (BalancePolicy::IpHash, Some(ip)) = (self.spec.policy, client.ip) {
            let chosen = candidates()
                .max_by_key(|u| stable_hash(&(ip, u.id)))
                .expect("candidates is not empty");
            return Some(chosen.clone());
        }
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let chosen = match self.spec.policy {
            BalancePolicy::RoundRobin | BalancePolicy::IpHash | BalancePolicy::Cookie => {
                candidates().nth(turn).expect("turn < n")
            }
            // Ties go to the first candidate at or after the cursor, so that they rotate
            // instead of piling on the first.
            BalancePolicy::LeastConn => candidates()
                .enumerate()
                .min_by_key(|(i, u)| (u.inflight.load(Ordering::Relaxed), (i + n - turn) % n))
                .map(|(_, u)| u)
                .expect("candidates is not empty"),
        };
        Some(chosen.clone())
    }

    /// True when `path` is under this route's prefix, on a segment boundary.
    fn covers(&self, path: &str) -> bool {
        let prefix = self.spec.path.as_str();
        prefix == "/"
            || path == prefix
            || (path.starts_with(prefix)
                && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')))
    }
}

/// Every route of every unit, with the ready instances behind each.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// The route for a request: the most specific host match (exact, then wildcard, then
    /// any-host routes), then the longest path prefix.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter_map(|r| {
                let host_rank = match &r.host {
                    Some(p) => p.rank(host)?,
                    None => 0,
                };
                r.covers(path)
                    .then_some(((host_rank, r.spec.path.len()), r))
            })
            .max_by_key(|(score, _)| *score)
            .map(|(_, r)| r)
    }

    pub fn contains(&self, unit: &str, generation: u64) -> bool {
        self.routes.iter().any(|r| {
            r.upstreams
                .iter()
                .any(|u| u.unit == unit && u.generation == generation)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(host: Option<&str>, path: &str, policy: BalancePolicy) -> RouteSpec {
        RouteSpec {
            host: host.map(str::to_string),
            path: path.into(),
            strip_prefix: false,
            policy,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_body: 1024,
            max_fails: 2,
            fail_timeout: Duration::from_secs(10),
            https_redirect: None,
            compress: true,
            headers: Default::default(),
            acme: false,
            rate_limit: None,
        }
    }

    fn route(unit: &str, host: Option<&str>, path: &str, n: u16, policy: BalancePolicy) -> Route {
        let epoch = Instant::now();
        Route {
            unit: unit.into(),
            host: host.map(HostPattern::parse),
            spec: Arc::new(spec(host, path, policy)),
            response_headers: Arc::new(Vec::new()),
            upstreams: (0..n)
                .map(|i| {
                    Arc::new(Upstream::new(
                        unit,
                        i.into(),
                        ([127, 0, 0, 1], 1000 + i).into(),
                        epoch,
                    ))
                })
                .collect(),
            cursor: Arc::new(AtomicUsize::new(0)),
            limiter: None,
            stats: None,
        }
    }

    /// Exact host beats wildcard beats any host; then the longest prefix on a segment boundary.
    #[test]
    fn matching() {
        let t = RouteTable {
            routes: vec![
                route("any", None, "/", 1, BalancePolicy::RoundRobin),
                route("api", None, "/api", 1, BalancePolicy::RoundRobin),
                route(
                    "wild",
                    Some("*.example.com"),
                    "/",
                    1,
                    BalancePolicy::RoundRobin,
                ),
                route(
                    "exact",
                    Some("www.example.com"),
                    "/",
                    1,
                    BalancePolicy::RoundRobin,
                ),
            ],
        };
        let unit = |h: &str, p: &str| t.find(h, p).map(|r| r.unit.as_str());
        assert_eq!(unit("www.example.com", "/api/x"), Some("exact"));
        assert_eq!(unit("a.b.example.com", "/"), Some("wild"));
        assert_eq!(unit("example.com", "/api"), Some("api"));
        assert_eq!(unit("other", "/api/v1"), Some("api"));
        assert_eq!(unit("other", "/apiary"), Some("any"));
        let only_api = RouteTable {
            routes: vec![route("api", None, "/api", 1, BalancePolicy::RoundRobin)],
        };
        assert!(only_api.find("x", "/").is_none());
    }

    /// Round robin spreads; least_conn prefers the idle upstream; exclusion and down-marking
    /// are respected.
    #[test]
    fn picking() {
        let r = route("w", None, "/", 3, BalancePolicy::RoundRobin);
        let picks: Vec<u16> = (0..6).map(|_| r.pick(None).unwrap().addr.port()).collect();
        assert_eq!(picks, vec![1000, 1001, 1002, 1000, 1001, 1002]);

        let lc = route("w", None, "/", 3, BalancePolicy::LeastConn);
        let _g0 = InflightGuard::new(lc.upstreams[0].clone());
        let _g1 = InflightGuard::new(lc.upstreams[1].clone());
        for _ in 0..4 {
            assert_eq!(lc.pick(None).unwrap().addr.port(), 1002);
        }
        let first = lc.upstreams[2].clone();
        assert_ne!(lc.pick(Some(&first)).unwrap().addr.port(), 1002);

        // ip_hash: the same client always lands on the same instance, clients spread, and
        // removing an instance moves only its own clients.
        let ih = route("w", None, "/", 3, BalancePolicy::IpHash);
        let who = |r: &Route, ip: [u8; 4]| {
            r.pick_for(
                None,
                Client {
                    ip: Some(ip.into()),
                    cookie: None,
                },
            )
            .unwrap()
            .generation
        };
        let before: Vec<u64> = (0..60u8).map(|i| who(&ih, [10, 0, 0, i])).collect();
        assert_eq!(
            before,
            (0..60u8)
                .map(|i| who(&ih, [10, 0, 0, i]))
                .collect::<Vec<_>>()
        );
        assert!((0..3).all(|g| before.contains(&g)), "no spread: {before:?}");
        let fewer = Route {
            upstreams: ih.upstreams[..2].to_vec(),
            ..route("w", None, "/", 0, BalancePolicy::IpHash)
        };
        for (i, g) in before.iter().enumerate() {
            if *g < 2 {
                assert_eq!(
                    who(&fewer, [10, 0, 0, i as u8]),
                    *g,
                    "a client of a remaining instance moved"
                );
            }
        }

        // cookie: a known id wins; an unknown or absent one falls back to round robin.
        let ck = route("w", None, "/", 3, BalancePolicy::Cookie);
        let id = format!("{:x}", ck.upstreams[1].id);
        for _ in 0..4 {
            let got = ck
                .pick_for(
                    None,
                    Client {
                        ip: None,
                        cookie: Some(&id),
                    },
                )
                .unwrap();
            assert_eq!(got.generation, 1);
        }
        assert!(ck
            .pick_for(
                None,
                Client {
                    ip: None,
                    cookie: Some("zz")
                }
            )
            .is_some());

        let s = spec(None, "/", BalancePolicy::RoundRobin);
        r.upstreams[1].record_failure(&s);
        assert!(!r.upstreams[1].is_down(), "one failure of max_fails = 2");
        r.upstreams[1].record_failure(&s);
        assert!(r.upstreams[1].is_down());
        assert!((0..6).all(|_| r.pick(None).unwrap().addr.port() != 1001));
    }
}
