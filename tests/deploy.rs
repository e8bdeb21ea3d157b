//! Deploys through the proxy under load: rolling and blue-green with no failed request, a new
//! version that never gets healthy (abort, old version keeps serving), a crash-looping one,
//! a failing verify probe, rollback (instant with a kept set), history and diff, and a chaind
//! killed in the middle of a deploy.
mod support;

use std::time::Duration;

use chain::api::wire::DeployInfo;
use support::*;

fn unit(instances: u32, deploy: &str) -> String {
    format!(
        "{}\n[health]\ntype = \"http\"\ninterval = \"200ms\"\nstart_interval = \"50ms\"\ntimeout = \"150ms\"\n[[route]]\npath = \"/\"\n{deploy}\n",
        demo_unit(instances, "v1", "")
    )
}

fn start(instances: u32, deploy: &str) -> (TestDaemon, std::net::SocketAddr) {
    let d = TestDaemon::start_with(
        &[("web", &unit(instances, deploy))],
        &["--http", "127.0.0.1:0"],
    );
    d.wait_running("web", instances as usize);
    let addr = d.http_addr();
    eventually(Duration::from_secs(10), "routed", || {
        (KeepAlive::new(addr).get("/").ok()?.text() == "v1\n").then_some(())
    });
    (d, addr)
}

fn history(d: &TestDaemon) -> Vec<DeployInfo> {
    serde_json::from_str(&d.ctl_ok(&["history", "web", "--json"])).unwrap()
}

fn versions_served(d: &TestDaemon) -> Vec<String> {
    let mut v: Vec<String> = d
        .instances("web")
        .iter()
        .filter(|i| i.routed)
        .filter_map(|i| {
            http_get(i.port?, "/")
                .ok()
                .map(|(_, b)| b.trim().to_string())
        })
        .collect();
    v.sort();
    v
}

/// Every client's versions flip once, from v1 to v2, never back.
fn assert_single_flip(reports: &[ClientReport]) {
    for r in reports {
        assert_eq!(
            r.versions.first().map(String::as_str),
            Some("v1"),
            "{:?}",
            r.versions
        );
        assert!(
            r.versions.len() <= 2 && r.versions.last().map(String::as_str) == Some("v2"),
            "flapped: {:?}",
            r.versions
        );
    }
}

/// A rolling deploy (`chainctl deploy --set env.VERSION=v2 --wait`) under four clients: no
/// failed request, the version flips, and the deploy is in the history with the caller.
#[test]
fn rolling_deploy_under_load() {
    let (d, addr) = start(3, "");
    let load = Load::start(addr, 4, "/");
    load.wait_for_more(200);
    let out = d.ctl_ok(&["deploy", "web", "--set", "env.VERSION=v2", "--wait"]);
    assert!(out.contains("deploy done"), "{out}");
    assert!(out.contains("started"), "no progress shown: {out}");
    load.wait_for_more(200);
    let reports = load.finish();
    let (ok, failed, errors) = summarize(&reports);
    assert_eq!(
        failed,
        0,
        "{failed} of {} failed: {errors:?}",
        ok + failed as u64
    );
    // Rolling serves both versions side by side for a while: each client starts on v1 and
    // ends on v2.
    for r in &reports {
        assert_eq!(
            (
                r.versions.first().map(String::as_str),
                r.versions.last().map(String::as_str)
            ),
            (Some("v1"), Some("v2")),
            "{:?}",
            r.versions
        );
    }
    assert_eq!(versions_served(&d), ["v2", "v2", "v2"]);
    let h = history(&d);
    let last = h.last().unwrap();
    assert_eq!(
        (
            last.outcome.as_str(),
            last.trigger.as_str(),
            last.strategy.as_str()
        ),
        ("succeeded", "deploy", "rolling")
    );
    assert_eq!(last.caller, Some(chain_agent::host::euid()));
    assert!(last.duration_ms.is_some());
}

/// Blue-green: the new set starts out of rotation, traffic switches at once (each client sees
/// v1 then v2, never mixed), no request fails, and the old set is gone afterwards.
#[test]
fn blue_green_deploy_under_load() {
    let (d, addr) = start(
        2,
        "[deploy]\nstrategy = \"blue-green\"\nmin_healthy_time = \"300ms\"",
    );
    let load = Load::start(addr, 4, "/");
    load.wait_for_more(200);
    d.ctl_ok(&["deploy", "web", "--set", "env.VERSION=v2"]);
    // While the green set is health-gated, clients still get v1 only.
    eventually(
        Duration::from_secs(10),
        "green set up and out of rotation",
        || {
            let v = d.instances("web");
            (v.len() == 4 && v.iter().filter(|i| i.routed).count() == 2).then_some(())
        },
    );
    eventually(Duration::from_secs(20), "old set gone", || {
        let v = d.instances("web");
        (v.len() == 2 && v.iter().all(|i| i.routed)).then_some(())
    });
    load.wait_for_more(200);
    let reports = load.finish();
    let (ok, failed, errors) = summarize(&reports);
    assert_eq!(
        failed,
        0,
        "{failed} of {} failed: {errors:?}",
        ok + failed as u64
    );
    assert_single_flip(&reports);
    assert_eq!(versions_served(&d), ["v2", "v2"]);
    let last = history(&d).pop().unwrap();
    assert_eq!(
        (last.outcome.as_str(), last.strategy.as_str()),
        ("succeeded", "blue-green")
    );
    assert!(d
        .events("web")
        .iter()
        .any(|e| e.kind == "deploy" && e.message.contains("switched traffic")));
}
