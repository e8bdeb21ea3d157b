//! Data-driven unit file tests.
//!
//! - `tests/units/valid/*.toml` must load, one by one and as a set.
//! - `tests/units/invalid/*.toml` must fail with exactly the errors in the sibling `*.expected`
//!   file (the `Display` of every error, one after another).
//! - `tests/units/set/` must load with exactly the set-level errors in `errors.expected`.
//!
//! Run with `UPDATE_EXPECT=1` to rewrite the expected files from the current output, then review
//! the diff.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chain::unit::{
    format_duration, load_dir, load_file, parse, parse_duration, parse_size, resolve, validate_set,
    DependencyCondition, HealthCheck, PortSpec, ResolveCtx, RestartPolicy, UnitError, KEYS,
};

fn update() -> bool {
    std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1")
}

/// `*.toml` files of `dir`, sorted, as paths relative to the package root (cargo runs tests there),
/// so that error messages show short, machine-independent paths.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

fn render(errors: &[UnitError]) -> String {
    let mut out = String::new();
    for e in errors {
        writeln!(out, "{e}").unwrap();
    }
    out
}

/// Compares `actual` with the file at `expected` (or rewrites it under UPDATE_EXPECT=1);
/// returns a description of the mismatch.
fn check_expected(expected: &Path, actual: &str) -> Option<String> {
    if update() {
        std::fs::write(expected, actual).unwrap();
        return None;
    }
    let want = std::fs::read_to_string(expected).unwrap_or_default();
    (want != actual).then(|| {
        format!(
            "{}: output differs (UPDATE_EXPECT=1 rewrites it)\n--- expected\n{want}--- actual\n{actual}",
            expected.display()
        )
    })
}

fn ctx() -> ResolveCtx {
    ResolveCtx {
        profile: None,
        cpus: 4,
        ..Default::default()
    }
}

/// Every realistic unit in tests/units/valid loads on its own and the directory loads as a set.
#[test]
fn valid_units_load() {
    let files = toml_files("tests/units/valid");
    assert!(files.len() >= 5);
    for path in &files {
        if let Err(errors) = load_file(path, &ctx()) {
            panic!("{} should load:\n{}", path.display(), render(&errors));
        }
    }
    let report = load_dir(Path::new("tests/units/valid"), &ctx());
    let all: Vec<String> = report.errors.values().map(|e| render(e)).collect();
    assert!(report.errors.is_empty(), "{}", all.join(""));
    assert_eq!(report.units.len(), files.len());
}

/// Spot checks of resolved values: defaults, normalisation, env merge, profiles and paths.
#[test]
fn valid_units_resolve_as_documented() {
    let staging = ResolveCtx {
        profile: Some("staging".into()),
        cpus: 3,
        ..Default::default()
    };
    let web = load_file(Path::new("tests/units/valid/web.toml"), &staging).unwrap();
    let spec = &web.spec;
    assert_eq!(spec.instances, 3);
    assert_eq!(
        spec.port,
        PortSpec::Range {
            start: 8100,
            end: 8199
        }
    );
    assert_eq!(spec.profile.as_deref(), Some("staging"));
    assert_eq!(spec.env["NODE_ENV"], "staging");
    assert_eq!(spec.env["DEBUG"], "true");
    assert_eq!(spec.env["WORKERS"], "4");
    assert_eq!(spec.env["SESSION_SECRET"], "dev secret");
    assert_eq!(spec.env["GREETING"], "hello, world");
    assert_eq!(spec.process.max_memory, Some(512 << 20));
    assert_eq!(spec.depends_on[0].unit, "db");
    assert_eq!(spec.depends_on[0].condition, DependencyCondition::Healthy);
    assert_eq!(spec.depends_on[1].condition, DependencyCondition::Completed);
    let health = spec.health.as_ref().unwrap();
    assert_eq!(
        health.check,
        HealthCheck::Http {
            path: "/health".into()
        }
    );
    assert_eq!(health.start_interval, Duration::from_millis(250));
    assert_eq!(web.revision, spec.revision());
    assert!(spec.process.cwd.is_absolute());
    assert!(spec.process.cwd.ends_with("tests/units/valid"));

    let db = load_file(Path::new("tests/units/valid/db.toml"), &ctx())
        .unwrap()
        .spec;
    assert_eq!(db.process.stop_signal, "SIGINT");
    assert_eq!(db.port, PortSpec::Fixed { base: 5432 });
    assert_eq!(db.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(db.restart.delay, Duration::from_millis(100));

    let worker = load_file(Path::new("tests/units/valid/worker.toml"), &ctx())
        .unwrap()
        .spec;
    assert_eq!(worker.port, PortSpec::None);
    assert_eq!(
        worker.health.unwrap().check,
        HealthCheck::Exec {
            command: vec!["sh".into(), "-c".into(), "test -f /tmp/worker.alive".into()]
        }
    );

    let migrate = load_file(Path::new("tests/units/valid/migrate.toml"), &ctx())
        .unwrap()
        .spec;
    assert_eq!(migrate.restart.policy, RestartPolicy::Never);

    let dev = load_file(Path::new("tests/units/valid/dev.toml"), &ctx())
        .unwrap()
        .spec;
    let watch = dev.watch.unwrap();
    assert!(watch.paths[0].is_absolute() && watch.paths[0].ends_with("valid/src"));
    assert_eq!(watch.debounce, Duration::from_millis(300));
    assert_eq!(format_duration(watch.debounce), "300ms");
}

/// Every invalid unit fails with exactly the errors recorded in its `.expected` file.
#[test]
fn invalid_units_report_expected_errors() {
    let files = toml_files("tests/units/invalid");
    assert!(files.len() >= 15);
    let mut failures = Vec::new();
    for path in &files {
        let actual = match load_file(path, &ctx()) {
            Ok(_) => {
                failures.push(format!("{}: loaded, but should fail", path.display()));
                continue;
            }
            Err(errors) => render(&errors),
        };
        if let Some(f) = check_expected(&path.with_extension("expected"), &actual) {
            failures.push(f);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A directory with set-level problems: every unit with a problem is reported and not loaded;
/// the others load; hidden files, backups and non-TOML files are ignored.
#[test]
fn set_errors() {
    let report = load_dir(Path::new("tests/units/set"), &ctx());
    let mut actual = String::new();
    for (name, errors) in &report.errors {
        writeln!(actual, "# {name}").unwrap();
        actual.push_str(&render(errors));
    }
    let loaded: Vec<&str> = report.units.keys().map(String::as_str).collect();
    writeln!(actual, "# loaded: {}", loaded.join(", ")).unwrap();
    if let Some(f) = check_expected(Path::new("tests/units/set/errors.expected"), &actual) {
        panic!("{f}");
    }
}

/// A missing directory is one error under the key "", not a panic.
#[test]
fn missing_directory() {
    let report = load_dir(Path::new("tests/units/does-not-exist"), &ctx());
    assert!(report.units.is_empty());
    assert_eq!(
        render(&report.errors[""]),
        "tests/units/does-not-exist: cannot read unit directory: not found\n"
    );
}

/// A file that is not UTF-8 is reported at the first bad byte.
#[test]
fn not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bin.toml");
    std::fs::write(&path, b"[process]\ncommand = \"a\xffb\"\n").unwrap();
    let errors = load_file(&path, &ctx()).unwrap_err();
    assert_eq!((errors[0].line, errors[0].column), (2, 13));
    assert_eq!(errors[0].message, "the file is not valid UTF-8");
}

/// Every key of the file format is documented in docs/units.md (as `key` in backticks).
#[test]
fn docs_cover_every_key() {
    let doc = std::fs::read_to_string("docs/units.md").expect("docs/units.md exists");
    let missing: Vec<&&str> = KEYS
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/units.md: {missing:?}"
    );
}

/// The example units shipped in units/ (if any) load as a set without errors.
#[test]
fn example_units_validate() {
    if !Path::new("units").is_dir() {
        return;
    }
    let report = load_dir(Path::new("units"), &ctx());
    let all: Vec<String> = report.errors.values().map(|e| render(e)).collect();
    assert!(report.errors.is_empty(), "{}", all.join(""));
}

/// A small deterministic PRNG (xorshift64*), so that a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Runs the whole pure pipeline on `text` and checks that every error has a sane position.
fn exercise(text: &str) {
    let path = Path::new("fuzz/unit.toml");
    match parse(path, text) {
        Ok(file) => {
            let env: BTreeMap<PathBuf, Option<String>> = file
                .process
                .env_files
                .iter()
                .map(|f| (f.path.clone(), Some("A=1\nB=\"x\n".to_string())))
                .collect();
            if let Ok(spec) = resolve(&file, &ctx(), &env) {
                let _ = spec.revision();
            }
            let names = [file.name.clone()].into();
            let _ = validate_set(std::slice::from_ref(&file), &names);
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            let lines = text.split('\n').count() as u32;
            for e in &errors {
                assert!(
                    e.line >= 1 && e.line <= lines && e.column >= 1,
                    "{e} in {text:?}"
                );
                let _ = e.to_string();
            }
        }
    }
}

/// No input makes the parser panic: truncations and random edits of every fixture.
#[test]
fn garbled_files_never_panic() {
    const TOKENS: &[&str] = &[
        "[",
        "]",
        "{",
        "}",
        "=",
        "\"",
        "'",
        "\n",
        ",",
        ".",
        "#",
        "\\",
        "[[",
        "]]",
        "\"\"\"",
        "'''",
        "0x",
        "1e9",
        "é",
        "\0",
        " ",
        "true",
        "-",
        "99999999999999999999999",
        "\"max\"",
        "\"5s\"",
        "[health]",
        "[watch]",
        "type = \"exec\"",
        "port = \"none\"",
        "\r\n",
        "\u{feff}",
        "inf",
        "1979-05-27T07:32:00Z",
    ];
    let mut sources: Vec<String> = Vec::new();
    for dir in [
        "tests/units/valid",
        "tests/units/invalid",
        "tests/units/set",
    ] {
        for path in toml_files(dir) {
            sources.push(std::fs::read_to_string(path).unwrap_or_default());
        }
    }
    // Every truncation of a few files.
    for text in sources.iter().take(6) {
        let mut i = 0;
        while i <= text.len() {
            exercise(&text[..floor_char(text, i)]);
            i += 7;
        }
    }
    let seed = 0x5eed_u64;
    let mut rng = Rng(seed);
    for round in 0..3000 {
        let mut text = sources[rng.below(sources.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let at = floor_char(&text, rng.below(text.len() + 1));
            match rng.below(4) {
                0 => {
                    let end = floor_char(&text, at + rng.below(12));
                    text.replace_range(at..end.max(at), "");
                }
                1 => text.insert_str(at, TOKENS[rng.below(TOKENS.len())]),
                2 => {
                    let lines: Vec<&str> = text.lines().collect();
                    let mut lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                    if !lines.is_empty() {
                        let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                        lines.swap(a, b);
                        let dup = lines[a].clone();
                        lines.insert(b, dup);
                    }
                    text = lines.join("\n");
                }
                _ => {
                    let end = floor_char(&text, at + 1 + rng.below(3));
                    let token = TOKENS[rng.below(TOKENS.len())];
                    if end > at {
                        text.replace_range(at..end, token);
                    }
                }
            }
        }
        let result = std::panic::catch_unwind(|| exercise(&text));
        assert!(
            result.is_ok(),
            "seed {seed:#x}, round {round}: panicked on {text:?}"
        );
    }
}

/// Durations and sizes never panic on random strings, and valid ones round-trip.
#[test]
fn quantities_never_panic() {
    let mut rng = Rng(0xd00d);
    let alphabet: Vec<char> = "0123456789.smhdnuKMGTBbi -+é".chars().collect();
    for _ in 0..20_000 {
        let len = rng.below(10);
        let s: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        if let Ok(d) = parse_duration(&s) {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{s}");
        }
        let _ = parse_size(&s);
    }
}
