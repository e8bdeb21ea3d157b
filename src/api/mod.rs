//! The control API: HTTP/1.1 + JSON under `/v1` on a Unix socket.
//!
//! - [`wire`]: the message types (the protocol's only definition).
//! - [`server`]: the listener, routing, SO_PEERCRED checks; calls a [`server::ControlPlane`].
//! - [`client`]: what `chainctl` uses.

pub mod client;
pub mod server;
pub mod wire;
