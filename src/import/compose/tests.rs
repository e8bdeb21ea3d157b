//! Table-driven tests of the compose mapping: each rule, each note, anchors and merge keys,
//! dependencies, port overlaps and files that are not compose files.

use std::path::Path;

use super::*;
use crate::import::Import;

/// Converts `services:` + `body` with the compose file at /srv/app and units in
/// /srv/app/units; checks that every unit parses and the set validates.
fn run(body: &str) -> Import {
    let env = |name: &str| match name {
        "TAG" => Some("1.2".to_string()),
        "FROM_ENV" => Some("env-value".to_string()),
        _ => None,
    };
    let cx = Context {
        file: Path::new("/srv/app/docker-compose.yml"),
        out_dir: Path::new("/srv/app/units"),
        env: &env,
        exists: &|p: &Path| p.ends_with("present.env"),
    };
    let import = convert(body, &cx).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let mut files = Vec::new();
    for (name, text) in &import.units {
        let path = cx.out_dir.join(format!("{name}.toml"));
        match crate::unit::parse(&path, text) {
            Ok(f) => files.push(f),
            Err(e) => panic!("{name} does not parse: {e:?}\n{text}"),
        }
    }
    let names = import.units.iter().map(|(n, _)| n.clone()).collect();
    let errors = crate::unit::validate_set(&files, &names);
    assert!(errors.is_empty(), "{errors:?}");
    import
}

/// The value at a dotted key of a unit, as TOML text (`"always"`, `3`, `["a"]`).
fn value(import: &Import, unit: &str, key: &str) -> Option<String> {
    let text = &import.units.iter().find(|(n, _)| n == unit)?.1;
    let mut v: &toml::Value = &toml::from_str::<toml::Value>(text).ok()?;
    for part in key.split('.') {
        v = v.get(part)?;
    }
    Some(v.to_string())
}

fn service(body: &str) -> String {
    let indented: Vec<String> = body.lines().map(|l| format!("    {l}")).collect();
    format!("services:\n  s:\n{}\n", indented.join("\n"))
}

fn has_note(import: &Import, key: &str, contains: &str) -> bool {
    import
        .notes
        .iter()
        .any(|n| n.key == key && n.message.contains(contains))
}

/// Each service key maps onto the unit key the docs name.
#[test]
fn mapping_rules() {
    #[rustfmt::skip]
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("image: redis:7", "container.image", Some(r#""redis:7""#)),
            ("image: app:${TAG}", "container.image", Some(r#""app:1.2""#)),
            ("image: app:${NOPE:-latest}", "container.image", Some(r#""app:latest""#)),
            ("build: ./web", "container.image", Some(r#""app-s""#)),
            ("image: a\ncommand: redis-server --port 6380", "container.command", Some(r#""redis-server --port 6380""#)),
            ("image: a\ncommand: [\"a\", \"b c\"]", "container.command", Some(r#"["a", "b c"]"#)),
            ("image: a\nentrypoint: \"\"", "container.entrypoint", Some("[]")),
            ("image: a\nentrypoint: [tini, --]", "container.entrypoint", Some(r#"["tini", "--"]"#)),
            ("image: a\nworking_dir: /app", "container.working_dir", Some(r#""/app""#)),
            ("image: a\nuser: \"1000:1000\"", "container.user", Some(r#""1000:1000""#)),
            ("image: a\nuser: 1000", "container.user", Some("1000")),
            ("image: a\nread_only: true", "container.read_only", Some("true")),
            ("image: a\ninit: true", "container.init", Some("true")),
            ("image: a\npull_policy: always", "container.pull", Some(r#""always""#)),
            ("image: a\nenvironment:\n  - A=1\n  - B=x=y", "env.B", Some(r#""x=y""#)),
            ("image: a\nenvironment:\n  A: 1\n  B: true", "env.A", Some(r#""1""#)),
            ("image: a\nenvironment:\n  FROM_ENV:", "env.FROM_ENV", Some(r#""env-value""#)),
            ("image: a\nenvironment: [FROM_ENV]", "env.FROM_ENV", Some(r#""env-value""#)),
            ("image: a\nenvironment:\n  UNSET:", "env.UNSET", None),
            ("image: a\nenvironment:\n  PORT: 3001", "container.port", Some("3001")),
            ("image: a\nenvironment:\n  PORT: 3001", "env.PORT", None),
            ("image: a\nenv_file: present.env", "container.env_file", Some(r#""../present.env""#)),
            ("image: a\nenv_file: [missing.env, present.env]", "container.env_file", Some(r#""../present.env""#)),
            ("image: a\nports: [\"8080:80\"]", "port", Some("8080")),
            ("image: a\nports: [\"8080:80\"]", "container.port", Some("80")),
            ("image: a\nports: [\"8080:80\"]", "container.bind", Some(r#""0.0.0.0""#)),
            ("image: a\nports: [\"127.0.0.1:8080:80\"]", "container.bind", Some(r#""127.0.0.1""#)),
            ("image: a\nports: [\"[::1]:8080:80/tcp\"]", "container.bind", Some(r#""::1""#)),
            ("image: a\nports: [\"80\"]", "port", None),
            ("image: a\nports: [80]", "container.port", Some("80")),
            ("image: a\nports: [\"8000-8002:80\"]", "port", Some(r#""8000-8002""#)),
            ("image: a\nports:\n  - target: 80\n    published: \"8080\"\n    host_ip: 127.0.0.1", "port", Some("8080")),
            ("image: a\nexpose: [\"9000\"]", "container.port", Some("9000")),
            ("image: a", "port", Some(r#""none""#)),
            ("image: a\nvolumes: [./data:/data]", "container.volumes", Some(r#"["../data:/data"]"#)),
            ("image: a\nvolumes: [\"/etc/x:/x:ro,z\"]", "container.volumes", Some(r#"["/etc/x:/x:ro"]"#)),
            ("image: a\nvolumes: [db:/var/lib/db]", "container.volumes", Some(r#"["app_db:/var/lib/db"]"#)),
            ("image: a\nvolumes:\n  - type: bind\n    source: ./c\n    target: /c\n    read_only: true", "container.volumes", Some(r#"["../c:/c:ro"]"#)),
            ("image: a\nvolumes: [/anonymous]", "container.volumes", None),
            ("image: a\nnetworks: [default, back]", "container.networks", Some(r#"["back"]"#)),
            ("image: a\nnetworks:\n  front:\n  back: {}", "container.networks", Some(r#"["front", "back"]"#)),
            ("image: a\nlabels: [\"team=web\"]", "container.labels.team", Some(r#""web""#)),
            ("image: a\nlabels:\n  com.example.tier: back", "container.labels", Some(r#"{ "com.example.tier" = "back" }"#)),
            ("image: a\nrestart: \"no\"", "restart.policy", Some(r#""never""#)),
            ("image: a", "restart.policy", Some(r#""never""#)),
            ("image: a\nrestart: always", "restart.policy", Some(r#""always""#)),
            ("image: a\nrestart: unless-stopped", "restart.policy", Some(r#""always""#)),
            ("image: a\nrestart: on-failure:5", "restart.policy", Some(r#""on-failure""#)),
            ("image: a\nrestart: on-failure:5", "restart.max_restarts", Some("5")),
            ("image: a\ndeploy:\n  restart_policy:\n    condition: on-failure\n    max_attempts: 3\n    delay: 5s", "restart.delay", Some(r#""5s""#)),
            ("image: a\ndeploy:\n  replicas: 4", "instances", Some("4")),
            ("image: a\nscale: 2", "instances", Some("2")),
            ("image: a\ndeploy:\n  resources:\n    limits:\n      cpus: '0.5'\n      memory: 512M", "container.cpus", Some("0.5")),
            ("image: a\ndeploy:\n  resources:\n    limits:\n      cpus: '0.5'\n      memory: 512M", "container.memory", Some(r#""512MiB""#)),
            ("image: a\nmem_limit: 1g\ncpus: 1.5", "container.memory", Some(r#""1GiB""#)),
            ("image: a\nmem_limit: 1g\ncpus: 1.5", "container.cpus", Some("1.5")),
            ("image: a\ndeploy:\n  resources:\n    reservations:\n      devices:\n        - driver: nvidia\n          count: 2\n          capabilities: [gpu]", "container.gpus", Some("2")),
            ("image: a\ndeploy:\n  resources:\n    reservations:\n      devices:\n        - capabilities: [gpu]\n          count: all", "container.gpus", Some(r#""all""#)),
            ("image: a\ngpus: all", "container.gpus", Some(r#""all""#)),
            ("image: a\nstop_signal: SIGINT\nstop_grace_period: 1m30s", "container.stop_signal", Some(r#""SIGINT""#)),
            ("image: a\nstop_signal: SIGINT\nstop_grace_period: 1m30s", "container.kill_timeout", Some(r#""1m30s""#)),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"curl\", \"-f\", \"http://localhost:8080/healthz\"]", "health.path", Some(r#""/healthz""#)),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"curl\", \"-f\", \"http://localhost:8080/healthz\"]", "container.port", Some("8080")),
            ("image: a\nhealthcheck:\n  test: [\"CMD-SHELL\", \"curl -fsS http://127.0.0.1:3000/h?x=1 || exit 1\"]", "health.path", Some(r#""/h?x=1""#)),
            ("image: a\nhealthcheck:\n  test: wget -q --spider http://localhost/ping", "health.type", Some(r#""http""#)),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"wget\", \"-qO-\", \"http://localhost:81/\"]", "container.port", Some("81")),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"curl\", \"-H\", \"X: y\", \"http://localhost/\"]", "health.type", Some(r#""exec""#)),
            ("image: a\nhealthcheck:\n  test: [\"CMD-SHELL\", \"pg_isready -U x\"]", "health.command", Some(r#"["sh", "-c", "pg_isready -U x"]"#)),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"redis-cli\", \"ping\"]\n  interval: 1m30s\n  timeout: 500ms\n  retries: 5\n  start_period: 10s", "health.interval", Some(r#""1m30s""#)),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"redis-cli\", \"ping\"]\n  interval: 1m30s\n  timeout: 500ms\n  retries: 5\n  start_period: 10s", "health.timeout", Some(r#""500ms""#)),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"redis-cli\", \"ping\"]\n  interval: 1m30s\n  timeout: 500ms\n  retries: 5\n  start_period: 10s", "health.retries", Some("5")),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"x\"]\n  timeout: 10s", "health.timeout", Some(r#""5s""#)),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"x\"]\n  disable: true", "health", None),
            ("image: a\nhealthcheck:\n  test: [\"NONE\"]", "health", None),
        ];
    for (body, key, want) in cases {
        let import = run(&service(body));
        assert_eq!(
            value(&import, "s", key).as_deref(),
            *want,
            "{body}\n---\n{}",
            import.units[0].1
        );
    }
}

/// What cannot be translated is noted under the compose key, with the reason.
#[test]
fn notes() {
    #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("build: ./web", "build", "docker build -t app-s ./web"),
            ("image: a\nbuild:\n  context: ./web\n  dockerfile: Dockerfile.prod\n  target: run", "build", "docker build -t a -f ./web/Dockerfile.prod --target run ./web"),
            ("image: a\ncontainer_name: x", "container_name", "chain names containers itself"),
            ("image: a\nrestart: unless-stopped", "restart", "\"unless-stopped\" is \"always\""),
            ("image: a\nports: [\"8080:80\"]", "ports[0]", "0.0.0.0"),
            ("image: a\nports: [\"8080:80\", \"8443:443\"]", "ports[1]", "a unit has one port"),
            ("image: a\nports: [\"53:53/udp\"]", "ports[0]", "TCP only"),
            ("image: a\nports: [\"80:80\"]", "ports[0]", "chaind's proxy listens on port 80"),
            ("image: nginx:1.25\nports: [\"8080:80\"]", "ports", "chain's proxy can replace it"),
            ("image: a\nports: [\"3000:3000\"]\ndeploy:\n  replicas: 3", "ports[0]", "3000 + i (3000-3002)"),
            ("image: a\nenvironment:\n  UNSET:", "environment.UNSET", "left out, as compose leaves it out"),
            ("image: a\nenvironment:\n  X: ${UNSET}", "environment.X", "variable UNSET is not set"),
            ("image: a\nenvironment:\n  X: ${REQ:?set REQ}", "environment.X", "required (\"set REQ\")"),
            ("image: a\nenvironment:\n  CHAIN_UNIT: x", "environment.CHAIN_UNIT", "chain sets it"),
            ("image: a\nenv_file: missing.env", "env_file", "does not exist"),
            ("image: a\nvolumes: [/anonymous]", "volumes[0]", "anonymous volume"),
            ("image: a\nvolumes: [db:/db]", "volumes[0]", "\"app_db\""),
            ("image: a\nvolumes:\n  - type: tmpfs\n    target: /t", "volumes[0]", "tmpfs mounts have no equivalent"),
            ("image: a\nnetworks:\n  back:\n    aliases: [x]", "networks.back.aliases", "unit name"),
            ("image: a\nnetwork_mode: host", "network_mode", "\"host\""),
            ("image: a\ndeploy:\n  resources:\n    reservations:\n      cpus: '1'", "deploy.resources.reservations.cpus", "reserves nothing but GPUs"),
            ("image: a\ndeploy:\n  resources:\n    reservations:\n      devices:\n        - capabilities: [gpu]\n          device_ids: ['0']", "deploy.resources.reservations.devices[0].device_ids", "not given ones"),
            ("image: a\ndeploy:\n  mode: global", "deploy.mode", "one instance"),
            ("image: a\ndeploy:\n  update_config:\n    parallelism: 2", "deploy.update_config", "[deploy]"),
            ("image: a\nprofiles: [debug]", "profiles", "chain runs every unit"),
            ("image: a\nextends: {service: b}", "extends", "not followed"),
            ("image: a\nsecrets: [s]", "secrets", "no secrets"),
            ("image: a\nconfigs: [c]", "configs", "no configs"),
            ("image: a\nlogging: {driver: json-file}", "logging", "logs"),
            ("image: a\ncap_add: [NET_ADMIN]", "cap_add", "no equivalent"),
            ("image: a\nsomething_new: 1", "something_new", "no equivalent"),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"curl\", \"-f\", \"http://localhost:9/\"]\nports: [\"8080:80\"]", "healthcheck.test", "connects to port 9"),
            ("image: a\nhealthcheck:\n  test: [\"CMD\", \"x\"]\n  timeout: 10s", "healthcheck.timeout", "timeout <= interval"),
            ("image: a\nstop_signal: SIGFOO", "unit key container.stop_signal", "left out: chain rejects it"),
        ];
    for (body, key, contains) in cases {
        let import = run(&service(body));
        assert!(
            has_note(&import, key, contains),
            "{body}\nwant note {key}: {contains}\ngot {:#?}",
            import.notes
        );
    }
}

/// YAML anchors and merge keys, as the seed stack uses them; `x-` keys are not services.
#[test]
fn merge_keys_and_extensions() {
    let import = run(
            "x-env: &env\n  A: \"1\"\n  B: \"2\"\nx-restart: &restart\n  restart: always\n\
             services:\n  s:\n    image: a\n    <<: *restart\n    environment:\n      <<: *env\n      B: \"3\"\n",
        );
    assert_eq!(import.units.len(), 1);
    assert_eq!(
        value(&import, "s", "restart.policy").as_deref(),
        Some(r#""always""#)
    );
    assert_eq!(value(&import, "s", "env.A").as_deref(), Some(r#""1""#));
    assert_eq!(value(&import, "s", "env.B").as_deref(), Some(r#""3""#));
    assert!(import.notes.is_empty(), "{:?}", import.notes);
}

/// depends_on: list and map forms, unknown services and cycles are dropped with a note,
/// and service names are mapped to unit names.
#[test]
fn dependencies_resolve() {
    let import = run(
            "services:\n  web.app:\n    image: a\n    depends_on: [db, cache]\n  db:\n    image: b\n    depends_on:\n      web.app:\n        condition: service_healthy\n      migrate:\n        condition: service_completed_successfully\n  migrate:\n    image: c\n",
        );
    assert_eq!(
        value(&import, "web-app", "depends_on").as_deref(),
        Some(r#"["db"]"#)
    );
    assert_eq!(
        value(&import, "db", "depends_on").as_deref(),
        Some(r#"{ migrate = "completed" }"#)
    );
    assert!(has_note(
        &import,
        "depends_on[1]",
        "\"cache\" is not defined"
    ));
    assert!(has_note(
        &import,
        "depends_on.web.app",
        "closes a dependency cycle"
    ));
    assert!(import
        .notes
        .iter()
        .any(|n| n.source == "web.app" && n.message.contains("\"web-app\"")));
    // `completed` on a unit that always restarts cannot be met.
    let import = run("services:\n  a:\n    image: a\n    depends_on:\n      b: {condition: service_completed_successfully}\n  b:\n    image: b\n    restart: always\n");
    assert_eq!(
        value(&import, "a", "depends_on").as_deref(),
        Some(r#"["b"]"#)
    );
    assert!(has_note(&import, "depends_on.b", "never completes"));
}

/// Host ports of two units that would overlap in chain: the later one is not published.
#[test]
fn overlapping_host_ports() {
    let import = run("services:\n  a:\n    image: a\n    ports: [\"3000:3000\"]\n    deploy: {replicas: 3}\n  b:\n    image: b\n    ports: [\"3001:80\"]\n");
    assert_eq!(value(&import, "a", "port").as_deref(), Some("3000"));
    assert_eq!(value(&import, "b", "port"), None);
    assert_eq!(value(&import, "b", "container.port").as_deref(), Some("80"));
    assert!(import
        .notes
        .iter()
        .any(|n| n.source == "b" && n.message.contains("overlap")));
}

/// A service chain cannot run at all is left out, and the others are still converted.
#[test]
fn unconvertible_services() {
    let import =
        run("services:\n  a:\n    command: x\n  b:\n    image: Bad/Name\n  c:\n    image: c\n");
    let names: Vec<&str> = import.units.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["c"]);
    assert!(has_note(&import, "image", "neither `image` nor `build`"));
    assert!(import
        .notes
        .iter()
        .any(|n| n.source == "b" && n.message.starts_with("not converted")));
}

/// A dependency on a service that chain rejects is left out of the units that depend on it.
#[test]
fn dependency_on_a_dropped_service() {
    let import = run(
        "services:\n  a:\n    image: a\n    depends_on: [b, c]\n  b:\n    image: Bad\n  c:\n    image: c\n",
    );
    assert_eq!(
        value(&import, "a", "depends_on").as_deref(),
        Some(r#"["c"]"#)
    );
    assert!(
        has_note(&import, "unit key depends_on.b", "left out"),
        "{:#?}",
        import.notes
    );
}

/// Files that are not compose files are errors, with a position for YAML errors.
#[test]
fn bad_files() {
    let cx = Context {
        file: Path::new("/srv/app/compose.yaml"),
        out_dir: Path::new("/srv/app/units"),
        env: &|_: &str| None,
        exists: &|_: &Path| false,
    };
    let cases = [
        ("services:\n  a:\n    image: [x\n", "compose.yaml:4:1"),
        ("- a\n- b\n", "a mapping with `services`"),
        ("version: '3'\n", "no `services`"),
        ("services: {}\n", "holds no services"),
    ];
    for (text, want) in cases {
        let e = convert(text, &cx).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}
