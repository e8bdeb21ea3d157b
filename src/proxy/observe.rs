//! What one request did, recorded into the metrics and the access log once it is answered.
//!
//! `forward` fills a [`Record`] as it goes (route, upstream, upstream status, request id) and
//! `handle` passes the response through [`Record::finish`]. With neither metrics nor an access
//! log configured, a record is a few empty fields and `finish` returns at once: no clock is
//! read and nothing is cloned. Metrics are recorded when the response head is ready; the access
//! log line is sent when the response body is done (or the client left), so its duration and
//! byte count cover the whole response.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap};
use hyper::{Request, Response, StatusCode};

use super::access_log::{AccessLog, Entry, Options};
use super::forward::{BoxError, ProxyBody};
use super::limit::{Limiters, RateLimiter};
use super::table::{Route, Upstream};
use crate::config::ProxyConfig;
use crate::metrics::{Handles, InstanceStats, Metrics, RouteStats};
use crate::unit::RouteSpec;

/// The proxy's observers; each is optional and off by default.
#[derive(Debug, Default, Clone)]
pub struct Observer {
    pub metrics: Option<Arc<Metrics>>,
    pub log: Option<AccessLog>,
}

impl Observer {
    /// The observers `cfg` asks for: the access log when `access_log` is set (its file is
    /// opened here, so a bad path stops chaind at start), metrics when given.
    pub fn new(cfg: &ProxyConfig, metrics: Option<Arc<Metrics>>) -> std::io::Result<Observer> {
        let log = match &cfg.access_log {
            Some(path) => {
                let dropped = metrics
                    .as_ref()
                    .map(|m| m.access_log_dropped.clone())
                    .unwrap_or_default();
                let opts = Options {
                    path: path.clone(),
                    max_size: cfg.access_log_max_size,
                    max_files: cfg.access_log_max_files,
                };
                Some(AccessLog::open(opts, dropped).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?)
            }
            None => None,
        };
        Ok(Observer { metrics, log })
    }

    /// Starts the record of `req`.
    pub fn start<B>(&self, client: IpAddr, req: &Request<B>) -> Record {
        if self.metrics.is_none() && self.log.is_none() {
            return Record::default();
        }
        let log = self.log.as_ref().map(|_| {
            let host = req
                .headers()
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            Box::new(Entry {
                time: SystemTime::now(),
                client,
                method: req.method().clone(),
                host,
                path: req.uri().path().to_string(),
                status: 0,
                bytes: 0,
                duration: Default::default(),
                completed: false,
                unit: None,
                generation: None,
                upstream: None,
                upstream_status: None,
                error: None,
                request_id: header_string(req.headers()),
            })
        });
        Record {
            metrics: self.metrics.clone(),
            start: Some(Instant::now()),
            route: None,
            upstream: None,
            upstream_status: None,
            log: log.map(|entry| (entry, self.log.clone().expect("log is on"))),
        }
    }
}

fn header_string(h: &HeaderMap) -> Option<String> {
    h.get("x-request-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// One request as it goes; see the module docs.
#[derive(Default)]
pub struct Record {
    metrics: Option<Arc<Metrics>>,
    /// None when nothing observes requests.
    start: Option<Instant>,
    route: Option<Arc<RouteStats>>,
    upstream: Option<Arc<Upstream>>,
    upstream_status: Option<u16>,
    log: Option<(Box<Entry>, AccessLog)>,
}

impl Record {
    /// The request matched `route`.
    pub fn route(&mut self, route: &Route) {
        if self.start.is_none() {
            return;
        }
        self.route = route.stats.clone();
        if let Some((e, _)) = &mut self.log {
            e.unit = Some(route.unit.clone());
        }
    }

    /// The request is being sent to `up` (the last call wins after a retry).
    pub fn upstream(&mut self, up: &Arc<Upstream>) {
        if self.start.is_some() {
            self.upstream = Some(up.clone());
        }
    }

    /// The instance answered with `status`.
    pub fn upstream_status(&mut self, status: StatusCode) {
        self.upstream_status = Some(status.as_u16());
    }

    /// The request id forwarded to the instance (the client's, or the one chain set).
    pub fn request_id(&mut self, forwarded: &HeaderMap) {
        if let Some((e, _)) = &mut self.log {
            if e.request_id.is_none() {
                e.request_id = header_string(forwarded);
            }
        }
    }

    /// Records the answer and returns it (with its body wrapped when there is an access log).
    pub fn finish(self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let Some(start) = self.start else {
            return resp;
        };
        let status = resp.status().as_u16();
        if let Some(m) = &self.metrics {
            let elapsed = start.elapsed();
            match &self.route {
                Some(r) => r.record(status, elapsed),
                None if status == 404 => {
                    m.unrouted.inc();
                }
                None => {}
            }
            if let Some(s) = self.upstream.as_ref().and_then(|u| u.stats.as_ref()) {
                s.record(status, elapsed);
            }
        }
        let Some((mut entry, log)) = self.log else {
            return resp;
        };
        entry.status = status;
        entry.upstream_status = self.upstream_status;
        entry.error = error_name(status, self.upstream_status, entry.unit.is_some());
        if let Some(up) = &self.upstream {
            entry.generation = Some(up.generation);
            entry.upstream = Some(up.addr);
        }
        resp.map(|inner| {
            Logged {
                inner,
                entry: Some(entry),
                start,
                log,
            }
            .boxed()
        })
    }
}

/// Per-route state the table builder carries across rebuilds besides round-robin cursors: rate
/// limiters and metric handles. Only the builder task touches it.
#[derive(Debug)]
pub struct Extras {
    limiters: Limiters,
    handles: Option<Handles>,
}

impl Extras {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Extras {
        Extras {
            limiters: Limiters::default(),
            handles: metrics.map(Handles::new),
        }
    }

    /// Instance `index` of `unit` is in the snapshot: its series stay.
    pub fn keep_instance(&mut self, unit: &str, index: u32) {
        if let Some(h) = &mut self.handles {
            h.keep_instance(unit, index);
        }
    }

    pub fn instance(&mut self, unit: &str, index: u32) -> Option<Arc<InstanceStats>> {
        self.handles.as_mut().map(|h| h.instance(unit, index))
    }

    pub fn limiter(&mut self, unit: &str, spec: &RouteSpec) -> Option<Arc<RateLimiter>> {
        self.limiters.get(unit, spec)
    }

    pub fn route(&mut self, unit: &str, spec: &RouteSpec) -> Option<Arc<RouteStats>> {
        let h = self.handles.as_mut()?;
        Some(h.route(unit, spec.host.as_deref(), &spec.path))
    }

    /// Call after each build: forgets what belongs to routes and instances that are gone.
    pub fn finish_build(&mut self) {
        self.limiters.finish_build();
        if let Some(h) = &mut self.handles {
            h.finish_build();
        }
    }
}

/// Why chain answered instead of the instance, for the log's `error` field.
fn error_name(status: u16, upstream_status: Option<u16>, routed: bool) -> Option<&'static str> {
    if upstream_status.is_some() {
        return None;
    }
    Some(match status {
        404 if !routed => "no_route",
        429 => "rate_limited",
        413 => "body_too_large",
        503 => "no_instance",
        502 => "upstream_failed",
        504 => "upstream_timeout",
        400 => "bad_request",
        _ => return None,
    })
}

/// A response body that counts what it sends and logs the request when it is done.
struct Logged {
    inner: ProxyBody,
    entry: Option<Box<Entry>>,
    start: Instant,
    log: AccessLog,
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll {
            if let (Some(data), Some(e)) = (frame.data_ref(), self.entry.as_mut()) {
                e.bytes += data.len() as u64;
            }
        }
        if let (Poll::Ready(None), Some(e)) = (&poll, self.entry.as_mut()) {
            e.completed = true;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(mut e) = self.entry.take() {
            e.duration = self.start.elapsed();
            e.completed |= self.inner.is_end_stream();
            self.log.send(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's `error` names chain's own answers and stays empty for the instance's.
    #[test]
    fn error_names() {
        assert_eq!(error_name(404, None, false), Some("no_route"));
        assert_eq!(error_name(404, Some(404), true), None);
        assert_eq!(error_name(502, Some(502), true), None);
        assert_eq!(error_name(502, None, true), Some("upstream_failed"));
        assert_eq!(error_name(429, None, true), Some("rate_limited"));
        assert_eq!(error_name(301, None, true), None);
    }
}
