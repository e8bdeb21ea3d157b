//! The HTTP proxy in front of units: routing by host and path, balancing, error statuses,
//! passive health and retry, and draining before an instance stops.
mod support;

use std::time::Duration;

use support::*;

fn routed(instances: u32, version: &str, route: &str) -> String {
    format!(
        "{}\n[[route]]\n{route}\n",
        demo_unit(instances, version, "")
    )
}

/// A daemon with one demo instance ("v1") behind `route`, and a client it already answers.
fn one_instance(route: &str) -> (TestDaemon, KeepAlive) {
    let d = TestDaemon::start_with(
        &[("web", &routed(1, "v1", route))],
        &["--http", "127.0.0.1:0"],
    );
    d.wait_running("web", 1);
    let mut c = KeepAlive::new(d.http_addr());
    eventually(Duration::from_secs(5), "routed", || {
        (c.get("/").ok()?.status == 200).then_some(())
    });
    (d, c)
}

/// Host and longest-prefix routing, strip_prefix, 404 without a route, and the forwarded
/// headers the app sees.
#[test]
fn routes_by_host_and_prefix() {
    let d = TestDaemon::start_with(
        &[
            ("web", &routed(1, "web", "path = \"/\"")),
            (
                "api",
                &routed(1, "api", "path = \"/api\"\nstrip_prefix = true"),
            ),
            (
                "admin",
                &routed(
                    1,
                    "admin",
                    "host = \"admin.example.com\"\n[route.headers]\nX-Frame-Options = \"DENY\"\nx-version = \"\"",
                ),
            ),
        ],
        &["--http", "127.0.0.1:0"],
    );
    for u in ["web", "api", "admin"] {
        d.wait_running(u, 1);
    }
    let mut c = KeepAlive::new(d.http_addr());
    let body = |c: &mut KeepAlive, path: &str, host: &str| {
        let r = c.request("GET", path, host, b"").unwrap();
        (r.status, r.text().trim().to_string())
    };
    assert_eq!(body(&mut c, "/", "x.com"), (200, "web".into()));
    assert_eq!(body(&mut c, "/api", "x.com"), (200, "api".into()));
    let apiary = c.request("GET", "/apiary", "x.com", b"").unwrap();
    assert_eq!(
        apiary.header("x-version"),
        Some("web"),
        "prefixes match whole segments"
    );
    // strip_prefix: /api/env?name=... reaches the app as /env?name=...
    assert_eq!(
        body(&mut c, "/api/env?name=VERSION", "x.com"),
        (200, "api".into())
    );
    assert_eq!(
        body(&mut c, "/", "admin.example.com"),
        (200, "admin".into())
    );
    assert_eq!(
        body(&mut c, "/", "ADMIN.example.com:8080"),
        (200, "admin".into())
    );
    // What the app sees: Host kept, X-Forwarded-*, a request id, no hop-by-hop headers.
    let seen = c
        .request("GET", "/headers", "x.com", b"")
        .unwrap()
        .text()
        .to_ascii_lowercase();
    let header = |name: &str| {
        seen.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    assert_eq!(header("host").as_deref(), Some("x.com"), "{seen}");
    assert_eq!(header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(header("x-forwarded-host").as_deref(), Some("x.com"));
    let id = header("x-request-id").unwrap_or_default();
    assert!(
        id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{seen}"
    );
    assert_eq!(header("connection"), None, "{seen}");
    // chaind's default response headers, and a route's own rules (set, remove).
    let web = c.request("GET", "/", "x.com", b"").unwrap();
    assert_eq!(web.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(web.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(web.header("strict-transport-security"), None, "plain HTTP");
    let admin = c.request("GET", "/", "admin.example.com", b"").unwrap();
    assert_eq!(admin.header("x-frame-options"), Some("DENY"));
    assert_eq!(admin.header("x-version"), None, "removed by the route");

    let only_api = TestDaemon::start_with(
        &[("api", &routed(1, "api", "path = \"/api\""))],
        &["--http", "127.0.0.1:0"],
    );
    only_api.wait_running("api", 1);
    let r = KeepAlive::new(only_api.http_addr())
        .get("/nothing")
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "404 Not Found\n");
}

/// Round robin spreads requests over the ready instances; 503 when none is ready.
#[test]
fn round_robin_and_no_instance() {
    let d = TestDaemon::start_with(&[("web", &routed(3, "v1", ""))], &["--http", "127.0.0.1:0"]);
    d.wait_running("web", 3);
    let mut c = KeepAlive::new(d.http_addr());
    // The table follows the snapshot a moment after readiness.
    eventually(Duration::from_secs(5), "all three instances routed", || {
        let mut pids: Vec<String> = (0..6)
            .map(|_| c.get("/").unwrap().header("x-pid").unwrap().to_string())
            .collect();
        pids.sort();
        pids.dedup();
        (pids.len() == 3).then_some(())
    });
    let mut seen = std::collections::HashMap::new();
    for _ in 0..30 {
        let r = c.get("/").unwrap();
        *seen
            .entry(r.header("x-pid").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 10), "uneven spread: {seen:?}");

    d.ctl_ok(&["stop", "web"]);
    let r = c.get("/").unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "503 Service Unavailable\n")
    );
}

/// An instance slower than the route's `timeout` gets the client a 504 with a short plain
/// body, and the client's connection stays usable. The timeout counts from each request: a
/// keep-alive connection's requests, each within it, together well past it, all get through
/// (the connection keeps one timer for its requests and moves its deadline).
#[test]
fn slow_instance_is_504() {
    let (_d, mut c) = one_instance("path = \"/\"\ntimeout = \"1s\"");
    for _ in 0..3 {
        assert_eq!(c.get("/sleep?ms=400").unwrap().text(), "v1\n");
    }
    let r = c.get("/sleep?ms=5000").unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (504, "504 Gateway Timeout\n")
    );
    assert_eq!(c.get("/").unwrap().text(), "v1\n");
    assert_eq!(c.get("/sleep?ms=400").unwrap().text(), "v1\n");
}

/// An instance that takes the request and closes the connection without an answer gets the
/// client a 502 with a short plain body; a request that reached an instance is not retried.
#[test]
fn broken_instance_is_502() {
    let server = [
        "import os, socket",
        "s = socket.socket()",
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
        "s.bind(('127.0.0.1', int(os.environ['PORT'])))",
        "s.listen(64)",
        "while True:",
        "    c, _ = s.accept()",
        "    c.recv(65536)",
        "    c.close()",
    ]
    .join("\n");
    let unit = format!(
        "[process]\ncommand = \"python3\"\nargs = [\"-c\", {server:?}]\n[[route]]\npath = \"/\"\n"
    );
    let d = TestDaemon::start_with(&[("broken", &unit)], &["--http", "127.0.0.1:0"]);
    d.wait_running("broken", 1);
    let mut c = KeepAlive::new(d.http_addr());
    let r = eventually(Duration::from_secs(5), "routed", || {
        c.get("/").ok().filter(|r| r.status != 503)
    });
    assert_eq!((r.status, r.text().as_str()), (502, "502 Bad Gateway\n"));
}

/// A body larger than max_body gets 413 (declared length, and chunked).
#[test]
fn oversized_body_is_413() {
    let (_d, mut c) = one_instance("max_body = \"1KiB\"");
    let r = c.request("POST", "/echo", "x", &[b'a'; 512]).unwrap();
    assert_eq!((r.status, r.body.len()), (200, 512));
    let r = c.request("POST", "/echo", "x", &[b'a'; 4096]).unwrap();
    assert_eq!(r.status, 413);
}

/// Bodies of several megabytes stream through both ways, byte for byte, and the upstream
/// connection they used serves the next request (given back to the pool once the response
/// body has been read to its end).
#[test]
fn large_bodies_stream_both_ways() {
    let (_d, mut c) = one_instance("path = \"/\"");
    let upload: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 251) as u8).collect();
    for round in 0..3 {
        let r = c.request("POST", "/echo", "x", &upload).unwrap();
        assert_eq!(r.status, 200, "round {round}");
        assert!(r.body == upload, "round {round}: the echoed body differs");
        let n = 8 << 20;
        let r = c.get(&format!("/text?bytes={n}")).unwrap();
        assert_eq!((r.status, r.body.len()), (200, n), "round {round}");
        assert!(
            r.body.starts_with(b"chain chain ") && r.body.ends_with(b"chain "[..n % 6].as_ref())
        );
        assert_eq!(c.get("/").unwrap().text(), "v1\n");
    }
}

/// An instance killed behind the proxy's back: the failed connect is retried on another
/// instance (no error for the client), and the dead one is skipped afterwards.
#[test]
fn killed_instance_is_retried_and_skipped() {
    let d = TestDaemon::start_with(
        &[(
            "web",
            &routed(2, "v1", "max_fails = 1\nfail_timeout = \"30s\""),
        )],
        &["--http", "127.0.0.1:0"],
    );
    let inst = d.wait_running("web", 2);
    let mut c = KeepAlive::new(d.http_addr());
    eventually(Duration::from_secs(5), "both routed", || {
        let a = c.get("/").ok()?.header("x-pid")?.to_string();
        let b = c.get("/").ok()?.header("x-pid")?.to_string();
        (a != b).then_some(())
    });
    // SIGSTOP is not enough (connections queue); kill it so connects are refused.
    let victim = inst[0].pid.unwrap();
    signal(victim, libc::SIGKILL);
    eventually(Duration::from_secs(5), "victim gone", || {
        (!alive(victim)).then_some(())
    });
    for _ in 0..20 {
        let r = c.get("/").unwrap();
        assert_eq!(r.status, 200, "a request failed after the kill");
        assert_ne!(r.header("x-pid"), Some(victim.to_string().as_str()));
    }
}

/// Connections from the proxy to `port` that the instance still holds open: its side of
/// each, ESTABLISHED, from /proc/net/tcp.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "01"
                && f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

/// An instance that closes keep-alive connections left idle (as Node does after its
/// `keepAliveTimeout`): each request after such a close still gets its answer, sent on another
/// connection, never a 502.
#[test]
fn instance_closing_idle_connections_costs_no_request() {
    let unit = format!(
        "{}\n[[route]]\npath = \"/\"\n",
        demo_unit(1, "v1", "IDLE_TIMEOUT_MS = \"100\"")
    );
    let d = TestDaemon::start_with(&[("web", &unit)], &["--http", "127.0.0.1:0"]);
    let port = d.wait_running("web", 1)[0].port.unwrap();
    let mut c = KeepAlive::new(d.http_addr());
    for round in 0..5 {
        let r = c.get("/").unwrap();
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        eventually(
            Duration::from_secs(10),
            "the instance to close its idle connections",
            || (established_to(port) == 0).then_some(()),
        );
    }
}

/// HTTP/2 streams on one connection each get the route's timeout: a slow stream gets a 504
/// while the streams beside it are answered, and in a second round, whose streams reuse the
/// timers the connection kept from the first, the slow one times out again.
#[test]
fn h2_streams_time_out_one_by_one() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (d, _c) = one_instance("path = \"/\"\ntimeout = \"1s\"");
    let addr = d.http_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // HTTP/2 with prior knowledge on the plain listener.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let get = |path: &str| {
            let mut send = send.clone();
            let req = hyper::Request::get(format!("http://x{path}"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            async move {
                let r = send.send_request(req).await.unwrap();
                let status = r.status().as_u16();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        for round in 0..2 {
            let (slow, a, b) = tokio::join!(
                get("/sleep?ms=5000"),
                get("/sleep?ms=300"),
                get("/sleep?ms=300")
            );
            assert_eq!(slow, (504, "504 Gateway Timeout\n".into()), "round {round}");
            assert_eq!(a, (200, "v1\n".into()), "round {round}");
            assert_eq!(b, (200, "v1\n".into()), "round {round}");
        }
    });
}

/// The nice values of chaind's threads: (thread id, name, nice).
fn thread_nices(pid: u32) -> Vec<(u32, String, i32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let nice = chain_agent::procfs::parse_stat(&stat)?.nice;
            let tid = t.file_name().to_str()?.parse().ok()?;
            Some((tid, comm.trim().to_string(), nice))
        })
        .collect()
}

/// `worker_priority` gives every proxy worker thread that nice value, and not chaind's main
/// thread (nor the control plane's, which it starts). Raising a nice value takes no privilege,
/// so the test asks for one above its own.
#[test]
fn worker_priority_sets_the_workers_nice_value() {
    let own = chain_agent::procfs::stat(std::process::id() as i32)
        .expect("own stat")
        .nice;
    let want = (own + 3).min(19);
    let config =
        format!("worker_threads = 2\nworker_priority = {want}\n[proxy]\nhttp = \"127.0.0.1:0\"\n");
    let d = TestDaemon::start_full(&[("web", &routed(1, "v1", ""))], &[], Some(&config));
    d.wait_running("web", 1);
    let threads = eventually(
        Duration::from_secs(10),
        "two workers at the priority",
        || {
            let threads = thread_nices(d.pid());
            let workers: Vec<_> = threads
                .iter()
                .filter(|(_, name, _)| name.starts_with("chain-proxy-"))
                .collect();
            (workers.len() == 2 && workers.iter().all(|(_, _, n)| *n == want)).then_some(threads)
        },
    );
    let main = threads.iter().find(|(tid, _, _)| *tid == d.pid());
    assert_eq!(main.map(|t| t.2), Some(own), "{threads:?}");
    let mut c = KeepAlive::new(d.http_addr());
    eventually(Duration::from_secs(10), "the workers serve", || {
        (c.get("/").ok()?.status == 200).then_some(())
    });
}
