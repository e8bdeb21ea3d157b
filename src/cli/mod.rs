//! chainctl: the command line over [`crate::api::client`]. It uses only the client and the wire
//! types. Every command takes `--json` (machine output: the API's JSON, NDJSON for streams);
//! human output is aligned tables. Exit code 0 on success, 1 on failure, 2 on usage errors
//! (clap), 3 when no daemon answers.

mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::api::client::{Client, Error};
use crate::api::wire::*;
use table::Table;

#[derive(Parser, Debug)]
#[command(
    name = "chainctl",
    version,
    about = "Drive chaind over its Unix socket"
)]
pub struct Args {
    /// Socket of the daemon. Default: $CHAIN_SOCKET, else the default root's chaind.sock.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output (JSON; NDJSON for streams).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Re-read the units directory now and apply it.
    Apply {
        /// Switch the active env profile ("" clears it).
        #[arg(long)]
        profile: Option<String>,
    },
    /// List instances: unit, instance, state, pid, port, uptime, restarts, cpu, memory.
    Ls,
    /// A unit's spec summary, instances, last 20 events and last error.
    Status { unit: String },
    /// Start a stopped unit (also restarts failed instances).
    Start {
        /// Unit name (the unit file's name without .toml).
        unit: String,
        /// Return at once instead of waiting until every instance is ready.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop every instance of a unit (stays stopped until `start`).
    Stop {
        /// Unit name (the unit file's name without .toml).
        unit: String,
        /// Return at once instead of waiting until the action completes.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop and start every instance at once.
    Restart {
        /// Unit name (the unit file's name without .toml).
        unit: String,
        /// Return at once instead of waiting until the action completes.
        #[arg(long)]
        no_wait: bool,
    },
    /// Replace instances one at a time, each next one only after the new one is ready.
    Reload {
        /// Unit name (the unit file's name without .toml).
        unit: String,
        /// Return at once instead of waiting until the action completes.
        #[arg(long)]
        no_wait: bool,
    },
    /// Deploy the unit file now (a new deployment even when nothing changed), with the unit's
    /// strategy; progress is streamed with --wait.
    Deploy {
        /// Unit name (the unit file's name without .toml).
        unit: String,
        /// Override a unit key, e.g. --set env.VERSION=v2 --set instances=4 (kept until unset).
        #[arg(long, value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Drop an override.
        #[arg(long, value_name = "KEY")]
        unset: Vec<String>,
        /// Drop every override.
        #[arg(long)]
        reset: bool,
        /// This deploy only: rolling or blue-green.
        #[arg(long, value_parser = ["rolling", "blue-green"])]
        strategy: Option<String>,
        /// Wait until the deploy ends (the new set healthy and the old one drained), showing its
        /// steps (started, ready, switched, drained, stopped) as they happen, or as NDJSON events
        /// with --json; exit non-zero when it fails.
        #[arg(long)]
        wait: bool,
    },
    /// Go back: undo the deploy in progress, or deploy the previous revision (instant while a
    /// blue-green deploy keeps the previous set).
    Rollback {
        /// Unit name (the unit file's name without .toml).
        unit: String,
        /// The revision to go to (a prefix is enough; see `chainctl history`).
        #[arg(long, value_name = "REV")]
        to: Option<String>,
        /// Return at once instead of waiting until the rollback completes.
        #[arg(long)]
        no_wait: bool,
    },
    /// A unit's deploys: revisions, time, caller, strategy, outcome, duration.
    History {
        /// Unit name (the unit file's name without .toml).
        unit: String,
        /// Deploys to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// What the next deploy of a unit changes: the unit file (with overrides) against what runs.
    Diff {
        /// Unit name (the unit file's name without .toml).
        unit: String,
    },
    /// Show a unit's logs.
    Logs {
        /// Unit name (the unit file's name without .toml).
        unit: String,
        /// Keep streaming new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines of history.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Show daemon events.
    Events {
        /// Keep streaming new events.
        #[arg(short, long)]
        follow: bool,
        /// Events of history.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Only this unit's events.
        #[arg(long)]
        unit: Option<String>,
    },
    /// Print a unit's resolved spec as JSON.
    Inspect { unit: String },
    /// Versions of chainctl and chaind, and where the daemon keeps things and listens.
    Version,
    /// The proxy's routes, the ready instances behind each, their passive health (down after
    /// max_fails failures) and their in-flight requests.
    Routes,
    /// Remove containers with chain's labels that no unit instance owns (left behind by a
    /// removed root or a failed removal).
    Gc {
        /// List what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove containers of other chaind roots on this engine (kept by default).
        #[arg(long)]
        all: bool,
    },
    /// Convert a docker compose file (one container unit per service) or a PM2 ecosystem file
    /// (one process unit per app) into unit files, and list what could not be translated.
    /// Needs no daemon; exits non-zero when no unit could be converted.
    Import {
        /// What FILE is.
        #[arg(value_enum)]
        format: ImportFormat,
        /// The file: docker-compose.yml (with `${VAR}` from the environment and the .env beside
        /// it), or ecosystem.config.js (evaluated with node), .json or .yml.
        file: PathBuf,
        /// Directory the unit files are written to (created when missing).
        #[arg(long, value_name = "DIR", default_value = "units")]
        out: PathBuf,
        /// Replace existing unit files; without it nothing is written when one exists.
        #[arg(long)]
        force: bool,
    },
}

/// The input formats of `chainctl import`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    /// A docker compose file.
    Compose,
    /// A PM2 ecosystem file.
    Pm2,
}

/// Runs the command; returns the process exit code.
pub async fn run(args: Args) -> i32 {
    if let Cmd::Import {
        format,
        file,
        out,
        force,
    } = &args.cmd
    {
        return import(*format, file, out, *force, args.json);
    }
    let client = Client::new(crate::paths::socket(args.socket.clone()));
    match dispatch(&client, &args).await {
        Ok(code) => code,
        Err(e) => {
            if args.json {
                let err = match &e {
                    Error::Api(api) => api.clone(),
                    other => ApiError {
                        code: ErrorCode::Internal,
                        message: other.to_string(),
                    },
                };
                println!(
                    "{}",
                    serde_json::to_string(&ErrorBody { error: err }).unwrap_or_default()
                );
            } else {
                eprintln!("chainctl: {e}");
            }
            match e {
                Error::Connect { .. } => 3,
                _ => 1,
            }
        }
    }
}

async fn dispatch(c: &Client, args: &Args) -> Result<i32, Error> {
    let json = args.json;
    match &args.cmd {
        Cmd::Apply { profile } => {
            let req = ApplyRequest {
                profile: profile.clone(),
            };
            let r: ApplyResult = c.post("/v1/apply", Some(&req)).await?;
            if json {
                print_json(&r);
            } else {
                print_apply(&r);
            }
            Ok(if r.invalid.is_empty() { 0 } else { 1 })
        }
        Cmd::Ls => {
            let rows: Vec<InstanceInfo> = c.get("/v1/instances").await?;
            if json {
                print_json(&rows);
            } else {
                print_instances(&rows, true);
            }
            Ok(0)
        }
        Cmd::Status { unit } => {
            let s: UnitStatus = c.get(&format!("/v1/units/{}", enc(unit))).await?;
            if json {
                print_json(&s);
            } else {
                print_status(&s);
            }
            Ok(
                if s.summary.errors.is_empty() && s.summary.state != "invalid" {
                    0
                } else {
                    1
                },
            )
        }
        Cmd::Start { unit, no_wait } => action(c, unit, UnitAction::Start, !no_wait, json).await,
        Cmd::Stop { unit, no_wait } => action(c, unit, UnitAction::Stop, !no_wait, json).await,
        Cmd::Restart { unit, no_wait } => {
            action(c, unit, UnitAction::Restart, !no_wait, json).await
        }
        Cmd::Reload { unit, no_wait } => action(c, unit, UnitAction::Reload, !no_wait, json).await,
        Cmd::Deploy {
            unit,
            set,
            unset,
            reset,
            strategy,
            wait,
        } => {
            let body = DeployRequest {
                set: set.clone(),
                unset: unset.clone(),
                reset: *reset,
                strategy: strategy.clone(),
            };
            let path = format!("/v1/units/{}/deploy?wait={wait}", enc(unit));
            progress(
                c,
                unit,
                UnitAction::Deploy,
                &path,
                serde_json::to_value(&body).unwrap_or_default(),
                *wait,
                json,
            )
            .await
        }
        Cmd::Rollback { unit, to, no_wait } => {
            let body = RollbackRequest { to: to.clone() };
            let path = format!("/v1/units/{}/rollback?wait={}", enc(unit), !no_wait);
            progress(
                c,
                unit,
                UnitAction::Rollback,
                &path,
                serde_json::to_value(&body).unwrap_or_default(),
                !no_wait,
                json,
            )
            .await
        }
        Cmd::History { unit, lines } => {
            let rows: Vec<DeployInfo> = c
                .get(&format!("/v1/units/{}/history?lines={lines}", enc(unit)))
                .await?;
            if json {
                print_json(&rows);
            } else {
                let mut t = Table::new(&[
                    "DEPLOY", "STARTED", "REVISION", "STRATEGY", "TRIGGER", "BY", "OUTCOME",
                    "TOOK", "REASON",
                ]);
                for r in &rows {
                    let from = short(&r.from_revision);
                    let rev = if from.is_empty() {
                        short(&r.to_revision).to_string()
                    } else {
                        format!("{from} → {}", short(&r.to_revision))
                    };
                    t.row(vec![
                        r.deployment.to_string(),
                        r.started.get(..19).unwrap_or(&r.started).replace('T', " "),
                        rev,
                        r.strategy.clone(),
                        r.trigger.clone(),
                        r.caller
                            .map(|u| format!("uid {u}"))
                            .unwrap_or_else(|| "-".into()),
                        r.outcome.clone(),
                        r.duration_ms
                            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                            .unwrap_or_else(|| "-".into()),
                        r.reason.clone().unwrap_or_default(),
                    ]);
                }
                print!("{}", t.render());
            }
            Ok(0)
        }
        Cmd::Diff { unit } => {
            let d: DiffInfo = c.get(&format!("/v1/units/{}/diff", enc(unit))).await?;
            if json {
                print_json(&d);
            } else {
                let (from, to) = (
                    d.running.as_deref().map(short).unwrap_or("-"),
                    d.file.as_deref().map(short).unwrap_or("-"),
                );
                if !d.errors.is_empty() {
                    println!("{unit}: the unit file does not deploy:");
                    for e in &d.errors {
                        println!("  {e}");
                    }
                } else if d.changes.is_empty() {
                    println!("{unit}: no changes (revision {from})");
                } else {
                    println!("{unit}: revision {from} → {to}");
                    for ch in &d.changes {
                        println!("  {}: {} → {}", ch.path, ch.old, ch.new);
                    }
                }
            }
            Ok(if d.errors.is_empty() { 0 } else { 1 })
        }
        Cmd::Logs {
            unit,
            follow,
            lines,
            instance,
        } => {
            let mut path = format!("/v1/units/{}/logs?lines={lines}&follow={follow}", enc(unit));
            if let Some(i) = instance {
                path.push_str(&format!("&instance={}", enc(i)));
            }
            let mut out = std::io::stdout().lock();
            c.stream::<LogLine>(&path, |l| {
                let r = if json {
                    writeln!(out, "{}", serde_json::to_string(&l).unwrap_or_default())
                } else {
                    writeln!(
                        out,
                        "{} {}.{} {} {}",
                        l.time, l.unit, l.instance, l.stream, l.text
                    )
                };
                r.and_then(|_| out.flush()).is_ok()
            })
            .await?;
            Ok(0)
        }
        Cmd::Events {
            follow,
            lines,
            unit,
        } => {
            let mut path = format!("/v1/events?lines={lines}&follow={follow}");
            if let Some(u) = unit {
                path.push_str(&format!("&unit={}", enc(u)));
            }
            let mut out = std::io::stdout().lock();
            c.stream::<EventInfo>(&path, |e| {
                let r = if json {
                    writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default())
                } else {
                    writeln!(out, "{}", event_line(&e))
                };
                r.and_then(|_| out.flush()).is_ok()
            })
            .await?;
            Ok(0)
        }
        Cmd::Routes => {
            let rows: Vec<RouteInfo> = c.get("/v1/routes").await?;
            if json {
                print_json(&rows);
            } else {
                let mut t = Table::new(&[
                    "ROUTE", "UNIT", "POLICY", "INST", "ADDRESS", "INFLIGHT", "HEALTH",
                ]);
                for r in &rows {
                    let route = format!("{}{}", r.host.as_deref().unwrap_or("*"), r.path);
                    if r.instances.is_empty() {
                        t.row(vec![
                            route.clone(),
                            r.unit.clone(),
                            r.policy.clone(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "no ready instance".into(),
                        ]);
                    }
                    for i in &r.instances {
                        t.row(vec![
                            route.clone(),
                            r.unit.clone(),
                            r.policy.clone(),
                            opt(i.instance),
                            i.addr.clone(),
                            i.inflight.to_string(),
                            if i.down {
                                "down (passive)".into()
                            } else {
                                "ok".into()
                            },
                        ]);
                    }
                }
                print!("{}", t.render());
            }
            Ok(0)
        }
        Cmd::Gc { dry_run, all } => {
            let body = GcRequest {
                dry_run: *dry_run,
                all: *all,
            };
            let r: GcResult = c.post("/v1/gc", Some(&body)).await?;
            if json {
                print_json(&r);
            } else if r.containers.is_empty() {
                println!("no container to collect");
            } else {
                let mut t = Table::new(&["CONTAINER", "NAME", "UNIT", "STATE", "ACTION"]);
                for x in &r.containers {
                    t.row(vec![
                        x.id.clone(),
                        x.name.clone(),
                        x.unit.clone().unwrap_or_else(|| "-".into()),
                        x.state.clone(),
                        x.action.clone(),
                    ]);
                }
                print!("{}", t.render());
            }
            let failed = r.containers.iter().any(|x| x.action.starts_with("failed"));
            Ok(i32::from(failed))
        }
        Cmd::Import {
            format,
            file,
            out,
            force,
        } => Ok(import(*format, file, out, *force, json)),
        Cmd::Version => {
            let v: VersionInfo = c.get("/v1/version").await?;
            if json {
                print_json(&v);
            } else {
                println!("chainctl {}", env!("CARGO_PKG_VERSION"));
                println!("chaind   {} (pid {})", v.version, v.pid);
                println!("root     {}", v.root);
                println!("units    {}", v.units_dir);
                if let Some(p) = &v.profile {
                    println!("profile  {p}");
                }
                if let Some(h) = &v.http {
                    println!("http     {h}");
                }
            }
            Ok(0)
        }
        Cmd::Inspect { unit } => {
            let v: serde_json::Value = c.get(&format!("/v1/units/{}/spec", enc(unit))).await?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(0)
        }
    }
}

/// `chainctl import`: convert, write, print what was written and every note.
fn import(format: ImportFormat, file: &Path, out: &Path, force: bool, json: bool) -> i32 {
    let fail = |message: String| {
        if json {
            let body = ErrorBody {
                error: ApiError {
                    code: ErrorCode::Internal,
                    message,
                },
            };
            println!("{}", serde_json::to_string(&body).unwrap_or_default());
        } else {
            eprintln!("chainctl: {message}");
        }
        1
    };
    let converted = match format {
        ImportFormat::Compose => crate::import::compose_file(file, out),
        ImportFormat::Pm2 => crate::import::pm2_file(file, out),
    };
    let import = match converted {
        Ok(import) => import,
        Err(e) => return fail(e.to_string()),
    };
    let written = if import.units.is_empty() {
        Vec::new()
    } else {
        match crate::import::write(&import, out, force) {
            Ok(paths) => paths,
            Err(e) => return fail(e.to_string()),
        }
    };
    if json {
        let notes: Vec<serde_json::Value> = import
            .notes
            .iter()
            .map(|n| serde_json::json!({ "source": n.source, "key": n.key, "message": n.message }))
            .collect();
        print_json(&serde_json::json!({
            "written": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "units": import.units.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            "notes": notes,
        }));
    } else {
        // Write errors (a closed pipe) are ignored: the files are written either way.
        let mut out = std::io::stdout().lock();
        for p in &written {
            let _ = writeln!(out, "wrote {}", p.display());
        }
        for n in &import.notes {
            let _ = writeln!(out, "note: {n}");
        }
    }
    if import.units.is_empty() {
        if !json {
            eprintln!("chainctl: nothing in {} could be converted", file.display());
        }
        return 1;
    }
    0
}

async fn action(
    c: &Client,
    unit: &str,
    action: UnitAction,
    wait: bool,
    json: bool,
) -> Result<i32, Error> {
    let path = format!("/v1/units/{}/{}?wait={wait}", enc(unit), action.as_str());
    if wait && matches!(action, UnitAction::Reload | UnitAction::Restart) {
        return progress(c, unit, action, &path, serde_json::Value::Null, true, json).await;
    }
    let r: ActionResult = c.post::<(), _>(&path, None).await?;
    if json {
        print_json(&r);
    } else {
        let verb = match (action, r.completed) {
            (UnitAction::Start, true) => "started",
            (UnitAction::Stop, true) => "stopped",
            (UnitAction::Restart, true) => "restarted",
            (UnitAction::Reload, true) => "reloaded",
            (UnitAction::Deploy, true) => "deployed",
            (UnitAction::Rollback, true) => "rolled back",
            (_, false) => "requested",
        };
        println!("{unit}: {} {verb}", action.as_str());
        if !r.instances.is_empty() {
            print_instances(&r.instances, false);
        }
    }
    Ok(0)
}

/// Posts a deployment-making call; while it runs (when waiting), streams the unit's events as
/// its steps: `+1.2s web.0 started pid 4711 on port 20017`. With --json the events are NDJSON
/// and the last line is the result (or the error).
async fn progress(
    c: &Client,
    unit: &str,
    action: UnitAction,
    path: &str,
    body: serde_json::Value,
    wait: bool,
    json: bool,
) -> Result<i32, Error> {
    let started = std::time::Instant::now();
    let (connected_tx, connected) = tokio::sync::oneshot::channel::<()>();
    let (ended_tx, mut ended) = tokio::sync::watch::channel(false);
    let follower = wait.then(|| {
        let c = c.clone();
        // One line of history: its arrival says the stream is connected (it is not printed).
        let events = format!("/v1/events?follow=true&lines=1&unit={}", enc(unit));
        tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            let _ = c
                .stream::<EventInfo>(&events, |e| {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                        return true;
                    }
                    if json {
                        println!("{}", serde_json::to_string(&e).unwrap_or_default());
                    } else {
                        let who = e
                            .instance
                            .map(|i| format!("{}.{i}", e.unit))
                            .unwrap_or_else(|| e.unit.clone());
                        println!(
                            "  +{:>5.1}s  {who:<10} {:<12} {}",
                            started.elapsed().as_secs_f64(),
                            e.kind,
                            e.message
                        );
                    }
                    if e.kind == "deploy-failed"
                        || (e.kind == "deploy" && e.message.contains(" deployed in "))
                    {
                        let _ = ended_tx.send(true);
                    }
                    true
                })
                .await;
        })
    });
    if follower.is_some() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connected).await;
    }
    let body = (!body.is_null()).then_some(body);
    let result: Result<ActionResult, Error> = c.post(path, body.as_ref()).await;
    if let Some(f) = follower {
        // The deploy's last event may trail the reply: wait for it, briefly.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), ended.wait_for(|e| *e)).await;
        f.abort();
    }
    let r = result?;
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        let verb = if r.completed { "done" } else { "started" };
        println!(
            "{unit}: {} {verb} (deployment {}) in {:.1}s",
            action.as_str(),
            r.deployment,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(0)
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_apply(r: &ApplyResult) {
    let list = |label: &str, v: &[String]| {
        if !v.is_empty() {
            println!("{label:<10}{}", v.join(", "));
        }
    };
    list("added", &r.added);
    list("updated", &r.updated);
    list("removed", &r.removed);
    list("unchanged", &r.unchanged);
    if let Some(p) = &r.profile {
        println!("{:<10}{p}", "profile");
    }
    for inv in &r.invalid {
        let who = if inv.unit.is_empty() {
            "units directory".to_string()
        } else {
            format!("unit {}", inv.unit)
        };
        eprintln!("invalid {who}:");
        for e in &inv.errors {
            for (i, line) in e.lines().enumerate() {
                eprintln!("{}{line}", if i == 0 { "  " } else { "    " });
            }
        }
    }
}

fn print_instances(rows: &[InstanceInfo], with_unit: bool) {
    // The CONTAINER column appears when a container unit is listed.
    let containers = rows.iter().any(|r| r.container.is_some());
    let mut head = vec![
        "UNIT", "INST", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "CPU", "MEM", "REV",
    ];
    if containers {
        head.insert(4, "CONTAINER");
    }
    if !with_unit {
        head.remove(0);
    }
    let mut t = Table::new(&head);
    for r in rows {
        let state = match &r.detail {
            Some(d) => format!("{} ({d})", r.state),
            None => r.state.clone(),
        };
        let mut row = vec![
            r.instance.to_string(),
            state,
            opt(r.pid),
            opt(r.port),
            r.uptime_secs
                .map(human_duration)
                .unwrap_or_else(|| "-".into()),
            r.restarts.to_string(),
            r.cpu_percent
                .map(|c| format!("{c:.1}%"))
                .unwrap_or_else(|| "-".into()),
            r.rss_bytes.map(human_size).unwrap_or_else(|| "-".into()),
            r.revision.clone(),
        ];
        if containers {
            row.insert(3, r.container.clone().unwrap_or_else(|| "-".into()));
        }
        if with_unit {
            row.insert(0, r.unit.clone());
        }
        t.row(row);
    }
    print!("{}", t.render());
}

fn print_status(s: &UnitStatus) {
    let u = &s.summary;
    let rev = u
        .revision
        .as_deref()
        .map(|r| r.get(..12).unwrap_or(r))
        .unwrap_or("-");
    println!(
        "{}: {}  revision {rev}  {}/{} ready",
        u.name, u.state, u.instances_ready, u.instances_desired
    );
    if !s.description.is_empty() {
        println!("  {}", s.description);
    }
    let kv = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            println!("  {k:<10}{v}");
        }
    };
    kv("file", Some(&u.file));
    kv("command", s.command.as_deref());
    kv("port", s.port.as_deref());
    kv("restart", s.restart_policy.as_deref());
    kv("health", s.health.as_deref());
    kv("profile", s.profile.as_deref());
    if !s.depends_on.is_empty() {
        kv("depends", Some(&s.depends_on.join(", ")));
    }
    kv("waiting", u.waiting.as_deref());
    if !u.errors.is_empty() {
        println!("\nERRORS (the running version is kept)");
        for e in &u.errors {
            for line in e.lines() {
                println!("  {line}");
            }
        }
    }
    println!("\nINSTANCES");
    print_instances(&s.instances, false);
    println!("\nEVENTS");
    for e in &s.events {
        println!("  {}", event_line(e));
    }
    if let Some(err) = &s.last_error {
        println!("\nLAST ERROR\n  {err}");
    }
}

fn event_line(e: &EventInfo) -> String {
    let who = match e.instance {
        Some(i) => format!("{}.{i}", e.unit),
        None => e.unit.clone(),
    };
    format!("{} {who} {} {}", e.time, e.kind, e.message)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn human_duration(secs: u64) -> String {
    let d = Duration::from_secs(secs);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", d.as_secs() / 86400, (secs % 86400) / 3600),
    }
}

/// Sizes for humans: one decimal, binary units.
fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations print the two most significant units.
    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(7322), "2h2m");
        assert_eq!(human_duration(90000), "1d1h");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(human_size(3_973_120), "3.8MiB");
        assert_eq!(human_size(512), "512B");
    }
}
