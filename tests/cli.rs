//! chainctl against a real daemon: output formats, exit codes, errors, daemon shutdown modes.
mod support;

use std::process::Command;
use std::time::Duration;

use chain::api::wire::{ErrorBody, ErrorCode, InstanceInfo};
use support::*;

/// Without a daemon, chainctl says so, names the socket, and exits 3.
#[test]
fn no_daemon_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let out = Command::new(CHAINCTL)
        .arg("--socket")
        .arg(&sock)
        .arg("ls")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no daemon answers") && err.contains("nothing.sock"),
        "{err}"
    );
    // CHAIN_SOCKET is honoured too.
    let out = Command::new(CHAINCTL)
        .env("CHAIN_SOCKET", &sock)
        .arg("ls")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

/// `ls --json` has the documented fields; the table has the documented columns; `inspect`
/// prints the resolved spec; unknown units are typed errors with a non-zero exit.
#[test]
fn ls_status_inspect_and_errors() {
    let d = TestDaemon::start(&[("web", &demo_unit(2, "v1", ""))]);
    d.wait_running("web", 2);
    let raw: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["ls", "--json"])).unwrap();
    for row in raw.as_array().unwrap() {
        for key in ["unit", "instance", "state", "pid", "port", "restarts"] {
            assert!(row.get(key).is_some(), "ls --json row lacks {key}: {row}");
        }
    }
    let rows: Vec<InstanceInfo> = serde_json::from_value(raw).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.instance).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert!(rows
        .iter()
        .all(|r| r.port.is_some() && r.state == "running"));
    assert_ne!(rows[0].port, rows[1].port);
    for r in &rows {
        let env = http_get(r.port.unwrap(), "/env?name=CHAIN_INSTANCE").unwrap();
        assert_eq!(env.1.trim(), r.instance.to_string());
    }

    let table = d.ctl_ok(&["ls"]);
    let header = table.lines().next().unwrap();
    for col in [
        "UNIT", "INST", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "CPU", "MEM",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let status = d.ctl_ok(&["status", "web"]);
    assert!(
        status.contains("web: active") && status.contains("2/2 ready") && status.contains("EVENTS"),
        "{status}"
    );
    let spec: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["inspect", "web"])).unwrap();
    assert_eq!(spec["instances"], 2);
    assert_eq!(spec["env"]["VERSION"], "v1");

    let out = d.ctl(&["status", "nope", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let body: ErrorBody = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body.error.code, ErrorCode::UnitNotFound);
    let out = d.ctl(&["stop", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unit named nope"));
}

/// stop keeps a unit down until start; restart replaces every instance.
#[test]
fn stop_start_restart() {
    let d = TestDaemon::start(&[("web", &demo_unit(1, "v1", ""))]);
    let pid = d.wait_running("web", 1)[0].pid.unwrap();
    d.ctl_ok(&["stop", "web"]);
    assert!(d.instances("web").is_empty());
    assert!(!alive(pid));
    assert_eq!(d.status("web").summary.state, "stopped");
    d.ctl_ok(&["start", "web"]);
    let pid2 = d.wait_running("web", 1)[0].pid.unwrap();
    d.ctl_ok(&["restart", "web"]);
    let pid3 = d.wait_running("web", 1)[0].pid.unwrap();
    assert!(pid2 != pid3 && !alive(pid2));
}

/// SIGTERM to chaind stops the instances; with --leave-running they survive it.
#[test]
fn sigterm_stops_workloads_unless_leave_running() {
    let mut d = TestDaemon::start(&[("web", &demo_unit(1, "v1", ""))]);
    let pid = d.wait_running("web", 1)[0].pid.unwrap();
    assert!(d.terminate().success());
    eventually(
        Duration::from_secs(5),
        "instance stopped with chaind",
        || (!alive(pid)).then_some(()),
    );

    let mut d = TestDaemon::start_with(&[("web", &demo_unit(1, "v1", ""))], &["--leave-running"]);
    let pid = d.wait_running("web", 1)[0].pid.unwrap();
    assert!(d.terminate().success());
    assert!(alive(pid), "--leave-running stopped the workload");
    d.spawn();
    assert_eq!(d.wait_running("web", 1)[0].pid, Some(pid));
}
