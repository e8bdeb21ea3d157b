//! gzip for proxied responses: text-like content types, when the client accepts gzip and the
//! app did not compress. The body is compressed as it streams (a sync flush per frame, so
//! server-sent events and long polls are not held back), never buffered whole.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::forward::{BoxError, ProxyBody};

/// Responses smaller than this (when their length is known) are sent as they are.
const MIN_LENGTH: u64 = 1024;

/// True when `Accept-Encoding` lists gzip (or `*`) with a non-zero quality.
pub fn accepts_gzip(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
        })
}

fn compressible(content_type: &str) -> bool {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct.starts_with("text/")
        || matches!(
            ct.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/xml"
                | "application/xhtml+xml"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/wasm"
                | "image/svg+xml"
        )
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
}

/// Compresses the response when it is worth it and allowed; otherwise returns it unchanged.
pub fn maybe_gzip(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let h = resp.headers();
    let status = resp.status();
    let eligible = status.is_success()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::PARTIAL_CONTENT
        && !h.contains_key(header::CONTENT_ENCODING)
        && !h.contains_key(header::CONTENT_RANGE)
        && h.get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(compressible)
        && h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_none_or(|n| n >= MIN_LENGTH)
        && !h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-transform"));
    if !eligible {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    // The compressed representation differs byte for byte: a strong ETag becomes weak.
    if let Some(etag) = parts
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
    {
        if !etag.starts_with("W/") {
            if let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}")) {
                parts.headers.insert(header::ETAG, weak);
            }
        }
    }
    let body = Gzip {
        inner: body,
        encoder: Some(GzEncoder::new(Vec::new(), Compression::new(1))),
    };
    Response::from_parts(parts, body.boxed())
}

struct Gzip {
    inner: ProxyBody,
    /// None once the stream is finished.
    encoder: Option<GzEncoder<Vec<u8>>>,
}

impl Body for Gzip {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.encoder.is_none() {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers cannot follow a gzip stream meaningfully; they are dropped.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let encoder = self.encoder.as_mut().expect("checked above");
                    if let Err(e) = encoder.write_all(&data).and_then(|_| encoder.flush()) {
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    let out = std::mem::take(encoder.get_mut());
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    let mut encoder = self.encoder.take().expect("checked above");
                    return match encoder.try_finish() {
                        Ok(()) => {
                            let out = std::mem::take(encoder.get_mut());
                            Poll::Ready(
                                (!out.is_empty()).then(|| Ok(Frame::data(Bytes::from(out)))),
                            )
                        }
                        Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use http_body_util::Full;

    use super::*;

    fn resp(ct: &str, body: &str, len: bool) -> Response<ProxyBody> {
        let mut r = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|n| match n {})
                .boxed(),
        );
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        if len {
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        r
    }

    /// Accept-Encoding parsing honours q=0.
    #[test]
    fn accept_encoding() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip, deflate, br"));
        assert!(h("br;q=1.0, GZIP;q=0.5"));
        assert!(!h("gzip;q=0"));
        assert!(!h("br"));
        assert!(h("*"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    /// Text is compressed and round-trips; small, binary or already encoded bodies are not.
    #[tokio::test]
    async fn compresses_text_only() {
        let text = "hello world ".repeat(500);
        let out = maybe_gzip(resp("text/html; charset=utf-8", &text, true));
        assert_eq!(out.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(out.headers().get(header::CONTENT_LENGTH).is_none());
        let bytes = out.into_body().collect().await.unwrap().to_bytes();
        assert!(bytes.len() < text.len() / 4, "{} bytes", bytes.len());
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, text);

        assert!(maybe_gzip(resp("text/plain", "tiny", true))
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_none());
        assert!(maybe_gzip(resp("image/png", &text, true))
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_none());
        let mut already = resp("text/plain", &text, true);
        already
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(
            maybe_gzip(already).headers()[header::CONTENT_ENCODING],
            "br"
        );
    }
}
