//! `plan`: desired units + observed instances → the actions that move one toward the other.
//!
//! Pure and idempotent: planning again from the state the actions produce yields no new
//! actions, and time comes in as an argument. The supervisor calls it after every event.
//!
//! Per unit:
//! - A unit that is stopped, removed, or (at shutdown) has no live dependents left: stop every
//!   instance. At shutdown a unit waits until every unit depending on it has no live instance,
//!   so stops run in reverse dependency order.
//! - Indices `0..count` each want one live instance of the current deployment; a missing one is
//!   started once the unit's dependencies meet their conditions. Instances beyond `count`, and
//!   instances of a deployment newer than the wanted one (an aborted deploy), are stopped.
//! - Older instances are replaced by the unit's rollout:
//!   - rolling: at most `count + max_surge` live instances and at least `count -
//!     max_unavailable` ready ones; an old instance goes once its replacement is healthy (ready
//!     for `min_healthy_time`). Fixed ports cannot surge, so those replace stop-first.
//!   - blue-green: the whole new set starts next to the old one (out of rotation); once every
//!     new instance is healthy (and the verify probe passed) the route switches at once; then
//!     the old set stops, or is kept out of rotation for `keep_previous`.
//!   - immediate (`chainctl restart`): every old instance stops at once.
//! - A tracked deploy completes when every index has a healthy new instance and no old one is
//!   left (blue-green: after the switch); it aborts when a new instance fails or
//!   `healthy_deadline` passes first. A halted deploy changes nothing more.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::unit::{Dependency, DependencyCondition};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Starting,
    Ready,
    Unready,
    Backoff,
    /// Stopping in order to start again (user restart, failed checks, memory): still holds
    /// its slot.
    Restarting,
    /// Leaving for good, and still in the proxy's tables or serving requests until drained.
    Draining,
    /// Stopping for good (drained, or never routed).
    Stopping,
    Exited {
        success: bool,
    },
    Failed,
}

impl Phase {
    fn is_live(self) -> bool {
        !matches!(
            self,
            Phase::Draining | Phase::Stopping | Phase::Exited { .. } | Phase::Failed
        )
    }

    fn is_terminal(self) -> bool {
        matches!(self, Phase::Exited { .. } | Phase::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    Rolling {
        max_surge: u32,
        max_unavailable: u32,
    },
    BlueGreen,
    /// Every old instance is stopped at once (`chainctl restart`).
    Immediate,
}

/// The blue-green verify probe's progress for the current deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// No probe configured.
    None,
    NotRun,
    Running,
    Passed,
    Failed,
}

/// A deploy the supervisor tracks (a previous version was serving when it began).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub started: Instant,
    pub healthy_deadline: Duration,
    pub min_healthy_time: Duration,
    pub verify: Verify,
    /// Blue-green: the route points at the new set.
    pub switched: bool,
    /// The deploy failed and auto_rollback is off: nothing moves until someone acts.
    pub halted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub count: u32,
    pub deployment: u64,
    pub rollout: Rollout,
    /// New instances may run next to old ones (false for fixed ports).
    pub surge: bool,
    pub depends_on: Vec<Dependency>,
    pub tracked: Option<Tracked>,
    /// Instances of this deployment stay (out of rotation) until the instant passes:
    /// blue-green's `keep_previous`.
    pub kept: Option<(u64, Instant)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstView {
    pub index: u32,
    pub generation: u64,
    pub deployment: u64,
    pub phase: Phase,
    /// Since when the instance has been ready without interruption.
    pub ready_since: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitView {
    pub name: String,
    /// None: the unit is stopped or removed; everything it runs should stop.
    pub want: Option<Want>,
    pub instances: Vec<InstView>,
}

/// Why a tracked deploy aborts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortCause {
    /// A new instance failed (crash loop, permanent start error, or a clean stop it should not
    /// have made).
    Failed { index: u32, generation: u64 },
    /// Not every new instance was healthy within healthy_deadline.
    Deadline,
    /// The blue-green verify probe did not pass.
    Verify,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start {
        unit: String,
        index: u32,
    },
    Stop {
        unit: String,
        generation: u64,
    },
    /// Drop a terminal instance that no longer matters.
    Forget {
        unit: String,
        generation: u64,
    },
    /// Nothing can start yet; `reason` is shown in status.
    Wait {
        unit: String,
        reason: String,
    },
    /// Blue-green: every new instance is healthy; run the verify probe.
    Verify {
        unit: String,
    },
    /// Blue-green: route the new set instead of the old one.
    Switch {
        unit: String,
    },
    /// The tracked deploy reached its end state.
    Complete {
        unit: String,
    },
    Abort {
        unit: String,
        cause: AbortCause,
    },
}

pub fn plan(units: &[UnitView], shutdown: bool, now: Instant) -> Vec<Action> {
    let by_name: BTreeMap<&str, &UnitView> = units.iter().map(|u| (u.name.as_str(), u)).collect();
    let mut actions = Vec::new();
    for unit in units {
        let want = if shutdown { None } else { unit.want.as_ref() };
        match want {
            None => {
                if shutdown && has_live_dependents(unit, units) {
                    continue;
                }
                stop_all(unit, &mut actions);
            }
            Some(want) => plan_unit(unit, want, &by_name, now, &mut actions),
        }
    }
    actions
}

fn has_live_dependents(unit: &UnitView, units: &[UnitView]) -> bool {
    units.iter().any(|other| {
        other
            .want
            .as_ref()
            .is_some_and(|w| w.depends_on.iter().any(|d| d.unit == unit.name))
            && other.instances.iter().any(|i| !i.phase.is_terminal())
    })
}

fn stop_all(unit: &UnitView, actions: &mut Vec<Action>) {
    for inst in &unit.instances {
        if inst.phase.is_live() {
            actions.push(Action::Stop {
                unit: unit.name.clone(),
                generation: inst.generation,
            });
        } else if inst.phase.is_terminal() {
            actions.push(Action::Forget {
                unit: unit.name.clone(),
                generation: inst.generation,
            });
        }
    }
}

/// One unit's instances, sorted for the rules below.
struct Slots<'a> {
    unit: &'a UnitView,
    want: &'a Want,
    now: Instant,
}

impl<'a> Slots<'a> {
    fn at(&self, index: u32) -> impl Iterator<Item = &'a InstView> + 'a {
        self.unit.instances.iter().filter(move |i| i.index == index)
    }

    /// The live instance of the current deployment at `index`.
    fn current(&self, index: u32) -> Option<&'a InstView> {
        let d = self.want.deployment;
        self.at(index)
            .filter(|i| i.deployment == d && i.phase.is_live())
            .max_by_key(|i| i.generation)
    }

    fn current_terminal(&self, index: u32) -> Option<&'a InstView> {
        let d = self.want.deployment;
        self.at(index)
            .find(|i| i.deployment == d && i.phase.is_terminal())
    }

    /// Live instances of older deployments at `index` (not the kept set).
    fn old(&self, index: u32) -> Vec<&'a InstView> {
        let d = self.want.deployment;
        self.at(index)
            .filter(|i| i.deployment < d && i.phase.is_live() && !self.is_kept(i))
            .collect()
    }

    fn is_kept(&self, i: &InstView) -> bool {
        self.want
            .kept
            .is_some_and(|(d, until)| i.deployment == d && self.now < until)
    }

    /// Ready long enough to count (min_healthy_time only matters during a tracked deploy).
    fn healthy(&self, i: &InstView) -> bool {
        let min = self
            .want
            .tracked
            .as_ref()
            .map_or(Duration::ZERO, |t| t.min_healthy_time);
        i.phase == Phase::Ready && i.ready_since.is_some_and(|s| s + min <= self.now)
    }

    fn stopping(&self, index: u32) -> bool {
        self.at(index)
            .any(|i| matches!(i.phase, Phase::Draining | Phase::Stopping))
    }
}

fn plan_unit(
    unit: &UnitView,
    want: &Want,
    units: &BTreeMap<&str, &UnitView>,
    now: Instant,
    actions: &mut Vec<Action>,
) {
    let name = &unit.name;
    let s = Slots { unit, want, now };
    let stop = |g: u64| Action::Stop {
        unit: name.clone(),
        generation: g,
    };
    let start = |index: u32| Action::Start {
        unit: name.clone(),
        index,
    };

    // Out of range, aborted (newer than wanted), duplicates; terminal leftovers of other
    // deployments are forgotten. (An expired kept set is an older set like any other below.)
    for inst in &unit.instances {
        let out_of_range = inst.index >= want.count;
        let aborted = inst.deployment > want.deployment;
        if inst.phase.is_terminal() && (out_of_range || inst.deployment != want.deployment) {
            actions.push(Action::Forget {
                unit: name.clone(),
                generation: inst.generation,
            });
        } else if inst.phase.is_live() {
            let duplicate = inst.deployment == want.deployment
                && s.current(inst.index)
                    .is_some_and(|c| c.generation != inst.generation);
            if out_of_range || aborted || duplicate {
                actions.push(stop(inst.generation));
            }
        }
    }

    let deps = unmet_dependency(want, units);
    let tracked = want.tracked.as_ref();
    if tracked.is_some_and(|t| t.halted) {
        return;
    }

    // A tracked deploy aborts on a failed new instance, a failed probe, or the deadline.
    if let Some(t) = tracked {
        let failed = (0..want.count).find_map(|i| {
            s.current_terminal(i)
                .filter(|c| c.phase != Phase::Exited { success: true })
                .map(|c| (i, c.generation))
        });
        let cause = if let Some((index, generation)) = failed {
            Some(AbortCause::Failed { index, generation })
        } else if t.verify == Verify::Failed {
            Some(AbortCause::Verify)
        } else if now >= t.started + t.healthy_deadline && !rolled_out(&s, t) {
            Some(AbortCause::Deadline)
        } else {
            None
        };
        if let Some(cause) = cause {
            actions.push(Action::Abort {
                unit: name.clone(),
                cause,
            });
            return;
        }
    }

    let mut waiting = None;
    match want.rollout {
        Rollout::Immediate => {
            for index in 0..want.count {
                let old = s.old(index);
                for o in &old {
                    actions.push(stop(o.generation));
                }
                fill(
                    &s,
                    index,
                    &deps,
                    &mut waiting,
                    actions,
                    &start,
                    old.is_empty(),
                );
            }
        }
        Rollout::Rolling {
            max_surge,
            max_unavailable,
        } => rolling(
            &s,
            max_surge,
            max_unavailable,
            &deps,
            &mut waiting,
            actions,
            &start,
            &stop,
        ),
        Rollout::BlueGreen => blue_green(&s, &deps, &mut waiting, actions, &start, &stop),
    }
    if let Some(reason) = waiting {
        actions.push(Action::Wait {
            unit: name.clone(),
            reason,
        });
    }
    if let Some(t) = tracked {
        if complete(&s, t) {
            actions.push(Action::Complete { unit: name.clone() });
        }
    }
}

/// Starts the current-deployment instance of `index` when nothing of this deployment is there.
/// `old_gone` says whether older instances no longer hold the slot.
fn fill(
    s: &Slots<'_>,
    index: u32,
    deps: &Option<String>,
    waiting: &mut Option<String>,
    actions: &mut Vec<Action>,
    start: &impl Fn(u32) -> Action,
    old_gone: bool,
) -> bool {
    if s.current(index).is_some() || s.current_terminal(index).is_some() {
        return false;
    }
    if let Some(reason) = deps {
        *waiting = Some(reason.clone());
        return false;
    }
    // A fixed port is free only once the previous holder has exited.
    if !s.want.surge && (s.stopping(index) || !old_gone) {
        return false;
    }
    actions.push(start(index));
    true
}

#[allow(clippy::too_many_arguments)]
fn rolling(
    s: &Slots<'_>,
    max_surge: u32,
    max_unavailable: u32,
    deps: &Option<String>,
    waiting: &mut Option<String>,
    actions: &mut Vec<Action>,
    start: &impl Fn(u32) -> Action,
    stop: &impl Fn(u64) -> Action,
) {
    let count = s.want.count;
    // Fixed ports cannot run two instances of an index side by side: replace stop-first.
    let (surge, unavailable) = if s.want.surge {
        (max_surge, max_unavailable)
    } else {
        (0, max_unavailable.max(1))
    };
    let in_range = |i: &&InstView| i.index < count && i.phase.is_live() && !s.is_kept(i);
    let mut total = s.unit.instances.iter().filter(in_range).count() as u32;
    let mut available = s
        .unit
        .instances
        .iter()
        .filter(in_range)
        .filter(|i| i.phase == Phase::Ready)
        .count() as u32;

    // Retire old instances whose replacement is healthy.
    for index in 0..count {
        if s.current(index).is_some_and(|c| s.healthy(c)) {
            for o in s.old(index) {
                actions.push(stop(o.generation));
                total -= 1;
                available -= u32::from(o.phase == Phase::Ready);
            }
        }
    }
    // Start replacements within the budget, lowest index first.
    for index in 0..count {
        if s.current(index).is_some() || s.current_terminal(index).is_some() {
            continue;
        }
        let old = s.old(index);
        if old.is_empty() {
            if fill(s, index, deps, waiting, actions, start, true) {
                total += 1;
            }
            continue;
        }
        if deps.is_some() {
            *waiting = deps.clone();
            break;
        }
        let old_ready = old.iter().any(|o| o.phase == Phase::Ready);
        if !old_ready {
            // Nothing to protect: replace at once.
            for o in &old {
                actions.push(stop(o.generation));
            }
            if s.want.surge {
                actions.push(start(index));
            }
            continue;
        }
        if s.want.surge && total < count + surge {
            actions.push(start(index));
            total += 1;
            continue;
        }
        // Stop first when one fewer ready instance still meets the floor.
        if available > count.saturating_sub(unavailable) {
            for o in &old {
                actions.push(stop(o.generation));
            }
            available -= 1;
            if s.want.surge {
                actions.push(start(index));
            }
            continue;
        }
        // Out of budget for this index; empty slots further on are still filled.
    }
}

fn blue_green(
    s: &Slots<'_>,
    deps: &Option<String>,
    waiting: &mut Option<String>,
    actions: &mut Vec<Action>,
    start: &impl Fn(u32) -> Action,
    stop: &impl Fn(u64) -> Action,
) {
    let count = s.want.count;
    let switched = s.want.tracked.as_ref().is_none_or(|t| t.switched);
    if !switched {
        for index in 0..count {
            fill(s, index, deps, waiting, actions, start, true);
        }
        let all_healthy = (0..count).all(|i| s.current(i).is_some_and(|c| s.healthy(c)));
        if all_healthy {
            match s.want.tracked.as_ref().map(|t| t.verify) {
                Some(Verify::NotRun) => actions.push(Action::Verify {
                    unit: s.unit.name.clone(),
                }),
                Some(Verify::None | Verify::Passed) => actions.push(Action::Switch {
                    unit: s.unit.name.clone(),
                }),
                Some(Verify::Running | Verify::Failed) | None => {}
            }
        }
        return;
    }
    for index in 0..count {
        for o in s.old(index) {
            actions.push(stop(o.generation));
        }
        fill(s, index, deps, waiting, actions, start, true);
    }
}

/// Every index has a healthy new instance, no old one is live (the kept set aside), and a
/// blue-green deploy has switched: what `healthy_deadline` bounds. Old instances may still be
/// draining.
fn rolled_out(s: &Slots<'_>, t: &Tracked) -> bool {
    let switched = s.want.rollout != Rollout::BlueGreen || t.switched;
    switched
        && (0..s.want.count).all(|i| s.current(i).is_some_and(|c| s.healthy(c)))
        && !s
            .unit
            .instances
            .iter()
            .any(|i| i.deployment < s.want.deployment && i.phase.is_live() && !s.is_kept(i))
}

/// Rolled out, and no old instance is still draining: once a deploy reports success, no
/// request reaches the old version any more.
fn complete(s: &Slots<'_>, t: &Tracked) -> bool {
    rolled_out(s, t)
        && !s.unit.instances.iter().any(|i| {
            i.deployment < s.want.deployment && i.phase == Phase::Draining && !s.is_kept(i)
        })
}

/// The first dependency whose condition is not met, as a human reason.
fn unmet_dependency(want: &Want, units: &BTreeMap<&str, &UnitView>) -> Option<String> {
    for dep in &want.depends_on {
        let cond = dep.condition.as_str();
        let Some(other) = units.get(dep.unit.as_str()) else {
            return Some(format!(
                "waiting for {} ({cond}): unit not loaded",
                dep.unit
            ));
        };
        let Some(other_want) = &other.want else {
            return Some(format!(
                "waiting for {} ({cond}): unit is stopped",
                dep.unit
            ));
        };
        let met = (0..other_want.count).all(|index| {
            let mut here = other.instances.iter().filter(|i| i.index == index);
            match dep.condition {
                DependencyCondition::Started => here.any(|i| {
                    matches!(
                        i.phase,
                        Phase::Starting
                            | Phase::Ready
                            | Phase::Unready
                            | Phase::Exited { success: true }
                    )
                }),
                DependencyCondition::Healthy => here.any(|i| i.phase == Phase::Ready),
                DependencyCondition::Completed => here.any(|i| {
                    i.deployment == other_want.deployment
                        && i.phase == Phase::Exited { success: true }
                }),
            }
        });
        if !met {
            return Some(format!("waiting for {} to be {cond}", dep.unit));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLL: Rollout = Rollout::Rolling {
        max_surge: 1,
        max_unavailable: 0,
    };

    fn t0() -> Instant {
        // One fixed base per test run, far enough from zero for subtraction.
        thread_local!(static BASE: Instant = Instant::now());
        BASE.with(|b| *b)
    }

    fn at(secs: u64) -> Instant {
        t0() + Duration::from_secs(secs)
    }

    fn want(count: u32, deployment: u64) -> Want {
        Want {
            count,
            deployment,
            rollout: ROLL,
            surge: true,
            depends_on: vec![],
            tracked: None,
            kept: None,
        }
    }

    fn tracked(started: u64) -> Tracked {
        Tracked {
            started: at(started),
            healthy_deadline: Duration::from_secs(60),
            min_healthy_time: Duration::from_secs(5),
            verify: Verify::None,
            switched: false,
            halted: false,
        }
    }

    fn inst(index: u32, generation: u64, deployment: u64, phase: Phase) -> InstView {
        let ready_since = (phase == Phase::Ready).then(|| at(0));
        InstView {
            index,
            generation,
            deployment,
            phase,
            ready_since,
        }
    }

    fn fresh(index: u32, generation: u64, deployment: u64, ready_at: u64) -> InstView {
        InstView {
            index,
            generation,
            deployment,
            phase: Phase::Ready,
            ready_since: Some(at(ready_at)),
        }
    }

    fn unit(name: &str, want: Option<Want>, instances: Vec<InstView>) -> UnitView {
        UnitView {
            name: name.into(),
            want,
            instances,
        }
    }

    fn show(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Start { unit, index } => format!("start {unit}.{index}"),
                Action::Stop { unit, generation } => format!("stop {unit}#{generation}"),
                Action::Forget { unit, generation } => format!("forget {unit}#{generation}"),
                Action::Wait { unit, reason } => format!("wait {unit}: {reason}"),
                Action::Verify { unit } => format!("verify {unit}"),
                Action::Switch { unit } => format!("switch {unit}"),
                Action::Complete { unit } => format!("complete {unit}"),
                Action::Abort { unit, cause } => format!("abort {unit}: {cause:?}"),
            })
            .collect()
    }

    fn check_at(now: u64, units: Vec<UnitView>, shutdown: bool, expect: &[&str]) {
        assert_eq!(
            show(&plan(&units, shutdown, at(now))),
            expect,
            "units: {units:#?}"
        );
    }

    fn check(units: Vec<UnitView>, shutdown: bool, expect: &[&str]) {
        check_at(100, units, shutdown, expect)
    }

    /// A fresh unit starts every index; a settled one needs nothing.
    #[test]
    fn start_and_settle() {
        check(
            vec![unit("web", Some(want(2, 1)), vec![])],
            false,
            &["start web.0", "start web.1"],
        );
        check(
            vec![unit(
                "web",
                Some(want(2, 1)),
                vec![inst(0, 1, 1, Phase::Ready), inst(1, 2, 1, Phase::Starting)],
            )],
            false,
            &[],
        );
    }

    /// An instance stopping in order to restart is not replaced by a second one.
    #[test]
    fn restarting_instance_keeps_its_slot() {
        check(
            vec![unit(
                "web",
                Some(want(1, 1)),
                vec![inst(0, 1, 1, Phase::Restarting)],
            )],
            false,
            &[],
        );
    }

    /// Scaling down stops the highest indices; terminal ones are forgotten.
    #[test]
    fn scale_down() {
        check(
            vec![unit(
                "web",
                Some(want(1, 1)),
                vec![
                    inst(0, 1, 1, Phase::Ready),
                    inst(1, 2, 1, Phase::Ready),
                    inst(2, 3, 1, Phase::Failed),
                ],
            )],
            false,
            &["stop web#2", "forget web#3"],
        );
    }

    /// Rolling with surge 1: new next to old, old stopped once new is ready, one at a time.
    #[test]
    fn rolling_replacement_steps() {
        let old = |i, g| inst(i, g, 1, Phase::Ready);
        check(
            vec![unit("web", Some(want(2, 2)), vec![old(0, 1), old(1, 2)])],
            false,
            &["start web.0"],
        );
        check(
            vec![unit(
                "web",
                Some(want(2, 2)),
                vec![old(0, 1), old(1, 2), inst(0, 3, 2, Phase::Starting)],
            )],
            false,
            &[],
        );
        check(
            vec![unit(
                "web",
                Some(want(2, 2)),
                vec![old(0, 1), old(1, 2), inst(0, 3, 2, Phase::Ready)],
            )],
            false,
            &["stop web#1", "start web.1"],
        );
        check(
            vec![unit(
                "web",
                Some(want(2, 2)),
                vec![inst(0, 3, 2, Phase::Ready), inst(1, 4, 2, Phase::Ready)],
            )],
            false,
            &[],
        );
    }

    /// max_surge 2 replaces two at a time; max_unavailable 1 with no surge stops first.
    #[test]
    fn rolling_budgets() {
        let old = |i, g| inst(i, g, 1, Phase::Ready);
        let w = Want {
            rollout: Rollout::Rolling {
                max_surge: 2,
                max_unavailable: 0,
            },
            ..want(3, 2)
        };
        check(
            vec![unit("web", Some(w), vec![old(0, 1), old(1, 2), old(2, 3)])],
            false,
            &["start web.0", "start web.1"],
        );
        let w = Want {
            rollout: Rollout::Rolling {
                max_surge: 0,
                max_unavailable: 1,
            },
            ..want(3, 2)
        };
        check(
            vec![unit(
                "web",
                Some(w.clone()),
                vec![old(0, 1), old(1, 2), old(2, 3)],
            )],
            false,
            &["stop web#1", "start web.0"],
        );
        // While the replacement of 0 is not ready, capacity is at the minimum: wait.
        check(
            vec![unit(
                "web",
                Some(w),
                vec![
                    inst(0, 1, 1, Phase::Stopping),
                    old(1, 2),
                    old(2, 3),
                    inst(0, 4, 2, Phase::Starting),
                ],
            )],
            false,
            &[],
        );
    }

    /// min_healthy_time: a new instance must stay ready that long before the old one goes.
    #[test]
    fn min_healthy_time_holds_the_old_instance() {
        let w = Want {
            tracked: Some(tracked(0)),
            ..want(1, 2)
        };
        let units = |ready_at| {
            vec![unit(
                "web",
                Some(w.clone()),
                vec![inst(0, 1, 1, Phase::Ready), fresh(0, 2, 2, ready_at)],
            )]
        };
        check_at(12, units(10), false, &[]);
        check_at(15, units(10), false, &["stop web#1"]);
    }

    /// A tracked rolling deploy completes when old instances are gone and new ones healthy,
    /// and not while an old one still drains (the proxy may still route it).
    #[test]
    fn rolling_completes() {
        let w = Want {
            tracked: Some(tracked(0)),
            ..want(2, 2)
        };
        let with_old = |phase| {
            vec![unit(
                "web",
                Some(w.clone()),
                vec![fresh(0, 3, 2, 10), fresh(1, 4, 2, 12), inst(0, 1, 1, phase)],
            )]
        };
        check_at(20, with_old(Phase::Stopping), false, &["complete web"]);
        check_at(20, with_old(Phase::Draining), false, &[]);
        // Past the healthy deadline with the new set healthy, a drain is no reason to abort.
        check_at(10_000, with_old(Phase::Draining), false, &[]);
    }

    /// A failed new instance aborts; so does the deadline, and a failed verify probe.
    #[test]
    fn aborts() {
        let old = |i, g| inst(i, g, 1, Phase::Ready);
        let w = Want {
            tracked: Some(tracked(0)),
            ..want(2, 2)
        };
        check(
            vec![unit(
                "web",
                Some(w.clone()),
                vec![old(0, 1), old(1, 2), inst(0, 3, 2, Phase::Failed)],
            )],
            false,
            &["abort web: Failed { index: 0, generation: 3 }"],
        );
        check_at(
            61,
            vec![unit(
                "web",
                Some(w.clone()),
                vec![old(0, 1), old(1, 2), inst(0, 3, 2, Phase::Starting)],
            )],
            false,
            &["abort web: Deadline"],
        );
        let bg = Want {
            rollout: Rollout::BlueGreen,
            tracked: Some(Tracked {
                verify: Verify::Failed,
                ..tracked(0)
            }),
            ..want(1, 2)
        };
        check(
            vec![unit("web", Some(bg), vec![old(0, 1), fresh(0, 3, 2, 0)])],
            false,
            &["abort web: Verify"],
        );
        // Halted: nothing moves.
        let halted = Want {
            tracked: Some(Tracked {
                halted: true,
                ..tracked(0)
            }),
            ..w
        };
        check(
            vec![unit(
                "web",
                Some(halted),
                vec![old(0, 1), old(1, 2), inst(0, 3, 2, Phase::Failed)],
            )],
            false,
            &[],
        );
    }

    /// Blue-green fails at every phase: a new instance failing while the set starts, the
    /// deadline with part of the set still starting, the verify probe, a new instance failing
    /// after the switch (the old set is still there to go back to) and while the old set
    /// drains; and a deadline that passes while only the drain is left aborts nothing.
    #[test]
    fn blue_green_fails_at_every_phase() {
        let old = |i, g, phase| inst(i, g, 1, phase);
        let bg = |verify, switched| Want {
            rollout: Rollout::BlueGreen,
            tracked: Some(Tracked {
                verify,
                switched,
                ..tracked(0)
            }),
            ..want(2, 2)
        };
        let ready = Phase::Ready;
        // (phase, now, wanted, instances, expected actions)
        type Case = (
            &'static str,
            u64,
            Want,
            Vec<InstView>,
            &'static [&'static str],
        );
        let cases: Vec<Case> = vec![
            (
                "starting",
                10,
                bg(Verify::None, false),
                vec![
                    old(0, 1, ready),
                    old(1, 2, ready),
                    inst(0, 3, 2, Phase::Failed),
                    inst(1, 4, 2, Phase::Starting),
                ],
                &["abort web: Failed { index: 0, generation: 3 }"],
            ),
            (
                "deadline while starting",
                61,
                bg(Verify::None, false),
                vec![
                    old(0, 1, ready),
                    old(1, 2, ready),
                    fresh(0, 3, 2, 5),
                    inst(1, 4, 2, Phase::Starting),
                ],
                &["abort web: Deadline"],
            ),
            (
                "verify",
                20,
                bg(Verify::Failed, false),
                vec![
                    old(0, 1, ready),
                    old(1, 2, ready),
                    fresh(0, 3, 2, 5),
                    fresh(1, 4, 2, 5),
                ],
                &["abort web: Verify"],
            ),
            (
                "after the switch",
                20,
                bg(Verify::Passed, true),
                vec![
                    old(0, 1, ready),
                    old(1, 2, ready),
                    inst(0, 3, 2, Phase::Failed),
                    fresh(1, 4, 2, 5),
                ],
                &["abort web: Failed { index: 0, generation: 3 }"],
            ),
            (
                "while the old set drains",
                20,
                bg(Verify::Passed, true),
                vec![
                    old(0, 1, Phase::Draining),
                    old(1, 2, Phase::Draining),
                    fresh(0, 3, 2, 5),
                    inst(1, 4, 2, Phase::Failed),
                ],
                &["abort web: Failed { index: 1, generation: 4 }"],
            ),
            (
                "deadline with only the drain left",
                61,
                bg(Verify::Passed, true),
                vec![
                    old(0, 1, Phase::Draining),
                    old(1, 2, Phase::Draining),
                    fresh(0, 3, 2, 5),
                    fresh(1, 4, 2, 5),
                ],
                &[],
            ),
        ];
        for (phase, now, w, instances, expect) in cases {
            assert_eq!(
                show(&plan(&[unit("web", Some(w), instances)], false, at(now))),
                expect,
                "phase: {phase}"
            );
        }
    }

    /// After an abort the wanted deployment is the old one again: the new instances stop.
    #[test]
    fn aborted_instances_stop() {
        check(
            vec![unit(
                "web",
                Some(want(1, 1)),
                vec![
                    inst(0, 1, 1, Phase::Ready),
                    inst(0, 3, 2, Phase::Starting),
                    inst(0, 4, 2, Phase::Failed),
                ],
            )],
            false,
            &["stop web#3", "forget web#4"],
        );
    }

    /// Blue-green: the whole new set starts, then verify, switch, and the old set stops.
    #[test]
    fn blue_green_steps() {
        let old = |i, g| inst(i, g, 1, Phase::Ready);
        let bg = |verify, switched| Want {
            rollout: Rollout::BlueGreen,
            tracked: Some(Tracked {
                verify,
                switched,
                ..tracked(90)
            }),
            ..want(2, 2)
        };
        check(
            vec![unit(
                "web",
                Some(bg(Verify::NotRun, false)),
                vec![old(0, 1), old(1, 2)],
            )],
            false,
            &["start web.0", "start web.1"],
        );
        // One ready, one starting: nothing yet.
        check(
            vec![unit(
                "web",
                Some(bg(Verify::NotRun, false)),
                vec![
                    old(0, 1),
                    old(1, 2),
                    fresh(0, 3, 2, 10),
                    inst(1, 4, 2, Phase::Starting),
                ],
            )],
            false,
            &[],
        );
        let all_new = |v, sw| {
            vec![unit(
                "web",
                Some(bg(v, sw)),
                vec![old(0, 1), old(1, 2), fresh(0, 3, 2, 10), fresh(1, 4, 2, 10)],
            )]
        };
        check(all_new(Verify::NotRun, false), false, &["verify web"]);
        check(all_new(Verify::Running, false), false, &[]);
        check(all_new(Verify::Passed, false), false, &["switch web"]);
        check(all_new(Verify::None, false), false, &["switch web"]);
        check(
            all_new(Verify::Passed, true),
            false,
            &["stop web#1", "stop web#2"],
        );
        check(
            vec![unit(
                "web",
                Some(bg(Verify::Passed, true)),
                vec![fresh(0, 3, 2, 10), fresh(1, 4, 2, 10)],
            )],
            false,
            &["complete web"],
        );
    }

    /// keep_previous: the old set stays until its time is up, and does not block completion.
    #[test]
    fn kept_set_stays_until_expiry() {
        let w = Want {
            rollout: Rollout::BlueGreen,
            kept: Some((1, at(200))),
            ..want(1, 2)
        };
        let units = vec![unit(
            "web",
            Some(w),
            vec![inst(0, 1, 1, Phase::Ready), fresh(0, 3, 2, 10)],
        )];
        check_at(100, units.clone(), false, &[]);
        check_at(200, units, false, &["stop web#1"]);
    }

    /// Old instances that are not ready are replaced at once (nothing to protect).
    #[test]
    fn crashed_old_instance_replaced_immediately() {
        check(
            vec![unit(
                "web",
                Some(want(1, 2)),
                vec![inst(0, 1, 1, Phase::Backoff)],
            )],
            false,
            &["stop web#1", "start web.0"],
        );
    }

    /// Fixed ports cannot surge: stop first, start when the old one is gone.
    #[test]
    fn fixed_port_rolls_stop_first() {
        let w = Want {
            surge: false,
            ..want(2, 2)
        };
        check(
            vec![unit(
                "db",
                Some(w.clone()),
                vec![inst(0, 1, 1, Phase::Ready), inst(1, 2, 1, Phase::Ready)],
            )],
            false,
            &["stop db#1"],
        );
        check(
            vec![unit(
                "db",
                Some(w.clone()),
                vec![inst(0, 1, 1, Phase::Stopping), inst(1, 2, 1, Phase::Ready)],
            )],
            false,
            &[],
        );
        check(
            vec![unit(
                "db",
                Some(w.clone()),
                vec![inst(1, 2, 1, Phase::Ready)],
            )],
            false,
            &["start db.0"],
        );
        // The replacement of 0 is starting: capacity is at the minimum, 1 waits.
        check(
            vec![unit(
                "db",
                Some(w),
                vec![inst(0, 3, 2, Phase::Starting), inst(1, 2, 1, Phase::Ready)],
            )],
            false,
            &[],
        );
    }

    /// Restart replaces everything at once.
    #[test]
    fn immediate_rollout() {
        let w = Want {
            rollout: Rollout::Immediate,
            ..want(2, 2)
        };
        check(
            vec![unit(
                "web",
                Some(w),
                vec![inst(0, 1, 1, Phase::Ready), inst(1, 2, 1, Phase::Ready)],
            )],
            false,
            &["stop web#1", "start web.0", "stop web#2", "start web.1"],
        );
    }

    /// depends_on gates starts by condition.
    #[test]
    fn dependencies_gate_start() {
        let web = |phase_db: Phase, cond| {
            vec![
                unit("db", Some(want(1, 1)), vec![inst(0, 1, 1, phase_db)]),
                unit(
                    "web",
                    Some(Want {
                        depends_on: vec![Dependency {
                            unit: "db".into(),
                            condition: cond,
                        }],
                        ..want(1, 1)
                    }),
                    vec![],
                ),
            ]
        };
        check(
            web(Phase::Starting, DependencyCondition::Healthy),
            false,
            &["wait web: waiting for db to be healthy"],
        );
        check(
            web(Phase::Ready, DependencyCondition::Healthy),
            false,
            &["start web.0"],
        );
        check(
            web(Phase::Starting, DependencyCondition::Started),
            false,
            &["start web.0"],
        );
        check(
            web(Phase::Ready, DependencyCondition::Completed),
            false,
            &["wait web: waiting for db to be completed"],
        );
        check(
            web(
                Phase::Exited { success: true },
                DependencyCondition::Completed,
            ),
            false,
            &["start web.0"],
        );
    }

    /// At shutdown, dependents stop first; the dependency waits for them.
    #[test]
    fn shutdown_in_reverse_dependency_order() {
        let dep = vec![Dependency {
            unit: "db".into(),
            condition: DependencyCondition::Started,
        }];
        let units = |web_phase: Option<Phase>| {
            vec![
                unit("db", Some(want(1, 1)), vec![inst(0, 1, 1, Phase::Ready)]),
                unit(
                    "web",
                    Some(Want {
                        depends_on: dep.clone(),
                        ..want(1, 1)
                    }),
                    web_phase.map(|p| inst(0, 2, 1, p)).into_iter().collect(),
                ),
            ]
        };
        check(units(Some(Phase::Ready)), true, &["stop web#2"]);
        check(units(Some(Phase::Stopping)), true, &[]);
        check(units(None), true, &["stop db#1"]);
    }

    /// Applying a plan's actions and planning again converges with no action left, for every
    /// strategy, from a mixed starting state.
    #[test]
    fn plan_converges() {
        for rollout in [
            ROLL,
            Rollout::Rolling {
                max_surge: 0,
                max_unavailable: 1,
            },
            Rollout::Rolling {
                max_surge: 3,
                max_unavailable: 2,
            },
            Rollout::BlueGreen,
            Rollout::Immediate,
        ] {
            for surge in [true, false] {
                if rollout == Rollout::BlueGreen && !surge {
                    continue;
                }
                let w = Want {
                    rollout,
                    surge,
                    tracked: Some(Tracked {
                        verify: Verify::None,
                        ..tracked(90)
                    }),
                    ..want(3, 2)
                };
                let mut u = unit(
                    "web",
                    Some(w),
                    vec![
                        inst(0, 1, 1, Phase::Ready),
                        inst(1, 2, 1, Phase::Ready),
                        inst(3, 9, 1, Phase::Ready),
                    ],
                );
                let mut next_gen = 10;
                let mut done = false;
                for _ in 0..30 {
                    let actions = plan(std::slice::from_ref(&u), false, at(100));
                    if actions.is_empty() {
                        break;
                    }
                    for a in actions {
                        match a {
                            Action::Start { index, .. } => {
                                u.instances.push(fresh(index, next_gen, 2, 0));
                                next_gen += 1;
                            }
                            Action::Stop { generation, .. } | Action::Forget { generation, .. } => {
                                u.instances.retain(|i| i.generation != generation)
                            }
                            Action::Switch { .. } => {
                                u.want.as_mut().unwrap().tracked.as_mut().unwrap().switched = true
                            }
                            Action::Complete { .. } => {
                                u.want.as_mut().unwrap().tracked = None;
                                done = true;
                            }
                            Action::Verify { .. } | Action::Wait { .. } => {}
                            Action::Abort { cause, .. } => panic!("{rollout:?} aborted: {cause:?}"),
                        }
                    }
                }
                assert!(
                    plan(std::slice::from_ref(&u), false, at(100)).is_empty(),
                    "{rollout:?} surge={surge}: {u:#?}"
                );
                assert!(done, "{rollout:?} surge={surge} never completed");
                let mut idx: Vec<u32> = u.instances.iter().map(|i| i.index).collect();
                idx.sort();
                assert_eq!(idx, vec![0, 1, 2], "{rollout:?} surge={surge}");
                assert!(u.instances.iter().all(|i| i.deployment == 2));
            }
        }
    }
}
