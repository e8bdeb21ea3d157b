//! Reconciliation: the pure decision cores and the supervisor that carries them out.
//!
//! - [`plan`]: desired units × observed instances → start/stop actions (pure).
//! - [`instance`]: the per-instance state machine (pure).
//! - [`restart`]: restart policy and backoff (pure).
//! - [`supervisor`]: the single task that owns instance state, runs actions and effects, and
//!   publishes snapshots for readers.

pub mod instance;
pub mod plan;
pub mod ports;
pub mod restart;
pub mod snapshot;
pub mod supervisor;
