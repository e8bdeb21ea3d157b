//! Drivers run plain instance specs on this host: [`process`] (child process trees) and
//! [`container`] (Docker containers through the Engine API). Both have the same shape: start,
//! wait for exit, signal, find again after a daemon restart, run a command for health checks.
//!
//! `reaper` is private to the drivers: it owns every `waitpid` in the process, and nothing
//! outside `driver` may start or wait for child processes.

pub mod container;
pub mod process;
mod reaper;
