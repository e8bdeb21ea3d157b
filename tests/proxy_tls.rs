//! HTTPS in front of units: SNI picks the certificate, replaced certificate files are served
//! without a restart, HTTP redirects to HTTPS, HTTP/2 through ALPN, security headers, and the
//! generated localhost certificate.
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A test CA that issues leaf certificates into files.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "chain test CA");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn issue(&self, dir: &Path, name: &str, hosts: &[&str]) {
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Write then rename, as a certificate manager would.
        let (tmp_c, tmp_k) = (
            dir.join(format!(".{name}.crt")),
            dir.join(format!(".{name}.key")),
        );
        std::fs::write(&tmp_c, cert.pem()).unwrap();
        std::fs::write(&tmp_k, key.serialize_pem()).unwrap();
        std::fs::rename(&tmp_k, dir.join(format!("{name}.key"))).unwrap();
        std::fs::rename(&tmp_c, dir.join(format!("{name}.crt"))).unwrap();
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        connector(roots)
    }
}

fn connector(roots: rustls::RootCertStore) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Full handshakes only: a resumed session reports the certificate of the original one.
    cfg.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(cfg))
}

/// TLS handshake with `sni` (verified against the connector's roots), then one GET.
/// Returns (negotiated ALPN, leaf certificate, status, body, response headers).
async fn get(
    tls: &TlsConnector,
    addr: std::net::SocketAddr,
    sni: &str,
    path: &str,
) -> std::io::Result<(
    Option<Vec<u8>>,
    CertificateDer<'static>,
    u16,
    String,
    hyper::HeaderMap,
)> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = tls
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(|p| p.to_vec());
    let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
    let req = hyper::Request::builder()
        .uri(format!("https://{sni}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        send.send_request(req)
            .await
            .map_err(std::io::Error::other)?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().insert("host", sni.parse().unwrap());
        send.send_request(req)
            .await
            .map_err(std::io::Error::other)?
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((
        alpn,
        leaf,
        status,
        String::from_utf8_lossy(&body).into_owned(),
        headers,
    ))
}

fn units() -> Vec<(&'static str, String)> {
    let route = |host: &str| format!("\n[[route]]\nhost = \"{host}\"\n");
    vec![
        ("a", format!("{}{}", demo_unit(1, "a", ""), route("a.test"))),
        ("b", format!("{}{}", demo_unit(1, "b", ""), route("b.test"))),
        (
            "w",
            format!("{}{}", demo_unit(1, "w", ""), route("*.wild.test")),
        ),
        (
            "local",
            format!("{}{}", demo_unit(1, "local", ""), route("localhost")),
        ),
    ]
}

fn start(certs: &Path) -> TestDaemon {
    start_with(certs, "", "")
}

/// `top`: top-level keys of chaind.toml; `proxy`: more keys of its `[proxy]` table.
fn start_with(certs: &Path, top: &str, proxy: &str) -> TestDaemon {
    let config = format!(
        r#"{top}[proxy]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
{proxy}[[certificate]]
cert = "{d}/a.crt"
key = "{d}/a.key"
[[certificate]]
cert = "{d}/b.crt"
key = "{d}/b.key"
"#,
        d = certs.display()
    );
    let owned = units();
    let refs: Vec<(&str, &str)> = owned.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let d = TestDaemon::start_full(&refs, &[], Some(&config));
    for (n, _) in &owned {
        d.wait_running(n, 1);
    }
    d
}

/// A daemon as [`start_with`] makes it, with certificates for a.test and b.test from a new test
/// CA (the directory of the certificate files, the CA, the daemon).
async fn daemon_ab(top: &'static str, proxy: &'static str) -> (tempfile::TempDir, Ca, TestDaemon) {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(certs.path(), "a", &["a.test"]);
    ca.issue(certs.path(), "b", &["b.test"]);
    let p = certs.path().to_path_buf();
    let d = tokio::task::spawn_blocking(move || start_with(&p, top, proxy))
        .await
        .unwrap();
    (certs, ca, d)
}

/// SNI selects the certificate (exact names and a wildcard); replacing the files serves the
/// new certificate to new connections without a restart; security headers are set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_and_certificate_reload() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(certs.path(), "a", &["a.test"]);
    ca.issue(certs.path(), "b", &["b.test", "*.wild.test"]);
    let d = tokio::task::spawn_blocking({
        let p = certs.path().to_path_buf();
        move || start(&p)
    })
    .await
    .unwrap();
    let addr = d.https_addr();
    let tls = ca.connector();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Routes appear in the table shortly after readiness.
    let first = loop {
        match get(&tls, addr, "a.test", "/").await {
            Ok(r) if r.2 == 200 => break r,
            _ if tokio::time::Instant::now() > deadline => panic!("a.test never answered"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(first.3, "a\n");
    assert_eq!(first.4["strict-transport-security"], "max-age=31536000");
    assert_eq!(first.4["x-content-type-options"], "nosniff");
    assert_eq!(get(&tls, addr, "b.test", "/").await.unwrap().3, "b\n");
    assert_eq!(get(&tls, addr, "x.wild.test", "/").await.unwrap().3, "w\n");

    // New files: new connections get the new certificate.
    ca.issue(certs.path(), "a", &["a.test"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&tls, addr, "a.test", "/").await.unwrap();
        if r.1 != first.1 {
            assert_eq!(r.3, "a\n");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(d);
}

/// Clients that stop in the middle of their ClientHello hold up no other client: reading a
/// ClientHello takes no handshake turn, only answering it does. One proxy worker, so every
/// connection shares the worker's turns, and a handshake timeout far beyond the test's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_hellos_hold_up_no_one() {
    use tokio::io::AsyncWriteExt;
    let (_certs, ca, d) = daemon_ab("worker_threads = 1\n", "handshake_timeout = \"60s\"\n").await;
    let addr = d.https_addr();
    let tls = ca.connector();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !matches!(get(&tls, addr, "a.test", "/").await, Ok(r) if r.2 == 200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a.test never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A handshake record announcing 512 bytes, and the first 4 of its ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
            .await
            .unwrap();
        stalled.push(s);
    }
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(5), get(&tls, addr, "a.test", "/"))
            .await
            .expect("a handshake waited behind a stalled ClientHello")
            .unwrap();
        assert_eq!((r.2, r.3.as_str()), (200, "a\n"));
    }
    drop(stalled);
}

/// Plain HTTP for a host with a certificate is redirected to HTTPS; HTTP/2 is negotiated by
/// ALPN and proxied; the generated localhost certificate serves localhost out of the box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_h2_and_localhost() {
    let (_certs, ca, d) = daemon_ab("", "").await;
    let (http, https) = (d.http_addr(), d.https_addr());
    let redirect = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(10), "redirect", || {
            let r = KeepAlive::new(http)
                .request("GET", "/x?y=1", "a.test", b"")
                .ok()?;
            (r.status == 301).then(|| r.header("location").map(str::to_string))
        })
    })
    .await
    .unwrap();
    assert_eq!(
        redirect.as_deref(),
        Some(format!("https://a.test:{}/x?y=1", https.port()).as_str())
    );

    let r = get(&ca.connector(), https, "a.test", "/").await.unwrap();
    assert_eq!(r.0.as_deref(), Some(&b"h2"[..]), "ALPN did not pick h2");
    assert_eq!((r.2, r.3.as_str()), (200, "a\n"));

    // Trust only the generated certificate: it verifies for "localhost".
    let pem = std::fs::read(d.root.join("tls/localhost.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let r = get(&connector(roots), https, "localhost", "/")
        .await
        .unwrap();
    assert_eq!((r.2, r.3.as_str()), (200, "local\n"));
    assert!(
        r.4.get("strict-transport-security").is_none(),
        "no HSTS for localhost"
    );
    // The generated certificate does not trigger redirects: plain HTTP keeps working for
    // localhost out of the box.
    let plain = tokio::task::spawn_blocking(move || {
        KeepAlive::new(http)
            .request("GET", "/", "localhost", b"")
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!((plain.status, plain.text().as_str()), (200, "local\n"));
}
