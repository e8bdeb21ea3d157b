//! Container units against the real Docker engine, with the local test image
//! (tests/images/build.sh: busybox + the demo app): start and stop with timeouts, HTTP health
//! of a busybox httpd, restart on crash and on failed (exec) health, engine resource limits,
//! logs -f, re-adoption after kill -9 of chaind, gc, a missing image, and rolling and
//! blue-green deploys of containers under load with zero failed requests.
//!
//! Without a Docker engine every test prints a SKIP line and passes; with CI=true a missing
//! engine fails them (tests/support/docker.rs).
mod support;

use std::time::Duration;

use support::docker::{self, Containers};
use support::*;

/// A container unit running the demo app (listening on $PORT on all addresses).
fn demo_container(image: &str, instances: u32, version: &str, extra: &str) -> String {
    format!(
        r#"instances = {instances}
[container]
image = "{image}"
command = ["demo"]
kill_timeout = "5s"
[env]
VERSION = "{version}"
BIND = "0.0.0.0"
[health]
type = "http"
path = "/health"
interval = "500ms"
start_interval = "50ms"
timeout = "400ms"
{extra}
"#
    )
}

fn http(addr: &str, path: &str) -> Option<(u16, String)> {
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let mut c = KeepAlive::new(addr);
    let r = c.get(path).ok()?;
    Some((r.status, r.text()))
}

/// A busybox httpd container gets ready through its HTTP health check and serves on its
/// address, a page from a read-only bind mount, as an unprivileged user on a read-only root
/// file system under the engine's init; the engine enforces the unit's cpus and memory and
/// carries chain's labels; a
/// container that ignores SIGTERM is killed at kill_timeout; stopping the unit removes every
/// container.
#[test]
fn httpd_container_health_limits_and_stop() {
    let Some(image) = docker::image() else { return };
    // The page comes from a read-only bind mount, served by an unprivileged user from a
    // read-only root file system, under the engine's init.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "chain bind mount page\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(www.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        www.path().join("index.html"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let web = format!(
        r#"instances = 2
[container]
image = "{image}"
command = "httpd -f -p 8080 -h /www"
port = 8080
cpus = 0.5
memory = "64MiB"
labels = {{ "com.example.team" = "web" }}
volumes = ["{www}:/www:ro"]
user = "1000:1000"
read_only = true
init = true
[health]
type = "http"
path = "/index.html"
interval = "500ms"
start_interval = "50ms"
timeout = "400ms"
"#,
        www = www.path().display()
    );
    // PID 1 has no default action for SIGTERM: a plain sleep ignores it.
    let stubborn = format!(
        r#"port = "none"
[container]
image = "{image}"
command = ["sleep", "600"]
kill_timeout = "1s"
"#
    );
    // A process that waits for the containers: depends_on works across drivers.
    let after = "port = \"none\"\ndepends_on = { web = \"healthy\" }\n[process]\ncommand = \"sleep\"\nargs = [\"600\"]\n";
    let d = TestDaemon::start(&[("web", &web), ("stubborn", &stubborn), ("after", after)]);
    let c = Containers::of(&d);
    let v = d.wait_running("web", 2);
    d.wait_running("stubborn", 1);
    d.wait_running("after", 1);
    let last_ready = d
        .events("web")
        .into_iter()
        .filter(|e| e.kind == "ready")
        .map(|e| e.time)
        .max()
        .unwrap();
    let started = d
        .events("after")
        .into_iter()
        .find(|e| e.kind == "started")
        .unwrap()
        .time;
    assert!(started >= last_ready, "{started} < {last_ready}");
    for i in &v {
        let addr = i.address.as_deref().expect("address");
        assert!(addr.ends_with(":8080"), "{addr}");
        let (status, body) = http(addr, "/index.html").expect("httpd answers");
        assert_eq!((status, body.trim()), (200, "chain bind mount page"));
        let id = i.container.as_deref().expect("container id");
        let inspect = docker::inspect(id);
        assert_eq!(inspect["HostConfig"]["NanoCpus"], 500_000_000, "{inspect}");
        assert_eq!(inspect["HostConfig"]["Memory"], 64 << 20);
        assert_eq!(inspect["HostConfig"]["ReadonlyRootfs"], true);
        assert_eq!(inspect["HostConfig"]["Init"], true);
        assert_eq!(inspect["Config"]["User"], "1000:1000");
        let mounts = inspect["Mounts"].as_array().expect("mounts");
        assert!(
            mounts
                .iter()
                .any(|m| m["Destination"] == "/www" && m["Type"] == "bind" && m["RW"] == false),
            "{mounts:?}"
        );
        assert!(inspect["HostConfig"]["RestartPolicy"]["Name"]
            .as_str()
            .is_none_or(|n| n.is_empty() || n == "no"));
        let labels = &inspect["Config"]["Labels"];
        assert_eq!(labels["chain.unit"], "web");
        assert_eq!(labels["chain.instance"], i.instance.to_string());
        assert_eq!(labels["chain.store"], c.store.as_str());
        assert_eq!(labels["com.example.team"], "web");
        assert!(labels["chain.revision"]
            .as_str()
            .unwrap()
            .starts_with(&i.revision));
    }
    assert_eq!(c.running("web").len(), 2);

    // Stop: the stubborn one gets SIGKILL after 1s; every container is removed.
    d.ctl_ok(&["stop", "stubborn"]);
    assert!(
        d.events("stubborn").iter().any(|e| e.kind == "killed"),
        "{:?}",
        d.events("stubborn")
    );
    d.ctl_ok(&["stop", "after"]);
    d.ctl_ok(&["stop", "web"]);
    eventually(Duration::from_secs(15), "containers removed", || {
        c.list().is_empty().then_some(())
    });
}

/// A crashing container is restarted (a new container each time) by the restart policy; a
/// container whose exec health check starts failing is restarted after `restart_after`.
#[test]
fn restart_on_crash_and_on_failed_health() {
    let Some(image) = docker::image() else { return };
    let crash = format!(
        r#"port = "none"
[container]
image = "{image}"
command = ["sh", "-c", "echo up; sleep 0.3; exit 3"]
[restart]
policy = "on-failure"
delay = "50ms"
min_uptime = "100ms"
max_restarts = 100
"#
    );
    let sick = format!(
        r#"port = "none"
[container]
image = "{image}"
command = ["sh", "-c", "touch /tmp/healthy; exec sleep 600"]
kill_timeout = "1s"
[health]
type = "exec"
command = ["test", "-f", "/tmp/healthy"]
interval = "500ms"
start_interval = "100ms"
timeout = "400ms"
retries = 1
restart_after = 2
"#
    );
    let d = TestDaemon::start(&[("crash", &crash), ("sick", &sick)]);
    let c = Containers::of(&d);
    let ids = eventually(Duration::from_secs(30), "two restarts", || {
        let v = d.instances("crash");
        (v.len() == 1 && v[0].restarts >= 2).then_some(())?;
        let exits: Vec<_> = d
            .events("crash")
            .into_iter()
            .filter(|e| e.message.contains("exit code 3"))
            .collect();
        (exits.len() >= 2).then_some(exits)
    });
    assert!(ids.len() >= 2);
    // Each incarnation was its own container, and exited ones are removed.
    eventually(
        Duration::from_secs(10),
        "at most one crash container",
        || (c.list().iter().filter(|x| x.unit == "crash").count() <= 1).then_some(()),
    );

    let before = d.wait_running("sick", 1)[0].container.clone().unwrap();
    docker::docker(&["exec", &before, "rm", "/tmp/healthy"]).unwrap();
    let after = eventually(
        Duration::from_secs(20),
        "restarted after failed checks",
        || {
            let v = d.instances("sick");
            let i = v.first()?;
            (i.state == "running" && i.container.as_deref() != Some(before.as_str()))
                .then(|| i.container.clone())?
        },
    );
    assert_ne!(after, before);
    let events = d.events("sick");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "health" && e.message.contains("exit code 1")),
        "{events:?}"
    );
}

/// stdout and stderr of a container land in the unit's log, and `logs -f` streams new lines.
#[test]
fn container_logs_follow() {
    let Some(image) = docker::image() else { return };
    let talk = format!(
        r#"port = "none"
[container]
image = "{image}"
command = ["sh", "-c", "echo to-stderr >&2; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"]
kill_timeout = "1s"
"#
    );
    let d = TestDaemon::start(&[("talk", &talk)]);
    let _c = Containers::of(&d);
    d.wait_running("talk", 1);
    let mut child = std::process::Command::new(CHAINCTL)
        .arg("--socket")
        .arg(&d.socket)
        .args(["logs", "talk", "-f", "-n", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("logs -f streams new lines");
        if line.contains(" out line ") {
            seen.push(line);
        }
    }
    child.kill().ok();
    child.wait().ok();
    let all = d.ctl_ok(&["logs", "talk", "-n", "1000"]);
    assert!(all.contains(" err to-stderr"), "{all}");
    // Lines are in order and none is repeated.
    let numbers: Vec<u64> = all
        .lines()
        .filter_map(|l| l.split(" out line ").nth(1)?.trim().parse().ok())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
}

/// After kill -9 of chaind, a new chaind adopts the running containers by label: same
/// containers, no restart, no duplicate; their logs keep flowing, and it still stops them.
#[test]
fn containers_are_adopted_after_kill9() {
    let Some(image) = docker::image() else { return };
    let mut d = TestDaemon::start(&[("web", &demo_container(&image, 2, "v1", ""))]);
    let c = Containers::of(&d);
    let before = d.wait_running("web", 2);
    let ids: Vec<String> = before
        .iter()
        .map(|i| i.container.clone().unwrap())
        .collect();
    d.kill9();
    d.spawn();
    let after = d.wait_running("web", 2);
    let mut again: Vec<String> = after.iter().map(|i| i.container.clone().unwrap()).collect();
    let mut ids_sorted = ids.clone();
    ids_sorted.sort();
    again.sort();
    assert_eq!(again, ids_sorted, "containers were replaced");
    assert!(after.iter().all(|i| i.restarts == 0));
    assert_eq!(c.list().len(), 2, "{:?}", c.list());
    let events = d.events("web");
    assert_eq!(
        events.iter().filter(|e| e.kind == "adopted").count(),
        2,
        "{events:?}"
    );
    // The adopted containers still serve, and their exit is still noticed.
    let (status, body) = http(after[0].address.as_deref().unwrap(), "/").unwrap();
    assert_eq!((status, body.trim()), (200, "v1"));
    docker::docker(&["kill", &ids[0]]).unwrap();
    eventually(Duration::from_secs(15), "killed container replaced", || {
        let v = d.instances("web");
        (v.len() == 2
            && v.iter().all(|i| i.state == "running")
            && v.iter()
                .all(|i| i.container.as_deref() != Some(ids[0].as_str())))
        .then_some(())
    });
}

/// `chainctl gc` removes containers of this chaind that no instance owns, keeps those of
/// other chaind roots (unless --all) and never touches the running instances.
#[test]
fn gc_removes_unowned_containers() {
    let Some(image) = docker::image() else { return };
    let d = TestDaemon::start(&[("web", &demo_container(&image, 1, "v1", ""))]);
    let c = Containers::of(&d);
    let running = d.wait_running("web", 1)[0].container.clone().unwrap();
    let orphan = docker::docker(&[
        "create",
        "--label",
        &format!("chain.store={}", c.store),
        "--label",
        "chain.unit=ghost",
        "--label",
        "chain.generation=0",
        &image,
        "sleep",
        "60",
    ])
    .unwrap()
    .trim()
    .to_string();
    let foreign_store = format!("{}-other", c.store);
    let foreign = docker::docker(&[
        "create",
        "--label",
        &format!("chain.store={foreign_store}"),
        "--label",
        "chain.unit=web",
        &image,
        "sleep",
        "60",
    ])
    .unwrap()
    .trim()
    .to_string();

    let dry: chain::api::wire::GcResult =
        serde_json::from_str(&d.ctl_ok(&["gc", "--dry-run", "--json"])).unwrap();
    let action = |r: &chain::api::wire::GcResult, id: &str| {
        r.containers
            .iter()
            .find(|x| id.starts_with(&x.id))
            .map(|x| x.action.clone())
    };
    assert_eq!(action(&dry, &orphan).as_deref(), Some("would-remove"));
    assert_eq!(action(&dry, &foreign).as_deref(), Some("kept-other-store"));
    assert_eq!(action(&dry, &running), None, "an owned container is listed");
    assert!(docker::docker(&["inspect", &orphan]).is_ok());

    let done: chain::api::wire::GcResult =
        serde_json::from_str(&d.ctl_ok(&["gc", "--json"])).unwrap();
    assert_eq!(action(&done, &orphan).as_deref(), Some("removed"));
    assert!(
        docker::docker(&["inspect", &orphan]).is_err(),
        "orphan still there"
    );
    assert!(docker::docker(&["inspect", &foreign]).is_ok());
    assert_eq!(
        d.instances("web")[0].container.as_deref(),
        Some(running.as_str())
    );
    docker::remove_all(&foreign_store);
}

/// A unit whose image is missing (and cannot be pulled: there is no registry) fails with an
/// error naming the image, and the other units keep running; a deploy to a missing image
/// aborts and the old version keeps serving.
#[test]
fn missing_image_is_a_clear_error() {
    let Some(image) = docker::image() else { return };
    let ghost = r#"port = "none"
[container]
image = "chain-test-missing:nope"
pull = "never"
"#;
    let web = demo_container(
        &image,
        1,
        "v1",
        "[[route]]\npath = \"/\"\n[deploy]\nhealthy_deadline = \"5s\"",
    );
    let d = TestDaemon::start_with(
        &[("ghost", ghost), ("web", &web)],
        &["--http", "127.0.0.1:0"],
    );
    let _c = Containers::of(&d);
    d.wait_running("web", 1);
    let error = eventually(Duration::from_secs(20), "ghost fails", || {
        let s = d.status_any("ghost");
        s.instances
            .iter()
            .any(|i| i.state == "failed")
            .then_some(s.last_error)?
    });
    assert!(
        error.contains("chain-test-missing:nope") && error.contains("not present locally"),
        "{error}"
    );

    let addr = d.http_addr();
    let out = d.ctl(&[
        "deploy",
        "web",
        "--set",
        "container.image=chain-test-missing:v9",
        "--wait",
    ]);
    assert!(!out.status.success(), "deploy to a missing image succeeded");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("chain-test-missing:v9"), "{text}");
    assert_eq!(KeepAlive::new(addr).get("/").unwrap().text().trim(), "v1");
    let v = d.wait_running("web", 1);
    assert!(v.iter().all(|i| i.revision == v[0].revision));
}

/// Rolling and blue-green deploys of container instances through the proxy under a running
/// client: no failed request, and the version flips.
#[test]
fn container_deploys_under_load() {
    let Some(image) = docker::image() else { return };
    for strategy in ["rolling", "blue-green"] {
        let unit = demo_container(
            &image,
            2,
            "v1",
            &format!("[[route]]\npath = \"/\"\n[deploy]\nstrategy = \"{strategy}\""),
        );
        let d = TestDaemon::start_with(&[("web", &unit)], &["--http", "127.0.0.1:0"]);
        let c = Containers::of(&d);
        d.wait_running("web", 2);
        let addr = d.http_addr();
        eventually(Duration::from_secs(10), "routed", || {
            (KeepAlive::new(addr).get("/").ok()?.text().trim() == "v1").then_some(())
        });
        let load = Load::start(addr, 4, "/");
        load.wait_for_more(100);
        d.ctl_ok(&["deploy", "web", "--set", "env.VERSION=v2", "--wait"]);
        load.wait_for_more(100);
        let reports = load.finish();
        assert_no_failure(&reports, &format!("{strategy}: "));
        for r in &reports {
            assert_eq!(
                (
                    r.versions.first().map(String::as_str),
                    r.versions.last().map(String::as_str)
                ),
                (Some("v1"), Some("v2")),
                "{strategy}: {:?}",
                r.versions
            );
        }
        eventually(Duration::from_secs(15), "old containers removed", || {
            (c.list().len() == 2).then_some(())
        });
    }
}

/// A registry on loopback (Debian's docker-registry), killed when dropped.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Option<Registry> {
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but docker-registry is not installed (apt-get install docker-registry)");
            }
            eprintln!(
                "SKIP: the pull test needs docker-registry (apt-get install docker-registry)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry {
            child,
            port,
            _dir: dir,
        };
        eventually(Duration::from_secs(10), "registry listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Some(r)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// An image that is not present locally is pulled (from a registry on loopback, which the
/// engine trusts without TLS), with progress reported as events, and then runs.
#[test]
fn missing_image_is_pulled_with_progress() {
    let Some(image) = docker::image() else { return };
    let Some(registry) = Registry::start() else {
        return;
    };
    let remote = format!(
        "127.0.0.1:{}/chain-test-pull:{}",
        registry.port,
        std::process::id()
    );
    docker::docker(&["tag", &image, &remote]).unwrap();
    docker::docker(&["push", &remote]).unwrap();
    docker::docker(&["rmi", &remote]).unwrap();
    let unit = demo_container(&remote, 1, "pulled", "");
    let d = TestDaemon::start(&[("web", &unit)]);
    let _c = Containers::of(&d);
    let v = d.wait_running("web", 1);
    let (status, body) = http(v[0].address.as_deref().unwrap(), "/").unwrap();
    assert_eq!((status, body.trim()), (200, "pulled"));
    let pulls: Vec<String> = d
        .events("web")
        .into_iter()
        .filter(|e| e.kind == "pull")
        .map(|e| e.message)
        .collect();
    assert!(
        pulls
            .first()
            .is_some_and(|m| m == &format!("pulling image {remote}"))
            && pulls
                .last()
                .is_some_and(|m| m == &format!("pulled image {remote}")),
        "{pulls:?}"
    );
    drop(d);
    let _ = docker::docker(&["rmi", &remote]);
}
