//! What the proxy does to traffic besides routing: WebSocket upgrades, gzip, affinity,
//! least_conn, and `chainctl routes`.
mod support;

use std::io::Read;
use std::time::Duration;

use support::*;

fn routed(instances: u32, version: &str, route: &str) -> String {
    format!(
        "{}\n[[route]]\n{route}\n",
        demo_unit(instances, version, "")
    )
}

fn wait_routed(addr: std::net::SocketAddr, host: &str) {
    eventually(Duration::from_secs(10), "route live", || {
        (KeepAlive::new(addr)
            .request("GET", "/", host, b"")
            .ok()?
            .status
            == 200)
            .then_some(())
    });
}

/// A WebSocket handshake and echo through the proxy, messages both ways, ping/pong, close;
/// and the instance counts as busy while the socket is open.
#[test]
fn websocket_echo_through_proxy() {
    let d = TestDaemon::start_with(
        &[("ws", &routed(1, "v1", "path = \"/\""))],
        &["--http", "127.0.0.1:0"],
    );
    d.wait_running("ws", 1);
    let addr = d.http_addr();
    wait_routed(addr, "x");
    let mut ws = WebSocket::connect(addr, "x", "/ws").unwrap();
    for msg in ["hello", "world", &"long ".repeat(10_000)] {
        ws.send(1, msg.as_bytes()).unwrap();
        let (op, payload) = ws.recv().unwrap();
        assert_eq!((op, payload.as_slice()), (1, msg.as_bytes()));
    }
    ws.send(9, b"ping").unwrap();
    assert_eq!(ws.recv().unwrap(), (0xA, b"ping".to_vec()));
    ws.send(8, &[0x03, 0xe8]).unwrap();
    assert_eq!(ws.recv().unwrap().0, 8);
}

/// Text responses are gzipped for clients that accept it; not for others, not when small,
/// and not on a route with compress = false.
#[test]
fn gzip_for_text_when_accepted() {
    let d = TestDaemon::start_with(
        &[
            (
                "on",
                &routed(1, "v1", "path = \"/on\"\nstrip_prefix = true"),
            ),
            (
                "off",
                &routed(
                    1,
                    "v1",
                    "path = \"/off\"\nstrip_prefix = true\ncompress = false",
                ),
            ),
        ],
        &["--http", "127.0.0.1:0"],
    );
    d.wait_running("on", 1);
    d.wait_running("off", 1);
    let addr = d.http_addr();
    let get = |path: &str, accept: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        use std::io::Write;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {accept}\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase(),
            raw[split + 4..].to_vec(),
        )
    };
    eventually(Duration::from_secs(10), "routes live", || {
        (get("/on/health", "identity").0.starts_with("http/1.1 200")
            && get("/off/health", "identity").0.starts_with("http/1.1 200"))
        .then_some(())
    });
    let (head, body) = get("/on/text?bytes=20000", "gzip, br");
    assert!(
        head.contains("content-encoding: gzip") && head.contains("vary: accept-encoding"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let body = dechunk(&body);
    assert!(body.len() < 2000, "compressed to {} bytes", body.len());
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain.len(), 20000);
    assert!(plain.starts_with("chain chain"));

    assert!(!get("/on/text?bytes=20000", "identity")
        .0
        .contains("content-encoding"));
    assert!(
        !get("/on/text?bytes=100", "gzip")
            .0
            .contains("content-encoding"),
        "small bodies stay plain"
    );
    assert!(!get("/off/text?bytes=20000", "gzip")
        .0
        .contains("content-encoding"));
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

/// policy = "cookie": the first response sets the affinity cookie and requests carrying it stay
/// on that instance; policy = "ip_hash": one client IP always lands on one instance.
#[test]
fn affinity_by_cookie_and_ip() {
    let d = TestDaemon::start_with(
        &[
            ("ck", &routed(3, "v1", "host = \"ck\"\npolicy = \"cookie\"")),
            (
                "ih",
                &routed(3, "v1", "host = \"ih\"\npolicy = \"ip_hash\""),
            ),
        ],
        &["--http", "127.0.0.1:0"],
    );
    d.wait_running("ck", 3);
    d.wait_running("ih", 3);
    let addr = d.http_addr();
    let mut c = KeepAlive::new(addr);
    // All three instances routed: round robin without a cookie reaches each.
    eventually(Duration::from_secs(10), "three ck instances routed", || {
        let mut pids: Vec<String> = (0..6)
            .map(|_| c.request("GET", "/pid", "ck", b"").ok().map(|r| r.text()))
            .collect::<Option<_>>()?;
        pids.sort();
        pids.dedup();
        (pids.len() == 3).then_some(())
    });
    let r = c.request("GET", "/pid", "ck", b"").unwrap();
    let cookie = r.header("set-cookie").expect("affinity cookie").to_string();
    assert!(
        cookie.starts_with("chain_affinity=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let value = cookie.split(';').next().unwrap().to_string();
    let pinned = r.text();
    for _ in 0..10 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        use std::io::Write;
        write!(
            s,
            "GET /pid HTTP/1.1\r\nHost: ck\r\nCookie: a=b; {value}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.ends_with(&pinned), "left the pinned instance: {raw}");
        assert!(
            !raw.to_ascii_lowercase().contains("set-cookie"),
            "cookie re-set although it matched"
        );
    }

    let mut ih = KeepAlive::new(addr);
    let pids: Vec<String> = (0..12)
        .map(|_| ih.request("GET", "/pid", "ih", b"").unwrap().text())
        .collect();
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "ip_hash moved a client: {pids:?}"
    );
}

/// least_conn sends new requests to the idle instance while the other holds a slow request.
#[test]
fn least_conn_prefers_idle_instance() {
    let d = TestDaemon::start_with(
        &[("lc", &routed(2, "v1", "policy = \"least_conn\""))],
        &["--http", "127.0.0.1:0"],
    );
    let inst = d.wait_running("lc", 2);
    let addr = d.http_addr();
    wait_routed(addr, "x");
    let slow = std::thread::spawn(move || {
        KeepAlive::new(addr)
            .get("/sleep?ms=2000")
            .map(|r| r.header("x-pid").map(str::to_string))
    });
    // Find which instance holds the slow request.
    let busy = eventually(Duration::from_secs(5), "slow request in flight", || {
        inst.iter()
            .find(|i| http_get(i.port.unwrap(), "/sleeping").is_ok_and(|(_, b)| b.trim() == "1"))
            .map(|i| i.pid.unwrap())
    });
    let mut c = KeepAlive::new(addr);
    for _ in 0..8 {
        let r = c.get("/").unwrap();
        assert_ne!(
            r.header("x-pid"),
            Some(busy.to_string().as_str()),
            "least_conn picked the busy instance"
        );
    }
    assert_eq!(slow.join().unwrap().unwrap(), Some(busy.to_string()));
}

/// `chainctl routes` lists each route with the instances behind it and their in-flight counts.
#[test]
fn chainctl_routes_lists_routes_and_instances() {
    let d = TestDaemon::start_with(
        &[(
            "web",
            &routed(
                2,
                "v1",
                "host = \"example.com\"\npath = \"/app\"\npolicy = \"least_conn\"",
            ),
        )],
        &["--http", "127.0.0.1:0"],
    );
    d.wait_running("web", 2);
    let rows: serde_json::Value =
        eventually(Duration::from_secs(10), "two instances in routes", || {
            let v: serde_json::Value =
                serde_json::from_str(&d.ctl_ok(&["routes", "--json"])).ok()?;
            (v[0]["instances"].as_array()?.len() == 2).then_some(v)
        });
    assert_eq!(rows[0]["unit"], "web");
    assert_eq!(rows[0]["host"], "example.com");
    assert_eq!(rows[0]["path"], "/app");
    assert_eq!(rows[0]["policy"], "least_conn");
    assert_eq!(rows[0]["instances"][0]["inflight"], 0);
    let table = d.ctl_ok(&["routes"]);
    assert!(
        table.contains("example.com/app") && table.contains("least_conn"),
        "{table}"
    );
}
