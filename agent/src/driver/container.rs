//! The container driver: runs instance specs as Docker containers through the Engine API
//! (bollard, over the engine's Unix socket).
//!
//! Same shape as the process driver: start a spec, wait for its exit, signal it, find it again
//! after a daemon restart (by label instead of by pid), run a command in it. What differs is
//! that every call is an API request, so everything here is async and may fail because the
//! engine is unreachable; such failures are [`Retry::Transient`].
//!
//! Invariants:
//! - Containers are never created with a restart policy or auto-remove: chain's supervisor
//!   decides restarts, and removes an exited container once its logs are read.
//! - Every container chain creates carries the labels its caller passes in `labels`; listing
//!   and adoption go by label, never by name.
//! - The engine connection is made on first use and kept; a failed connection is retried on
//!   the next call, so chaind starts (and runs its processes) without an engine.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as ApiError;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, EndpointSettings, ExecConfig, HostConfig, Mount, MountType,
    NetworkCreateRequest, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, KillContainerOptions,
    ListContainersOptions, ListNetworksOptions, LogsOptions, RemoveContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Mutex, OnceCell};

use super::process::{ExitStatus, Retry};
use crate::logs::{Chunk, Source};

/// Requests that do not answer within this time fail (streams: until their headers arrive).
const API_TIMEOUT_SECS: u64 = 30;

/// Pull progress is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Output kept from an exec command.
const EXEC_OUTPUT_MAX: usize = 4096;

/// Where the engine listens, from `DOCKER_HOST` (`unix://` only) or the default socket.
pub fn default_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(h.trim_start_matches("unix://")),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// When the engine pulls an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    Missing,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    Bind(PathBuf),
    Volume(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: MountSource,
    pub target: String,
    pub read_only: bool,
}

/// Everything needed to create and start one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name; unique on the engine.
    pub name: String,
    pub image: String,
    pub pull: Pull,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: Option<String>,
    /// The complete environment (nothing is inherited from chaind).
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// TCP port the app listens on inside the container.
    pub port: Option<u16>,
    /// Publish `port` on the host at (address, port).
    pub publish: Option<(String, u16)>,
    pub mounts: Vec<MountSpec>,
    /// The network chain reaches the container on (created when missing).
    pub network: String,
    /// Further networks (created when missing).
    pub networks: Vec<String>,
    /// DNS names of the container on every network it joins.
    pub aliases: Vec<String>,
    pub nano_cpus: Option<i64>,
    pub memory: Option<i64>,
    pub user: Option<String>,
    pub read_only: bool,
    pub init: bool,
    /// NVIDIA GPUs: a count, or -1 for all.
    pub gpus: Option<i64>,
    pub stop_signal: String,
    pub stop_timeout: Duration,
}

/// A container that was created and started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub id: String,
    /// Host pid of the container's main process (0 when the engine does not say).
    pub pid: i32,
    /// Address on `ContainerSpec::network`.
    pub ip: Option<IpAddr>,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    pub status: ExitStatus,
    /// The engine killed it for exceeding its memory limit.
    pub oom_killed: bool,
}

impl fmt::Display for ContainerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        if self.oom_killed {
            f.write_str(" (out of memory: killed by the engine at its memory limit)")?;
        }
        Ok(())
    }
}

/// A container as listed or inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// Host pid of the main process while it runs.
    pub pid: i32,
    /// Address per network name.
    pub ips: BTreeMap<String, IpAddr>,
    /// Engine status text ("Up 3 minutes", "Exited (0) 2 seconds ago").
    pub status: String,
}

/// Result of [`ContainerDriver::exec`].
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub status: ExitStatus,
    /// The first 4 KiB of combined stdout and stderr, lossy UTF-8.
    pub output: String,
    pub timed_out: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the Docker engine at {socket}: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("image {image} is not present locally and cannot be pulled: {reason}")]
    ImageMissing {
        image: String,
        reason: String,
        permanent: bool,
    },
    #[error("container {0} not found")]
    NotFound(String),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: ApiError,
    },
}

impl Error {
    /// Whether trying again later can succeed without someone changing the spec.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Unreachable { .. } | Error::NotFound(_) => Retry::Transient,
            Error::ImageMissing { permanent, .. } => {
                if *permanent {
                    Retry::Permanent
                } else {
                    Retry::Transient
                }
            }
            Error::Api { source, .. } => match status_of(source) {
                // Bad request, conflict on an option, unsupported option: fix the unit.
                Some(400 | 403 | 422) => Retry::Permanent,
                _ => Retry::Transient,
            },
        }
    }
}

fn status_of(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(ApiError) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

/// Handle to the engine. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct ContainerDriver {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    docker: OnceCell<Docker>,
    /// Network name → id, for the networks this driver made sure of. The lock also serialises
    /// their creation (the engine does not refuse a second network with the same name).
    networks: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for ContainerDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerDriver")
            .field("socket", &self.inner.socket)
            .finish_non_exhaustive()
    }
}

impl ContainerDriver {
    /// A driver for the engine at `socket`; nothing is connected until the first call.
    pub fn new(socket: PathBuf) -> ContainerDriver {
        ContainerDriver {
            inner: Arc::new(Inner {
                socket,
                docker: OnceCell::new(),
                networks: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.inner.socket
    }

    async fn docker(&self) -> Result<&Docker, Error> {
        let socket = self.inner.socket.display().to_string();
        self.inner
            .docker
            .get_or_try_init(|| async {
                let unreachable = |reason: String| Error::Unreachable {
                    socket: socket.clone(),
                    reason,
                };
                let docker = Docker::connect_with_unix(
                    &socket,
                    API_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unreachable(e.to_string()))?;
                // Speak the engine's API version (this engine may be older than bollard).
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| unreachable(e.to_string()))
            })
            .await
    }

    /// The engine's version, e.g. `"20.10.24+dfsg1"`.
    pub async fn version(&self) -> Result<String, Error> {
        let docker = self.docker().await?;
        let v = docker.version().await.map_err(api("engine version"))?;
        Ok(v.version.unwrap_or_default())
    }

    /// Creates `spec`'s networks and image as needed, then creates and starts the container.
    /// `progress` receives pull progress lines. A container created but not started is removed.
    pub async fn start(
        &self,
        spec: &ContainerSpec,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<Started, Error> {
        let docker = self.docker().await?;
        self.ensure_image(spec, progress).await?;
        let network_id = self.ensure_network(&spec.network).await?;
        let mut networks = Vec::new();
        for n in &spec.networks {
            networks.push(self.ensure_network(n).await?);
        }
        let body = create_body(spec, &network_id);
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    platform: String::new(),
                }),
                body,
            )
            .await
            .map_err(|e| {
                if status_of(&e) == Some(404) {
                    // A network removed behind our back: look it up again next time.
                    if let Ok(mut known) = self.inner.networks.try_lock() {
                        known.clear();
                    }
                }
                api(format!("creating container {}", spec.name))(e)
            })?;
        let id = created.id;
        let started = async {
            // The extra networks join before the start, so the app sees all of them at once.
            for n in &networks {
                let endpoint = EndpointSettings {
                    aliases: Some(spec.aliases.clone()),
                    ..Default::default()
                };
                docker
                    .connect_network(
                        n,
                        bollard::models::NetworkConnectRequest {
                            container: id.clone(),
                            endpoint_config: Some(endpoint),
                        },
                    )
                    .await
                    .map_err(api(format!("connecting {} to network {n}", spec.name)))?;
            }
            docker
                .start_container(&id, None)
                .await
                .map_err(api(format!("starting container {}", spec.name)))?;
            let info = self
                .inspect(&id)
                .await?
                .ok_or_else(|| Error::NotFound(id.clone()))?;
            Ok::<_, Error>(Started {
                id: id.clone(),
                pid: info.pid,
                ip: info.ips.get(&spec.network).copied(),
            })
        }
        .await;
        if started.is_err() {
            let _ = self.remove(&id).await;
        }
        started
    }

    async fn ensure_image(
        &self,
        spec: &ContainerSpec,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), Error> {
        let docker = self.docker().await?;
        let present = match docker.inspect_image(&spec.image).await {
            Ok(_) => true,
            Err(e) if status_of(&e) == Some(404) => false,
            Err(e) => return Err(api(format!("inspecting image {}", spec.image))(e)),
        };
        let pull = match spec.pull {
            Pull::Never => false,
            Pull::Missing => !present,
            Pull::Always => true,
        };
        if !pull {
            return if present {
                Ok(())
            } else {
                Err(Error::ImageMissing {
                    image: spec.image.clone(),
                    reason: "pull = \"never\"".into(),
                    permanent: true,
                })
            };
        }
        match self.pull(&spec.image, progress).await {
            Ok(()) => Ok(()),
            // `pull = "always"` falls back to the local copy.
            Err(_) if present => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Pulls `image`, reporting progress at most every [`PROGRESS_EVERY`].
    pub async fn pull(
        &self,
        image: &str,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), Error> {
        let docker = self.docker().await?;
        let (from_image, tag) = split_reference(image);
        let mut stream = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(from_image),
                tag: (!tag.is_empty()).then_some(tag),
                ..Default::default()
            }),
            None,
            None,
        );
        progress(format!("pulling image {image}"));
        let mut layers: HashMap<String, (i64, i64)> = HashMap::new();
        let mut last = tokio::time::Instant::now();
        let missing = |reason: String| {
            // The registry answered that the image does not exist (or is not ours to read):
            // retrying cannot help. Anything else (no network, no DNS) may pass.
            let lower = reason.to_ascii_lowercase();
            let permanent = lower.contains("not found")
                || lower.contains("manifest unknown")
                || lower.contains("denied")
                || lower.contains("unauthorized");
            Error::ImageMissing {
                image: image.to_string(),
                reason,
                permanent,
            }
        };
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| missing(short_error(&e)))?;
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                return Err(missing(detail));
            }
            if let (Some(id), Some(p)) = (info.id, info.progress_detail) {
                if let (Some(cur), Some(total)) = (p.current, p.total) {
                    layers.insert(id, (cur, total));
                }
            }
            if last.elapsed() >= PROGRESS_EVERY && !layers.is_empty() {
                last = tokio::time::Instant::now();
                let (cur, total) = layers
                    .values()
                    .fold((0, 0), |(c, t), (lc, lt)| (c + lc, t + lt));
                progress(format!(
                    "pulling image {image}: {} of {} MB in {} layers",
                    cur >> 20,
                    total >> 20,
                    layers.len()
                ));
            }
        }
        progress(format!("pulled image {image}"));
        Ok(())
    }

    /// The id of the bridge network `name`, created (labelled `chain.managed=true`) when
    /// missing. When several networks carry the name (created by racing daemons: the engine
    /// allows it), the oldest is used by everyone, and a duplicate this call created is removed.
    pub async fn ensure_network(&self, name: &str) -> Result<String, Error> {
        let mut known = self.inner.networks.lock().await;
        if let Some(id) = known.get(name) {
            return Ok(id.clone());
        }
        let id = match self.oldest_network(name).await? {
            Some(id) => id,
            None => {
                let docker = self.docker().await?;
                let request = NetworkCreateRequest {
                    name: name.to_string(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(
                        "chain.managed".to_string(),
                        "true".to_string(),
                    )])),
                    ..Default::default()
                };
                let created = match docker.create_network(request).await {
                    Ok(r) => Some(r.id),
                    Err(e) if status_of(&e) == Some(409) => None,
                    Err(e) => return Err(api(format!("creating network {name}"))(e)),
                };
                let oldest = self
                    .oldest_network(name)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("network {name}")))?;
                if let Some(mine) = created.filter(|c| *c != oldest) {
                    let _ = docker.remove_network(&mine).await;
                }
                oldest
            }
        };
        known.insert(name.to_string(), id.clone());
        Ok(id)
    }

    /// The oldest network named exactly `name`.
    async fn oldest_network(&self, name: &str) -> Result<Option<String>, Error> {
        let docker = self.docker().await?;
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let list = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(api(format!("listing networks named {name}")))?;
        // The name filter matches substrings.
        let mut exact: Vec<(String, String)> = list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((n.created.map(|c| c.to_string()).unwrap_or_default(), n.id?)))
            .collect();
        exact.sort();
        Ok(exact.into_iter().next().map(|(_, id)| id))
    }

    /// Resolves when the container is no longer running. Survives a lost engine connection by
    /// asking again; a container that vanished counts as exited with an unknown status.
    pub async fn wait(&self, id: &str) -> ContainerExit {
        loop {
            let docker = match self.docker().await {
                Ok(d) => d,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut stream = docker.wait_container(
                id,
                Some(WaitContainerOptions {
                    condition: "not-running".into(),
                }),
            );
            let code = match stream.next().await {
                Some(Ok(r)) => Some(r.status_code),
                Some(Err(ApiError::DockerContainerWaitError { code, .. })) => Some(code),
                Some(Err(e)) if status_of(&e) == Some(404) => {
                    return ContainerExit {
                        status: ExitStatus::Unknown,
                        oom_killed: false,
                    }
                }
                Some(Err(_)) | None => None,
            };
            match self.exit_state(id).await {
                Ok(Some((false, exit_code, oom_killed))) => {
                    let code = code.unwrap_or(exit_code);
                    return ContainerExit {
                        status: ExitStatus::Code(i32::try_from(code).unwrap_or(-1)),
                        oom_killed,
                    };
                }
                Ok(None) => {
                    return ContainerExit {
                        status: code.map_or(ExitStatus::Unknown, |c| {
                            ExitStatus::Code(i32::try_from(c).unwrap_or(-1))
                        }),
                        oom_killed: false,
                    }
                }
                // Still running (the wait stream broke) or the engine is unreachable: again.
                Ok(Some((true, _, _))) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// (running, exit code, OOM-killed), or None when the container is gone.
    async fn exit_state(&self, id: &str) -> Result<Option<(bool, i64, bool)>, Error> {
        let docker = self.docker().await?;
        match docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                let s = c.state.unwrap_or_default();
                Ok(Some((
                    s.running.unwrap_or(false),
                    s.exit_code.unwrap_or(0),
                    s.oom_killed.unwrap_or(false),
                )))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(api(format!("inspecting container {id}"))(e)),
        }
    }

    /// Sends `signal` (a name such as `"SIGTERM"`) to the container's main process. A
    /// container that is not running (or gone) is not an error.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), Error> {
        let docker = self.docker().await?;
        match docker
            .kill_container(
                id,
                Some(KillContainerOptions {
                    signal: signal.to_string(),
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(api(format!("sending {signal} to container {id}"))(e)),
        }
    }

    /// Removes the container, killing it if it runs. A missing container is not an error.
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        let docker = self.docker().await?;
        match docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            // Removal already in progress (another remove call, or auto-removal).
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(api(format!("removing container {id}"))(e)),
        }
    }

    /// The container, or None when the engine does not know it.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, Error> {
        let docker = self.docker().await?;
        let c = match docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(api(format!("inspecting container {id}"))(e)),
        };
        let state = c.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let ips = c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, ep)| {
                let ip = ep.ip_address?.parse().ok()?;
                Some((name, ip))
            })
            .collect();
        let config = c.config.unwrap_or_default();
        Ok(Some(ContainerInfo {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            running,
            pid: if running {
                i32::try_from(state.pid.unwrap_or(0)).unwrap_or(0)
            } else {
                0
            },
            ips,
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    /// Every container (running or not) that carries all of `labels` (`key=value`, or `key`
    /// alone for "has the label").
    pub async fn list(&self, labels: &[String]) -> Result<Vec<ContainerInfo>, Error> {
        let docker = self.docker().await?;
        let filters = HashMap::from([("label".to_string(), labels.to_vec())]);
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(api("listing containers"))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let running = c.state.map(|s| s.to_string()) == Some("running".into());
                let ips = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(name, ep)| Some((name, ep.ip_address?.parse().ok()?)))
                    .collect();
                ContainerInfo {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    image: c.image.unwrap_or_default(),
                    labels: c.labels.unwrap_or_default().into_iter().collect(),
                    running,
                    // The list does not carry pids; inspect does.
                    pid: 0,
                    ips,
                    status: c.status.unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Streams the container's output from `since` (or from its start) until it stops.
    /// Each chunk carries the engine's own timestamp, so output written while chaind was down
    /// keeps its time. The channel closes when the container stopped or the stream broke.
    pub fn logs(&self, id: &str, since: Option<SystemTime>) -> mpsc::Receiver<Chunk> {
        let (tx, rx) = mpsc::channel(64);
        let driver = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let Ok(docker) = driver.docker().await else {
                return;
            };
            let since_secs = since
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(0));
            let mut stream = docker.logs(
                &id,
                Some(LogsOptions {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    since: since_secs,
                    timestamps: true,
                    ..Default::default()
                }),
            );
            while let Some(item) = stream.next().await {
                let (source, message) = match item {
                    Ok(bollard::container::LogOutput::StdOut { message }) => (Source::Out, message),
                    Ok(bollard::container::LogOutput::StdErr { message }) => (Source::Err, message),
                    Ok(bollard::container::LogOutput::Console { message }) => {
                        (Source::Out, message)
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(container = %id, error = %e, "log stream ended");
                        break;
                    }
                };
                let (time, data) = split_timestamp(&message);
                // Lines from before `since` (same second) were written by an earlier reader.
                if let (Some(since), Some(t)) = (since, time) {
                    if t <= since {
                        continue;
                    }
                }
                let chunk = Chunk {
                    source,
                    time: time.unwrap_or_else(SystemTime::now),
                    data: data.to_vec(),
                };
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Runs `command` inside the running container, bounded by `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, Error> {
        let docker = self.docker().await?;
        let run = async {
            let exec = docker
                .create_exec(
                    id,
                    ExecConfig {
                        cmd: Some(command.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(api(format!("exec in container {id}")))?;
            let mut output = Vec::new();
            if let bollard::exec::StartExecResults::Attached {
                output: mut out, ..
            } = docker
                .start_exec(&exec.id, None)
                .await
                .map_err(api(format!("exec in container {id}")))?
            {
                while let Some(Ok(part)) = out.next().await {
                    if output.len() < EXEC_OUTPUT_MAX {
                        output.extend_from_slice(&part.into_bytes());
                    }
                }
            }
            output.truncate(EXEC_OUTPUT_MAX);
            let inspected = docker
                .inspect_exec(&exec.id)
                .await
                .map_err(api(format!("exec in container {id}")))?;
            let code = inspected.exit_code.unwrap_or(-1);
            Ok(ExecOutput {
                status: ExitStatus::Code(i32::try_from(code).unwrap_or(-1)),
                output: String::from_utf8_lossy(&output).into_owned(),
                timed_out: false,
            })
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Ok(ExecOutput {
                status: ExitStatus::Unknown,
                output: String::new(),
                timed_out: true,
            }),
        }
    }
}

/// The engine's create request for `spec`, on the network with id `network_id` (the id, since
/// a name may be ambiguous).
fn create_body(spec: &ContainerSpec, network_id: &str) -> ContainerCreateBody {
    let port_key = spec.port.map(|p| format!("{p}/tcp"));
    let port_bindings = match (&port_key, &spec.publish) {
        (Some(key), Some((ip, host_port))) => Some(HashMap::from([(
            key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(ip.clone()),
                host_port: Some(host_port.to_string()),
            }]),
        )])),
        _ => None,
    };
    let mounts: Vec<Mount> = spec
        .mounts
        .iter()
        .map(|m| {
            let (typ, source) = match &m.source {
                MountSource::Bind(p) => (MountType::BIND, p.display().to_string()),
                MountSource::Volume(n) => (MountType::VOLUME, n.clone()),
            };
            Mount {
                target: Some(m.target.clone()),
                source: Some(source),
                typ: Some(typ),
                read_only: Some(m.read_only),
                ..Default::default()
            }
        })
        .collect();
    let device_requests = spec.gpus.map(|count| {
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count: Some(count),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]
    });
    let host_config = HostConfig {
        network_mode: Some(network_id.to_string()),
        port_bindings,
        mounts: (!mounts.is_empty()).then_some(mounts),
        nano_cpus: spec.nano_cpus,
        memory: spec.memory,
        // Without swap on top of the limit, as `docker run --memory` users expect.
        memory_swap: spec.memory,
        readonly_rootfs: Some(spec.read_only),
        init: spec.init.then_some(true),
        device_requests,
        ..Default::default()
    };
    let endpoints = HashMap::from([(
        network_id.to_string(),
        EndpointSettings {
            aliases: Some(spec.aliases.clone()),
            ..Default::default()
        },
    )]);
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        working_dir: spec.working_dir.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        user: spec.user.clone(),
        exposed_ports: port_key.map(|k| vec![k]),
        stop_signal: Some(spec.stop_signal.clone()),
        stop_timeout: Some(i64::try_from(spec.stop_timeout.as_secs()).unwrap_or(i64::MAX)),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        ..Default::default()
    }
}

/// `repo[:tag]` or `repo@digest` → (`fromImage`, `tag`): an empty tag would pull every tag.
fn split_reference(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => {
            (image[..i].to_string(), image[i + 1..].to_string())
        }
        _ => (image.to_string(), "latest".to_string()),
    }
}

/// `2026-11-23T08:40:00.123456789Z text` → (time, text).
fn split_timestamp(message: &[u8]) -> (Option<SystemTime>, &[u8]) {
    let Some(space) = message.iter().position(|b| *b == b' ') else {
        return (None, message);
    };
    let Ok(ts) = std::str::from_utf8(&message[..space]) else {
        return (None, message);
    };
    match parse_rfc3339(ts) {
        Some(t) => (Some(t), &message[space + 1..]),
        None => (None, message),
    }
}

/// RFC 3339 UTC timestamps with up to nanoseconds, as the engine writes them.
fn parse_rfc3339(ts: &str) -> Option<SystemTime> {
    let ts = ts.strip_suffix('Z')?;
    let (whole, frac) = match ts.split_once('.') {
        Some((w, f)) => (w, f),
        None => (ts, ""),
    };
    let ms = crate::logs::parse_timestamp_ms(&format!("{whole}.000Z"))?;
    let mut nanos: u64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += u64::from(c.to_digit(10)?) * 10u64.pow(8 - i as u32);
    }
    Some(UNIX_EPOCH + Duration::from_millis(ms) + Duration::from_nanos(nanos))
}

fn short_error(e: &ApiError) -> String {
    match e {
        ApiError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let s = |i: &str| split_reference(i);
        assert_eq!(s("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(
            s("nginx:1.25-alpine"),
            ("nginx".into(), "1.25-alpine".into())
        );
        assert_eq!(
            s("localhost:5000/app"),
            ("localhost:5000/app".into(), "latest".into())
        );
        assert_eq!(
            s("localhost:5000/app:v2"),
            ("localhost:5000/app".into(), "v2".into())
        );
        assert_eq!(
            s("app@sha256:abc"),
            ("app@sha256:abc".into(), String::new())
        );
    }

    #[test]
    fn timestamps() {
        let (t, rest) = split_timestamp(b"2026-11-23T08:40:00.123456789Z hello world\n");
        assert_eq!(rest, b"hello world\n");
        let d = t.unwrap().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(d.subsec_nanos(), 123_456_789);
        assert_eq!(
            crate::logs::format_timestamp(t.unwrap()),
            "2026-11-23T08:40:00.123Z"
        );
        let (t, rest) = split_timestamp(b"no timestamp here");
        assert!(t.is_none());
        assert_eq!(rest, b"no timestamp here");
        assert!(parse_rfc3339("2026-11-23T08:40:00Z").is_some());
    }

    #[test]
    fn create_request() {
        let spec = ContainerSpec {
            name: "chain-x".into(),
            image: "busybox:latest".into(),
            pull: Pull::Never,
            command: Some(vec!["httpd".into(), "-f".into()]),
            entrypoint: None,
            working_dir: None,
            env: vec![("PORT".into(), "80".into())],
            labels: BTreeMap::from([("chain.unit".into(), "web".into())]),
            port: Some(80),
            publish: Some(("127.0.0.1".into(), 8080)),
            mounts: vec![MountSpec {
                source: MountSource::Volume("data".into()),
                target: "/data".into(),
                read_only: true,
            }],
            network: "chain".into(),
            networks: vec![],
            aliases: vec!["web".into()],
            nano_cpus: Some(500_000_000),
            memory: Some(64 << 20),
            user: Some("1000".into()),
            read_only: true,
            init: true,
            gpus: Some(-1),
            stop_signal: "SIGTERM".into(),
            stop_timeout: Duration::from_secs(10),
        };
        let json = serde_json::to_value(create_body(&spec, "net1")).unwrap();
        assert_eq!(json["ExposedPorts"], serde_json::json!({"80/tcp": {}}));
        assert_eq!(
            json["HostConfig"]["PortBindings"]["80/tcp"][0],
            serde_json::json!({"HostIp": "127.0.0.1", "HostPort": "8080"})
        );
        assert_eq!(json["HostConfig"]["NanoCpus"], 500_000_000);
        assert_eq!(json["HostConfig"]["Memory"], 64 << 20);
        assert_eq!(json["HostConfig"]["NetworkMode"], "net1");
        assert_eq!(json["HostConfig"]["Init"], true);
        assert_eq!(json["HostConfig"]["ReadonlyRootfs"], true);
        assert_eq!(json["HostConfig"]["DeviceRequests"][0]["Count"], -1);
        assert_eq!(json["HostConfig"]["Mounts"][0]["Type"], "volume");
        assert!(json["HostConfig"].get("RestartPolicy").is_none());
        assert_eq!(json["Env"], serde_json::json!(["PORT=80"]));
        assert_eq!(
            json["NetworkingConfig"]["EndpointsConfig"]["net1"]["Aliases"],
            serde_json::json!(["web"])
        );
    }
}
