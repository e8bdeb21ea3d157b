//! The proxy's access log (`[proxy] access_log`): one JSON object per request and line,
//! written by one dedicated thread fed by a bounded channel.
//!
//! The request path never waits for the log: it formats nothing and does no IO, it only
//! `try_send`s an [`Entry`]; when the channel is full the line is dropped and counted
//! (`chain_access_log_dropped_total`, and a warning in chaind's log at most every 10 s). The
//! writer thread is the only owner of the file and of its rotation: past `max_size` the file
//! becomes `NAME.1`, `NAME.1` becomes `NAME.2`, and so on up to `max_files`.
//!
//! What a line holds is documented in docs/config.md (`proxy.access_log`). Query strings,
//! `Authorization` and `Cookie` are never logged: they carry credentials.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// Lines that may wait for the writer; beyond that they are dropped.
pub const QUEUE: usize = 8192;

/// Where and how much to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub path: PathBuf,
    /// Rotate when the live file grows past this many bytes (0: never).
    pub max_size: u64,
    /// Rotated files kept (`NAME.1` newest); 0 truncates instead of keeping any.
    pub max_files: u32,
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Box<Entry>>,
    dropped: Counter,
}

/// What one request did; formatted by the writer thread.
#[derive(Debug)]
pub struct Entry {
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: hyper::Method,
    pub host: String,
    /// Without the query string.
    pub path: String,
    pub status: u16,
    /// Response body bytes handed to the connection.
    pub bytes: u64,
    /// From arrival until the last body byte was handed to the connection (or the client left).
    pub duration: Duration,
    /// False when the client went away before the whole body was sent.
    pub completed: bool,
    pub unit: Option<String>,
    pub generation: Option<u64>,
    pub upstream: Option<SocketAddr>,
    pub upstream_status: Option<u16>,
    pub error: Option<&'static str>,
    pub request_id: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    client: IpAddr,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    aborted: bool,
    unit: Option<&'a str>,
    generation: Option<u64>,
    upstream: Option<SocketAddr>,
    upstream_status: Option<u16>,
    error: Option<&'a str>,
    request_id: Option<&'a str>,
}

impl AccessLog {
    /// Opens (creating) the file and starts the writer thread. `dropped` counts lost lines.
    pub fn open(opts: Options, dropped: Counter) -> io::Result<AccessLog> {
        if let Some(dir) = opts.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open(&opts.path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = Writer {
            size: file.metadata().map(|m| m.len()).unwrap_or(0),
            out: BufWriter::with_capacity(64 << 10, file),
            opts,
            dropped: dropped.clone(),
            reported: 0,
            last_report: None,
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues a line, or drops and counts it when the writer is behind.
    pub fn send(&self, e: Box<Entry>) {
        match self.tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    out: BufWriter<File>,
    size: u64,
    opts: Options,
    dropped: Counter,
    /// Drops already reported in chaind's log, and when.
    reported: u64,
    last_report: Option<Instant>,
}

impl Writer {
    /// Writes until every sender is gone; flushes whenever the queue runs empty, so a line
    /// reaches the file within one batch of being queued.
    fn run(mut self, rx: Receiver<Box<Entry>>) {
        let mut buf = Vec::with_capacity(512);
        let mut clock = Clock::default();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(e) = next {
                buf.clear();
                format_line(&mut buf, &mut clock, &e);
                self.write(&buf);
                next = rx.try_recv().ok();
            }
            if let Err(e) = self.out.flush() {
                tracing::warn!(path = %self.opts.path.display(), error = %e, "writing the access log");
            }
            self.report_drops();
        }
        let _ = self.out.flush();
    }

    fn write(&mut self, line: &[u8]) {
        if let Err(e) = self.out.write_all(line) {
            tracing::warn!(path = %self.opts.path.display(), error = %e, "writing the access log");
            return;
        }
        self.size += line.len() as u64;
        if self.opts.max_size > 0 && self.size >= self.opts.max_size {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        let _ = self.out.flush();
        let path = &self.opts.path;
        let rotated = |k: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{k}"));
            PathBuf::from(p)
        };
        if self.opts.max_files == 0 {
            let _ = std::fs::remove_file(path);
        } else {
            let _ = std::fs::remove_file(rotated(self.opts.max_files));
            for k in (1..self.opts.max_files).rev() {
                let _ = std::fs::rename(rotated(k), rotated(k + 1));
            }
            if let Err(e) = std::fs::rename(path, rotated(1)) {
                tracing::warn!(path = %path.display(), error = %e, "rotating the access log");
            }
        }
        match open(path) {
            Ok(f) => {
                self.out = BufWriter::with_capacity(64 << 10, f);
                self.size = 0;
            }
            // Keep writing to the old handle (now the rotated file) rather than lose lines.
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reopening the access log")
            }
        }
    }

    fn report_drops(&mut self) {
        let total = self.dropped.get();
        if total == self.reported {
            return;
        }
        if self
            .last_report
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        tracing::warn!(
            dropped = total - self.reported,
            "access log lines dropped: the writer cannot keep up"
        );
        self.reported = total;
        self.last_report = Some(Instant::now());
    }
}

/// RFC 3339 timestamps with milliseconds; the date and time of day are formatted once per
/// second (they cost more than the rest of a line).
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    /// `2026-03-01T12:00:00.` for `second`.
    prefix: String,
    out: String,
}

impl Clock {
    fn format(&mut self, t: SystemTime) -> &str {
        let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            let whole = std::time::UNIX_EPOCH + Duration::from_secs(since.as_secs());
            let mut p = chain_agent::logs::format_timestamp(whole);
            p.truncate(p.len().saturating_sub(4));
            self.prefix = p;
            self.second = Some(since.as_secs());
        }
        let ms = since.subsec_millis();
        self.out.clear();
        self.out.push_str(&self.prefix);
        for d in [ms / 100, ms / 10 % 10, ms % 10] {
            self.out.push(char::from(b'0' + d as u8));
        }
        self.out.push('Z');
        &self.out
    }
}

fn format_line(buf: &mut Vec<u8>, clock: &mut Clock, e: &Entry) {
    let line = Line {
        time: clock.format(e.time),
        client: e.client,
        method: e.method.as_str(),
        host: &e.host,
        path: &e.path,
        status: e.status,
        bytes: e.bytes,
        duration_ms: (e.duration.as_micros() as f64) / 1000.0,
        aborted: !e.completed,
        unit: e.unit.as_deref(),
        generation: e.generation,
        upstream: e.upstream,
        upstream_status: e.upstream_status,
        error: e.error,
        request_id: e.request_id.as_deref(),
    };
    // Serializing plain fields into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &line);
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: [192, 0, 2, 7].into(),
            method: hyper::Method::GET,
            host: "example.com".into(),
            path: path.into(),
            status: 200,
            bytes: 12,
            duration: Duration::from_micros(1500),
            completed: true,
            unit: Some("web".into()),
            generation: Some(3),
            upstream: Some("127.0.0.1:20001".parse().unwrap()),
            upstream_status: Some(200),
            error: None,
            request_id: Some("abc".into()),
        }
    }

    /// One JSON object per line with the documented fields.
    #[test]
    fn line_format() {
        let mut buf = Vec::new();
        let mut clock = Clock::default();
        format_line(&mut buf, &mut clock, &entry("/a\"b"));
        let text = String::from_utf8(buf).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], "127.0.0.1:20001");
        assert_eq!(v["request_id"], "abc");
        assert!(v.get("aborted").is_none());
    }

    /// The cached per-second prefix gives the same text as formatting each time.
    #[test]
    fn clock() {
        let mut c = Clock::default();
        for ms in [
            0u64,
            1,
            999,
            1000,
            1_700_000_000_123,
            1_700_000_000_999,
            1_700_000_001_005,
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(c.format(t), chain_agent::logs::format_timestamp(t));
        }
    }

    /// The file rotates past max_size, keeping max_files rotated files, and no line is split.
    #[test]
    fn rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/access.log");
        let log = AccessLog::open(
            Options {
                path: path.clone(),
                max_size: 1000,
                max_files: 2,
            },
            Counter::default(),
        )
        .unwrap();
        for i in 0..40 {
            log.send(Box::new(entry(&format!("/{i}"))));
        }
        drop(log);
        let rotated = |k| dir.path().join(format!("logs/access.log.{k}"));
        let end = Instant::now() + Duration::from_secs(10);
        // The writer thread finishes on its own once the sender is gone.
        let has_last = |p: &std::path::PathBuf| {
            std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"/39\""))
        };
        while !has_last(&path) && !has_last(&rotated(1)) {
            assert!(Instant::now() < end, "the last line never reached the file");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(rotated(1).exists() && rotated(2).exists() && !rotated(3).exists());
        for p in [path, rotated(1), rotated(2)] {
            // The live file may be between its rename and its re-creation.
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(
                text.len() < 1000 + 400,
                "{}: {} bytes",
                p.display(),
                text.len()
            );
            for l in text.lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
        }
    }
}
