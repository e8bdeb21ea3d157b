//! Zero-downtime replacement: `chainctl reload` and unit edits under a running client through
//! the proxy, with no failed request and slow requests finishing on the old instances.
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

/// `clients` keep-alive connections, each sending requests back to back.
fn load(addr: std::net::SocketAddr, clients: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let threads = (0..clients)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut c = KeepAlive::new(addr);
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match c.get("/") {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("status {}: {}", r.status, r.text()));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("error: {e}"));
                        }
                    }
                }
                errors
            })
        })
        .collect();
    Load {
        stop,
        ok,
        failed,
        threads,
    }
}

impl Load {
    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
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
    let d = TestDaemon::start_with(&[("web", &unit("v1"))], &["--http", "127.0.0.1:0"]);
    let before = d.wait_running("web", 2);
    let addr = d.http_addr();
    eventually(Duration::from_secs(5), "routed", || {
        (KeepAlive::new(addr).get("/").ok()?.status == 200).then_some(())
    });
    let l = load(addr, 4);
    eventually(Duration::from_secs(5), "load running", || {
        (l.ok.load(Ordering::Relaxed) > 200).then_some(())
    });
    for _ in 0..3 {
        d.ctl_ok(&["reload", "web"]);
    }
    let after_reload = l.ok.load(Ordering::Relaxed);
    eventually(Duration::from_secs(5), "load continues", || {
        (l.ok.load(Ordering::Relaxed) > after_reload + 200).then_some(())
    });
    let (ok, failed, errors) = l.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {:?}",
        ok + failed,
        &errors[..errors.len().min(10)]
    );
    let after = d.wait_running("web", 2);
    assert!(after.iter().all(|a| before.iter().all(|b| a.pid != b.pid)));
    eprintln!("reload under load: {ok} requests, 0 failed");
}

/// Editing the unit file rolls to the new version under load with no failed request, and the
/// version served flips.
#[test]
fn edit_under_load_flips_version_without_errors() {
    let d = TestDaemon::start_with(&[("web", &unit("v1"))], &["--http", "127.0.0.1:0"]);
    d.wait_running("web", 2);
    let addr = d.http_addr();
    eventually(Duration::from_secs(5), "routed", || {
        (KeepAlive::new(addr).get("/").ok()?.text() == "v1\n").then_some(())
    });
    let l = load(addr, 4);
    d.write_unit("web", &unit("v2"));
    let mut probe = KeepAlive::new(addr);
    eventually(Duration::from_secs(30), "v2 everywhere", || {
        let all_v2 = (0..6).all(|_| probe.get("/").is_ok_and(|r| r.text() == "v2\n"));
        let settled = d.instances("web").len() == 2;
        (all_v2 && settled).then_some(())
    });
    let (ok, failed, errors) = l.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {:?}",
        ok + failed,
        &errors[..errors.len().min(10)]
    );
}

/// A slow request running on an old instance finishes (200) while the instance is replaced:
/// the old instance is drained before its stop signal.
#[test]
fn slow_request_survives_replacement() {
    let d = TestDaemon::start_with(&[("web", &unit("v1"))], &["--http", "127.0.0.1:0"]);
    d.wait_running("web", 2);
    let addr = d.http_addr();
    eventually(Duration::from_secs(5), "routed", || {
        (KeepAlive::new(addr).get("/").ok()?.status == 200).then_some(())
    });
    let slow: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                KeepAlive::new(addr)
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
