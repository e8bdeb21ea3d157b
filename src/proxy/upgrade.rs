//! Protocol upgrades through the proxy (WebSocket, and any other `Upgrade:` protocol over
//! HTTP/1.1): the request keeps its `Upgrade` and `Connection: upgrade` headers, and when the
//! instance answers 101 both connections are spliced together, bytes copied both ways until
//! either side closes. The instance stays counted as in flight for the tunnel's whole life,
//! so draining waits for open WebSockets (up to the drain timeout).

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::Response;
use hyper_util::rt::TokioIo;

use super::forward::ProxyBody;
use super::table::InflightGuard;

/// The protocol asked for, when the request is an upgrade (`Connection: upgrade` + `Upgrade`).
pub fn requested(h: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if connection_upgrade {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Answers the client with the instance's 101 and splices the two upgraded connections.
#[cold]
pub fn tunnel(
    mut resp: Response<hyper::body::Incoming>,
    client: OnUpgrade,
    guard: InflightGuard,
    empty: ProxyBody,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut resp);
    let (parts, _) = resp.into_parts();
    tokio::spawn(async move {
        let _guard = guard;
        match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            (c, u) => tracing::debug!(client = ?c.err(), upstream = ?u.err(), "upgrade failed"),
        }
    });
    Response::from_parts(parts, empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only `Connection: upgrade` (any case, in a list) with an `Upgrade` header counts.
    #[test]
    fn detection() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(requested(&h).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(requested(&h).unwrap(), "websocket");
    }
}
