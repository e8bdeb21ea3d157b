//! The admin listener: `GET /metrics` in the OpenMetrics text format, and nothing else.
//!
//! The listening socket is created by `daemon` (one place) and handed in. The listener has no
//! authentication, which is why chaind.toml refuses a non-loopback address without
//! `[admin] public = true`. Connections are few (a scraper or two), so each one is simply
//! served with a header-read deadline and closed at shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::reconcile::snapshot::Snapshot;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Starts the exporter on `listener` and the task that turns supervisor snapshots into the
/// instance metrics; both end at `stop`.
pub fn start(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let follow = {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = super::instances::follow(metrics, snapshots) => {}
                _ = stop.cancelled() => {}
            }
        })
    };
    vec![tokio::spawn(serve(listener, metrics, stop)), follow]
}

/// Serves the admin listener until `stop`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (metrics, stop) = (metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "admin connection ended");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn answer<B>(metrics: &Metrics, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, metrics.encode(), CONTENT_TYPE)
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed\n".to_string(),
            "text/plain; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "404 Not Found: the admin listener serves /metrics\n".to_string(),
            "text/plain; charset=utf-8",
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
