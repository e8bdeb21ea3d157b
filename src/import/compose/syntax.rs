//! The small syntaxes inside compose values: port mappings, Go durations, docker byte sizes,
//! and the curl/wget command lines of health checks that are plain HTTP probes.

use std::time::Duration;

use crate::import::split_words;
use crate::import::yaml::Node;

/// One `ports` entry.
#[derive(Debug, PartialEq)]
pub(super) struct PortMap {
    pub ip: Option<String>,
    pub host: Option<(u16, u16)>,
    pub container: (u16, u16),
    pub protocol: String,
    pub text: String,
}

/// `[HOST_IP:][HOST[-END]:]CONTAINER[-END][/PROTOCOL]`; an IPv6 address is in brackets.
pub(super) fn short_port(text: &str) -> Result<PortMap, String> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((s, p)) => (s, p.to_ascii_lowercase()),
        None => (text, "tcp".to_string()),
    };
    let (ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (ip, after) = r
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: unclosed ["))?;
        (Some(ip.to_string()), after.trim_start_matches(':'))
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => (Some(parts[0].to_string()), &spec[parts[0].len() + 1..]),
            _ => return Err(format!("{text:?} is not a port mapping")),
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, rest),
    };
    let range = |s: &str| -> Result<(u16, u16), String> {
        let bad = || format!("{text:?}: {s:?} is not a port or a range");
        match s.split_once('-') {
            Some((a, b)) => Ok((
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            )),
            None => {
                let p = s.trim().parse().map_err(|_| bad())?;
                Ok((p, p))
            }
        }
    };
    let container = range(container)?;
    if container.0 == 0 {
        return Err(format!("{text:?}: container port 0"));
    }
    let host = match host {
        Some("") | None => None,
        Some(h) => Some(range(h)?),
    };
    Ok(PortMap {
        ip: ip.filter(|i| !i.is_empty()),
        host,
        container,
        protocol,
        text: text.to_string(),
    })
}

/// The long syntax: `target`, `published`, `host_ip`, `protocol`.
pub(super) fn long_port(item: &Node) -> Result<PortMap, String> {
    let target = item
        .get("target")
        .and_then(Node::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or("no valid target port")?;
    let host = match item.get("published").and_then(Node::text) {
        Some(p) => {
            let m = short_port(&format!("{p}:{target}"))?;
            m.host
        }
        None => None,
    };
    Ok(PortMap {
        ip: item.get("host_ip").and_then(Node::text).map(str::to_string),
        host,
        container: (target, target),
        protocol: item
            .get("protocol")
            .and_then(Node::text)
            .unwrap_or("tcp")
            .to_ascii_lowercase(),
        text: format!("target {target}"),
    })
}

/// A CMD-SHELL test that is only a curl or wget call (with `|| exit 1`) is an http probe.
pub(super) fn shell_http_probe(s: &str) -> Option<(u16, String)> {
    let mut s = s.trim();
    for tail in ["|| exit 1", "||exit 1", "|| exit", "|| false"] {
        if let Some(rest) = s.strip_suffix(tail) {
            s = rest.trim_end();
            break;
        }
    }
    if s.contains(['|', '&', ';', '>', '<', '`', '$', '\n']) {
        return None;
    }
    http_probe(&split_words(s)?)
}

/// `curl -f http://localhost:PORT/path` or `wget -q --spider http://...`, with options that do
/// not change what is checked: the port and path of the request.
pub(super) fn http_probe(words: &[String]) -> Option<(u16, String)> {
    let tool = words.first()?.rsplit('/').next()?;
    // Short options without an argument, and options (short or long) that take one.
    let (flags, with_arg, long_flags): (&str, &[&str], &[&str]) = match tool {
        "curl" => (
            "fsSLqIk",
            &[
                "-o",
                "--output",
                "-m",
                "--max-time",
                "--connect-timeout",
                "--retry",
                "-w",
                "--write-out",
            ],
            &[
                "--fail",
                "--silent",
                "--show-error",
                "--location",
                "--head",
                "--fail-with-body",
                "--insecure",
            ],
        ),
        "wget" => (
            "q",
            &[
                "-O",
                "--output-document",
                "-T",
                "--timeout",
                "-t",
                "--tries",
            ],
            &[
                "--spider",
                "--quiet",
                "--no-verbose",
                "-nv",
                "--no-check-certificate",
            ],
        ),
        _ => return None,
    };
    let mut url = None;
    let mut i = 1;
    while i < words.len() {
        let w = words[i].as_str();
        if with_arg.contains(&w) {
            i += 2;
            continue;
        }
        if long_flags.contains(&w)
            || with_arg
                .iter()
                .any(|a| a.starts_with("--") && w.starts_with(&format!("{a}=")))
        {
            i += 1;
            continue;
        }
        if let Some(cluster) = w
            .strip_prefix('-')
            .filter(|c| !c.starts_with('-') && !c.is_empty())
        {
            // A cluster of short flags; one that takes an argument ends it (`-qO-`, `-so /dev/null`).
            let mut takes_next = false;
            for (j, c) in cluster.char_indices() {
                if flags.contains(c) {
                    continue;
                }
                if with_arg.contains(&format!("-{c}").as_str()) {
                    takes_next = j + c.len_utf8() == cluster.len();
                    break;
                }
                return None;
            }
            i += if takes_next { 2 } else { 1 };
            continue;
        }
        if w.starts_with('-') || url.is_some() {
            return None;
        }
        url = Some(w);
        i += 1;
    }
    let rest = url?.strip_prefix("http://")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') => (h, p.parse::<u16>().ok()?),
        _ => (authority, 80),
    };
    if !matches!(host, "localhost" | "127.0.0.1" | "0.0.0.0" | "[::1]") {
        return None;
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Some((port, path))
}

/// A Go duration as compose writes them: `1m30s`, `10s`, `500ms`, `1.5h`, `0`.
pub(super) fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}; expected a number with a unit such as \"30s\" or \"1m30s\""
        )
    };
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += num * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A compose byte size: a number with an optional `b`, `k`, `m`, `g`, `t` unit (any case, an
/// optional `i` and `b`), all powers of 1024 as docker reads them.
pub(super) fn compose_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let num: f64 = s[..num_len].parse().ok()?;
    let unit = s[num_len..].trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        _ => return None,
    };
    let bytes = (num * scale).floor();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go durations and docker sizes as compose writes them.
    #[test]
    fn durations_and_sizes() {
        for (s, want) in [
            ("10s", 10_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("1.5h", 5_400_000),
            ("0", 0),
        ] {
            assert_eq!(go_duration(s).unwrap().as_millis(), want, "{s}");
        }
        for bad in ["10", "x", "5 s", ""] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
        for (s, want) in [
            ("512M", 512 << 20),
            ("512m", 512 << 20),
            ("1g", 1 << 30),
            ("1GB", 1 << 30),
            ("2048", 2048),
            ("1.5k", 1536),
            ("64mib", 64 << 20),
        ] {
            assert_eq!(compose_bytes(s), Some(want), "{s}");
        }
        assert_eq!(compose_bytes("12x"), None);
    }

    /// curl and wget probes that only GET a local URL are http checks; anything else is not.
    #[test]
    fn http_probes() {
        let w = |s: &str| split_words(s).unwrap();
        let cases: &[(&str, Option<(u16, &str)>)] = &[
            (
                "curl -f http://localhost:3000/api/health",
                Some((3000, "/api/health")),
            ),
            ("curl --fail --silent http://127.0.0.1/", Some((80, "/"))),
            (
                "curl -sf -o /dev/null http://localhost:8080",
                Some((8080, "/")),
            ),
            ("curl -fs --max-time 2 http://0.0.0.0:9/x", Some((9, "/x"))),
            (
                "wget --no-verbose --tries=1 --spider http://localhost:8080/ping",
                Some((8080, "/ping")),
            ),
            ("wget -qO- http://localhost:5/", Some((5, "/"))),
            ("wget -q -O - http://localhost:5/", Some((5, "/"))),
            ("curl -f https://localhost/", None),
            ("curl -f http://example.com/", None),
            ("curl -X POST http://localhost/", None),
            ("curl -f http://localhost/a http://localhost/b", None),
            ("nc -z localhost 80", None),
        ];
        for (cmd, want) in cases {
            let got = http_probe(&w(cmd));
            assert_eq!(got.as_ref().map(|(p, s)| (*p, s.as_str())), *want, "{cmd}");
        }
        assert_eq!(
            shell_http_probe("curl -f http://localhost:1/h || exit 1"),
            Some((1, "/h".into()))
        );
        assert_eq!(
            shell_http_probe("curl -f http://localhost:1/h && echo ok"),
            None
        );
    }

    /// Port mappings in the short syntax.
    #[test]
    fn short_ports() {
        let p = short_port("127.0.0.1:8000-8001:80/udp").unwrap();
        assert_eq!(
            (p.ip.as_deref(), p.host, p.container, p.protocol.as_str()),
            (Some("127.0.0.1"), Some((8000, 8001)), (80, 80), "udp")
        );
        let p = short_port("3000").unwrap();
        assert_eq!((p.host, p.container), (None, (3000, 3000)));
        let p = short_port("127.0.0.1::80").unwrap();
        assert_eq!((p.host, p.container), (None, (80, 80)));
        for bad in ["x:80", "1:2:3:4", "0"] {
            assert!(short_port(bad).is_err(), "{bad}");
        }
    }
}
