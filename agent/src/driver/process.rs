//! Process driver: spawns instances as real child processes, each in its own session and
//! process group, with stdout and stderr connected to named FIFOs so that the workload keeps
//! running (and keeps logging, up to the pipe buffer) while chaind is down.
//!
//! Invariants:
//! - The daemon process is a child subreaper (`PR_SET_CHILD_SUBREAPER`), and one reaper task
//!   owns every `waitpid` call in the process. Nothing else may call `wait*` on children:
//!   use [`ProcessDriver::run`] for short-lived commands (exec health checks).
//! - Every instance carries `CHAIN_INSTANCE_UID=<tag>` in its environment. The tag finds
//!   descendants that left the process group (double-forked daemons) and finds an instance
//!   whose pid was never recorded (chaind killed between spawn and store write).
//! - A process is identified by pid *and* start time (clock ticks since boot, /proc/PID/stat
//!   field 22), so a recycled pid is never mistaken for an instance.
//!
//! This module owns spawning (fork + exec with `pre_exec`), signalling and adoption. It must
//! not read unit files or decide restarts, and it must never use `tokio::process` or
//! `std::process::Child::wait`: both would race the reaper (see `driver::reaper`).
//!
//! Output: the child's stdout and stderr are FIFOs that the child itself opens `O_RDWR`, so
//! the pipe always has a reader (the child), writes never fail with `EPIPE` while chaind is
//! down, and they block once the 1 MiB pipe buffer is full. The log reader (`logs`) opens the
//! FIFO read-only and sees EOF when the whole process tree has exited.

#![allow(unsafe_code)]

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::reaper::Reaper;
use crate::procfs;

/// Environment variable that carries an instance's tag into every process of its tree.
pub const TAG_ENV: &str = "CHAIN_INSTANCE_UID";

/// Pipe buffer size requested for the output FIFOs (the default maximum for unprivileged
/// processes, `/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// How much combined output [`ProcessDriver::run`] keeps.
const RUN_OUTPUT_LIMIT: usize = 4096;

/// After a [`ProcessDriver::run`] command exited, how long to keep reading output that a
/// lingering descendant still holds open.
const RUN_OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// After SIGKILL at a [`ProcessDriver::run`] timeout, how long to wait for the exit status.
const RUN_KILL_GRACE: Duration = Duration::from_secs(2);

/// Highest signal number on Linux (`_NSIG - 1` on the common architectures).
const MAX_SIGNAL: libc::c_int = 64;

/// Credentials a child switches to before exec (only meaningful when chaind runs as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (set with `setgroups`).
    pub groups: Vec<u32>,
}

/// Everything needed to start one instance incarnation.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Absolute path, a path relative to `cwd` (contains `/`), or a bare name looked up in
    /// the `PATH` found in `env` (falling back to chaind's own `PATH`).
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment: chaind's own is not inherited. The driver adds
    /// `TAG_ENV=tag`.
    pub env: Vec<(String, String)>,
    pub user: Option<UserIds>,
    /// FIFO for stdout; created (mode 0600) when missing. Its directory must exist.
    pub stdout: PathBuf,
    /// FIFO for stderr; same rules.
    pub stderr: PathBuf,
    /// Unique per instance incarnation; must not be empty.
    pub tag: String,
}

/// A process identity that survives pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: i32,
    /// `/proc/PID/stat` field 22: clock ticks since boot.
    pub start_time: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// An adopted process (not our child) exited; its status cannot be known.
    Unknown,
}

impl ExitStatus {
    /// True for exit code 0 only.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(sig) => write!(f, "killed by {}", signal_name(*sig)),
            ExitStatus::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// Resolves with the exit status when the process exits. `Send + Unpin + 'static`.
///
/// For a child started by this process the status is real; for an adopted process it is
/// [`ExitStatus::Unknown`] (a pidfd says *that* a process exited, not *how*).
pub struct ExitWatch {
    inner: Watch,
    /// Read ends of the output FIFOs, held so that the pipes (and what the process wrote)
    /// outlive the process until a log reader attaches. See [`ProcessDriver::start`].
    _keep: Vec<OwnedFd>,
}

impl ExitWatch {
    fn new(inner: Watch) -> ExitWatch {
        ExitWatch {
            inner,
            _keep: Vec::new(),
        }
    }
}

enum Watch {
    Child(oneshot::Receiver<ExitStatus>),
    Pidfd(AsyncFd<OwnedFd>),
    Done(ExitStatus),
}

impl fmt::Debug for ExitWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Watch::Child(_) => "child",
            Watch::Pidfd(_) => "pidfd",
            Watch::Done(_) => "done",
        };
        f.debug_struct("ExitWatch").field("kind", &kind).finish()
    }
}

impl Future for ExitWatch {
    type Output = ExitStatus;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ExitStatus> {
        let status = match &mut self.inner {
            Watch::Done(status) => return Poll::Ready(*status),
            // The sender lives in the reaper's registry for the life of the process; if it is
            // ever dropped without a status, the exit happened but its status is lost.
            Watch::Child(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(result) => result.unwrap_or(ExitStatus::Unknown),
                Poll::Pending => return Poll::Pending,
            },
            // A pidfd becomes readable when the process exits.
            Watch::Pidfd(fd) => match fd.poll_read_ready(cx) {
                Poll::Ready(Ok(_guard)) => ExitStatus::Unknown,
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "pidfd watch failed; reporting the process as exited");
                    ExitStatus::Unknown
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        self.inner = Watch::Done(status);
        Poll::Ready(status)
    }
}

/// Whether retrying the same operation later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Transient,
    Permanent,
}

/// Errors of the process driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("program {program} not found in PATH {path}")]
    NotFound { program: String, path: String },
    #[error("invalid spec for {program}: {reason}")]
    InvalidSpec { program: String, reason: String },
    #[error("working directory {} of {program} is unusable", path.display())]
    Cwd {
        program: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("output fifo {}", path.display())]
    Fifo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("output fifo {} exists and is not a fifo", path.display())]
    NotAFifo { path: PathBuf },
    #[error("output pipe for {program}")]
    Pipe {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot spawn {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("process {pid} of {program} vanished from /proc right after spawn")]
    NoStartTime { program: String, pid: i32 },
    #[error("cannot open a pidfd for process {pid}")]
    Pidfd {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot send {signal} to {target}")]
    Signal {
        target: String,
        signal: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} must be called inside a tokio runtime")]
    NoRuntime { what: &'static str },
    #[error("cannot make chaind a child subreaper")]
    Subreaper(#[source] io::Error),
    #[error("cannot start the reaper thread")]
    Reaper(#[source] io::Error),
}

impl Error {
    /// Whether starting again later can succeed without someone changing the spec or the
    /// machine.
    pub fn retry(&self) -> Retry {
        match self {
            Error::NotFound { .. }
            | Error::InvalidSpec { .. }
            | Error::NotAFifo { .. }
            | Error::Subreaper(_) => Retry::Permanent,
            Error::NoStartTime { .. } | Error::NoRuntime { .. } => Retry::Transient,
            Error::Cwd { source, .. }
            | Error::Fifo { source, .. }
            | Error::Pipe { source, .. }
            | Error::Spawn { source, .. }
            | Error::Pidfd { source, .. }
            | Error::Signal { source, .. }
            | Error::Reaper(source) => classify(source),
        }
    }
}

/// Classifies an OS error: what a retry cannot fix is permanent, resource exhaustion and
/// anything unrecognised is transient (the restart policy's backoff bounds the cost).
fn classify(e: &io::Error) -> Retry {
    if e.raw_os_error().is_none() && e.kind() == io::ErrorKind::InvalidInput {
        // std's own validation (a NUL byte in the program path, for example).
        return Retry::Permanent;
    }
    match e.raw_os_error() {
        Some(
            libc::ENOENT
            | libc::EACCES
            | libc::EPERM
            | libc::ENOEXEC
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::ELOOP
            | libc::ENAMETOOLONG
            | libc::E2BIG
            | libc::EINVAL
            | libc::ELIBBAD
            | libc::EROFS,
        ) => Retry::Permanent,
        _ => Retry::Transient,
    }
}

/// A short command run to completion (exec health checks).
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub user: Option<UserIds>,
}

/// Result of [`ProcessDriver::run`].
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub status: ExitStatus,
    /// The first 4 KiB of combined stdout and stderr, lossy UTF-8.
    pub output: String,
    /// The command ran past its timeout and its process group was killed.
    pub timed_out: bool,
}

/// Handle to the process driver. Cheap to clone; every clone shares the one reaper.
#[derive(Clone)]
pub struct ProcessDriver {
    reaper: Arc<Reaper>,
}

impl fmt::Debug for ProcessDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessDriver").finish_non_exhaustive()
    }
}

/// The process-wide driver: there is exactly one reaper per process.
static DRIVER: Mutex<Option<ProcessDriver>> = Mutex::new(None);

impl ProcessDriver {
    /// Returns the process-wide driver, creating it on the first call: sets
    /// `PR_SET_CHILD_SUBREAPER` on this process and starts the reaper thread. Later calls
    /// return a clone of the same driver.
    ///
    /// The reaper runs on its own thread with its own runtime, so this may be called from any
    /// runtime (or none), and the reaper outlives the runtime of the first caller.
    pub fn new() -> Result<Self, Error> {
        let mut slot = DRIVER.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(driver) = slot.as_ref() {
            return Ok(driver.clone());
        }
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument and touches
        // no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
        if rc == -1 {
            return Err(Error::Subreaper(io::Error::last_os_error()));
        }
        let reaper = Reaper::start().map_err(Error::Reaper)?;
        let driver = ProcessDriver { reaper };
        *slot = Some(driver.clone());
        Ok(driver)
    }

    /// Spawns an instance: own session and process group, stdin `/dev/null`, stdout and
    /// stderr the FIFOs of the spec opened `O_RDWR` (pipe size raised to 1 MiB when
    /// allowed), signal mask and dispositions reset, every inherited fd above 2 closed on
    /// exec, and no parent-death signal (workloads outlive chaind).
    ///
    /// The returned watch also holds a read end of each FIFO: a pipe is destroyed with its
    /// last open fd, so without it the output of a process tree that exits before
    /// `UnitLog::attach` opens the FIFOs would be lost. Attach before dropping the watch.
    pub fn start(&self, spec: &ProcessSpec) -> Result<(ProcessId, ExitWatch), Error> {
        if spec.tag.is_empty() || spec.tag.contains('\0') {
            return Err(Error::InvalidSpec {
                program: spec.program.clone(),
                reason: "the instance tag is empty or contains a NUL byte".into(),
            });
        }
        let program = resolve_program(&spec.program, &spec.cwd, &spec.env)?;
        check_cwd(&spec.program, &spec.cwd)?;
        let (stdout, keep_stdout) = open_fifo(&spec.stdout)?;
        let (stderr, keep_stderr) = open_fifo(&spec.stderr)?;
        let mut command = build_command(
            &spec.program,
            &program,
            &spec.args,
            &spec.cwd,
            &spec.env,
            spec.user.as_ref(),
        )?;
        command
            .env(TAG_ENV, &spec.tag)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let (id, rx) = self.spawn_registered(&mut command, &spec.program)?;
        // Dropping the command closes chaind's copies of the FIFO ends.
        drop(command);
        Ok((
            id,
            ExitWatch {
                inner: Watch::Child(rx),
                _keep: vec![keep_stdout, keep_stderr],
            },
        ))
    }

    /// Spawns under the registry lock and registers the child before the lock is released.
    fn spawn_registered(
        &self,
        command: &mut Command,
        program: &str,
    ) -> Result<(ProcessId, oneshot::Receiver<ExitStatus>), Error> {
        let mut registry = self.reaper.lock();
        // The child is reaped only through the registry (see `driver::reaper`); the `Child`
        // handle is dropped without waiting.
        #[allow(clippy::zombie_processes)]
        let child = command.spawn().map_err(|source| Error::Spawn {
            program: program.to_string(),
            source,
        })?;
        let Ok(pid) = i32::try_from(child.id()) else {
            // Linux pids fit in i32; this arm only keeps the conversion panic-free.
            return Err(Error::NoStartTime {
                program: program.to_string(),
                pid: -1,
            });
        };
        drop(child);
        let rx = registry.register(pid);
        // The child cannot have been reaped (we hold the lock), so /proc/PID exists, zombie
        // or not.
        let start_time = procfs::start_time(pid);
        drop(registry);
        match start_time {
            Some(start_time) => Ok((ProcessId { pid, start_time }, rx)),
            None => {
                // Without a start time the instance could never be re-adopted safely; do
                // not leave it running unrecorded.
                kill_raw(-pid, libc::SIGKILL);
                Err(Error::NoStartTime {
                    program: program.to_string(),
                    pid,
                })
            }
        }
    }

    /// Re-attaches to a process started by an earlier chaind. Verifies pid and start time,
    /// opens a pidfd and verifies the start time again (the pid could have been recycled in
    /// between). `Ok(None)` when no such process exists any more.
    ///
    /// The watch resolves with [`ExitStatus::Unknown`], unless the process is a child of this
    /// process that the driver started, in which case the real status arrives.
    /// Must be called inside a tokio runtime (the pidfd is registered with its reactor).
    pub fn adopt(&self, id: ProcessId) -> Result<Option<ExitWatch>, Error> {
        if id.pid <= 1 || procfs::start_time(id.pid) != Some(id.start_time) {
            return Ok(None);
        }
        {
            let mut registry = self.reaper.lock();
            if registry.is_registered(id.pid) {
                // An unreaped child keeps its pid, so the start-time check above was about
                // this very child.
                return Ok(Some(ExitWatch::new(Watch::Child(
                    registry.register(id.pid),
                ))));
            }
        }
        // A zombie that is not our child has already exited (its reaper, perhaps a PID 1 that
        // never reaps, holds the status): there is nothing to adopt.
        if procfs::stat(id.pid).is_none_or(|s| s.is_zombie()) {
            return Ok(None);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime {
                what: "ProcessDriver::adopt",
            });
        }
        let fd = match pidfd_open(id.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(source) => {
                return Err(Error::Pidfd {
                    pid: id.pid,
                    source,
                })
            }
        };
        if procfs::start_time(id.pid) != Some(id.start_time) {
            return Ok(None);
        }
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, so it stays open and keeps
        // referring to this pidfd until the `AsyncFd` is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::Pidfd {
                pid: id.pid,
                source: e.into(),
            })?;
        Ok(Some(ExitWatch::new(Watch::Pidfd(fd))))
    }

    /// Every live process whose environment holds `TAG_ENV=tag` (this process excluded;
    /// unreadable and zombie processes skipped).
    pub fn find_tagged(tag: &str) -> Vec<ProcessId> {
        if tag.is_empty() {
            return Vec::new();
        }
        let needle = format!("{TAG_ENV}={tag}");
        let me = std::process::id() as i32;
        procfs::all_pids()
            .into_iter()
            .filter(|pid| *pid != me && procfs::environ_contains(*pid, needle.as_bytes()))
            .filter_map(|pid| {
                let stat = procfs::stat(pid)?;
                (!stat.is_zombie()).then_some(ProcessId {
                    pid,
                    start_time: stat.start_time,
                })
            })
            .collect()
    }

    /// Sends `signal` to the process group of `id` and to every process carrying `tag` that
    /// is outside that group (so no process gets it twice). A vanished process is not an
    /// error. Never signals pid 0 or 1, this process or its process group, and skips the
    /// group when its pid now belongs to another process (recycled).
    pub fn signal(&self, id: ProcessId, tag: &str, signal: i32) -> Result<(), Error> {
        let mut first_error = None;
        let group_sent = match signal_group(id, signal) {
            Ok(sent) => sent,
            Err(e) => {
                first_error = Some(e);
                false
            }
        };
        let skip_pgid = group_sent.then_some(id.pid);
        for target in Self::find_tagged(tag) {
            if let Err(e) = signal_tagged(target, signal, skip_pgid) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// SIGKILLs the process group of `id` and every process still carrying `tag`, scanning
    /// again a few times in case a tagged process forked while the first scan ran.
    pub fn kill_all(&self, id: ProcessId, tag: &str) {
        if let Err(e) = signal_group(id, libc::SIGKILL) {
            tracing::warn!(pid = id.pid, error = %e, "kill_all: process group");
        }
        let mut killed: HashSet<ProcessId> = HashSet::new();
        for _round in 0..4 {
            let left: Vec<ProcessId> = Self::find_tagged(tag)
                .into_iter()
                .filter(|p| !killed.contains(p))
                .collect();
            if left.is_empty() {
                break;
            }
            for target in left {
                if let Err(e) = signal_tagged(target, libc::SIGKILL, None) {
                    tracing::warn!(pid = target.pid, %tag, error = %e, "kill_all: tagged process");
                }
                killed.insert(target);
            }
        }
    }

    /// Runs a short command to completion in its own session and process group, capturing
    /// the first 4 KiB of combined output. At `timeout` the group is SIGKILLed and the result
    /// says `timed_out`. The exit status comes from the reaper like every other child's.
    pub async fn run(&self, cmd: &CommandSpec, timeout: Duration) -> Result<RunOutput, Error> {
        let program = resolve_program(&cmd.program, &cmd.cwd, &cmd.env)?;
        check_cwd(&cmd.program, &cmd.cwd)?;
        let pipe_error = |source| Error::Pipe {
            program: cmd.program.clone(),
            source,
        };
        let (tx, mut rx) = tokio::net::unix::pipe::pipe().map_err(pipe_error)?;
        let out = tx.into_blocking_fd().map_err(pipe_error)?;
        let err = out.try_clone().map_err(pipe_error)?;
        let mut command = build_command(
            &cmd.program,
            &program,
            &cmd.args,
            &cmd.cwd,
            &cmd.env,
            cmd.user.as_ref(),
        )?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let (id, status_rx) = self.spawn_registered(&mut command, &cmd.program)?;
        // Close our write ends, so EOF arrives once the command's tree is done with them.
        drop(command);
        let mut watch = ExitWatch::new(Watch::Child(status_rx));

        let mut output = Vec::new();
        let mut chunk = vec![0u8; 4096];
        let mut eof = false;
        let mut status = None;
        let mut timed_out = false;
        let mut deadline = tokio::time::Instant::now() + timeout;
        while !(eof && status.is_some()) {
            tokio::select! {
                read = rx.read(&mut chunk), if !eof => match read {
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => {
                        let room = RUN_OUTPUT_LIMIT.saturating_sub(output.len());
                        output.extend_from_slice(&chunk[..n.min(room)]);
                    }
                },
                exited = &mut watch, if status.is_none() => {
                    status = Some(exited);
                    // A descendant may still hold the pipe open; read what it already wrote
                    // for a short while, then stop.
                    deadline = tokio::time::Instant::now() + RUN_OUTPUT_GRACE;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if status.is_some() {
                        break;
                    }
                    if timed_out {
                        // Even SIGKILL did not produce an exit (uninterruptible sleep).
                        status = Some(ExitStatus::Unknown);
                        break;
                    }
                    timed_out = true;
                    kill_raw(-id.pid, libc::SIGKILL);
                    deadline = tokio::time::Instant::now() + RUN_KILL_GRACE;
                }
            }
        }
        Ok(RunOutput {
            status: status.unwrap_or(ExitStatus::Unknown),
            output: String::from_utf8_lossy(&output).into_owned(),
            timed_out,
        })
    }
}

/// Sends `signal` to the process group led by `id` unless that would hit pid 0/1, our own
/// group, or a group whose leader pid was recycled. Returns whether the signal was sent.
fn signal_group(id: ProcessId, signal: i32) -> Result<bool, Error> {
    if id.pid <= 1 || id.pid == own_pgrp() {
        return Ok(false);
    }
    // A live process with this pid but another start time means the pid was recycled. When
    // the leader is gone entirely, the group can still hold members, and its id cannot be
    // reused while it does.
    if procfs::start_time(id.pid).is_some_and(|t| t != id.start_time) {
        return Ok(false);
    }
    match kill_checked(-id.pid, signal) {
        Ok(sent) => Ok(sent),
        Err(source) => Err(Error::Signal {
            target: format!("process group {}", id.pid),
            signal: signal_name(signal),
            source,
        }),
    }
}

/// Signals one tagged process unless it is pid 0/1, this process, or in `skip_pgid`.
fn signal_tagged(target: ProcessId, signal: i32, skip_pgid: Option<i32>) -> Result<(), Error> {
    if target.pid <= 1 || target.pid == std::process::id() as i32 {
        return Ok(());
    }
    let Some(stat) = procfs::stat(target.pid) else {
        return Ok(());
    };
    if stat.start_time != target.start_time || Some(stat.pgid) == skip_pgid {
        return Ok(());
    }
    kill_checked(target.pid, signal)
        .map(|_| ())
        .map_err(|source| Error::Signal {
            target: format!("process {}", target.pid),
            signal: signal_name(signal),
            source,
        })
}

/// `kill(2)`; `Ok(false)` on ESRCH.
fn kill_checked(target: i32, signal: i32) -> io::Result<bool> {
    // SAFETY: kill takes two integers and touches no memory. Callers never pass 0, -1, 1
    // or our own group (checked above).
    let rc = unsafe { libc::kill(target, signal) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Best-effort kill for error paths; guards against pid 0, 1 and -1.
fn kill_raw(target: i32, signal: i32) {
    if target.unsigned_abs() <= 1 || -target == own_pgrp() {
        return;
    }
    let _ = kill_checked(target, signal);
}

fn own_pgrp() -> i32 {
    // SAFETY: getpgrp has no arguments and cannot fail.
    unsafe { libc::getpgrp() }
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new fd or -1.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = libc::c_int::try_from(rc).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Finds the executable: paths with `/` are taken as they are (relative ones against
/// `cwd`), bare names are searched in the spec's `PATH`, or chaind's own.
fn resolve_program(program: &str, cwd: &Path, env: &[(String, String)]) -> Result<PathBuf, Error> {
    if program.is_empty() {
        return Err(Error::InvalidSpec {
            program: String::new(),
            reason: "empty program".into(),
        });
    }
    if program.contains('/') {
        let path = Path::new(program);
        return Ok(if path.is_absolute() {
            path.to_path_buf()
        } else {
            cwd.join(path)
        });
    }
    let search = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
    for dir in search.split(':').filter(|d| !d.is_empty()) {
        let candidate = cwd.join(dir).join(program);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return Ok(candidate);
        }
    }
    Err(Error::NotFound {
        program: program.to_string(),
        path: search,
    })
}

fn check_cwd(program: &str, cwd: &Path) -> Result<(), Error> {
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Cwd {
            program: program.to_string(),
            path: cwd.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        }),
        Err(source) => Err(Error::Cwd {
            program: program.to_string(),
            path: cwd.to_path_buf(),
            source,
        }),
    }
}

/// Creates the FIFO if missing (mode 0600) and opens it read-write for the child, plus a
/// non-blocking read end that chaind keeps (see [`ProcessDriver::start`]).
fn open_fifo(path: &Path) -> Result<(File, OwnedFd), Error> {
    let fifo_error = |source| Error::Fifo {
        path: path.to_path_buf(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Fifo {
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    if rc == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(fifo_error(e));
        }
    }
    let meta = std::fs::metadata(path).map_err(fifo_error)?;
    if !meta.file_type().is_fifo() {
        return Err(Error::NotAFifo {
            path: path.to_path_buf(),
        });
    }
    // The keeper is opened first and non-blocking, which never waits for a writer.
    let keeper = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(fifo_error)?;
    // O_RDWR: the child is its own reader, so its writes never see EPIPE. Opening a FIFO
    // read-write never blocks on Linux. std adds O_CLOEXEC; the child gets the fd through
    // dup2 onto 1 or 2, which clears it there.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(fifo_error)?;
    // SAFETY: F_SETPIPE_SZ takes an int argument; the fd is valid for the call. Failure
    // (EPERM above the limit, EBUSY when the pipe holds more data) keeps the old size.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    Ok((file, OwnedFd::from(keeper)))
}

/// Builds the command with a cleared environment and the `pre_exec` hook that puts the child
/// in its own session, resets signals, drops privileges and marks stray fds close-on-exec.
fn build_command(
    display: &str,
    program: &Path,
    args: &[String],
    cwd: &Path,
    env: &[(String, String)],
    user: Option<&UserIds>,
) -> Result<Command, Error> {
    let invalid = |reason: &str| Error::InvalidSpec {
        program: display.to_string(),
        reason: reason.to_string(),
    };
    if args.iter().any(|a| a.contains('\0')) {
        return Err(invalid("an argument contains a NUL byte"));
    }
    if env
        .iter()
        .any(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
    {
        return Err(invalid(
            "an environment variable has an invalid name or value",
        ));
    }
    // Everything the child needs after fork is prepared here: only async-signal-safe calls
    // are allowed between fork and exec.
    let c_cwd = CString::new(cwd.as_os_str().as_bytes())
        .map_err(|_| invalid("the working directory contains a NUL byte"))?;
    let creds = user.map(|u| (u.uid, u.gid, u.groups.clone()));

    let mut command = Command::new(program);
    command.args(args).current_dir(cwd).env_clear();
    for (k, v) in env {
        command.env(k, v);
    }
    let hook = move || -> io::Result<()> {
        // SAFETY: this runs in the forked child before exec. It calls only async-signal-safe
        // syscalls (setsid, sigprocmask, rt_sigaction, setgroups/setgid/setuid, chdir,
        // close_range) on memory prepared before the fork (`creds`, `c_cwd`) or on the
        // stack.
        unsafe {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Ignored signals stay ignored across exec (std ignores SIGPIPE; chaind's own
            // parent may have ignored others), so reset every disposition. The raw syscall
            // also reaches 32 and 33, which glibc's wrappers refuse to touch. An all-zero
            // kernel `sigaction` is SIG_DFL with no flags and an empty mask on every
            // architecture; invalid numbers just fail.
            let default_action = [0u64; 8];
            for sig in 1..=MAX_SIGNAL {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        default_action.as_ptr(),
                        std::ptr::null_mut::<u64>(),
                        8usize,
                    );
                }
            }
            if let Some((uid, gid, groups)) = &creds {
                if libc::setgroups(groups.len(), groups.as_ptr()) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(*gid) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setuid(*uid) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // std changed directory as root; do it again as the user so that directory
                // permissions apply to the workload's own credentials.
                if libc::chdir(c_cwd.as_ptr()) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Any fd above stderr that some library opened without O_CLOEXEC must not leak
            // into the workload. ENOSYS on old kernels is fine: std's own fds are CLOEXEC.
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
        Ok(())
    };
    // SAFETY: the hook only performs async-signal-safe syscalls, allocates nothing and takes
    // no locks (see the comment inside it).
    unsafe {
        command.pre_exec(hook);
    }
    Ok(command)
}

/// Parses a signal name or number: `SIGTERM`, `TERM`, `sigterm` and `15` all give 15.
pub fn signal_from_name(name: &str) -> Option<i32> {
    let name = name.trim();
    if let Ok(n) = name.parse::<i32>() {
        return (1..=MAX_SIGNAL).contains(&n).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(_, full)| &full[3..] == bare)
        .map(|(n, _)| *n)
}

/// The name of a signal number (`15` gives `SIGTERM`), `SIG?` when unknown.
pub fn signal_name(sig: i32) -> &'static str {
    SIGNALS
        .iter()
        .find(|(n, _)| *n == sig)
        .map_or("SIG?", |(_, name)| name)
}

const SIGNALS: &[(i32, &str)] = &[
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGKILL, "SIGKILL"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGCHLD, "SIGCHLD"),
    (libc::SIGCONT, "SIGCONT"),
    (libc::SIGSTOP, "SIGSTOP"),
    (libc::SIGTSTP, "SIGTSTP"),
    (libc::SIGTTIN, "SIGTTIN"),
    (libc::SIGTTOU, "SIGTTOU"),
    (libc::SIGURG, "SIGURG"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGWINCH, "SIGWINCH"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
    (libc::SIGSYS, "SIGSYS"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{eventually, unique_tag, KillOnDrop, PATIENCE};

    fn driver() -> ProcessDriver {
        ProcessDriver::new().expect("process driver starts")
    }

    fn sh_spec(dir: &Path, script: &str, tag: &str) -> ProcessSpec {
        ProcessSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: dir.to_path_buf(),
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            user: None,
            stdout: dir.join("out.fifo"),
            stderr: dir.join("err.fifo"),
            tag: tag.into(),
        }
    }

    fn sh_cmd(dir: &Path, script: &str) -> CommandSpec {
        CommandSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: dir.to_path_buf(),
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            user: None,
        }
    }

    fn start(dir: &Path, script: &str, name: &str) -> (KillOnDrop, ExitWatch) {
        let driver = driver();
        let tag = unique_tag(name);
        let (id, watch) = driver.start(&sh_spec(dir, script, &tag)).expect("starts");
        (KillOnDrop { driver, id, tag }, watch)
    }

    /// SIGKILLs one process when dropped (for processes outside any tagged tree).
    struct KillPidOnDrop(i32);

    impl Drop for KillPidOnDrop {
        fn drop(&mut self) {
            kill_raw(self.0, libc::SIGKILL);
        }
    }

    async fn wait(watch: ExitWatch) -> ExitStatus {
        tokio::time::timeout(PATIENCE, watch)
            .await
            .expect("process exits in time")
    }

    /// An exit code reaches the watch through the reaper.
    #[tokio::test]
    async fn exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let (_guard, watch) = start(dir.path(), "exit 3", "code");
        assert_eq!(wait(watch).await, ExitStatus::Code(3));
        let (_guard, watch) = start(dir.path(), "true", "zero");
        let status = wait(watch).await;
        assert!(status.success());
        assert_eq!(status.to_string(), "exit code 0");
    }

    /// A death by signal is reported as the signal.
    #[tokio::test]
    async fn killed_by_signal() {
        let dir = tempfile::tempdir().unwrap();
        let (_guard, watch) = start(dir.path(), "kill -KILL $$", "sig");
        let status = wait(watch).await;
        assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
        assert_eq!(status.to_string(), "killed by SIGKILL");
        assert!(!status.success());
    }

    /// `signal` reaches every member of the process group, and the leader's status shows it.
    #[tokio::test]
    async fn signal_reaches_group() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, watch) = start(dir.path(), "sleep 1000 & sleep 1000 & wait", "group");
        let tag = guard.tag.clone();
        assert!(
            eventually(PATIENCE, || ProcessDriver::find_tagged(&tag).len() >= 3).await,
            "sh and two sleeps carry the tag"
        );
        let members = ProcessDriver::find_tagged(&tag);
        guard
            .driver
            .signal(guard.id, &guard.tag, libc::SIGTERM)
            .expect("signal sent");
        assert_eq!(wait(watch).await, ExitStatus::Signal(libc::SIGTERM));
        assert!(
            eventually(PATIENCE, || members
                .iter()
                .all(|p| !procfs::is_alive(p.pid)))
            .await,
            "every group member died"
        );
    }

    /// The child runs in its own session with default signal handling, no blocked signals,
    /// only fds 0-2, the tag in its environment and nothing of chaind's environment.
    #[tokio::test]
    async fn child_environment() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo \"$CHAIN_INSTANCE_UID|${HOME:-unset}|$PWD\" > env.txt; exec sleep 1000";
        let (guard, _watch) = start(dir.path(), script, "env");
        let env_file = dir.path().join("env.txt");
        assert!(eventually(PATIENCE, || env_file.exists()).await);
        let pid = guard.id.pid;
        // Wait for the exec: until then /proc shows the shell.
        assert!(
            eventually(PATIENCE, || std::fs::read_to_string(format!(
                "/proc/{pid}/comm"
            ))
            .is_ok_and(|c| c.trim() == "sleep"))
            .await
        );
        let stat = procfs::stat(pid).expect("child visible");
        assert_eq!((stat.sid, stat.pgid), (pid, pid), "own session and group");
        assert_eq!(stat.start_time, guard.id.start_time);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        for field in ["SigIgn:", "SigBlk:"] {
            let line = status.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(
                line.trim_start_matches(field)
                    .trim()
                    .chars()
                    .all(|c| c == '0'),
                "{line}"
            );
        }
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        assert_eq!(fds, ["0", "1", "2"]);
        let env = std::fs::read_to_string(&env_file).unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(env.trim(), format!("{}|unset|{}", guard.tag, cwd.display()));
    }

    /// A double-forked grandchild that left the process group is found by its tag and
    /// killed by `kill_all`; nothing of the tree survives.
    #[tokio::test]
    async fn kill_all_reaches_escaped_grandchild() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, watch) = start(dir.path(), "setsid sleep 1000 & sleep 1000", "escape");
        let tag = guard.tag.clone();
        let escaped = |tag: &str, leader: i32| {
            ProcessDriver::find_tagged(tag)
                .into_iter()
                .find(|p| procfs::pgid(p.pid).is_some_and(|g| g != leader))
        };
        assert!(
            eventually(PATIENCE, || escaped(&tag, guard.id.pid).is_some()).await,
            "a tagged process outside the group exists"
        );
        let tree = ProcessDriver::find_tagged(&tag);
        assert!(tree.len() >= 2);
        guard.driver.kill_all(guard.id, &tag);
        assert_eq!(wait(watch).await, ExitStatus::Signal(libc::SIGKILL));
        assert!(
            eventually(PATIENCE, || ProcessDriver::find_tagged(&tag).is_empty()
                && tree
                    .iter()
                    .all(|p| procfs::start_time(p.pid) != Some(p.start_time)))
            .await,
            "every process of the tree is gone and reaped"
        );
    }

    /// `find_tagged` matches the whole tag, not a prefix.
    #[tokio::test]
    async fn find_tagged_exact() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, _watch) = start(dir.path(), "exec sleep 1000", "exact");
        let tag = guard.tag.clone();
        assert!(
            eventually(PATIENCE, || ProcessDriver::find_tagged(&tag)
                == vec![guard.id])
            .await
        );
        assert!(ProcessDriver::find_tagged(&tag[..tag.len() - 1]).is_empty());
        assert!(ProcessDriver::find_tagged("").is_empty());
    }

    /// A process that is not our registered child (double-forked via a command, reparented
    /// to us as subreaper) is adopted, and its exit is noticed with an unknown status.
    #[tokio::test]
    async fn adopt_foreign_process() {
        let dir = tempfile::tempdir().unwrap();
        let driver = driver();
        let out = driver
            .run(
                &sh_cmd(dir.path(), "sleep 1000 >/dev/null 2>&1 & echo $!"),
                PATIENCE,
            )
            .await
            .expect("runs");
        let pid: i32 = out.output.trim().parse().expect("prints a pid");
        let start_time = procfs::start_time(pid).expect("sleep is alive");
        let id = ProcessId { pid, start_time };
        let _guard = KillPidOnDrop(pid);
        let watch = driver
            .adopt(id)
            .expect("adopt works")
            .expect("process exists");
        assert_eq!(format!("{watch:?}"), "ExitWatch { kind: \"pidfd\" }");
        kill_raw(pid, libc::SIGKILL);
        assert_eq!(wait(watch).await, ExitStatus::Unknown);
    }

    /// A direct child spawned outside the driver (not registered) is adopted through a pidfd.
    #[tokio::test]
    async fn adopt_unregistered_child() {
        let driver = driver();
        let child = {
            // The registry lock keeps the reaper away while the child is spawned; the
            // reaper then reaps it as an unregistered orphan.
            let _registry = driver.reaper.lock();
            #[allow(clippy::zombie_processes)]
            Command::new("sleep")
                .arg("1000")
                .spawn()
                .expect("sleep spawns")
        };
        let pid = child.id() as i32;
        drop(child);
        let _guard = KillPidOnDrop(pid);
        let id = ProcessId {
            pid,
            start_time: procfs::start_time(pid).expect("alive"),
        };
        let watch = driver.adopt(id).unwrap().expect("process exists");
        kill_raw(pid, libc::SIGKILL);
        assert_eq!(wait(watch).await, ExitStatus::Unknown);
        assert!(eventually(PATIENCE, || procfs::start_time(pid).is_none()).await);
    }

    /// Adopting our own running child yields its real status.
    #[tokio::test]
    async fn adopt_own_child() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, first) = start(dir.path(), "read x < /dev/zero; exec sleep 1000", "own");
        let second = guard.driver.adopt(guard.id).unwrap().expect("alive");
        guard
            .driver
            .signal(guard.id, &guard.tag, libc::SIGTERM)
            .unwrap();
        assert_eq!(wait(first).await, ExitStatus::Signal(libc::SIGTERM));
        assert_eq!(wait(second).await, ExitStatus::Signal(libc::SIGTERM));
    }

    /// A wrong start time (recycled pid) or a vanished pid adopts nothing.
    #[tokio::test]
    async fn adopt_rejects_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, _watch) = start(dir.path(), "exec sleep 1000", "mismatch");
        let wrong = ProcessId {
            pid: guard.id.pid,
            start_time: guard.id.start_time + 1,
        };
        assert!(guard.driver.adopt(wrong).unwrap().is_none());
        let gone = ProcessId {
            pid: i32::MAX,
            start_time: 1,
        };
        assert!(guard.driver.adopt(gone).unwrap().is_none());
        let init = ProcessId {
            pid: 1,
            start_time: procfs::start_time(1).unwrap_or(0),
        };
        assert!(guard.driver.adopt(init).unwrap().is_none());
    }

    /// `run` captures combined output and the exit code.
    #[tokio::test]
    async fn run_captures_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = driver()
            .run(
                &sh_cmd(dir.path(), "echo out; echo err >&2; exit 2"),
                PATIENCE,
            )
            .await
            .unwrap();
        assert_eq!(out.status, ExitStatus::Code(2));
        assert!(!out.timed_out);
        assert!(out.output.contains("out\n") && out.output.contains("err\n"));
    }

    /// Output beyond 4 KiB is drained but not kept, and does not block the command.
    #[tokio::test]
    async fn run_limits_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = driver()
            .run(
                &sh_cmd(dir.path(), "head -c 1000000 /dev/zero | tr '\\0' a"),
                PATIENCE,
            )
            .await
            .unwrap();
        assert_eq!(out.status, ExitStatus::Code(0));
        assert_eq!(out.output.len(), RUN_OUTPUT_LIMIT);
    }

    /// At the timeout the whole group of the command is killed.
    #[tokio::test]
    async fn run_timeout_kills_group() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let out = driver()
            .run(
                &sh_cmd(
                    dir.path(),
                    "echo started; sleep 1000 & echo $! > bg.pid; wait",
                ),
                Duration::from_millis(300),
            )
            .await
            .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.status, ExitStatus::Signal(libc::SIGKILL));
        assert!(out.output.starts_with("started"));
        assert!(started.elapsed() < PATIENCE);
        let bg: i32 = std::fs::read_to_string(dir.path().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(eventually(PATIENCE, || !procfs::is_alive(bg)).await);
    }

    /// Spawn failures say whether a retry can help.
    #[tokio::test]
    async fn spawn_errors_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let driver = driver();
        let mut spec = sh_spec(dir.path(), "true", &unique_tag("err"));

        spec.program = "no-such-program-chain".into();
        let e = driver.start(&spec).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        assert_eq!(e.retry(), Retry::Permanent);

        let script = dir.path().join("not-executable.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        spec.program = script.display().to_string();
        let e = driver.start(&spec).unwrap_err();
        assert!(matches!(e, Error::Spawn { .. }), "{e}");
        assert_eq!(e.retry(), Retry::Permanent);

        spec.program = "sh".into();
        spec.cwd = dir.path().join("missing");
        let e = driver.start(&spec).unwrap_err();
        assert!(matches!(e, Error::Cwd { .. }), "{e}");
        assert_eq!(e.retry(), Retry::Permanent);

        spec.cwd = dir.path().to_path_buf();
        std::fs::write(dir.path().join("plain"), "").unwrap();
        spec.stdout = dir.path().join("plain");
        let e = driver.start(&spec).unwrap_err();
        assert!(matches!(e, Error::NotAFifo { .. }), "{e}");

        spec.stdout = dir.path().join("no-dir/out.fifo");
        let e = driver.start(&spec).unwrap_err();
        assert!(matches!(e, Error::Fifo { .. }), "{e}");

        let e = Error::Spawn {
            program: "x".into(),
            source: io::Error::from_raw_os_error(libc::EAGAIN),
        };
        assert_eq!(e.retry(), Retry::Transient);
        assert_eq!(e.to_string(), "cannot spawn x");
    }

    /// Relative programs resolve against `cwd`; bare names against the spec's `PATH`.
    #[tokio::test]
    async fn program_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("chain-tool");
        std::fs::write(&tool, "#!/bin/sh\necho tool:$1\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let driver = driver();

        let mut cmd = sh_cmd(dir.path(), "");
        cmd.program = "chain-tool".into();
        cmd.args = vec!["bare".into()];
        cmd.env = vec![("PATH".into(), format!("/bin:{}", bin.display()))];
        let out = driver.run(&cmd, PATIENCE).await.unwrap();
        assert_eq!(out.output, "tool:bare\n");

        cmd.program = "./bin/chain-tool".into();
        cmd.args = vec!["relative".into()];
        let out = driver.run(&cmd, PATIENCE).await.unwrap();
        assert_eq!(out.output, "tool:relative\n");

        cmd.program = "chain-tool".into();
        cmd.env = vec![("PATH".into(), "/bin".into())];
        assert!(matches!(
            driver.run(&cmd, PATIENCE).await,
            Err(Error::NotFound { .. })
        ));
    }

    /// As root, the child switches to the requested user and groups.
    #[tokio::test]
    async fn runs_as_user() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping runs_as_user: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = sh_cmd(dir.path(), "id -u; id -g; id -G");
        cmd.user = Some(UserIds {
            uid: 65534,
            gid: 65534,
            groups: vec![65534, 4242],
        });
        let out = driver().run(&cmd, PATIENCE).await.unwrap();
        assert_eq!(out.status, ExitStatus::Code(0), "{}", out.output);
        let lines: Vec<&str> = out.output.lines().collect();
        assert_eq!(lines[..2], ["65534", "65534"]);
        assert!(lines[2].split(' ').any(|g| g == "4242"), "{}", out.output);
    }

    /// Pid 0, pid 1 and our own process group are never signalled (signal 0 only probes).
    #[test]
    fn never_signals_own_group_or_init() {
        let own = ProcessId {
            pid: own_pgrp(),
            start_time: procfs::start_time(own_pgrp()).unwrap_or(0),
        };
        assert!(!signal_group(own, 0).unwrap());
        for pid in [-1, 0, 1] {
            let id = ProcessId { pid, start_time: 0 };
            assert!(!signal_group(id, 0).unwrap());
        }
        let me = ProcessId {
            pid: std::process::id() as i32,
            start_time: procfs::start_time(std::process::id() as i32).unwrap(),
        };
        assert!(signal_tagged(me, 0, None).is_ok());
    }

    /// The handles can move between tasks and threads.
    #[test]
    fn handles_are_send() {
        fn check<T: Send + Sync + Unpin + 'static>() {}
        fn check_watch<T: Send + Unpin + 'static>() {}
        check::<ProcessDriver>();
        check_watch::<ExitWatch>();
    }

    /// `ProcessDriver::new` hands out the one process-wide driver.
    #[test]
    fn driver_is_shared() {
        let a = driver();
        let b = driver();
        assert!(Arc::ptr_eq(&a.reaper, &b.reaper));
    }

    /// Signal names parse in every usual spelling and print back.
    #[test]
    fn signal_names() {
        for name in ["SIGTERM", "TERM", "sigterm", "15", " term "] {
            assert_eq!(signal_from_name(name), Some(libc::SIGTERM), "{name}");
        }
        for (name, sig) in [
            ("HUP", libc::SIGHUP),
            ("INT", libc::SIGINT),
            ("QUIT", libc::SIGQUIT),
            ("KILL", libc::SIGKILL),
            ("USR1", libc::SIGUSR1),
            ("USR2", libc::SIGUSR2),
            ("WINCH", libc::SIGWINCH),
            ("CONT", libc::SIGCONT),
            ("STOP", libc::SIGSTOP),
            ("ALRM", libc::SIGALRM),
        ] {
            assert_eq!(signal_from_name(name), Some(sig));
            assert_eq!(signal_name(sig), format!("SIG{name}"));
        }
        for bad in ["", "SIG", "FOO", "0", "-1", "65", "SIGSIGTERM"] {
            assert_eq!(signal_from_name(bad), None, "{bad}");
        }
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(999), "SIG?");
        assert_eq!(ExitStatus::Unknown.to_string(), "exit status unknown");
    }
}
