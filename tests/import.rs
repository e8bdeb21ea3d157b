//! `chainctl import`: the real binary converts the seed compose stacks and the seed PM2
//! ecosystem file into unit files that chain loads, refuses to overwrite without --force,
//! reports YAML errors with line and column, and needs node only for `.js` files.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chain::unit::{load_dir, parse, ResolveCtx};
use support::CHAINCTL;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(rel)
}

/// chainctl with a clean environment: only PATH (and HOME) from the test's, so that variables
/// of the machine running the tests cannot change what compose interpolation finds.
fn chainctl(args: &[&str], path: Option<&Path>) -> Output {
    let mut cmd = Command::new(CHAINCTL);
    cmd.env_clear();
    match path {
        Some(p) => cmd.env("PATH", p),
        None => cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default()),
    };
    if let Some(home) = std::env::var_os("HOME") {
        cmd.env("HOME", home);
    }
    cmd.args(args).output().expect("run chainctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every file in `dir` parses on its own, and the directory loads as a set without errors.
fn assert_loads(dir: &Path, want: &[&str]) -> chain::unit::LoadReport {
    for name in want {
        let path = dir.join(format!("{name}.toml"));
        let body =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(e) = parse(&path, &body) {
            panic!("{} does not parse: {e:?}\n{body}", path.display());
        }
    }
    let ctx = ResolveCtx {
        cpus: 4,
        ..ResolveCtx::default()
    };
    let report = load_dir(dir, &ctx);
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    let mut names: Vec<&str> = report.units.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = want.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);
    report
}

fn toml_at(dir: &Path, unit: &str) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(dir.join(format!("{unit}.toml"))).unwrap()).unwrap()
}

/// The production stack of seed 001 (builds, postgres, redis, ollama on a GPU, nginx in front)
/// converts; the units load as a set; the notes name what was not translated.
#[test]
fn compose_production_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("units");
    let file = fixture("promptcard/docker-compose.yml");
    let o = chainctl(
        &[
            "import",
            "compose",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{}", text(&o.stderr));
    let units = [
        "nginx",
        "frontend",
        "backend",
        "postgres",
        "postgres-replica",
        "redis-master",
        "ollama",
    ];
    for u in units {
        assert!(
            stdout.contains(&format!(
                "wrote {}",
                out.join(format!("{u}.toml")).display()
            )),
            "{stdout}"
        );
    }
    let report = assert_loads(&out, &units);

    let backend = &report.units["backend"].spec;
    assert_eq!(backend.instances, 5);
    let frontend = toml_at(&out, "frontend");
    assert_eq!(
        frontend["container"]["image"].as_str(),
        Some("promptcard-frontend")
    );
    assert_eq!(frontend["container"]["memory"].as_str(), Some("512MiB"));
    assert_eq!(frontend["health"]["path"].as_str(), Some("/api/health"));
    let ollama = toml_at(&out, "ollama");
    assert_eq!(ollama["container"]["gpus"].as_integer(), Some(1));
    assert_eq!(ollama["container"]["port"].as_integer(), Some(11434));
    let postgres = toml_at(&out, "postgres");
    // From the .env beside the compose file.
    assert_eq!(
        postgres["env"]["POSTGRES_USER"].as_str(),
        Some("promptcard")
    );
    let nginx = toml_at(&out, "nginx");
    assert_eq!(nginx["port"].as_integer(), Some(80));
    assert_eq!(nginx["depends_on"]["backend"].as_str(), Some("healthy"));

    for note in [
        "note: frontend: build: chain runs images and does not build them",
        "docker build -t promptcard-backend --target runner ./backend",
        "note: backend: environment.JWT_SECRET: variable JWT_SECRET is not set",
        "note: nginx: container_name:",
        "note: nginx: restart: \"unless-stopped\" is \"always\"",
        "note: nginx: ports[1]: \"443:443\" is not published",
        "note: frontend: deploy.resources.reservations.memory:",
        "note: backend: depends_on.redis: service \"redis\" is not defined in the file (did you mean \"redis-master\"?)",
    ] {
        assert!(stdout.contains(note), "missing {note:?} in:\n{stdout}");
    }
}

/// The development stack of seed 000 (builds with source mounts, anonymous volumes) converts,
/// and bind mounts still point at the directories beside the compose file.
#[test]
fn compose_development_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("units");
    let file = fixture("promptdesigner/docker-compose.yml");
    let o = chainctl(
        &[
            "import",
            "compose",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let report = assert_loads(
        &out,
        &["web", "api", "websocket", "ai-worker", "mongodb", "redis"],
    );
    let api = toml_at(&out, "api");
    let volume = api["container"]["volumes"][0].as_str().unwrap();
    let source = volume.split(':').next().unwrap();
    let expected = fixture("promptdesigner/backend");
    let resolved = normalize(&out.join(source));
    assert_eq!(resolved, normalize(&expected), "{volume}");
    assert_eq!(report.units["web"].spec.depends_on.len(), 1);
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("note: web: volumes[1]: anonymous volume at /app/node_modules"),
        "{stdout}"
    );
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Whether node runs here; without it the .js test is skipped, except in CI where it fails.
fn have_node() -> bool {
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "node is needed for the .js ecosystem test in CI (.ci/run installs nodejs)"
        );
        eprintln!("skipping: node is not on PATH");
    }
    ok
}

/// The seed ecosystem.config.js (evaluated with node) and its JSON copy give the same unit,
/// and it loads.
#[test]
fn pm2_ecosystem_js_and_json() {
    if !have_node() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut bodies = Vec::new();
    for file in ["ecosystem.config.js", "ecosystem.json"] {
        let out = tmp.path().join(file.replace('.', "-"));
        let path = fixture(&format!("lightbrush/{file}"));
        let o = chainctl(
            &[
                "import",
                "pm2",
                path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            None,
        );
        let stdout = text(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{stdout}\n{}", text(&o.stderr));
        assert!(
            stdout.contains("note: lightbrush-website: exec_mode:"),
            "{stdout}"
        );
        assert!(
            stdout.contains("note: lightbrush-website: env_staging.PORT:"),
            "{stdout}"
        );
        let report = assert_loads(&out, &["lightbrush-website"]);
        let spec = &report.units["lightbrush-website"].spec;
        assert_eq!(spec.process.command, "node");
        let body = std::fs::read_to_string(out.join("lightbrush-website.toml")).unwrap();
        // The first line names the source file; the rest must be the same.
        bodies.push(body.lines().skip(1).collect::<Vec<_>>().join("\n"));
    }
    assert_eq!(bodies[0], bodies[1]);
    assert!(bodies[0].contains("port = 8175"), "{}", bodies[0]);
    assert!(bodies[0].contains("[profile.staging.env]"), "{}", bodies[0]);
}

/// Without node on PATH, a .js ecosystem file is a clear error that says what to do.
#[test]
fn pm2_js_without_node() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_path = tmp.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let out = tmp.path().join("units");
    let path = fixture("lightbrush/ecosystem.config.js");
    let o = chainctl(
        &[
            "import",
            "pm2",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        Some(&empty_path),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("node is not on PATH")
            && err.contains("install Node.js")
            && err.contains("JSON"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Existing unit files are not overwritten without --force (and nothing is written then);
/// with --force they are replaced.
#[test]
fn overwrite_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("units");
    let file = fixture("lightbrush/ecosystem.json");
    let args = [
        "import",
        "pm2",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    assert_eq!(chainctl(&args, None).status.code(), Some(0));
    let unit = out.join("lightbrush-website.toml");
    std::fs::write(&unit, "# mine\n").unwrap();

    let o = chainctl(&args, None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("refusing to overwrite"),
        "{}",
        text(&o.stderr)
    );
    assert!(text(&o.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), "# mine\n");

    let mut forced = args.to_vec();
    forced.push("--force");
    let o = chainctl(&forced, None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(std::fs::read_to_string(&unit)
        .unwrap()
        .contains("[process]"));
}

/// A YAML syntax error names the file, line and column, and nothing is written.
#[test]
fn yaml_error_has_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("compose.yml");
    std::fs::write(
        &file,
        "services:\n  web:\n    image: nginx\n   ports: [\"80:80\"]\n",
    )
    .unwrap();
    let out = tmp.path().join("units");
    let o = chainctl(
        &[
            "import",
            "compose",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains(&format!("{}:4:4:", file.display())), "{err}");
    assert!(!out.exists());
}

/// --json prints the written files, the unit names and the notes as one object; a file with
/// nothing to convert exits non-zero and writes nothing.
#[test]
fn json_output_and_nothing_converted() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("compose.yml");
    std::fs::write(
        &file,
        "services:\n  web:\n    image: nginx\n    container_name: w\n  broken:\n    command: x\n",
    )
    .unwrap();
    let out = tmp.path().join("units");
    let o = chainctl(
        &[
            "--json",
            "import",
            "compose",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["units"], serde_json::json!(["web"]));
    assert_eq!(
        v["written"],
        serde_json::json!([out.join("web.toml").display().to_string()])
    );
    let notes = v["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n["source"] == "web" && n["key"] == "container_name"),
        "{v}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n["source"] == "broken" && n["key"] == "image"),
        "{v}"
    );

    std::fs::write(&file, "services:\n  broken:\n    command: x\n").unwrap();
    let out = tmp.path().join("none");
    let o = chainctl(
        &[
            "import",
            "compose",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stdout).contains("note: broken: image:"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).contains("nothing in"),
        "{}",
        text(&o.stderr)
    );
    assert!(!out.exists());
}
