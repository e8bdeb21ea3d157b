//! Restart policy against real processes: backoff, crash loops, and the policy table.
mod support;

use std::time::Duration;

use support::*;

fn backoff_delays_ms(d: &TestDaemon, unit: &str) -> Vec<u64> {
    d.events(unit)
        .iter()
        .filter(|e| e.kind == "backoff")
        .filter_map(|e| {
            let t = e.message.rsplit("restarting in ").next()?;
            crate_duration_ms(t)
        })
        .collect()
}

fn crate_duration_ms(s: &str) -> Option<u64> {
    chain::unit::parse_duration(s.trim())
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// A crashing instance comes back, each time after a longer backoff.
#[test]
fn crash_restarts_with_growing_backoff() {
    let unit = demo_unit(
        1,
        "v1",
        "CRASH_AFTER_MS = \"100\"\n[restart]\ndelay = \"100ms\"\nmax_restarts = 50\n",
    );
    let d = TestDaemon::start(&[("crashy", &unit)]);
    eventually(Duration::from_secs(30), "3 restarts", || {
        let i = d.instances("crashy");
        (i.len() == 1 && i[0].restarts >= 3).then_some(())
    });
    let delays = backoff_delays_ms(&d, "crashy");
    assert!(delays.len() >= 3, "backoff events: {delays:?}");
    // 100 ms doubling with ±10 % jitter.
    for (i, w) in delays.windows(2).take(3).enumerate() {
        assert!(w[1] > w[0], "delay {i} did not grow: {delays:?}");
    }
    assert!((90..=110).contains(&delays[0]), "first delay {delays:?}");
}

/// More than max_restarts within the window: the instance is `failed` with the reason, stays
/// down, and `chainctl start` brings it back.
#[test]
fn crash_loop_ends_in_failed_until_start() {
    let unit = demo_unit(
        1,
        "v1",
        "CRASH_AFTER_MS = \"50\"\nEXIT_CODE = \"7\"\n[restart]\ndelay = \"20ms\"\nmax_restarts = 3\nwindow = \"1m\"\n",
    );
    let d = TestDaemon::start(&[("loop", &unit)]);
    let inst = eventually(Duration::from_secs(30), "failed state", || {
        d.instances("loop")
            .into_iter()
            .find(|i| i.state == "failed")
    });
    let detail = inst.detail.unwrap_or_default();
    assert!(
        detail.contains("crash loop") && detail.contains("exit code 7"),
        "detail: {detail}"
    );
    assert_eq!(inst.pid, None);
    let status = d.status("loop");
    assert!(status.last_error.unwrap_or_default().contains("crash loop"));
    assert!(d.events("loop").iter().any(|e| e.kind == "failed"));

    d.ctl_ok(&["start", "loop", "--no-wait"]);
    eventually(Duration::from_secs(10), "instance leaves failed", || {
        d.instances("loop")
            .iter()
            .any(|i| i.state != "failed")
            .then_some(())
    });
}

/// `on-failure` leaves a clean exit alone; `never` leaves a failure alone.
#[test]
fn policy_on_failure_and_never() {
    let clean = demo_unit(
        1,
        "v1",
        "CRASH_AFTER_MS = \"100\"\nEXIT_CODE = \"0\"\n[restart]\npolicy = \"on-failure\"\n",
    );
    let never = demo_unit(
        1,
        "v1",
        "CRASH_AFTER_MS = \"100\"\nEXIT_CODE = \"3\"\n[restart]\npolicy = \"never\"\n",
    );
    let d = TestDaemon::start(&[("clean", &clean), ("never", &never)]);
    for (unit, want) in [("clean", "exit code 0"), ("never", "exit code 3")] {
        let i = eventually(Duration::from_secs(15), &format!("{unit} exited"), || {
            d.instances(unit).into_iter().find(|i| i.state == "exited")
        });
        assert_eq!(i.detail.as_deref(), Some(want));
        assert_eq!(i.restarts, 0);
    }
}

/// An immediate restart (delay 0) is not killed by the sweep of the previous incarnation's
/// leftovers: every incarnation has its own tag.
#[test]
fn immediate_restart_survives_leftover_sweep() {
    let marker = tempfile::tempdir().unwrap();
    let unit = format!(
        r#"port = "none"
[process]
command = "sh"
args = ["-c", "if [ -f {m}/ran ]; then exec sleep 1000; else touch {m}/ran; sleep 1000 & exit 1; fi"]
[restart]
delay = "0s"
"#,
        m = marker.path().display()
    );
    let d = TestDaemon::start(&[("once", &unit)]);
    let i = eventually(
        Duration::from_secs(15),
        "second incarnation up for 2s",
        || {
            let i = d.instances("once").pop()?;
            (i.restarts == 1 && i.state == "running" && i.uptime_secs? >= 2).then_some(i)
        },
    );
    assert!(alive(i.pid.unwrap()));
    // The first incarnation's background child was swept: nothing holds its FIFO any more.
    let run = d.root.join("run/once");
    eventually(
        Duration::from_secs(10),
        "first incarnation's leftovers gone",
        || {
            let held = std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
                std::fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
                    fds.flatten().any(|fd| {
                        std::fs::read_link(fd.path()).is_ok_and(|l| {
                            l.starts_with(&run) && l.to_string_lossy().contains(".0.out")
                        })
                    })
                })
            });
            (!held).then_some(())
        },
    );
}

/// An instance whose `auto` port was taken by another process while it was down does not
/// crash-loop on it: the restart moves it to a free port, says so in its events, and it serves
/// there.
#[test]
fn restart_moves_off_an_auto_port_taken_meanwhile() {
    let unit = demo_unit(1, "v1", "[restart]\ndelay = \"1s\"\n");
    let d = TestDaemon::start(&[("moved", &unit)]);
    let first = d.wait_running("moved", 1).remove(0);
    let (old_port, pid) = (first.port.expect("auto port"), first.pid.expect("pid"));
    signal(pid, libc::SIGKILL);
    // Someone else binds the port while the instance waits out its backoff.
    let squatter = eventually(Duration::from_secs(10), "the old port free", || {
        std::net::TcpListener::bind(("0.0.0.0", old_port)).ok()
    });
    let back = eventually(
        Duration::from_secs(30),
        "a ready instance on another port",
        || {
            d.instances("moved")
                .into_iter()
                .find(|i| i.ready && i.pid != Some(pid))
        },
    );
    let new_port = back.port.expect("auto port");
    assert_ne!(new_port, old_port);
    assert_eq!(
        back.restarts, 1,
        "it came back at the first restart: {back:?}"
    );
    let (status, body) = http_get(new_port, "/").expect("GET on the new port");
    assert_eq!((status, body.contains("v1")), (200, true), "{body}");
    let events = d.events("moved");
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&format!("port {old_port}"))
                && e.message.contains(&new_port.to_string())),
        "no event names the move: {events:?}"
    );
    drop(squatter);
}

/// A fixed port taken by another process while the instance was down cannot move: each spawn
/// fails with the reason (no process is started that could only crash, and the other process
/// never answers the instance's readiness check) until the port is free again.
#[test]
fn restart_waits_for_a_fixed_port_taken_meanwhile() {
    let port = free_ports(1)[0];
    let unit = demo_unit(
        1,
        "v1",
        "[restart]\ndelay = \"200ms\"\nmax_restarts = 1000\n",
    )
    .replacen(
        "instances = 1\n",
        &format!("instances = 1\nport = {port}\n"),
        1,
    );
    let d = TestDaemon::start(&[("pinned", &unit)]);
    let first = d.wait_running("pinned", 1).remove(0);
    assert_eq!(first.port, Some(port));
    let pid = first.pid.expect("pid");
    signal(pid, libc::SIGKILL);
    let squatter = eventually(Duration::from_secs(10), "the port free", || {
        std::net::TcpListener::bind(("0.0.0.0", port)).ok()
    });
    eventually(Duration::from_secs(30), "two refused spawns", || {
        let refused = d
            .events("pinned")
            .iter()
            .filter(|e| e.kind == "port" && e.message.contains(&format!("port {port} is in use")))
            .count();
        (refused >= 2).then_some(())
    });
    let now = d.instances("pinned").remove(0);
    assert!(
        !now.ready && now.pid.is_none(),
        "nothing runs meanwhile: {now:?}"
    );
    drop(squatter);
    let back = eventually(Duration::from_secs(30), "ready again on its port", || {
        d.instances("pinned").into_iter().find(|i| i.ready)
    });
    assert_eq!(back.port, Some(port));
    let (status, body) = http_get(port, "/").expect("GET");
    assert_eq!((status, body.contains("v1")), (200, true), "{body}");
}
