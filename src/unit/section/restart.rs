//! `[restart]`: restart policy and backoff.

use crate::unit::decode::{Decoder, Field};
use crate::unit::file::default_restart;
use crate::unit::format_duration;
use crate::unit::spec::{RestartPolicy, RestartSpec};

pub(crate) fn decode_restart(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<RestartSpec> {
    let hint = f.scalar_string().map(|s| {
        let policy = match s.as_str() {
            "true" | "unless-stopped" => "always".to_string(),
            "false" | "no" => "never".to_string(),
            s => s.to_string(),
        };
        format!("write [restart] with policy = {policy:?}")
    });
    let mut t = f.table_with(d, hint)?;
    let mut r = default_restart();
    if let Some(f) = t.take(d, "policy") {
        let aliases = [
            ("unless-stopped", "always"),
            ("true", "always"),
            ("no", "never"),
            ("false", "never"),
            ("on-error", "on-failure"),
            ("on-crash", "on-failure"),
        ];
        match f.choice(d, "restart policy", &RestartPolicy::ALL, &aliases) {
            Some("always") => r.policy = RestartPolicy::Always,
            Some("on-failure") => r.policy = RestartPolicy::OnFailure,
            Some(_) => r.policy = RestartPolicy::Never,
            None => {}
        }
    }
    let delay = t.take(d, "delay");
    if let Some(v) = delay.as_ref().and_then(|f| f.duration(d)) {
        r.delay = v;
    }
    let max_delay = t.take(d, "max_delay");
    let mut max_delay_ok = true;
    if let Some(f) = &max_delay {
        match f.duration(d) {
            Some(v) => r.max_delay = v,
            None => max_delay_ok = false,
        }
    }
    if let Some(v) = t.take(d, "min_uptime").and_then(|f| f.duration(d)) {
        r.min_uptime = v;
    }
    if let Some(v) = t
        .take(d, "max_restarts")
        .and_then(|f| f.u32(d, 0, u32::MAX))
    {
        r.max_restarts = v;
    }
    if let Some(v) = t.take(d, "window").and_then(|f| f.positive_duration(d)) {
        r.window = v;
    }
    if max_delay_ok && r.max_delay < r.delay {
        let message = format!(
            "`max_delay` ({}) is shorter than `delay` ({})",
            format_duration(r.max_delay),
            format_duration(r.delay)
        );
        let hint = Some("raise max_delay or lower delay".to_string());
        match (&max_delay, &delay) {
            (Some(f), _) => f.error(d, message, hint),
            (None, Some(f)) => f.error(
                d,
                format!(
                    "`delay` ({}) is longer than the default `max_delay` ({})",
                    format_duration(r.delay),
                    format_duration(r.max_delay)
                ),
                Some("set max_delay too, or lower delay".into()),
            ),
            (None, None) => {}
        }
    }
    t.end(d);
    Some(r)
}
