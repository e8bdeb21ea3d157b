//! Health probes: HTTP `GET` and TCP connect against an instance's address (`127.0.0.1:port`
//! for processes, the container's address for containers), and exec commands run through the
//! process driver or inside a container, each bounded by a timeout.
//!
//! A probe answers healthy (`Ok(())`) or unhealthy with a short reason meant for
//! `chainctl status` ("connection refused", "http status 503", "timed out after 2s",
//! `exit code 1: <first line of output>`). Counting failures, thresholds and intervals belong
//! to the caller. This module must not spawn processes itself (exec probes go through
//! [`ProcessDriver::run`], which owns reaping) and uses no HTTP library: one request on a
//! plain TCP stream and the status line are all it needs.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::driver::container::ContainerDriver;
use crate::driver::process::{CommandSpec, ProcessDriver};

/// How long [`port_accepts`] waits for a connection.
const PORT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest response head read while looking for the status line.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// What to probe.
#[derive(Debug, Clone)]
pub enum Probe {
    /// `GET path` on `addr`; statuses 200–399 are healthy.
    Http { addr: SocketAddr, path: String },
    /// A TCP connection to `addr` is accepted.
    Tcp { addr: SocketAddr },
    /// The command exits with code 0.
    Exec(CommandSpec),
    /// The command, run inside the container, exits with code 0.
    ContainerExec {
        driver: ContainerDriver,
        id: String,
        command: Vec<String>,
    },
}

/// Runs one probe. `Ok(())` when healthy, `Err(reason)` otherwise.
pub async fn check(probe: &Probe, timeout: Duration, driver: &ProcessDriver) -> Result<(), String> {
    match probe {
        Probe::Http { addr, path } => {
            match tokio::time::timeout(timeout, http_status(*addr, path)).await {
                Err(_) => Err(timed_out(timeout)),
                Ok(Err(reason)) => Err(reason),
                Ok(Ok(status)) if (200..400).contains(&status) => Ok(()),
                Ok(Ok(status)) => Err(format!("http status {status}")),
            }
        }
        Probe::Tcp { addr } => {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Err(_) => Err(timed_out(timeout)),
                Ok(Err(e)) => Err(describe(&e)),
                Ok(Ok(_stream)) => Ok(()),
            }
        }
        Probe::Exec(cmd) => match driver.run(cmd, timeout).await {
            Err(e) => Err(error_chain(&e)),
            Ok(out) if out.timed_out => Err(timed_out(timeout)),
            Ok(out) => exit_result(out.status, &out.output),
        },
        Probe::ContainerExec {
            driver,
            id,
            command,
        } => match driver.exec(id, command, timeout).await {
            Err(e) => Err(error_chain(&e)),
            Ok(out) if out.timed_out => Err(timed_out(timeout)),
            Ok(out) => exit_result(out.status, &out.output),
        },
    }
}

/// Healthy on exit code 0; otherwise the status and the first line of output.
fn exit_result(status: crate::driver::process::ExitStatus, output: &str) -> Result<(), String> {
    if status.success() {
        return Ok(());
    }
    let first = output.lines().map(str::trim).find(|l| !l.is_empty());
    Err(match first {
        Some(line) => format!("{status}: {line}"),
        None => status.to_string(),
    })
}

/// True when `addr` accepts a TCP connection within about a second.
pub async fn port_accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PORT_CHECK_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// `127.0.0.1:port`: where a process instance listens.
pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))
}

/// Sends the request and returns the status code of the response.
async fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| describe(&e))?;
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: chain-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| describe(&e))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head.iter().position(|b| *b == b'\n') {
            return parse_status_line(&head[..end]);
        }
        if head.len() > MAX_STATUS_LINE {
            return Err("malformed http response: status line too long".into());
        }
        match stream.read(&mut buf).await {
            Ok(0) if head.is_empty() => return Err("connection closed before a response".into()),
            Ok(0) => return parse_status_line(&head),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(describe(&e)),
        }
    }
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    let mut parts = line.split_ascii_whitespace();
    let version = parts.next().unwrap_or("");
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(code) if version.starts_with("HTTP/") && (100..1000).contains(&code) => Ok(code),
        _ => {
            let shown: String = line.chars().take(80).collect();
            Err(format!("malformed http response: {shown:?}"))
        }
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}", human(timeout))
}

/// `2s`, `1.5s` or `500ms`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() > 0 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Short lowercase reason for a socket error.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::ConnectionAborted => "connection aborted".into(),
        io::ErrorKind::BrokenPipe => "connection closed".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn driver() -> ProcessDriver {
        ProcessDriver::new().expect("driver")
    }

    /// A listener on 127.0.0.1:0 that answers every connection with `response` after
    /// reading the request head (or never answers when `response` is `None`).
    async fn http_server(response: Option<&'static str>) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
                    assert!(head.contains("User-Agent: chain-health\r\n"), "{head}");
                    match response {
                        Some(response) => {
                            let _ = stream.write_all(response.as_bytes()).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        (port, task)
    }

    fn http(port: u16) -> Probe {
        Probe::Http {
            addr: localhost(port),
            path: "/healthz".into(),
        }
    }

    /// HTTP probes: 2xx/3xx healthy, other statuses and silence unhealthy with a reason.
    #[tokio::test]
    async fn http_probe() {
        let d = driver();
        let t = Duration::from_secs(2);
        let (ok, ok_task) =
            http_server(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        assert_eq!(check(&http(ok), t, &d).await, Ok(()));
        let (moved, moved_task) = http_server(Some("HTTP/1.0 302 Found\r\n\r\n")).await;
        assert_eq!(check(&http(moved), t, &d).await, Ok(()));
        let (bad, bad_task) = http_server(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;
        assert_eq!(
            check(&http(bad), t, &d).await,
            Err("http status 503".to_string())
        );
        let (silent, silent_task) = http_server(None).await;
        assert_eq!(
            check(&http(silent), Duration::from_millis(200), &d).await,
            Err("timed out after 200ms".to_string())
        );
        let (garbage, garbage_task) = http_server(Some("SSH-2.0-nope\r\n")).await;
        let reason = check(&http(garbage), t, &d).await.unwrap_err();
        assert!(reason.starts_with("malformed http response"), "{reason}");
        for task in [ok_task, moved_task, bad_task, silent_task, garbage_task] {
            task.abort();
        }
        let closed = closed_port().await;
        assert_eq!(
            check(&http(closed), t, &d).await,
            Err("connection refused".to_string())
        );
    }

    /// A port that was just bound and released, so nothing listens on it.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    /// TCP probes and `port_accepts` follow whether something listens.
    #[tokio::test]
    async fn tcp_probe() {
        let d = driver();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            check(
                &Probe::Tcp {
                    addr: localhost(port)
                },
                Duration::from_secs(2),
                &d
            )
            .await,
            Ok(())
        );
        assert!(port_accepts(localhost(port)).await);
        drop(listener);
        assert_eq!(
            check(
                &Probe::Tcp {
                    addr: localhost(port)
                },
                Duration::from_secs(2),
                &d
            )
            .await,
            Err("connection refused".to_string())
        );
        assert!(!port_accepts(localhost(port)).await);
    }

    fn exec(script: &str) -> Probe {
        Probe::Exec(CommandSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            user: None,
        })
    }

    /// Exec probes: exit 0 healthy; otherwise the status and the first output line; a
    /// command past its timeout is killed and reported.
    #[tokio::test]
    async fn exec_probe() {
        let d = driver();
        let t = Duration::from_secs(5);
        assert_eq!(check(&exec("exit 0"), t, &d).await, Ok(()));
        assert_eq!(
            check(&exec("echo; echo boom; echo more; exit 1"), t, &d).await,
            Err("exit code 1: boom".to_string())
        );
        assert_eq!(
            check(&exec("exit 4"), t, &d).await,
            Err("exit code 4".to_string())
        );
        assert_eq!(
            check(&exec("sleep 1000"), Duration::from_millis(300), &d).await,
            Err("timed out after 300ms".to_string())
        );
        let missing = Probe::Exec(CommandSpec {
            program: "no-such-probe-chain".into(),
            args: vec![],
            cwd: std::env::temp_dir(),
            env: vec![("PATH".into(), "/bin".into())],
            user: None,
        });
        let reason = check(&missing, t, &d).await.unwrap_err();
        assert!(
            reason.starts_with("program no-such-probe-chain not found"),
            "{reason}"
        );
    }

    /// Status lines parse; garbage is reported, not panicked on.
    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Ok(503));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc").is_err());
        assert!(parse_status_line(b"").is_err());
    }

    /// Durations print the way a user wrote them.
    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_millis(500)), "500ms");
    }
}
