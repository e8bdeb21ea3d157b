//! Every metric name chaind exports, in one place (docs/metrics.md documents each; a test
//! checks). Names are the ones a scrape shows: counters carry their `_total` suffix here, and
//! the registry strips it on registration because the OpenMetrics encoder adds it back.

/// Requests per route, by status class (`1xx` .. `5xx`), including the ones chaind answered
/// itself (429, 413, 502, 503, 504).
pub const HTTP_REQUESTS: &str = "chain_http_requests_total";
/// Time from a request's arrival to its response head, per route.
pub const HTTP_REQUEST_DURATION: &str = "chain_http_request_duration_seconds";
/// Requests refused with 429 by the route's rate limit.
pub const HTTP_RATE_LIMITED: &str = "chain_http_rate_limited_total";
/// Requests that matched no route (404).
pub const HTTP_UNROUTED: &str = "chain_http_unrouted_requests_total";
/// Requests per instance, by status class, for requests forwarded to it.
pub const UPSTREAM_REQUESTS: &str = "chain_upstream_requests_total";
/// Time from a request's arrival to its response head, per instance.
pub const UPSTREAM_REQUEST_DURATION: &str = "chain_upstream_request_duration_seconds";
/// Requests forwarded to an instance whose response has not been fully sent.
pub const UPSTREAM_INFLIGHT: &str = "chain_upstream_inflight_requests";
/// Instances per unit and state, from the supervisor's latest snapshot.
pub const INSTANCES: &str = "chain_instances";
/// Restarts of a unit's instances seen since chaind started.
pub const RESTARTS: &str = "chain_restarts_total";
/// Access-log lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED: &str = "chain_access_log_dropped_total";

/// All of the above, for the documentation test.
pub const ALL: &[&str] = &[
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    HTTP_RATE_LIMITED,
    HTTP_UNROUTED,
    UPSTREAM_REQUESTS,
    UPSTREAM_REQUEST_DURATION,
    UPSTREAM_INFLIGHT,
    INSTANCES,
    RESTARTS,
    ACCESS_LOG_DROPPED,
];
