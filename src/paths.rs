//! Default locations, shared by chaind and chainctl so that both find the same socket.
//!
//! As root: state in /var/lib/chain, units in /etc/chain/units. As a normal user: state in
//! $XDG_STATE_HOME/chain (or ~/.local/state/chain), units in ./units.

use std::path::PathBuf;

pub const SOCKET_NAME: &str = "chaind.sock";

pub fn default_root() -> PathBuf {
    if chain_agent::host::euid() == 0 {
        return PathBuf::from("/var/lib/chain");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("chain");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/chain"),
        None => PathBuf::from(".chain"),
    }
}

pub fn default_units_dir(root_given: bool, root: &std::path::Path) -> PathBuf {
    if root_given {
        root.join("units")
    } else if chain_agent::host::euid() == 0 {
        PathBuf::from("/etc/chain/units")
    } else {
        PathBuf::from("units")
    }
}

/// `--socket`, then `CHAIN_SOCKET`, then the default root's socket.
pub fn socket(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("CHAIN_SOCKET")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| default_root().join(SOCKET_NAME))
}
