//! A real ACME server for tests: Debian's `pebble`, started in a temp dir on free loopback
//! ports with a certificate made here, plus a tiny DNS responder that tells pebble every name is
//! 127.0.0.1, so HTTP-01 validation reaches chaind's HTTP listener without any network.
//! [`Pebble`] kills its process on drop (panics included).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::support::free_ports;

/// Where pebble is, or None when it is not installed.
pub fn pebble_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("pebble"))
        .find(|p| p.is_file())
}

pub struct Pebble {
    child: Child,
    pub dir: PathBuf,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM of the CA that signed pebble's own HTTPS certificate (for `[acme] ca`).
    pub tls_ca: PathBuf,
    tls_ca_der: Vec<u8>,
    pub management: SocketAddr,
    log: PathBuf,
    _dns: Dns,
}

impl Pebble {
    /// Starts pebble in `dir`; it validates HTTP-01 on `http_port` of whatever name it is
    /// asked for (all names resolve to 127.0.0.1). Waits until it accepts connections.
    pub fn start(binary: &Path, dir: &Path, http_port: u16) -> Pebble {
        let ports = free_ports(3);
        let (listen, mgmt, tls_port) = (ports[0], ports[1], ports[2]);
        let dns = Dns::start();

        // Pebble's own HTTPS certificate, from a throwaway CA.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "chain test pebble TLS CA");
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let tls_ca = dir.join("pebble-tls-ca.pem");
        std::fs::write(&tls_ca, ca_cert.pem()).unwrap();
        std::fs::write(dir.join("pebble-cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).unwrap();

        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(dns.addr.to_string())
            // Validate at once instead of after a random pause (validation itself still runs).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut pebble = Pebble {
            child,
            dir: dir.to_path_buf(),
            directory: format!("https://127.0.0.1:{listen}/dir"),
            tls_ca,
            tls_ca_der: ca_cert.der().to_vec(),
            management: ([127, 0, 0, 1], mgmt).into(),
            log,
            _dns: dns,
        };
        let end = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = pebble.child.try_wait() {
                panic!("pebble exited with {status}:\n{}", pebble.log());
            }
            let up = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(listen) && up(mgmt) {
                break;
            }
            assert!(
                std::time::Instant::now() < end,
                "pebble did not listen within 30s:\n{}",
                pebble.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pebble
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Orders pebble has created so far (it logs each; a request it refused for a stale nonce,
    /// which the client repeats, creates none).
    pub fn orders(&self) -> usize {
        self.log().matches("Added order ").count()
    }

    /// The DER of the CA behind pebble's own HTTPS certificate.
    pub fn tls_ca_der(&self) -> &[u8] {
        &self.tls_ca_der
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP DNS responder on 127.0.0.1: A queries get 127.0.0.1 for any name; other types get
/// an empty answer. Stops on drop.
pub struct Dns {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dns {
    pub fn start() -> Dns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = dns_reply(&buf[..n]) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        Dns {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one query: the header and question echoed, plus `A 127.0.0.1` for A/IN.
fn dns_reply(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || q[4..6] != [0, 1] {
        return None;
    }
    // Walk the question name to find its type and class.
    let mut i = 12;
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += len;
    }
    let question = q.get(12..i + 4)?;
    let (qtype, qclass) = (&q[i..i + 2], &q[i + 2..i + 4]);
    let answer_a = qtype == [0, 1] && qclass == [0, 1];
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]); // id
    r.push(0x80 | (q[2] & 0x79)); // QR, the query's opcode and RD
    r.push(0x80); // RA, NOERROR
    r.extend_from_slice(&[0, 1, 0, u8::from(answer_a), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if answer_a {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(r)
}
