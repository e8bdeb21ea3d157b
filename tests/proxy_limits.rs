//! Protection of the proxy: per-route rate limits (429 with Retry-After, recovery, exempt
//! routes, per-client buckets), slowloris heads closed at `header_read_timeout`, the per-IP
//! connection cap, oversized heads (431), and garbage bytes on both listeners.
//!
//! The 413 for a body over `max_body` is pinned in tests/proxy_http.rs.
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// One request on a fresh connection from source address `src` (any 127.x address works on
/// Linux loopback, which gives a test several client IPs): (status, raw response).
fn get_from(src: IpAddr, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind((src, 0).into())?;
        sock.connect(addr).await?.into_std()
    })?;
    s.set_nonblocking(false)?;
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
        .ok_or_else(|| std::io::Error::other(format!("bad response {buf:?}")))?;
    Ok((status, buf))
}

/// Sends `head` on a new connection and returns everything the proxy answers until it closes.
fn raw(addr: SocketAddr, head: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The proxy may answer and close before the whole head is written; that is fine.
    let _ = s.write_all(head);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn config(extra: &str) -> String {
    format!("[proxy]\nhttp = \"127.0.0.1:0\"\n{extra}")
}

/// chaind with one demo instance behind a catch-all route on a plain-HTTP listener, `extra`
/// added to `[proxy]`; returns once the route answers, with the keep-alive client that saw it.
fn routed_demo(extra: &str) -> (TestDaemon, SocketAddr, KeepAlive) {
    let d = TestDaemon::start_full(
        &[("web", &format!("{}\n[[route]]\n", demo_unit(1, "v1", "")))],
        &[],
        Some(&config(extra)),
    );
    d.wait_running("web", 1);
    let addr = d.http_addr();
    let mut c = KeepAlive::new(addr);
    eventually(Duration::from_secs(10), "route in the table", || {
        (c.get("/").ok()?.status == 200).then_some(())
    });
    (d, addr, c)
}

/// `/api` allows burst + 1 requests at once per client IP, then answers 429 with a short body
/// and `Retry-After`; a token is back only after 1/rps; `/api/health` (a longer prefix
/// without `rate_limit`) is exempt; another client IP has its own bucket.
#[test]
fn rate_limit_per_route_and_client() {
    let unit = format!(
        "{}\n[[route]]\npath = \"/api\"\nstrip_prefix = true\nrate_limit = {{ rps = 2, burst = 3 }}\n\
         [[route]]\npath = \"/api/health\"\nstrip_prefix = true\n",
        demo_unit(1, "v1", "")
    );
    let d = TestDaemon::start_with(&[("web", &unit)], &["--http", "127.0.0.1:0"]);
    d.wait_running("web", 1);
    let addr = d.http_addr();
    let mut c = KeepAlive::new(addr);
    // The exempt route costs no token, so it can tell when the table is ready.
    eventually(Duration::from_secs(10), "routes in the table", || {
        (c.get("/api/health").ok()?.status == 200).then_some(())
    });

    let t0 = Instant::now();
    for i in 0..4 {
        let r = c.get("/api").unwrap();
        assert_eq!(r.status, 200, "request {i} is within burst + 1 = 4");
    }
    let r = c.get("/api").unwrap();
    assert_eq!(r.status, 429, "the fifth request at once is over the limit");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.text(), "429 Too Many Requests\n");

    for _ in 0..20 {
        assert_eq!(c.get("/api/health").unwrap().status, 200, "exempt route");
    }
    let other: IpAddr = [127, 0, 0, 2].into();
    assert_eq!(
        get_from(other, addr, "/api").unwrap().0,
        200,
        "another client IP has a full bucket"
    );

    // Rejections cost nothing, so polling is fine; the token comes back 1/rps = 500 ms after
    // the first request reached chaind, which was after t0.
    let back = eventually(Duration::from_secs(5), "a token back", || {
        (c.get("/api").ok()?.status == 200).then(|| t0.elapsed())
    });
    assert!(
        back >= Duration::from_millis(500),
        "a token came back after {back:?}, before 1/rps"
    );
    assert_eq!(
        c.get("/api").unwrap().status,
        429,
        "one token back, not two"
    );
}

/// A client that sends part of a request head and then nothing is disconnected at
/// `header_read_timeout` (1 s here), while another client keeps being served throughout.
#[test]
fn slowloris_is_closed_at_header_read_timeout() {
    let (_d, addr, mut c) = routed_demo("header_read_timeout = \"1s\"\n");

    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t0 = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = slow.read_to_end(&mut buf);
        (t0.elapsed(), r.map(|_| buf))
    });
    let mut served = 0;
    // Bounded by the slow connection's own 10 s read timeout.
    while !reader.is_finished() {
        assert_eq!(c.get("/").unwrap().status, 200, "a normal client is served");
        served += 1;
    }
    let (closed_after, result) = reader.join().unwrap();
    let answer = match result {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
        Err(e) => panic!("the slow connection was not closed: {e} after {closed_after:?}"),
    };
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer {answer:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}, want about 1 s"
    );
    assert!(served > 0);
}

/// With `max_connections_per_ip = 2`, a third concurrent connection from the same IP is closed
/// at once, the first two keep working, another IP is not affected, and a slot frees up when
/// a connection closes.
#[test]
fn connections_per_ip_are_capped() {
    let (_d, addr, mut a) = routed_demo("max_connections_per_ip = 2\n");
    let mut b = KeepAlive::new(addr);
    assert_eq!(b.get("/").unwrap().status, 200);

    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    match third.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the third connection was not closed: {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "closed at once");

    assert_eq!(a.get("/").unwrap().status, 200, "the first stays open");
    assert_eq!(b.get("/").unwrap().status, 200, "the second stays open");
    assert_eq!(
        get_from([127, 0, 0, 3].into(), addr, "/").unwrap().0,
        200,
        "another IP has its own slots"
    );
    drop(a);
    eventually(Duration::from_secs(5), "a slot after a close", || {
        let mut c = KeepAlive::new(addr);
        (c.get("/").ok()?.status == 200).then_some(())
    });
}

/// A request head over `max_header_size` (16 KiB by default) and one with more than
/// `max_headers` (100) fields are answered 431 without reaching the app; a normal request on
/// the same listener still works.
#[test]
fn oversized_heads_get_431() {
    let (_d, addr, mut c) = routed_demo("");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 << 10)
    );
    let answer = raw(addr, big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "big head: {answer:?}");

    let mut many = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..120 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw(addr, many.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "many headers: {answer:?}"
    );

    // Just under the limits is fine.
    let mut ok = String::from("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for i in 0..90 {
        ok.push_str(&format!("X-H{i}: v\r\n"));
    }
    ok.push_str("\r\n");
    assert!(raw(addr, ok.as_bytes()).starts_with("HTTP/1.1 200"));
    assert_eq!(c.get("/").unwrap().status, 200);
}

/// Opens a connection, writes `bytes`, and returns how long until the proxy closed it.
fn closed_after(addr: SocketAddr, bytes: &'static [u8]) -> std::thread::JoinHandle<Duration> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    s.write_all(bytes).unwrap();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("not closed: {e} after {:?}", t0.elapsed()),
        }
        t0.elapsed()
    })
}

const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// The preface, an empty SETTINGS frame, then a HEADERS frame on stream 1 (GET / http,
/// END_STREAM) without END_HEADERS: the head is never completed by a CONTINUATION.
const H2_PARTIAL_HEADERS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\
    \0\0\x03\x01\x01\0\0\0\x01\x82\x86\x84";

/// HTTP/2 (prior knowledge on the plain listener, as h2load speaks it) is protected like
/// HTTP/1.1: a connection that sends the preface and then nothing, and one that never
/// completes a HEADERS frame, are closed after `header_read_timeout` (1 s here; GOAWAY, then
/// a hard close another 1 s later for a client that ignores it); a request with more than
/// `max_headers` (100) fields gets 431; a request that takes longer than the timeout is not
/// cut, and its connection serves on.
#[test]
fn http2_heads_are_limited_and_idle_connections_closed() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (_d, addr, _client) = routed_demo("header_read_timeout = \"1s\"\n");

    let silent = closed_after(addr, H2_PREFACE_AND_SETTINGS);
    let partial = closed_after(addr, H2_PARTIAL_HEADERS);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let get = |path: &str, fields: usize| {
            let mut b = hyper::Request::get(format!("http://localhost{path}"));
            for i in 0..fields {
                b = b.header(format!("x-h{i}"), "v");
            }
            b.body(Empty::<bytes::Bytes>::new()).unwrap()
        };
        let many = send.send_request(get("/", 120)).await.unwrap();
        assert_eq!(many.status(), 431, "120 header fields");
        let body = many.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"431 Request Header Fields Too Large\n");
        let fine = send.send_request(get("/", 90)).await.unwrap();
        assert_eq!(fine.status(), 200, "90 header fields");

        let slow = send.send_request(get("/sleep?ms=2500", 0)).await.unwrap();
        assert_eq!(slow.status(), 200, "a request longer than the timeout");
        let body = slow.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
        let after = send.send_request(get("/", 0)).await.unwrap();
        assert_eq!(after.status(), 200, "the connection serves on");
    });

    for (what, t) in [("preface only", silent), ("unfinished HEADERS", partial)] {
        let t = t.join().unwrap();
        assert!(
            t >= Duration::from_millis(900) && t < Duration::from_secs(5),
            "{what}: closed after {t:?}, want 1-2 s"
        );
    }
}

/// xorshift64*: deterministic bytes from a printed seed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }
}

/// TLS handshake against the generated localhost certificate, then one HTTP/1.1 GET.
async fn https_get(root: &std::path::Path, addr: SocketAddr) -> std::io::Result<u16> {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    let pem = std::fs::read(root.join("tls/localhost.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots
            .add(c.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("valid name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("/")
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .expect("valid request");
    let resp = send
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    Ok(resp.status().as_u16())
}

/// Random bytes, random bytes after a valid request line, random bytes after the HTTP/2
/// preface, and random bytes instead of a TLS ClientHello crash nothing: chaind stays up and
/// both listeners keep serving normal requests.
#[test]
fn garbage_does_not_break_the_listeners() {
    let d = TestDaemon::start_full(
        &[(
            "web",
            &format!(
                "{}\n[[route]]\nhttps_redirect = false\n",
                demo_unit(1, "v1", "")
            ),
        )],
        &[],
        Some("[proxy]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n"),
    );
    d.wait_running("web", 1);
    let (http, https) = (d.http_addr(), d.https_addr());
    let mut c = KeepAlive::new(http);
    eventually(Duration::from_secs(10), "route in the table", || {
        (c.get("/").ok()?.status == 200).then_some(())
    });

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("garbage seed: {seed:#x}");
    let mut rng = Rng(seed);
    let mut sent = 0;
    for round in 0..40 {
        let noise = rng.bytes(1 + round * 97 % 4096);
        let prefix: &[u8] = match round % 4 {
            0 => b"",
            1 => b"GET / HTTP/1.1\r\n",
            2 => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            _ => b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n",
        };
        let target = if round % 2 == 0 { https } else { http };
        let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(prefix);
        let _ = s.write_all(&noise);
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Whatever chaind answers, it must end the connection on its own.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        sent += 1;
    }
    assert!(sent > 30, "only {sent} connections could be made");

    assert!(alive(d.pid() as i32), "chaind died on garbage");
    // A new client: the first one may have idled past header_read_timeout meanwhile.
    let mut c = KeepAlive::new(http);
    assert_eq!(c.get("/").unwrap().status, 200, "HTTP still serves");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(
        rt.block_on(https_get(&d.root, https)).unwrap(),
        200,
        "HTTPS still serves"
    );
}
