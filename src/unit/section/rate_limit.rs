//! `route.rate_limit = { rps = 10, burst = 20 }`: the per-client request rate of one route.
//!
//! Only decoding and validation live here; the limiter itself is `proxy::limit`.

use toml::de::DeValue;

use crate::unit::decode::{int_value, Decoder, Field};
use crate::unit::spec::RateLimit;

/// Largest accepted `rps`: beyond a million requests per second per client a limit means
/// nothing, and the bucket's arithmetic (nanoseconds per request) stays exact.
const MAX_RPS: f64 = 1_000_000.0;
const MAX_BURST: u32 = 1_000_000;

/// Decodes the inline table; every problem is reported, and None is returned if there is one.
pub(crate) fn decode_rate_limit(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<RateLimit> {
    let hint = Some("write rate_limit = { rps = 10, burst = 20 }".to_string());
    let mut t = f.table_with(d, hint)?;
    let mut ok = true;
    let rps = match t.take(d, "rps") {
        Some(f) => {
            let v = rps(d, &f);
            ok &= v.is_some();
            v
        }
        None => {
            t.missing(
                d,
                "rps",
                "missing required key `rps` in rate_limit".to_string(),
                Some("add rps = 10 (requests per second per client IP)".to_string()),
            );
            ok = false;
            None
        }
    };
    let burst = match t.take(d, "burst") {
        Some(f) => {
            let v = f.u32(d, 0, MAX_BURST);
            ok &= v.is_some();
            v.unwrap_or(0)
        }
        None => 0,
    };
    t.end(d);
    let rps = rps?;
    ok.then_some(RateLimit { rps, burst })
}

/// A positive number of requests per second: an integer or a float.
fn rps(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<f64> {
    let v = match f.value.get_ref() {
        DeValue::Integer(i) => int_value(i).map(|n| n as f64),
        DeValue::Float(x) => x.as_str().replace('_', "").parse::<f64>().ok(),
        DeValue::String(s) => {
            let hint = s
                .trim()
                .trim_end_matches("r/s")
                .parse::<f64>()
                .ok()
                .map(|n| format!("write rps = {n} without quotes"));
            f.type_error(d, "a number of requests per second", hint);
            return None;
        }
        _ => {
            f.type_error(d, "a number of requests per second", None);
            return None;
        }
    };
    match v {
        Some(x) if x.is_finite() && x > 0.0 && x <= MAX_RPS => Some(x),
        _ => {
            f.error(
                d,
                format!("`rps` must be more than 0 and at most {MAX_RPS}"),
                Some("for one request every 10 seconds, write rps = 0.1".to_string()),
            );
            None
        }
    }
}
