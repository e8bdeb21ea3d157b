//! Logs: stdout and stderr of every instance, timestamped, readable with `chainctl logs` and
//! followed live with `-f`.
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chain::api::wire::LogLine;
use support::*;

/// Both streams land in the unit's log with a timestamp, instance and stream per line.
#[test]
fn stdout_and_stderr_are_logged_with_timestamps() {
    let unit = r#"port = "none"
[process]
command = "sh"
args = ["-c", "echo to-stdout; echo to-stderr >&2; exec sleep 1000"]
"#;
    let d = TestDaemon::start(&[("talk", unit)]);
    let lines: Vec<LogLine> = eventually(Duration::from_secs(10), "both lines logged", || {
        let out = d.ctl_ok(&["logs", "talk", "--json"]);
        let lines: Vec<LogLine> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines.iter().any(|l| l.text == "to-stdout") && lines.iter().any(|l| l.text == "to-stderr"))
            .then_some(lines)
    });
    let out = lines.iter().find(|l| l.text == "to-stdout").unwrap();
    let err = lines.iter().find(|l| l.text == "to-stderr").unwrap();
    assert_eq!((out.stream.as_str(), err.stream.as_str()), ("out", "err"));
    assert_eq!(out.instance, "0");
    assert!(
        chain_agent::logs::parse_timestamp_ms(&out.time).is_some(),
        "timestamp {}",
        out.time
    );
    // The raw file is under DIR/logs.
    let raw = std::fs::read_to_string(d.root.join("logs/talk.log")).unwrap();
    assert!(raw.contains(" 0 out to-stdout"), "{raw}");
}

/// `chainctl logs -f` streams lines written after it started, across an instance restart.
#[test]
fn logs_follow_streams_new_lines() {
    let d = TestDaemon::start(&[("web", &demo_unit(1, "v1", ""))]);
    let first = d.wait_running("web", 1)[0].clone();
    let mut child = Command::new(CHAINCTL)
        .args([
            "--socket",
            d.socket.to_str().unwrap(),
            "logs",
            "web",
            "-f",
            "-n",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The follower is connected once the one line of history arrives.
    let first_line = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(l) => l,
        Err(e) => {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "no history line ({e}); chainctl stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }
    };
    assert!(first_line.contains("listening"), "{first_line}");
    // Make the app exit; its replacement prints a fresh "listening" line with a new pid.
    let _ = http_get(first.port.unwrap(), "/exit?code=1");
    let new_pid = eventually(Duration::from_secs(20), "replacement running", || {
        d.instances("web")
            .iter()
            .find(|i| i.state == "running" && i.pid != first.pid)
            .and_then(|i| i.pid)
    });
    let want = format!("pid {new_pid}");
    let mut seen = Vec::new();
    eventually(
        Duration::from_secs(10),
        "followed line from the new process",
        || {
            while let Ok(l) = rx.try_recv() {
                seen.push(l);
            }
            seen.iter()
                .any(|l| l.contains("listening") && l.contains(&want))
                .then_some(())
        },
    );
    assert!(
        seen.iter()
            .any(|l| l.contains(" sys ") && l.contains("exit code 1")),
        "{seen:#?}"
    );
    child.kill().ok();
    child.wait().ok();
}
