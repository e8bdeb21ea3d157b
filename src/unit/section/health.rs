//! `[health]`: the readiness and liveness check.

use toml::de::DeValue;

use crate::unit::decode::{Decoder, Field};
use crate::unit::file::defaults;
use crate::unit::format_duration;
use crate::unit::spec::{HealthCheck, HealthSpec};

/// `[health]` and the position of its `type` value (for checks against `port`).
pub(crate) fn decode_health(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<(HealthSpec, usize)> {
    let hint = f
        .scalar_string()
        .map(|s| format!("write [health] with type = {s:?}"));
    let mut t = f.table_with(d, hint)?;
    let kinds = ["http", "tcp", "exec"];
    let type_field = t.take(d, "type");
    let kind = match &type_field {
        Some(f) => f.choice(
            d,
            "health check type",
            &kinds,
            &[
                ("https", "http"),
                ("cmd", "exec"),
                ("command", "exec"),
                ("script", "exec"),
                ("port", "tcp"),
            ],
        ),
        None => {
            t.missing(
                d,
                "type",
                "missing required key `type` in [health]".into(),
                Some("add type = \"http\", \"tcp\" or \"exec\"".into()),
            );
            None
        }
    };
    let path = t.take(d, "path");
    let command = t.take(d, "command");
    let only_for = |d: &mut Decoder<'_>, f: &Field<'_, '_>, for_kind: &str, kind: &str| {
        let hint = if kind == "tcp" {
            format!(
                "a tcp check only connects to the port; remove `{}` or set type = {for_kind:?}",
                f.name
            )
        } else {
            format!("remove `{}` or set type = {for_kind:?}", f.name)
        };
        f.key_error(
            d,
            format!(
                "`{}` is only used when type = {for_kind:?}, not {kind:?}",
                f.name
            ),
            Some(hint),
        );
    };
    let check = match kind {
        Some("http") => {
            if let Some(c) = &command {
                only_for(d, c, "exec", "http");
            }
            let path = match &path {
                Some(f) => f.non_empty_string(d).and_then(|p| {
                    if p.starts_with('/') {
                        Some(p)
                    } else {
                        f.error(
                            d,
                            format!("the health check path must start with \"/\", found {p:?}"),
                            Some(format!("write \"/{p}\"")),
                        );
                        None
                    }
                }),
                None => Some(defaults::HEALTH_PATH.to_string()),
            };
            path.map(|path| HealthCheck::Http { path })
        }
        Some("tcp") => {
            if let Some(p) = &path {
                only_for(d, p, "http", "tcp");
            }
            if let Some(c) = &command {
                only_for(d, c, "exec", "tcp");
            }
            Some(HealthCheck::Tcp)
        }
        Some(_) => {
            if let Some(p) = &path {
                only_for(d, p, "http", "exec");
            }
            match &command {
                Some(f) => health_command(d, f).map(|command| HealthCheck::Exec { command }),
                None => {
                    t.missing(
                        d,
                        "command",
                        "missing required key `command` in [health] (type = \"exec\" runs it)".into(),
                        Some("add command = [\"pg_isready\"], or a shell line such as command = \"curl -fs localhost:$PORT/health\"".into()),
                    );
                    None
                }
            }
        }
        None => None,
    };
    let mut h = HealthSpec {
        check: HealthCheck::Tcp,
        interval: defaults::HEALTH_INTERVAL,
        timeout: defaults::HEALTH_TIMEOUT,
        retries: defaults::HEALTH_RETRIES,
        start_period: defaults::HEALTH_START_PERIOD,
        start_interval: defaults::HEALTH_START_INTERVAL,
        restart_after: defaults::HEALTH_RESTART_AFTER,
    };
    let interval = t.take(d, "interval");
    let interval_ok = match &interval {
        Some(f) => f.positive_duration(d).map(|v| h.interval = v).is_some(),
        None => true,
    };
    let timeout = t.take(d, "timeout");
    let timeout_ok = match &timeout {
        Some(f) => f.positive_duration(d).map(|v| h.timeout = v).is_some(),
        None => true,
    };
    if let Some(v) = t.take(d, "retries").and_then(|f| f.u32(d, 1, u32::MAX)) {
        h.retries = v;
    }
    if let Some(v) = t.take(d, "start_period").and_then(|f| f.duration(d)) {
        h.start_period = v;
    }
    if let Some(v) = t
        .take(d, "start_interval")
        .and_then(|f| f.positive_duration(d))
    {
        h.start_interval = v;
    }
    if let Some(v) = t
        .take(d, "restart_after")
        .and_then(|f| f.u32(d, 0, u32::MAX))
    {
        h.restart_after = v;
    }
    if interval_ok && timeout_ok && h.timeout > h.interval {
        let message = format!(
            "`timeout` ({}) is longer than `interval` ({})",
            format_duration(h.timeout),
            format_duration(h.interval)
        );
        let hint = Some(
            "a check must finish before the next one starts; lower timeout or raise interval"
                .into(),
        );
        match (&timeout, &interval) {
            (Some(f), _) | (None, Some(f)) => f.error(d, message, hint),
            (None, None) => {}
        }
    }
    t.end(d);
    let type_at = type_field.as_ref().map_or(0, Field::at);
    check.map(|check| (HealthSpec { check, ..h }, type_at))
}

/// An exec health command: an array (program and arguments) or a shell line (`sh -c`).
fn health_command(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<Vec<String>> {
    match f.value.get_ref() {
        DeValue::String(_) => f
            .non_empty_string(d)
            .map(|s| vec!["sh".to_string(), "-c".to_string(), s]),
        DeValue::Array(a) if a.is_empty() => {
            f.error(
                d,
                "`command` must not be empty",
                Some("write command = [\"program\", \"arg\"]".into()),
            );
            None
        }
        _ => {
            let items = f.strings(d, "an array of strings or a shell command string")?;
            if items[0].value.trim().is_empty() {
                d.error(
                    items[0].at,
                    items[0].path.clone(),
                    "the program name must not be empty",
                    None,
                );
                return None;
            }
            Some(items.into_iter().map(|i| i.value).collect())
        }
    }
}
