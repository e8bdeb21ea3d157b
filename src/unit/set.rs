//! [`validate_set`]: problems that only show across units (dependencies and ports). Pure.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::error::UnitError;
use super::file::{DependsOn, Instances, UnitFile};
use super::hint;
use super::spec::{DependencyCondition, PortSpec, RestartPolicy};

/// Problems across a set of parsed units:
/// - a `depends_on` entry naming a unit that does not exist (with the closest name as a hint);
/// - dependency cycles, reported on every unit in the cycle (`dependency cycle: a → b → a`);
/// - a `completed` dependency on a unit whose restart policy is `always` (it never completes);
/// - fixed ports and port ranges that overlap between units.
///
/// `all_names` holds every unit that exists, including units whose files failed to parse
/// (their last good version may still run), so they are not reported as missing.
/// `instances = "max"` counts as one instance here; use [`super::load_dir`] for the CPU count.
pub fn validate_set(units: &[UnitFile], all_names: &BTreeSet<String>) -> Vec<UnitError> {
    validate_set_with(units, all_names, None)
}

pub(crate) fn validate_set_with(
    units: &[UnitFile],
    all_names: &BTreeSet<String>,
    cpus: Option<u32>,
) -> Vec<UnitError> {
    let by_name: BTreeMap<&str, &UnitFile> = units.iter().map(|u| (u.name.as_str(), u)).collect();
    let mut errors = Vec::new();
    let names: Vec<&str> = all_names
        .iter()
        .map(String::as_str)
        .chain(by_name.keys().copied())
        .collect();

    for u in units {
        for dep in &u.depends_on {
            if !all_names.contains(&dep.unit) && !by_name.contains_key(dep.unit.as_str()) {
                let others: Vec<&str> = names.iter().copied().filter(|n| *n != u.name).collect();
                let hint = match hint::closest(&dep.unit, &others) {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!(
                        "add a unit file {}.toml next to this one, or remove the entry",
                        dep.unit
                    ),
                };
                errors.push(dep_error(
                    u,
                    dep,
                    format!("depends on unknown unit `{}`", dep.unit),
                    Some(hint),
                ));
                continue;
            }
            if let (DependencyCondition::Completed, Some(target)) =
                (dep.condition, by_name.get(dep.unit.as_str()))
            {
                if target.restart.policy == RestartPolicy::Always {
                    errors.push(dep_error(
                        u,
                        dep,
                        format!("`{}` can never complete: its restart policy is \"always\"", dep.unit),
                        Some(format!(
                            "set [restart] policy = \"on-failure\" or \"never\" in {}.toml, or wait for \"started\" or \"healthy\" instead",
                            dep.unit
                        )),
                    ));
                }
            }
        }
    }

    errors.extend(cycles(units, &by_name));
    errors.extend(port_overlaps(units, cpus));
    errors.extend(route_conflicts(units));
    errors.sort_by(|a, b| (&a.file, a.pos()).cmp(&(&b.file, b.pos())));
    errors
}

fn dep_error(u: &UnitFile, dep: &DependsOn, message: String, hint: Option<String>) -> UnitError {
    UnitError::at(
        &u.path,
        dep.pos,
        format!("depends_on.{}", dep.unit),
        message,
        hint,
    )
}

/// One error per unit that lies on a dependency cycle, showing the shortest cycle through it.
fn cycles(units: &[UnitFile], by_name: &BTreeMap<&str, &UnitFile>) -> Vec<UnitError> {
    let mut errors = Vec::new();
    for u in units {
        // Breadth-first search from u's dependencies back to u gives the shortest cycle through u.
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue: VecDeque<&str> = VecDeque::new();
        let start = u.name.as_str();
        let mut found = false;
        queue.push_back(start);
        'search: while let Some(cur) = queue.pop_front() {
            let Some(cu) = by_name.get(cur) else { continue };
            for dep in &cu.depends_on {
                let next = dep.unit.as_str();
                if next == start {
                    parent.insert(start, cur);
                    found = true;
                    break 'search;
                }
                if !parent.contains_key(next) && by_name.contains_key(next) {
                    parent.insert(next, cur);
                    queue.push_back(next);
                }
            }
        }
        if !found {
            continue;
        }
        // Walk back from u to u: parent[x] is the unit that depends on x.
        let mut path = vec![start];
        let mut cur = parent[start];
        while cur != start {
            path.push(cur);
            cur = parent[cur];
        }
        path.push(start);
        path.reverse();
        let next = path[1];
        let Some(dep) = u.depends_on.iter().find(|d| d.unit == next) else {
            continue;
        };
        errors.push(dep_error(
            u,
            dep,
            format!("dependency cycle: {}", path.join(" → ")),
            Some("units in a cycle can never start; remove one of these dependencies".into()),
        ));
    }
    errors
}

/// The inclusive port interval a unit claims, if it claims a fixed one.
fn claimed(u: &UnitFile, cpus: Option<u32>) -> Option<(u32, u32, String)> {
    let instances = match u.instances {
        Instances::Count(n) => n,
        Instances::Max => cpus.unwrap_or(1).max(1),
    };
    match u.port {
        PortSpec::Fixed { .. } if instances == 0 => None,
        PortSpec::Fixed { base } => {
            let base = u32::from(base);
            let last = base + instances - 1;
            let shown = if last == base {
                format!("port {base}")
            } else {
                format!("ports {base}-{last}")
            };
            Some((base, last, shown))
        }
        PortSpec::Range { start, end } => Some((
            start.into(),
            end.into(),
            format!("port range {start}-{end}"),
        )),
        PortSpec::Auto | PortSpec::None => None,
    }
}

fn port_overlaps(units: &[UnitFile], cpus: Option<u32>) -> Vec<UnitError> {
    let claims: Vec<(&UnitFile, (u32, u32, String))> = units
        .iter()
        .filter_map(|u| claimed(u, cpus).map(|c| (u, c)))
        .collect();
    let mut errors = Vec::new();
    for (u, (start, end, shown)) in &claims {
        for (other, (ostart, oend, oshown)) in &claims {
            if u.name == other.name || start > oend || ostart > end {
                continue;
            }
            errors.push(UnitError::at(
                &u.path,
                u.port_pos,
                "port",
                format!(
                    "port conflict with unit `{}`: this unit claims {shown}, `{}` claims {oshown}",
                    other.name, other.name
                ),
                Some("give each unit its own ports, or use port = \"auto\"".into()),
            ));
        }
    }
    errors
}

/// Two units may not claim the same host and path: the proxy could not tell them apart.
fn route_conflicts(units: &[UnitFile]) -> Vec<UnitError> {
    let mut errors = Vec::new();
    for u in units {
        for r in &u.routes {
            let clash = units.iter().filter(|o| o.name != u.name).find(|o| {
                o.routes
                    .iter()
                    .any(|or| or.host == r.host && or.path == r.path)
            });
            if let Some(other) = clash {
                let host = r.host.as_deref().unwrap_or("any host");
                errors.push(UnitError::at(
                    &u.path,
                    u.routes_pos,
                    "route",
                    format!(
                        "route conflict with unit `{}`: both route {host} path {:?}",
                        other.name, r.path
                    ),
                    Some("give one of them another host or path".into()),
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::unit::parse;

    fn unit(name: &str, text: &str) -> UnitFile {
        let text = format!("{text}\n[process]\ncommand = \"x\"\n");
        parse(Path::new(&format!("u/{name}.toml")), &text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn check(units: &[UnitFile], extra: &[&str]) -> Vec<String> {
        let mut names: BTreeSet<String> = units.iter().map(|u| u.name.clone()).collect();
        names.extend(extra.iter().map(|s| s.to_string()));
        validate_set(units, &names)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// A consistent set has no problems.
    #[test]
    fn consistent_set() {
        let units = [
            unit("web", "port = 8000\ninstances = 2\ndepends_on = { db = \"healthy\", migrate = \"completed\" }"),
            unit("db", "port = 8002"),
            unit("migrate", "port = \"none\"\n[restart]\npolicy = \"never\""),
        ];
        assert_eq!(check(&units, &[]), Vec::<String>::new());
    }

    /// An unknown dependency gets the closest existing name; units that failed to parse still exist.
    #[test]
    fn missing_dependency() {
        let units = [
            unit("web", "depends_on = [\"dbb\", \"broken\", \"zzz\"]"),
            unit("db", ""),
        ];
        assert_eq!(
            check(&units, &["broken"]),
            [
                "u/web.toml:1:15: depends_on.dbb: depends on unknown unit `dbb`\n  hint: did you mean `db`?",
                "u/web.toml:1:32: depends_on.zzz: depends on unknown unit `zzz`\n  hint: add a unit file zzz.toml next to this one, or remove the entry",
            ]
        );
    }

    /// Every unit on a cycle gets an error showing the cycle from its own point of view.
    #[test]
    fn cycles_are_reported_on_every_member() {
        let units = [
            unit("a", "depends_on = [\"b\"]"),
            unit("b", "depends_on = [\"c\"]"),
            unit("c", "depends_on = [\"a\"]"),
            unit("d", "depends_on = [\"a\"]"),
        ];
        let errors = check(&units, &[]);
        let firsts: Vec<&str> = errors.iter().map(|e| e.lines().next().unwrap()).collect();
        assert_eq!(
            firsts,
            [
                "u/a.toml:1:15: depends_on.b: dependency cycle: a → b → c → a",
                "u/b.toml:1:15: depends_on.c: dependency cycle: b → c → a → b",
                "u/c.toml:1:15: depends_on.a: dependency cycle: c → a → b → c",
            ]
        );
    }

    /// Waiting for an "always" unit to complete can never succeed.
    #[test]
    fn completed_needs_a_unit_that_stops() {
        let units = [
            unit("web", "depends_on = { migrate = \"completed\" }"),
            unit("migrate", ""),
        ];
        let errors = check(&units, &[]);
        assert_eq!(
            errors,
            ["u/web.toml:1:16: depends_on.migrate: `migrate` can never complete: its restart policy is \"always\"\n  hint: set [restart] policy = \"on-failure\" or \"never\" in migrate.toml, or wait for \"started\" or \"healthy\" instead"]
        );
    }

    /// Two units routing the same host and path are both reported.
    #[test]
    fn route_conflict() {
        let units = [
            unit("a", "[[route]]\nhost = \"x.com\"\npath = \"/api\""),
            unit("b", "[[route]]\nhost = \"x.com\"\npath = \"/api\""),
            unit("c", "[[route]]\nhost = \"x.com\"\npath = \"/\""),
        ];
        let got = check(&units, &[]);
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[0].contains("route conflict with unit `b`"), "{got:#?}");
    }

    /// Fixed ports (base + instances) and ranges may not overlap across units; "max" uses the CPU count.
    #[test]
    fn port_overlap() {
        let units = [
            unit("web", "port = 8000\ninstances = 3"),
            unit("api", "port = \"8002-8010\""),
            unit("db", "port = 8011"),
            unit("idle", "port = 8011\ninstances = 0"),
        ];
        assert_eq!(
            check(&units, &[]),
            [
                "u/api.toml:1:8: port: port conflict with unit `web`: this unit claims port range 8002-8010, `web` claims ports 8000-8002\n  hint: give each unit its own ports, or use port = \"auto\"",
                "u/web.toml:1:8: port: port conflict with unit `api`: this unit claims ports 8000-8002, `api` claims port range 8002-8010\n  hint: give each unit its own ports, or use port = \"auto\"",
            ]
        );
        let units = [
            unit("web", "port = 8000\ninstances = \"max\""),
            unit("db", "port = 8003"),
        ];
        let names: BTreeSet<String> = ["web".to_string(), "db".to_string()].into();
        assert!(validate_set_with(&units, &names, Some(2)).is_empty());
        assert_eq!(validate_set_with(&units, &names, Some(4)).len(), 2);
    }
}
