//! max_memory: the RSS of the whole process tree is watched and the instance restarted.
mod support;

use std::time::Duration;

use support::*;

/// A child process that grows past max_memory (while its parent stays small) gets the
/// instance restarted, with a `memory` event naming the sizes.
#[test]
fn tree_rss_over_limit_restarts_instance() {
    let unit = format!(
        r#"port = "none"
[process]
command = "{grow}"
max_memory = "48MiB"
kill_timeout = "2s"
[env]
GROW_CHILD = "1"
GROW_MB_PER_SEC = "64"
GROW_MAX_MB = "512"
[restart]
delay = "50ms"
"#,
        grow = example("grow").display()
    );
    let d = TestDaemon::start(&[("grow", &unit)]);
    eventually(Duration::from_secs(30), "a memory restart", || {
        let ev = d.events("grow");
        let mem = ev.iter().find(|e| e.kind == "memory")?;
        let restarted = d.instances("grow").iter().any(|i| i.restarts >= 1);
        (restarted).then(|| mem.message.clone())
    });
    let msg = d
        .events("grow")
        .into_iter()
        .find(|e| e.kind == "memory")
        .unwrap()
        .message;
    assert!(msg.contains("exceeded max_memory 48MiB"), "{msg}");
}
