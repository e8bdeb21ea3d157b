//! `[[route]]`: how the proxy reaches the unit's ready instances.

use crate::unit::decode::{Decoder, Field, Table};
use crate::unit::file::defaults;
use crate::unit::spec::{BalancePolicy, RouteSpec};

pub(crate) fn decode_routes(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Vec<RouteSpec> {
    let hint = Some("write each route as its own [[route]] table".to_string());
    let Some(tables) = f.tables(d, hint) else {
        return Vec::new();
    };
    tables
        .into_iter()
        .filter_map(|t| decode_route(d, t))
        .collect()
}

fn decode_route(d: &mut Decoder<'_>, mut t: Table<'_, '_>) -> Option<RouteSpec> {
    let mut ok = true;
    let host = match t.take(d, "host") {
        Some(f) => match f.string(d) {
            Some(h) => match check_host(&h) {
                Ok(h) => Some(h),
                Err((message, hint)) => {
                    f.error(d, message, hint);
                    ok = false;
                    None
                }
            },
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let path = match t.take(d, "path") {
        Some(f) => match f.string(d) {
            Some(p)
                if p.starts_with('/')
                    && !p.chars().any(|c| c.is_whitespace() || c == '?' || c == '#') =>
            {
                p
            }
            Some(p) => {
                let hint = if p.starts_with('/') {
                    "a path prefix has no spaces, query (`?`) or fragment (`#`)".to_string()
                } else {
                    format!("write path = \"/{}\"", p.trim_start_matches('/'))
                };
                f.error(
                    d,
                    format!("invalid route path {p:?}: it must start with `/`"),
                    Some(hint),
                );
                ok = false;
                String::new()
            }
            None => {
                ok = false;
                String::new()
            }
        },
        None => "/".to_string(),
    };
    let strip_prefix = t
        .take(d, "strip_prefix")
        .and_then(|f| f.bool(d))
        .unwrap_or(false);
    let policy = match t.take(d, "policy") {
        Some(f) => match f.choice(
            d,
            "balancing policy",
            &BalancePolicy::ALL,
            &[
                ("least_conn", "least_conn"),
                ("leastconn", "least_conn"),
                ("roundrobin", "round_robin"),
                ("rr", "round_robin"),
                ("affinity", "cookie"),
                ("sticky", "cookie"),
                ("iphash", "ip_hash"),
                ("ip", "ip_hash"),
            ],
        ) {
            Some("least_conn") => BalancePolicy::LeastConn,
            Some("ip_hash") => BalancePolicy::IpHash,
            Some("cookie") => BalancePolicy::Cookie,
            Some(_) => BalancePolicy::RoundRobin,
            None => {
                ok = false;
                BalancePolicy::RoundRobin
            }
        },
        None => BalancePolicy::RoundRobin,
    };
    let mut duration =
        |t: &mut Table<'_, '_>, d: &mut Decoder<'_>, key: &'static str, default| match t
            .take(d, key)
        {
            Some(f) => f.positive_duration(d).unwrap_or_else(|| {
                ok = false;
                default
            }),
            None => default,
        };
    let connect_timeout = duration(
        &mut t,
        d,
        "connect_timeout",
        defaults::ROUTE_CONNECT_TIMEOUT,
    );
    let timeout = duration(&mut t, d, "timeout", defaults::ROUTE_TIMEOUT);
    let fail_timeout = duration(&mut t, d, "fail_timeout", defaults::ROUTE_FAIL_TIMEOUT);
    let max_body = match t.take(d, "max_body") {
        Some(f) => f.size(d).unwrap_or_else(|| {
            ok = false;
            0
        }),
        None => defaults::ROUTE_MAX_BODY,
    };
    let https_redirect = t.take(d, "https_redirect").and_then(|f| {
        let v = f.bool(d);
        ok &= v.is_some();
        v
    });
    let compress = match t.take(d, "compress") {
        Some(f) => f.bool(d).unwrap_or_else(|| {
            ok = false;
            true
        }),
        None => true,
    };
    let mut headers = std::collections::BTreeMap::new();
    if let Some(f) = t.take(d, "headers") {
        match f.table(d) {
            Some(mut h) => {
                for field in h.take_rest() {
                    let name = field.name.to_string();
                    let valid_name = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    match field.string(d) {
                        Some(_) if !valid_name => {
                            field.key_error(
                                d,
                                format!("invalid header name {name:?}"),
                                Some("header names are letters, digits and `-`".into()),
                            );
                            ok = false;
                        }
                        Some(v) if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) => {
                            field.error(
                                d,
                                "a header value cannot contain line breaks or NUL",
                                None,
                            );
                            ok = false;
                        }
                        Some(v) => {
                            headers.insert(name.to_ascii_lowercase(), v);
                        }
                        None => ok = false,
                    }
                }
                h.end(d);
            }
            None => ok = false,
        }
    }
    let max_fails = match t.take(d, "max_fails") {
        Some(f) => f.u32(d, 0, 1000).unwrap_or_else(|| {
            ok = false;
            0
        }),
        None => defaults::ROUTE_MAX_FAILS,
    };
    let rate_limit = t.take(d, "rate_limit").and_then(|f| {
        let v = super::rate_limit::decode_rate_limit(d, &f);
        ok &= v.is_some();
        v
    });
    let acme = match t.take(d, "acme") {
        Some(f) => match f.bool(d) {
            Some(true) => {
                // An invalid `host` was reported already; do not add a second error for it.
                if let Some((message, hint)) = acme_host_problem(host.as_deref(), ok) {
                    f.error(d, message, Some(hint));
                    ok = false;
                }
                true
            }
            Some(false) => false,
            None => {
                ok = false;
                false
            }
        },
        None => false,
    };
    t.end(d);
    ok.then_some(RouteSpec {
        host,
        path,
        strip_prefix,
        policy,
        connect_timeout,
        timeout,
        max_body,
        max_fails,
        fail_timeout,
        https_redirect,
        compress,
        headers,
        acme,
        rate_limit,
    })
}

/// Why `acme = true` cannot work with this route's host (HTTP-01 proves one exact name).
fn acme_host_problem(host: Option<&str>, host_ok: bool) -> Option<(String, String)> {
    match host {
        None if host_ok => Some((
            "`acme = true` needs the route's `host`: a certificate is issued for one name".into(),
            "add host = \"www.example.com\" (the name clients use, pointing at this machine)"
                .into(),
        )),
        None => None,
        Some(h) => h.strip_prefix("*.").map(|parent| {
            (
                format!("`acme = true` cannot get a certificate for the wildcard {h:?}: HTTP-01 validates exact names only"),
                format!("write one route per name (host = \"www.{parent}\"), or use a [[certificate]] in chaind.toml for the wildcard"),
            )
        }),
    }
}

/// Lowercased host; `*.` only as the first label.
fn check_host(h: &str) -> Result<String, (String, Option<String>)> {
    let lower = h.trim().to_ascii_lowercase();
    if lower.contains("://") || lower.contains('/') || lower.contains(':') {
        let bare = lower
            .split("://")
            .last()
            .unwrap_or("")
            .split(['/', ':'])
            .next()
            .unwrap_or("");
        return Err((
            format!("invalid route host {h:?}: a host name only, without scheme, port or path"),
            Some(format!("write host = {bare:?}")),
        ));
    }
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        let hint = if name.contains('*') {
            "a wildcard is only allowed as the first label: \"*.example.com\"".to_string()
        } else {
            "host names are dot-separated labels of letters, digits and `-`".to_string()
        };
        return Err((format!("invalid route host {h:?}"), Some(hint)));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::check_host;

    /// Hosts are lowercased; wildcards only lead; schemes and ports are refused with a fix.
    #[test]
    fn hosts() {
        assert_eq!(check_host("API.Example.com").unwrap(), "api.example.com");
        assert_eq!(check_host("*.example.com").unwrap(), "*.example.com");
        assert!(check_host("a.*.example.com").is_err());
        let (_, hint) = check_host("https://example.com:443/x").unwrap_err();
        assert_eq!(hint.unwrap(), "write host = \"example.com\"");
        assert!(check_host("exa mple.com").is_err());
        assert!(check_host("-bad.com").is_err());
    }
}
