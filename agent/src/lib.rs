//! `chain-agent`: the host-facing layer of chain.
//!
//! It runs plain process specs on this machine, pumps their output into rotated log files,
//! runs health probes and samples host statistics.
//! It knows nothing of TOML unit files, the control API or the cluster: the control plane
//! (`chain` crate) resolves units into the plain specs defined here.
//!
//! Code map:
//! - [`driver::process`]: spawn, signal, adopt and reap process trees (pidfd, subreaper, FIFOs).
//! - [`logs`]: per-unit log writer (timestamps, size-based rotation) and log readers.
//! - [`health`]: http / tcp / exec probes with timeouts.
//! - [`host`]: process-tree RSS and CPU sampling (sysinfo), user and group lookup, CPU count.
//! - [`procfs`]: tolerant readers of `/proc/PID/{stat,environ,status}` (start time, parent,
//!   process group, environment, groups).
//! - [`sched`]: nice values of threads and of this process's session (proxy workers'
//!   `worker_priority`).

pub mod driver;
pub mod health;
pub mod host;
pub mod logs;
pub mod procfs;
pub mod sched;

#[cfg(test)]
mod testutil;
