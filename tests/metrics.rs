//! Metrics on the admin listener and the access log: what a scrape shows after known traffic,
//! supervisor-derived series, the access log's lines, and docs/metrics.md covering every name.
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

/// Every metric name in src/metrics/names.rs is documented in docs/metrics.md.
#[test]
fn docs_list_every_metric() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let missing: Vec<&&str> = chain::metrics::names::ALL
        .iter()
        .filter(|n| !doc.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/metrics.md: {missing:?}"
    );
}

fn admin_addr(d: &TestDaemon) -> SocketAddr {
    let v: chain::api::wire::VersionInfo =
        serde_json::from_str(&d.ctl_ok(&["version", "--json"])).unwrap();
    v.admin
        .expect("daemon started without [admin] listen")
        .parse()
        .unwrap()
}

/// Samples of a scrape: `name{labels}` → value.
fn scrape(admin: SocketAddr) -> BTreeMap<String, f64> {
    let r = KeepAlive::new(admin).get("/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", m.keys().collect::<Vec<_>>()))
}

/// Sum of the samples whose key starts with `prefix` and contains every `parts`.
fn sum(m: &BTreeMap<String, f64>, prefix: &str, parts: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && parts.iter().all(|p| k.contains(p)))
        .map(|(_, v)| v)
        .sum()
}

/// A request with extra headers on a fresh connection; returns the status.
fn get_with(addr: SocketAddr, path: &str, host: &str, headers: &str) -> u16 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// After known traffic, a scrape shows per-route and per-instance counts by status class,
/// latency histograms, in-flight gauges back at zero, unrouted and rate-limited requests, and
/// instances by state; a killed instance shows up in the restarts counter. The access log has
/// one JSON line per request, without query strings or credentials.
#[test]
fn scrape_and_access_log() {
    let unit = format!(
        "{}\n[[route]]\nhost = \"app.test\"\n\
         [[route]]\nhost = \"app.test\"\npath = \"/limited\"\nstrip_prefix = true\n\
         rate_limit = {{ rps = 0.1 }}\n",
        demo_unit(2, "v1", "")
    );
    let config = "[proxy]\nhttp = \"127.0.0.1:0\"\naccess_log = \"proxy/access.log\"\n\
                  [admin]\nlisten = \"127.0.0.1:0\"\n";
    let d = TestDaemon::start_full(&[("web", &unit)], &[], Some(config));
    d.wait_running("web", 2);
    let (http, admin) = (d.http_addr(), admin_addr(&d));

    // Both instances routed (round robin alternates their pids).
    let mut c = KeepAlive::new(http);
    eventually(Duration::from_secs(10), "two instances routed", || {
        let pids: std::collections::HashSet<String> = (0..4)
            .filter_map(|_| c.request("GET", "/pid", "app.test", b"").ok())
            .filter(|r| r.status == 200)
            .map(|r| r.text())
            .collect();
        (pids.len() == 2).then_some(())
    });
    let before = scrape(admin);
    let key = |class: &str| {
        format!("chain_http_requests_total{{unit=\"web\",route=\"app.test/\",class=\"{class}\"}}")
    };
    let ok_before = value(&before, &key("2xx"));

    for _ in 0..10 {
        let r = c
            .request("GET", "/?token=secret-query", "app.test", b"")
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        get_with(
            http,
            "/",
            "app.test",
            "Authorization: Bearer secret-auth\r\nCookie: session=secret-cookie\r\nX-Request-Id: rid-42\r\n"
        ),
        200
    );
    assert_eq!(
        c.request("GET", "/nothing", "other.test", b"")
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        c.request("GET", "/limited", "app.test", b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        c.request("GET", "/limited", "app.test", b"")
            .unwrap()
            .status,
        429
    );

    // Recorded before the response is sent, so exact now.
    let m = scrape(admin);
    assert_eq!(value(&m, &key("2xx")) - ok_before, 11.0);
    assert_eq!(value(&m, &key("5xx")), 0.0);
    assert_eq!(value(&m, "chain_http_unrouted_requests_total"), 1.0);
    assert_eq!(
        value(
            &m,
            "chain_http_rate_limited_total{unit=\"web\",route=\"app.test/limited\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "chain_http_requests_total{unit=\"web\",route=\"app.test/limited\",class=\"4xx\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "chain_http_request_duration_seconds_count{unit=\"web\",route=\"app.test/\"}"
        ) - value(
            &before,
            "chain_http_request_duration_seconds_count{unit=\"web\",route=\"app.test/\"}"
        ),
        11.0
    );
    let upstream_ok = |m: &BTreeMap<String, f64>| {
        sum(
            m,
            "chain_upstream_requests_total{",
            &["unit=\"web\"", "class=\"2xx\""],
        )
    };
    assert_eq!(
        upstream_ok(&m) - upstream_ok(&before),
        12.0,
        "11 on / and 1 on /limited reached an instance; the 429 did not"
    );
    for i in ["0", "1"] {
        assert!(
            value(
                &m,
                &format!(
                    "chain_upstream_requests_total{{unit=\"web\",instance=\"{i}\",class=\"2xx\"}}"
                )
            ) > 0.0,
            "round robin reached instance {i}"
        );
        assert_eq!(
            value(
                &m,
                &format!("chain_upstream_inflight_requests{{unit=\"web\",instance=\"{i}\"}}")
            ),
            0.0
        );
    }
    assert_eq!(
        value(&m, "chain_instances{unit=\"web\",state=\"running\"}"),
        2.0
    );
    assert_eq!(
        value(&m, "chain_instances{unit=\"web\",state=\"failed\"}"),
        0.0
    );
    assert_eq!(value(&m, "chain_restarts_total{unit=\"web\"}"), 0.0);
    assert_eq!(value(&m, "chain_access_log_dropped_total"), 0.0);

    // The admin listener serves nothing else.
    assert_eq!(KeepAlive::new(admin).get("/").unwrap().status, 404);

    // A killed instance is restarted; the counter sees it.
    let pid = d.instances("web")[0].pid.unwrap();
    signal(pid, libc::SIGKILL);
    eventually(Duration::from_secs(20), "the restart counted", || {
        let m = scrape(admin);
        (value(&m, "chain_restarts_total{unit=\"web\"}") == 1.0).then_some(())
    });

    // The access log: one JSON object per request line; lines arrive shortly after responses.
    let path = d.root.join("proxy/access.log");
    let lines: Vec<serde_json::Value> =
        eventually(Duration::from_secs(10), "access log lines", || {
            let text = std::fs::read_to_string(&path).ok()?;
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
                .collect();
            (lines
                .iter()
                .filter(|l| l["host"] == "app.test" || l["host"] == "other.test")
                .count()
                >= 14)
                .then_some(lines)
        });
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in ["secret-query", "secret-auth", "secret-cookie"] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the access log"
        );
    }
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .find(|l| pred(l))
            .unwrap_or_else(|| panic!("no such line in\n{text}"))
            .clone()
    };
    let ok = find(&|l| l["path"] == "/" && l["request_id"] == "rid-42");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream_status"], 200);
    assert_eq!(ok["bytes"], 3, "the body \"v1\\n\"");
    assert_eq!(ok["unit"], "web");
    assert_eq!(ok["client"], "127.0.0.1");
    assert_eq!(ok["method"], "GET");
    assert!(ok["error"].is_null());
    assert!(ok["generation"].is_u64() && ok["upstream"].is_string());
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0);
    let time = ok["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    let generated = find(&|l| l["path"] == "/" && l["request_id"] != "rid-42");
    assert!(
        generated["request_id"]
            .as_str()
            .is_some_and(|id| id.len() >= 16),
        "chain's own X-Request-Id is logged: {generated}"
    );
    let unrouted = find(&|l| l["host"] == "other.test");
    assert_eq!(
        (
            unrouted["status"].clone(),
            unrouted["error"].clone(),
            unrouted["unit"].clone()
        ),
        (404.into(), "no_route".into(), serde_json::Value::Null)
    );
    let limited = find(&|l| l["status"] == 429);
    assert_eq!(limited["error"], "rate_limited");
    assert_eq!(limited["path"], "/limited");
    assert!(limited["upstream_status"].is_null());
}
