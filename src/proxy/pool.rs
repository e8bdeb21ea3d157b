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
//! A connection has no task of its own: whoever waits on it drives it ([`Link::drive`]) — the
//! request's task while it sends the request and waits for the response head, the response
//! body while the client reads it. A connection task would cost every request two more task
//! wake-ups and polls (request handed over, response handed back), which nginx, one event
//! loop with no tasks, does not pay. An idle connection is not polled, so one the instance
//! closed is noticed when it is next used (the request comes back unsent and the next
//! connection is tried) or by [`prune`], which polls each idle connection once.
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
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::forward::ProxyBody;
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
/// (socket, buffers, HTTP/1.1 state), driven by whoever waits on it.
pub struct Link {
    sender: http1::SendRequest<ProxyBody>,
    /// None once the connection has ended.
    conn: Option<Connection>,
    gate: Arc<Gate>,
    /// `gate` as a waker: what the connection is polled with.
    waker: Waker,
}

/// The waker a link's connection is polled with. It passes wakes on to the task driving the
/// connection, except while that task itself hands something across the connection's
/// channels ([`Link::quietly`]): a request into its queue, a frame out of the response body.
/// Those wake the connection's side (the same task), which the task drives right after
/// anyway; passed on, each would make the task run once more for nothing.
struct Gate {
    muted: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Gate {
    fn quietly<R>(&self, f: impl FnOnce() -> R) -> R {
        self.muted.store(true, Ordering::Relaxed);
        let r = f();
        self.muted.store(false, Ordering::Relaxed);
        r
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.muted.load(Ordering::Relaxed) {
            return;
        }
        if let Some(task) = &*self.task.lock().unwrap_or_else(|e| e.into_inner()) {
            task.wake_by_ref();
        }
    }
}

impl Link {
    fn new(sender: http1::SendRequest<ProxyBody>, conn: Connection) -> Link {
        let gate = Arc::new(Gate {
            muted: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        Link {
            sender,
            conn: Some(conn),
            waker: Waker::from(gate.clone()),
            gate,
        }
    }

    /// Runs `f`, which hands something to or takes something from the connection, without
    /// the wake-up that causes: the caller drives the connection next (see [`Gate`]).
    pub fn quietly<R>(&self, f: impl FnOnce() -> R) -> R {
        self.gate.quietly(f)
    }

    /// Lets the connection make progress: write the request and its body, read the response
    /// and hand its head and body over. Returns true once the connection has ended (closed
    /// by either side, failed, or handed to an upgrade); it is dropped then.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        {
            let mut task = self.gate.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        poll_conn(&mut self.conn, &mut Context::from_waker(&self.waker))
    }

    /// Hands the connection to a task of its own. For a 101 answer: the upgraded connection
    /// is handed over once the connection has been polled to its end.
    pub fn detach(mut self) {
        if let Some(conn) = self.conn.take() {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
        }
    }

    fn ended(&self) -> bool {
        self.conn.is_none() || self.sender.is_closed()
    }

    /// Whether the connection is still open, found by polling it once (reads an EOF or an
    /// error the instance sent while the connection sat idle). No task is woken later.
    fn open_now(&mut self) -> bool {
        !poll_conn(&mut self.conn, &mut Context::from_waker(Waker::noop()))
            && !self.sender.is_closed()
    }

    /// Waits until the connection can take a request; false when it ended instead.
    async fn ready(&mut self) -> bool {
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

    /// Sends `req` and drives the connection until the response head is in. A request the
    /// connection ended before sending comes back in the error.
    async fn exchange(
        &mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        let mut answer = pin!(self.gate.quietly(|| self.sender.try_send_request(req)));
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
    /// Still worth keeping: open as far as known, not idle too long, and its instance not
    /// retired.
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
/// response head and the connection, which the response body drives and gives back to the
/// pool through [`release`].
pub async fn send(
    up: &Arc<Upstream>,
    mut req: Request<ProxyBody>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Link), SendError> {
    let addr = up.addr;
    while let Some(mut link) = take_idle(up) {
        if !link.ready().await {
            continue;
        }
        match link.exchange(req).await {
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
    match link.exchange(req).await {
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
pub fn release(up: &Arc<Upstream>, link: Link) {
    if link.ended() || up.is_retired() {
        return;
    }
    // Idle, the connection wakes nobody (and holds no task alive).
    *link.gate.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
            conns.retain_mut(|c| c.usable(now) && c.link.open_now());
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
    Ok(Link::new(sender, Box::pin(conn.with_upgrades())))
}
