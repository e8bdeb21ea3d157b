//! Deploys through the HTTPS proxy under load: rolling and blue-green with no failed request, a new
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

/// A daemon whose proxy serves HTTPS (with its generated localhost certificate), and the
/// address the load goes to.
fn start(instances: u32, deploy: &str) -> (TestDaemon, std::net::SocketAddr) {
    let d = TestDaemon::start_with(
        &[("web", &unit(instances, deploy))],
        &["--https", "127.0.0.1:0"],
    );
    d.wait_running("web", instances as usize);
    let addr = d.https_addr();
    let tls = localhost_tls(&d);
    eventually(Duration::from_secs(10), "routed", || {
        (KeepAlive::tls(addr, tls.clone()).get("/").ok()?.text() == "v1\n").then_some(())
    });
    (d, addr)
}

fn load(d: &TestDaemon, addr: std::net::SocketAddr, clients: usize) -> Load {
    Load::start_tls(addr, localhost_tls(d), clients, "/")
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
    let load = load(&d, addr, 4);
    load.wait_for_more(200);
    let out = d.ctl_ok(&["deploy", "web", "--set", "env.VERSION=v2", "--wait"]);
    assert!(out.contains("deploy done"), "{out}");
    assert!(out.contains("started"), "no progress shown: {out}");
    assert!(out.contains("drained"), "no drain step shown: {out}");
    // Once the deploy has succeeded, no request reaches the old version any more.
    let mut c = KeepAlive::tls(addr, localhost_tls(&d));
    for _ in 0..30 {
        assert_eq!(c.get("/").unwrap().text(), "v2\n");
    }
    load.wait_for_more(200);
    let reports = load.finish();
    assert_no_failure(&reports, "");
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
    let load = load(&d, addr, 4);
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
    assert_no_failure(&reports, "");
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

/// `chainctl deploy --strategy blue-green` on a rolling unit deploys this once blue-green:
/// clients flip from v1 to v2 at once, never mixed, and the history says blue-green; the
/// next deploy uses the file's strategy again. A fixed-port unit refuses it.
#[test]
fn strategy_flag_overrides_the_file_once() {
    let (d, addr) = start(2, "");
    let load = load(&d, addr, 4);
    load.wait_for_more(200);
    d.ctl_ok(&[
        "deploy",
        "web",
        "--set",
        "env.VERSION=v2",
        "--strategy",
        "blue-green",
        "--wait",
    ]);
    load.wait_for_more(200);
    let reports = load.finish();
    assert_no_failure(&reports, "");
    assert_single_flip(&reports);
    assert!(d
        .events("web")
        .iter()
        .any(|e| e.kind == "deploy" && e.message.contains("switched traffic")));
    d.ctl_ok(&["deploy", "web", "--set", "env.VERSION=v3", "--wait"]);
    let strategies: Vec<String> = history(&d)
        .iter()
        .rev()
        .take(2)
        .map(|h| h.strategy.clone())
        .collect();
    assert_eq!(strategies, ["rolling", "blue-green"]);

    let port = free_ports(1)[0];
    let fixed = TestDaemon::start_with(
        &[("db", &format!("port = {port}\n{}", demo_unit(1, "v1", "")))],
        &[],
    );
    fixed.wait_running("db", 1);
    let out = fixed.ctl(&["deploy", "db", "--strategy", "blue-green"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fixed port"),
        "{out:?}"
    );
}

/// `chainctl deploy web --wait` of v2 with a version that never gets healthy (its /health
/// answers 503 while a flag file exists); returns chainctl's output.
fn deploy_never_healthy(d: &TestDaemon) -> std::process::Output {
    let flag = d.dir.path().join("sick");
    std::fs::write(&flag, "").unwrap();
    let sick = format!("env.UNHEALTHY_FILE={}", flag.display());
    d.ctl(&[
        "deploy",
        "web",
        "--set",
        "env.VERSION=v2",
        "--set",
        &sick,
        "--wait",
    ])
}

/// A version that never gets healthy: the deploy fails at healthy_deadline, `deploy --wait`
/// exits non-zero and says why, the old version keeps serving throughout (no failed request),
/// the new instances are removed, and the file revision is held (diff shows it).
#[test]
fn never_healthy_version_aborts_and_old_keeps_serving() {
    let (d, addr) = start(2, "[deploy]\nhealthy_deadline = \"3s\"");
    let before: Vec<_> = d.instances("web").iter().map(|i| i.pid).collect();
    let load = load(&d, addr, 2);
    load.wait_for_more(100);
    let out = deploy_never_healthy(&d);
    assert!(!out.status.success(), "a failed deploy must exit non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not healthy within 3s") && err.contains("last check: http status 503"),
        "{err}"
    );
    load.wait_for_more(100);
    assert_no_failure(&load.finish(), "");
    eventually(Duration::from_secs(10), "new instances removed", || {
        (d.instances("web").len() == 2).then_some(())
    });
    let after: Vec<_> = d.instances("web").iter().map(|i| i.pid).collect();
    assert_eq!(before, after, "the old instances must not be touched");
    assert_eq!(versions_served(&d), ["v1", "v1"]);
    let last = history(&d).pop().unwrap();
    assert_eq!(last.outcome, "rolled_back");
    assert!(last.reason.unwrap_or_default().contains("not healthy"));
    assert!(d.events("web").iter().any(|e| e.kind == "deploy-failed"));
    // The failed revision is held: apply does not retry it, diff shows what it would change.
    let apply: chain::api::wire::ApplyResult =
        serde_json::from_str(&d.ctl_ok(&["apply", "--json"])).unwrap();
    assert_eq!(apply.held, ["web"]);
    let diff = d.ctl_ok(&["diff", "web"]);
    assert!(
        diff.contains("env.VERSION: \"v1\" → \"v2\""),
        "{diff}\n{}\n{}",
        d.ctl_ok(&["diff", "web", "--json"]),
        d.ctl_ok(&["inspect", "web"])
    );
    // Fixing the overrides deploys again.
    d.ctl_ok(&["deploy", "web", "--unset", "env.UNHEALTHY_FILE", "--wait"]);
    assert_eq!(versions_served(&d), ["v2", "v2"]);
}

/// With `auto_rollback = false` a failed blue-green deploy halts: `--wait` fails, the old set
/// keeps serving, the new instances stay for inspection, and `chainctl rollback` clears them.
#[test]
fn failed_deploy_halts_without_auto_rollback() {
    let (d, _) = start(
        2,
        "[deploy]\nstrategy = \"blue-green\"\nhealthy_deadline = \"2s\"\nauto_rollback = false",
    );
    let out = deploy_never_healthy(&d);
    assert!(!out.status.success(), "a failed deploy must exit non-zero");
    let last = history(&d).pop().unwrap();
    assert_eq!(last.outcome, "halted");
    assert_eq!(versions_served(&d), ["v1", "v1"]);
    assert_eq!(
        d.instances("web").len(),
        4,
        "the new set stays for inspection"
    );
    d.ctl_ok(&["rollback", "web"]);
    eventually(Duration::from_secs(10), "new set removed", || {
        (d.instances("web").len() == 2).then_some(())
    });
    assert_eq!(versions_served(&d), ["v1", "v1"]);
}

/// A crash-looping new version fails the deploy as soon as an instance is `failed`, long
/// before the deadline. (min_healthy_time keeps one lucky health check from passing for a
/// successful deploy.)
#[test]
fn crash_looping_version_aborts_at_once() {
    let (d, _) = start(
        1,
        "[deploy]\nhealthy_deadline = \"1m\"\nmin_healthy_time = \"2s\"\n[restart]\ndelay = \"10ms\"\nmax_restarts = 2",
    );
    let t0 = std::time::Instant::now();
    let out = d.ctl(&["deploy", "web", "--set", "env.CRASH_AFTER_MS=10", "--wait"]);
    assert!(!out.status.success());
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "waited for the deadline"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("new instance 0 failed") && err.contains("crash loop"),
        "{err}"
    );
    assert_eq!(versions_served(&d), ["v1"]);
}

/// Blue-green with a verify probe that the new set does not pass: the deploy fails before any
/// traffic switches.
#[test]
fn failing_verify_probe_aborts_blue_green() {
    let (d, _) = start(
        1,
        "[deploy]\nstrategy = \"blue-green\"\n[deploy.verify]\npath = \"/env?name=READY_FOR_TRAFFIC\"\nbody = \"yes\"",
    );
    let out = d.ctl(&["deploy", "web", "--set", "env.VERSION=v2", "--wait"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("verify failed") && err.contains("404"),
        "{err}"
    );
    assert!(!d
        .events("web")
        .iter()
        .any(|e| e.message.contains("switched traffic")));
    assert_eq!(versions_served(&d), ["v1"]);
    // With the expected answer, the same deploy passes verify and switches.
    d.ctl_ok(&[
        "deploy",
        "web",
        "--set",
        "env.READY_FOR_TRAFFIC=yes",
        "--wait",
    ]);
    assert_eq!(versions_served(&d), ["v2"]);
    assert!(d.events("web").iter().any(|e| e.message == "verify passed"));
}

/// `chainctl rollback` after a good deploy goes back to the previous revision (a rolling
/// deploy of it); with blue-green keep_previous the kept set serves again at once, same pids.
#[test]
fn rollback_and_instant_rollback() {
    let (d, _) = start(2, "");
    d.ctl_ok(&["deploy", "web", "--set", "env.VERSION=v2", "--wait"]);
    assert_eq!(versions_served(&d), ["v2", "v2"]);
    d.ctl_ok(&["rollback", "web"]);
    assert_eq!(versions_served(&d), ["v1", "v1"]);
    let h = history(&d);
    assert_eq!(
        h.last().map(|r| (r.trigger.as_str(), r.outcome.as_str())),
        Some(("rollback", "succeeded"))
    );
    // --to goes back further than the previous revision: v1 → v2 → v3, then to v2's revision
    // named by a prefix of it.
    let v2 = h
        .iter()
        .find(|r| r.trigger == "deploy")
        .map(|r| r.to_revision.clone())
        .unwrap();
    d.ctl_ok(&["deploy", "web", "--set", "env.VERSION=v3", "--wait"]);
    assert_eq!(versions_served(&d), ["v3", "v3"]);
    d.ctl_ok(&["rollback", "web", "--to", &v2[..8]]);
    assert_eq!(versions_served(&d), ["v2", "v2"]);
    let out = d.ctl(&["rollback", "web", "--to", "ffffffffffff"]);
    assert!(!out.status.success(), "an unknown revision must fail");

    let (d, _) = start(
        2,
        "[deploy]\nstrategy = \"blue-green\"\nkeep_previous = \"5m\"",
    );
    let v1_pids: Vec<_> = d.instances("web").iter().map(|i| i.pid).collect();
    d.ctl_ok(&["deploy", "web", "--set", "env.VERSION=v2", "--wait"]);
    assert_eq!(versions_served(&d), ["v2", "v2"]);
    // The kept v1 set still runs, out of rotation.
    let kept: Vec<_> = d
        .instances("web")
        .into_iter()
        .filter(|i| !i.routed)
        .collect();
    assert_eq!(kept.iter().map(|i| i.pid).collect::<Vec<_>>(), v1_pids);
    let t0 = std::time::Instant::now();
    d.ctl_ok(&["rollback", "web"]);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "instant rollback took {:?}",
        t0.elapsed()
    );
    let serving: Vec<_> = d
        .instances("web")
        .into_iter()
        .filter(|i| i.routed)
        .map(|i| i.pid)
        .collect();
    assert_eq!(serving, v1_pids, "the kept set serves again");
    assert_eq!(versions_served(&d), ["v1", "v1"]);
    assert!(d
        .events("web")
        .iter()
        .any(|e| e.message.contains("instant rollback")));
}

/// The demo processes this daemon's instances run (found by their log FIFOs under the root).
fn demo_processes(d: &TestDaemon) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == "demo")
                && std::fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
                    fds.flatten().any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|l| l.starts_with(d.root.join("run")))
                    })
                })
        })
        .count()
}

/// chaind killed in the middle of a deploy (blue-green: the green set starting; rolling: the
/// first replacement starting) and started again: the deploy resumes and ends with one
/// consistent set of the new version, and no instance is left from an orphaned half-set.
#[test]
fn chaind_killed_mid_deploy_ends_consistent() {
    for (strategy, during) in [("blue-green", 4), ("rolling", 3)] {
        let (mut d, _) = start(
            2,
            &format!("[deploy]\nstrategy = \"{strategy}\"\nhealthy_deadline = \"1m\""),
        );
        d.ctl_ok(&[
            "deploy",
            "web",
            "--set",
            "env.VERSION=v2",
            "--set",
            "env.STARTUP_DELAY_MS=1500",
        ]);
        eventually(Duration::from_secs(10), "new instances starting", || {
            (d.instances("web").len() == during).then_some(())
        });
        d.kill9();
        d.spawn();
        eventually(Duration::from_secs(30), "one consistent set", || {
            let v = d.instances("web");
            (v.len() == 2 && v.iter().all(|i| i.routed) && versions_served(&d) == ["v2", "v2"])
                .then_some(())
        });
        // Exactly two demo processes exist for this daemon: nothing left from the other set.
        eventually(Duration::from_secs(10), "old set gone", || {
            (demo_processes(&d) == 2).then_some(())
        });
        // The restarted chaind listens on a new port.
        assert_eq!(
            KeepAlive::tls(d.https_addr(), localhost_tls(&d))
                .get("/")
                .unwrap()
                .text(),
            "v2\n",
            "{strategy}"
        );
        let last = history(&d).pop().unwrap();
        assert_eq!(last.outcome, "succeeded", "{strategy}");
    }
}
