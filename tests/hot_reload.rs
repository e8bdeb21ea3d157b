//! Hot reload of the units directory: edits roll, broken files are reported and change
//! nothing, new files start, removed files stop.
mod support;

use std::time::Duration;

use support::*;

fn versions(d: &TestDaemon, unit: &str) -> Vec<String> {
    d.instances(unit)
        .iter()
        .filter(|i| i.ready)
        .filter_map(|i| {
            http_get(i.port?, "/")
                .ok()
                .map(|(_, b)| b.trim().to_string())
        })
        .collect()
}

/// Editing a unit replaces its instances one at a time: each new instance is ready before the
/// old one at its index stops and before the next index starts, and capacity never drops.
#[test]
fn edited_unit_rolls_one_instance_at_a_time() {
    let d = TestDaemon::start(&[("web", &demo_unit(2, "v1", ""))]);
    let before = d.wait_running("web", 2);
    let marker = d.events("web").last().map(|e| e.seq).unwrap_or(0);
    d.write_unit("web", &demo_unit(2, "v2", ""));
    let mut min_ready = usize::MAX;
    eventually(Duration::from_secs(30), "both instances serve v2", || {
        let inst = d.instances("web");
        min_ready = min_ready.min(inst.iter().filter(|i| i.ready).count());
        let v = versions(&d, "web");
        (inst.len() == 2 && v == ["v2", "v2"]).then_some(())
    });
    assert!(
        min_ready >= 2,
        "capacity dropped to {min_ready} ready instances during the roll"
    );
    let after = d.wait_running("web", 2);
    for b in &before {
        assert!(
            !after.iter().any(|a| a.pid == b.pid),
            "old pid {:?} still serving",
            b.pid
        );
    }
    let ev: Vec<_> = d
        .events("web")
        .into_iter()
        .filter(|e| e.seq > marker)
        .collect();
    let seq = |idx: u32, kind: &str, nth: usize| {
        ev.iter()
            .filter(|e| e.instance == Some(idx) && e.kind == kind)
            .nth(nth)
            .map(|e| e.seq)
            .unwrap_or_else(|| panic!("no {kind} #{nth} for instance {idx}: {ev:#?}"))
    };
    assert!(
        seq(0, "ready", 0) < seq(0, "stopped", 0),
        "old 0 stopped before new 0 was ready"
    );
    assert!(
        seq(1, "started", 0) > seq(0, "ready", 0),
        "index 1 replaced before new 0 was ready"
    );
    assert!(
        seq(1, "ready", 0) < seq(1, "stopped", 0),
        "old 1 stopped before new 1 was ready"
    );
}

/// A broken file is reported with file:line:column in status and events, and the running
/// instances are left untouched; fixing the file clears the error.
#[test]
fn broken_file_is_reported_and_running_version_kept() {
    let d = TestDaemon::start(&[("web", &demo_unit(1, "v1", ""))]);
    let pid = d.wait_running("web", 1)[0].pid;
    d.write_unit(
        "web",
        "instances = 1\n[process]\ncommand = \"x\"\nkill_timout = \"5s\"\n",
    );
    let status = eventually(Duration::from_secs(10), "error in status", || {
        let s = d.status_any("web");
        (!s.summary.errors.is_empty()).then_some(s)
    });
    let err = &status.summary.errors[0];
    assert!(err.contains("web.toml:4:1"), "{err}");
    assert!(err.contains("kill_timeout"), "hint missing: {err}");
    assert!(
        !d.ctl(&["status", "web"]).status.success(),
        "status of a broken unit exits non-zero"
    );
    assert!(d.events("web").iter().any(|e| e.kind == "invalid"));
    let now = d.instances("web");
    assert_eq!(now.len(), 1);
    assert_eq!(
        now[0].pid, pid,
        "a broken file must not touch the running instance"
    );
    assert_eq!(now[0].state, "running");

    d.write_unit("web", &demo_unit(1, "v1", ""));
    eventually(Duration::from_secs(10), "error cleared", || {
        d.status_any("web").summary.errors.is_empty().then_some(())
    });
    assert_eq!(
        d.instances("web")[0].pid,
        pid,
        "the same spec again must not restart anything"
    );
}

/// A new file starts a unit within a second or so; removing the file stops it.
#[test]
fn added_file_starts_and_removed_file_stops() {
    let d = TestDaemon::start(&[]);
    d.write_unit("api", &demo_unit(1, "v1", ""));
    let pid = d.wait_running("api", 1)[0].pid.unwrap();
    std::fs::remove_file(d.units.join("api.toml")).unwrap();
    eventually(Duration::from_secs(15), "unit gone", || {
        d.instances("api").is_empty().then_some(())
    });
    eventually(Duration::from_secs(5), "process gone", || {
        (!alive(pid)).then_some(())
    });
}

/// `chainctl apply` reports invalid files with every problem and exits non-zero, while valid
/// files in the same directory are applied.
#[test]
fn apply_reports_all_problems() {
    let d = TestDaemon::start(&[("ok", &demo_unit(1, "v1", ""))]);
    std::fs::write(
        d.units.join("bad.toml"),
        "instances = \"many\"\n[process]\ncommand = \"x\"\n[restart]\npolicy = \"sometimes\"\n",
    )
    .unwrap();
    let out = d.ctl(&["apply"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:1:"), "{err}");
    assert!(err.contains("bad.toml:5:"), "{err}");
    assert!(err.contains("always, on-failure, never"), "{err}");
    d.wait_running("ok", 1);
}
