//! Drivers run plain instance specs on this host.
//! Only the process driver exists today; a container driver (Docker Engine API) joins it later
//! behind the same shape: start, wait for exit, signal, adopt after a daemon restart, inspect.
//!
//! `reaper` is private to the drivers: it owns every `waitpid` in the process, and nothing
//! outside `driver` may start or wait for child processes.

pub mod process;
mod reaper;
