//! `demo`: the small HTTP application that chain's units, docs, tests and
//! benchmarks supervise. Single-threaded (tokio `current_thread`) to keep RSS
//! tiny; HTTP/1.1 with keep-alive.
//!
//! Environment:
//! - `PORT` (required): TCP port to listen on (`0` picks a free one).
//! - `BIND` (default `127.0.0.1`): IP address to bind.
//! - `VERSION` (default `dev`): returned by `GET /` and in `x-version`.
//! - `CHAIN_INSTANCE` (optional): echoed in the `x-instance` header (empty if unset).
//! - `STARTUP_DELAY_MS` (optional): sleep this long before binding (readiness tests).
//! - `CRASH_AFTER_MS` (optional): exit with `EXIT_CODE` this long after start
//!   (crash-loop tests).
//! - `EXIT_CODE` (default `1`, 0-255): exit code used by `CRASH_AFTER_MS`.
//! - `UNHEALTHY_FILE` (optional): while this file exists, `/health` answers 503.
//! - `DRAIN_TIMEOUT_MS` (default `30000`): longest wait for connections on shutdown.
//! - `IDLE_TIMEOUT_MS` (optional): a keep-alive connection with no request for this long is
//!   closed, without notice (Node's `keepAliveTimeout`; proxy tests).
//!
//! Routes (every response carries `x-version`, `x-instance` and `x-pid`):
//! - `GET /` → 200 `{VERSION}\n`
//! - `GET /health` → 200 `ok\n`, or 503 `unhealthy\n` while `UNHEALTHY_FILE` exists
//! - `GET /sleep?ms=N` → waits N ms, then 200 `{VERSION}\n`
//! - `GET /exit?code=N` → 200, then exits with code N once the response is flushed
//! - `GET /pid` → 200 `{pid}\n`
//! - `GET /sleeping` → 200 `{n}\n`, the number of `/sleep` requests in progress
//! - `GET /text?bytes=N` → 200, N bytes of `text/plain` (for compression tests)
//! - `GET /ws` → a WebSocket echo (RFC 6455): messages come back, pings get pongs
//! - `GET /env?name=X` → 200 `{value}\n`, or 404 if X is unset (no %-decoding)
//! - `GET /headers` → 200, the request's headers as `name: value` lines (proxy tests)
//! - `POST /echo` → 200 with the request body (at most 16 MiB, else 413)
//! - anything else → 404
//!
//! On SIGTERM or SIGINT the listener is closed at once; in-flight requests
//! finish; for one more second (`IDLE_GRACE`) requests arriving on existing
//! keep-alive connections are still served, with `Connection: close`; then
//! idle connections are closed. The process exits 0 when every connection is
//! done, or after `DRAIN_TIMEOUT_MS` (with a note). A second signal exits at once.
//!
//! Bad environment values: message on stderr, exit code 2.

use std::convert::Infallible;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

/// How long connections may keep sending requests after a shutdown signal.
const IDLE_GRACE: Duration = Duration::from_secs(1);
/// Largest body `POST /echo` accepts.
const ECHO_LIMIT: usize = 16 << 20;

/// Set once shutdown starts: every response then carries `Connection: close`.
static DRAINING: AtomicBool = AtomicBool::new(false);

struct Config {
    addr: SocketAddr,
    version: String,
    /// `x-version` and `x-instance` header values.
    version_header: HeaderValue,
    instance_header: HeaderValue,
    startup_delay: Option<Duration>,
    crash_after: Option<Duration>,
    exit_code: u8,
    unhealthy_file: Option<PathBuf>,
    drain_timeout: Duration,
    idle_timeout: Option<Duration>,
}

/// Reads `name`; unset or empty is `None`, unparsable is an error message.
fn env_opt<T: FromStr>(name: &str) -> Result<Option<T>, String>
where
    T::Err: Display,
{
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("bad {name}={v:?}: {e}")),
    }
}

fn millis(name: &str) -> Result<Option<Duration>, String> {
    Ok(env_opt::<u64>(name)?.map(Duration::from_millis))
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let port: u16 = env_opt("PORT")?.ok_or("PORT is required")?;
        let bind: IpAddr = env_opt("BIND")?.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let version: String = env_opt("VERSION")?.unwrap_or_else(|| "dev".into());
        let instance: String = env_opt("CHAIN_INSTANCE")?.unwrap_or_default();
        let header = |name: &str, value: &str| {
            HeaderValue::from_str(value)
                .map_err(|_| format!("bad {name}={value:?}: not usable in an HTTP header"))
        };
        Ok(Config {
            addr: SocketAddr::new(bind, port),
            version_header: header("VERSION", &version)?,
            instance_header: header("CHAIN_INSTANCE", &instance)?,
            version,
            startup_delay: millis("STARTUP_DELAY_MS")?,
            crash_after: millis("CRASH_AFTER_MS")?,
            exit_code: env_opt("EXIT_CODE")?.unwrap_or(1),
            unhealthy_file: env_opt("UNHEALTHY_FILE")?,
            drain_timeout: millis("DRAIN_TIMEOUT_MS")?.unwrap_or(Duration::from_secs(30)),
            idle_timeout: millis("IDLE_TIMEOUT_MS")?,
        })
    }
}

/// What request handlers need.
struct App {
    version: String,
    headers: [(&'static str, HeaderValue); 3],
    unhealthy_file: Option<PathBuf>,
    idle_timeout: Option<Duration>,
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The value of `key` in a query string like `a=1&b=2` (not %-decoded).
fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// `GET /ws`: a WebSocket (RFC 6455) echo. Text and binary messages come back as they were
/// sent, pings get pongs, a close is answered with a close.
fn websocket(req: &mut Request<Incoming>) -> Resp {
    use sha1::{Digest, Sha1};
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let is_ws = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let Some(key) = header("sec-websocket-key").filter(|_| is_ws) else {
        return text(
            StatusCode::BAD_REQUEST,
            "usage: GET /ws with a WebSocket handshake\n",
        );
    };
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64(&sha.finalize());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            if let Err(e) = ws_echo(TokioIo::new(upgraded)).await {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    eprintln!("demo: websocket: {e}");
                }
            }
        }
    });
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = resp.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

async fn ws_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let opcode = head[0] & 0x0f;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            len = u64::from(io.read_u16().await?);
        } else if len == 127 {
            len = io.read_u64().await?;
        }
        if len > 16 << 20 {
            return Err(std::io::Error::other("frame too large"));
        }
        let mut mask = [0u8; 4];
        if head[1] & 0x80 != 0 {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        io.read_exact(&mut payload).await?;
        if head[1] & 0x80 != 0 {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        let reply_opcode = match opcode {
            0x9 => 0xA,
            0xA => continue,
            other => other,
        };
        let mut frame = vec![(head[0] & 0x80) | reply_opcode];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 0xffff => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&payload);
        io.write_all(&frame).await?;
        if opcode == 0x8 {
            return io.shutdown().await;
        }
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `/sleep` requests in progress (`GET /sleeping`), so tests can wait for slow requests.
static SLEEPING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Handles one request. `exit` is set by `/exit`; the connection task exits
/// the process once the response has been flushed.
async fn handle(
    mut req: Request<Incoming>,
    app: Arc<App>,
    exit: Arc<Mutex<Option<u8>>>,
) -> Result<Resp, Infallible> {
    if req.uri().path() == "/ws" {
        return Ok(websocket(&mut req));
    }
    let (parts, body) = req.into_parts();
    let query = parts.uri.query();
    let version = || format!("{}\n", app.version);
    let mut resp = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/") => text(StatusCode::OK, version()),
        (&Method::GET, "/health") => match &app.unhealthy_file {
            Some(file) if file.exists() => text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n"),
            _ => text(StatusCode::OK, "ok\n"),
        },
        (&Method::GET, "/sleep") => match query_param(query, "ms").map(str::parse::<u64>) {
            Some(Ok(ms)) => {
                SLEEPING.fetch_add(1, Ordering::Relaxed);
                sleep(Duration::from_millis(ms)).await;
                SLEEPING.fetch_sub(1, Ordering::Relaxed);
                text(StatusCode::OK, version())
            }
            _ => text(StatusCode::BAD_REQUEST, "usage: /sleep?ms=N\n"),
        },
        (&Method::GET, "/exit") => match query_param(query, "code").map(str::parse::<u8>) {
            Some(Ok(code)) => {
                *exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
                let mut resp = text(StatusCode::OK, format!("exiting with code {code}\n"));
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                resp
            }
            _ => text(StatusCode::BAD_REQUEST, "usage: /exit?code=N (0-255)\n"),
        },
        (&Method::GET, "/pid") => text(StatusCode::OK, format!("{}\n", std::process::id())),
        (&Method::GET, "/headers") => text(
            StatusCode::OK,
            parts
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
                .collect::<String>(),
        ),
        (&Method::GET, "/text") => match query_param(query, "bytes").map(str::parse::<usize>) {
            Some(Ok(n)) if n <= 16 << 20 => {
                let body: String = "chain ".repeat(n / 6 + 1).chars().take(n).collect();
                text(StatusCode::OK, body)
            }
            _ => text(
                StatusCode::BAD_REQUEST,
                "usage: /text?bytes=N (at most 16 MiB)\n",
            ),
        },
        (&Method::GET, "/sleeping") => text(
            StatusCode::OK,
            format!("{}\n", SLEEPING.load(Ordering::Relaxed)),
        ),
        (&Method::GET, "/env") => match query_param(query, "name").map(std::env::var) {
            Some(Ok(value)) => text(StatusCode::OK, format!("{value}\n")),
            Some(Err(_)) => text(StatusCode::NOT_FOUND, "not set\n"),
            None => text(StatusCode::BAD_REQUEST, "usage: /env?name=X\n"),
        },
        (&Method::POST, "/echo") => match Limited::new(body, ECHO_LIMIT).collect().await {
            Ok(collected) => text(StatusCode::OK, collected.to_bytes()),
            Err(_) => text(StatusCode::PAYLOAD_TOO_LARGE, "body too large or broken\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let headers = resp.headers_mut();
    for (name, value) in &app.headers {
        headers.insert(*name, value.clone());
    }
    if DRAINING.load(Ordering::Relaxed) {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// Serves one connection. Holding `drain` is what keeps shutdown waiting for it.
async fn serve_conn(stream: TcpStream, app: Arc<App>, mut drain: watch::Receiver<bool>) {
    let exit = Arc::new(Mutex::new(None));
    let idle_timeout = app.idle_timeout;
    let svc = {
        let exit = exit.clone();
        service_fn(move |req| handle(req, app.clone(), exit.clone()))
    };
    let mut builder = http1::Builder::new();
    if let Some(idle) = idle_timeout {
        // hyper's header-read timer runs from the moment it waits for a request head,
        // so it also closes a keep-alive connection idle for that long.
        builder.timer(TokioTimer::new()).header_read_timeout(idle);
    }
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let drained = async {
        let _ = drain.wait_for(|draining| *draining).await;
        sleep(IDLE_GRACE).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drained => {
            // Closes the connection now if idle, else after the current response.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if !e.is_incomplete_message() {
            eprintln!("demo: connection error: {e}");
        }
    }
    let code = *exit.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(code) = code {
        println!("demo: /exit requested, exiting with code {code}");
        std::process::exit(code.into());
    }
}

async fn shutdown_signal(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cfg = match Config::from_env() {
        Ok(cfg) => cfg,
        Err(msg) => {
            eprintln!("demo: {msg}");
            return ExitCode::from(2);
        }
    };
    match run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("demo: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> Result<(), String> {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => return Err(format!("cannot install signal handlers: {e}")),
    };

    if let Some(after) = cfg.crash_after {
        let code = cfg.exit_code;
        tokio::spawn(async move {
            sleep(after).await;
            eprintln!("demo: CRASH_AFTER_MS elapsed, exiting with code {code}");
            std::process::exit(code.into());
        });
    }
    if let Some(delay) = cfg.startup_delay {
        tokio::select! {
            () = sleep(delay) => {}
            sig = shutdown_signal(&mut term, &mut int) => {
                println!("demo: {sig} during startup delay, exiting");
                return Ok(());
            }
        }
    }

    let listener = TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let pid = std::process::id();
    println!("demo {} listening on {addr} pid {pid}", cfg.version);
    let _ = std::io::Write::flush(&mut std::io::stdout());

    let app = Arc::new(App {
        headers: [
            ("x-version", cfg.version_header),
            ("x-instance", cfg.instance_header),
            ("x-pid", HeaderValue::from(pid)),
        ],
        version: cfg.version,
        unhealthy_file: cfg.unhealthy_file,
        idle_timeout: cfg.idle_timeout,
    });

    // Every connection task holds a receiver; the sender sees when all are gone.
    let (drain_tx, drain_rx) = watch::channel(false);
    let sig = loop {
        tokio::select! {
            sig = shutdown_signal(&mut term, &mut int) => break sig,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_conn(stream, app.clone(), drain_rx.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    eprintln!("demo: accept: {e}");
                    sleep(Duration::from_millis(100)).await;
                }
            },
        }
    };

    drop(listener);
    drop(drain_rx);
    DRAINING.store(true, Ordering::Relaxed);
    println!(
        "demo: {sig}, draining {} connections",
        drain_tx.receiver_count()
    );
    drain_tx.send_replace(true);
    tokio::select! {
        done = timeout(cfg.drain_timeout, drain_tx.closed()) => match done {
            Ok(()) => println!("demo: drained, exiting"),
            Err(_) => println!(
                "demo: DRAIN_TIMEOUT_MS={} reached with {} connections open, exiting",
                cfg.drain_timeout.as_millis(),
                drain_tx.receiver_count()
            ),
        },
        sig = shutdown_signal(&mut term, &mut int) => {
            println!("demo: second {sig} while draining, exiting now");
        }
    }
    Ok(())
}
