//! Certificates for the HTTPS listener: PEM files named in chaind.toml, certificates obtained
//! at run time (ACME), and a self-signed certificate for `localhost` generated on first start
//! and kept in `DIR/tls`, so that HTTPS works out of the box.
//!
//! The SNI resolver reads an immutable [`CertMap`] from an `ArcSwap`: a handshake never waits on
//! a lock. Reloading the files builds a new map and swaps it; connections already established
//! keep the certificate they were given. A file that fails to load keeps its previous version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertificateConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate {path}: {message}")]
    Load { path: String, message: String },
    #[error("self-signed certificate in {dir}: {message}")]
    SelfSigned { dir: String, message: String },
}

/// Host name → certificate, with wildcard entries and a default for clients without SNI.
#[derive(Debug, Default)]
pub struct CertMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertMap {
    pub fn get(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.exact.get(&host) {
            return Some(c.clone());
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }

    fn insert(&mut self, names: &[String], key: &Arc<CertifiedKey>) {
        for n in names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_string(), key.clone()),
                None => self.exact.insert(n, key.clone()),
            };
        }
    }
}

/// One loaded certificate source and the names it serves.
#[derive(Clone)]
struct Loaded {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

pub struct CertStore {
    map: ArcSwap<CertMap>,
    files: Vec<CertificateConfig>,
    /// Last good version of each file-based certificate (same order as `files`).
    loaded: Mutex<Vec<Option<Loaded>>>,
    /// Certificates obtained at run time (ACME), by host.
    dynamic: Mutex<HashMap<String, Loaded>>,
    self_signed: Option<Loaded>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads every file; a file that fails is reported (returned) and skipped. When no
    /// certificate covers `localhost`, a self-signed one is generated in `tls_dir` (or reused).
    pub fn new(files: &[CertificateConfig], tls_dir: &Path) -> (Arc<CertStore>, Vec<Error>) {
        let mut errors = Vec::new();
        let loaded: Vec<Option<Loaded>> = files
            .iter()
            .map(|c| load_pair(&c.cert, &c.key).map_err(|e| errors.push(e)).ok())
            .collect();
        let covers_localhost = loaded
            .iter()
            .flatten()
            .any(|l| l.names.iter().any(|n| n == "localhost"));
        let self_signed = if covers_localhost {
            None
        } else {
            match self_signed(tls_dir) {
                Ok(l) => Some(l),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        };
        let store = Arc::new(CertStore {
            map: ArcSwap::from_pointee(CertMap::default()),
            files: files.to_vec(),
            loaded: Mutex::new(loaded),
            dynamic: Mutex::new(HashMap::new()),
            self_signed,
        });
        store.publish();
        (store, errors)
    }

    /// Re-reads every certificate file. Files that fail keep their previous version; their
    /// errors are returned.
    pub fn reload(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        {
            let mut loaded = lock(&self.loaded);
            for (i, c) in self.files.iter().enumerate() {
                match load_pair(&c.cert, &c.key) {
                    Ok(l) => loaded[i] = Some(l),
                    Err(e) => errors.push(e),
                }
            }
        }
        self.publish();
        errors
    }

    /// Adds or replaces a certificate obtained at run time (ACME) for `host`.
    pub fn insert(
        &self,
        host: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), Error> {
        let signing = any_supported_type(&key).map_err(|e| Error::Load {
            path: host.to_string(),
            message: e.to_string(),
        })?;
        let loaded = Loaded {
            names: vec![host.to_ascii_lowercase()],
            key: Arc::new(CertifiedKey::new(chain, signing)),
        };
        lock(&self.dynamic).insert(host.to_ascii_lowercase(), loaded);
        self.publish();
        Ok(())
    }

    /// True when a configured or ACME certificate serves `host`. The generated localhost
    /// certificate does not count: it exists so HTTPS works out of the box, not to push every
    /// plain-HTTP request for localhost to a certificate no browser trusts.
    pub fn has_cert(&self, host: &str) -> bool {
        let generated = self.self_signed.as_ref().map(|l| &l.key);
        self.map
            .load()
            .get(host)
            .is_some_and(|k| generated.is_none_or(|g| !Arc::ptr_eq(g, &k)))
    }

    /// Paths to watch for reloads (the files' directories).
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .files
            .iter()
            .flat_map(|c| [&c.cert, &c.key])
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Builds a new map from the current sources and swaps it in. Precedence: files (in
    /// order), then run-time certificates, then the generated localhost certificate.
    fn publish(&self) {
        let mut map = CertMap::default();
        let mut sources: Vec<Loaded> = Vec::new();
        if let Some(s) = &self.self_signed {
            sources.push(s.clone());
        }
        sources.extend(lock(&self.dynamic).values().cloned());
        sources.extend(lock(&self.loaded).iter().rev().flatten().cloned());
        // Later inserts win: files override ACME, which overrides the generated certificate.
        for l in &sources {
            map.insert(&l.names, &l.key);
        }
        map.default = lock(&self.loaded)
            .iter()
            .flatten()
            .next()
            .or(self.self_signed.as_ref())
            .map(|l| l.key.clone());
        self.map.store(Arc::new(map));
    }

    pub fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.clone()))
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let map = self.0.map.load();
        match hello.server_name() {
            Some(name) => map.get(name).or_else(|| map.default.clone()),
            None => map.default.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads a PEM chain and key; the names come from the leaf certificate's SANs.
fn load_pair(cert: &Path, key: &Path) -> Result<Loaded, Error> {
    let err = |path: &Path, message: String| Error::Load {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert, e.to_string()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| err(cert, "no certificate in the file".into()))?;
    let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| err(cert, format!("unreadable certificate: {e:?}")))?
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    if names.is_empty() {
        return Err(err(
            cert,
            "the certificate names no DNS host (subjectAltName)".into(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?;
    let signing = any_supported_type(&key_der).map_err(|e| err(key, e.to_string()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        err(
            key,
            format!("the key does not match {}: {e}", cert.display()),
        )
    })?;
    Ok(Loaded {
        names,
        key: Arc::new(ck),
    })
}

/// The generated localhost certificate: reused from `dir` when present, else created.
fn self_signed(dir: &Path) -> Result<Loaded, Error> {
    let cert = dir.join("localhost.crt");
    let key = dir.join("localhost.key");
    if cert.exists() && key.exists() {
        if let Ok(l) = load_pair(&cert, &key) {
            return Ok(l);
        }
    }
    let fail = |message: String| Error::SelfSigned {
        dir: dir.display().to_string(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    let names = vec!["localhost".to_string()];
    let mut params =
        rcgen::CertificateParams::new(names.clone()).map_err(|e| fail(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chain self-signed localhost");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.subject_alt_names.push(rcgen::SanType::IpAddress(
        std::net::Ipv6Addr::LOCALHOST.into(),
    ));
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| fail(e.to_string()))?;
    let c = params.self_signed(&kp).map_err(|e| fail(e.to_string()))?;
    write_private(&key, kp.serialize_pem().as_bytes()).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&cert, c.pem()).map_err(|e| fail(e.to_string()))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate for localhost");
    load_pair(&cert, &key)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(dir: &Path, name: &str, hosts: &[&str]) -> CertificateConfig {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&kp).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, c.pem()).unwrap();
        std::fs::write(&key, kp.serialize_pem()).unwrap();
        CertificateConfig { cert, key }
    }

    /// Exact names, wildcards, the generated localhost certificate, and a broken file that
    /// keeps its previous version on reload.
    #[test]
    fn lookup_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue(dir.path(), "a", &["a.example.com"]);
        let w = issue(dir.path(), "w", &["*.example.org", "example.org"]);
        let (store, errors) = CertStore::new(&[a.clone(), w], &dir.path().join("tls"));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(store.has_cert("a.example.com"));
        assert!(store.has_cert("x.example.org") && store.has_cert("example.org"));
        assert!(
            !store.has_cert("x.y.example.org"),
            "a wildcard covers one label"
        );
        assert!(
            store.map.load().get("localhost").is_some(),
            "the generated certificate serves localhost"
        );
        assert!(
            !store.has_cert("localhost"),
            "but does not count for redirects"
        );
        assert!(dir.path().join("tls/localhost.crt").exists());
        let before = store.map.load().get("a.example.com").unwrap();

        std::fs::write(&a.cert, "not a certificate").unwrap();
        let errors = store.reload();
        assert_eq!(errors.len(), 1);
        assert!(
            Arc::ptr_eq(&store.map.load().get("a.example.com").unwrap(), &before),
            "kept the last good version"
        );

        issue(dir.path(), "a", &["a.example.com", "b.example.com"]);
        assert!(store.reload().is_empty());
        assert!(store.has_cert("b.example.com"));
        assert!(!Arc::ptr_eq(
            &store.map.load().get("a.example.com").unwrap(),
            &before
        ));
    }

    /// A key that does not belong to the certificate is refused with a clear message.
    #[test]
    fn mismatched_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue(dir.path(), "a", &["a.example.com"]);
        let b = issue(dir.path(), "b", &["b.example.com"]);
        let Err(e) = load_pair(&a.cert, &b.key) else {
            panic!("mismatch accepted")
        };
        assert!(e.to_string().contains("does not match"), "{e}");
    }
}
