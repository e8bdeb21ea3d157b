//! What an instance gets in its environment and as whom it runs: env files, profiles chosen
//! at apply time, per-instance variables, and `user`.
mod support;

use std::time::Duration;

use support::*;

/// The variable as the unit's single running instance sees it (None while instances change).
fn env_of(d: &TestDaemon, unit: &str, name: &str) -> Option<String> {
    let i = d.wait_running(unit, 1).pop()?;
    let (_, body) = http_get(i.port?, &format!("/env?name={name}")).ok()?;
    Some(body.trim().to_string())
}

/// env_file < [env] < profile; `chainctl apply --profile` switches and rolls the instance, and
/// the choice survives a chaind restart.
#[test]
fn env_files_and_profiles() {
    let mut d = TestDaemon::start(&[]);
    std::fs::write(d.units.join("web.env"), "FROM_FILE=file\nMODE=file\n").unwrap();
    let unit = format!(
        "{}\n[profile.staging.env]\nMODE = \"staging\"\n",
        demo_unit(1, "v1", "MODE = \"base\"").replacen(
            "[process]",
            "[process]\nenv_file = \"web.env\"",
            1
        )
    );
    d.write_unit("web", &unit);
    assert_eq!(env_of(&d, "web", "FROM_FILE").as_deref(), Some("file"));
    assert_eq!(env_of(&d, "web", "MODE").as_deref(), Some("base"));
    assert_eq!(env_of(&d, "web", "CHAIN_UNIT").as_deref(), Some("web"));

    d.ctl_ok(&["apply", "--profile", "staging"]);
    eventually(Duration::from_secs(15), "staging env", || {
        (env_of(&d, "web", "MODE")? == "staging").then_some(())
    });
    let spec: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["inspect", "web"])).unwrap();
    assert_eq!(spec["profile"], "staging");

    d.kill9();
    d.spawn();
    assert_eq!(
        env_of(&d, "web", "MODE").as_deref(),
        Some("staging"),
        "profile forgotten across a restart"
    );
    d.ctl_ok(&["apply", "--profile", ""]);
    eventually(Duration::from_secs(15), "base env again", || {
        (env_of(&d, "web", "MODE")? == "base").then_some(())
    });
}

/// As root, `user = "nobody"` runs the instance as that user.
#[test]
fn runs_as_configured_user() {
    if chain_agent::host::euid() != 0 {
        eprintln!("SKIP runs_as_configured_user: needs root");
        return;
    }
    let unit = "port = \"none\"\n[process]\ncommand = \"sleep\"\nargs = [\"1000\"]\nuser = \"nobody\"\ncwd = \"/\"\n";
    let d = TestDaemon::start(&[("nob", unit)]);
    let pid = d.wait_running("nob", 1)[0].pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid_line}"
    );
}
