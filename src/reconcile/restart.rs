//! Restart policy: a pure decision over (spec, history, exit, run time, now, jitter).
//!
//! An instance that ran at least `min_uptime` restarts at once. Runs shorter than that back off
//! exponentially from `restart.delay`, doubling on every consecutive short run, capped at
//! `max_delay`, with ±10 % jitter from an injected value so that a fleet
//! of crashing instances does not restart in lockstep. More than `max_restarts` restarts within
//! `window` is a crash loop: the instance becomes `failed` and stays so until the user acts.
//! No IO, no clock: `now` and `jitter` are arguments.

use std::time::Duration;

use tokio::time::Instant;

use crate::unit::{RestartPolicy, RestartSpec};
use chain_agent::driver::process::ExitStatus;

/// What the policy remembers about one instance slot across its incarnations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Times of restarts that still fall inside the window (oldest first).
    pub restarts: Vec<Instant>,
    /// Consecutive short runs; drives the backoff exponent.
    pub attempt: u32,
}

/// Why an exit led where it did; named so `chainctl status` can show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Restart after `delay` (`attempt` is the backoff exponent used).
    Restart { delay: Duration, attempt: u32 },
    /// The policy says this exit ends the instance (`never`, or `on-failure` after success).
    Stay { why: StayReason },
    /// Crash loop: too many restarts within the window.
    GiveUp { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StayReason {
    PolicyNever,
    CleanExit,
}

/// Decides what follows an exit. `forced_failure` marks exits that chain caused because the
/// instance misbehaved (failed health checks, memory limit, no listen): they count as failures
/// whatever the exit code.
pub fn decide(
    spec: &RestartSpec,
    history: &History,
    status: ExitStatus,
    ran_for: Duration,
    forced_failure: bool,
    now: Instant,
    jitter: f64,
) -> (Decision, History) {
    let failed = forced_failure || !status.success();
    let restart = match spec.policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    if !restart {
        let why = if spec.policy == RestartPolicy::Never {
            StayReason::PolicyNever
        } else {
            StayReason::CleanExit
        };
        return (Decision::Stay { why }, history.clone());
    }

    let mut next = history.clone();
    let horizon = now.checked_sub(spec.window);
    next.restarts.retain(|t| horizon.is_none_or(|h| *t > h));
    if next.restarts.len() as u32 >= spec.max_restarts {
        let reason = format!(
            "crash loop: {} restarts within {}",
            next.restarts.len(),
            crate::unit::format_duration(spec.window)
        );
        return (Decision::GiveUp { reason }, next);
    }
    // After a stable run the instance comes back at once (as supervisord and PM2 do); quick
    // crashes back off: delay, 2 x delay, 4 x delay ... up to max_delay.
    let stable = ran_for >= spec.min_uptime;
    next.attempt = if stable {
        0
    } else {
        history.attempt.saturating_add(1)
    };
    let attempt = next.attempt.saturating_sub(1);
    let delay = if stable {
        Duration::ZERO
    } else {
        backoff(spec, attempt, jitter)
    };
    next.restarts.push(now);
    (Decision::Restart { delay, attempt }, next)
}

/// `delay * 2^attempt`, capped at `max_delay`, then scaled by a jitter factor in [0.9, 1.1).
pub fn backoff(spec: &RestartSpec, attempt: u32, jitter: f64) -> Duration {
    let base = spec
        .delay
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(spec.max_delay)
        .min(spec.max_delay);
    let factor = 0.9 + 0.2 * jitter.clamp(0.0, 1.0);
    base.mul_f64(factor).min(spec.max_delay.mul_f64(1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: RestartPolicy) -> RestartSpec {
        RestartSpec {
            policy,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            min_uptime: Duration::from_secs(10),
            max_restarts: 3,
            window: Duration::from_secs(60),
        }
    }

    const FAIL: ExitStatus = ExitStatus::Code(1);
    const OK: ExitStatus = ExitStatus::Code(0);

    /// The policy table: which exits restart, and which stay down.
    #[test]
    fn policy_table() {
        let now = Instant::now();
        let short = Duration::from_secs(1);
        let cases = [
            (RestartPolicy::Always, OK, false, true),
            (RestartPolicy::Always, FAIL, false, true),
            (RestartPolicy::OnFailure, OK, false, false),
            (RestartPolicy::OnFailure, FAIL, false, true),
            (RestartPolicy::OnFailure, ExitStatus::Signal(9), false, true),
            (RestartPolicy::OnFailure, ExitStatus::Unknown, false, true),
            (RestartPolicy::OnFailure, OK, true, true),
            (RestartPolicy::Never, FAIL, false, false),
            (RestartPolicy::Never, FAIL, true, false),
        ];
        for (policy, status, forced, restarts) in cases {
            let (d, _) = decide(
                &spec(policy),
                &History::default(),
                status,
                short,
                forced,
                now,
                0.5,
            );
            assert_eq!(
                matches!(d, Decision::Restart { .. }),
                restarts,
                "{policy:?} {status:?} forced={forced}: {d:?}"
            );
        }
    }

    /// Quick crashes double the delay; a stable run resets it.
    #[test]
    fn backoff_doubles_and_resets() {
        let mut s = spec(RestartPolicy::Always);
        s.max_restarts = 100;
        let mut h = History::default();
        let mut t = Instant::now();
        let mut delays = vec![];
        for _ in 0..5 {
            let (d, next) = decide(&s, &h, FAIL, Duration::from_millis(10), false, t, 0.5);
            let Decision::Restart { delay, .. } = d else {
                panic!("{d:?}")
            };
            delays.push(delay.as_millis());
            h = next;
            t += Duration::from_millis(1);
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1600]);
        let (d, _) = decide(&s, &h, FAIL, Duration::from_secs(11), false, t, 0.5);
        assert_eq!(
            d,
            Decision::Restart {
                delay: Duration::ZERO,
                attempt: 0
            },
            "a stable run restarts at once"
        );
    }

    /// The cap holds, and jitter stays within ±10 %.
    #[test]
    fn backoff_cap_and_jitter() {
        let s = spec(RestartPolicy::Always);
        assert_eq!(backoff(&s, 40, 0.5), Duration::from_secs(30));
        assert_eq!(backoff(&s, 0, 0.0), Duration::from_millis(90));
        assert!(backoff(&s, 0, 1.0) <= Duration::from_millis(110));
    }

    /// More than max_restarts within the window gives up; outside the window it does not.
    #[test]
    fn crash_loop_detection() {
        let s = spec(RestartPolicy::Always);
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..3 {
            let (d, next) = decide(
                &s,
                &h,
                FAIL,
                Duration::ZERO,
                false,
                t0 + Duration::from_secs(i),
                0.5,
            );
            assert!(matches!(d, Decision::Restart { .. }), "{d:?}");
            h = next;
        }
        let (d, _) = decide(
            &s,
            &h,
            FAIL,
            Duration::ZERO,
            false,
            t0 + Duration::from_secs(3),
            0.5,
        );
        let Decision::GiveUp { reason } = d else {
            panic!("{d:?}")
        };
        assert!(reason.contains("3 restarts within 1m"), "{reason}");
        // The same history, judged 2 minutes later, is out of the window.
        let (d, _) = decide(
            &s,
            &h,
            FAIL,
            Duration::ZERO,
            false,
            t0 + Duration::from_secs(120),
            0.5,
        );
        assert!(matches!(d, Decision::Restart { .. }), "{d:?}");
    }
}
