//! Shared helpers for integration tests: a real `chaind` process in a temp dir, `chainctl`
//! invocations, condition waits with deadlines, a tiny HTTP client, and cleanup that leaves no
//! process behind.
#![allow(dead_code)]

pub mod docker;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chain::api::wire::{EventInfo, InstanceInfo, UnitStatus};

pub const CHAIND: &str = env!("CARGO_BIN_EXE_chaind");
pub const CHAINCTL: &str = env!("CARGO_BIN_EXE_chainctl");

/// An example program built by `cargo test` (examples/NAME.rs).
pub fn example(name: &str) -> PathBuf {
    let p = Path::new(CHAIND)
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} missing: run the tests with `cargo test`, which builds the examples",
        p.display()
    );
    p
}

/// Polls `f` every 20 ms until it returns Some or the deadline passes; panics with `what`.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A different number at each call, in each test process: for picking ports at random.
fn seed() -> u32 {
    std::process::id().wrapping_mul(7919)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(104729)
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos())
}

/// A port window for one daemon, so parallel tests rarely meet in the same ports.
fn port_window() -> (u16, u16) {
    let start = 20000 + (seed() % 49) as u16 * 200;
    (start, start + 199)
}

/// Reserves `n` distinct free TCP ports on 127.0.0.1 for servers a test starts itself.
///
/// They come from 10000–19999: below the daemon windows of [`port_window`] and below the
/// kernel's ephemeral range (32768+), so an outgoing connection elsewhere on the machine cannot
/// take one as its source port between this check and the server's bind (CI saw exactly that
/// with ports from `bind(":0")`). A port is handed out once per test process: two tests
/// running in parallel could otherwise both pick a port before either server binds it (the
/// likely cause of an acme test that once failed to read pebble's root from the management
/// port it had just seen accept connections).
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut state = u64::from(seed()) << 32 | 1;
    let mut held: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    for _ in 0..10_000 {
        if held.len() == n {
            break;
        }
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = 10_000 + (state % 10_000) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports in 10000-19999");
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    handed_out.extend(&ports);
    ports
}

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub units: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    ports: (u16, u16),
    /// Set by `docker::Containers::of`: containers with this `chain.store` label are removed
    /// when the daemon is dropped (after chaind is gone).
    pub(crate) docker_store: std::sync::Mutex<Option<String>>,
    /// The Docker network of this daemon's containers (`[docker] network`).
    network: String,
}

impl TestDaemon {
    /// Starts chaind with these unit files (name, TOML) and waits until its API answers.
    pub fn start(units: &[(&str, &str)]) -> TestDaemon {
        Self::start_with(units, &[])
    }

    pub fn start_with(units: &[(&str, &str)], args: &[&str]) -> TestDaemon {
        Self::start_full(units, args, None)
    }

    /// With a chaind.toml (written into the root before chaind starts).
    pub fn start_full(units: &[(&str, &str)], args: &[&str], config: Option<&str>) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("chain-test-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("root");
        let units_dir = dir.path().join("units");
        std::fs::create_dir_all(&units_dir).unwrap();
        // The daemon's containers join a bridge network of its own, removed with it (see
        // Drop): tests leave no network behind and never share one that another test removes.
        let network = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .expect("tempdir name")
            .to_string();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("chaind.toml"),
            format!(
                "{}\n[docker]\nnetwork = \"{network}\"\n",
                config.unwrap_or_default()
            ),
        )
        .unwrap();
        for (name, text) in units {
            std::fs::write(units_dir.join(format!("{name}.toml")), text).unwrap();
        }
        let mut d = TestDaemon {
            socket: root.join("chaind.sock"),
            root,
            units: units_dir,
            dir,
            child: None,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            ports: port_window(),
            docker_store: std::sync::Mutex::new(None),
            network,
        };
        d.spawn();
        d
    }

    /// Starts (or starts again) the chaind process on the same root.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "chaind already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("chaind.log"))
            .unwrap();
        let child = Command::new(CHAIND)
            .arg("--root")
            .arg(&self.root)
            .arg("--units")
            .arg(&self.units)
            .arg("--port-range")
            .arg(format!("{}-{}", self.ports.0, self.ports.1))
            .args(&self.extra_args)
            .env("CHAIN_LOG", "info,chain=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn chaind");
        self.child = Some(child);
        eventually(Duration::from_secs(20), "chaind API to answer", || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("chaind exited early with {status}\n{}", self.daemon_log());
                }
            }
            self.ctl(&["ls"]).status.success().then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL chaind (workloads keep running) and reap it.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().ok();
        c.wait().ok();
    }

    /// SIGTERM chaind and wait for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        signal(c.id() as i32, libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s;
            }
            if Instant::now() > end {
                c.kill().ok();
                panic!(
                    "chaind did not exit within 30s of SIGTERM\n{}",
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chaind.log")).unwrap_or_default()
    }

    pub fn write_unit(&self, name: &str, text: &str) {
        // Write then rename, as editors do, so the watcher never sees half a file.
        let tmp = self.units.join(format!(".{name}.toml.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.units.join(format!("{name}.toml"))).unwrap();
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CHAINCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run chainctl")
    }

    /// Runs chainctl and panics with its output unless it succeeds.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "chainctl {args:?} failed: {}\nstdout: {}\nstderr: {}\n--- chaind log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.daemon_log(), 60)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ls(&self) -> Vec<InstanceInfo> {
        serde_json::from_str(&self.ctl_ok(&["ls", "--json"])).expect("ls --json is a JSON array")
    }

    pub fn instances(&self, unit: &str) -> Vec<InstanceInfo> {
        self.ls().into_iter().filter(|i| i.unit == unit).collect()
    }

    pub fn status(&self, unit: &str) -> UnitStatus {
        serde_json::from_str(&self.ctl_ok(&["status", unit, "--json"])).expect("status --json")
    }

    pub fn events(&self, unit: &str) -> Vec<EventInfo> {
        let out = self.ctl_ok(&["events", "--unit", unit, "-n", "1000", "--json"]);
        out.lines()
            .map(|l| serde_json::from_str(l).expect("event line"))
            .collect()
    }

    /// Waits until `unit` has exactly `n` instances, all running (ready).
    pub fn wait_running(&self, unit: &str, n: usize) -> Vec<InstanceInfo> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.instances(unit);
            if v.len() == n && v.iter().all(|i| i.state == "running" && i.pid.is_some()) {
                return v;
            }
            if Instant::now() > end {
                let s = self.status_any(unit);
                panic!(
                    "timed out waiting for {n} running instances of {unit}: {v:#?}\nerrors: {:#?}\nwaiting: {:?}\nevents: {:#?}",
                    s.summary.errors, s.summary.waiting, s.events
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id() as i32, libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            c.kill().ok();
            c.wait().ok();
        }
        // Safety net: no process that still holds a file under this test's directory survives,
        // and no container this daemon created.
        kill_holders(self.dir.path());
        if let Some(store) = self.docker_store.lock().ok().and_then(|s| s.clone()) {
            docker::remove_all(&store);
            let _ = docker::docker(&["network", "rm", &self.network]);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- chaind log ({}) ---\n{}",
                self.dir.path().display(),
                tail(&self.daemon_log(), 200)
            );
        }
    }
}

/// SIGKILLs every process with an open file, cwd or FIFO under `dir`.
pub fn kill_holders(dir: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id() as i32;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let holds = std::fs::read_dir(p.path().join("fd"))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.starts_with(dir)))
            })
            .unwrap_or(false)
            || std::fs::read_link(p.path().join("cwd")).is_ok_and(|l| l.starts_with(dir));
        if holds {
            signal(pid, libc::SIGKILL);
        }
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we observed; a stale pid gives ESRCH, which is ignored.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A minimal HTTP/1.1 GET on 127.0.0.1:port: (status, body). Errors are returned, not panicked.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {buf:?}")))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A unit running the demo app.
pub fn demo_unit(instances: u32, version: &str, extra: &str) -> String {
    format!(
        r#"instances = {instances}
[process]
command = "{demo}"
kill_timeout = "5s"
[env]
VERSION = "{version}"
{extra}
"#,
        demo = example("demo").display()
    )
}

impl TestDaemon {
    /// The proxy's HTTP address (start the daemon with `--http 127.0.0.1:0`).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        let v: chain::api::wire::VersionInfo =
            serde_json::from_str(&self.ctl_ok(&["version", "--json"])).unwrap();
        v.http
            .expect("daemon started without --http")
            .parse()
            .unwrap()
    }

    /// The proxy's HTTPS address.
    pub fn https_addr(&self) -> std::net::SocketAddr {
        let v: chain::api::wire::VersionInfo =
            serde_json::from_str(&self.ctl_ok(&["version", "--json"])).unwrap();
        v.https
            .expect("daemon started without https")
            .parse()
            .unwrap()
    }

    /// Status whatever the unit's state (chainctl exits non-zero for broken units).
    pub fn status_any(&self, unit: &str) -> UnitStatus {
        let out = self.ctl(&["status", unit, "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// A byte stream a test client talks HTTP/1.1 over: plain TCP or TLS.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A TLS client configuration that trusts the certificate chaind generated for `localhost`
/// (the daemon must run with an HTTPS listener and no certificate of its own).
pub fn localhost_tls(d: &TestDaemon) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(d.root.join("tls").join("localhost.crt"))
        .expect("chaind's generated localhost certificate");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(cfg)
}

/// A keep-alive HTTP/1.1 client for tests: one connection, reused; over TLS (SNI
/// `localhost`) when made with [`KeepAlive::tls`].
pub struct KeepAlive {
    addr: std::net::SocketAddr,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    conn: Option<std::io::BufReader<Box<dyn Stream>>>,
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl KeepAlive {
    pub fn new(addr: std::net::SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            tls: None,
            conn: None,
        }
    }

    pub fn tls(addr: std::net::SocketAddr, cfg: std::sync::Arc<rustls::ClientConfig>) -> KeepAlive {
        KeepAlive {
            addr,
            tls: Some(cfg),
            conn: None,
        }
    }

    /// Sends one request on the kept-alive connection (opening it if needed). Any I/O problem
    /// is an error: a proxy that never drops a request never makes the client reconnect.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        host: &str,
        body: &[u8],
    ) -> std::io::Result<Reply> {
        use std::io::BufRead;
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_nodelay(true)?;
            let stream: Box<dyn Stream> = match &self.tls {
                None => Box::new(s),
                Some(cfg) => {
                    let name =
                        rustls_pki_types::ServerName::try_from("localhost").expect("a valid name");
                    let tls = rustls::ClientConnection::new(cfg.clone(), name)
                        .map_err(std::io::Error::other)?;
                    Box::new(rustls::StreamOwned::new(tls, s))
                }
            };
            self.conn = Some(std::io::BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("just set");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let result = (|| {
            let w = conn.get_mut();
            w.write_all(head.as_bytes())?;
            w.write_all(body)?;
            let mut line = String::new();
            if conn.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
            let mut headers = Vec::new();
            loop {
                let mut l = String::new();
                conn.read_line(&mut l)?;
                let l = l.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let get = |n: &str| {
                headers
                    .iter()
                    .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.clone())
            };
            let mut body = Vec::new();
            if method == "HEAD" || status == 204 || status == 304 {
            } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
                body.resize(len, 0);
                conn.read_exact(&mut body)?;
            } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
                loop {
                    let mut size = String::new();
                    conn.read_line(&mut size)?;
                    let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                        .map_err(|_| std::io::Error::other("bad chunk size"))?;
                    let mut chunk = vec![0; n + 2];
                    conn.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else {
                conn.read_to_end(&mut body)?;
            }
            let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            Ok((
                Reply {
                    status,
                    headers,
                    body,
                },
                close,
            ))
        })();
        match result {
            Ok((reply, close)) => {
                if close {
                    self.conn = None;
                }
                Ok(reply)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Reply> {
        self.request("GET", path, "localhost", b"")
    }
}

/// A minimal WebSocket client (RFC 6455) for tests: handshake through `addr` with `Host`,
/// verifying the server's Sec-WebSocket-Accept, then masked frames out, frames in.
pub struct WebSocket {
    stream: TcpStream,
}

impl WebSocket {
    pub fn connect(
        addr: std::net::SocketAddr,
        host: &str,
        path: &str,
    ) -> std::io::Result<WebSocket> {
        use sha1::{Digest, Sha1};
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        // Read the response head byte by byte: nothing after it may be consumed.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut b)? == 0 {
                return Err(std::io::Error::other(format!(
                    "closed during handshake: {}",
                    String::from_utf8_lossy(&head)
                )));
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(std::io::Error::other(format!("no upgrade: {head}")));
        }
        let mut sha = Sha1::new();
        sha.update(key.as_bytes());
        sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let want = b64(&sha.finalize());
        let got = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-accept"))
            })
            .map(|(_, v)| v.trim().to_string());
        if got.as_deref() != Some(want.as_str()) {
            return Err(std::io::Error::other(format!(
                "bad Sec-WebSocket-Accept: {head}"
            )));
        }
        Ok(WebSocket { stream })
    }

    /// Sends one masked frame (opcode 1 text, 2 binary, 8 close, 9 ping).
    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame)
    }

    /// Reads one frame: (opcode, payload).
    pub fn recv(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head)?;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            self.stream.read_exact(&mut b)?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            self.stream.read_exact(&mut b)?;
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload)?;
        Ok((head[0] & 0x0f, payload))
    }
}

fn b64(data: &[u8]) -> String {
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
            out.push(if i <= chunk.len() {
                T[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Clients sending requests back to back through the proxy, each on its own keep-alive
/// connection, counting failures and recording the versions they are served.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<ClientReport>>,
}

/// What one load client saw.
#[derive(Debug, Default)]
pub struct ClientReport {
    pub ok: u64,
    pub errors: Vec<String>,
    /// The bodies served, with consecutive repeats collapsed: ["v1", "v2"] is one flip.
    pub versions: Vec<String>,
}

impl Load {
    /// `clients` keep-alive clients requesting `path` in a loop, over plain HTTP.
    pub fn start(addr: std::net::SocketAddr, clients: usize, path: &str) -> Load {
        Load::start_with(addr, None, clients, path)
    }

    /// The same over TLS (see [`localhost_tls`]).
    pub fn start_tls(
        addr: std::net::SocketAddr,
        tls: std::sync::Arc<rustls::ClientConfig>,
        clients: usize,
        path: &str,
    ) -> Load {
        Load::start_with(addr, Some(tls), clients, path)
    }

    fn start_with(
        addr: std::net::SocketAddr,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
        clients: usize,
        path: &str,
    ) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, path) = (stop.clone(), ok.clone(), path.to_string());
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let mut c = match tls {
                        Some(cfg) => KeepAlive::tls(addr, cfg),
                        None => KeepAlive::new(addr),
                    };
                    let mut report = ClientReport::default();
                    while !stop.load(Ordering::Relaxed) {
                        match c.get(&path) {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                report.ok += 1;
                                let v = r.text().trim().to_string();
                                if report.versions.last() != Some(&v) {
                                    report.versions.push(v);
                                }
                            }
                            Ok(r) => report.errors.push(format!(
                                "status {}: {}",
                                r.status,
                                r.text().trim()
                            )),
                            Err(e) => report.errors.push(format!("error: {e}")),
                        }
                    }
                    report
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` more requests succeeded (the load is really flowing).
    pub fn wait_for_more(&self, n: u64) {
        let target = self.ok() + n;
        eventually(Duration::from_secs(15), "load flowing", || {
            (self.ok() >= target).then_some(())
        });
    }

    pub fn finish(self) -> Vec<ClientReport> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("load client panicked"))
            .collect()
    }
}

/// Sums reports: (ok, failed, first errors).
pub fn summarize(reports: &[ClientReport]) -> (u64, usize, Vec<String>) {
    let ok = reports.iter().map(|r| r.ok).sum();
    let errors: Vec<String> = reports
        .iter()
        .flat_map(|r| r.errors.iter().cloned())
        .collect();
    let failed = errors.len();
    (ok, failed, errors.into_iter().take(10).collect())
}

/// Asserts that no request of the load failed (`what` prefixes the message); returns the
/// number that succeeded.
pub fn assert_no_failure(reports: &[ClientReport], what: &str) -> u64 {
    let (ok, failed, errors) = summarize(reports);
    assert_eq!(
        failed,
        0,
        "{what}{failed} of {} requests failed: {errors:?}",
        ok + failed as u64
    );
    ok
}
