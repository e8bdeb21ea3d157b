//! depends_on: start order by condition, stop order reversed at shutdown.
mod support;

use chain::store::Store;
use support::*;

/// `web` waits for `db` to be healthy and for `migrate` to complete; SIGTERM to chaind stops
/// `web` before `db`.
#[test]
fn start_in_dependency_order_and_stop_in_reverse() {
    let db = demo_unit(
        1,
        "db",
        "STARTUP_DELAY_MS = \"500\"\n[health]\ntype = \"http\"\nstart_interval = \"50ms\"\n",
    );
    let migrate = r#"port = "none"
[process]
command = "sh"
args = ["-c", "echo migrating; exit 0"]
[restart]
policy = "never"
"#;
    let web = format!(
        "depends_on = {{ db = \"healthy\", migrate = \"completed\" }}\n{}",
        demo_unit(1, "web", "")
    );
    let mut d = TestDaemon::start(&[("db", &db), ("migrate", migrate), ("web", &web)]);
    d.wait_running("web", 1);
    d.wait_running("db", 1);

    let seq = |unit: &str, kind: &str| {
        d.events(unit)
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.seq)
            .unwrap_or_else(|| panic!("no {kind} event for {unit}"))
    };
    let web_started = seq("web", "started");
    assert!(
        web_started > seq("db", "ready"),
        "web started before db was healthy"
    );
    assert!(
        web_started > seq("migrate", "exited"),
        "web started before migrate completed"
    );
    assert!(
        d.events("web").iter().any(|e| e.kind == "waiting"),
        "web never reported waiting"
    );

    assert!(d.terminate().success());
    // The store outlives the daemon: read the stop events straight from it.
    let store = Store::open(&d.root.join("state")).unwrap();
    let events = store.recent_events(1000, None).unwrap();
    let stopped = |unit: &str| {
        events
            .iter()
            .find(|e| e.unit == unit && e.kind == "stopped")
            .map(|e| e.seq)
            .unwrap_or_else(|| panic!("no stopped event for {unit}: {events:?}"))
    };
    assert!(
        stopped("web") < stopped("db"),
        "db stopped before its dependent web"
    );
    drop(store);
}
