//! The instance state machine: one pure function over (state, event).
//!
//! ```text
//! Pending ──Spawned──▶ Starting ──Ready──▶ Running{healthy}
//!    ▲                    │  ╲               │  ▲ Unhealthy / Ready
//!    │ BackoffElapsed     │   ╲ Exited       ▼  │
//! Backoff ◀──policy── (exit) ◀──────────── Running{unhealthy}
//!                         │ GiveUp → Failed, Stay → Exited
//! any live ──Stop──▶ Stopping ──Exited──▶ Remove | Pending (restart)
//! ```
//! The supervisor carries out the returned [`Effect`]s. Illegal pairs keep the state and are
//! logged at error level by the supervisor (never a panic: late messages are normal in an
//! asynchronous system). See docs/lifecycle.md.

use std::time::Duration;

use tokio::time::Instant;

use super::restart::{self, Decision, History};
use crate::unit::RestartSpec;
use chain_agent::driver::process::ExitStatus;

#[derive(Debug, Clone, PartialEq)]
pub enum InstanceState {
    /// About to be spawned.
    Pending,
    /// Spawned, not ready yet (waiting for its health check or its port).
    Starting { since: Instant },
    /// Ready at least once; `healthy = false` means out of rotation after failed checks.
    Running { since: Instant, healthy: bool },
    /// Waiting to be restarted.
    Backoff { until: Instant, attempt: u32 },
    /// Out of rotation; waiting for the proxy to report no request in flight (at most until
    /// `deadline`), before the stop signal.
    Draining { deadline: Instant, then: AfterStop },
    /// Stop signal sent; SIGKILL at `deadline` unless it exits first.
    Stopping {
        deadline: Instant,
        then: AfterStop,
        killed: bool,
    },
    /// Ended, and the restart policy says it stays so.
    Exited { status: ExitStatus },
    /// Gave up (crash loop, or a permanent spawn error) until the user acts.
    Failed { reason: String },
}

/// What happens once a stopping instance has exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterStop {
    /// Forget the instance (scale down, replacement, unit stopped).
    Remove,
    /// Start it again at once, not counted by the restart policy (user restart, watch).
    Restart,
    /// Chain stopped it for misbehaving: the restart policy decides, counting it as a failure.
    Recover { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Spawned,
    SpawnFailed {
        error: String,
        permanent: bool,
    },
    Ready,
    Unhealthy,
    Exited {
        status: ExitStatus,
    },
    Stop {
        then: AfterStop,
    },
    /// The proxy holds no request for the instance any more (or the drain timed out).
    Drained,
    KillTimeout,
    BackoffElapsed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Spawn,
    /// Send the unit's stop signal to the process tree.
    Signal,
    /// SIGKILL the whole tree.
    Kill,
    ArmKillTimer {
        at: Instant,
    },
    /// Ask the proxy to drain the instance, at most until `deadline`.
    Drain {
        deadline: Instant,
    },
    ArmBackoff {
        at: Instant,
    },
    /// Forget the instance: release its port, delete its record.
    Remove,
    /// Record an event (`kind`, message).
    Emit {
        kind: &'static str,
        message: String,
    },
}

/// Inputs besides state and event. `jitter` is a random draw in [0, 1) made by the caller.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    pub restart: &'a RestartSpec,
    pub kill_timeout: Duration,
    pub now: Instant,
    /// Some when the instance may have received proxied traffic: stop drains it first.
    pub drain_timeout: Option<Duration>,
    pub jitter: f64,
    /// When the current process was spawned (for run time and the restart policy).
    pub spawned_at: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub state: InstanceState,
    pub history: History,
    pub effects: Vec<Effect>,
}

/// Outcome of an illegal (state, event) pair: the state is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Illegal {
    pub state: &'static str,
    pub event: &'static str,
}

impl InstanceState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting { .. } => "starting",
            Self::Running { healthy: true, .. } => "running",
            Self::Running { healthy: false, .. } => "unhealthy",
            Self::Backoff { .. } => "backoff",
            Self::Draining { .. } => "draining",
            Self::Stopping { .. } => "stopping",
            Self::Exited { .. } => "exited",
            Self::Failed { .. } => "failed",
        }
    }

    /// A process may exist for this state.
    pub fn has_process(&self) -> bool {
        matches!(
            self,
            Self::Starting { .. }
                | Self::Running { .. }
                | Self::Draining { .. }
                | Self::Stopping { .. }
        )
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Exited { .. } | Self::Failed { .. })
    }
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Self::Spawned => "spawned",
            Self::SpawnFailed { .. } => "spawn-failed",
            Self::Ready => "ready",
            Self::Unhealthy => "unhealthy",
            Self::Exited { .. } => "exited",
            Self::Stop { .. } => "stop",
            Self::Drained => "drained",
            Self::KillTimeout => "kill-timeout",
            Self::BackoffElapsed => "backoff-elapsed",
        }
    }
}

/// The transition function.
pub fn step(
    state: &InstanceState,
    history: &History,
    event: &Event,
    ctx: &Ctx<'_>,
) -> Result<Step, Illegal> {
    use Effect as F;
    use InstanceState as S;
    let keep = |state: InstanceState, effects: Vec<Effect>| {
        Ok(Step {
            state,
            history: history.clone(),
            effects,
        })
    };
    let now = ctx.now;
    match (state, event) {
        (S::Pending, Event::Spawned) => keep(S::Starting { since: now }, vec![]),
        (
            S::Pending,
            Event::SpawnFailed {
                error,
                permanent: true,
            },
        ) => keep(
            S::Failed {
                reason: error.clone(),
            },
            vec![F::Emit {
                kind: "failed",
                message: error.clone(),
            }],
        ),
        (
            S::Pending,
            Event::SpawnFailed {
                error,
                permanent: false,
            },
        ) => Ok(after_exit(history, ExitStatus::Unknown, true, error, ctx)),
        (S::Starting { .. }, Event::Ready) => keep(
            S::Running {
                since: now,
                healthy: true,
            },
            vec![F::Emit {
                kind: "ready",
                message: "ready for traffic".into(),
            }],
        ),
        (
            S::Running {
                since,
                healthy: false,
            },
            Event::Ready,
        ) => keep(
            S::Running {
                since: *since,
                healthy: true,
            },
            vec![F::Emit {
                kind: "healthy",
                message: "health checks pass again".into(),
            }],
        ),
        (S::Running { healthy: true, .. }, Event::Ready) => keep(state.clone(), vec![]),
        (
            S::Running {
                since,
                healthy: true,
            },
            Event::Unhealthy,
        ) => keep(
            S::Running {
                since: *since,
                healthy: false,
            },
            vec![F::Emit {
                kind: "unhealthy",
                message: "out of rotation after failed health checks".into(),
            }],
        ),
        (S::Running { healthy: false, .. } | S::Starting { .. }, Event::Unhealthy) => {
            keep(state.clone(), vec![])
        }
        (S::Starting { .. } | S::Running { .. }, Event::Exited { status }) => {
            let message = status.to_string();
            Ok(after_exit(history, *status, false, &message, ctx))
        }
        (S::Running { .. }, Event::Stop { then }) if ctx.drain_timeout.is_some() => {
            let deadline = now + ctx.drain_timeout.unwrap_or_default();
            keep(
                S::Draining {
                    deadline,
                    then: then.clone(),
                },
                vec![F::Drain { deadline }],
            )
        }
        (S::Starting { .. } | S::Running { .. }, Event::Stop { then }) => {
            Ok(signal(history, then.clone(), ctx))
        }
        (S::Draining { then, .. }, Event::Drained) => Ok(signal(history, then.clone(), ctx)),
        (S::Draining { deadline, then }, Event::Stop { then: newer }) => {
            let then = if *newer == AfterStop::Remove {
                newer.clone()
            } else {
                then.clone()
            };
            keep(
                S::Draining {
                    deadline: *deadline,
                    then,
                },
                vec![],
            )
        }
        (S::Draining { then, .. }, Event::Exited { status }) => {
            Ok(stopped(history, then, *status, ctx))
        }
        (
            S::Stopping {
                deadline,
                then,
                killed: false,
            },
            Event::Stop { then: newer },
        ) => {
            // A second stop request may only make the outcome more final.
            let then = if *newer == AfterStop::Remove {
                newer.clone()
            } else {
                then.clone()
            };
            keep(
                S::Stopping {
                    deadline: *deadline,
                    then,
                    killed: false,
                },
                vec![],
            )
        }
        (
            S::Stopping {
                deadline,
                then,
                killed: true,
            },
            Event::Stop { then: newer },
        ) => {
            let then = if *newer == AfterStop::Remove {
                newer.clone()
            } else {
                then.clone()
            };
            keep(
                S::Stopping {
                    deadline: *deadline,
                    then,
                    killed: true,
                },
                vec![],
            )
        }
        (
            S::Stopping {
                deadline,
                then,
                killed: false,
            },
            Event::KillTimeout,
        ) => keep(
            S::Stopping {
                deadline: *deadline,
                then: then.clone(),
                killed: true,
            },
            vec![
                F::Kill,
                F::Emit {
                    kind: "killed",
                    message: "did not stop within kill_timeout; sent SIGKILL".into(),
                },
            ],
        ),
        (S::Stopping { killed: true, .. }, Event::KillTimeout) => keep(state.clone(), vec![]),
        (S::Stopping { then, .. }, Event::Exited { status }) => {
            Ok(stopped(history, then, *status, ctx))
        }
        (S::Pending | S::Backoff { .. }, Event::Stop { then }) => match then {
            AfterStop::Remove => keep(
                S::Exited {
                    status: ExitStatus::Unknown,
                },
                vec![F::Remove],
            ),
            AfterStop::Restart | AfterStop::Recover { .. } => keep(S::Pending, vec![F::Spawn]),
        },
        (S::Exited { .. } | S::Failed { .. }, Event::Stop { then }) => match then {
            AfterStop::Remove => keep(state.clone(), vec![F::Remove]),
            AfterStop::Restart | AfterStop::Recover { .. } => Ok(Step {
                state: S::Pending,
                history: History::default(),
                effects: vec![F::Spawn],
            }),
        },
        (S::Backoff { .. }, Event::BackoffElapsed) => keep(S::Pending, vec![F::Spawn]),
        // Late or duplicate signals that carry no information for these states.
        (
            S::Backoff { .. }
            | S::Exited { .. }
            | S::Failed { .. }
            | S::Pending
            | S::Draining { .. },
            Event::Ready | Event::Unhealthy,
        ) => keep(state.clone(), vec![]),
        (
            S::Pending
            | S::Starting { .. }
            | S::Running { .. }
            | S::Backoff { .. }
            | S::Draining { .. }
            | S::Stopping { .. }
            | S::Exited { .. }
            | S::Failed { .. },
            Event::Spawned
            | Event::SpawnFailed { .. }
            | Event::Ready
            | Event::Unhealthy
            | Event::Exited { .. }
            | Event::Drained
            | Event::KillTimeout
            | Event::BackoffElapsed,
        ) => Err(Illegal {
            state: state.name(),
            event: event.name(),
        }),
    }
}

/// Sends the stop signal and arms the kill timer.
fn signal(history: &History, then: AfterStop, ctx: &Ctx<'_>) -> Step {
    let deadline = ctx.now + ctx.kill_timeout;
    Step {
        state: InstanceState::Stopping {
            deadline,
            then,
            killed: false,
        },
        history: history.clone(),
        effects: vec![Effect::Signal, Effect::ArmKillTimer { at: deadline }],
    }
}

/// What follows the exit of an instance that was being stopped.
fn stopped(history: &History, then: &AfterStop, status: ExitStatus, ctx: &Ctx<'_>) -> Step {
    use Effect as F;
    use InstanceState as S;
    let keep = |state: InstanceState, effects: Vec<Effect>| Step {
        state,
        history: history.clone(),
        effects,
    };
    match then {
        AfterStop::Remove => keep(
            S::Exited { status },
            vec![
                F::Emit {
                    kind: "stopped",
                    message: format!("stopped ({status})"),
                },
                F::Remove,
            ],
        ),
        AfterStop::Restart => keep(
            S::Pending,
            vec![
                F::Emit {
                    kind: "restarting",
                    message: format!("stopped ({status}), restarting"),
                },
                F::Spawn,
            ],
        ),
        AfterStop::Recover { reason } => after_exit(history, status, true, reason, ctx),
    }
}

fn after_exit(
    history: &History,
    status: ExitStatus,
    forced: bool,
    message: &str,
    ctx: &Ctx<'_>,
) -> Step {
    let ran_for = ctx
        .spawned_at
        .map(|t| ctx.now.saturating_duration_since(t))
        .unwrap_or_default();
    let (decision, history) = restart::decide(
        ctx.restart,
        history,
        status,
        ran_for,
        forced,
        ctx.now,
        ctx.jitter,
    );
    match decision {
        // No delay: spawn in this very step, not one timer later.
        Decision::Restart { delay, .. } if delay.is_zero() => Step {
            state: InstanceState::Pending,
            history,
            effects: vec![
                Effect::Emit {
                    kind: "restarting",
                    message: format!("{message}; restarting now"),
                },
                Effect::Spawn,
            ],
        },
        Decision::Restart { delay, attempt } => {
            let until = ctx.now + delay;
            Step {
                state: InstanceState::Backoff { until, attempt },
                history,
                effects: vec![
                    Effect::Emit {
                        kind: "backoff",
                        message: format!(
                            "{message}; restarting in {}",
                            crate::unit::format_duration(round_ms(delay))
                        ),
                    },
                    Effect::ArmBackoff { at: until },
                ],
            }
        }
        Decision::Stay { .. } => Step {
            state: InstanceState::Exited { status },
            history,
            effects: vec![Effect::Emit {
                kind: "exited",
                message: message.to_string(),
            }],
        },
        Decision::GiveUp { reason } => Step {
            state: InstanceState::Failed {
                reason: format!("{reason}; last: {message}"),
            },
            history,
            effects: vec![Effect::Emit {
                kind: "failed",
                message: format!("{reason}; last: {message}"),
            }],
        },
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::RestartPolicy;

    fn spec() -> RestartSpec {
        RestartSpec {
            policy: RestartPolicy::Always,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            min_uptime: Duration::from_secs(10),
            max_restarts: 10,
            window: Duration::from_secs(300),
        }
    }

    fn names(effects: &[Effect]) -> Vec<&'static str> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Spawn => "spawn",
                Effect::Signal => "signal",
                Effect::Kill => "kill",
                Effect::ArmKillTimer { .. } => "kill-timer",
                Effect::Drain { .. } => "drain",
                Effect::ArmBackoff { .. } => "backoff-timer",
                Effect::Remove => "remove",
                Effect::Emit { kind, .. } => kind,
            })
            .collect()
    }

    /// Every legal pair, with the resulting state name and effects.
    #[test]
    fn legal_transitions() {
        let t = Instant::now();
        let r = spec();
        let ctx = Ctx {
            drain_timeout: None,
            restart: &r,
            kill_timeout: Duration::from_secs(5),
            now: t,
            jitter: 0.5,
            spawned_at: Some(t),
        };
        let running = InstanceState::Running {
            since: t,
            healthy: true,
        };
        let unhealthy = InstanceState::Running {
            since: t,
            healthy: false,
        };
        let starting = InstanceState::Starting { since: t };
        let stopping = |then| InstanceState::Stopping {
            deadline: t,
            then,
            killed: false,
        };
        let backoff = InstanceState::Backoff {
            until: t,
            attempt: 0,
        };
        let exit1 = Event::Exited {
            status: ExitStatus::Code(1),
        };
        let table: Vec<(InstanceState, Event, &str, Vec<&str>)> = vec![
            (InstanceState::Pending, Event::Spawned, "starting", vec![]),
            (
                InstanceState::Pending,
                Event::SpawnFailed {
                    error: "no such file".into(),
                    permanent: true,
                },
                "failed",
                vec!["failed"],
            ),
            (
                InstanceState::Pending,
                Event::SpawnFailed {
                    error: "EAGAIN".into(),
                    permanent: false,
                },
                "backoff",
                vec!["backoff", "backoff-timer"],
            ),
            (starting.clone(), Event::Ready, "running", vec!["ready"]),
            (
                starting.clone(),
                exit1.clone(),
                "backoff",
                vec!["backoff", "backoff-timer"],
            ),
            (
                starting.clone(),
                Event::Stop {
                    then: AfterStop::Remove,
                },
                "stopping",
                vec!["signal", "kill-timer"],
            ),
            (
                running.clone(),
                Event::Unhealthy,
                "unhealthy",
                vec!["unhealthy"],
            ),
            (unhealthy.clone(), Event::Ready, "running", vec!["healthy"]),
            (
                running.clone(),
                exit1.clone(),
                "backoff",
                vec!["backoff", "backoff-timer"],
            ),
            (
                running.clone(),
                Event::Stop {
                    then: AfterStop::Restart,
                },
                "stopping",
                vec!["signal", "kill-timer"],
            ),
            (
                stopping(AfterStop::Remove),
                Event::KillTimeout,
                "stopping",
                vec!["kill", "killed"],
            ),
            (
                stopping(AfterStop::Remove),
                exit1.clone(),
                "exited",
                vec!["stopped", "remove"],
            ),
            (
                stopping(AfterStop::Restart),
                exit1.clone(),
                "pending",
                vec!["restarting", "spawn"],
            ),
            (
                stopping(AfterStop::Recover {
                    reason: "memory".into(),
                }),
                Event::Exited {
                    status: ExitStatus::Code(0),
                },
                "backoff",
                vec!["backoff", "backoff-timer"],
            ),
            (
                backoff.clone(),
                Event::BackoffElapsed,
                "pending",
                vec!["spawn"],
            ),
            (
                backoff.clone(),
                Event::Stop {
                    then: AfterStop::Remove,
                },
                "exited",
                vec!["remove"],
            ),
            (
                InstanceState::Failed { reason: "x".into() },
                Event::Stop {
                    then: AfterStop::Restart,
                },
                "pending",
                vec!["spawn"],
            ),
            (
                InstanceState::Exited {
                    status: ExitStatus::Code(0),
                },
                Event::Stop {
                    then: AfterStop::Remove,
                },
                "exited",
                vec!["remove"],
            ),
        ];
        for (state, event, want_state, want_effects) in table {
            let got = step(&state, &History::default(), &event, &ctx)
                .unwrap_or_else(|e| panic!("{state:?} + {event:?} illegal: {e:?}"));
            assert_eq!(got.state.name(), want_state, "{state:?} + {event:?}");
            assert_eq!(names(&got.effects), want_effects, "{state:?} + {event:?}");
        }
    }

    /// A routed instance is drained before its stop signal; an exit while draining ends it.
    #[test]
    fn draining_before_stop() {
        let t = Instant::now();
        let r = spec();
        let ctx = Ctx {
            drain_timeout: Some(Duration::from_secs(30)),
            restart: &r,
            kill_timeout: Duration::from_secs(5),
            now: t,
            jitter: 0.5,
            spawned_at: Some(t),
        };
        let h = History::default();
        let running = InstanceState::Running {
            since: t,
            healthy: true,
        };
        let s = step(
            &running,
            &h,
            &Event::Stop {
                then: AfterStop::Remove,
            },
            &ctx,
        )
        .unwrap();
        assert_eq!(s.state.name(), "draining");
        assert_eq!(names(&s.effects), vec!["drain"]);
        // A starting instance never took traffic: straight to the signal.
        let starting = InstanceState::Starting { since: t };
        let s2 = step(
            &starting,
            &h,
            &Event::Stop {
                then: AfterStop::Remove,
            },
            &ctx,
        )
        .unwrap();
        assert_eq!(names(&s2.effects), vec!["signal", "kill-timer"]);
        // Drained: signal and kill timer; a later stop request keeps draining.
        let d = step(&s.state, &h, &Event::Drained, &ctx).unwrap();
        assert_eq!(
            (d.state.name(), names(&d.effects)),
            ("stopping", vec!["signal", "kill-timer"])
        );
        let again = step(
            &s.state,
            &h,
            &Event::Stop {
                then: AfterStop::Restart,
            },
            &ctx,
        )
        .unwrap();
        assert_eq!(again.state, s.state);
        // Exit while draining: as if stopped.
        let e = step(
            &s.state,
            &h,
            &Event::Exited {
                status: ExitStatus::Code(0),
            },
            &ctx,
        )
        .unwrap();
        assert_eq!(
            (e.state.name(), names(&e.effects)),
            ("exited", vec!["stopped", "remove"])
        );
        assert!(step(&s.state, &h, &Event::KillTimeout, &ctx).is_err());
    }

    /// Pairs that make no sense are rejected and leave the state as it was.
    #[test]
    fn illegal_transitions() {
        let t = Instant::now();
        let r = spec();
        let ctx = Ctx {
            drain_timeout: None,
            restart: &r,
            kill_timeout: Duration::from_secs(5),
            now: t,
            jitter: 0.5,
            spawned_at: None,
        };
        let table = vec![
            (
                InstanceState::Pending,
                Event::Exited {
                    status: ExitStatus::Code(0),
                },
            ),
            (InstanceState::Pending, Event::KillTimeout),
            (InstanceState::Starting { since: t }, Event::Spawned),
            (
                InstanceState::Running {
                    since: t,
                    healthy: true,
                },
                Event::BackoffElapsed,
            ),
            (
                InstanceState::Backoff {
                    until: t,
                    attempt: 1,
                },
                Event::Exited {
                    status: ExitStatus::Code(1),
                },
            ),
            (
                InstanceState::Exited {
                    status: ExitStatus::Code(0),
                },
                Event::Spawned,
            ),
            (
                InstanceState::Failed { reason: "x".into() },
                Event::BackoffElapsed,
            ),
            (
                InstanceState::Stopping {
                    deadline: t,
                    then: AfterStop::Remove,
                    killed: false,
                },
                Event::Spawned,
            ),
        ];
        for (state, event) in table {
            assert!(
                step(&state, &History::default(), &event, &ctx).is_err(),
                "{state:?} + {event:?} should be illegal"
            );
        }
    }

    /// A crash loop ends in Failed with the reason, and a user restart clears the history.
    #[test]
    fn crash_loop_then_user_restart() {
        let r = RestartSpec {
            max_restarts: 2,
            ..spec()
        };
        let mut t = Instant::now();
        let mut state = InstanceState::Starting { since: t };
        let mut h = History::default();
        for _ in 0..3 {
            let ctx = Ctx {
                drain_timeout: None,
                restart: &r,
                kill_timeout: Duration::from_secs(1),
                now: t,
                jitter: 0.5,
                spawned_at: Some(t),
            };
            let s = step(
                &state,
                &h,
                &Event::Exited {
                    status: ExitStatus::Code(3),
                },
                &ctx,
            )
            .unwrap();
            h = s.history;
            state = match s.state {
                InstanceState::Backoff { .. } => InstanceState::Starting { since: t },
                other => other,
            };
            t += Duration::from_millis(10);
        }
        let InstanceState::Failed { reason } = &state else {
            panic!("{state:?}")
        };
        assert!(
            reason.contains("crash loop") && reason.contains("exit code 3"),
            "{reason}"
        );
        let ctx = Ctx {
            drain_timeout: None,
            restart: &r,
            kill_timeout: Duration::from_secs(1),
            now: t,
            jitter: 0.5,
            spawned_at: None,
        };
        let s = step(
            &state,
            &h,
            &Event::Stop {
                then: AfterStop::Restart,
            },
            &ctx,
        )
        .unwrap();
        assert_eq!(s.state, InstanceState::Pending);
        assert_eq!(s.history, History::default());
    }
}
