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
//! Each connection is driven by a task of its own (spawned in `connect`). Driving it inside
//! the request's task instead was measured: fewer instructions and task polls, but more CPU
//! time per request, because hyper's server and client code then alternate for every request
//! and miss the instruction cache more often (docs/benchmarks.md, "Tried and reverted").
//! The task has a latency cost below saturation: a worker's run queue is first in, first
//! out, so for a burst of requests the first one reaches its instance only after every client
//! task of the burst has run (the paced keep-alive p99 is 1.2x nginx's for that reason; a
//! runtime that runs a woken task next closes the gap but costs 5-10 % more CPU per request
//! under full load, and polling the connection once from the request's task right after
//! handing the request in closes 40 % of it for 2-4 % more; docs/benchmarks.md, "Changes of
//! 2026-12-07, second session").
//!
//! Connections belong to one instance incarnation (`Upstream`), not just to an address: once
//! the instance is retired (draining, or gone from every table) its connections are closed,
//! idle ones by [`prune`] at once, busy ones when they are released. An app that waits for its
//! keep-alive connections to close before it exits (Node's `server.close()` does) is not kept
//! waiting by idle connections the proxy would never use again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
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

/// The sending half of one upstream connection.
pub type Sender = http1::SendRequest<ProxyBody>;

struct Idle {
    sender: Sender,
    since: Instant,
    upstream: Weak<Upstream>,
}

impl Idle {
    /// Still worth keeping: open, not idle too long, and its instance not retired.
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed()
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
pub async fn send(
    up: &Arc<Upstream>,
    mut req: Request<ProxyBody>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Sender), SendError> {
    let addr = up.addr;
    while let Some(mut sender) = take_idle(up) {
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, sender)),
            Err(mut e) => match e.take_message() {
                // The connection closed before the request went out: try the next one.
                Some(unsent) => req = unsent,
                None => return Err(SendError::Request(e.into_error())),
            },
        }
    }
    let mut sender = match connect(addr, connect_timeout).await {
        Ok(s) => s,
        Err(e) => return Err(SendError::Connect(e, Box::new(req))),
    };
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, sender)),
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
pub fn release(up: &Arc<Upstream>, sender: Sender) {
    if sender.is_closed() || up.is_retired() {
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
                sender,
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
fn take_idle(up: &Upstream) -> Option<Sender> {
    let now = Instant::now();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let conns = p.idle.get_mut(&(up.addr, up.id))?;
        while let Some(c) = conns.pop() {
            if c.usable(now) {
                return Some(c.sender);
            }
        }
        None
    })
}

async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Sender> {
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
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}
