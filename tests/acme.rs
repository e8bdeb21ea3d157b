//! Certificates by ACME against a real ACME server (Debian's `pebble`): a route with
//! `acme = true` gets a certificate through HTTP-01 answered by chaind's own HTTP listener, it
//! is stored under `DIR/acme/<host>/` and reused after a restart without a new order, and a
//! failed validation is reported with the host and the server's problem, then retried later.
//!
//! Without pebble these tests print a SKIP line and pass, unless `CI=true`: then a missing
//! pebble is a failure (`.ci/run` installs it).
#[path = "support/acme.rs"]
mod pebble;
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use pebble::{pebble_binary, Pebble};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const DOMAIN: &str = "app.chain.test";

/// The pebble binary; None (after a SKIP line) when it is missing and CI is not set.
fn pebble_or_skip(test: &str) -> Option<PathBuf> {
    match pebble_binary() {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("pebble is not installed (apt-get install pebble); CI=true requires it")
        }
        None => {
            println!("SKIP {test}: pebble is not installed (apt-get install pebble)");
            None
        }
    }
}

fn connector(roots: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(CertificateDer::from(r.to_vec())).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(cfg))
}

/// One HTTPS GET over HTTP/1.1 with `sni`, verified by `tls`: (status, body, leaf certificate).
async fn https_get(
    tls: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
    path: &str,
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    let stream = tls.connect(name, tcp).await?;
    let leaf = stream.get_ref().1.peer_certificates().unwrap_or_default()[0].to_vec();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", sni)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await?
        .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned(), leaf))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// pebble's issuing root, from its management interface (over HTTPS, verified).
fn pebble_root(rt: &tokio::runtime::Runtime, p: &Pebble) -> Vec<u8> {
    let tls = connector(&[p.tls_ca_der()]);
    let (status, pem, _) = rt
        .block_on(https_get(&tls, p.management, "localhost", "/roots/0"))
        .expect("GET /roots/0 from pebble's management interface");
    assert_eq!(status, 200, "{pem}");
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pebble's root in PEM")
        .to_vec()
}

fn chaind_toml(http_port: u16, p: &Pebble) -> String {
    format!(
        r#"[proxy]
http = "127.0.0.1:{http_port}"
https = "127.0.0.1:0"

[acme]
email = "ops@example.com"
directory = "{dir}"
ca = "{ca}"
"#,
        dir = p.directory,
        ca = p.tls_ca.display(),
    )
}

fn acme_unit() -> String {
    demo_unit(
        1,
        "v1",
        &format!("\n[[route]]\nhost = \"{DOMAIN}\"\nacme = true\n"),
    )
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A route with `acme = true` gets a certificate from pebble through HTTP-01 answered by
/// chaind's HTTP listener: HTTPS with SNI = the host then verifies against pebble's root and
/// reaches the app. The certificate and account are stored privately under `DIR/acme`, and a
/// restarted chaind serves the stored certificate without placing a new order.
#[test]
fn issues_over_http01_and_reuses_after_restart() {
    let Some(bin) = pebble_or_skip("issues_over_http01_and_reuses_after_restart") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let http_port = free_ports(1)[0];
    let pebble = Pebble::start(&bin, work.path(), http_port);
    let rt = runtime();
    let root = pebble_root(&rt, &pebble);
    let tls = connector(&[&root]);

    let started = Instant::now();
    let unit = acme_unit();
    let mut d = TestDaemon::start_full(
        &[("app", &unit)],
        &[],
        Some(&chaind_toml(http_port, &pebble)),
    );
    d.wait_running("app", 1);
    let addr = d.https_addr();
    let https_ok = |rt: &tokio::runtime::Runtime| {
        rt.block_on(https_get(&tls, addr, DOMAIN, "/"))
            .ok()
            .filter(|(status, _, _)| *status == 200)
    };
    let (_, body, leaf) = eventually(Duration::from_secs(60), "an ACME certificate", || {
        https_ok(&rt)
    });
    let issued_in = started.elapsed();
    println!("ACME: chaind start to a verified HTTPS answer in {issued_in:?}");
    assert!(body.contains("v1"), "{body}");
    assert_eq!(pebble.orders(), 1, "{}", pebble.log());

    let host_dir = d.root.join("acme").join(DOMAIN);
    let cert_pem = std::fs::read(host_dir.join("cert.pem")).unwrap();
    assert_eq!(mode(&host_dir.join("key.pem")), 0o600);
    assert_eq!(mode(&d.root.join("acme/account.json")), 0o600);
    let log = d.daemon_log();
    let obtained = log
        .lines()
        .find(|l| l.contains("obtained an ACME certificate"));
    assert!(obtained.is_some(), "{}", tail(&log, 40));
    println!("chaind: {}", obtained.unwrap_or_default());

    d.terminate();
    d.spawn();
    d.wait_running("app", 1);
    let addr = d.https_addr();
    let (_, _, leaf_again) = eventually(
        Duration::from_secs(10),
        "the stored certificate after a restart",
        || {
            rt.block_on(https_get(&tls, addr, DOMAIN, "/"))
                .ok()
                .filter(|(status, _, _)| *status == 200)
        },
    );
    assert_eq!(leaf_again, leaf, "the same certificate is served");
    assert_eq!(
        std::fs::read(host_dir.join("cert.pem")).unwrap(),
        cert_pem,
        "the stored certificate was not replaced"
    );
    assert!(
        d.daemon_log()
            .contains("loaded the stored ACME certificate"),
        "{}",
        tail(&d.daemon_log(), 40)
    );
    // Give a wrongly started order the time it took to issue the first certificate.
    std::thread::sleep(issued_in.min(Duration::from_secs(3)));
    assert_eq!(pebble.orders(), 1, "no new order after the restart");
}

/// When the CA cannot validate (its HTTP-01 request finds nothing listening), chaind logs the
/// host and the server's problem, schedules a retry with backoff instead of looping, and keeps
/// serving HTTPS with its other certificates.
#[test]
fn failed_validation_is_reported_and_backed_off() {
    let Some(bin) = pebble_or_skip("failed_validation_is_reported_and_backed_off") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // pebble validates on a port where nothing listens, not on chaind's.
    let ports = free_ports(2);
    let (chaind_http, dead_port) = (ports[0], ports[1]);
    let pebble = Pebble::start(&bin, work.path(), dead_port);
    let unit = acme_unit();
    let d = TestDaemon::start_full(
        &[("app", &unit)],
        &[],
        Some(&chaind_toml(chaind_http, &pebble)),
    );
    let log = eventually(Duration::from_secs(60), "the validation failure", || {
        let log = d.daemon_log();
        log.contains(&format!("ACME validation of {DOMAIN} failed"))
            .then_some(log)
    });
    let line = log
        .lines()
        .find(|l| l.contains("ACME validation of"))
        .unwrap();
    println!("chaind: {line}");
    assert!(line.contains("connection"), "names the problem: {line}");
    assert!(line.contains("retry_in_s=60"), "backs off: {line}");
    // One attempt, not a loop: no second order right after the first.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pebble.orders(), 1, "{}", pebble.log());
    assert!(!d.root.join("acme").join(DOMAIN).join("cert.pem").exists());
}

/// A stored certificate that expires within `renew_before` is served at start and renewed at
/// once: a new order, and the new certificate replaces it on disk and for new connections.
#[test]
fn renews_a_stored_certificate_close_to_expiry() {
    let Some(bin) = pebble_or_skip("renews_a_stored_certificate_close_to_expiry") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let http_port = free_ports(1)[0];
    let pebble = Pebble::start(&bin, work.path(), http_port);
    let rt = runtime();
    let tls = connector(&[&pebble_root(&rt, &pebble)]);
    let unit = acme_unit();
    let mut d = TestDaemon::start_full(
        &[("app", &unit)],
        &[],
        Some(&chaind_toml(http_port, &pebble)),
    );
    let host_dir = d.root.join("acme").join(DOMAIN);
    eventually(Duration::from_secs(60), "the first certificate", || {
        host_dir.join("cert.pem").exists().then_some(())
    });
    d.terminate();

    // Replace it with a certificate that expires tomorrow (issued 89 days ago).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let day = Duration::from_secs(86_400);
    let mut params = rcgen::CertificateParams::new(vec![DOMAIN.to_string()]).unwrap();
    params.not_before = epoch + now - 89 * day;
    params.not_after = epoch + now + day;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let old = params.self_signed(&key).unwrap();
    std::fs::write(host_dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(host_dir.join("cert.pem"), old.pem()).unwrap();

    d.spawn();
    d.wait_running("app", 1);
    let addr = d.https_addr();
    let (_, _, leaf) = eventually(Duration::from_secs(60), "the renewed certificate", || {
        rt.block_on(https_get(&tls, addr, DOMAIN, "/"))
            .ok()
            .filter(|(status, _, _)| *status == 200)
    });
    assert_ne!(leaf, old.der().to_vec());
    assert_ne!(
        std::fs::read(host_dir.join("cert.pem")).unwrap(),
        old.pem().as_bytes()
    );
    let log = d.daemon_log();
    assert!(
        log.contains(
            "loaded the stored ACME certificate host=\"app.chain.test\" expires=in 0 days"
        ),
        "{}",
        tail(&log, 40)
    );
    assert_eq!(pebble.orders(), 2, "{}", pebble.log());
}

/// Routes that ask for ACME on a chaind without an HTTP listener get a clear error in the log
/// naming the hosts and the missing setting (no pebble needed).
#[test]
fn missing_http_listener_is_reported() {
    let unit = acme_unit();
    let d = TestDaemon::start_full(
        &[("app", &unit)],
        &[],
        Some("[proxy]\nhttps = \"127.0.0.1:0\"\n"),
    );
    eventually(
        Duration::from_secs(10),
        "the missing-listener error",
        || {
            let log = d.daemon_log();
            log.lines()
                .any(|l| {
                    l.contains("no HTTP listener for HTTP-01")
                        && l.contains(DOMAIN)
                        && l.contains("[proxy] http")
                })
                .then_some(())
        },
    );
}
