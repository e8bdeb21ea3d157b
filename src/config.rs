//! chaind's own configuration: `DIR/chaind.toml` (or `--config PATH`).
//!
//! The file is optional and every key has a default; command-line flags override it. It is
//! read once at start-up: changing it takes a restart of chaind (certificate *files* named in it
//! are watched and reloaded without one). Problems are reported like unit-file problems, with
//! file:line:column and a hint, and a broken file stops chaind from starting rather than being
//! half-applied. docs/config.md documents every key; a test checks it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use crate::unit::decode::{Decoder, Field, Table};
use crate::unit::error::UnitError;

/// Every key of chaind.toml, as dotted paths (docs/config.md documents each).
pub const KEYS: &[&str] = &[
    "port_range",
    "worker_threads",
    "proxy",
    "proxy.http",
    "proxy.https",
    "proxy.header_read_timeout",
    "proxy.handshake_timeout",
    "proxy.max_connections_per_ip",
    "proxy.max_header_size",
    "proxy.max_headers",
    "certificate",
    "certificate.cert",
    "certificate.key",
];

pub mod defaults {
    use std::time::Duration;

    pub const PORT_RANGE: (u16, u16) = (20000, 29999);
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_CONNECTIONS_PER_IP: u32 = 256;
    pub const MAX_HEADER_SIZE: u64 = 16 << 10;
    pub const MAX_HEADERS: u32 = 100;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub port_range: (u16, u16),
    /// Tokio worker threads (None: one per CPU, at most 2 — chaind is not the workload).
    pub worker_threads: Option<usize>,
    pub proxy: ProxyConfig,
    pub certificates: Vec<CertificateConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// A client must send its request headers within this time (slowloris).
    pub header_read_timeout: Duration,
    /// A client must finish the TLS handshake within this time.
    pub handshake_timeout: Duration,
    /// Open connections allowed per client IP; 0 = no limit.
    pub max_connections_per_ip: u32,
    /// Largest request head (request line + headers) in bytes; larger gets 431.
    pub max_header_size: u64,
    /// Most request header fields; more gets 431.
    pub max_headers: u32,
}

/// One `[[certificate]]`: a PEM chain and its key, served for the names in the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port_range: defaults::PORT_RANGE,
            worker_threads: None,
            proxy: ProxyConfig {
                http: None,
                https: None,
                header_read_timeout: defaults::HEADER_READ_TIMEOUT,
                handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
                max_connections_per_ip: defaults::MAX_CONNECTIONS_PER_IP,
                max_header_size: defaults::MAX_HEADER_SIZE,
                max_headers: defaults::MAX_HEADERS,
            },
            certificates: Vec::new(),
        }
    }
}

/// Reads `path`; a missing file is the default configuration. Relative paths in the file are
/// relative to `root`.
pub fn load(path: &Path, root: &Path) -> Result<Config, Vec<UnitError>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text, root),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(vec![UnitError::at(
            path,
            crate::unit::Pos { line: 0, column: 0 },
            "",
            format!("cannot read the configuration: {e}"),
            None,
        )]),
    }
}

/// Pure: parses chaind.toml; every problem is reported at once.
pub fn parse(path: &Path, text: &str, root: &Path) -> Result<Config, Vec<UnitError>> {
    let mut d = Decoder::new(path, text);
    let syntax_errors = crate::unit::syntax::check(text);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            d.error(e.at, "", e.message, e.hint);
        }
        return Err(d.into_errors());
    }
    let root_table = match DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            d.error(
                e.span().map_or(0, |s| s.start),
                "",
                e.message().to_string(),
                None,
            );
            return Err(d.into_errors());
        }
    };
    let mut cfg = Config::default();
    let mut top = Table::root(&d, &root_table);
    if let Some(f) = top.take(&mut d, "port_range") {
        if let Some(r) = port_range(&mut d, &f) {
            cfg.port_range = r;
        }
    }
    if let Some(f) = top.take(&mut d, "worker_threads") {
        cfg.worker_threads = f.u32(&mut d, 1, 64).map(|n| n as usize);
    }
    if let Some(f) = top.take(&mut d, "proxy") {
        if let Some(t) = f.table(&mut d) {
            proxy(&mut d, t, &mut cfg.proxy);
        }
    }
    if let Some(f) = top.take(&mut d, "certificate") {
        let hint = Some("write each certificate as its own [[certificate]] table".to_string());
        for mut t in f.tables(&mut d, hint).unwrap_or_default() {
            let cert = required_path(&mut d, &mut t, "cert", root);
            let key = required_path(&mut d, &mut t, "key", root);
            t.end(&mut d);
            if let (Some(cert), Some(key)) = (cert, key) {
                cfg.certificates.push(CertificateConfig { cert, key });
            }
        }
    }
    top.end(&mut d);
    if d.has_errors() {
        Err(d.into_errors())
    } else {
        Ok(cfg)
    }
}

fn proxy(d: &mut Decoder<'_>, mut t: Table<'_, '_>, p: &mut ProxyConfig) {
    if let Some(f) = t.take(d, "http") {
        p.http = address(d, &f);
    }
    if let Some(f) = t.take(d, "https") {
        p.https = address(d, &f);
    }
    if let Some(v) = t
        .take(d, "header_read_timeout")
        .and_then(|f| f.positive_duration(d))
    {
        p.header_read_timeout = v;
    }
    if let Some(v) = t
        .take(d, "handshake_timeout")
        .and_then(|f| f.positive_duration(d))
    {
        p.handshake_timeout = v;
    }
    if let Some(v) = t
        .take(d, "max_connections_per_ip")
        .and_then(|f| f.u32(d, 0, 1_000_000))
    {
        p.max_connections_per_ip = v;
    }
    if let Some(f) = t.take(d, "max_header_size") {
        if let Some(v) = f.size(d) {
            if (8 << 10..=1 << 20).contains(&v) {
                p.max_header_size = v;
            } else {
                f.error(d, "`max_header_size` must be from 8KiB to 1MiB", None);
            }
        }
    }
    if let Some(v) = t.take(d, "max_headers").and_then(|f| f.u32(d, 8, 10_000)) {
        p.max_headers = v;
    }
    t.end(d);
}

fn address(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<SocketAddr> {
    let s = f.string(d)?;
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let hint = if s.parse::<u16>().is_ok() {
                format!("write \"0.0.0.0:{s}\" (all interfaces) or \"127.0.0.1:{s}\"")
            } else {
                "write an IP address and a port, e.g. \"0.0.0.0:443\" or \"[::]:443\"".to_string()
            };
            f.error(d, format!("invalid listen address {s:?}"), Some(hint));
            None
        }
    }
}

fn port_range(d: &mut Decoder<'_>, f: &Field<'_, '_>) -> Option<(u16, u16)> {
    let s = f.string(d)?;
    let parsed = s.split_once('-').and_then(|(a, b)| {
        let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
        (a > 0 && a <= b).then_some((a, b))
    });
    if parsed.is_none() {
        f.error(
            d,
            format!("invalid port range {s:?}"),
            Some("write \"20000-29999\": START-END with 1 <= START <= END".into()),
        );
    }
    parsed
}

fn required_path(
    d: &mut Decoder<'_>,
    t: &mut Table<'_, '_>,
    key: &'static str,
    root: &Path,
) -> Option<PathBuf> {
    match t.take(d, key) {
        Some(f) => f.non_empty_string(d).map(|p| root.join(p)),
        None => {
            t.missing(
                d,
                key,
                format!("missing required key `{key}` in [[certificate]]"),
                Some(format!("add {key} = \"path/to/file.pem\"")),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(Path::new("chaind.toml"), text, Path::new("/r"))
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// A full file parses; relative paths are under the root; absent keys keep defaults.
    #[test]
    fn parses() {
        let c = parse(
            Path::new("chaind.toml"),
            r#"port_range = "30000-30099"
worker_threads = 1
[proxy]
http = "0.0.0.0:80"
https = "[::]:443"
max_connections_per_ip = 0
[[certificate]]
cert = "tls/a.pem"
key = "/etc/a.key"
"#,
            Path::new("/r"),
        )
        .unwrap();
        assert_eq!(c.port_range, (30000, 30099));
        assert_eq!(c.worker_threads, Some(1));
        assert_eq!(c.proxy.https, Some("[::]:443".parse().unwrap()));
        assert_eq!(c.proxy.max_connections_per_ip, 0);
        assert_eq!(c.proxy.header_read_timeout, defaults::HEADER_READ_TIMEOUT);
        assert_eq!(c.certificates[0].cert, PathBuf::from("/r/tls/a.pem"));
        assert_eq!(c.certificates[0].key, PathBuf::from("/etc/a.key"));
        assert_eq!(
            parse(Path::new("x"), "", Path::new("/")).unwrap(),
            Config::default()
        );
    }

    /// Every problem at once, with positions and hints.
    #[test]
    fn reports_problems() {
        let e = errors("port_range = \"9-1\"\n[proxy]\nhttp = \"80\"\nhttps_port = 1\n[[certificate]]\ncert = \"a\"\n");
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].starts_with("chaind.toml:1:14: port_range: invalid port range"),
            "{e:#?}"
        );
        assert!(
            e[1].contains("3:8") && e[1].contains("0.0.0.0:80"),
            "{e:#?}"
        );
        assert!(
            e[2].contains("4:1") && e[2].contains("unknown key `https_port` in [proxy]"),
            "{e:#?}"
        );
        assert!(e[3].contains("missing required key `key`"), "{e:#?}");
    }
}
