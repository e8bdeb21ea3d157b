//! `[watch]`: instances are replaced when files under the watched paths change; ignored
//! paths do not trigger.
mod support;

use std::time::Duration;

use support::*;

/// Touching a watched file replaces the instance (rolling, new pid); an ignored file does not.
#[test]
fn change_under_watched_path_restarts() {
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("app.conf"), "a").unwrap();
    let unit = format!(
        r#"{}
[watch]
paths = ["{dir}"]
ignore = ["*.log"]
debounce = "100ms"
"#,
        demo_unit(1, "v1", ""),
        dir = app.path().display()
    );
    let d = TestDaemon::start(&[("web", &unit)]);
    let first = d.wait_running("web", 1)[0].pid;
    // An ignored file changes first, then a watched one: the single watch event must name the
    // watched file (the ignored change was filtered out, not merely debounced into it).
    std::fs::write(app.path().join("debug.log"), "noise").unwrap();
    std::fs::write(app.path().join("app.conf"), "b").unwrap();
    let second = eventually(
        Duration::from_secs(15),
        "replacement after a watched change",
        || {
            let i = d.instances("web");
            (i.len() == 1 && i[0].state == "running" && i[0].pid != first).then(|| i[0].pid)
        },
    );
    let watch_events: Vec<_> = d
        .events("web")
        .into_iter()
        .filter(|e| e.kind == "watch")
        .collect();
    assert_eq!(watch_events.len(), 1, "{watch_events:#?}");
    assert!(
        watch_events[0].message.contains("app.conf"),
        "{watch_events:#?}"
    );
    assert!(second.is_some());
}
