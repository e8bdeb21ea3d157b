//! Hands chaind's start-up order (src/bin/chaind.order, made by bench/startup-order.sh) to the
//! linker, which then places the functions chaind runs at start-up next to each other.
//!
//! The kernel maps a binary's code in 64 KiB windows around each page fault; scattered over
//! the whole of .text, start-up code kept several MB of chaind resident for the rest of its
//! life. The order changes nothing else: names the binary does not have are skipped.
//!
//! Only where the linker is known to be LLD, the default of Rust 1.90 and later on
//! x86_64-unknown-linux-gnu (GNU ld has no such option); `CHAIN_NO_ORDER=1` turns it off.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/bin/chaind.order");
    println!("cargo:rerun-if-env-changed=CHAIN_NO_ORDER");
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/chaind.order");
    if std::env::var_os("CHAIN_NO_ORDER").is_some_and(|v| v != "0") || !order.exists() {
        return;
    }
    if !(target_is("x86_64", "linux", "gnu") && rustc_links_with_lld()) {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=chaind=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=chaind=-Wl,--no-warn-symbol-ordering");
}

fn target_is(arch: &str, os: &str, env: &str) -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    var("CARGO_CFG_TARGET_ARCH") == arch
        && var("CARGO_CFG_TARGET_OS") == os
        && var("CARGO_CFG_TARGET_ENV") == env
}

/// rustc 1.90 or later, with no flag or setting that picks another linker.
fn rustc_links_with_lld() -> bool {
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("fuse-ld") {
        return false;
    }
    if std::env::vars().any(|(k, _)| k.starts_with("CARGO_TARGET_") && k.ends_with("_LINKER")) {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut version = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
