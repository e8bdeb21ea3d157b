//! Zero-downtime replacement: `chainctl reload` and unit edits under running TLS clients
//! through the HTTPS proxy, with no failed request and slow requests finishing on the old
//! instances.
mod support;

use std::time::Duration;

use support::*;

/// A daemon serving `web` over HTTPS (its generated localhost certificate), the proxy's
/// address, and the TLS configuration that trusts it.
fn start() -> (
    TestDaemon,
    std::net::SocketAddr,
    std::sync::Arc<rustls::ClientConfig>,
) {
    let d = TestDaemon::start_with(&[("web", &unit("v1"))], &["--https", "127.0.0.1:0"]);
    d.wait_running("web", 2);
    let (addr, tls) = (d.https_addr(), localhost_tls(&d));
    eventually(Duration::from_secs(5), "routed", || {
        (KeepAlive::tls(addr, tls.clone()).get("/").ok()?.text() == "v1\n").then_some(())
    });
    (d, addr, tls)
}

fn unit(version: &str) -> String {
    format!(
        "{}\n[[route]]\npath = \"/\"\n",
        demo_unit(
            2,
            version,
            "[health]\ntype = \"http\"\nstart_interval = \"50ms\""
        )
    )
}

/// `chainctl reload` replaces both instances while four clients hammer the proxy: no request
/// fails, and every instance afterwards is new.
#[test]
fn reload_under_load_drops_nothing() {
    let (d, addr, tls) = start();
    let before = d.wait_running("web", 2);
    let l = Load::start_tls(addr, tls, 4, "/");
    l.wait_for_more(200);
    for _ in 0..3 {
        d.ctl_ok(&["reload", "web"]);
    }
    l.wait_for_more(200);
    let ok = assert_no_failure(&l.finish(), "");
    let after = d.wait_running("web", 2);
    assert!(after.iter().all(|a| before.iter().all(|b| a.pid != b.pid)));
    eprintln!("reload under load: {ok} requests, 0 failed");
}

/// Editing the unit file rolls to the new version under load with no failed request, and the
/// version served flips.
#[test]
fn edit_under_load_flips_version_without_errors() {
    let (d, addr, tls) = start();
    let l = Load::start_tls(addr, tls.clone(), 4, "/");
    d.write_unit("web", &unit("v2"));
    let mut probe = KeepAlive::tls(addr, tls);
    eventually(Duration::from_secs(30), "v2 everywhere", || {
        let all_v2 = (0..6).all(|_| probe.get("/").is_ok_and(|r| r.text() == "v2\n"));
        let settled = d.instances("web").len() == 2;
        (all_v2 && settled).then_some(())
    });
    assert_no_failure(&l.finish(), "");
}

/// A slow request running on an old instance finishes (200) while the instance is replaced:
/// the old instance is drained before its stop signal.
#[test]
fn slow_request_survives_replacement() {
    let (d, addr, tls) = start();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let tls = tls.clone();
            std::thread::spawn(move || {
                KeepAlive::tls(addr, tls)
                    .get("/sleep?ms=1500")
                    .map(|r| (r.status, r.text()))
            })
        })
        .collect();
    // Wait until the old instances hold all four slow requests, then replace them.
    let old = d.instances("web");
    eventually(
        Duration::from_secs(5),
        "slow requests in flight on the old instances",
        || {
            let sleeping: u32 = old
                .iter()
                .filter_map(|i| http_get(i.port?, "/sleeping").ok())
                .map(|(_, b)| b.trim().parse::<u32>().unwrap_or(0))
                .sum();
            (sleeping == 4).then_some(())
        },
    );
    d.ctl_ok(&["reload", "web"]);
    for t in slow {
        let (status, body) = t.join().unwrap().expect("slow request failed");
        assert_eq!((status, body.as_str()), (200, "v1\n"));
    }
}

/// An app that, like Node's `server.close()`, exits on SIGTERM only once every connection to
/// it has closed: once it is replaced, the proxy closes its idle pooled connections to it, so
/// it exits at once instead of waiting for them (here: for `kill_timeout`, 60 s).
#[test]
fn replaced_instance_gets_its_idle_connections_closed() {
    let server = [
        "import os, signal, sys, threading, time",
        "from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler",
        "open_conns = 0",
        "lock = threading.Lock()",
        "class H(BaseHTTPRequestHandler):",
        "    protocol_version = 'HTTP/1.1'",
        "    def setup(self):",
        "        global open_conns",
        "        with lock: open_conns += 1",
        "        super().setup()",
        "    def finish(self):",
        "        global open_conns",
        "        super().finish()",
        "        with lock: open_conns -= 1",
        "    def do_GET(self):",
        "        body = os.environ['VERSION'].encode() + b'\\n'",
        "        self.send_response(200)",
        "        self.send_header('Content-Length', str(len(body)))",
        "        self.end_headers()",
        "        self.wfile.write(body)",
        "    def log_message(self, *args): pass",
        "srv = ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)",
        "srv.daemon_threads = True",
        "signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())",
        "srv.serve_forever()",
        "while True:",
        "    with lock:",
        "        if open_conns == 0: sys.exit(0)",
        "    time.sleep(0.05)",
    ]
    .join("\n");
    let unit = format!(
        "instances = 2\n[process]\ncommand = \"python3\"\nargs = [\"-c\", {server:?}]\nkill_timeout = \"60s\"\n[env]\nVERSION = \"v1\"\n[[route]]\npath = \"/\"\n"
    );
    let d = TestDaemon::start_with(&[("web", &unit)], &["--http", "127.0.0.1:0"]);
    let before = d.wait_running("web", 2);
    // Several clients at once, so that the proxy pools connections to both instances.
    let l = Load::start(d.http_addr(), 4, "/");
    l.wait_for_more(100);
    assert_no_failure(&l.finish(), "");
    d.ctl_ok(&["reload", "web"]);
    eventually(Duration::from_secs(15), "replaced instances exited", || {
        before
            .iter()
            .filter_map(|i| i.pid)
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .then_some(())
    });
}
