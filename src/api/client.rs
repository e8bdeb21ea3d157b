//! The API client used by `chainctl`: one HTTP/1.1 connection per request over the Unix socket.
//! It knows the wire types and nothing of the daemon's internals.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::wire::{ApiError, ErrorBody, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("permission denied on {path}: the socket is for root, the daemon's user and members of group chain")]
    Denied { path: String },
    #[error("no daemon answers at {path} ({source}); start it with `chaind`, or point chainctl at its socket with --socket or CHAIN_SOCKET")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to chaind at {path}: {message}")]
    Protocol { path: String, message: String },
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Api(ApiError),
}

impl Error {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let resp = self.send(Method::GET, path, None).await?;
        self.decode(resp).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let body = body.map(|b| serde_json::to_vec(b).expect("wire types serialize"));
        let resp = self.send(Method::POST, path, body).await?;
        self.decode(resp).await
    }

    /// A streaming GET: calls `on_item` for every NDJSON line until the stream ends or
    /// `on_item` returns false.
    pub async fn stream<T: DeserializeOwned>(
        &self,
        path: &str,
        mut on_item: impl FnMut(T) -> bool,
    ) -> Result<(), Error> {
        let resp = self.send(Method::GET, path, None).await?;
        if !resp.status().is_success() {
            return Err(self
                .decode::<serde_json::Value>(resp)
                .await
                .err()
                .unwrap_or_else(|| self.protocol("unexpected success body")));
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.protocol(&e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let item: T = serde_json::from_slice(&line)
                    .map_err(|e| self.protocol(&format!("bad stream line: {e}")))?;
                if !on_item(item) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, Error> {
        let socket = self.socket.display().to_string();
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                Error::Denied {
                    path: socket.clone(),
                }
            } else {
                Error::Connect {
                    path: socket.clone(),
                    source,
                }
            }
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(&e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "chaind");
        let req = match body {
            Some(b) => builder
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(b)).boxed()),
            None => builder.body(Empty::<Bytes>::new().boxed()),
        }
        .map_err(|e| self.protocol(&e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(&e.to_string()))
    }

    async fn decode<T: DeserializeOwned>(&self, resp: Response<Incoming>) -> Result<T, Error> {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(&e.to_string()))?
            .to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| self.protocol(&format!("bad response: {e}")));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => Err(Error::Api(e.error)),
            Err(_) => Err(self.protocol(&format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    fn protocol(&self, message: &str) -> Error {
        Error::Protocol {
            path: self.socket.display().to_string(),
            message: message.to_string(),
        }
    }
}
