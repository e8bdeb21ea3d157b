//! `grow`: a memory-growth program for chain's `max_memory` restart test.
//!
//! It allocates `GROW_MB_PER_SEC` MiB per second (in ten steps a second),
//! writing to every page so the memory really becomes resident, until it holds
//! `GROW_MAX_MB` MiB; then it keeps the memory and waits. Once a second it
//! prints `grow pid {pid} allocated {n} MiB rss {rss} MiB` (RSS from `VmRSS` in
//! /proc/self/status).
//!
//! With `GROW_CHILD=1` it starts a copy of itself, without `GROW_CHILD`, that
//! does the growing while this parent only waits: the RSS of the *process
//! tree* grows while the parent's own RSS stays small. The parent exits with
//! the child's exit code (1 if the child was killed by a signal); the child
//! exits by itself soon after its parent dies.
//!
//! SIGTERM keeps its default action (terminate).
//!
//! Environment:
//! - `GROW_MB_PER_SEC` (default `64`): MiB allocated per second.
//! - `GROW_MAX_MB` (default `4096`): stop growing at this many MiB.
//! - `GROW_CHILD` (`1` or `0`, default `0`): grow in a child process instead.
//! - `GROW_PARENT_PID` (internal): set by the parent for the child, which
//!   exits when its parent is gone.
//!
//! Bad environment values: message on stderr, exit code 2.

use std::fmt::Display;
use std::process::{Command, ExitCode};
use std::str::FromStr;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096; // touching every 4 KiB also touches every larger page
const STEPS_PER_SEC: u64 = 10;

/// Reads `name`; unset or empty is `None`, unparsable is an error message.
fn env_opt<T: FromStr>(name: &str) -> Result<Option<T>, String>
where
    T::Err: Display,
{
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("bad {name}={v:?}: {e}")),
    }
}

fn env_flag(name: &str) -> Result<bool, String> {
    match env_opt::<String>(name)?.as_deref() {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(format!("bad {name}={other:?}: expected 1 or 0")),
    }
}

/// Resident set size in MiB, from the `VmRSS:  1234 kB` line.
fn rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn main() -> ExitCode {
    let config = (|| {
        Ok::<_, String>((
            env_opt::<u64>("GROW_MB_PER_SEC")?.unwrap_or(64),
            env_opt::<u64>("GROW_MAX_MB")?.unwrap_or(4096),
            env_flag("GROW_CHILD")?,
            env_opt::<u32>("GROW_PARENT_PID")?,
        ))
    })();
    let (per_sec, max_mb, spawn_child, parent_pid) = match config {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("grow: {msg}");
            return ExitCode::from(2);
        }
    };
    if spawn_child {
        parent(per_sec, max_mb)
    } else {
        grow(per_sec, max_mb, parent_pid)
    }
}

/// Starts the growing child and waits for it.
fn parent(per_sec: u64, max_mb: u64) -> ExitCode {
    let child = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .env_remove("GROW_CHILD")
            .env("GROW_PARENT_PID", std::process::id().to_string())
            .spawn()
    });
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("grow: cannot start child: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "grow parent pid {} waiting for child pid {} ({per_sec} MiB/s up to {max_mb} MiB)",
        std::process::id(),
        child.id()
    );
    match child.wait() {
        Ok(status) => {
            println!("grow parent: child exited: {status}");
            ExitCode::from(status.code().map_or(1, |c| c as u8))
        }
        Err(e) => {
            eprintln!("grow: waiting for child: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Grows to `max_mb`, then holds the memory forever (or until the parent dies).
fn grow(per_sec: u64, max_mb: u64, parent_pid: Option<u32>) -> ExitCode {
    let pid = std::process::id();
    println!("grow pid {pid} growing {per_sec} MiB/s up to {max_mb} MiB");
    let mut held: Vec<Vec<u8>> = Vec::new();
    let start = Instant::now();
    let mut step = 0u64;
    loop {
        step += 1;
        // Allocate what should be held by the end of this step.
        let target = (per_sec.saturating_mul(step) / STEPS_PER_SEC).min(max_mb);
        while (held.len() as u64) < target {
            let mut chunk = vec![0u8; MIB];
            for byte in chunk.iter_mut().step_by(PAGE) {
                *byte = 1;
            }
            held.push(chunk);
        }
        if step % STEPS_PER_SEC == 0 {
            let rss = rss_mib().map_or("?".to_string(), |r| r.to_string());
            println!("grow pid {pid} allocated {} MiB rss {rss} MiB", held.len());
        }
        if parent_pid.is_some_and(|p| p != std::os::unix::process::parent_id()) {
            eprintln!("grow: parent is gone, exiting");
            return ExitCode::SUCCESS;
        }
        let next = start + Duration::from_millis(step * 1000 / STEPS_PER_SEC);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}
