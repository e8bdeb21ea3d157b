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
    "worker_priority",
    "proxy",
    "proxy.http",
    "proxy.https",
    "proxy.header_read_timeout",
    "proxy.handshake_timeout",
    "proxy.max_connections_per_ip",
    "proxy.max_header_size",
    "proxy.max_headers",
    "proxy.access_log",
    "proxy.access_log_max_size",
    "proxy.access_log_max_files",
    "admin",
    "admin.listen",
    "admin.public",
    "certificate",
    "certificate.cert",
    "certificate.key",
    "acme",
    "acme.email",
    "acme.directory",
    "acme.ca",
    "acme.renew_before",
    "docker",
    "docker.socket",
    "docker.network",
];

pub mod defaults {
    use std::time::Duration;

    pub const PORT_RANGE: (u16, u16) = (20000, 29999);
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_CONNECTIONS_PER_IP: u32 = 256;
    pub const MAX_HEADER_SIZE: u64 = 16 << 10;
    pub const MAX_HEADERS: u32 = 100;
    pub const ACCESS_LOG_MAX_SIZE: u64 = 100 << 20;
    pub const ACCESS_LOG_MAX_FILES: u32 = 5;
    pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
    pub const ACME_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
    pub const DOCKER_NETWORK: &str = "chain";
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub port_range: (u16, u16),
    /// Proxy worker threads (None: one per CPU, at most 2 — chaind is not the workload).
    pub worker_threads: Option<usize>,
    /// Nice value of the proxy worker threads (None: left as chaind's).
    pub worker_priority: Option<i32>,
    pub proxy: ProxyConfig,
    pub certificates: Vec<CertificateConfig>,
    pub admin: AdminConfig,
    pub acme: AcmeConfig,
    pub docker: DockerConfig,
}

/// `[docker]`: the engine container units run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// The engine's Unix socket.
    pub socket: PathBuf,
    /// The bridge network every container joins and chain reaches containers on.
    pub network: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: chain_agent::driver::container::default_socket(),
            network: defaults::DOCKER_NETWORK.to_string(),
        }
    }
}

/// `[acme]`: how certificates for routes with `acme = true` are obtained (src/proxy/acme.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// Contact address given to the CA (without `mailto:`).
    pub email: Option<String>,
    /// The ACME server's directory URL.
    pub directory: String,
    /// A PEM root that the directory's HTTPS is verified against, instead of the system's.
    pub ca: Option<PathBuf>,
    /// Renew a certificate when it expires within this time.
    pub renew_before: Duration,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            email: None,
            directory: defaults::ACME_DIRECTORY.to_string(),
            ca: None,
            renew_before: defaults::ACME_RENEW_BEFORE,
        }
    }
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
    /// The access log's file (absolute: relative paths are resolved against the root); None = off.
    pub access_log: Option<PathBuf>,
    /// Rotate the access log past this many bytes (0 = never).
    pub access_log_max_size: u64,
    /// Rotated access-log files kept.
    pub access_log_max_files: u32,
}

/// `[admin]`: the admin listener (`GET /metrics`), off by default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    /// Allow a non-loopback `listen` (the listener has no authentication).
    pub public: bool,
}

/// One `[[certificate]]`: a PEM chain and its key, served for the names in the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    /// The proxy workers to run: `worker_threads` of them, else one per CPU, at most 2; at
    /// `worker_priority`.
    pub fn proxy_workers(&self) -> crate::proxy::listen::Workers {
        let count = self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().min(2))
                .unwrap_or(1)
        });
        crate::proxy::listen::Workers {
            count,
            priority: self.worker_priority,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port_range: defaults::PORT_RANGE,
            worker_threads: None,
            worker_priority: None,
            proxy: ProxyConfig {
                http: None,
                https: None,
                header_read_timeout: defaults::HEADER_READ_TIMEOUT,
                handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
                max_connections_per_ip: defaults::MAX_CONNECTIONS_PER_IP,
                max_header_size: defaults::MAX_HEADER_SIZE,
                max_headers: defaults::MAX_HEADERS,
                access_log: None,
                access_log_max_size: defaults::ACCESS_LOG_MAX_SIZE,
                access_log_max_files: defaults::ACCESS_LOG_MAX_FILES,
            },
            certificates: Vec::new(),
            admin: AdminConfig::default(),
            acme: AcmeConfig::default(),
            docker: DockerConfig::default(),
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
    if let Some(f) = top.take(&mut d, "worker_priority") {
        cfg.worker_priority = f.int(&mut d, -20, 19).map(|n| n as i32);
    }
    if let Some(f) = top.take(&mut d, "proxy") {
        if let Some(t) = f.table(&mut d) {
            proxy(&mut d, t, &mut cfg.proxy);
        }
        cfg.proxy.access_log = cfg.proxy.access_log.take().map(|p| root.join(p));
    }
    if let Some(f) = top.take(&mut d, "admin") {
        if let Some(t) = f.table(&mut d) {
            admin(&mut d, t, &mut cfg.admin);
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
    if let Some(f) = top.take(&mut d, "acme") {
        if let Some(t) = f.table(&mut d) {
            acme(&mut d, t, root, &mut cfg.acme);
        }
    }
    if let Some(f) = top.take(&mut d, "docker") {
        if let Some(t) = f.table(&mut d) {
            docker(&mut d, t, root, &mut cfg.docker);
        }
    }
    top.end(&mut d);
    if d.has_errors() {
        Err(d.into_errors())
    } else {
        Ok(cfg)
    }
}

fn docker(d: &mut Decoder<'_>, mut t: Table<'_, '_>, root: &Path, c: &mut DockerConfig) {
    if let Some(f) = t.take(d, "socket") {
        if let Some(s) = f.non_empty_string(d) {
            let s = s.trim_start_matches("unix://");
            if f.value
                .get_ref()
                .as_str()
                .is_some_and(|v| v.contains("://") && !v.starts_with("unix://"))
            {
                f.error(
                    d,
                    "only Unix sockets are supported",
                    Some("write socket = \"/var/run/docker.sock\"".into()),
                );
            } else {
                c.socket = root.join(s);
            }
        }
    }
    if let Some(f) = t.take(d, "network") {
        if let Some(n) = f.non_empty_string(d) {
            let valid = n
                .chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_alphanumeric())
                && n.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'));
            if !valid || matches!(n.as_str(), "host" | "none" | "bridge") {
                f.error(
                    d,
                    format!("invalid network {n:?} for chain's containers"),
                    Some("name a user-defined bridge network (created when missing), such as \"chain\"".into()),
                );
            } else {
                c.network = n;
            }
        }
    }
    t.end(d);
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
    access_log(d, &mut t, p);
    t.end(d);
}

fn acme(d: &mut Decoder<'_>, mut t: Table<'_, '_>, root: &Path, a: &mut AcmeConfig) {
    if let Some(f) = t.take(d, "email") {
        if let Some(e) = f.string(d) {
            let e = e.trim().trim_start_matches("mailto:").to_string();
            let valid = e.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && host.contains('.') && !host.starts_with('.')
            }) && !e
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',');
            if valid {
                a.email = Some(e);
            } else {
                let hint = Some("write email = \"ops@example.com\"".to_string());
                f.error(d, format!("invalid email address {e:?}"), hint);
            }
        }
    }
    if let Some(f) = t.take(d, "directory") {
        if let Some(u) = f.non_empty_string(d) {
            match u.parse::<hyper::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {
                    a.directory = u;
                }
                _ => {
                    let hint = format!(
                        "an https:// URL, e.g. \"{}\" (Let's Encrypt)",
                        defaults::ACME_DIRECTORY
                    );
                    f.error(d, format!("invalid ACME directory URL {u:?}"), Some(hint));
                }
            }
        }
    }
    if let Some(f) = t.take(d, "ca") {
        a.ca = f.non_empty_string(d).map(|p| root.join(p));
    }
    if let Some(v) = t
        .take(d, "renew_before")
        .and_then(|f| f.positive_duration(d))
    {
        a.renew_before = v;
    }
    t.end(d);
}

/// `proxy.access_log*` (docs/config.md; the writer is src/proxy/access_log.rs).
fn access_log(d: &mut Decoder<'_>, t: &mut Table<'_, '_>, p: &mut ProxyConfig) {
    if let Some(f) = t.take(d, "access_log") {
        if let Some(path) = f.non_empty_string(d).map(PathBuf::from) {
            // DIR/logs holds one `<unit>.log` per unit, with rotation and `chainctl logs`.
            if path.components().next() == Some(std::path::Component::Normal("logs".as_ref())) {
                let hint = Some("write access_log = \"proxy/access.log\"".to_string());
                f.error(
                    d,
                    "the access log cannot be in DIR/logs, where the units' logs are",
                    hint,
                );
            } else {
                p.access_log = Some(path);
            }
        }
    }
    if let Some(v) = t.take(d, "access_log_max_size").and_then(|f| f.size(d)) {
        p.access_log_max_size = v;
    }
    if let Some(v) = t
        .take(d, "access_log_max_files")
        .and_then(|f| f.u32(d, 0, 100))
    {
        p.access_log_max_files = v;
    }
}

/// `[admin]`: a non-loopback address needs `public = true`, because the listener has no
/// authentication and its metrics name every unit and route.
fn admin(d: &mut Decoder<'_>, mut t: Table<'_, '_>, a: &mut AdminConfig) {
    let listen = t.take(d, "listen");
    if let Some(v) = t.take(d, "public").and_then(|f| f.bool(d)) {
        a.public = v;
    }
    if let Some(f) = listen {
        if let Some(addr) = address(d, &f) {
            if addr.ip().is_loopback() || a.public {
                a.listen = Some(addr);
            } else {
                let hint = format!(
                    "the admin listener has no authentication and its metrics name every unit and route: \
                     write listen = \"127.0.0.1:{}\" and scrape through a tunnel, or add public = true \
                     if a firewall keeps it private",
                    addr.port()
                );
                f.error(
                    d,
                    format!("the admin listener {addr} is not on a loopback address"),
                    Some(hint),
                );
            }
        }
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

    /// `worker_priority` is a nice value: -20..19, absent leaves the workers' as chaind's.
    #[test]
    fn worker_priority_range() {
        let ok = |text: &str| parse(Path::new("chaind.toml"), text, Path::new("/r")).unwrap();
        assert_eq!(ok("worker_priority = -5\n").worker_priority, Some(-5));
        assert_eq!(
            ok("worker_priority = 19\n").proxy_workers().priority,
            Some(19)
        );
        assert_eq!(ok("").proxy_workers().priority, None);
        for bad in ["worker_priority = -21\n", "worker_priority = 20\n"] {
            let e = errors(bad);
            assert!(e[0].starts_with("chaind.toml:1:19"), "{e:#?}");
        }
        let e = errors("worker_priority = \"high\"\n");
        assert!(e[0].starts_with("chaind.toml:1:19"), "{e:#?}");
    }

    /// The admin listener must be loopback unless `public = true`, and the hint says why; the
    /// access log path is relative to the root.
    #[test]
    fn admin_and_access_log() {
        let e = errors("[admin]\nlisten = \"0.0.0.0:9090\"\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains("2:10") && e[0].contains("not on a loopback address"),
            "{e:#?}"
        );
        assert!(e[0].contains("no authentication") && e[0].contains("public = true"));
        let ok = |text: &str| parse(Path::new("chaind.toml"), text, Path::new("/r")).unwrap();
        let c = ok("[admin]\nlisten = \"0.0.0.0:9090\"\npublic = true\n");
        assert_eq!(c.admin.listen, Some("0.0.0.0:9090".parse().unwrap()));
        let c = ok("[admin]\nlisten = \"[::1]:9090\"\n");
        assert_eq!(c.admin.listen, Some("[::1]:9090".parse().unwrap()));
        assert_eq!(Config::default().admin.listen, None);
        let c = ok("[proxy]\naccess_log = \"proxy/access.log\"\naccess_log_max_files = 2\n");
        assert_eq!(
            c.proxy.access_log,
            Some(PathBuf::from("/r/proxy/access.log"))
        );
        let e = errors("[proxy]\naccess_log = \"logs/access.log\"\n");
        assert!(e[0].contains("units' logs"), "{e:#?}");
        assert_eq!(c.proxy.access_log_max_files, 2);
        assert_eq!(c.proxy.access_log_max_size, defaults::ACCESS_LOG_MAX_SIZE);
        assert_eq!(Config::default().proxy.access_log, None);
    }

    /// `[acme]`: defaults to Let's Encrypt and 30 days; `ca` is under the root; a bad email,
    /// a non-https directory and a zero duration are reported with hints.
    #[test]
    fn acme_section() {
        let d = Config::default().acme;
        assert_eq!(d.directory, defaults::ACME_DIRECTORY);
        assert_eq!(d.renew_before, Duration::from_secs(30 * 86_400));
        assert_eq!((d.email, d.ca), (None, None));
        let c = parse(
            Path::new("chaind.toml"),
            "[acme]\nemail = \"mailto:ops@example.com\"\ndirectory = \"https://127.0.0.1:14000/dir\"\nca = \"pebble.pem\"\nrenew_before = \"10d\"\n",
            Path::new("/r"),
        )
        .unwrap();
        assert_eq!(c.acme.email.as_deref(), Some("ops@example.com"));
        assert_eq!(c.acme.directory, "https://127.0.0.1:14000/dir");
        assert_eq!(c.acme.ca, Some(PathBuf::from("/r/pebble.pem")));
        assert_eq!(c.acme.renew_before, Duration::from_secs(10 * 86_400));
        let e = errors("[acme]\nemail = \"ops\"\ndirectory = \"http://ca.example/dir\"\nrenew_before = \"0s\"\nemial = 1\n");
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].contains("2:9") && e[0].contains("invalid email"),
            "{e:#?}"
        );
        assert!(
            e[1].contains("invalid ACME directory URL") && e[1].contains("https://"),
            "{e:#?}"
        );
        assert!(e[2].contains("renew_before"), "{e:#?}");
        assert!(e[3].contains("unknown key `emial`"), "{e:#?}");
    }
}
