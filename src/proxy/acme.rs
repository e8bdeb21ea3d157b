//! Certificates by ACME (RFC 8555) for the hosts of routes marked `acme = true`: one manager
//! task watches supervisor snapshots, loads the certificates stored under `DIR/acme/<host>/`
//! into the [`CertStore`], orders missing and expiring ones with HTTP-01, and answers the
//! validation requests through the proxy's plain-HTTP listener.
//!
//! It owns `DIR/acme` (the account in `account.json`, mode 0600; per host `cert.pem`,
//! `key.pem` (0600) and `meta.json`) and the challenge map. It must not slow the request path:
//! the proxy consults the map (an `ArcSwap`, no lock) only for paths under
//! `/.well-known/acme-challenge/`. It never panics on what an ACME server sends, and it retries
//! a failed order with exponential backoff (never a loop without a pause).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, Problem, RetryPolicy,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::forward::ProxyBody;
use super::tls::CertStore;
use crate::config::AcmeConfig;
use crate::reconcile::snapshot::Snapshot;

/// Where HTTP-01 validation requests arrive (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
/// Certificates are checked for renewal at least this often (and at start).
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// One order, from account to stored certificate, gives up after this.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Backoff after failed orders: doubles from the first to the cap.
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ACME account at {directory}: {message}")]
    Account { directory: String, message: String },
    #[error("ACME order for {host}: {step}: {message}")]
    Order {
        host: String,
        step: &'static str,
        message: String,
    },
    #[error("ACME validation of {host} failed: {problem}")]
    Validation { host: String, problem: String },
    #[error("ACME certificate for {host}: {message}")]
    Certificate { host: String, message: String },
    #[error("ACME storage {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// HTTP-01 tokens chaind currently answers for: token → key authorization.
#[derive(Debug, Default)]
pub struct Challenges {
    /// Written by the manager only (a few times per order), read by the request path.
    tokens: ArcSwap<HashMap<String, Arc<str>>>,
}

impl Challenges {
    fn publish(&self, token: &str, key_authorization: &str) {
        let value: Arc<str> = Arc::from(key_authorization);
        self.tokens.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(token.to_string(), value.clone());
            m
        });
    }

    fn withdraw(&self, token: &str) {
        self.tokens.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(token);
            m
        });
    }

    pub fn get(&self, token: &str) -> Option<Arc<str>> {
        self.tokens.load().get(token).cloned()
    }
}

/// The answer to an HTTP-01 validation request for a token chaind published; None for every
/// other request (which then takes the normal route, redirect included).
pub(super) fn answer<B>(challenges: &Challenges, req: &Request<B>) -> Option<Response<ProxyBody>> {
    let token = req.uri().path().strip_prefix(CHALLENGE_PREFIX)?;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let key_authorization = challenges.get(token)?;
    let body = Full::new(Bytes::from(key_authorization.as_bytes().to_vec()))
        .map_err(|never| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(r)
}

/// Removes the tokens of one order from the map when the order ends, however it ends
/// (success, error, timeout, or chaind shutting down).
struct Published {
    challenges: Arc<Challenges>,
    tokens: Vec<String>,
}

impl Published {
    fn add(&mut self, token: &str, key_authorization: &str) {
        self.challenges.publish(token, key_authorization);
        self.tokens.push(token.to_string());
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.withdraw(t);
        }
    }
}

/// Hosts of routes with `acme = true`, over every unit with a valid spec.
pub fn acme_hosts(snap: &Snapshot) -> BTreeSet<String> {
    snap.units
        .values()
        .filter_map(|u| u.spec.as_ref())
        .flat_map(|s| s.routes.iter())
        .filter(|r| r.acme)
        .filter_map(|r| r.host.clone())
        .filter(|h| !h.starts_with("*."))
        .collect()
}

/// Starts the manager. `certs` is there when an HTTPS listener runs, `challenges` when an
/// HTTP listener does; ordering needs both (stored certificates are served with HTTPS alone).
pub fn start(
    cfg: AcmeConfig,
    root: &Path,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    certs: Option<Arc<CertStore>>,
    challenges: Option<Arc<Challenges>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let manager = Manager {
        cfg,
        dir: root.join("acme"),
        certs,
        challenges,
        account: None,
        hosts: HashMap::new(),
    };
    tokio::spawn(manager.run(snapshots, stop))
}

struct Manager {
    cfg: AcmeConfig,
    dir: PathBuf,
    certs: Option<Arc<CertStore>>,
    challenges: Option<Arc<Challenges>>,
    /// Created or restored at the first order, then reused.
    account: Option<Account>,
    hosts: HashMap<String, HostState>,
}

/// What the manager knows about one host's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct HostState {
    /// When the certificate in use should be replaced; None while there is none.
    renew_at: Option<SystemTime>,
    /// The directory that issued it (None: unknown, taken as the configured one).
    directory: Option<String>,
    /// Failed orders in a row, and when the next may start.
    failures: u32,
    retry_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Order,
    Wait(Duration),
}

/// Pure: order now, or how long until something is due for this host.
fn next_step(h: &HostState, directory: &str, now_wall: SystemTime, now: Instant) -> Step {
    if let Some(at) = h.retry_at {
        if at > now {
            return Step::Wait(at - now);
        }
    }
    let moved = h.directory.as_deref().is_some_and(|d| d != directory);
    match h.renew_at {
        Some(at) if !moved => match at.duration_since(now_wall) {
            Ok(left) if !left.is_zero() => Step::Wait(left),
            _ => Step::Order,
        },
        _ => Step::Order,
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: `renew_before` ahead
/// of expiry, but never before half its lifetime (short-lived certificates would otherwise be
/// renewed over and over).
fn renew_at(not_before: SystemTime, not_after: SystemTime, renew_before: Duration) -> SystemTime {
    let half = not_after
        .duration_since(not_before)
        .map(|d| not_before + d / 2)
        .unwrap_or(not_after);
    let early = not_after.checked_sub(renew_before).unwrap_or(UNIX_EPOCH);
    early.max(half)
}

/// Pause after the `failures`-th failed order in a row (1 → one minute, doubling, capped).
fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(factor).min(MAX_RETRY)
}

impl Manager {
    async fn run(mut self, mut snapshots: watch::Receiver<Arc<Snapshot>>, stop: CancellationToken) {
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        loop {
            let now_wanted = acme_hosts(&snapshots.borrow_and_update());
            if now_wanted != wanted {
                wanted = now_wanted;
                self.hosts.retain(|h, _| wanted.contains(h));
                for host in &wanted {
                    if !self.hosts.contains_key(host) {
                        let state = self.load(host);
                        self.hosts.insert(host.clone(), state);
                    }
                }
                self.report_missing_listeners(&wanted);
            }
            if self.certs.is_some() && self.challenges.is_some() {
                let due: Vec<String> = {
                    let (now_wall, now) = (SystemTime::now(), Instant::now());
                    let mut due: Vec<String> = self
                        .hosts
                        .iter()
                        .filter(|(_, h)| {
                            next_step(h, &self.cfg.directory, now_wall, now) == Step::Order
                        })
                        .map(|(host, _)| host.clone())
                        .collect();
                    due.sort();
                    due
                };
                for host in due {
                    let started = Instant::now();
                    let result = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = tokio::time::timeout(ORDER_TIMEOUT, self.order(&host)) => r,
                    };
                    let result = result.unwrap_or_else(|_| {
                        Err(Error::Order {
                            host: host.clone(),
                            step: "timeout",
                            message: format!("no certificate after {}s", ORDER_TIMEOUT.as_secs()),
                        })
                    });
                    self.record(&host, result, started);
                }
            }
            let wait = {
                let (now_wall, now) = (SystemTime::now(), Instant::now());
                let can_order = self.certs.is_some() && self.challenges.is_some();
                self.hosts
                    .values()
                    .filter_map(|h| match next_step(h, &self.cfg.directory, now_wall, now) {
                        Step::Wait(d) => Some(d),
                        // Due but not ordered in this pass (it appeared meanwhile): soon.
                        Step::Order if can_order => Some(Duration::ZERO),
                        // Ordering is impossible without both listeners: nothing to wake for.
                        Step::Order => None,
                    })
                    .fold(CHECK_EVERY, Duration::min)
                    .max(Duration::from_secs(1))
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = snapshots.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn report_missing_listeners(&self, wanted: &BTreeSet<String>) {
        if wanted.is_empty() {
            return;
        }
        let hosts = wanted.iter().cloned().collect::<Vec<_>>().join(", ");
        if self.certs.is_none() {
            tracing::error!(
                hosts = %hosts,
                "routes ask for ACME certificates but chaind has no HTTPS listener to serve them: set [proxy] https = \"0.0.0.0:443\" in chaind.toml"
            );
        } else if self.challenges.is_none() {
            tracing::error!(
                hosts = %hosts,
                "routes ask for ACME certificates but chaind has no HTTP listener for HTTP-01 validation: set [proxy] http = \"0.0.0.0:80\" in chaind.toml; stored certificates are served but not renewed"
            );
        } else {
            tracing::info!(hosts = %hosts, "ACME certificates wanted");
        }
    }

    /// Loads `host`'s stored certificate into the store, when there is a usable one.
    fn load(&self, host: &str) -> HostState {
        let mut state = HostState::default();
        let Some(certs) = &self.certs else {
            return state;
        };
        match load_stored(&self.dir, host) {
            Ok(None) => {}
            Ok(Some(s)) if s.not_after <= SystemTime::now() => {
                tracing::warn!(
                    host,
                    "the stored ACME certificate has expired; ordering a new one"
                );
            }
            Ok(Some(s)) => match certs.insert(host, s.chain, s.key) {
                Ok(()) => {
                    tracing::info!(host, expires = %days_left(s.not_after), "loaded the stored ACME certificate");
                    state.renew_at =
                        Some(renew_at(s.not_before, s.not_after, self.cfg.renew_before));
                    state.directory = s.directory;
                }
                Err(e) => {
                    tracing::warn!(host, error = %e, "cannot use the stored ACME certificate; ordering a new one")
                }
            },
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot use the stored ACME certificate; ordering a new one")
            }
        }
        state
    }

    fn record(&mut self, host: &str, result: Result<Stored, Error>, started: Instant) {
        let renew_before = self.cfg.renew_before;
        let directory = self.cfg.directory.clone();
        let Some(h) = self.hosts.get_mut(host) else {
            return;
        };
        match result {
            Ok(s) => {
                tracing::info!(
                    host,
                    expires = %days_left(s.not_after),
                    took_ms = started.elapsed().as_millis() as u64,
                    "obtained an ACME certificate"
                );
                let renew = renew_at(s.not_before, s.not_after, renew_before);
                h.renew_at = Some(renew);
                h.directory = Some(directory);
                h.failures = 0;
                h.retry_at = None;
                if renew <= SystemTime::now() {
                    // A CA that hands out certificates already due would otherwise get an
                    // order every second.
                    h.retry_at = Some(Instant::now() + CHECK_EVERY);
                    tracing::warn!(host, "the new ACME certificate is already due for renewal; next order in 12 hours");
                }
            }
            Err(e) => {
                h.failures = h.failures.saturating_add(1);
                let pause = backoff(h.failures);
                h.retry_at = Some(Instant::now() + pause);
                if matches!(e, Error::Account { .. }) {
                    // A broken account is not the host's fault; start over at the next try.
                    self.account = None;
                }
                tracing::error!(
                    host,
                    attempt = h.failures,
                    retry_in_s = pause.as_secs(),
                    "{e}"
                );
            }
        }
    }

    /// The account: cached, else restored from `account.json`, else created (and saved).
    async fn account(&mut self) -> Result<Account, Error> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let directory = self.cfg.directory.clone();
        let err = |message: String| Error::Account {
            directory: directory.clone(),
            message,
        };
        let path = self.dir.join("account.json");
        let saved: Option<SavedAccount> = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SavedAccount>(&bytes) {
                Ok(s) if s.directory == directory => Some(s),
                Ok(s) => {
                    tracing::info!(old = %s.directory, new = %directory, "the ACME directory changed; creating a new account");
                    None
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable ACME account; creating a new one");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(format!("reading {}: {e}", path.display()))),
        };
        let builder = || match &self.cfg.ca {
            Some(ca) => Account::builder_with_root(ca)
                .map_err(|e| err(format!("loading the root {}: {}", ca.display(), text(&e)))),
            None => Account::builder().map_err(|e| err(text(&e))),
        };
        let account = match saved {
            Some(s) => builder()?
                .from_credentials(s.credentials)
                .await
                .map_err(|e| err(text(&e)))?,
            None => {
                let contact = self.cfg.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder()?
                    .create(&new, directory.clone(), None)
                    .await
                    .map_err(|e| err(text(&e)))?;
                let saved = SavedAccount {
                    directory: directory.clone(),
                    credentials,
                };
                let json = serde_json::to_vec_pretty(&saved)
                    .map_err(|e| err(format!("encoding the account: {e}")))?;
                create_dir_private(&self.dir)?;
                write_atomic(&path, &json, true)?;
                tracing::info!(directory = %directory, path = %path.display(), "created an ACME account");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// One order for `host`: HTTP-01, CSR with a new P-256 key, certificate stored and served.
    async fn order(&mut self, host: &str) -> Result<Stored, Error> {
        let (Some(certs), Some(challenges)) = (self.certs.clone(), self.challenges.clone()) else {
            return Err(Error::Order {
                host: host.to_string(),
                step: "listeners",
                message: "chaind needs both an HTTP and an HTTPS listener".into(),
            });
        };
        let account = self.account().await?;
        let fail = |step: &'static str, e: instant_acme::Error| Error::Order {
            host: host.to_string(),
            step,
            message: text(&e),
        };
        tracing::info!(host, directory = %self.cfg.directory, "ordering an ACME certificate");
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| fail("new order", e))?;
        let mut published = Published {
            challenges,
            tokens: Vec::new(),
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(a) = authorizations.next().await {
                let mut a = a.map_err(|e| fail("authorization", e))?;
                match a.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(Error::Order {
                            host: host.to_string(),
                            step: "authorization",
                            message: format!("the server reports it {other:?}"),
                        })
                    }
                }
                let mut challenge =
                    a.challenge(ChallengeType::Http01)
                        .ok_or_else(|| Error::Order {
                            host: host.to_string(),
                            step: "authorization",
                            message: "the server offers no http-01 challenge".into(),
                        })?;
                let key_authorization = challenge.key_authorization();
                published.add(&challenge.token, key_authorization.as_str());
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| fail("challenge", e))?;
            }
        }
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(120));
        let status = match order.poll_ready(&policy).await {
            Ok(s) => s,
            Err(instant_acme::Error::Api(p)) => {
                return Err(Error::Validation {
                    host: host.to_string(),
                    problem: problem(&p),
                })
            }
            Err(e) => return Err(fail("waiting for validation", e)),
        };
        if status != OrderStatus::Ready {
            return Err(Error::Validation {
                host: host.to_string(),
                problem: why_invalid(&mut order).await,
            });
        }
        drop(published);

        let cert_err = |message: String| Error::Certificate {
            host: host.to_string(),
            message,
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| cert_err(format!("generating a key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
            .map_err(|e| cert_err(format!("building the request: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| cert_err(format!("signing the request: {e}")))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| fail("finalize", e))?;
        let chain_pem = order
            .poll_certificate(&policy)
            .await
            .map_err(|e| fail("certificate download", e))?;
        let key_pem = key.serialize_pem();
        let stored =
            check_pair(host, chain_pem.as_bytes(), key_pem.as_bytes()).map_err(|message| {
                cert_err(format!("the CA sent an unusable certificate: {message}"))
            })?;
        save(&self.dir, host, &chain_pem, &key_pem, &self.cfg.directory)?;
        certs
            .insert(host, stored.chain.clone(), stored.key.clone_key())
            .map_err(|e| cert_err(e.to_string()))?;
        Ok(stored)
    }
}

/// Why an order ended `invalid`: the errors of its challenges, as the server tells them.
async fn why_invalid(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut a)) = authorizations.next().await {
            let Ok(state) = a.refresh().await else {
                continue;
            };
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    reasons.push(problem(p));
                }
            }
        }
    }
    if let Some(p) = &order.state().error {
        reasons.push(problem(p));
    }
    if reasons.is_empty() {
        "the order became invalid without a reason from the server".into()
    } else {
        reasons.join("; ")
    }
}

/// A server problem as `type: detail`, without the URN prefix.
fn problem(p: &Problem) -> String {
    let kind = p
        .r#type
        .as_deref()
        .map(|t| t.trim_start_matches("urn:ietf:params:acme:error:"));
    let mut s = match (kind, p.detail.as_deref()) {
        (Some(k), Some(d)) => format!("{k}: {d}"),
        (Some(k), None) => k.to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) => "unspecified problem".to_string(),
    };
    for sub in &p.subproblems {
        if let Some(d) = &sub.detail {
            s.push_str("; ");
            s.push_str(d);
        }
    }
    s
}

fn text(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem(p),
        other => {
            // Keep the whole chain: "HTTP request failure: ... : connection refused".
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(cause) = src {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s.push_str(": ");
                    s.push_str(&c);
                }
                src = cause.source();
            }
            s
        }
    }
}

fn days_left(not_after: SystemTime) -> String {
    match not_after.duration_since(SystemTime::now()) {
        Ok(d) => format!("in {} days", d.as_secs() / 86_400),
        Err(_) => "already".to_string(),
    }
}

#[derive(Serialize, Deserialize)]
struct SavedAccount {
    directory: String,
    credentials: AccountCredentials,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    directory: String,
    /// Seconds since the Unix epoch.
    issued: u64,
}

/// A usable certificate: the chain, its key, its validity, and where it came from.
#[derive(Debug)]
struct Stored {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    directory: Option<String>,
}

/// Reads `dir/<host>/`; Ok(None) when nothing is stored there.
fn load_stored(dir: &Path, host: &str) -> Result<Option<Stored>, String> {
    let hdir = dir.join(host);
    let cert = match std::fs::read(hdir.join("cert.pem")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", hdir.join("cert.pem").display())),
    };
    let key = std::fs::read(hdir.join("key.pem"))
        .map_err(|e| format!("{}: {e}", hdir.join("key.pem").display()))?;
    let mut stored =
        check_pair(host, &cert, &key).map_err(|m| format!("{}: {m}", hdir.display()))?;
    stored.directory = std::fs::read(hdir.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
        .map(|m| m.directory);
    Ok(Some(stored))
}

/// Parses a PEM chain and key and checks that they belong together and cover `host`.
fn check_pair(host: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<Stored, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let leaf = chain.first().ok_or("no certificate in the PEM")?;
    let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("unreadable certificate: {e:?}"))?
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    if !names.iter().any(|n| n == host) {
        return Err(format!("the certificate names {names:?}, not {host}"));
    }
    let (not_before, not_after) = validity(leaf).ok_or("cannot read the validity period")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key PEM: {e}"))?;
    let signing = any_supported_type(&key).map_err(|e| format!("key: {e}"))?;
    CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(Stored {
        chain,
        key,
        not_before,
        not_after,
        directory: None,
    })
}

/// Writes `dir/<host>/{cert.pem,key.pem,meta.json}`, each file replaced atomically.
fn save(
    dir: &Path,
    host: &str,
    chain_pem: &str,
    key_pem: &str,
    directory: &str,
) -> Result<(), Error> {
    let hdir = dir.join(host);
    create_dir_private(dir)?;
    create_dir_private(&hdir)?;
    let issued = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let meta = serde_json::to_vec_pretty(&Meta {
        directory: directory.to_string(),
        issued,
    })
    .unwrap_or_default();
    write_atomic(&hdir.join("key.pem"), key_pem.as_bytes(), true)?;
    write_atomic(&hdir.join("cert.pem"), chain_pem.as_bytes(), false)?;
    write_atomic(&hdir.join("meta.json"), &meta, false)?;
    Ok(())
}

fn create_dir_private(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::Store {
            path: dir.display().to_string(),
            source,
        }),
    }
}

/// Writes a temporary file beside `path` (mode 0600 when `private`), then renames it over.
fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let store_err = |source| Error::Store {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(store_err)?;
    f.write_all(data).map_err(store_err)?;
    f.sync_all().map_err(store_err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(store_err)
}

/// notBefore and notAfter of an X.509 certificate (DER): Certificate → TBSCertificate →
/// validity. None for anything malformed; never panics.
pub fn validity(cert: &[u8]) -> Option<(SystemTime, SystemTime)> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = der_next(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_next(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    let (tag, _, after) = der_next(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serialNumber INTEGER, signature AlgorithmIdentifier, issuer Name.
    for want in [0x02, SEQUENCE, SEQUENCE] {
        let (tag, _, after) = der_next(rest)?;
        if tag != want {
            return None;
        }
        rest = after;
    }
    let (tag, validity, _) = der_next(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (t1, v1, after) = der_next(validity)?;
    let (t2, v2, _) = der_next(after)?;
    Some((der_time(t1, v1)?, der_time(t2, v2)?))
}

/// One DER element: (tag, contents, what follows). Single-byte tags only (all X.509 needs
/// up to the validity).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// UTCTime (YYMMDDHHMMSSZ; 50–99 are 19xx) or GeneralizedTime (YYYYMMDDHHMMSSZ), as RFC 5280
/// requires them (UTC, seconds, no fractions).
fn der_time(tag: u8, v: &[u8]) -> Option<SystemTime> {
    let digits = |s: &[u8]| -> Option<u64> {
        s.iter().try_fold(0u64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
        })
    };
    let (year, rest) = match (tag, v.len()) {
        (0x17, 13) => {
            let yy = digits(&v[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &v[2..])
        }
        (0x18, 15) => (digits(&v[..4])?, &v[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year.try_into().ok()?, month, day)?;
    let secs = days
        .checked_mul(86_400)?
        .checked_add((hour * 3600 + min * 60 + sec) as i64)?;
    match u64::try_from(secs) {
        Ok(after) => UNIX_EPOCH.checked_add(Duration::from_secs(after)),
        Err(_) => UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs())),
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u64, d: u64) -> Option<i64> {
    let (m, d) = (i64::try_from(m).ok()?, i64::try_from(d).ok()?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: i64) -> SystemTime {
        match u64::try_from(unix) {
            Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
            Err(_) => UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs()),
        }
    }

    fn key() -> rcgen::KeyPair {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    /// A self-signed certificate for `hosts`, its parameters adjusted by `edit`.
    fn cert(
        hosts: &[&str],
        kp: &rcgen::KeyPair,
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> rcgen::Certificate {
        let mut params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        edit(&mut params);
        params.self_signed(kp).unwrap()
    }

    /// notBefore/notAfter come out of real certificates, in both time encodings (UTCTime
    /// before 2050, GeneralizedTime from 2050 on), to the second.
    #[test]
    fn validity_of_real_certificates() {
        let kp = key();
        let hms = Duration::from_secs(3 * 3600 + 4 * 60 + 5);
        let utc = cert(&["a.example"], &kp, |p| {
            p.not_before = rcgen::date_time_ymd(2024, 1, 2) + hms;
            p.not_after = rcgen::date_time_ymd(2049, 12, 31);
        });
        assert_eq!(
            validity(utc.der()),
            Some((at(1_704_164_645), at(2_524_521_600)))
        );
        let generalized = cert(&["a.example"], &kp, |p| {
            p.not_before = rcgen::date_time_ymd(2024, 1, 2);
            p.not_after = rcgen::date_time_ymd(2051, 6, 1) + Duration::from_secs(12 * 3600);
        });
        assert_eq!(validity(generalized.der()).unwrap().1, at(2_569_233_600));
    }

    /// Malformed input never panics: every truncation, and every single-byte corruption, of a
    /// real certificate gives None or some time, never a crash.
    #[test]
    fn validity_of_garbage() {
        let c = cert(&["a.example"], &key(), |_| {});
        let der = c.der().to_vec();
        for n in 0..der.len() {
            assert_eq!(validity(&der[..n]), None, "prefix of {n} bytes");
        }
        for i in 0..der.len() {
            for b in [0x00, 0x7f, 0x80, 0x84, 0xff] {
                let mut bad = der.clone();
                bad[i] = b;
                let _ = validity(&bad);
            }
        }
        assert_eq!(validity(b""), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    /// The two-digit UTCTime years pivot at 50; bad digits, lengths and fields are refused.
    #[test]
    fn der_times() {
        assert_eq!(der_time(0x17, b"500101000000Z"), Some(at(-631_152_000)));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(at(2_524_607_999)));
        assert_eq!(der_time(0x18, b"20000301000000Z"), Some(at(951_868_800)));
        assert_eq!(der_time(0x17, b"491231235959"), None, "no Z");
        assert_eq!(der_time(0x17, b"491331000000Z"), None, "month 13");
        assert_eq!(der_time(0x17, b"4912312359x9Z"), None);
        assert_eq!(der_time(0x18, b"491231235959Z"), None, "wrong length");
        assert_eq!(der_time(0x02, b"491231235959Z"), None, "not a time");
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
    }

    /// Renewal is due `renew_before` ahead of expiry, but not before half the lifetime.
    #[test]
    fn renewal_time() {
        let day = Duration::from_secs(86_400);
        let nb = at(1_700_000_000);
        assert_eq!(renew_at(nb, nb + 90 * day, 30 * day), nb + 60 * day);
        assert_eq!(renew_at(nb, nb + 6 * day, 30 * day), nb + 3 * day);
        assert_eq!(
            renew_at(nb, nb - day, 30 * day),
            nb - day,
            "inverted validity"
        );
    }

    /// Order when there is no certificate, when renewal is due, or when the directory changed;
    /// otherwise wait until renewal; a failed host waits out its backoff first.
    #[test]
    fn steps() {
        let (wall, now) = (at(1_000_000), Instant::now());
        let dir = "https://ca.example/dir";
        let h = |renew: Option<i64>, directory: Option<&str>, retry: Option<u64>| HostState {
            renew_at: renew.map(at),
            directory: directory.map(str::to_string),
            failures: u32::from(retry.is_some()),
            retry_at: retry.map(|s| now + Duration::from_secs(s)),
        };
        let cases = [
            (h(None, None, None), Step::Order),
            (
                h(Some(1_000_100), Some(dir), None),
                Step::Wait(Duration::from_secs(100)),
            ),
            (
                h(Some(1_000_100), None, None),
                Step::Wait(Duration::from_secs(100)),
            ),
            (h(Some(1_000_000), Some(dir), None), Step::Order),
            (h(Some(999_000), Some(dir), None), Step::Order),
            (
                h(Some(1_000_100), Some("https://old.example/dir"), None),
                Step::Order,
            ),
            (h(None, None, Some(60)), Step::Wait(Duration::from_secs(60))),
            (h(None, None, Some(0)), Step::Order),
        ];
        for (i, (state, want)) in cases.iter().enumerate() {
            assert_eq!(
                next_step(state, dir, wall, now),
                *want,
                "case {i}: {state:?}"
            );
        }
    }

    /// Failures back off from a minute, doubling, up to six hours.
    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(60));
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(5), Duration::from_secs(960));
        assert_eq!(backoff(9), Duration::from_secs(15_360));
        assert_eq!(backoff(10), MAX_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    fn request(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    /// A published token is answered with its key authorization (GET and HEAD only); other
    /// tokens and paths fall through; the tokens go when the order's guard drops.
    #[test]
    fn challenge_answers() {
        let challenges = Arc::new(Challenges::default());
        let path = format!("{CHALLENGE_PREFIX}tok1");
        {
            let mut published = Published {
                challenges: challenges.clone(),
                tokens: Vec::new(),
            };
            published.add("tok1", "tok1.thumb");
            let r = answer(&challenges, &request(Method::GET, &path)).expect("answered");
            assert_eq!(r.status(), StatusCode::OK);
            assert!(answer(&challenges, &request(Method::HEAD, &path)).is_some());
            assert!(answer(&challenges, &request(Method::POST, &path)).is_none());
            let other = format!("{CHALLENGE_PREFIX}other");
            assert!(answer(&challenges, &request(Method::GET, &other)).is_none());
            assert!(answer(&challenges, &request(Method::GET, "/tok1")).is_none());
            assert_eq!(challenges.get("tok1").as_deref(), Some("tok1.thumb"));
        }
        assert!(challenges.get("tok1").is_none(), "withdrawn on drop");
        assert!(answer(&challenges, &request(Method::GET, &path)).is_none());
    }

    /// A stored pair is read back with its validity and directory; the key file is private;
    /// a certificate for another host or a key of another certificate is refused.
    #[test]
    fn store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let acme = dir.path().join("acme");
        let kp = key();
        let c = cert(&["app.example"], &kp, |_| {});
        assert!(load_stored(&acme, "app.example").unwrap().is_none());
        save(
            &acme,
            "app.example",
            &c.pem(),
            &kp.serialize_pem(),
            "https://ca/dir",
        )
        .unwrap();
        let s = load_stored(&acme, "app.example").unwrap().unwrap();
        assert_eq!(s.directory.as_deref(), Some("https://ca/dir"));
        assert_eq!(Some((s.not_before, s.not_after)), validity(c.der()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(acme.join("app.example/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let e = check_pair(
            "other.example",
            c.pem().as_bytes(),
            kp.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains("not other.example"), "{e}");
        let e = check_pair(
            "app.example",
            c.pem().as_bytes(),
            key().serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        std::fs::write(acme.join("app.example/cert.pem"), "garbage").unwrap();
        assert!(load_stored(&acme, "app.example").is_err());
    }

    /// Problems read as `type: detail`, without the URN prefix.
    #[test]
    fn problem_text() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:connection","detail":"refused","status":400}"#,
        )
        .unwrap();
        assert_eq!(problem(&p), "connection: refused");
        let p: Problem = serde_json::from_str("{}").unwrap();
        assert_eq!(problem(&p), "unspecified problem");
    }
}
