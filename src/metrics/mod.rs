//! chaind's metrics: the registry, the per-route and per-instance handles the proxy records
//! into, the supervisor-derived gauges, and the `/metrics` exporter on the admin listener.
//!
//! Every name is in [`names`]; docs/metrics.md documents each (a test checks).
//! Invariants:
//! - The request path never looks a series up by its labels: the table builder resolves the
//!   handles of each route and instance once ([`Handles`]) and the request path only bumps
//!   atomics (and one short histogram mutex per observation).
//! - Supervisor-derived metrics are read from snapshots ([`instances::follow`]); nothing here
//!   calls the supervisor, and nothing here is on the control plane's path.
//! - Metrics exist only when the admin listener is configured: without it the proxy holds no
//!   handles and records nothing.

pub mod export;
pub mod instances;
pub mod names;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets, in seconds: 100 µs to 10 s, about three per decade.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Status classes, the values of the `class` label.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    unit: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteClassLabels {
    unit: String,
    route: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    unit: String,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceClassLabels {
    unit: String,
    instance: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UnitLabels {
    pub(crate) unit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UnitStateLabels {
    pub(crate) unit: String,
    pub(crate) state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The registry and every family in it. Built once by the daemon; shared by the proxy (through
/// [`Handles`]), the snapshot follower and the exporter.
pub struct Metrics {
    registry: Registry,
    route_requests: Family<RouteClassLabels, Counter>,
    route_duration: HistogramFamily<RouteLabels>,
    route_limited: Family<RouteLabels, Counter>,
    /// Requests no route matched.
    pub unrouted: Counter,
    upstream_requests: Family<InstanceClassLabels, Counter>,
    upstream_duration: HistogramFamily<InstanceLabels>,
    upstream_inflight: Family<InstanceLabels, Gauge>,
    pub(crate) instances: Family<UnitStateLabels, Gauge>,
    pub(crate) restarts: Family<UnitLabels, Counter>,
    /// Access-log lines dropped because the writer fell behind (shared with the access log).
    pub access_log_dropped: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Registers `metric` under `name` as it appears in a scrape (counters lose `_total`, which
/// the encoder adds back).
fn register<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    metric: &M,
) {
    let base = name.strip_suffix("_total").unwrap_or(name);
    r.register(base, help, metric.clone());
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            route_requests: Family::default(),
            route_duration: Family::new_with_constructor(latency_histogram),
            route_limited: Family::default(),
            unrouted: Counter::default(),
            upstream_requests: Family::default(),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            upstream_inflight: Family::default(),
            instances: Family::default(),
            restarts: Family::default(),
            access_log_dropped: Counter::default(),
            registry: Registry::default(),
        };
        use names::*;
        let r = &mut registry;
        register(
            r,
            HTTP_REQUESTS,
            "Requests per route, by status class",
            &m.route_requests,
        );
        register(
            r,
            HTTP_REQUEST_DURATION,
            "Time from a request's arrival to its response head, per route",
            &m.route_duration,
        );
        register(
            r,
            HTTP_RATE_LIMITED,
            "Requests refused with 429 by the route's rate limit",
            &m.route_limited,
        );
        register(
            r,
            HTTP_UNROUTED,
            "Requests that matched no route",
            &m.unrouted,
        );
        register(
            r,
            UPSTREAM_REQUESTS,
            "Requests forwarded to an instance, by status class",
            &m.upstream_requests,
        );
        register(
            r,
            UPSTREAM_REQUEST_DURATION,
            "Time from a request's arrival to its response head, per instance",
            &m.upstream_duration,
        );
        register(
            r,
            UPSTREAM_INFLIGHT,
            "Requests forwarded to an instance and not fully answered yet",
            &m.upstream_inflight,
        );
        register(r, INSTANCES, "Instances per unit and state", &m.instances);
        register(
            r,
            RESTARTS,
            "Restarts of a unit's instances seen since chaind started",
            &m.restarts,
        );
        register(
            r,
            ACCESS_LOG_DROPPED,
            "Access-log lines dropped because the writer fell behind",
            &m.access_log_dropped,
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Index into [`CLASSES`] for a status code (anything odd counts as 5xx).
fn class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One route's series, resolved once per table build.
#[derive(Debug)]
pub struct RouteStats {
    by_class: [Counter; 5],
    duration: Histogram,
    limited: Counter,
}

impl RouteStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.by_class[class(status)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn rate_limited(&self) {
        self.limited.inc();
    }
}

/// One instance's series (unit and instance index, as `chainctl ls` shows them).
#[derive(Debug)]
pub struct InstanceStats {
    by_class: [Counter; 5],
    duration: Histogram,
    /// Incremented and decremented by the proxy's in-flight guard.
    pub inflight: Gauge,
}

impl InstanceStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.by_class[class(status)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The route-table builder's view of the metrics: handles per route and instance, created on
/// first use and kept across rebuilds; the series of routes and instances that disappeared are
/// removed from the registry after each build. Only the builder task touches it.
#[derive(Debug)]
pub struct Handles {
    metrics: Arc<Metrics>,
    routes: HashMap<(String, String), Arc<RouteStats>>,
    instances: HashMap<(String, u32), Arc<InstanceStats>>,
    used_routes: HashSet<(String, String)>,
    used_instances: HashSet<(String, u32)>,
}

impl Handles {
    pub fn new(metrics: Arc<Metrics>) -> Handles {
        Handles {
            metrics,
            routes: HashMap::new(),
            instances: HashMap::new(),
            used_routes: HashSet::new(),
            used_instances: HashSet::new(),
        }
    }

    /// The `route` label: host (if any) and path prefix, e.g. `api.example.com/v1` or `/`.
    pub fn route_label(host: Option<&str>, path: &str) -> String {
        format!("{}{path}", host.unwrap_or(""))
    }

    pub fn route(&mut self, unit: &str, host: Option<&str>, path: &str) -> Arc<RouteStats> {
        let key = (unit.to_string(), Self::route_label(host, path));
        self.used_routes.insert(key.clone());
        let m = &self.metrics;
        self.routes
            .entry(key)
            .or_insert_with_key(|(unit, route)| {
                let by = |class| {
                    m.route_requests.get_or_create_owned(&RouteClassLabels {
                        unit: unit.clone(),
                        route: route.clone(),
                        class,
                    })
                };
                let labels = RouteLabels {
                    unit: unit.clone(),
                    route: route.clone(),
                };
                Arc::new(RouteStats {
                    by_class: CLASSES.map(by),
                    duration: m.route_duration.get_or_create_owned(&labels),
                    limited: m.route_limited.get_or_create_owned(&labels),
                })
            })
            .clone()
    }

    /// Marks instance `index` of `unit` as still present in this build.
    pub fn keep_instance(&mut self, unit: &str, index: u32) {
        self.used_instances.insert((unit.to_string(), index));
    }

    pub fn instance(&mut self, unit: &str, index: u32) -> Arc<InstanceStats> {
        let key = (unit.to_string(), index);
        self.used_instances.insert(key.clone());
        let m = &self.metrics;
        self.instances
            .entry(key)
            .or_insert_with_key(|(unit, index)| {
                let instance = index.to_string();
                let by = |class| {
                    m.upstream_requests
                        .get_or_create_owned(&InstanceClassLabels {
                            unit: unit.clone(),
                            instance: instance.clone(),
                            class,
                        })
                };
                let labels = InstanceLabels {
                    unit: unit.clone(),
                    instance: instance.clone(),
                };
                Arc::new(InstanceStats {
                    by_class: CLASSES.map(by),
                    duration: m.upstream_duration.get_or_create_owned(&labels),
                    inflight: m.upstream_inflight.get_or_create_owned(&labels),
                })
            })
            .clone()
    }

    /// Call after each build: drops the series of routes and instances that are gone. A
    /// request still holding their handles records into detached series, which is harmless.
    pub fn finish_build(&mut self) {
        let m = self.metrics.clone();
        let used = std::mem::take(&mut self.used_routes);
        self.routes.retain(|(unit, route), _| {
            let keep = used.contains(&(unit.clone(), route.clone()));
            if !keep {
                for class in CLASSES {
                    m.route_requests.remove(&RouteClassLabels {
                        unit: unit.clone(),
                        route: route.clone(),
                        class,
                    });
                }
                let labels = RouteLabels {
                    unit: unit.clone(),
                    route: route.clone(),
                };
                m.route_duration.remove(&labels);
                m.route_limited.remove(&labels);
            }
            keep
        });
        let used = std::mem::take(&mut self.used_instances);
        self.instances.retain(|(unit, index), _| {
            let keep = used.contains(&(unit.clone(), *index));
            if !keep {
                let instance = index.to_string();
                for class in CLASSES {
                    m.upstream_requests.remove(&InstanceClassLabels {
                        unit: unit.clone(),
                        instance: instance.clone(),
                        class,
                    });
                }
                let labels = InstanceLabels {
                    unit: unit.clone(),
                    instance,
                };
                m.upstream_duration.remove(&labels);
                m.upstream_inflight.remove(&labels);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handles record into the registry under the documented names and labels, and the series
    /// of a route that disappears are removed.
    #[test]
    fn handles_and_encoding() {
        let m = Metrics::new();
        let mut h = Handles::new(m.clone());
        let r = h.route("web", Some("example.com"), "/api");
        r.record(200, Duration::from_millis(3));
        r.record(503, Duration::from_millis(3));
        r.rate_limited();
        let i = h.instance("web", 1);
        i.record(204, Duration::from_micros(150));
        i.inflight.inc();
        h.finish_build();
        let text = m.encode();
        for line in [
            "chain_http_requests_total{unit=\"web\",route=\"example.com/api\",class=\"2xx\"} 1",
            "chain_http_requests_total{unit=\"web\",route=\"example.com/api\",class=\"5xx\"} 1",
            "chain_http_requests_total{unit=\"web\",route=\"example.com/api\",class=\"1xx\"} 0",
            "chain_http_rate_limited_total{unit=\"web\",route=\"example.com/api\"} 1",
            "chain_http_request_duration_seconds_bucket{le=\"0.005\",unit=\"web\",route=\"example.com/api\"} 2",
            "chain_upstream_requests_total{unit=\"web\",instance=\"1\",class=\"2xx\"} 1",
            "chain_upstream_request_duration_seconds_bucket{le=\"0.00025\",unit=\"web\",instance=\"1\"} 1",
            "chain_upstream_inflight_requests{unit=\"web\",instance=\"1\"} 1",
            "chain_access_log_dropped_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // The same handles come back while the route lives; they go once it is gone.
        assert!(Arc::ptr_eq(
            &r,
            &h.route("web", Some("example.com"), "/api")
        ));
        h.finish_build();
        h.finish_build();
        let text = m.encode();
        assert!(!text.contains("route=\"example.com/api\""), "{text}");
        assert!(!text.contains("instance=\"1\""), "{text}");
    }

    /// Status codes map onto their class; anything out of range counts as a server error.
    #[test]
    fn classes() {
        assert_eq!(
            [101, 200, 304, 429, 502, 600, 0].map(|s| CLASSES[class(s)]),
            ["1xx", "2xx", "3xx", "4xx", "5xx", "5xx", "5xx"]
        );
    }
}
