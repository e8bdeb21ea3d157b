//! The API server: HTTP/1.1 on a Unix socket, JSON bodies, NDJSON streams.
//!
//! It routes requests to a [`ControlPlane`] and owns nothing else. Every mutating call
//! (anything but GET) is checked against the caller's credentials from SO_PEERCRED: root, the
//! daemon's own uid, or members of the `chain` group pass; everyone else gets 403 `forbidden`.
//! Internal errors are mapped to [`ApiError`] codes here; `Debug` output never crosses the socket.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::wire::*;

type Body = BoxBody<Bytes, Infallible>;

/// What the server needs from the daemon. Reads are synchronous (served from snapshots);
/// commands go to the supervisor and may wait.
pub trait ControlPlane: Clone + Send + Sync + 'static {
    fn version(&self) -> VersionInfo;
    fn instances(&self) -> Vec<InstanceInfo>;
    fn units(&self) -> Vec<UnitSummary>;
    fn unit_status(&self, name: &str) -> Result<UnitStatus, ApiError>;
    /// The resolved spec as JSON (`chainctl inspect`).
    fn unit_spec(&self, name: &str) -> Result<serde_json::Value, ApiError>;
    fn apply(
        &self,
        req: ApplyRequest,
    ) -> impl Future<Output = Result<ApplyResult, ApiError>> + Send;
    fn unit_action(
        &self,
        name: &str,
        action: UnitAction,
        wait: bool,
        caller: Option<u32>,
    ) -> impl Future<Output = Result<ActionResult, ApiError>> + Send;
    fn deploy(
        &self,
        name: &str,
        req: DeployRequest,
        wait: bool,
        caller: Option<u32>,
    ) -> impl Future<Output = Result<ActionResult, ApiError>> + Send;
    fn rollback(
        &self,
        name: &str,
        req: RollbackRequest,
        wait: bool,
        caller: Option<u32>,
    ) -> impl Future<Output = Result<ActionResult, ApiError>> + Send;
    /// The newest `n` deploys of a unit (`chainctl history`).
    fn history(&self, name: &str, n: usize) -> Result<Vec<DeployInfo>, ApiError>;
    /// What the next deploy of a unit changes (`chainctl diff`).
    fn diff(&self, name: &str) -> Result<DiffInfo, ApiError>;
    fn events(&self, n: usize, unit: Option<&str>) -> Result<Vec<EventInfo>, ApiError>;
    fn subscribe_events(&self) -> broadcast::Receiver<EventInfo>;
    /// Directory holding `{unit}.log` files.
    fn logs_dir(&self) -> PathBuf;
    fn has_unit(&self, name: &str) -> bool;
    /// The proxy's routes (empty without a proxy).
    fn routes(&self) -> Vec<RouteInfo>;
    /// Removes containers with chain's labels that no instance owns.
    fn gc(&self, req: GcRequest) -> impl Future<Output = Result<GcResult, ApiError>> + Send;
}

/// Who may call mutating endpoints.
#[derive(Debug, Clone)]
pub struct Access {
    pub daemon_uid: u32,
    pub group: Option<u32>,
}

impl Access {
    pub fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.daemon_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        gid == group || pid.is_some_and(|p| chain_agent::host::process_groups(p).contains(&group))
    }
}

/// Accepts connections until `stop_accepting` is cancelled; open connections (streams, waiting
/// calls) are served until `close` is cancelled. Each connection runs on its own task.
pub async fn serve<C: ControlPlane>(
    listener: UnixListener,
    cp: C,
    access: Access,
    stop_accepting: CancellationToken,
    close: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop_accepting.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed");
                    continue;
                }
            },
        };
        let cred = stream.peer_cred().ok();
        let cp = cp.clone();
        let access = access.clone();
        let stop = close.clone();
        tokio::spawn(async move {
            let allowed = cred.is_some_and(|c| access.allows(c.uid(), c.gid(), c.pid()));
            let caller = cred.map(|c| c.uid());
            let svc = hyper::service::service_fn(move |req| {
                let cp = cp.clone();
                async move { Ok::<_, Infallible>(route(cp, req, allowed, caller).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "api connection ended");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn route<C: ControlPlane>(
    cp: C,
    req: Request<Incoming>,
    allowed: bool,
    caller: Option<u32>,
) -> Response<Body> {
    match handle(cp, req, allowed, caller).await {
        Ok(r) => r,
        Err(e) => error(e),
    }
}

async fn handle<C: ControlPlane>(
    cp: C,
    req: Request<Incoming>,
    allowed: bool,
    caller: Option<u32>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let Some(rest) = path.strip_prefix(API_PREFIX) else {
        return Err(not_found(&path));
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    // HEAD is answered as GET (hyper drops the body).
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    if method != Method::GET && !allowed {
        return Err(ApiError {
            code: ErrorCode::Forbidden,
            message: "this call changes state: allowed for root, the daemon's user and members of the chain group".into(),
        });
    }
    match (&method, segs.as_slice()) {
        (&Method::GET, ["version"]) => json(&cp.version()),
        (&Method::GET, ["instances"]) => json(&cp.instances()),
        (&Method::GET, ["routes"]) => json(&cp.routes()),
        (&Method::GET, ["units"]) => json(&cp.units()),
        (&Method::GET, ["units", name]) => json(&cp.unit_status(name)?),
        (&Method::GET, ["units", name, "spec"]) => json(&cp.unit_spec(name)?),
        (&Method::GET, ["units", name, "logs"]) => {
            if !cp.has_unit(name) {
                return Err(unit_not_found(name));
            }
            logs(&cp, name, &query).await
        }
        (&Method::POST, ["apply"]) => {
            let body = read_body(req).await?;
            let apply: ApplyRequest = if body.is_empty() {
                ApplyRequest::default()
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| bad_request(format!("apply body: {e}")))?
            };
            let result = cp.apply(apply).await?;
            json(&result)
        }
        (&Method::POST, ["units", name, "deploy"]) => {
            let wait = query.flag("wait")?.unwrap_or(false);
            let body = read_body(req).await?;
            let r: DeployRequest = if body.is_empty() {
                DeployRequest::default()
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| bad_request(format!("deploy body: {e}")))?
            };
            json(&cp.deploy(name, r, wait, caller).await?)
        }
        (&Method::POST, ["units", name, "rollback"]) => {
            let wait = query.flag("wait")?.unwrap_or(false);
            let body = read_body(req).await?;
            let r: RollbackRequest = if body.is_empty() {
                RollbackRequest::default()
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| bad_request(format!("rollback body: {e}")))?
            };
            json(&cp.rollback(name, r, wait, caller).await?)
        }
        (&Method::POST, ["units", name, action]) => {
            let Some(action) = UnitAction::parse(action) else {
                return Err(not_found(&path));
            };
            let wait = query.flag("wait")?.unwrap_or(false);
            json(&cp.unit_action(name, action, wait, caller).await?)
        }
        (&Method::POST, ["gc"]) => {
            let body = read_body(req).await?;
            let r: GcRequest = if body.is_empty() {
                GcRequest::default()
            } else {
                serde_json::from_slice(&body).map_err(|e| bad_request(format!("gc body: {e}")))?
            };
            json(&cp.gc(r).await?)
        }
        (&Method::GET, ["units", name, "history"]) => {
            let n = query.usize("lines")?.unwrap_or(20);
            json(&cp.history(name, n)?)
        }
        (&Method::GET, ["units", name, "diff"]) => json(&cp.diff(name)?),
        (&Method::GET, ["events"]) => events(&cp, &query),
        (
            _,
            ["version" | "instances" | "events" | "apply" | "routes"]
            | ["units"]
            | ["units", _]
            | ["units", _, "spec" | "logs" | "start" | "stop" | "restart" | "reload" | "deploy" | "rollback"
            | "history" | "diff"],
        ) => Err(ApiError {
            code: ErrorCode::MethodNotAllowed,
            message: format!("{method} is not allowed on {path}"),
        }),
        _ => Err(not_found(&path)),
    }
}

async fn logs<C: ControlPlane>(cp: &C, unit: &str, q: &Query) -> Result<Response<Body>, ApiError> {
    let n = q.usize("lines")?.unwrap_or(50);
    let follow = q.flag("follow")?.unwrap_or(false);
    let instance = q.get("instance").map(str::to_string);
    let dir = cp.logs_dir();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    // The follower starts exactly where the tail ends: nothing lost, nothing repeated.
    let (tail, follower) = {
        let (dir, name, instance) = (dir.clone(), unit.to_string(), instance.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            if follow {
                let (lines, rx) = chain_agent::logs::tail_and_follow(&dir, &name, n, instance)?;
                Ok((lines, Some(rx)))
            } else {
                Ok((
                    chain_agent::logs::tail(&dir, &name, n, instance.as_deref())?,
                    None,
                ))
            }
        })
        .await
        .map_err(|e| internal(format!("log reader: {e}")))?
        .map_err(|e| internal(format!("reading logs of {unit}: {e}")))?
    };
    let unit = unit.to_string();
    tokio::spawn(async move {
        for line in tail {
            if tx.send(log_line_json(&unit, &line)).await.is_err() {
                return;
            }
        }
        let Some(mut follower) = follower else { return };
        loop {
            tokio::select! {
                line = follower.recv() => match line {
                    Some(line) => if tx.send(log_line_json(&unit, &line)).await.is_err() { return },
                    None => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(ndjson(rx))
}

fn log_line_json(unit: &str, raw: &str) -> Bytes {
    let line = match chain_agent::logs::parse_line(raw) {
        Some(l) => LogLine {
            time: l.ts,
            unit: unit.to_string(),
            instance: l.instance,
            stream: l.stream,
            text: l.text,
        },
        None => LogLine {
            time: String::new(),
            unit: unit.to_string(),
            instance: String::new(),
            stream: "out".into(),
            text: raw.to_string(),
        },
    };
    ndjson_line(&line)
}

fn events<C: ControlPlane>(cp: &C, q: &Query) -> Result<Response<Body>, ApiError> {
    let n = q.usize("lines")?.unwrap_or(50);
    let follow = q.flag("follow")?.unwrap_or(false);
    let unit = q.get("unit").map(str::to_string);
    // Subscribe before reading history so nothing falls in between; dedupe by sequence.
    let mut sub = follow.then(|| cp.subscribe_events());
    let recent = cp.events(n, unit.as_deref())?;
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let mut last = 0;
        for ev in recent {
            last = ev.seq;
            if tx.send(ndjson_line(&ev)).await.is_err() {
                return;
            }
        }
        let Some(sub) = sub.as_mut() else { return };
        loop {
            tokio::select! {
                ev = sub.recv() => match ev {
                    Ok(ev) => {
                        if ev.seq <= last || unit.as_ref().is_some_and(|u| *u != ev.unit) {
                            continue;
                        }
                        last = ev.seq;
                        if tx.send(ndjson_line(&ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "event follower lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(ndjson(rx))
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    const LIMIT: usize = 1 << 20;
    let body = http_body_util::Limited::new(req.into_body(), LIMIT);
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| bad_request(format!("request body: {e}")))
}

fn json<T: Serialize>(v: &T) -> Result<Response<Body>, ApiError> {
    let body = serde_json::to_vec(v).map_err(|e| internal(format!("encoding response: {e}")))?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid"))
}

fn ndjson_line<T: Serialize>(v: &T) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn ndjson(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(ChannelBody { rx }.boxed())
        .expect("static response parts are valid")
}

fn error(e: ApiError) -> Response<Body> {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&ErrorBody { error: e }).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

/// A streaming body fed by a channel; ends when the sender is dropped.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub fn unit_not_found(name: &str) -> ApiError {
    ApiError {
        code: ErrorCode::UnitNotFound,
        message: format!("no unit named {name}"),
    }
}

fn not_found(path: &str) -> ApiError {
    ApiError {
        code: ErrorCode::NotFound,
        message: format!("no endpoint {path}"),
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError {
        code: ErrorCode::BadRequest,
        message,
    }
}

fn internal(message: String) -> ApiError {
    ApiError {
        code: ErrorCode::Internal,
        message,
    }
}

/// Decoded query string (`a=1&b=x`), percent-decoding included.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Query {
        Query(
            q.split('&')
                .filter(|s| !s.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("" | "1" | "true") => Ok(Some(true)),
            Some("0" | "false") => Ok(Some(false)),
            Some(v) => Err(bad_request(format!(
                "query parameter {key}={v}: expected true or false"
            ))),
        }
    }

    fn usize(&self, key: &str) -> Result<Option<usize>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    bad_request(format!("query parameter {key}={v}: expected a number"))
                })
            })
            .transpose()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query parsing: flags, numbers, percent-decoding, and errors for bad values.
    #[test]
    fn query_parsing() {
        let q = Query::parse("follow=1&lines=20&instance=0&x=a%20b&wait");
        assert_eq!(q.flag("follow").unwrap(), Some(true));
        assert_eq!(q.flag("wait").unwrap(), Some(true));
        assert_eq!(q.usize("lines").unwrap(), Some(20));
        assert_eq!(q.get("x"), Some("a b"));
        assert!(Query::parse("lines=x").usize("lines").is_err());
        assert!(Query::parse("follow=maybe").flag("follow").is_err());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    /// Root, the daemon's uid and chain group members may mutate; others may not.
    #[test]
    fn access_rules() {
        let a = Access {
            daemon_uid: 1000,
            group: Some(500),
        };
        assert!(a.allows(0, 0, None));
        assert!(a.allows(1000, 1000, None));
        assert!(a.allows(1001, 500, None));
        assert!(!a.allows(65534, 65534, None));
        let none = Access {
            daemon_uid: 1000,
            group: None,
        };
        assert!(!none.allows(1001, 500, None));
    }
}
