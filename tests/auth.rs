//! API access control: SO_PEERCRED on every mutating call.
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use chain::api::wire::ErrorBody;
use support::*;

/// With the socket opened up to everyone, a foreign uid (nobody) can read but every mutating
/// call gets 403 `forbidden`; root still can.
#[test]
fn foreign_uid_gets_403_on_mutations() {
    if chain_agent::host::euid() != 0 {
        eprintln!("SKIP foreign_uid_gets_403_on_mutations: needs root to run a client as nobody");
        return;
    }
    let d = TestDaemon::start(&[("web", &demo_unit(1, "v1", ""))]);
    d.wait_running("web", 1);
    // The socket is 0600 by default; widen it (and the path to it) to reach the uid check.
    let mut p = d.socket.clone();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    while let Some(parent) = p.parent() {
        if parent == std::path::Path::new("/") || parent == std::path::Path::new("/tmp") {
            break;
        }
        let mode = std::fs::metadata(parent).unwrap().permissions().mode();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
        p = parent.to_path_buf();
    }
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                CHAINCTL,
                "--socket",
            ])
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap()
    };
    let ls = as_nobody(&["ls", "--json"]);
    assert!(
        ls.status.success(),
        "read as nobody failed: {}",
        String::from_utf8_lossy(&ls.stderr)
    );
    for args in [
        &["stop", "web", "--json"][..],
        &["apply", "--json"],
        &["restart", "web", "--json"],
    ] {
        let out = as_nobody(args);
        assert!(!out.status.success(), "{args:?} succeeded as nobody");
        let body: ErrorBody = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(body.error.code, chain::api::wire::ErrorCode::Forbidden);
    }
    assert_eq!(
        d.instances("web")[0].state,
        "running",
        "a refused call changed state"
    );
    // curl-style raw check of the HTTP status.
    let raw = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!(
            "printf 'POST /v1/units/web/stop HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n' | timeout 5 python3 -c \"import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect('{}'); s.sendall(sys.stdin.buffer.read()); print(s.recv(100).decode().split()[1])\"",
            d.socket.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&raw.stdout).trim(),
        "403",
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    d.ctl_ok(&["stop", "web"]);
}

/// The socket is created 0600 when no `chain` group exists.
#[test]
fn socket_is_private_by_default() {
    if chain_agent::host::group_id("chain").is_some() {
        eprintln!("SKIP socket_is_private_by_default: a chain group exists on this host");
        return;
    }
    let d = TestDaemon::start(&[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
