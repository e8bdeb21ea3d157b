//! Per-route request rate limits, per client IP (`route.rate_limit`), with nginx's
//! `limit_req ... burst=N nodelay` semantics: a token bucket of `burst + 1` requests that refills
//! at `rps`, and 429 with `Retry-After` when it is empty.
//!
//! The bucket is kept as GCRA's single number per client, the "theoretical arrival time" (TAT):
//! the time at which the bucket would be full again. A request at `now` is allowed when
//! `max(tat, now) - now <= burst * interval`, and then moves the TAT one interval later. One
//! `u64` per client and no floating point on the request path.
//!
//! Memory is bounded: a client whose TAT has passed has a full bucket, so forgetting it changes
//! nothing; each shard sweeps those out every [`SWEEP_EVERY`], and a shard at its share of the
//! per-route cap evicts the clients with the fullest buckets first. The request path takes one
//! of [`SHARDS`] short mutexes chosen by the client's hash, never a lock shared by every request
//! and never one the control plane holds. Limiters live in the route table's `Route`s and are
//! carried across table rebuilds by [`Limiters`], which only the table builder touches.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::forward::ProxyBody;
use crate::unit::{RateLimit, RouteSpec};

/// Shards per limiter: enough that two cores never wait on each other in practice.
pub const SHARDS: usize = 16;
/// Client IPs tracked per route at most.
pub const MAX_CLIENTS: usize = 100_000;
/// How often a shard forgets the clients whose buckets are full again.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

const NANOS: f64 = 1e9;

/// One route's limiter.
#[derive(Debug)]
pub struct RateLimiter {
    /// The configuration it was built from, to tell whether a rebuilt table may keep it.
    pub config: RateLimit,
    /// Nanoseconds per token (1 / rps).
    interval: u64,
    /// How far the TAT may run ahead of now: burst intervals.
    tolerance: u64,
    max_per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug, Default)]
struct Shard {
    /// Client → theoretical arrival time, in ns since the limiter's epoch.
    tat: HashMap<IpAddr, u64>,
    last_sweep: u64,
}

impl RateLimiter {
    pub fn new(config: RateLimit) -> RateLimiter {
        RateLimiter::with_capacity(config, MAX_CLIENTS)
    }

    /// A limiter tracking at most about `max_clients` clients (rounded to whole shards).
    pub fn with_capacity(config: RateLimit, max_clients: usize) -> RateLimiter {
        // rps is validated to (0, 1e6], so the interval is at least 1000 ns; the clamp only
        // keeps a hand-built config from dividing by zero.
        let interval = (NANOS / config.rps.max(1e-9))
            .round()
            .clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        RateLimiter {
            config,
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst)),
            max_per_shard: max_clients.div_ceil(SHARDS).max(1),
            hasher: Default::default(),
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes a token for `ip`, or says how long until one is back.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        // Offset by one sweep period so that `now` never starts at 0 (a TAT of 0 is "full").
        let now = self.epoch.elapsed().as_nanos() as u64 + SWEEP_EVERY.as_nanos() as u64;
        self.check_at(ip, now)
    }

    /// [`check`](Self::check) at `now` nanoseconds since the epoch (pure but for the shard).
    fn check_at(&self, ip: IpAddr, now: u64) -> Result<(), Duration> {
        let i = (self.hasher.hash_one(ip) as usize) % self.shards.len();
        let mut shard = self.shards[i].lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_sub(shard.last_sweep) >= SWEEP_EVERY.as_nanos() as u64 {
            shard.last_sweep = now;
            shard.tat.retain(|_, tat| *tat > now);
        }
        if let Some(tat) = shard.tat.get_mut(&ip) {
            let t = (*tat).max(now);
            let ahead = t - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            *tat = t.saturating_add(self.interval);
            return Ok(());
        }
        if shard.tat.len() >= self.max_per_shard {
            shard.evict(now, self.max_per_shard);
        }
        shard.tat.insert(ip, now.saturating_add(self.interval));
        Ok(())
    }

    /// Clients tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).tat.len())
            .sum()
    }
}

impl Shard {
    /// Makes room: forgets full buckets, then, if that was not enough, the fullest eighth of
    /// the shard (smallest TATs), so that a flood of new clients pays this scan only once per
    /// `max / 8` arrivals.
    fn evict(&mut self, now: u64, max: usize) {
        self.tat.retain(|_, tat| *tat > now);
        if self.tat.len() < max {
            return;
        }
        let mut tats: Vec<u64> = self.tat.values().copied().collect();
        let k = (tats.len() / 8).max(1) - 1;
        let (_, cut, _) = tats.select_nth_unstable(k);
        let cut = *cut;
        let mut budget = k + 1;
        self.tat.retain(|_, tat| {
            if *tat <= cut && budget > 0 {
                budget -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// The request path's check, right after the route is found: None to go on, or the 429
/// answer (counted in the route's metrics).
pub fn check(route: &super::table::Route, ip: IpAddr) -> Option<Response<ProxyBody>> {
    let wait = route.limiter.as_ref()?.check(ip).err()?;
    if let Some(s) = &route.stats {
        s.rate_limited();
    }
    Some(too_many_requests(wait))
}

/// The 429 answer: a short plain body and `Retry-After` in whole seconds, rounded up.
#[cold]
pub fn too_many_requests(wait: Duration) -> Response<ProxyBody> {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = Response::new(
        Full::new(Bytes::from_static(b"429 Too Many Requests\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

type RouteKey = (String, Option<String>, String);

/// The table builder's limiters, one per route, kept across rebuilds while the route and its
/// `rate_limit` stay the same. Only the builder task touches it.
#[derive(Debug, Default)]
pub struct Limiters {
    all: HashMap<RouteKey, Arc<RateLimiter>>,
    used: HashSet<RouteKey>,
}

impl Limiters {
    /// The limiter for `unit`'s route `spec` in the table being built (None: unlimited).
    pub fn get(&mut self, unit: &str, spec: &RouteSpec) -> Option<Arc<RateLimiter>> {
        let config = spec.rate_limit?;
        let key = (unit.to_string(), spec.host.clone(), spec.path.clone());
        self.used.insert(key.clone());
        let l = self
            .all
            .entry(key)
            .and_modify(|l| {
                if l.config != config {
                    *l = Arc::new(RateLimiter::new(config));
                }
            })
            .or_insert_with(|| Arc::new(RateLimiter::new(config)));
        Some(l.clone())
    }

    /// Call after each build: forgets the limiters of routes that are gone.
    pub fn finish_build(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.all.retain(|k, _| used.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn limiter(rps: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit { rps, burst })
    }

    /// burst + 1 requests pass at once, then one per interval; the wait is exact; other
    /// clients have their own bucket.
    #[test]
    fn bucket() {
        let l = limiter(10.0, 2);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = 100 * S;
        for _ in 0..3 {
            assert!(l.check_at(ip, t0).is_ok());
        }
        assert_eq!(l.check_at(ip, t0), Err(Duration::from_millis(100)));
        assert_eq!(
            l.check_at(ip, t0 + 40_000_000),
            Err(Duration::from_millis(60))
        );
        assert!(l.check_at([10, 0, 0, 2].into(), t0).is_ok());
        // One token back after 100 ms, not two.
        assert!(l.check_at(ip, t0 + S / 10).is_ok());
        assert!(l.check_at(ip, t0 + S / 10).is_err());
        // Idle long enough: the whole burst again.
        let later = t0 + 10 * S;
        for _ in 0..3 {
            assert!(l.check_at(ip, later).is_ok());
        }
        assert!(l.check_at(ip, later).is_err());
    }

    /// A fractional rate: rps 0.5 and no burst is one request every 2 s.
    #[test]
    fn fractional_rate() {
        let l = limiter(0.5, 0);
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!(l.check_at(ip, 100 * S).is_ok());
        assert_eq!(
            l.check_at(ip, 100 * S + S / 2),
            Err(Duration::from_millis(1500))
        );
        assert!(l.check_at(ip, 102 * S).is_ok());
    }

    /// Rejected requests do not consume tokens (nginx does not count them either).
    #[test]
    fn rejections_are_free() {
        let l = limiter(1.0, 0);
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!(l.check_at(ip, 100 * S).is_ok());
        for k in 1..100 {
            assert!(l.check_at(ip, 100 * S + k * 1_000_000).is_err());
        }
        assert!(l.check_at(ip, 101 * S).is_ok());
    }

    /// Full buckets are swept out; the cap holds under a flood of new clients, and the
    /// clients that are actually limited survive eviction longest.
    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::with_capacity(RateLimit { rps: 1.0, burst: 5 }, 1600);
        let t0 = 100 * S;
        let hot: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..6 {
            assert!(l.check_at(hot, t0).is_ok());
        }
        for i in 0..20_000u32 {
            l.check_at(IpAddr::from(i.to_be_bytes()), t0 + u64::from(i))
                .unwrap();
            assert!(l.tracked() <= 1600 + SHARDS);
        }
        assert!(
            l.check_at(hot, t0 + 20_000).is_err(),
            "the limited client was kept"
        );
        // After the sweep period every bucket is full again and forgotten.
        let _ = l.check_at(hot, t0 + 20 * S);
        for i in 0..(SHARDS as u32 * 64) {
            let _ = l.check_at(IpAddr::from((i + 1_000_000).to_be_bytes()), t0 + 20 * S);
        }
        assert!(l.tracked() <= SHARDS * 64 + 1, "{}", l.tracked());
    }

    /// Retry-After is whole seconds, rounded up, at least 1.
    #[test]
    fn retry_after() {
        let h = |d| too_many_requests(d).headers()["retry-after"].clone();
        assert_eq!(h(Duration::from_millis(100)), "1");
        assert_eq!(h(Duration::from_millis(1001)), "2");
        assert_eq!(h(Duration::from_secs(3)), "3");
        assert_eq!(too_many_requests(Duration::ZERO).status(), 429);
    }

    /// A rebuilt table keeps a route's limiter (and its buckets) unless the limit changed.
    #[test]
    fn limiters_survive_rebuilds() {
        let mut spec: RouteSpec = serde_json::from_value(serde_json::json!({
            "path": "/api", "policy": "round_robin", "connect_timeout": "1s", "timeout": "1s",
            "max_body": 1024, "max_fails": 1, "fail_timeout": "1s",
        }))
        .unwrap();
        spec.rate_limit = Some(RateLimit { rps: 1.0, burst: 0 });
        let mut ls = Limiters::default();
        let a = ls.get("web", &spec).unwrap();
        ls.finish_build();
        let b = ls.get("web", &spec).unwrap();
        ls.finish_build();
        assert!(Arc::ptr_eq(&a, &b));
        spec.rate_limit = Some(RateLimit { rps: 2.0, burst: 0 });
        let c = ls.get("web", &spec).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        ls.finish_build();
        ls.finish_build();
        assert!(ls.all.is_empty(), "a route that is gone loses its limiter");
        spec.rate_limit = None;
        assert!(ls.get("web", &spec).is_none());
    }
}
