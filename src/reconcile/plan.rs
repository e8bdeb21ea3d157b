//! `plan`: desired units + observed instances → the actions that move one toward the other.
//!
//! Pure and idempotent: planning again from the state the actions produce yields no new
//! actions. The supervisor calls it after every event. Rules, per unit:
//! - A unit that is stopped, removed, or (at shutdown) has no live dependents left: stop every
//!   instance. At shutdown a unit waits until every unit depending on it has no live instance,
//!   so stops run in reverse dependency order.
//! - Indices `0..count` each want one live instance of the current deployment. A missing one is
//!   started once the unit's dependencies meet their conditions.
//! - Replacing an older deployment is rolling by default: one index at a time, the new instance
//!   starts next to the old one (surge), the old one is stopped once the new one is ready.
//!   Fixed ports cannot surge, so those stop first. `restart` replaces all at once.
//! - A current-deployment instance that failed halts the rollout; older instances keep serving.

use std::collections::BTreeMap;

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
    /// Stopping for good.
    Stopping,
    Exited {
        success: bool,
    },
    Failed,
}

impl Phase {
    fn is_live(self) -> bool {
        !matches!(self, Phase::Stopping | Phase::Exited { .. } | Phase::Failed)
    }

    fn is_terminal(self) -> bool {
        matches!(self, Phase::Exited { .. } | Phase::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// One index at a time, each next one only after the new instance is ready.
    Rolling,
    /// Every old instance is stopped at once (`chainctl restart`).
    Immediate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub count: u32,
    pub deployment: u64,
    pub rollout: Rollout,
    /// New instances may run next to old ones (false for fixed ports).
    pub surge: bool,
    pub depends_on: Vec<Dependency>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstView {
    pub index: u32,
    pub generation: u64,
    pub deployment: u64,
    pub phase: Phase,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitView {
    pub name: String,
    /// None: the unit is stopped or removed; everything it runs should stop.
    pub want: Option<Want>,
    pub instances: Vec<InstView>,
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
}

pub fn plan(units: &[UnitView], shutdown: bool) -> Vec<Action> {
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
            Some(want) => plan_unit(unit, want, &by_name, &mut actions),
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

fn plan_unit(
    unit: &UnitView,
    want: &Want,
    units: &BTreeMap<&str, &UnitView>,
    actions: &mut Vec<Action>,
) {
    let name = &unit.name;
    let stop = |g: u64| Action::Stop {
        unit: name.clone(),
        generation: g,
    };
    let forget = |g: u64| Action::Forget {
        unit: name.clone(),
        generation: g,
    };

    // Out of range, or terminal leftovers of an older deployment.
    for inst in &unit.instances {
        let stale = inst.index >= want.count || inst.deployment < want.deployment;
        if inst.phase.is_terminal() && stale {
            actions.push(forget(inst.generation));
        } else if inst.index >= want.count && inst.phase.is_live() {
            actions.push(stop(inst.generation));
        }
    }

    let at = |index: u32| unit.instances.iter().filter(move |i| i.index == index);
    let halted = unit.instances.iter().any(|i| {
        i.deployment == want.deployment && i.index < want.count && i.phase == Phase::Failed
    });
    let deps = unmet_dependency(want, units);
    // While older instances remain, a current-deployment instance that is not ready yet (or,
    // without surge, an old one still stopping with nothing new beside it) holds the rollout.
    let rollout_active = unit
        .instances
        .iter()
        .any(|i| i.deployment < want.deployment && !i.phase.is_terminal());
    let new_unready = unit.instances.iter().any(|i| {
        i.deployment == want.deployment
            && i.index < want.count
            && i.phase.is_live()
            && i.phase != Phase::Ready
    });
    let gap = !want.surge
        && (0..want.count).any(|index| {
            at(index).any(|i| i.deployment < want.deployment && i.phase == Phase::Stopping)
                && !at(index).any(|i| i.deployment == want.deployment && i.phase.is_live())
        });
    let mut in_flight = rollout_active && (new_unready || gap);
    let mut waiting = None;

    for index in 0..want.count {
        let mut current: Vec<&InstView> = at(index)
            .filter(|i| i.deployment == want.deployment && i.phase.is_live())
            .collect();
        let old: Vec<&InstView> = at(index)
            .filter(|i| i.deployment < want.deployment && i.phase.is_live())
            .collect();
        let stopping_here = at(index).any(|i| i.phase == Phase::Stopping);
        let current_done =
            at(index).any(|i| i.deployment == want.deployment && i.phase.is_terminal());

        if !current.is_empty() {
            current.sort_by_key(|i| i.generation);
            let keep = current.pop().expect("non-empty");
            for extra in current {
                actions.push(stop(extra.generation));
            }
            if keep.phase == Phase::Ready || old.iter().all(|o| o.phase != Phase::Ready) {
                actions.extend(old.iter().map(|o| stop(o.generation)));
            }
            continue;
        }
        if current_done {
            // This index finished (one-shot) or failed for the current deployment: hold.
            continue;
        }
        let can_start = !stopping_here || want.surge;
        if old.is_empty() {
            if let Some(reason) = &deps {
                waiting = Some(reason.clone());
            } else if can_start {
                actions.push(Action::Start {
                    unit: name.clone(),
                    index,
                });
                in_flight |= rollout_active;
            }
            continue;
        }
        let old_ready = old.iter().any(|o| o.phase == Phase::Ready);
        if !old_ready || want.rollout == Rollout::Immediate {
            actions.extend(old.iter().map(|o| stop(o.generation)));
            if want.surge && deps.is_none() {
                actions.push(Action::Start {
                    unit: name.clone(),
                    index,
                });
            }
            continue;
        }
        // Rolling replacement of a ready instance.
        if in_flight || halted {
            continue;
        }
        if let Some(reason) = &deps {
            waiting = Some(reason.clone());
            continue;
        }
        if want.surge {
            actions.push(Action::Start {
                unit: name.clone(),
                index,
            });
        } else {
            actions.extend(old.iter().map(|o| stop(o.generation)));
        }
        in_flight = true;
    }
    if let Some(reason) = waiting {
        actions.push(Action::Wait {
            unit: name.clone(),
            reason,
        });
    }
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

    fn want(count: u32, deployment: u64) -> Want {
        Want {
            count,
            deployment,
            rollout: Rollout::Rolling,
            surge: true,
            depends_on: vec![],
        }
    }

    fn inst(index: u32, generation: u64, deployment: u64, phase: Phase) -> InstView {
        InstView {
            index,
            generation,
            deployment,
            phase,
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
            })
            .collect()
    }

    fn check(units: Vec<UnitView>, shutdown: bool, expect: &[&str]) {
        assert_eq!(show(&plan(&units, shutdown)), expect, "units: {units:#?}");
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

    /// Rolling: one index at a time, new next to old, old stopped once new is ready.
    #[test]
    fn rolling_replacement_steps() {
        let old = |i, g| inst(i, g, 1, Phase::Ready);
        // Step 1: start the replacement of index 0 only.
        check(
            vec![unit("web", Some(want(2, 2)), vec![old(0, 1), old(1, 2)])],
            false,
            &["start web.0"],
        );
        // Step 2: replacement starting: nothing else moves.
        check(
            vec![unit(
                "web",
                Some(want(2, 2)),
                vec![old(0, 1), old(1, 2), inst(0, 3, 2, Phase::Starting)],
            )],
            false,
            &[],
        );
        // Step 3: replacement ready: stop the old 0 and start the replacement of 1.
        check(
            vec![unit(
                "web",
                Some(want(2, 2)),
                vec![old(0, 1), old(1, 2), inst(0, 3, 2, Phase::Ready)],
            )],
            false,
            &["stop web#1", "start web.1"],
        );
        // Done: old ones gone.
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

    /// A replacement that fails halts the rollout and the old instances keep serving.
    #[test]
    fn failed_replacement_halts() {
        check(
            vec![unit(
                "web",
                Some(want(2, 2)),
                vec![
                    inst(0, 1, 1, Phase::Ready),
                    inst(1, 2, 1, Phase::Ready),
                    inst(0, 3, 2, Phase::Failed),
                ],
            )],
            false,
            &[],
        );
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
            vec![unit("db", Some(w), vec![inst(1, 2, 1, Phase::Ready)])],
            false,
            &["start db.0"],
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

    /// Applying a plan's actions and planning again yields nothing new (idempotence).
    #[test]
    fn plan_is_idempotent_after_applying() {
        let mut units = vec![unit(
            "web",
            Some(want(3, 1)),
            vec![inst(3, 9, 1, Phase::Ready)],
        )];
        let mut next_gen = 10;
        for _ in 0..5 {
            let actions = plan(&units, false);
            if actions.is_empty() {
                break;
            }
            for a in actions {
                let u = &mut units[0];
                match a {
                    Action::Start { index, .. } => {
                        u.instances.push(inst(index, next_gen, 1, Phase::Ready));
                        next_gen += 1;
                    }
                    Action::Stop { generation, .. } | Action::Forget { generation, .. } => {
                        u.instances.retain(|i| i.generation != generation)
                    }
                    Action::Wait { .. } => {}
                }
            }
        }
        assert!(plan(&units, false).is_empty());
        assert_eq!(units[0].instances.len(), 3);
    }
}
