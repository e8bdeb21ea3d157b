//! Health checks: readiness gating, unhealthy instances out of rotation, restart after failures.
mod support;

use std::time::Duration;

use support::*;

fn unit(flag: &std::path::Path, extra: &str) -> String {
    demo_unit(
        1,
        "v1",
        &format!(
            "UNHEALTHY_FILE = \"{}\"\n[health]\ntype = \"http\"\npath = \"/health\"\ninterval = \"200ms\"\nstart_interval = \"50ms\"\ntimeout = \"200ms\"\n{extra}",
            flag.display()
        ),
    )
}

/// An instance whose health check fails is not `running` (ready) until the check passes.
#[test]
fn health_check_gates_readiness() {
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("unhealthy");
    std::fs::write(&flag, "").unwrap();
    let d = TestDaemon::start(&[("web", &unit(&flag, "retries = 2\nrestart_after = 0\n"))]);
    // The process is up and answering, but its check fails: it stays `starting`.
    let inst = eventually(
        Duration::from_secs(15),
        "process up with failing checks",
        || {
            let i = d.instances("web").pop()?;
            let port = i.port?;
            let failing = d.events("web").iter().any(|e| e.kind == "health");
            (http_get(port, "/").is_ok() && failing).then_some(i)
        },
    );
    assert_eq!(inst.state, "starting");
    assert!(!inst.ready);
    std::fs::remove_file(&flag).unwrap();
    let ready = d.wait_running("web", 1);
    assert_eq!(
        ready[0].pid, inst.pid,
        "readiness must not restart the process"
    );
}

/// A ready instance whose checks start failing goes out of rotation (`unhealthy`), then is
/// restarted after `restart_after` failures.
#[test]
fn failing_checks_mark_unhealthy_then_restart() {
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("unhealthy");
    let d = TestDaemon::start(&[("web", &unit(&flag, "retries = 2\nrestart_after = 6\n"))]);
    let first = d.wait_running("web", 1)[0].pid;
    std::fs::write(&flag, "").unwrap();
    eventually(Duration::from_secs(15), "unhealthy state", || {
        d.instances("web")
            .iter()
            .any(|i| i.state == "unhealthy" && !i.ready)
            .then_some(())
    });
    eventually(
        Duration::from_secs(15),
        "restart after failed checks",
        || {
            d.instances("web")
                .iter()
                .any(|i| i.restarts >= 1 && i.pid.is_some() && i.pid != first)
                .then_some(())
        },
    );
    std::fs::remove_file(&flag).unwrap();
    d.wait_running("web", 1);
    let ev = d.events("web");
    assert!(ev.iter().any(|e| e.kind == "unhealthy"), "{ev:?}");
    assert!(
        ev.iter()
            .any(|e| e.kind == "backoff" && e.message.contains("health check failed")),
        "{ev:?}"
    );
}

/// Without a health check, an instance is ready once its port accepts connections, not when
/// the process starts.
#[test]
fn port_readiness_without_health_check() {
    let d = TestDaemon::start(&[("slow", &demo_unit(1, "v1", "STARTUP_DELAY_MS = \"700\"\n"))]);
    let i = d.wait_running("slow", 1).pop().unwrap();
    assert_eq!(
        http_get(i.port.unwrap(), "/").unwrap(),
        (200, "v1\n".to_string())
    );
    let ev = d.events("slow");
    let at = |kind: &str| {
        let e = ev
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {ev:?}"));
        chain_agent::logs::parse_timestamp_ms(&e.time).expect("event time")
    };
    assert!(
        at("ready") >= at("started") + 650,
        "ready too early: {ev:?}"
    );
}
