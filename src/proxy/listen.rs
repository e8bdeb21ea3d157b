//! Accept loops for the HTTP and HTTPS listeners: per-IP connection limits, TLS handshakes
//! with a deadline, and HTTP/1.1 + HTTP/2 serving (ALPN on TLS, prior knowledge on plain).
//!
//! The listening sockets themselves are created by `daemon` (one place), and handed in here.
//! They are served by [`spawn_workers`]: a fixed number of threads, each running its own
//! single-threaded runtime with an accept loop on every listener, as nginx runs worker
//! processes. A connection lives on one worker, together with the upstream connections it uses
//! (each worker has its own upstream pools), so that a request never crosses threads; the
//! control plane runs on chaind's main runtime and cannot delay requests.
//!
//! Every worker accepts on every listener, and whichever the kernel wakes first takes a whole
//! burst of connections (a client opening 64 at once could land them all on one worker while
//! the other idles). So the accepting worker hands a new connection to the worker with the
//! fewest open connections when that is fewer than its own ([`Balance`], a pure choice over
//! per-worker counters), before the TLS handshake; the socket moves to that worker's runtime.
//!
//! A TLS handshake's costly step, answering the ClientHello (key exchange and signature, a few
//! hundred microseconds), takes turns with the worker's other work ([`HandshakeLane`]): between
//! two such steps, every request already waiting on the worker is served. A burst of new
//! connections then delays the requests of connections already open by one step at most,
//! instead of by every handshake queued ahead of them; HAProxy runs handshakes at a lower
//! priority than other work for the same reason.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::forward::{self, Conn};
use super::Shared;
use crate::config::ProxyConfig;

/// Counts open connections per client IP; a connection over the limit is closed at once.
#[derive(Debug, Default)]
pub struct ConnLimiter {
    limit: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnLimiter {
    pub fn new(limit: u32) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `ip`, or None when it already has `limit` connections (0 = no limit).
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if self.limit != 0 && *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One listening socket as the workers share it, and its TLS configuration (None: plain HTTP).
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub tls: Option<TlsAcceptor>,
}

/// Open connections per worker, and where to send a connection another worker should serve.
pub struct Balance {
    open: Vec<AtomicUsize>,
    /// `inbox[worker][listener]`.
    inbox: Vec<Vec<mpsc::UnboundedSender<Handoff>>>,
}

/// A connection accepted by one worker for another to serve.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
    /// Counts the connection for its new worker from the moment it was handed off, so that
    /// the next connection of a burst sees it.
    open: Open,
}

/// The worker that should serve a new connection accepted by `me`, given each worker's open
/// connections: the least loaded one when it has fewer than `me` (ties stay with `me`, so one
/// worker or an even load never hands off).
pub fn pick_worker(me: usize, open: &[usize]) -> usize {
    let Some(mine) = open.get(me).copied() else {
        return me;
    };
    match open.iter().enumerate().min_by_key(|(_, n)| **n) {
        Some((best, n)) if *n < mine => best,
        _ => me,
    }
}

impl Balance {
    /// [`pick_worker`] over the current counts; nothing to weigh with one worker.
    fn pick(&self, me: usize) -> usize {
        if self.open.len() == 1 {
            return me;
        }
        let open: Vec<usize> = self
            .open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        pick_worker(me, &open)
    }
}

/// Counts one open connection of a worker until dropped.
struct Open {
    balance: Arc<Balance>,
    worker: usize,
}

impl Open {
    fn new(balance: &Arc<Balance>, worker: usize) -> Open {
        balance.open[worker].fetch_add(1, Ordering::Relaxed);
        Open {
            balance: balance.clone(),
            worker,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.balance.open[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many proxy workers to run, and at which nice value (`worker_threads` and
/// `worker_priority` in chaind.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    pub count: usize,
    /// None: the workers keep chaind's nice value.
    pub priority: Option<i32>,
}

/// Gives the calling worker thread its nice value and, once per process, chaind's session the
/// same one where the kernel schedules by session (chain_agent::sched); failures are logged,
/// and the worker runs on at the priority it has.
fn apply_priority(nice: i32, worker: usize) {
    use chain_agent::sched::{self, SessionNice};
    if worker == 0 {
        match sched::set_session_nice(nice) {
            Ok(SessionNice::Set) => {
                tracing::debug!(nice, "chaind's session (autogroup) nice value set")
            }
            Ok(SessionNice::NoAutogroup) => {}
            Ok(SessionNice::NotSessionLeader) => tracing::info!(
                nice,
                "worker_priority weighs only against chaind's own threads: the kernel schedules \
                 by session (autogroup) and chaind does not lead its session; start it as a \
                 service or with setsid"
            ),
            Err(e) => tracing::warn!(nice, error = %e, "cannot set chaind's session nice value"),
        }
    }
    if let Err(e) = sched::set_thread_nice(nice) {
        tracing::warn!(
            worker,
            nice,
            error = %e,
            "cannot set the proxy worker's priority (worker_priority below chaind's own takes \
             CAP_SYS_NICE)"
        );
    }
}

/// Starts the proxy worker threads serving every listener until `stop` (see the module docs).
/// Each returned task ends when its worker has stopped and its connections have finished.
pub fn spawn_workers(
    workers: Workers,
    listeners: &[Listener],
    shared: &Arc<Shared>,
    cfg: &ProxyConfig,
    limiter: &Arc<ConnLimiter>,
    stop: &CancellationToken,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let Workers { count, priority } = workers;
    let workers = count.max(1);
    let mut inbox = Vec::new();
    let mut inbox_rx = Vec::new();
    for _ in 0..workers {
        let (tx, rx): (Vec<_>, Vec<_>) =
            listeners.iter().map(|_| mpsc::unbounded_channel()).unzip();
        inbox.push(tx);
        inbox_rx.push(rx);
    }
    let balance = Arc::new(Balance {
        open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
        inbox,
    });
    let mut done = Vec::new();
    for (n, rx) in inbox_rx.into_iter().enumerate() {
        // Every worker polls its own copy of each socket; the kernel hands a new connection to
        // whichever accepts first.
        let mine = listeners
            .iter()
            .map(|l| {
                Ok(Listener {
                    socket: l.socket.try_clone()?,
                    tls: l.tls.clone(),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let rt = worker_runtime()?;
        let (shared, cfg, limiter, stop) =
            (shared.clone(), cfg.clone(), limiter.clone(), stop.clone());
        let me = Worker {
            n,
            balance: balance.clone(),
        };
        let (tx, finished) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("chain-proxy-{n}"))
            .spawn(move || {
                if let Some(nice) = priority {
                    apply_priority(nice, me.n);
                }
                rt.block_on(worker(me, mine, rx, shared, cfg, limiter, stop));
                drop(tx);
            })?;
        done.push(tokio::spawn(async move {
            let _ = finished.await;
        }));
    }
    Ok(done)
}

/// Task polls between two looks for I/O and timers on a worker's runtime, when tasks are ready
/// all along (tokio's default is 61; with nothing ready the runtime looks at once).
///
/// A proxied request takes a few polls of a few microseconds each, and HTTP/2 more (a task per
/// stream). Looking for I/O every 61 polls cut a worker's round of ready streams into pieces:
/// the answers to the client and the requests to the instances left in more, smaller bursts,
/// and the processes at the other end (the load generator, the instance) were woken about
/// twice as often, each wake-up a cross-CPU interrupt. With 256, HTTP/2 with 1 worker went
/// from 12.9 to 11.9 µs of CPU per request and served 9 % more requests a second; 128 did not
/// change it, and 1024 began to lengthen HTTPS keep-alive latency (docs/benchmarks.md).
const WORKER_EVENT_INTERVAL: u32 = 256;

/// The single-threaded runtime a proxy worker runs on.
fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(WORKER_EVENT_INTERVAL)
        .on_thread_park(super::load::parked)
        .on_thread_unpark(super::load::unparked)
        .build()
}

/// Which worker this is, and the shared balance.
#[derive(Clone)]
struct Worker {
    n: usize,
    balance: Arc<Balance>,
}

/// One worker: an accept loop per listener; after `stop`, waits for its connections.
async fn worker(
    me: Worker,
    listeners: Vec<Listener>,
    inbox: Vec<mpsc::UnboundedReceiver<Handoff>>,
    shared: Arc<Shared>,
    cfg: ProxyConfig,
    limiter: Arc<ConnLimiter>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let lane = Arc::new(HandshakeLane::default());
    let mut loops = Vec::new();
    for (index, (l, inbox)) in listeners.into_iter().zip(inbox).enumerate() {
        match TcpListener::from_std(l.socket) {
            Ok(socket) => loops.push(tokio::spawn(serve(
                me.clone(),
                Seat {
                    index,
                    socket,
                    inbox,
                    tls: l.tls,
                    lane: lane.clone(),
                },
                shared.clone(),
                cfg.clone(),
                limiter.clone(),
                connections.clone(),
                stop.clone(),
            ))),
            Err(e) => tracing::error!(error = %e, "proxy worker cannot poll its listener"),
        }
    }
    // Idle upstream connections to instances that leave are closed as soon as they leave.
    let mut retired = shared.retired.subscribe();
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                changed = retired.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
            super::pool::prune();
        }
    });
    for l in loops {
        let _ = l.await;
    }
    connections.close();
    connections.wait().await;
    pruner.abort();
}

/// One listener as one worker serves it.
struct Seat {
    /// The listener's place in the list every worker has.
    index: usize,
    socket: TcpListener,
    /// Connections other workers accepted on this listener for this one.
    inbox: mpsc::UnboundedReceiver<Handoff>,
    tls: Option<TlsAcceptor>,
    /// The worker's lane for the costly step of TLS handshakes (one per worker).
    lane: Arc<HandshakeLane>,
}

/// Serves one listener until `stop`; then open connections get a graceful shutdown and up to
/// 10 s to finish.
async fn serve(
    me: Worker,
    seat: Seat,
    shared: Arc<Shared>,
    cfg: ProxyConfig,
    limiter: Arc<ConnLimiter>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    let Seat {
        index,
        socket: listener,
        mut inbox,
        tls,
        lane,
    } = seat;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No timer and no header-read timeout of hyper's on HTTP/1.1: see `run`.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(cfg.max_header_size.max(8192) as usize)
        .max_headers(cfg.max_headers as usize)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_size as u32)
        .max_concurrent_streams(250)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    loop {
        let (stream, peer, slot, open) = tokio::select! {
            _ = stop.cancelled() => return,
            Some(h) = inbox.recv() => match TcpStream::from_std(h.stream) {
                Ok(stream) => (stream, h.peer, h.slot, h.open),
                Err(e) => {
                    tracing::warn!(error = %e, "proxy worker cannot poll a handed-off connection");
                    continue;
                }
            },
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let Some(slot) = limiter.acquire(peer.ip()) else {
                        tracing::debug!(%peer, "connection refused: per-IP connection limit");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let to = me.balance.pick(me.n);
                    if to != me.n {
                        hand_off(&me.balance, to, index, stream, peer, slot);
                        continue;
                    }
                    (stream, peer, slot, Open::new(&me.balance, me.n))
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (shared, tls, stop, builder, lane) = (
            shared.clone(),
            tls.clone(),
            stop.clone(),
            builder.clone(),
            lane.clone(),
        );
        let (handshake_timeout, idle) = (cfg.handshake_timeout, cfg.header_read_timeout);
        connections.spawn(async move {
            let _slot = slot;
            let _open = open;
            match tls {
                Some(acceptor) => {
                    let handshake = handshake(&lane, acceptor.config(), stream);
                    let Ok(Ok(tls_stream)) =
                        tokio::time::timeout(handshake_timeout, handshake).await
                    else {
                        tracing::debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let conn = Conn { peer, https: true };
                    let io = TokioIo::new(tls_stream);
                    run(builder, io, shared, conn, idle, stop).await;
                }
                None => {
                    let conn = Conn { peer, https: false };
                    run(builder, TokioIo::new(stream), shared, conn, idle, stop).await;
                }
            }
        });
    }
}

/// A TLS handshake whose costly step, answering the ClientHello, waits for its turn on the
/// worker's [`HandshakeLane`]. Reading the ClientHello, sending the answer and reading the
/// client's Finished are network waits, and take no turn.
async fn handshake(
    lane: &HandshakeLane,
    config: &Arc<rustls::ServerConfig>,
    stream: TcpStream,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let turn = lane.turn().await;
    // rustls answers the ClientHello here (key exchange, certificate, signature)...
    let mut accept = start.into_stream(config.clone());
    // ...and the first poll sends that answer, before the turn ends.
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut accept).poll(cx))).await;
    turn.end().await;
    match first {
        Poll::Ready(r) => r,
        Poll::Pending => accept.await,
    }
}

/// Turns for the costly step of one worker's TLS handshakes: one step at a time, and after
/// each, the worker's other ready tasks run before the next handshake's turn.
///
/// On a worker's single thread a step takes a few hundred microseconds and cannot be split.
/// With its tasks served first come, first served, a request on an open connection that
/// becomes ready behind a burst of ClientHellos waits for all of them; with turns, it waits
/// for one at most. Handshakes are not slower for it when nothing else is waiting (a turn is
/// then granted at once), and the worker does the same work in total.
#[derive(Debug)]
pub struct HandshakeLane(tokio::sync::Semaphore);

impl Default for HandshakeLane {
    fn default() -> Self {
        HandshakeLane(tokio::sync::Semaphore::new(1))
    }
}

impl HandshakeLane {
    /// Waits for this handshake's turn (first come, first served among handshakes).
    pub async fn turn(&self) -> Turn<'_> {
        // The semaphore is never closed, so acquire cannot fail.
        Turn {
            _permit: self.0.acquire().await.ok(),
        }
    }
}

/// A handshake's turn on the [`HandshakeLane`]; ended with [`Turn::end`].
#[derive(Debug)]
pub struct Turn<'a> {
    /// Held until the turn ends.
    _permit: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl Turn<'_> {
    /// Lets the tasks that are ready run (tokio runs a yielded task again after them and after
    /// polling for I/O), then passes the turn on.
    pub async fn end(self) {
        tokio::task::yield_now().await;
    }
}

/// Sends an accepted connection to worker `to`, counted there at once. A worker that has
/// stopped drops it, which closes it.
fn hand_off(
    balance: &Arc<Balance>,
    to: usize,
    listener: usize,
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
) {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot hand a connection to another worker");
            return;
        }
    };
    let open = Open::new(balance, to);
    let handoff = Handoff {
        stream,
        peer,
        slot,
        open,
    };
    if balance.inbox[to][listener].send(handoff).is_err() {
        tracing::debug!(%peer, "worker stopped; connection dropped");
    }
}

/// Serves one client connection until it ends, `stop`, or it has had no request in progress
/// for `idle` (the header-read timeout).
///
/// A connection with no request in progress for `idle` is closed, whatever the protocol: an
/// idle keep-alive connection, a client that never finishes its request head (slowloris), an
/// HTTP/2 connection that sent only its preface or never completes a HEADERS frame. This is
/// also HTTP/1.1's header-read timeout (hyper's own is not used: it arms a timer per request).
/// The close is graceful (GOAWAY on HTTP/2, so a client can retry what was not processed),
/// and the connection is dropped a moment later if the client does not cooperate.
///
/// The idle watchdog and `stop` are watched by a task of their own, which rings an [`Alarm`]:
/// the connection's task, woken at least twice per request, then reads one atomic instead of
/// polling a timer and the stop token each time.
async fn run<I>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: TokioIo<I>,
    shared: Arc<Shared>,
    conn: Conn,
    idle: Duration,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let alarm = Arc::new(Alarm::default());
    // Aborted when dropped: the watchdog ends with its connection.
    let watchdog = {
        let (activity, alarm) = (activity.clone(), alarm.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            let why = tokio::select! {
                _ = activity.idle_for(idle) => Why::Idle,
                _ = stop.cancelled() => Why::Stop,
            };
            alarm.ring(why);
        }))
    };
    let seen = activity.clone();
    let peer_ip = forward::peer_ip_header(conn.peer.ip());
    let svc = hyper::service::service_fn(move |req| {
        forward::handle(shared.clone(), conn, peer_ip.clone(), req, seen.begin())
    });
    let c = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(c);
    let ringing = Ringing {
        conn: c.as_mut(),
        alarm: &alarm,
        waker: None,
    };
    let grace = match ringing.await {
        Ok(r) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, peer = %conn.peer, "proxy connection ended");
            }
            return;
        }
        Err(Why::Idle) => {
            tracing::debug!(peer = %conn.peer, "closing a connection without requests");
            // Nothing is in progress: the time to flush a GOAWAY is all it needs.
            idle.min(Duration::from_secs(1))
        }
        Err(Why::Stop) => Duration::from_secs(10),
    };
    drop(watchdog);
    c.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(grace, c).await;
}

/// Why a connection's watchdog rang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// No request in progress for the header-read timeout.
    Idle,
    /// The proxy is stopping.
    Stop,
}

/// Set once by a connection's watchdog task, read by the connection's task.
#[derive(Default)]
struct Alarm {
    /// 0: not rung; 1: [`Why::Idle`]; 2: [`Why::Stop`].
    why: std::sync::atomic::AtomicU8,
    /// The connection task's waker, woken when the alarm rings.
    waker: Mutex<Option<Waker>>,
}

impl Alarm {
    fn ring(&self, why: Why) {
        let code = match why {
            Why::Idle => 1,
            Why::Stop => 2,
        };
        self.why.store(code, Ordering::SeqCst);
        let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn rung(&self) -> Option<Why> {
        match self.why.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(Why::Idle),
            _ => Some(Why::Stop),
        }
    }
}

/// Drives a connection until it ends (`Ok`) or its alarm rings (`Err`).
struct Ringing<'a, F> {
    conn: Pin<&'a mut F>,
    alarm: &'a Alarm,
    /// The waker last handed to the alarm (the task's waker rarely changes).
    waker: Option<Waker>,
}

impl<F: Future> Future for Ringing<'_, F> {
    type Output = Result<F::Output, Why>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(why) = this.alarm.rung() {
            return Poll::Ready(Err(why));
        }
        if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            *this.alarm.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            this.waker = Some(w);
            // The alarm may have rung before it could see this waker.
            if let Some(why) = this.alarm.rung() {
                return Poll::Ready(Err(why));
            }
        }
        Poll::Pending
    }
}

/// Requests in progress on one client connection, and when the last one ended.
pub struct Activity {
    start: tokio::time::Instant,
    open: AtomicU32,
    /// Milliseconds from `start` to the end of the latest request.
    last_end_ms: AtomicU64,
    /// The connection's upstream timer, reused by its requests.
    upstream_timer: forward::UpstreamTimer,
}

/// One request being served; counts as activity until dropped.
pub struct Active(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            open: AtomicU32::new(0),
            last_end_ms: AtomicU64::new(0),
            upstream_timer: forward::UpstreamTimer::default(),
        }
    }

    fn begin(self: &Arc<Self>) -> Active {
        self.open.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    /// Resolves once no request has been in progress for `limit`: `limit` after the start
    /// or after the end of the latest request, whichever is later. While requests are in
    /// progress it looks again every `limit`.
    async fn idle_for(&self, limit: Duration) {
        let mut deadline = self.start + limit;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = tokio::time::Instant::now();
            if self.open.load(Ordering::Relaxed) > 0 {
                deadline = now + limit;
                continue;
            }
            let last = self.start + Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
            if last + limit <= now {
                return;
            }
            deadline = last + limit;
        }
    }
}

impl Active {
    /// The timer the connection's upstream exchanges are timed with.
    pub fn upstream_timer(&self) -> &forward::UpstreamTimer {
        &self.0.upstream_timer
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let ms = self.0.start.elapsed().as_millis() as u64;
        self.0.last_end_ms.store(ms, Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3 only, ALPN h2 and http/1.1, certificates
/// from the store's SNI resolver.
pub fn tls_acceptor(certs: &Arc<super::tls::CertStore>) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs.resolver());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new connection goes to the least loaded worker when it has fewer than the accepting
    /// one; ties and a single worker stay put.
    #[test]
    fn worker_choice() {
        let cases: &[(usize, &[usize], usize)] = &[
            // (accepting worker, open connections per worker, chosen)
            (0, &[0], 0),
            (0, &[5], 0),
            (0, &[0, 0], 0),
            (1, &[0, 0], 1),
            (0, &[1, 0], 1),
            (0, &[3, 3], 0),
            (1, &[3, 4], 0),
            (0, &[4, 3, 2, 2], 2),
            (2, &[4, 3, 2, 2], 2),
            (3, &[0, 9, 9, 9], 0),
            // An index past the counters (cannot happen) keeps the connection.
            (5, &[1, 2], 5),
        ];
        for (me, open, want) in cases {
            assert_eq!(pick_worker(*me, open), *want, "me {me}, open {open:?}");
        }
    }

    /// A burst accepted by one worker ends up split evenly once counted as it is handed off.
    #[test]
    fn burst_splits_evenly() {
        let mut open = vec![0usize; 2];
        for _ in 0..64 {
            let to = pick_worker(0, &open);
            open[to] += 1;
        }
        assert_eq!(open, vec![32, 32]);
    }

    /// A handshake's turn ends only after the tasks that were ready when it began have run:
    /// with two handshakes and a request task queued in that order, the request goes between
    /// them (first come, first served would run it last).
    #[test]
    fn handshake_turns_let_ready_work_run_between() {
        let rt = worker_runtime().unwrap();
        let order = rt.block_on(async {
            let lane = Arc::new(HandshakeLane::default());
            let order = Arc::new(Mutex::new(Vec::new()));
            let handshake = |name: &'static str| {
                let (lane, order) = (lane.clone(), order.clone());
                tokio::spawn(async move {
                    let turn = lane.turn().await;
                    order.lock().unwrap().push(name);
                    turn.end().await;
                })
            };
            let first = handshake("handshake 1");
            let second = handshake("handshake 2");
            let request = {
                let order = order.clone();
                tokio::spawn(async move { order.lock().unwrap().push("request") })
            };
            for t in [first, second, request] {
                t.await.unwrap();
            }
            Arc::try_unwrap(order).unwrap().into_inner().unwrap()
        });
        assert_eq!(order, ["handshake 1", "request", "handshake 2"]);
    }

    /// The limit holds per IP, and slots return on drop.
    #[test]
    fn per_ip_limit() {
        let l = ConnLimiter::new(2);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = l.acquire(ip).unwrap();
        let _b = l.acquire(ip).unwrap();
        assert!(l.acquire(ip).is_none());
        assert!(l.acquire([10, 0, 0, 2].into()).is_some());
        drop(a);
        assert!(l.acquire(ip).is_some());
        assert!(ConnLimiter::new(0).acquire(ip).is_some());
    }
}
