//! Crash safety: after `kill -9` of chaind, a new chaind re-adopts running instances (no
//! duplicates, no restarts), restarts those that died meanwhile, and loses no log line.
mod support;

use std::time::Duration;

use support::*;

/// Same pids, no restarts, no duplicate processes after kill -9 and a fresh start.
#[test]
fn kill9_then_readopt_without_duplicates_or_restarts() {
    let mut d = TestDaemon::start(&[("web", &demo_unit(2, "v1", "[health]\ntype = \"http\"\n"))]);
    let before = d.wait_running("web", 2);
    d.kill9();
    for i in &before {
        assert!(alive(i.pid.unwrap()), "instance died with chaind");
        assert_eq!(
            http_get(i.port.unwrap(), "/").unwrap().0,
            200,
            "instance stopped serving"
        );
    }
    d.spawn();
    let after = d.wait_running("web", 2);
    let mut b: Vec<_> = before.iter().map(|i| (i.instance, i.pid, i.port)).collect();
    let mut a: Vec<_> = after.iter().map(|i| (i.instance, i.pid, i.port)).collect();
    b.sort();
    a.sort();
    assert_eq!(a, b, "instances changed across the restart");
    assert!(after.iter().all(|i| i.restarts == 0));
    assert!(after.iter().all(|i| i.uptime_secs.is_some()));
    // Exactly the two demo processes exist for this daemon.
    let demos = demo_processes(&d);
    assert_eq!(demos.len(), 2, "duplicate or missing processes: {demos:?}");
    assert!(
        d.events("web")
            .iter()
            .filter(|e| e.kind == "adopted")
            .count()
            == 2
    );
    // A re-adopted instance's exit is still noticed and acted on.
    let victim = after[0].pid.unwrap();
    signal(victim, libc::SIGKILL);
    eventually(
        Duration::from_secs(20),
        "replacement after exit of an adopted process",
        || {
            let v = d.instances("web");
            (v.len() == 2
                && v.iter()
                    .all(|i| i.state == "running" && i.pid != Some(victim)))
            .then_some(())
        },
    );
}

/// An instance that dies while chaind is down is restarted when chaind comes back; the
/// others are left alone.
#[test]
fn instance_lost_while_down_is_restarted() {
    let mut d = TestDaemon::start(&[("web", &demo_unit(2, "v1", ""))]);
    let before = d.wait_running("web", 2);
    d.kill9();
    let victim = before[0].pid.unwrap();
    signal(victim, libc::SIGKILL);
    eventually(Duration::from_secs(5), "victim gone", || {
        (!alive(victim)).then_some(())
    });
    d.spawn();
    let after = d.wait_running("web", 2);
    assert!(
        after.iter().any(|i| i.pid == before[1].pid),
        "the healthy instance was replaced"
    );
    assert!(!after.iter().any(|i| i.pid == Some(victim)));
    assert!(d.events("web").iter().any(|e| e.kind == "lost"));
}

/// Lines written while chaind is down are kept (the FIFO buffers them) and appear, in order
/// and exactly once, after chaind returns.
#[test]
fn logs_keep_flowing_across_chaind_restart() {
    let counter = tempfile::tempdir().unwrap();
    let count_file = counter.path().join("count");
    let unit = format!(
        r#"port = "none"
[process]
command = "sh"
args = ["-c", "i=0; while true; do i=$((i+1)); echo line $i; echo $i > {count}.tmp; mv {count}.tmp {count}; sleep 0.01; done"]
"#,
        count = count_file.display()
    );
    let read_count = || {
        std::fs::read_to_string(&count_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let mut d = TestDaemon::start(&[("talk", &unit)]);
    d.wait_running("talk", 1);
    eventually(Duration::from_secs(10), "some lines", || {
        (read_count()? > 10).then_some(())
    });
    d.kill9();
    let at_kill = read_count().unwrap();
    eventually(
        Duration::from_secs(10),
        "lines written while chaind is down",
        || (read_count()? > at_kill + 50).then_some(()),
    );
    let while_down = read_count().unwrap();
    d.spawn();
    let text = eventually(
        Duration::from_secs(15),
        "lines from the down period in the log",
        || {
            let t = std::fs::read_to_string(d.root.join("logs/talk.log")).ok()?;
            t.contains(&format!(" out line {while_down}\n"))
                .then_some(t)
        },
    );
    let numbers: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split(" out line ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let upto: Vec<u64> = numbers
        .iter()
        .copied()
        .take_while(|n| *n <= while_down)
        .collect();
    assert_eq!(
        upto,
        (1..=while_down).collect::<Vec<_>>(),
        "lost, duplicated or reordered lines"
    );
}

/// Processes (not threads) holding a FIFO under this daemon's run directory.
fn demo_processes(d: &TestDaemon) -> Vec<i32> {
    let run = d.root.join("run");
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.starts_with(&run)))
        {
            let cmd = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            if cmd.trim() == "demo" {
                out.push(pid);
            }
        }
    }
    out
}
