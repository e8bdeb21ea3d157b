//! Whether a proxy worker has time to spare, which decides how its requests use their
//! upstream connections (see `pool`).
//!
//! - [`Mode::Interleave`], below saturation: each request drives its upstream connection
//!   itself, so for a burst of requests the first is written to its instance while the
//!   worker reads the next, and each answer goes back to its client as soon as it is in,
//!   nginx's order of work.
//! - [`Mode::Batch`], near saturation: each upstream connection's task drives it. The worker
//!   then reads a whole batch of requests, writes them all to the instances, reads all the
//!   answers and writes them all back, running the same code back to back: fewer
//!   instruction-cache misses, less CPU per request (measured 5-10 %), later answers.
//!
//! Two signals, both measured by the worker itself:
//! - its own busy share: the time its thread ran rather than parked over each [`WINDOW`],
//!   from the runtime's park and unpark hooks (see `listen`);
//! - the host's idle share over each [`HOST_WINDOW`], from `/proc/stat`: with 2 workers on 2
//!   cores each worker parks often, yet the host has no core to spare for the extra CPU.
//!
//! [`next_mode`] decides, with hysteresis, so a worker does not flip at every window.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// How a worker's requests use their upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each request drives its own upstream connection (the worker has time to spare).
    Interleave,
    /// Each upstream connection's task drives it (the worker or the host is saturated).
    Batch,
}

/// The span over which the worker's busy share is measured. Long enough that a burst of
/// requests does not fill it: a burst handled in batch mode waits for its own tail (measured
/// with 10 ms, a p99 of 229 µs between reading a request and forwarding it against 59 µs
/// with 100 ms, at half a core; docs/benchmarks.md). Short enough that a worker which stays
/// saturated pays the extra CPU of interleaving for a tenth of a second at most.
pub const WINDOW: Duration = Duration::from_millis(100);
/// The span over which the host's idle share is measured (`/proc/stat` counts in 10 ms
/// ticks per CPU).
pub const HOST_WINDOW: Duration = Duration::from_millis(200);
/// A worker busy this share of a window or more switches to [`Mode::Batch`]...
const BUSY_HIGH: f64 = 0.9;
/// ...and back to [`Mode::Interleave`] once it is busy less than this share,
const BUSY_LOW: f64 = 0.75;
/// ...and the host idle at least this share of its CPU time. A host idle less than
/// `HOST_IDLE_LOW` switches to [`Mode::Batch`] whatever the worker's share.
const HOST_IDLE_HIGH: f64 = 0.2;
const HOST_IDLE_LOW: f64 = 0.1;

/// What the last windows measured.
#[derive(Debug, Clone, Copy)]
pub struct Signals {
    /// The worker's busy share of the last [`WINDOW`].
    pub busy: f64,
    /// The host's idle share of the last [`HOST_WINDOW`]; None where it cannot be read.
    pub host_idle: Option<f64>,
}

/// The mode for the next window.
pub fn next_mode(current: Mode, s: Signals) -> Mode {
    let host_saturated = s.host_idle.is_some_and(|i| i < HOST_IDLE_LOW);
    let host_free = s.host_idle.is_none_or(|i| i >= HOST_IDLE_HIGH);
    match current {
        Mode::Interleave if s.busy >= BUSY_HIGH || host_saturated => Mode::Batch,
        Mode::Batch if s.busy < BUSY_LOW && host_free => Mode::Interleave,
        m => m,
    }
}

/// The host's CPU time counters, in ticks: all of it, and the idle part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub total: u64,
    pub idle: u64,
}

/// The host's CPU times from the text of `/proc/stat` (its first line: user, nice, system,
/// idle, iowait, irq, softirq, steal, then guest times, which user already counts).
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().next()?;
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let mut t = [0u64; 8];
    for (i, v) in fields.take(8).enumerate() {
        t[i] = v.parse().ok()?;
    }
    Some(CpuTimes {
        total: t.iter().sum(),
        idle: t[3] + t[4],
    })
}

/// The idle share between two readings; None when no time was counted.
pub fn idle_share(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let idle = after.idle.checked_sub(before.idle)?;
    (total > 0).then(|| (idle as f64 / total as f64).min(1.0))
}

fn read_host() -> Option<CpuTimes> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

struct Load {
    window_start: Instant,
    /// Time run in this window, up to the last park.
    busy: Duration,
    /// Since when the thread runs (None while parked).
    running_since: Option<Instant>,
    host_start: Instant,
    host_before: Option<CpuTimes>,
    host_idle: Option<f64>,
    mode: Mode,
}

impl Load {
    fn new(now: Instant, host: Option<CpuTimes>) -> Load {
        Load {
            window_start: now,
            busy: Duration::ZERO,
            running_since: Some(now),
            host_start: now,
            host_before: host,
            host_idle: None,
            mode: Mode::Interleave,
        }
    }

    /// Closes the window when it is due and decides the next mode; `host` reads the host's
    /// counters when its window is due too.
    fn roll(&mut self, now: Instant, host: impl FnOnce() -> Option<CpuTimes>) {
        let span = now.saturating_duration_since(self.window_start);
        if span < WINDOW {
            return;
        }
        if now.saturating_duration_since(self.host_start) >= HOST_WINDOW {
            let after = host();
            self.host_idle = match (self.host_before, after) {
                (Some(b), Some(a)) => idle_share(b, a),
                _ => None,
            };
            self.host_before = after;
            self.host_start = now;
        }
        let mut busy = self.busy;
        if let Some(since) = self.running_since.as_mut() {
            busy += now.saturating_duration_since(*since);
            *since = now;
        }
        let signals = Signals {
            busy: busy.as_secs_f64() / span.as_secs_f64(),
            host_idle: self.host_idle,
        };
        self.mode = next_mode(self.mode, signals);
        self.window_start = now;
        self.busy = Duration::ZERO;
    }

    fn park(&mut self, now: Instant, host: impl FnOnce() -> Option<CpuTimes>) {
        if let Some(since) = self.running_since.take() {
            self.busy += now.saturating_duration_since(since);
        }
        self.roll(now, host);
    }

    fn unpark(&mut self, now: Instant, host: impl FnOnce() -> Option<CpuTimes>) {
        self.roll(now, host);
        self.running_since = Some(now);
    }
}

thread_local! {
    static LOAD: RefCell<Load> = RefCell::new(Load::new(Instant::now(), read_host()));
}

/// The runtime's `on_thread_park` hook: the worker has nothing to run.
pub fn parked() {
    let now = Instant::now();
    LOAD.with(|l| l.borrow_mut().park(now, read_host));
}

/// The runtime's `on_thread_unpark` hook: the worker has work again.
pub fn unparked() {
    let now = Instant::now();
    LOAD.with(|l| l.borrow_mut().unpark(now, read_host));
}

/// The mode this worker's requests use now. A worker that has run for a whole window
/// without parking is saturated, whatever the window before said.
pub fn mode() -> Mode {
    let now = Instant::now();
    LOAD.with(|l| {
        let mut l = l.borrow_mut();
        l.roll(now, read_host);
        l.mode
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_follows_the_worker_and_the_host_with_hysteresis() {
        use Mode::{Batch as B, Interleave as I};
        let cases = [
            // (current, worker busy share, host idle share, next)
            (I, 0.0, Some(0.9), I),
            (I, 0.5, Some(0.5), I),
            (I, 0.89, Some(0.15), I),
            (I, 0.9, Some(0.5), B),
            (I, 1.0, None, B),
            (I, 0.2, Some(0.09), B),
            (I, 0.2, Some(0.0), B),
            (B, 1.0, Some(0.9), B),
            (B, 0.8, Some(0.9), B),
            (B, 0.75, Some(0.9), B),
            (B, 0.74, Some(0.9), I),
            (B, 0.1, Some(0.19), B),
            (B, 0.1, Some(0.2), I),
            // Where the host's counters cannot be read, the worker's share decides.
            (B, 0.1, None, I),
            (I, 0.5, None, I),
        ];
        for (current, busy, host_idle, want) in cases {
            let s = Signals { busy, host_idle };
            assert_eq!(next_mode(current, s), want, "{current:?}, {s:?}");
        }
    }

    #[test]
    fn proc_stat_parses_to_total_and_idle_ticks() {
        let text = "cpu  103557 10 26078 84470 778 0 8915 4023 7 0\n\
                    cpu0 51000 5 13000 42000 300 0 4400 2000 0 0\nintr 1 2 3\n";
        assert_eq!(
            parse_proc_stat(text),
            Some(CpuTimes {
                total: 103557 + 10 + 26078 + 84470 + 778 + 8915 + 4023,
                idle: 84470 + 778,
            })
        );
        // Older kernels print fewer columns.
        assert_eq!(
            parse_proc_stat("cpu 10 0 10 80\n"),
            Some(CpuTimes {
                total: 100,
                idle: 80
            })
        );
        for bad in ["", "cpu0 1 2 3 4\n", "cpu x 2 3 4\n", "intr 5\n"] {
            assert_eq!(parse_proc_stat(bad), None, "{bad:?}");
        }
        let real = std::fs::read_to_string("/proc/stat").unwrap();
        assert!(parse_proc_stat(&real).is_some_and(|t| t.total > 0));
    }

    #[test]
    fn idle_share_between_two_readings() {
        let t = |total, idle| CpuTimes { total, idle };
        assert_eq!(idle_share(t(100, 50), t(200, 75)), Some(0.25));
        assert_eq!(idle_share(t(100, 50), t(100, 50)), None, "no time counted");
        assert_eq!(
            idle_share(t(100, 50), t(90, 50)),
            None,
            "counters went back"
        );
    }

    /// A reading of the host's counters, for `roll`.
    fn host(total: u64, idle: u64) -> impl FnOnce() -> Option<CpuTimes> {
        move || Some(CpuTimes { total, idle })
    }

    #[test]
    fn a_thread_that_never_parks_is_saturated() {
        let start = Instant::now();
        let mut l = Load::new(start, None);
        assert_eq!(l.mode, Mode::Interleave);
        l.roll(start + WINDOW / 2, || None);
        assert_eq!(
            l.mode,
            Mode::Interleave,
            "a window is not over before WINDOW"
        );
        l.roll(start + WINDOW, || None);
        assert_eq!(l.mode, Mode::Batch);
    }

    #[test]
    fn a_thread_mostly_parked_interleaves_while_the_host_has_time() {
        assert_eq!(HOST_WINDOW, 2 * WINDOW, "the timeline below assumes it");
        let start = Instant::now();
        let at = |w: u32, n: u32| start + WINDOW * w + WINDOW * n / 100;
        let mut l = Load::new(start, Some(CpuTimes { total: 0, idle: 0 }));
        l.mode = Mode::Batch;
        // Window 0: runs 2 % of each fifth of it, then parks: 10 % busy.
        for i in 0..5 {
            l.park(at(0, 20 * i + 2), || None);
            l.unpark(at(0, 20 * i + 20), || None);
        }
        assert_eq!(l.mode, Mode::Interleave);
        // Window 1: a burst that keeps it busy for a fifth of the window is not saturation.
        // Its end is the first host reading: half idle.
        l.park(at(1, 20), || None);
        l.unpark(at(1, 40), || None);
        l.park(at(1, 60), || None);
        l.unpark(at(2, 0), host(200, 100));
        assert_eq!(l.host_idle, Some(0.5));
        assert_eq!(l.mode, Mode::Interleave);
        // Window 2: busy 95 % of it is.
        l.park(at(2, 95), || None);
        l.unpark(at(3, 0), || None);
        assert_eq!(l.mode, Mode::Batch);
        // Window 3: idle, and the host's next reading shows it 2.5 % idle (other processes
        // have the cores): the worker stays in batch mode.
        l.park(at(3, 1), || None);
        l.unpark(at(4, 0), host(400, 105));
        assert_eq!(l.host_idle, Some(0.025));
        assert_eq!(l.mode, Mode::Batch);
        // Idle again, with the host half idle: back to interleaving.
        l.park(at(4, 1), || None);
        l.unpark(at(5, 0), || None);
        assert_eq!(l.mode, Mode::Batch, "the host's window is not over");
        l.park(at(5, 1), || None);
        l.unpark(at(6, 0), host(600, 205));
        assert_eq!(l.host_idle, Some(0.5));
        assert_eq!(l.mode, Mode::Interleave);
    }
}
