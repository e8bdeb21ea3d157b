//! Forwarding one request: route lookup, upstream pick, header rewriting, streaming both ways,
//! one retry for idempotent requests that could not connect, and short plain error pages.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use super::listen::Active;
use super::pool::{Link, SendError};
use super::table::{Client, InflightGuard, Route};
use super::Shared;
use crate::unit::BalancePolicy;

pub type BoxError = Box<dyn StdError + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1), Upgrade last
/// (forwarded only on an upgrade request, which sets it again). Kept as names, so that removing
/// one hashes a known name instead of parsing a string.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Index of `name` in [`HOP_BY_HOP`]: a `match` on the name, about 600 instructions per
/// request cheaper than comparing it with each `HeaderName` of the list (callgrind).
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// The client connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub https: bool,
}

/// Answers one request. `active` counts as activity on the client connection until the
/// response has been sent, body included (see `listen::run`).
/// `peer_ip` is the client's address as a header value ([`peer_ip_header`], made once per
/// connection).
///
/// Everything up to the upstream exchange runs here, before the future exists: the future
/// holds only what that exchange needs (see [`Forward`]). An `async fn` keeps its arguments,
/// the request among them, in every state of its future, and hyper moves the future a few
/// times per request.
pub fn handle(
    shared: Arc<Shared>,
    conn: Conn,
    peer_ip: HeaderValue,
    req: Request<Incoming>,
    active: Active,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
    let mut obs = shared.observe.start(conn.peer.ip(), &req);
    let step = prepare(&shared, conn, peer_ip, req, &mut obs, active);
    async move {
        let resp = match step {
            Ok(Step::Answer(resp)) => resp,
            Ok(Step::Forward(f)) => match send(&shared, f, &mut obs).await {
                Ok(resp) => resp,
                Err(status) => plain(status),
            },
            Err(status) => plain(status),
        };
        Ok(obs.finish(resp))
    }
}

/// What [`prepare`] decided.
enum Step {
    /// chain answers itself (redirect, 429, ACME challenge).
    Answer(Response<ProxyBody>),
    /// The request goes to an instance.
    Forward(Box<Forward>),
}

/// A request ready for its instance, with what its response needs.
struct Forward {
    /// Origin-form URI, forwarded headers, streaming body.
    out: Request<ProxyBody>,
    /// The client's URI, to pick another instance on a retry.
    uri: Uri,
    host: String,
    conn: Conn,
    spec: Arc<crate::unit::RouteSpec>,
    rules: Arc<Vec<(HeaderName, Option<HeaderValue>)>>,
    affinity: Option<String>,
    guard: InflightGuard,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    gzip: bool,
    active: Active,
}

fn prepare(
    shared: &Shared,
    conn: Conn,
    peer_ip: HeaderValue,
    req: Request<Incoming>,
    obs: &mut super::observe::Record,
    active: Active,
) -> Result<Step, StatusCode> {
    // hyper limits the number of header fields on HTTP/1.1 itself; HTTP/2 heads arrive whole
    // (their size bounded by `max_header_list_size`), so their count is checked here.
    if req.version() == Version::HTTP_2 && req.headers().len() > shared.max_headers {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    // ACME HTTP-01 validation, before routes and redirects (a string prefix test otherwise).
    if !conn.https {
        if let Some(resp) = super::acme::answer(&shared.acme, &req) {
            return Ok(Step::Answer(resp));
        }
    }
    let mut req = req;
    let host = request_host(&req);
    // Pick while holding the table; the guard keeps the upstream counted after the table goes.
    let (spec, rules, affinity, guard) = {
        let table = shared.table.load();
        let route = table
            .find(&host, req.uri().path())
            .ok_or(StatusCode::NOT_FOUND)?;
        obs.route(route);
        if let Some(too_many) = super::limit::check(route, conn.peer.ip()) {
            return Ok(Step::Answer(too_many));
        }
        if !conn.https {
            if let Some(location) = https_redirect(shared, route, &host, req.uri()) {
                return Ok(Step::Answer(redirect(req.method(), &location)));
            }
        }
        // Only cookie-affinity routes look at the cookie.
        let affinity = (route.spec.policy == BalancePolicy::Cookie)
            .then(|| affinity_cookie(req.headers()))
            .flatten();
        let client = Client {
            ip: Some(conn.peer.ip()),
            cookie: affinity.as_deref(),
        };
        let Some(up) = route.pick_for(None, client) else {
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        };
        (
            route.spec.clone(),
            route.response_headers.clone(),
            affinity,
            InflightGuard::new(up),
        )
    };
    let upgrade = super::upgrade::requested(req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let gzip = spec.compress
        && req.method() != Method::HEAD
        && super::compress::accepts_gzip(req.headers());

    if let Some(len) = content_length(req.headers()) {
        if len > spec.max_body {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
    }
    let (parts, body) = req.into_parts();
    let uri = upstream_uri(&parts.uri, &spec.path, spec.strip_prefix)?;
    let mut headers = forwarded_headers(parts.headers, conn, peer_ip, &host, parts.uri.authority());
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    obs.request_id(&headers);
    let mut out = Request::new(Limited::new(body, spec.max_body as usize).boxed());
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    Ok(Step::Forward(Box::new(Forward {
        out,
        uri: parts.uri,
        host,
        conn,
        spec,
        rules,
        affinity,
        guard,
        client_upgrade,
        gzip,
        active,
    })))
}

/// The upstream exchange: sends the prepared request, retries once on another instance when
/// it could not be sent at all, and turns the answer into the client's response.
async fn send(
    shared: &Shared,
    f: Box<Forward>,
    obs: &mut super::observe::Record,
) -> Result<Response<ProxyBody>, StatusCode> {
    let Forward {
        mut out,
        uri,
        host,
        conn,
        spec,
        rules,
        affinity,
        mut guard,
        mut client_upgrade,
        gzip,
        active,
    } = *f;
    let mut timer = active.upstream_timer().start(spec.timeout);
    for attempt in 0..2 {
        let up = guard.upstream().clone();
        obs.upstream(&up);
        if attempt > 0 {
            timer.as_mut().reset(deadline(spec.timeout));
        }
        let sent = {
            let mode = super::load::mode();
            let send = super::pool::send(&up, out, spec.connect_timeout, mode);
            tokio::pin!(send);
            std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Ok(r)),
                Poll::Pending => timer.as_mut().poll(cx).map(Err),
            })
            .await
        };
        match sent {
            Err(()) => {
                up.record_failure(&spec);
                return Err(StatusCode::GATEWAY_TIMEOUT);
            }
            Ok(Ok((resp, link))) => {
                up.record_success();
                obs.upstream_status(resp.status());
                active.upstream_timer().keep(timer);
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client) = client_upgrade.take() {
                        link.detach();
                        return Ok(super::upgrade::tunnel(resp, client, guard, empty_body()));
                    }
                }
                let id = up.id;
                let mut resp = response(resp, guard, link, active);
                if gzip {
                    resp = super::compress::maybe_gzip(resp);
                }
                security_headers(resp.headers_mut(), conn.https, &host, &rules);
                if spec.policy == BalancePolicy::Cookie
                    && affinity.as_deref() != Some(format!("{id:x}").as_str())
                {
                    set_affinity_cookie(resp.headers_mut(), id, conn.https);
                }
                return Ok(resp);
            }
            Ok(Err(SendError::Request(e))) => return Err(request_failed(&up, &spec, &e, attempt)),
            Ok(Err(SendError::Connect(e, unsent))) => {
                connect_failed(&up, &spec, &e, attempt);
                // Nothing reached the instance, so any request can go to another instance
                // of the route as the current table has it (once).
                let next = (attempt == 0)
                    .then(|| {
                        shared
                            .table
                            .load()
                            .find(&host, uri.path())
                            .and_then(|r| r.pick(Some(&up)))
                    })
                    .flatten();
                let Some(next) = next else {
                    return Err(StatusCode::BAD_GATEWAY);
                };
                guard = InflightGuard::new(next);
                out = *unsent;
            }
        }
    }
    Err(StatusCode::BAD_GATEWAY)
}

/// The timer of a client connection's upstream exchanges (connect, request, response head:
/// the route's `timeout`), kept from one request to the next.
///
/// `tokio::time::timeout` per request files a new timer in the runtime's timer wheel and takes
/// it out again when the response comes first, which is nearly always. A kept timer is moved
/// to a later deadline with one atomic store instead: tokio leaves it where it is in the wheel
/// and, when that slot comes due, files it again under the new deadline (`Sleep::reset`). About
/// 250 instructions less per request (callgrind), and the wheel's code stays out of the request
/// path. HTTP/1.1 runs one request at a time on a connection, so it keeps one timer; concurrent
/// HTTP/2 streams each take one, and up to [`UpstreamTimer::KEEP`] are kept between them.
#[derive(Default)]
pub struct UpstreamTimer(std::sync::Mutex<Vec<Pin<Box<tokio::time::Sleep>>>>);

impl UpstreamTimer {
    /// Timers kept per connection: HTTP/2 clients rarely have more streams waiting for an
    /// instance at once (h2load -m10, browsers a handful).
    const KEEP: usize = 16;

    /// A kept timer (or a new one), due `timeout` from now.
    fn start(&self, timeout: std::time::Duration) -> Pin<Box<tokio::time::Sleep>> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match kept {
            Some(mut t) => {
                t.as_mut().reset(deadline(timeout));
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline(timeout))),
        }
    }

    /// Gives back a timer, for the connection's next request (dropped when enough are kept).
    fn keep(&self, timer: Pin<Box<tokio::time::Sleep>>) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < Self::KEEP {
            kept.push(timer);
        }
    }
}

/// `timeout` from now; a timeout too long to represent is 30 years (as tokio's own).
fn deadline(timeout: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400 * 365 * 30))
}

/// The instance took the request and failed it (or its body was too large): counted as a
/// failure of the instance unless the body was the problem. Error paths are out of line
/// (`#[cold]`), so that the code of a forwarded request sits in fewer cache lines.
#[cold]
#[inline(never)]
fn request_failed(
    up: &super::table::Upstream,
    spec: &crate::unit::RouteSpec,
    e: &hyper::Error,
    attempt: u32,
) -> StatusCode {
    if body_too_large(e) {
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    up.record_failure(spec);
    tracing::debug!(unit = %up.unit, addr = %up.addr, error = %e, attempt, "upstream request failed");
    StatusCode::BAD_GATEWAY
}

/// No connection to the instance could be made.
#[cold]
#[inline(never)]
fn connect_failed(
    up: &super::table::Upstream,
    spec: &crate::unit::RouteSpec,
    e: &std::io::Error,
    attempt: u32,
) {
    up.record_failure(spec);
    tracing::debug!(unit = %up.unit, addr = %up.addr, error = %e, attempt, "cannot connect to upstream");
}

/// Name of the cookie that pins a client to an instance on `policy = "cookie"` routes.
const AFFINITY_COOKIE: &str = "chain_affinity";

fn affinity_cookie(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == AFFINITY_COOKIE)
        .map(|(_, v)| v.trim().to_string())
}

fn set_affinity_cookie(h: &mut HeaderMap, id: u64, https: bool) {
    let secure = if https { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{AFFINITY_COOKIE}={id:x}; Path=/; HttpOnly; SameSite=Lax{secure}"
    )) {
        h.append(header::SET_COOKIE, v);
    }
}

/// Where to send a plain-HTTP request instead, when its route wants HTTPS: `https_redirect`,
/// or by default when the host has a certificate and an HTTPS listener runs.
fn https_redirect(shared: &Shared, route: &Route, host: &str, uri: &Uri) -> Option<String> {
    let certs = shared.certs.as_ref()?;
    let port = shared.https_port?;
    let wanted = route
        .spec
        .https_redirect
        .unwrap_or_else(|| certs.has_cert(host));
    if !wanted || host.is_empty() {
        return None;
    }
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Some(format!("https://{authority}{path}"))
}

#[cold]
fn redirect(method: &Method, location: &str) -> Response<ProxyBody> {
    // 301 for reads, as nginx does; 308 keeps the method and body of anything else.
    let status = if matches!(*method, Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut r = plain(status);
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Parses a route's `headers` table once per table build.
pub fn parse_header_rules(
    h: &std::collections::BTreeMap<String, String>,
) -> Vec<(HeaderName, Option<HeaderValue>)> {
    h.iter()
        .filter_map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes()).ok()?;
            let value = if v.is_empty() {
                None
            } else {
                Some(HeaderValue::from_str(v).ok()?)
            };
            Some((name, value))
        })
        .collect()
}

/// chain's defaults (when the app did not set them), then the route's own rules.
fn security_headers(
    h: &mut HeaderMap,
    https: bool,
    host: &str,
    rules: &[(HeaderName, Option<HeaderValue>)],
) {
    h.entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    h.entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("SAMEORIGIN"));
    // HSTS on HTTPS only, and never for localhost or an IP address: pinning those to HTTPS
    // in a browser outlives any one app.
    if https
        && host != "localhost"
        && host.parse::<std::net::IpAddr>().is_err()
        && !host.starts_with('[')
    {
        h.entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(HeaderValue::from_static("max-age=31536000"));
    }
    for (name, value) in rules {
        match value {
            Some(v) => {
                h.insert(name.clone(), v.clone());
            }
            None => {
                h.remove(name);
            }
        }
    }
}

fn response(
    resp: Response<Incoming>,
    guard: InflightGuard,
    link: Link,
    active: Active,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let mut body = Guarded {
        inner: body,
        guard: Some(guard),
        link: Some(link),
        _active: active,
    };
    // hyper does not poll a body that says it is empty (HEAD, 204, 304, Content-Length: 0).
    if body.inner.is_end_stream() {
        body.done();
    }
    let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
    Response::from_parts(parts, body)
}

/// A response body that keeps the upstream's in-flight count until it is fully sent (or the
/// client goes away), and then gives its connection back to the pool. When the request
/// borrowed its connection (see `pool`), the body drives it while the client reads.
struct Guarded {
    inner: Incoming,
    guard: Option<InflightGuard>,
    /// The upstream connection, released once the body has been read to its end; dropped
    /// (and so closed) when the body is not read to the end.
    link: Option<Link>,
    /// Keeps the client connection from looking idle while the body streams.
    _active: Active,
}

impl Guarded {
    fn done(&mut self) {
        if let (Some(guard), Some(link)) = (self.guard.take(), self.link.take()) {
            super::pool::release(guard.upstream(), link);
        }
    }

    /// The next frame of the body, driving a borrowed connection for it.
    fn next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.link.as_mut() {
            Some(link) => link.poll_frame(&mut self.inner, cx),
            None => Pin::new(&mut self.inner).poll_frame(cx),
        }
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = self.next(cx);
        match &poll {
            Poll::Ready(None) => self.done(),
            // With a Content-Length, hyper stops polling once the body says it has ended.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.done(),
            Poll::Ready(Some(Err(_))) => {
                self.guard = None;
                self.link = None;
            }
            _ => {}
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

/// The request's host name, lowercase, without port or trailing dot ("" when none is given).
fn request_host(req: &Request<Incoming>) -> String {
    let raw = req
        .uri()
        .host()
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
        .unwrap_or_default();
    // Strip the port (IPv6 literals keep their brackets). A byte scan: a host is short, and
    // `str::rfind` sets up a searcher each time.
    let host = match raw.bytes().rposition(|b| b == b':') {
        Some(i) if !raw.as_bytes()[i..].contains(&b']') => &raw[..i],
        _ => raw,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The origin-form URI sent to the instance: the request's path and query, without the route
/// prefix when the route strips it (no copy when it does not).
fn upstream_uri(uri: &Uri, prefix: &str, strip: bool) -> Result<Uri, StatusCode> {
    if !strip || prefix == "/" {
        return Ok(match uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        });
    }
    rewrite_path(uri, prefix)
        .parse()
        .map_err(|_| StatusCode::BAD_REQUEST)
}

fn rewrite_path(uri: &Uri, prefix: &str) -> String {
    let path = uri.path();
    let rest = path
        .strip_prefix(prefix.trim_end_matches('/'))
        .unwrap_or(path);
    let path = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names, noting which hop-by-hop headers are there: most messages carry
    // one of them at most (many servers and browsers send `Connection: keep-alive` on every
    // message), and removing a name costs a hash and a probe.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for name in h.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // Headers named in Connection are hop-by-hop too. Its usual tokens (close, keep-alive,
    // upgrade) name no other header, or one already found above. One lookup reads and removes
    // the Connection lines (many responses carry one), and the list of other names stays
    // empty, so unallocated, unless a token names another header.
    if present[0] {
        present[0] = false;
        let mut named: Vec<HeaderName> = Vec::new();
        if let Entry::Occupied(e) = h.entry(header::CONNECTION) {
            for v in e.remove_entry_mult().1 {
                let tokens = v.to_str().into_iter().flat_map(|v| v.split(','));
                named.extend(
                    tokens
                        .map(str::trim)
                        .filter(|t| !names_no_other_header(t))
                        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()),
                );
            }
        }
        for n in named {
            h.remove(n);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        h.remove(name);
    }
}

/// A Connection token that names no header beyond the hop-by-hop ones: close, or one of
/// [`HOP_BY_HOP`] (tokens are case-insensitive; the usual spellings are tested first).
fn names_no_other_header(token: &str) -> bool {
    matches!(
        token,
        "keep-alive" | "Keep-Alive" | "close" | "Close" | "upgrade" | "Upgrade"
    ) || token.eq_ignore_ascii_case("close")
        || HOP_BY_HOP
            .iter()
            .any(|h| token.eq_ignore_ascii_case(h.as_str()))
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's address as the value of X-Forwarded-For (formatted once per connection, not per
/// request).
pub fn peer_ip_header(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
        .expect("an IP address is a valid header value")
}

fn forwarded_headers(
    mut h: HeaderMap,
    conn: Conn,
    peer_ip: HeaderValue,
    host: &str,
    authority: Option<&hyper::http::uri::Authority>,
) -> HeaderMap {
    strip_hop_by_hop(&mut h);
    // One lookup per header where it may already be there (`entry`), not a test then a write.
    // HTTP/2 clients send no Host header, only :authority; the app gets it as Host.
    let host_header = match h.entry(header::HOST) {
        Entry::Occupied(e) => Some(e.get().clone()),
        Entry::Vacant(e) => authority
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .map(|v| e.insert(v).clone()),
    };
    match h.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut e) => {
            // A previous value that is not text is replaced by the client's address.
            let v = e
                .get()
                .to_str()
                .ok()
                .and_then(|prev| {
                    let joined = format!("{prev}, {}", conn.peer.ip());
                    HeaderValue::from_maybe_shared(Bytes::from(joined)).ok()
                })
                .unwrap_or(peer_ip);
            e.insert(v);
        }
        Entry::Vacant(e) => {
            e.insert(peer_ip);
        }
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.https { "https" } else { "http" }),
    );
    // Usually the Host header is the host already (lowercase, no port): share its bytes.
    let forwarded_host = match host_header {
        Some(v) if v.as_bytes() == host.as_bytes() => Some(v),
        _ => HeaderValue::from_str(host).ok(),
    };
    if let Some(v) = forwarded_host {
        h.insert(X_FORWARDED_HOST.clone(), v);
    }
    h.entry(&X_REQUEST_ID).or_insert_with(request_id);
    h
}

/// A fresh request id in hex: 64 bits from a per-thread SplitMix64 stream seeded at random,
/// and the thread's 32-bit request count. Unique, not secret; no system call and no shared
/// counter per request (seeding from the clock and the pid each time cost a `getpid`).
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    thread_local! {
        static STREAM: std::cell::Cell<(u64, u32)> =
            std::cell::Cell::new((crate::store::random_u64(), 0));
    }
    let n = STREAM.with(|s| {
        let (x, seq) = s.get();
        let x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set((x, seq.wrapping_add(1)));
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (u128::from(z ^ (z >> 31)) << 32) | u128::from(seq)
    });
    let mut buf = [0u8; 24];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (4 * (23 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

fn body_too_large(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}

fn empty_body() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// Short plain error pages: the status line and nothing an attacker can use.
#[cold]
pub fn plain(status: StatusCode) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request ids are 24 hex digits and do not repeat, within a thread or across threads.
    #[test]
    fn request_ids_are_unique() {
        let batch = || (0..20_000).map(|_| request_id()).collect::<Vec<_>>();
        let other = std::thread::spawn(batch);
        let mut ids = batch();
        ids.extend(other.join().unwrap());
        assert!(ids
            .iter()
            .all(|v| v.len() == 24 && v.as_bytes().iter().all(u8::is_ascii_hexdigit)));
        let n = ids.len();
        ids.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        ids.dedup();
        assert_eq!(ids.len(), n);
    }

    /// strip_prefix removes the route prefix and keeps the query.
    #[test]
    fn path_rewriting() {
        let uri: Uri = "/api/users?id=1".parse().unwrap();
        assert_eq!(upstream_uri(&uri, "/api", true).unwrap(), "/users?id=1");
        assert_eq!(upstream_uri(&uri, "/api/", true).unwrap(), "/users?id=1");
        assert_eq!(
            upstream_uri(&uri, "/api", false).unwrap(),
            "/api/users?id=1"
        );
        let exact: Uri = "/api".parse().unwrap();
        assert_eq!(upstream_uri(&exact, "/api", true).unwrap(), "/");
        let absolute: Uri = "http://example.com/a?b=c".parse().unwrap();
        assert_eq!(upstream_uri(&absolute, "/", true).unwrap(), "/a?b=c");
    }

    /// The name match and the list agree.
    #[test]
    fn hop_by_hop_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("host"), None);
    }

    /// Only hop-by-hop headers and the ones Connection names go; everything else stays.
    #[test]
    fn hop_by_hop_stripping() {
        type Headers = &'static [(&'static str, &'static str)];
        let cases: &[(Headers, &[&str])] = &[
            // (headers in, names expected out)
            (
                &[("content-type", "text/plain"), ("date", "x")],
                &["content-type", "date"],
            ),
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("server", "n"),
                ],
                &["server"],
            ),
            (
                &[("connection", "close"), ("content-length", "2")],
                &["content-length"],
            ),
            (
                &[
                    ("connection", "Upgrade, X-Trace"),
                    ("upgrade", "websocket"),
                    ("x-trace", "1"),
                ],
                &[],
            ),
            // Connection names hop-by-hop headers that are absent: nothing else goes.
            (
                &[("connection", "te, trailer"), ("accept", "*/*")],
                &["accept"],
            ),
            // Two Connection lines; tokens from both count.
            (
                &[
                    ("connection", "a"),
                    ("connection", " B "),
                    ("a", "1"),
                    ("b", "2"),
                    ("c", "3"),
                ],
                &["c"],
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("te", "trailers"),
                    ("trailer", "x"),
                ],
                &[],
            ),
            (
                &[
                    ("proxy-authorization", "x"),
                    ("proxy-connection", "y"),
                    ("via", "1.1"),
                ],
                &["via"],
            ),
        ];
        for (input, want) in cases {
            let mut h = HeaderMap::new();
            for (k, v) in *input {
                h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            strip_hop_by_hop(&mut h);
            let mut got: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            got.sort_unstable();
            let mut want = want.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "input {input:?}");
        }
    }

    /// Hop-by-hop headers, and the ones named in Connection, are dropped; X-Forwarded-* set.
    #[test]
    fn headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let conn = Conn {
            peer: "192.0.2.7:5000".parse().unwrap(),
            https: true,
        };
        let authority = "example.com".parse().unwrap();
        let ip = peer_ip_header(conn.peer.ip());
        let out = forwarded_headers(h, conn, ip, "example.com", Some(&authority));
        assert!(
            out.get("x-secret").is_none()
                && out.get("connection").is_none()
                && out.get("keep-alive").is_none()
        );
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out["x-forwarded-host"], "example.com");
        assert_eq!(out["accept"], "*/*");
        assert_eq!(out["x-request-id"].len(), 24);
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["host"], "example.com");

        // Without one from the client, X-Forwarded-For is the client's address alone.
        let v6 = Conn {
            peer: "[2001:db8::1]:5000".parse().unwrap(),
            https: false,
        };
        let ip = peer_ip_header(v6.peer.ip());
        let out = forwarded_headers(HeaderMap::new(), v6, ip, "example.com", None);
        assert_eq!(out["x-forwarded-for"], "2001:db8::1");
        assert_eq!(out["x-forwarded-proto"], "http");

        // A client's X-Forwarded-For that is not text, and its own X-Request-Id, over two
        // lines: the address replaces the former, the latter is kept.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        h.insert("host", HeaderValue::from_static("Example.com:8080"));
        let ip = peer_ip_header(conn.peer.ip());
        let out = forwarded_headers(h, conn, ip, "example.com", None);
        let xff: Vec<_> = out.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["192.0.2.7"]);
        assert_eq!(out["x-request-id"], "abc");
        assert_eq!(out["host"], "Example.com:8080");
        assert_eq!(out["x-forwarded-host"], "example.com");
    }
}
