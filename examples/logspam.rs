//! `logspam`: a log-throughput program for chain's benchmarks.
//!
//! Writes `LOG_RATE` lines per second to stdout for `LOG_SECONDS` seconds.
//! Each line is `line {seq} {padding}`, `seq` counting from 1 and `padding`
//! 60 `x` bytes. Lines go out in batches every 10 ms (rate/100 lines each),
//! each batch written with one write and flushed. Then it prints
//! `logspam done {count}` and exits 0, or with `LOG_THEN_SLEEP=1` stays up
//! (sleeping) until killed. If it falls behind, it catches up without sleeping.
//!
//! Environment:
//! - `LOG_RATE` (default `10000`): lines per second.
//! - `LOG_SECONDS` (default `10`): how long to write.
//! - `LOG_THEN_SLEEP` (`1` or `0`, default `0`): sleep forever when done.
//!
//! Bad environment values: message on stderr, exit code 2. Exit code 1 if
//! stdout cannot be written (e.g. the reader went away).

use std::fmt::Display;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

const BATCH_MS: u64 = 10;
const BATCHES_PER_SEC: u64 = 1000 / BATCH_MS;
const PADDING: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
const _: () = assert!(PADDING.len() == 60);

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

fn main() -> ExitCode {
    let config = (|| {
        Ok::<_, String>((
            env_opt::<u64>("LOG_RATE")?.unwrap_or(10_000),
            env_opt::<u64>("LOG_SECONDS")?.unwrap_or(10),
            env_flag("LOG_THEN_SLEEP")?,
        ))
    })();
    let (rate, seconds, then_sleep) = match config {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("logspam: {msg}");
            return ExitCode::from(2);
        }
    };
    let (Some(total), Some(batches)) = (
        rate.checked_mul(seconds),
        seconds.checked_mul(BATCHES_PER_SEC),
    ) else {
        eprintln!("logspam: LOG_RATE or LOG_SECONDS is too large");
        return ExitCode::from(2);
    };

    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    let mut seq = 0u64;
    let mut buf = String::new();
    for batch in 1..=batches {
        // Spread `total` lines evenly: after batch b, b/batches of them are out.
        let target = (u128::from(total) * u128::from(batch) / u128::from(batches)) as u64;
        buf.clear();
        while seq < target {
            seq += 1;
            let _ = writeln!(buf, "line {seq} {PADDING}");
        }
        if let Err(e) = out.write_all(buf.as_bytes()).and_then(|()| out.flush()) {
            eprintln!("logspam: stdout: {e}");
            return ExitCode::FAILURE;
        }
        let next = start + Duration::from_millis(batch * BATCH_MS);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    if let Err(e) = writeln!(out, "logspam done {seq}").and_then(|()| out.flush()) {
        eprintln!("logspam: stdout: {e}");
        return ExitCode::FAILURE;
    }
    drop(out);
    if then_sleep {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    ExitCode::SUCCESS
}
