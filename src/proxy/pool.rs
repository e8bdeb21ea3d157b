//! Upstream connections: each proxy worker keeps its own pool of idle HTTP/1.1 connections to
//! instances, keyed by address.
//!
//! A worker is one thread with its own runtime (see `listen`), so the pool is a thread-local
//! map with no lock, and a pooled connection is always driven by the runtime that uses it.
//! A request first tries idle connections, most recently used first; a connection the
//! instance closed meanwhile hands the request back unsent, and the next one is tried. Only
//! then is a new connection opened. A request that could not be sent at all (no connection
//! could be made) comes back to the caller with [`SendError::Connect`], so that it can be sent
//! to another instance without having been copied.
//!
//! The caller gives a connection back with [`release`] once the response body has been read
//! to its end; a connection whose response was not read to the end is dropped, and hyper
//! closes it.
//!
//! Each connection has a task of its own, and who drives the connection depends on how busy
//! the worker is ([`super::load::mode`]):
//! - [`Mode::Batch`], near saturation: the task drives it. A request is handed to it through
//!   hyper's channel and the answer comes back through another. The worker's run queue is
//!   first in, first out, so for a burst of K requests it routes all K, then writes all K to
//!   the instances, reads all K answers, and writes all K back: the same code back to back,
//!   which keeps it in the instruction cache (driving the connection from the request's task
//!   instead costs 5-10 % more CPU per request under full load, docs/benchmarks.md).
//! - [`Mode::Interleave`], with time to spare: the request borrows the connection
//!   ([`Link`]) and drives it from its own task, as the response body does while the client
//!   reads it; the request is written to the instance as soon as it is routed, and the answer
//!   goes back to the client in the task poll that reads it. That is nginx's order of work: in
//!   a burst the instance starts on the first request while the worker reads the next, where
//!   batch order makes the last answer of a burst wait for every stage of every request
//!   before it (on the faster Intel host the paced keep-alive p99 was 1.2x nginx's, and a
//!   runtime that runs a woken task next closed that gap; docs/benchmarks.md).
//!
//! A borrowed connection is polled with a [`Gate`] waker that sends its wake-ups to the
//! borrower, and drops those the borrower causes itself while it hands a request in or takes
//! a body frame out (it drives the connection right after). Released, the connection goes
//! back to its task, which is then woken by whatever the connection waits for; a borrower
//! that drops its link mid-exchange closes the connection, and the task ends.
//!
//! Connections belong to one instance incarnation (`Upstream`), not just to an address: once
//! the instance is retired (draining, or gone from every table) its connections are closed,
//! idle ones by [`prune`] at once, busy ones when they are released. An app that waits for its
//! keep-alive connections to close before it exits (Node's `server.close()` does) is not kept
//! waiting by idle connections the proxy would never use again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::{http1, TrySendError};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::forward::ProxyBody;
use super::load::Mode;
use super::table::Upstream;

/// Idle connections kept per instance and worker (nginx's `keepalive` per worker).
const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// An idle connection unused for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Every this many releases, addresses whose connections are all closed are forgotten
/// (instances that went away).
const PRUNE_EVERY: u32 = 4096;

/// hyper's connection future (with upgrades; its type cannot be named).
type Connection = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// One upstream connection: the handle requests are sent through, and the connection itself
/// (socket, buffers, HTTP/1.1 state), which its task drives unless a request has borrowed it.
pub struct Link {
    sender: http1::SendRequest<ProxyBody>,
    berth: Arc<Berth>,
    /// The connection, while this link's request drives it itself ([`Mode::Interleave`]).
    borrowed: Option<Connection>,
}

/// Where a connection lives between its task and the requests that borrow it.
struct Berth {
    slot: Mutex<Slot>,
    gate: Arc<Gate>,
    /// `gate` as a waker: what a borrower polls the connection with (its task polls it with
    /// the task's own waker).
    waker: Waker,
}

struct Slot {
    /// None while a request has borrowed the connection, and once it has ended.
    conn: Option<Connection>,
    lent: bool,
    /// The connection task's waker.
    task: Option<Waker>,
}

/// The waker a connection is polled with. It passes wake-ups on to whoever drives the
/// connection now (its task, or the request that borrowed it), except while a borrowing
/// request hands something across the connection's channels itself ([`Gate::quietly`]): a
/// request into its queue, a frame out of the response body. Those wake the connection's
/// side, which that same request drives right after anyway; passed on, each would make its
/// task run once more for nothing.
struct Gate {
    muted: AtomicBool,
    target: Mutex<Option<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gate {
    fn quietly<R>(&self, f: impl FnOnce() -> R) -> R {
        self.muted.store(true, Ordering::Relaxed);
        let r = f();
        self.muted.store(false, Ordering::Relaxed);
        r
    }

    /// Wakes whoever drives the connection now.
    fn wake_target(&self) {
        if let Some(target) = &*lock(&self.target) {
            target.wake_by_ref();
        }
    }

    fn aim(&self, waker: &Waker) {
        let mut target = lock(&self.target);
        if !target.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *target = Some(waker.clone());
        }
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.muted.load(Ordering::Relaxed) {
            self.wake_target();
        }
    }
}

impl Slot {
    fn wake_task(&self) {
        if let Some(task) = &self.task {
            task.wake_by_ref();
        }
    }
}

impl Berth {
    /// The connection task's poll: drives the connection unless it is lent out; done once the
    /// connection has ended.
    fn run(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = lock(&self.slot);
        if !slot.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            slot.task = Some(cx.waker().clone());
        }
        if slot.lent {
            // A wake-up registered before the connection was lent: the borrower's.
            drop(slot);
            self.gate.wake_target();
            return Poll::Pending;
        }
        // The task's own waker, not the gate's: wake-ups reach the task without a detour.
        // A borrower's first poll registers the gate where it needs it, and one that still
        // reaches the task is passed on above.
        if poll_conn(&mut slot.conn, cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Link {
    /// Takes the connection from its task, to drive it from the request's task. False when it
    /// has ended (or is lent already, which a pooled link never is).
    fn borrow(&mut self) -> bool {
        let mut slot = lock(&self.berth.slot);
        match slot.conn.take() {
            Some(conn) => {
                slot.lent = true;
                self.borrowed = Some(conn);
                true
            }
            None => false,
        }
    }

    /// Hands a borrowed connection back to its task, after polling it once on the task's
    /// behalf (it settles into its idle state, or hands an upgraded connection over).
    fn give_back(&mut self) {
        let Some(conn) = self.borrowed.take() else {
            return;
        };
        let mut slot = lock(&self.berth.slot);
        slot.lent = false;
        match &slot.task {
            Some(task) => self.berth.gate.aim(task),
            None => *lock(&self.berth.gate.target) = None,
        }
        slot.conn = Some(conn);
        if poll_conn(&mut slot.conn, &mut Context::from_waker(&self.berth.waker)) {
            // Ended: the task finds the slot empty and ends too.
            slot.wake_task();
        }
    }

    /// Hands the connection back to its task for good: for a 101 answer, whose upgraded
    /// connection is handed over once the connection has been polled to its end.
    pub fn detach(mut self) {
        self.give_back();
    }

    /// Runs `f`, which hands something to or takes something from the connection, without
    /// the wake-up that causes: the caller drives the connection next (see [`Gate`]).
    fn quietly<R>(&self, f: impl FnOnce() -> R) -> R {
        self.berth.gate.quietly(f)
    }

    /// Whether this request drives the connection itself.
    fn is_borrowed(&self) -> bool {
        self.borrowed.is_some()
    }

    /// Lets a borrowed connection make progress: write the request and its body, read the
    /// response and hand its head and body over. Returns true once the connection has ended
    /// (closed by either side, failed, or handed to an upgrade), or when it is not borrowed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if self.borrowed.is_none() {
            return true;
        }
        self.berth.gate.aim(cx.waker());
        if poll_conn(
            &mut self.borrowed,
            &mut Context::from_waker(&self.berth.waker),
        ) {
            self.end_borrow();
            return true;
        }
        false
    }

    /// The borrowed connection has ended: its task ends too.
    fn end_borrow(&mut self) {
        self.borrowed = None;
        let mut slot = lock(&self.berth.slot);
        slot.lent = false;
        slot.wake_task();
    }

    fn ended(&self) -> bool {
        self.sender.is_closed()
    }

    /// The next frame of `body`, this connection's response body, driving the connection for
    /// it when it is borrowed.
    pub fn poll_frame(
        &mut self,
        body: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<hyper::Result<Frame<Bytes>>>> {
        if !self.is_borrowed() {
            return Pin::new(body).poll_frame(cx);
        }
        // Body data comes only from driving the connection, which happens right here: the
        // body is polled without a waker, and taking a frame (which frees the connection to
        // read the next) wakes nobody, since a poll that finds no frame drives it.
        let quiet = &mut Context::from_waker(Waker::noop());
        if let Poll::Ready(frame) = self.quietly(|| Pin::new(&mut *body).poll_frame(quiet)) {
            return Poll::Ready(frame);
        }
        if self.drive(cx) {
            return Pin::new(body).poll_frame(cx);
        }
        self.quietly(|| Pin::new(body).poll_frame(quiet))
    }

    /// Waits until the connection can take a request; false when it ended instead.
    async fn ready(&mut self) -> bool {
        if !self.is_borrowed() {
            return self.sender.ready().await.is_ok();
        }
        poll_fn(|cx| {
            if let Poll::Ready(r) = self.sender.poll_ready(cx) {
                return Poll::Ready(r.is_ok());
            }
            if self.drive(cx) {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Sends `req` on a borrowed connection and drives it until the response head is in. A
    /// request the connection ended before sending comes back in the error.
    async fn exchange(
        &mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        let mut answer = pin!(self
            .berth
            .gate
            .quietly(|| self.sender.try_send_request(req)));
        poll_fn(|cx| {
            let ended = self.drive(cx);
            // The answer can only come from driving the connection, which this task does (or
            // from dropping it, which `drive` has done by now when it ended): polling it with
            // a waker would only make the task wake itself once more.
            let quiet = &mut Context::from_waker(Waker::noop());
            answer.as_mut().poll(if ended { cx } else { quiet })
        })
        .await
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if self.borrowed.is_some() {
            // Dropping the connection closes it; its task ends.
            self.end_borrow();
        }
    }
}

/// Polls the connection in `slot`, and empties the slot once the connection has ended (true).
fn poll_conn(slot: &mut Option<Connection>, cx: &mut Context<'_>) -> bool {
    let Some(conn) = slot.as_mut() else {
        return true;
    };
    match conn.as_mut().poll(cx) {
        Poll::Pending => false,
        Poll::Ready(r) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream connection ended");
            }
            *slot = None;
            true
        }
    }
}

struct Idle {
    link: Link,
    since: Instant,
    upstream: Weak<Upstream>,
}

impl Idle {
    /// Still worth keeping: open, not idle too long, and its instance not retired.
    fn usable(&self, now: Instant) -> bool {
        !self.link.ended()
            && now.duration_since(self.since) < IDLE_TIMEOUT
            && self.upstream.upgrade().is_some_and(|u| !u.is_retired())
    }
}

/// Idle connections by instance incarnation: address and `Upstream::id`.
#[derive(Default)]
struct Pool {
    idle: HashMap<(SocketAddr, u64), Vec<Idle>, BuildHasherDefault<KeyHasher>>,
    releases: u32,
}

/// The pool's hash: FxHash (rustc's multiply-rotate). The keys are instance addresses from
/// unit files, not client input, so a flood-resistant hash buys nothing here, and the
/// default SipHash cost about 300 instructions per lookup, two lookups per request.
#[derive(Default)]
struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }
    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }
    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: the request was not sent, and is given back.
    Connect(std::io::Error, Box<Request<ProxyBody>>),
    /// The request was handed to a connection and failed there.
    Request(hyper::Error),
}

/// Sends `req` (origin-form URI, with a Host header) to the instance `up`. Returns the
/// response head and the connection, which goes back to the pool through [`release`].
///
/// The request drives the connection itself when `mode` says so (see the module docs); the
/// response body then drives it until the body has been read.
pub async fn send(
    up: &Arc<Upstream>,
    mut req: Request<ProxyBody>,
    connect_timeout: Duration,
    mode: Mode,
) -> Result<(Response<Incoming>, Link), SendError> {
    let addr = up.addr;
    while let Some(mut link) = take_idle(up) {
        if mode == Mode::Interleave && !link.borrow() {
            continue;
        }
        if !link.ready().await {
            continue;
        }
        let answer = if link.is_borrowed() {
            link.exchange(req).await
        } else {
            link.sender.try_send_request(req).await
        };
        match answer {
            Ok(resp) => return Ok((resp, link)),
            Err(mut e) => match e.take_message() {
                // The connection closed before the request went out: try the next one.
                Some(unsent) => req = unsent,
                None => return Err(SendError::Request(e.into_error())),
            },
        }
    }
    let mut link = match connect(addr, connect_timeout).await {
        Ok(l) => l,
        Err(e) => return Err(SendError::Connect(e, Box::new(req))),
    };
    let answer = if mode == Mode::Interleave && link.borrow() {
        link.exchange(req).await
    } else {
        link.sender.try_send_request(req).await
    };
    match answer {
        Ok(resp) => Ok((resp, link)),
        Err(mut e) => match e.take_message() {
            Some(unsent) => Err(SendError::Connect(
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the new connection closed before the request was sent",
                ),
                Box::new(unsent),
            )),
            None => Err(SendError::Request(e.into_error())),
        },
    }
}

/// Gives a connection whose response was read to its end back to this worker's pool (or
/// closes it, when its instance is retired meanwhile).
pub fn release(up: &Arc<Upstream>, mut link: Link) {
    link.give_back();
    if link.ended() || up.is_retired() {
        return;
    }
    let now = Instant::now();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.releases = p.releases.wrapping_add(1);
        if p.releases % PRUNE_EVERY == 0 {
            p.prune(now);
        }
        let conns = p.idle.entry((up.addr, up.id)).or_default();
        if conns.len() < MAX_IDLE_PER_UPSTREAM {
            conns.push(Idle {
                link,
                since: now,
                upstream: Arc::downgrade(up),
            });
        }
    });
}

/// Closes this worker's idle connections that are no longer worth keeping: to retired or
/// forgotten instances, closed by the instance, or idle for too long.
pub fn prune() {
    let now = Instant::now();
    POOL.with(|p| p.borrow_mut().prune(now));
}

impl Pool {
    fn prune(&mut self, now: Instant) {
        self.idle.retain(|_, conns| {
            conns.retain(|c| c.usable(now));
            !conns.is_empty()
        });
    }
}

/// The most recently released connection to `up` that is still worth using.
fn take_idle(up: &Upstream) -> Option<Link> {
    let now = Instant::now();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let conns = p.idle.get_mut(&(up.addr, up.id))?;
        while let Some(c) = conns.pop() {
            if c.usable(now) {
                return Some(c.link);
            }
        }
        None
    })
}

async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Link> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out"),
            ))
        }
    };
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let gate = Arc::new(Gate {
        muted: AtomicBool::new(false),
        target: Mutex::new(None),
    });
    let berth = Arc::new(Berth {
        slot: Mutex::new(Slot {
            conn: Some(Box::pin(conn.with_upgrades())),
            lent: false,
            task: None,
        }),
        waker: Waker::from(gate.clone()),
        gate,
    });
    let task = berth.clone();
    tokio::spawn(poll_fn(move |cx| task.run(cx)));
    Ok(Link {
        sender,
        berth,
        borrowed: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// A real HTTP/1.1 instance on a free port: `/n/<len>` answers `len` bytes, `/close`
    /// answers and closes, `/echo` sends the request body back. Counts connections.
    struct Instance {
        up: Arc<Upstream>,
        accepted: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
        server: tokio::task::JoinHandle<()>,
    }

    fn pattern(len: usize) -> Bytes {
        (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
    }

    async fn instance() -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let mut resp = Response::builder();
                        let body = if let Some(n) = path.strip_prefix("/n/") {
                            pattern(n.parse().unwrap())
                        } else if path == "/echo" {
                            req.into_body().collect().await?.to_bytes()
                        } else {
                            resp = resp.header("connection", "close");
                            Bytes::from_static(b"bye")
                        };
                        Ok::<_, hyper::Error>(resp.body(Full::new(body)).unwrap())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        let up = Arc::new(Upstream::new("app", 1, addr, Instant::now()));
        Instance {
            up,
            accepted,
            open,
            server,
        }
    }

    fn body(bytes: Bytes) -> ProxyBody {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }

    /// One request as `forward` makes it: sent in `mode`, its body read through the link to
    /// its end, the link released.
    async fn exchange(inst: &Instance, method: &str, path: &str, out: Bytes, mode: Mode) -> Bytes {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "app")
            .body(body(out))
            .unwrap();
        let Ok((resp, mut link)) = send(&inst.up, req, Duration::from_secs(5), mode).await else {
            panic!("{method} {path} in {mode:?} got no response");
        };
        assert_eq!(resp.status(), 200);
        let mut incoming = resp.into_body();
        let mut got = Vec::new();
        while let Some(frame) = poll_fn(|cx| link.poll_frame(&mut incoming, cx)).await {
            if let Ok(data) = frame.unwrap().into_data() {
                got.extend_from_slice(&data);
            }
        }
        release(&inst.up, link);
        got.into()
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes this thread's idle connections, waits until the instance saw them close, stops
    /// the instance, and checks that no task is left: every connection's task has ended.
    async fn close_all(inst: &Instance) {
        POOL.with(|p| p.borrow_mut().idle.clear());
        until("the instance sees every connection closed", || {
            inst.open.load(Ordering::SeqCst) == 0
        })
        .await;
        inst.server.abort();
        let metrics = tokio::runtime::Handle::current().metrics();
        until("no connection task is left", || {
            metrics.num_alive_tasks() == 0
        })
        .await;
    }

    #[tokio::test]
    async fn one_connection_serves_requests_in_either_mode() {
        let inst = instance().await;
        let modes = [
            Mode::Batch,
            Mode::Interleave,
            Mode::Interleave,
            Mode::Batch,
            Mode::Batch,
            Mode::Interleave,
        ];
        for (i, mode) in modes.into_iter().enumerate() {
            let len = 1000 + i * 70_000;
            let got = exchange(&inst, "GET", &format!("/n/{len}"), Bytes::new(), mode).await;
            assert!(got == pattern(len), "request {i} in {mode:?}: body differs");
        }
        assert_eq!(
            inst.accepted.load(Ordering::SeqCst),
            1,
            "the connection is reused"
        );
        close_all(&inst).await;
    }

    #[tokio::test]
    async fn bodies_of_megabytes_stream_both_ways_in_either_mode() {
        let inst = instance().await;
        for mode in [Mode::Interleave, Mode::Batch, Mode::Interleave] {
            let out = pattern(3 << 20);
            let got = exchange(&inst, "POST", "/echo", out.clone(), mode).await;
            assert!(got == out, "{mode:?}: echoed body differs");
        }
        assert_eq!(inst.accepted.load(Ordering::SeqCst), 1);
        close_all(&inst).await;
    }

    #[tokio::test]
    async fn a_connection_the_instance_closes_is_not_reused() {
        let inst = instance().await;
        for (i, mode) in [Mode::Interleave, Mode::Batch, Mode::Interleave]
            .into_iter()
            .enumerate()
        {
            let got = exchange(&inst, "GET", "/close", Bytes::new(), mode).await;
            assert_eq!(&got[..], b"bye");
            // The closed connection is not handed out again: the next request opens one.
            let got = exchange(&inst, "GET", "/n/10", Bytes::new(), mode).await;
            assert!(got == pattern(10));
            assert_eq!(
                inst.accepted.load(Ordering::SeqCst),
                2 * (i + 1),
                "{mode:?}"
            );
            close_all_idle();
        }
        close_all(&inst).await;
    }

    fn close_all_idle() {
        POOL.with(|p| p.borrow_mut().idle.clear());
    }

    #[tokio::test]
    async fn a_response_dropped_halfway_closes_its_connection() {
        let inst = instance().await;
        for mode in [Mode::Interleave, Mode::Batch] {
            let req = Request::builder()
                .uri("/n/8000000")
                .header("host", "app")
                .body(body(Bytes::new()))
                .unwrap();
            let (resp, mut link) = send(&inst.up, req, Duration::from_secs(5), mode)
                .await
                .unwrap();
            let mut incoming = resp.into_body();
            let first = poll_fn(|cx| link.poll_frame(&mut incoming, cx)).await;
            assert!(first.is_some_and(|f| f.is_ok()));
            drop(incoming);
            drop(link);
            until("the instance sees the connection closed", || {
                inst.open.load(Ordering::SeqCst) == 0
            })
            .await;
            // The next request gets a new connection and its whole answer.
            let got = exchange(&inst, "GET", "/n/100", Bytes::new(), mode).await;
            assert!(got == pattern(100));
            close_all_idle();
            until("idle connections closed", || {
                inst.open.load(Ordering::SeqCst) == 0
            })
            .await;
        }
        close_all(&inst).await;
    }
}
