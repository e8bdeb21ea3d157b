//! `[deploy]` and `[deploy.verify]`: how a new version replaces the running one.

use crate::unit::decode::{Decoder, Field};
use crate::unit::spec::{DeploySpec, Strategy, VerifySpec};

pub(crate) fn decode_deploy(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<(DeploySpec, usize)> {
    let hint = f
        .scalar_string()
        .map(|s| format!("write [deploy] with strategy = {s:?}"));
    let mut t = f.table_with(d, hint)?;
    let mut spec = DeploySpec::default();
    let mut strategy_at = f.at();
    if let Some(f) = t.take(d, "strategy") {
        strategy_at = f.at();
        let aliases = [
            ("bluegreen", "blue-green"),
            ("blue_green", "blue-green"),
            ("canary", "blue-green"),
            ("rolling-update", "rolling"),
            ("rollingupdate", "rolling"),
        ];
        match f.choice(d, "deploy strategy", &Strategy::ALL, &aliases) {
            Some("blue-green") => spec.strategy = Strategy::BlueGreen,
            Some(_) => spec.strategy = Strategy::Rolling,
            None => {}
        }
    }
    let surge = t.take(d, "max_surge");
    if let Some(v) = surge.as_ref().and_then(|f| f.u32(d, 0, 1024)) {
        spec.max_surge = v;
    }
    let unavailable = t.take(d, "max_unavailable");
    if let Some(v) = unavailable.as_ref().and_then(|f| f.u32(d, 0, 1024)) {
        spec.max_unavailable = v;
    }
    if spec.max_surge == 0 && spec.max_unavailable == 0 {
        let at = surge
            .as_ref()
            .or(unavailable.as_ref())
            .map_or(t.at(), |f| f.at());
        d.error(
            at,
            "deploy.max_surge",
            "max_surge and max_unavailable are both 0: a rolling deploy could never make progress",
            Some("allow one extra instance (max_surge = 1) or one missing instance (max_unavailable = 1)".into()),
        );
    }
    if let Some(v) = t.take(d, "min_healthy_time").and_then(|f| f.duration(d)) {
        spec.min_healthy_time = v;
    }
    if let Some(v) = t
        .take(d, "healthy_deadline")
        .and_then(|f| f.positive_duration(d))
    {
        spec.healthy_deadline = v;
    }
    if let Some(v) = t.take(d, "drain_timeout").and_then(|f| f.duration(d)) {
        spec.drain_timeout = v;
    }
    if let Some(v) = t.take(d, "auto_rollback").and_then(|f| f.bool(d)) {
        spec.auto_rollback = v;
    }
    let keep = t.take(d, "keep_previous");
    if let Some(v) = keep.as_ref().and_then(|f| f.duration(d)) {
        spec.keep_previous = v;
    }
    let verify = t.take(d, "verify");
    if let Some(f) = &verify {
        spec.verify = decode_verify(d, f);
    }
    if spec.strategy != Strategy::BlueGreen {
        for (f, key) in [(&keep, "keep_previous"), (&verify, "verify")] {
            if let Some(f) = f {
                f.key_error(
                    d,
                    format!("`{key}` is only used by the blue-green strategy"),
                    Some("set strategy = \"blue-green\", or remove it".into()),
                );
            }
        }
    }
    if spec.min_healthy_time >= spec.healthy_deadline {
        d.error(
            t.at(),
            "deploy.min_healthy_time",
            "min_healthy_time must be shorter than healthy_deadline",
            Some(
                "new instances must be healthy for min_healthy_time before healthy_deadline passes"
                    .into(),
            ),
        );
    }
    t.end(d);
    Some((spec, strategy_at))
}

fn decode_verify(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<VerifySpec> {
    let mut t = f.table(d)?;
    let path = match t.take(d, "path") {
        Some(f) => match f.string(d) {
            Some(p) if p.starts_with('/') => Some(p),
            Some(p) => {
                f.error(
                    d,
                    format!("invalid verify path {p:?}: it must start with `/`"),
                    Some(format!("write path = \"/{}\"", p.trim_start_matches('/'))),
                );
                None
            }
            None => None,
        },
        None => {
            t.missing(
                d,
                "path",
                "missing required key `path` in [deploy.verify]".into(),
                Some("add path = \"/health\" (the request the new set must answer)".into()),
            );
            None
        }
    };
    let status = t
        .take(d, "status")
        .and_then(|f| f.u32(d, 100, 599))
        .unwrap_or(200) as u16;
    let body = t.take(d, "body").and_then(|f| f.string(d));
    let timeout = t
        .take(d, "timeout")
        .and_then(|f| f.positive_duration(d))
        .unwrap_or(std::time::Duration::from_secs(5));
    t.end(d);
    Some(VerifySpec {
        path: path?,
        status,
        body,
        timeout,
    })
}
