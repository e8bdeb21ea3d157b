//! Top-level keys: `instances`, `port` and `depends_on`.

use toml::de::DeValue;

use crate::unit::decode::{int_value, Decoder, Field};
use crate::unit::file::{defaults, DependsOn, Instances, NAME_RULE};
use crate::unit::hint;
use crate::unit::spec::{DependencyCondition, PortSpec};
use crate::unit::valid_unit_name;

pub(crate) fn decode_instances(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<Instances> {
    let max = defaults::MAX_INSTANCES;
    match f.value.get_ref() {
        DeValue::String(s) if s.as_ref() == "max" => Some(Instances::Max),
        DeValue::String(s) if s.trim().parse::<u32>().is_ok() => {
            let hint = format!("write instances = {} without quotes", s.trim());
            f.type_error(
                d,
                &format!("an integer from 0 to {max} or \"max\""),
                Some(hint),
            );
            None
        }
        DeValue::String(s) => {
            let hint = hint::choice_hint(s, &["max"], &[("all", "max"), ("auto", "max")]);
            f.error(
                d,
                format!(
                    "invalid instances value {s:?}; expected an integer from 0 to {max} or \"max\""
                ),
                hint,
            );
            None
        }
        DeValue::Integer(_) => {
            if let Some(n) = f.value.get_ref().as_integer().and_then(int_value) {
                if n < 0 {
                    let hint = "PM2's negative counts (all CPUs but N) have no equivalent; use \"max\" or a number";
                    f.error(
                        d,
                        format!("`instances` must be from 0 to {max}, found {n}"),
                        Some(hint.into()),
                    );
                    return None;
                }
            }
            f.u32(d, 0, max).map(Instances::Count)
        }
        _ => {
            f.type_error(d, &format!("an integer from 0 to {max} or \"max\""), None);
            None
        }
    }
}

pub(crate) fn decode_port(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<PortSpec> {
    let expected = "\"auto\", \"none\", a port number or a range such as \"8100-8199\"";
    let port_hint = || {
        Some("ports are from 1 to 65535; use \"auto\" to let chain pick a free port".to_string())
    };
    match f.value.get_ref() {
        DeValue::Integer(i) => {
            let n = int_value(i);
            match n.and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) {
                Some(base) => Some(PortSpec::Fixed { base }),
                None => {
                    f.error(
                        d,
                        format!("port must be from 1 to 65535, found {i}"),
                        port_hint(),
                    );
                    None
                }
            }
        }
        DeValue::String(s) => {
            match s.as_ref() {
                "auto" => Some(PortSpec::Auto),
                "none" => Some(PortSpec::None),
                s if s.trim().parse::<u64>().is_ok() => {
                    f.type_error(
                        d,
                        expected,
                        Some(format!("write port = {} without quotes", s.trim())),
                    );
                    None
                }
                s => match s.split_once('-') {
                    Some((a, b)) => {
                        let parse = |x: &str| x.trim().parse::<u16>().ok().filter(|p| *p > 0);
                        match (parse(a), parse(b)) {
                            (Some(start), Some(end)) if start <= end => {
                                Some(PortSpec::Range { start, end })
                            }
                            (Some(start), Some(end)) => {
                                f.error(
                                d,
                                format!("invalid port range {s:?}: the start is greater than the end"),
                                Some(format!("write \"{end}-{start}\"")),
                            );
                                None
                            }
                            _ => {
                                f.error(d, format!("invalid port range {s:?}"), port_hint());
                                None
                            }
                        }
                    }
                    None => {
                        let hint = hint::choice_hint(
                            s,
                            &["auto", "none"],
                            &[("random", "auto"), ("no", "none")],
                        );
                        f.error(d, format!("invalid port {s:?}; expected {expected}"), hint);
                        None
                    }
                },
            }
        }
        _ => {
            f.type_error(d, expected, None);
            None
        }
    }
}

fn check_dependency_name(
    d: &mut Decoder<'_>,
    at: usize,
    path: &str,
    dep: &str,
    unit: &str,
) -> bool {
    if !valid_unit_name(dep) {
        let hint = match dep.strip_suffix(".toml") {
            Some(stem) if valid_unit_name(stem) => {
                format!("name the unit, not its file: \"{stem}\"")
            }
            _ => NAME_RULE.to_string(),
        };
        d.error(at, path, format!("invalid unit name {dep:?}"), Some(hint));
        return false;
    }
    if dep == unit {
        d.error(
            at,
            path,
            format!("unit `{unit}` depends on itself"),
            Some("remove this entry".into()),
        );
        return false;
    }
    true
}

const CONDITION_ALIASES: &[(&str, &str)] = &[
    ("service_started", "started"),
    ("service_healthy", "healthy"),
    ("service_completed_successfully", "completed"),
    ("running", "started"),
    ("ready", "healthy"),
    ("done", "completed"),
    ("complete", "completed"),
    ("exited", "completed"),
];

pub(crate) fn decode_depends_on(
    d: &mut Decoder<'_>,
    f: &Field<'_, '_>,
    unit: &str,
) -> Vec<DependsOn> {
    let expected = "an array of unit names or a table of unit = condition";
    // (offset, key path, unit, condition) of each well-formed entry, in source order.
    let mut entries: Vec<(usize, String, String, DependencyCondition)> = Vec::new();
    match f.value.get_ref() {
        DeValue::Array(_) => {
            for item in f.strings(d, "an array of unit names").unwrap_or_default() {
                entries.push((item.at, item.path, item.value, DependencyCondition::Started));
            }
        }
        DeValue::Table(_) => {
            if let Some(mut t) = f.table(d) {
                for entry in t.take_rest() {
                    let hint = Some(format!(
                        "write {} = \"healthy\" (or \"started\", \"completed\")",
                        entry.name
                    ));
                    if !matches!(entry.value.get_ref(), DeValue::String(_)) {
                        entry.type_error(
                            d,
                            "a condition: \"started\", \"healthy\" or \"completed\"",
                            hint,
                        );
                        continue;
                    }
                    let condition = entry
                        .choice(
                            d,
                            "dependency condition",
                            &DependencyCondition::ALL,
                            CONDITION_ALIASES,
                        )
                        .map(|c| match c {
                            "healthy" => DependencyCondition::Healthy,
                            "completed" => DependencyCondition::Completed,
                            _ => DependencyCondition::Started,
                        });
                    if let Some(condition) = condition {
                        entries.push((
                            entry.key_span.start,
                            entry.path,
                            entry.name.to_string(),
                            condition,
                        ));
                    }
                }
            }
        }
        DeValue::String(s) => {
            f.type_error(d, expected, Some(format!("write depends_on = [{s:?}]")));
        }
        _ => f.type_error(d, expected, None),
    }
    let mut out: Vec<DependsOn> = Vec::new();
    for (at, path, dep, condition) in entries {
        if !check_dependency_name(d, at, &path, &dep, unit) {
            continue;
        }
        if out.iter().any(|o| o.unit == dep) {
            d.error(
                at,
                path,
                format!("`{dep}` is listed twice"),
                Some("keep one entry".into()),
            );
            continue;
        }
        out.push(DependsOn {
            unit: dep,
            condition,
            pos: d.pos(at),
        });
    }
    out
}
