//! chain: one daemon per host that supervises processes from TOML unit files.
//!
//! Code map (docs/ARCHITECTURE.md has the invariants):
//! - [`unit`]: parse and validate unit files, resolve them into [`unit::UnitSpec`]s (pure).
//! - [`store`]: sled trees and record types; the only module that knows sled.
//! - [`reconcile`]: pure decision cores (`plan`, instance state machine, restart policy) and the
//!   `Supervisor`, the single owner of instance state.
//! - [`api`]: wire types, the Unix-socket server, and the client chainctl uses.
//! - [`daemon`]: wiring and shutdown order; `Daemon::run` is the entry point.
//! - [`metrics`]: metric names, the registry, and the `/metrics` exporter (admin listener).
//! - [`cli`]: chainctl's commands and output.
//! - [`import`]: `chainctl import`: docker compose and PM2 files to unit files (pure converters).
//! - [`watch`]: debounced file watching (units directory, `[watch]`).
//! - [`paths`]: default locations shared by chaind and chainctl.
//!
//! The host-facing layer (process driver, logs, probes, stats) is the `chain-agent` crate.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod import;
pub mod metrics;
pub mod paths;
pub mod proxy;
pub mod reconcile;
pub mod store;
pub mod unit;
pub mod watch;
