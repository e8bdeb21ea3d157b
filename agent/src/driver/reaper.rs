//! The reaper: the only code in the process that calls `waitpid`.
//!
//! It owns the registry `pid -> waiters` of children started through the process driver and a
//! dedicated thread that reaps every exited child (`waitpid(-1, WNOHANG)` in a loop) whenever
//! `SIGCHLD` arrives and on a slow tick (a signal can be coalesced or arrive before the
//! handler is installed). Statuses of unregistered children (orphans reparented to us because
//! chaind is a child subreaper) are dropped, which is all they need: to stop being zombies.
//!
//! Invariant: spawning a child and registering it happen under the registry lock, and the
//! reaper reaps only under the same lock, so a child can never be reaped before its waiter
//! exists. It also keeps std's own `waitpid` after a failed `exec` (inside `Command::spawn`)
//! from racing the reaper. This module must not spawn anything itself, and nothing else in
//! the process may call `wait*`.
//!
//! The thread runs its own single-threaded tokio runtime, so the reaper outlives whichever
//! runtime first created the driver (tests create one runtime per test).

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use super::process::ExitStatus;

/// How often the reaper looks for exited children without a `SIGCHLD`.
const TICK: Duration = Duration::from_secs(1);

/// Children started by the driver and not reaped yet, each with the waiters for its status.
#[derive(Default)]
pub(crate) struct Registry {
    waiters: HashMap<i32, Vec<oneshot::Sender<ExitStatus>>>,
}

impl Registry {
    /// Adds a waiter for `pid`. Call it only for a child spawned under this same lock guard,
    /// or for a pid that [`Registry::is_registered`] confirmed.
    pub(crate) fn register(&mut self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.waiters.entry(pid).or_default().push(tx);
        rx
    }

    /// True when `pid` is a registered child that has not been reaped (so the pid cannot
    /// have been recycled).
    pub(crate) fn is_registered(&self, pid: i32) -> bool {
        self.waiters.contains_key(&pid)
    }

    fn deliver(&mut self, pid: i32, status: ExitStatus) {
        if let Some(waiters) = self.waiters.remove(&pid) {
            for tx in waiters {
                // A waiter that stopped listening is fine: nobody needs the status then.
                let _ = tx.send(status);
            }
        }
    }
}

/// Shared handle to the registry; the reaper thread holds another.
pub(crate) struct Reaper {
    registry: Mutex<Registry>,
}

impl Reaper {
    /// Starts the reaper thread and returns once its `SIGCHLD` handler is installed.
    pub(crate) fn start() -> io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper {
            registry: Mutex::new(Registry::default()),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread_reaper = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("chain-reaper".into())
            .spawn(move || thread_main(thread_reaper, ready_tx))?;
        match ready_rx.recv() {
            Ok(result) => result.map(|()| reaper),
            Err(_) => Err(io::Error::other("reaper thread ended during start-up")),
        }
    }

    /// Locks the registry. Spawn and register while holding the guard.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters (worst case a waiter never fires), so poisoning is ignored.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reaps every exited child and delivers the statuses of registered ones.
    fn reap_all(&self) {
        let mut registry = self.lock();
        loop {
            let mut raw: libc::c_int = 0;
            // SAFETY: `raw` is a valid, writable c_int for the duration of the call; WNOHANG
            // makes the call return at once when no child has exited.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid > 0 {
                registry.deliver(pid, decode_status(raw));
                continue;
            }
            if pid == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // 0: children exist but none has exited; -1/ECHILD: no children at all.
            break;
        }
    }
}

/// Decodes a raw `waitpid` status.
pub(crate) fn decode_status(raw: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(raw) {
        ExitStatus::Code(libc::WEXITSTATUS(raw))
    } else if libc::WIFSIGNALED(raw) {
        ExitStatus::Signal(libc::WTERMSIG(raw))
    } else {
        ExitStatus::Unknown
    }
}

fn thread_main(reaper: Arc<Reaper>, ready: std::sync::mpsc::Sender<io::Result<()>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(stream) => Some(stream),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = async { sigchld.as_mut()?.recv().await }, if sigchld.is_some() => {
                    if received.is_none() {
                        tracing::warn!("SIGCHLD stream ended; reaping on the periodic tick only");
                        sigchld = None;
                    }
                }
                _ = tick.tick() => {}
            }
            reaper.reap_all();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw statuses decode into codes and signals.
    #[test]
    fn decode() {
        assert_eq!(decode_status(0), ExitStatus::Code(0));
        assert_eq!(decode_status(3 << 8), ExitStatus::Code(3));
        assert_eq!(decode_status(9), ExitStatus::Signal(9));
        // A stopped child (0x7f in the low byte) is neither exited nor signalled.
        assert_eq!(decode_status(0x137f), ExitStatus::Unknown);
    }
}
