//! Docker helpers for container tests: the local test image (tests/images/build.sh, built once
//! per test binary), a guard that removes every container a test daemon created, and thin
//! wrappers over the `docker` CLI for checking what the engine sees.
//!
//! Without a Docker engine, [`image`] prints a SKIP line and returns None, so container tests
//! pass vacuously on a developer machine; with `CI=true` a missing engine panics instead.

use std::process::Command;
use std::sync::OnceLock;

use super::{example, TestDaemon};

/// The test image (busybox + the demo app), or None without an engine (outside CI).
pub fn image() -> Option<String> {
    static IMAGE: OnceLock<Option<String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let engine = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .output();
            let reachable = engine.as_ref().is_ok_and(|o| o.status.success());
            if !reachable {
                let why = match &engine {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("CI=true but no Docker engine answers: {why}");
                }
                eprintln!("SKIP: container tests need a Docker engine ({why})");
                return None;
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/images/build.sh");
            let out = Command::new("bash")
                .arg(script)
                .arg(example("demo"))
                .output()
                .expect("run tests/images/build.sh");
            assert!(
                out.status.success(),
                "tests/images/build.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .clone()
}

/// `docker ARGS`, stdout on success.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A container as `docker ps` sees it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub unit: String,
}

/// The containers of one test daemon. The daemon removes what is left of them when it is
/// dropped, after chaind is gone.
pub struct Containers {
    pub store: String,
}

impl Containers {
    pub fn of(d: &TestDaemon) -> Containers {
        let v: chain::api::wire::VersionInfo =
            serde_json::from_str(&d.ctl_ok(&["version", "--json"])).unwrap();
        assert!(!v.store_id.is_empty());
        *d.docker_store.lock().unwrap() = Some(v.store_id.clone());
        Containers { store: v.store_id }
    }

    pub fn list(&self) -> Vec<Listed> {
        list(&self.store)
    }

    pub fn running(&self, unit: &str) -> Vec<Listed> {
        self.list()
            .into_iter()
            .filter(|c| c.running && c.unit == unit)
            .collect()
    }
}

/// Removes every container with this `chain.store` label.
pub fn remove_all(store: &str) {
    let ids: Vec<String> = list(store).into_iter().map(|c| c.id).collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

fn list(store: &str) -> Vec<Listed> {
    let filter = format!("label=chain.store={store}");
    let out = docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &filter,
        "--format",
        "{{.ID}} {{.Names}} {{.State}} {{.Label \"chain.unit\"}}",
    ])
    .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some(Listed {
                id: w.next()?.to_string(),
                name: w.next()?.to_string(),
                running: w.next()? == "running",
                unit: w.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// `docker inspect ID` as JSON.
pub fn inspect(id: &str) -> serde_json::Value {
    let out = docker(&["inspect", id]).unwrap_or_else(|e| panic!("docker inspect {id}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}
