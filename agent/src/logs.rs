//! Per-unit log files: one writer task per unit owns `{dir}/{unit}.log` and its rotation,
//! reader tasks pump instance FIFOs into it, and [`tail`] / [`follow`] read it back.
//!
//! Every line has the form `{ts} {instance} {stream} {text}`, where `ts` is UTC RFC 3339
//! with milliseconds (the time chaind read the line), `stream` is `out`, `err` or `sys`
//! (lines chaind writes itself). Lines longer than 16 KiB are split.
//!
//! Invariants:
//! - Only the writer task of a [`UnitLog`] writes or renames the unit's files, so rotation
//!   has a single owner. Open one `UnitLog` per unit and share clones of it.
//! - The writer issues one `write(2)` per batch of complete lines and keeps nothing buffered
//!   across idle periods, so what it has received is on disk (in the page cache) promptly.
//!   A write never straddles a rotation, so a line is never split across files.
//! - Reader tasks read in batches (a read, then ~20 ms of sleep) so heavy output costs tens
//!   of wakeups per second, not one per line; the 1 MiB pipe buffer absorbs the bursts.
//!
//! This module knows nothing of processes: it must not signal or wait for anything. The end
//! of an instance's output is EOF on its FIFOs (every writer in the process tree gone).

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Longest line written as one; longer lines are split into pieces of this size.
const MAX_LINE: usize = 16 * 1024;

/// Pause after each batch read: bounds wakeups under heavy output.
const READ_PAUSE: Duration = Duration::from_millis(50);

/// At most this much is read from one stream per batch, so one chatty stream cannot starve
/// the other or build huge chunks.
const MAX_BATCH_READ: usize = 1024 * 1024;

/// Messages queued for the writer before readers wait (backpressure reaches the FIFOs).
const WRITER_QUEUE: usize = 256;

/// How often [`follow`] polls the live file.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Block size for reading files backwards in [`tail`].
const TAIL_BLOCK: u64 = 64 * 1024;

/// Longest partial line [`tail`] keeps while scanning backwards (only corrupt files have
/// lines this long; the end of such a line is kept).
const TAIL_MAX_LINE: usize = 1024 * 1024;

/// Size-based rotation of a unit's log.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate before a write would push `{unit}.log` past this many bytes; 0 disables
    /// rotation.
    pub max_size: u64,
    /// How many rotated files (`{unit}.log.1` newest … `{unit}.log.N` oldest) to keep; 0
    /// truncates the live file instead of renaming it.
    pub max_files: u32,
}

/// Which stream a [`Chunk`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Out,
    Err,
}

/// A piece of an instance's output that arrives by message rather than through a FIFO, with
/// the time it was written (the engine's timestamp for container output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub source: Source,
    pub time: SystemTime,
    pub data: Vec<u8>,
}

enum Msg {
    Write(Vec<u8>),
    Rotation(Rotation),
    Flush(oneshot::Sender<()>),
}

/// Handle to one unit's log writer. Cheap to clone; the writer task ends when every handle
/// and every attachment is gone.
#[derive(Clone)]
pub struct UnitLog {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for UnitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitLog").finish_non_exhaustive()
    }
}

impl UnitLog {
    /// Opens (appends to) `{dir}/{unit}.log` and spawns the writer task. Must be called
    /// inside a tokio runtime.
    pub fn open(dir: &Path, unit: &str, rotation: Rotation) -> io::Result<UnitLog> {
        if unit.is_empty() || unit.contains(['/', '\0']) || unit == "." || unit == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid unit name {unit:?} for a log file"),
            ));
        }
        let runtime = runtime("UnitLog::open")?;
        let mut state = Writer {
            dir: dir.to_path_buf(),
            unit: unit.to_string(),
            rotation,
            file: None,
            size: 0,
            pending: Vec::new(),
            failing: false,
        };
        state.reopen()?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        runtime.spawn(write_loop(state, rx));
        Ok(UnitLog { tx })
    }

    /// Changes the rotation limits; applies from the next write.
    pub fn set_rotation(&self, rotation: Rotation) {
        self.send_now(Msg::Rotation(rotation));
    }

    /// Starts one reader task for an instance's two FIFOs. The task runs until EOF on both
    /// (every writer gone: the process tree exited), then flushes. Dropping the
    /// [`Attachment`] detaches it without stopping it. Must be called inside a tokio runtime.
    ///
    /// Call it after the process was started or adopted, never before: a FIFO without
    /// writers at attach time reads as EOF at once. Right after `ProcessDriver::start`,
    /// while its `ExitWatch` is alive, nothing is lost even if the process already exited
    /// (the watch holds the pipes open). An adopted process's output written while chaind
    /// was down waits in the pipe (up to its 1 MiB buffer) and is read here.
    pub fn attach(&self, instance: &str, stdout: &Path, stderr: &Path) -> io::Result<Attachment> {
        let runtime = runtime("UnitLog::attach")?;
        let _enter = runtime.enter();
        let out = Stream::open(stdout, "out")?;
        let err = Stream::open(stderr, "err")?;
        let handle = runtime.spawn(read_loop(
            sanitize_instance(instance),
            [out, err],
            self.tx.clone(),
        ));
        Ok(Attachment { handle })
    }

    /// Starts one reader task for output that arrives as [`Chunk`]s (a container's log
    /// stream) instead of FIFOs. The task runs until the sender is dropped, then flushes.
    pub fn attach_chunks(
        &self,
        instance: &str,
        mut rx: mpsc::Receiver<Chunk>,
    ) -> io::Result<Attachment> {
        let runtime = runtime("UnitLog::attach_chunks")?;
        let instance = sanitize_instance(instance);
        let tx = self.tx.clone();
        let handle = runtime.spawn(async move {
            let mut out = LineBuf::new("out");
            let mut err = LineBuf::new("err");
            let mut clock = Timestamps::default();
            let mut open = true;
            while open {
                let Some(first) = rx.recv().await else { break };
                let mut chunk = Vec::new();
                let mut next = Some(first);
                // Everything already queued goes out in one write.
                while let Some(c) = next.take() {
                    let buf = match c.source {
                        Source::Out => &mut out,
                        Source::Err => &mut err,
                    };
                    buf.pending.extend_from_slice(&c.data);
                    buf.emit_lines(&mut chunk, &mut clock, c.time, &instance);
                    match rx.try_recv() {
                        Ok(c) => next = Some(c),
                        Err(mpsc::error::TryRecvError::Empty) => {}
                        Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                    }
                }
                if !chunk.is_empty() && tx.send(Msg::Write(chunk)).await.is_err() {
                    return;
                }
            }
            let mut chunk = Vec::new();
            let now = SystemTime::now();
            for buf in [&mut out, &mut err] {
                if !buf.pending.is_empty() {
                    let rest = std::mem::take(&mut buf.pending);
                    push_line(&mut chunk, &mut clock, now, &instance, buf.name, &rest);
                }
            }
            if !chunk.is_empty() {
                let _ = tx.send(Msg::Write(chunk)).await;
            }
            let (ack, done) = oneshot::channel();
            if tx.send(Msg::Flush(ack)).await.is_ok() {
                let _ = done.await;
            }
        });
        Ok(Attachment { handle })
    }

    /// Writes a line from chaind itself about an instance (stream `sys`), for example
    /// `exited with code 1`. Multi-line text becomes several lines.
    pub fn system(&self, instance: &str, text: &str) {
        let instance = sanitize_instance(instance);
        let mut chunk = Vec::new();
        let mut clock = Timestamps::default();
        let now = SystemTime::now();
        for line in text.lines() {
            push_line(
                &mut chunk,
                &mut clock,
                now,
                &instance,
                "sys",
                line.as_bytes(),
            );
        }
        if text.is_empty() {
            push_line(&mut chunk, &mut clock, now, &instance, "sys", b"");
        }
        self.send_now(Msg::Write(chunk));
    }

    /// Resolves once everything sent before this call is written to the file.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Queues a message from sync code: at once when the queue has room, else from a task
    /// (order with concurrent readers is then best effort).
    fn send_now(&self, msg: Msg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                match tokio::runtime::Handle::try_current() {
                    Ok(handle) => {
                        let tx = self.tx.clone();
                        handle.spawn(async move {
                            let _ = tx.send(msg).await;
                        });
                    }
                    Err(_) => {
                        tracing::warn!("log queue full outside a runtime; dropping a message")
                    }
                }
            }
        }
    }
}

fn runtime(what: &str) -> io::Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current()
        .map_err(|_| io::Error::other(format!("{what} must be called inside a tokio runtime")))
}

/// Instance names become one field of a space-separated line.
fn sanitize_instance(instance: &str) -> String {
    if instance.is_empty() {
        return "-".to_string();
    }
    instance
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

/// An instance's reader task.
#[derive(Debug)]
pub struct Attachment {
    handle: JoinHandle<()>,
}

impl Attachment {
    /// Resolves after both FIFOs reached EOF and their lines were written to the file (or the
    /// attachment was aborted).
    pub async fn finished(self) {
        let _ = self.handle.await;
    }

    /// Stops reading at once; data still in the pipes stays there for the next reader.
    pub fn abort(&self) {
        self.handle.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Timestamps

/// Formats `2026-11-23T06:19:00.123Z`, caching the formatted millisecond: every line of a
/// batch carries the same time, so a batch formats it once.
#[derive(Default)]
struct Timestamps {
    millisecond: Option<u128>,
    formatted: Vec<u8>,
}

impl Timestamps {
    fn push(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = since.as_millis();
        if self.millisecond != Some(ms) {
            self.millisecond = Some(ms);
            self.formatted.clear();
            self.formatted
                .extend_from_slice(format_second(since.as_secs()).as_bytes());
            let millis = since.subsec_millis();
            self.formatted.extend_from_slice(&[
                b'.',
                b'0' + (millis / 100) as u8,
                b'0' + (millis / 10 % 10) as u8,
                b'0' + (millis % 10) as u8,
                b'Z',
            ]);
        }
        out.extend_from_slice(&self.formatted);
    }
}

/// Formats a time the way log lines carry it: `2026-11-23T06:19:00.123Z` (UTC, RFC 3339
/// with milliseconds). Times before the Unix epoch print as the epoch.
pub fn format_timestamp(time: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    Timestamps::default().push(&mut out, time);
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a timestamp in the form [`format_timestamp`] writes (the fraction may have 0 to 9
/// digits) into milliseconds since the Unix epoch; `None` for anything else.
pub fn parse_timestamp_ms(ts: &str) -> Option<u64> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = ts.get(range)?;
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let millis = match ts.get(19..ts.len() - 1)? {
        "" => 0,
        fraction => {
            let digits = fraction.strip_prefix('.')?;
            if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit())
            {
                return None;
            }
            let padded = format!("{digits:0<3}");
            padded[..3].parse::<u64>().ok()?
        }
    };
    if year < 1970 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a Gregorian date from 1970 on (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC for seconds since the Unix epoch.
fn format_second(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Appends one formatted line to `out`.
fn push_line(
    out: &mut Vec<u8>,
    clock: &mut Timestamps,
    now: SystemTime,
    instance: &str,
    stream: &str,
    text: &[u8],
) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    clock.push(out, now);
    out.push(b' ');
    out.extend_from_slice(instance.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.push(b' ');
    match String::from_utf8_lossy(text) {
        Cow::Borrowed(s) => out.extend_from_slice(s.as_bytes()),
        Cow::Owned(s) => out.extend_from_slice(s.as_bytes()),
    }
    out.push(b'\n');
}

// ---------------------------------------------------------------------------------------
// Reader

/// Bytes of one stream not yet formatted as lines.
struct LineBuf {
    name: &'static str,
    pending: Vec<u8>,
}

impl LineBuf {
    fn new(name: &'static str) -> LineBuf {
        LineBuf {
            name,
            pending: Vec::new(),
        }
    }

    /// Formats every complete line of `pending` (and 16 KiB pieces of an overlong one),
    /// keeping a trailing partial line.
    fn emit_lines(
        &mut self,
        out: &mut Vec<u8>,
        clock: &mut Timestamps,
        now: SystemTime,
        instance: &str,
    ) {
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            let newline = rest.iter().position(|b| *b == b'\n');
            match newline {
                Some(i) if i <= MAX_LINE => {
                    push_line(out, clock, now, instance, self.name, &rest[..i]);
                    start += i + 1;
                }
                _ if rest.len() > MAX_LINE => {
                    let cut = utf8_cut(rest, MAX_LINE);
                    push_line(out, clock, now, instance, self.name, &rest[..cut]);
                    start += cut;
                }
                _ => break,
            }
        }
        self.pending.drain(..start);
    }
}

struct Stream {
    rx: pipe::Receiver,
    lines: LineBuf,
    eof: bool,
}

impl Stream {
    /// Opens a FIFO read-only and non-blocking, and reads what it holds right away.
    ///
    /// The first read matters: when every writer is already gone at open time, Linux
    /// suppresses the hang-up event on this reader until a new writer appears, so readiness
    /// alone would wait forever. A read returns 0 in exactly that case (EOF: the tree exited
    /// and its output, if chaind's keeper held it, has been read), and `EAGAIN` while writers
    /// exist (their eventual exit then does raise the hang-up event).
    fn open(path: &Path, name: &'static str) -> io::Result<Stream> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        if !file.metadata()?.file_type().is_fifo() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a fifo", path.display()),
            ));
        }
        let mut pending = Vec::new();
        let mut eof = false;
        // Small on purpose: one buffer per instance; a busy stream is simply read in more calls.
        let mut buf = vec![0u8; 16 * 1024];
        while pending.len() < MAX_BATCH_READ {
            match (&file).read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(Stream {
            rx: pipe::Receiver::from_file(file)?,
            lines: LineBuf { name, pending },
            eof,
        })
    }

    /// Reads what is available now (up to [`MAX_BATCH_READ`]) and formats complete lines.
    fn drain(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        clock: &mut Timestamps,
        now: SystemTime,
        instance: &str,
    ) {
        let mut total = 0;
        while !self.eof && total < MAX_BATCH_READ {
            match self.rx.try_read(buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.lines.pending.extend_from_slice(&buf[..n]);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(%instance, stream = self.lines.name, error = %e, "reading output fifo");
                    self.eof = true;
                }
            }
        }
        self.lines.emit_lines(out, clock, now, instance);
        if self.eof && !self.lines.pending.is_empty() {
            let rest = std::mem::take(&mut self.lines.pending);
            push_line(out, clock, now, instance, self.lines.name, &rest);
        }
    }
}

/// A split point at or before `max` that does not cut a UTF-8 sequence (backing off at most
/// three bytes; bytes that are not UTF-8 are cut at `max`).
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    for back in 0..=3 {
        let Some(cut) = max.checked_sub(back).filter(|c| *c > 0) else {
            break;
        };
        if bytes[cut] & 0xC0 != 0x80 {
            return cut;
        }
    }
    max
}

async fn read_loop(instance: String, mut streams: [Stream; 2], tx: mpsc::Sender<Msg>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut clock = Timestamps::default();
    loop {
        // The first pass handles what `Stream::open` already read.
        let now = SystemTime::now();
        let mut chunk = Vec::new();
        for stream in &mut streams {
            stream.drain(&mut buf, &mut chunk, &mut clock, now, &instance);
        }
        if !chunk.is_empty() && tx.send(Msg::Write(chunk)).await.is_err() {
            return;
        }
        if streams.iter().all(|s| s.eof) {
            let (ack, done) = oneshot::channel();
            if tx.send(Msg::Flush(ack)).await.is_ok() {
                let _ = done.await;
            }
            return;
        }
        tokio::time::sleep(READ_PAUSE).await;
        let [out, err] = &streams;
        // An error from `readable` means the fd is unusable; the next read reports it.
        tokio::select! {
            _ = out.rx.readable(), if !out.eof => {}
            _ = err.rx.readable(), if !err.eof => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writer

struct Writer {
    dir: PathBuf,
    unit: String,
    rotation: Rotation,
    file: Option<File>,
    /// Size of the live file as far as this writer knows.
    size: u64,
    /// Lines received but not written yet (within one batch only).
    pending: Vec<u8>,
    /// A write failed and was logged; stay quiet until one succeeds.
    failing: bool,
}

async fn write_loop(mut state: Writer, mut rx: mpsc::Receiver<Msg>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 64 {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        // Written inline: appends to the page cache take microseconds, and a thread hop per
        // batch cost more CPU than the writes themselves (measured at 10,000 lines/s). A disk
        // that stalls stalls this worker, as it would stall nginx's.
        state.apply(batch);
    }
}

impl Writer {
    fn live_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.unit))
    }

    fn rotated_path(&self, k: u32) -> PathBuf {
        self.dir.join(format!("{}.log.{k}", self.unit))
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(self.live_path())?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn apply(&mut self, batch: Vec<Msg>) {
        for msg in batch {
            match msg {
                Msg::Write(chunk) => self.push(&chunk),
                Msg::Rotation(rotation) => {
                    self.write_pending();
                    self.rotation = rotation;
                }
                Msg::Flush(ack) => {
                    self.write_pending();
                    let _ = ack.send(());
                }
            }
        }
        self.write_pending();
    }

    fn push(&mut self, chunk: &[u8]) {
        let after = self.size + (self.pending.len() + chunk.len()) as u64;
        if self.rotation.max_size > 0 && after > self.rotation.max_size {
            self.write_pending();
            if self.size > 0 {
                self.rotate();
            }
        }
        self.pending.extend_from_slice(chunk);
    }

    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if self.file.is_none() {
            if let Err(e) = self.reopen() {
                self.report(&e, "opening");
                self.pending.clear();
                return;
            }
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        match file.write_all(&self.pending) {
            Ok(()) => {
                self.size += self.pending.len() as u64;
                self.failing = false;
            }
            Err(e) => {
                // Lines are lost (disk full, file removed under us); try a fresh file next.
                self.report(&e, "writing");
                self.file = None;
            }
        }
        self.pending.clear();
    }

    fn report(&mut self, e: &io::Error, what: &str) {
        if !self.failing {
            tracing::warn!(unit = %self.unit, error = %e, "{what} log file; dropping lines");
            self.failing = true;
        }
    }

    /// `.log.{k}` → `.log.{k+1}` (dropping the oldest), `.log` → `.log.1`, reopen; with
    /// `max_files = 0` truncate in place.
    fn rotate(&mut self) {
        let max_files = self.rotation.max_files;
        if max_files == 0 {
            match self.file.as_ref().map(|f| f.set_len(0)) {
                Some(Ok(())) => self.size = 0,
                Some(Err(e)) => self.report(&e, "truncating"),
                None => {}
            }
            self.remove_rotated_beyond(0);
            return;
        }
        self.remove_rotated_beyond(max_files - 1);
        for k in (1..max_files).rev() {
            rename_if_exists(&self.rotated_path(k), &self.rotated_path(k + 1));
        }
        rename_if_exists(&self.live_path(), &self.rotated_path(1));
        self.file = None;
        if let Err(e) = self.reopen() {
            self.report(&e, "reopening");
        }
    }

    /// Removes rotated files numbered above `keep` (the limit may have shrunk).
    fn remove_rotated_beyond(&self, keep: u32) {
        for (k, path) in rotated_files(&self.dir, &self.unit) {
            if k > keep {
                if let Err(e) = fs::remove_file(&path) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "removing old log file");
                    }
                }
            }
        }
    }
}

fn rename_if_exists(from: &Path, to: &Path) {
    if let Err(e) = fs::rename(from, to) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(from = %from.display(), to = %to.display(), error = %e, "rotating log file");
        }
    }
}

/// `(k, path)` of every `{unit}.log.{k}` in `dir`, ascending `k` (newest first).
fn rotated_files(dir: &Path, unit: &str) -> Vec<(u32, PathBuf)> {
    let prefix = format!("{unit}.log.");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(u32, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let k = name.to_str()?.strip_prefix(&prefix)?.parse::<u32>().ok()?;
            (k > 0).then(|| (k, entry.path()))
        })
        .collect();
    files.sort_unstable_by_key(|(k, _)| *k);
    files
}

// ---------------------------------------------------------------------------------------
// Readers: parse, tail, follow

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub ts: String,
    pub instance: String,
    pub stream: String,
    pub text: String,
}

/// Parses `{ts} {instance} {stream} {text}`; `None` for anything else.
pub fn parse_line(line: &str) -> Option<LogLine> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let mut parts = line.splitn(4, ' ');
    let ts = parts.next()?;
    let instance = parts.next()?;
    let stream = parts.next()?;
    let text = parts.next().unwrap_or("");
    let looks_like_ts = ts.len() >= 20
        && ts.ends_with('Z')
        && ts.as_bytes().get(10) == Some(&b'T')
        && ts.as_bytes()[..4].iter().all(u8::is_ascii_digit);
    if !looks_like_ts || instance.is_empty() || stream.is_empty() {
        return None;
    }
    Some(LogLine {
        ts: ts.to_string(),
        instance: instance.to_string(),
        stream: stream.to_string(),
        text: text.to_string(),
    })
}

fn matches_instance(line: &str, instance: Option<&str>) -> bool {
    match instance {
        None => true,
        Some(want) => parse_line(line).is_some_and(|l| l.instance == want),
    }
}

/// The last `n` lines of the unit's logs across the live file and the rotated files (oldest
/// first, newest last), optionally only one instance's. Reads files backwards in blocks, so
/// the cost follows `n`, not the file sizes. A unit without logs gives an empty list.
pub fn tail(dir: &Path, unit: &str, n: usize, instance: Option<&str>) -> io::Result<Vec<String>> {
    let live = match File::open(dir.join(format!("{unit}.log"))) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let end = match &live {
        Some(f) => f.metadata()?.len(),
        None => 0,
    };
    tail_upto(dir, unit, n, instance, live.as_ref().map(|f| (f, end)))
}

/// `tail`, then a follower that starts exactly where the tail ended: no line is lost or
/// repeated between the two.
pub fn tail_and_follow(
    dir: &Path,
    unit: &str,
    n: usize,
    instance: Option<String>,
) -> io::Result<(Vec<String>, mpsc::Receiver<String>)> {
    let path = dir.join(format!("{unit}.log"));
    let followed = Followed::open(&path, true);
    let lines = tail_upto(
        dir,
        unit,
        n,
        instance.as_deref(),
        followed.as_ref().map(|f| (&f.file, f.offset)),
    )?;
    Ok((lines, spawn_follow(dir, unit, instance, followed)))
}

fn tail_upto(
    dir: &Path,
    unit: &str,
    n: usize,
    instance: Option<&str>,
    live: Option<(&File, u64)>,
) -> io::Result<Vec<String>> {
    let mut newest_first = Vec::new();
    if n == 0 {
        return Ok(newest_first);
    }
    if let Some((file, end)) = live {
        collect_backwards(file, end, n, instance, &mut newest_first)?;
    }
    for (_, path) in rotated_files(dir, unit) {
        if newest_first.len() >= n {
            break;
        }
        let file = match File::open(&path) {
            Ok(file) => file,
            // Rotated away between listing and opening.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let end = file.metadata()?.len();
        collect_backwards(&file, end, n, instance, &mut newest_first)?;
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// Pushes lines of `file` (up to byte `end`), newest first, until `out` holds `n`.
fn collect_backwards(
    file: &File,
    end: u64,
    n: usize,
    instance: Option<&str>,
    out: &mut Vec<String>,
) -> io::Result<()> {
    read_backwards(file, end, |line| {
        let line = String::from_utf8_lossy(line);
        if matches_instance(&line, instance) {
            out.push(line.into_owned());
        }
        out.len() < n
    })
}

/// Calls `each` with the non-empty lines of `file`, last line first, until it returns false.
/// Only the first `end` bytes of the file are considered.
fn read_backwards(file: &File, end: u64, mut each: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
    let mut pos = end;
    // The end of a line whose beginning lies in an earlier block.
    let mut carry: Vec<u8> = Vec::new();
    while pos > 0 {
        let start = pos.saturating_sub(TAIL_BLOCK);
        let len = usize::try_from(pos - start).unwrap_or(0);
        let mut block = vec![0u8; len];
        file.read_exact_at(&mut block, start)?;
        pos = start;
        block.extend_from_slice(&carry);
        let mut end = block.len();
        while let Some(newline) = block[..end].iter().rposition(|b| *b == b'\n') {
            let line = &block[newline + 1..end];
            if !line.is_empty() && !each(line) {
                return Ok(());
            }
            end = newline;
        }
        let keep_from = end.saturating_sub(TAIL_MAX_LINE);
        carry = block[keep_from..end].to_vec();
    }
    if !carry.is_empty() {
        each(&carry);
    }
    Ok(())
}

/// Follows the unit's live log from its current end, yielding complete lines (without the
/// newline), optionally only one instance's. Survives rotation (a new inode at the path)
/// and truncation; polls every ~100 ms; ends when the receiver is dropped. Outside a tokio
/// runtime the receiver is closed at once.
pub fn follow(dir: &Path, unit: &str, instance: Option<String>) -> mpsc::Receiver<String> {
    // The starting point is taken now, not when the task first runs.
    let followed = Followed::open(&dir.join(format!("{unit}.log")), true);
    spawn_follow(dir, unit, instance, followed)
}

fn spawn_follow(
    dir: &Path,
    unit: &str,
    instance: Option<String>,
    followed: Option<Followed>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(1024);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(follow_loop(
                dir.to_path_buf(),
                unit.to_string(),
                instance,
                followed,
                tx,
            ));
        }
        Err(_) => tracing::warn!("logs::follow called outside a tokio runtime"),
    }
    rx
}

struct Followed {
    file: File,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
}

impl Followed {
    fn open(path: &Path, at_end: bool) -> Option<Followed> {
        let file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        Some(Followed {
            file,
            inode: meta.ino(),
            offset: if at_end { meta.len() } else { 0 },
            partial: Vec::new(),
        })
    }

    /// Reads everything appended since the last call; returns complete lines.
    fn read_new(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let Ok(len) = self.file.metadata().map(|m| m.len()) else {
            return lines;
        };
        if len < self.offset {
            // Truncated in place (rotation with max_files = 0).
            self.offset = 0;
            self.partial.clear();
        }
        let mut buf = vec![0u8; 64 * 1024];
        while self.offset < len {
            let n = match self.file.read_at(&mut buf, self.offset) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.offset += n as u64;
            self.partial.extend_from_slice(&buf[..n]);
        }
        let mut start = 0;
        while let Some(i) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let line = &self.partial[start..start + i];
            if !line.is_empty() {
                lines.push(String::from_utf8_lossy(line).into_owned());
            }
            start += i + 1;
        }
        self.partial.drain(..start);
        lines
    }
}

async fn follow_loop(
    dir: PathBuf,
    unit: String,
    instance: Option<String>,
    mut current: Option<Followed>,
    tx: mpsc::Sender<String>,
) {
    let path = dir.join(format!("{unit}.log"));
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        let mut lines = Vec::new();
        let on_disk = fs::metadata(&path).ok().map(|m| m.ino());
        match (&mut current, on_disk) {
            (Some(followed), Some(inode)) if followed.inode != inode => {
                // Rotated: the old file is complete once a new one sits at the path (the
                // writer renames before it reopens), so drain it, then read the files
                // rotated after it (several rotations can happen between two polls), then
                // switch to the live file.
                lines.extend(followed.read_new());
                lines.extend(read_rotated_since(&dir, &unit, followed.inode));
                current = Followed::open(&path, false);
            }
            (None, Some(_)) => current = Followed::open(&path, false),
            _ => {}
        }
        if let Some(followed) = current.as_mut() {
            lines.extend(followed.read_new());
        }
        for line in lines {
            if matches_instance(&line, instance.as_deref()) && tx.send(line).await.is_err() {
                return;
            }
        }
    }
}

/// Whole contents of the rotated files newer than the one with inode `old` (oldest first).
/// When `old` was already deleted, the lines in between are lost and nothing is returned.
fn read_rotated_since(dir: &Path, unit: &str, old: u64) -> Vec<String> {
    let rotated = rotated_files(dir, unit);
    let Some(position) = rotated
        .iter()
        .position(|(_, p)| fs::metadata(p).is_ok_and(|m| m.ino() == old))
    else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (_, newer) in rotated[..position].iter().rev() {
        if let Some(mut followed) = Followed::open(newer, false) {
            lines.extend(followed.read_new());
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::process::{ExitStatus, ExitWatch, ProcessDriver, ProcessSpec};
    use crate::testutil::{eventually, unique_tag, KillOnDrop, PATIENCE};

    const BIG: Rotation = Rotation {
        max_size: 64 * 1024 * 1024,
        max_files: 3,
    };

    fn start(dir: &Path, name: &str, script: &str) -> (KillOnDrop, ExitWatch, PathBuf, PathBuf) {
        let driver = ProcessDriver::new().expect("driver");
        let tag = unique_tag(name);
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let spec = ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: dir.to_path_buf(),
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            user: None,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            tag: tag.clone(),
        };
        let (id, watch) = driver.start(&spec).expect("starts");
        (KillOnDrop { driver, id, tag }, watch, stdout, stderr)
    }

    fn read_log(dir: &Path, unit: &str) -> Vec<LogLine> {
        fs::read_to_string(dir.join(format!("{unit}.log")))
            .unwrap_or_default()
            .lines()
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("unparsable line {l:?}")))
            .collect()
    }

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    /// A line is `{ts} {instance} {stream} {text}` with a millisecond UTC timestamp.
    fn assert_timestamp(ts: &str) {
        let b = ts.as_bytes();
        assert_eq!(b.len(), 24, "{ts}");
        for (i, c) in b.iter().enumerate() {
            match i {
                4 | 7 => assert_eq!(*c, b'-', "{ts}"),
                10 => assert_eq!(*c, b'T', "{ts}"),
                13 | 16 => assert_eq!(*c, b':', "{ts}"),
                19 => assert_eq!(*c, b'.', "{ts}"),
                23 => assert_eq!(*c, b'Z', "{ts}"),
                _ => assert!(c.is_ascii_digit(), "{ts}"),
            }
        }
    }

    /// Output through the FIFOs lands in the unit's log with timestamp, instance and stream.
    #[tokio::test]
    async fn fifo_output_lands_in_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = UnitLog::open(dir.path(), "web", BIG).unwrap();
        let (_guard, watch, out, err) = start(dir.path(), "fmt", "echo hello; echo oops >&2");
        let attachment = log.attach("web-1", &out, &err).unwrap();
        tokio::time::timeout(PATIENCE, attachment.finished())
            .await
            .expect("reader finishes at EOF");
        assert_eq!(watch.await, ExitStatus::Code(0));
        let lines = read_log(dir.path(), "web");
        assert_eq!(lines.len(), 2, "{lines:?}");
        let by_stream = |s: &str| lines.iter().find(|l| l.stream == s).unwrap().clone();
        assert_eq!(by_stream("out").text, "hello");
        assert_eq!(by_stream("err").text, "oops");
        for line in &lines {
            assert_eq!(line.instance, "web-1");
            assert_timestamp(&line.ts);
        }
        log.system("web-1", "exited with code 0");
        log.flush().await;
        let last = read_log(dir.path(), "web").pop().unwrap();
        assert_eq!(
            (last.stream.as_str(), last.text.as_str()),
            ("sys", "exited with code 0")
        );
    }

    /// A partial line waits for its newline; a trailing one is flushed at EOF; overlong lines
    /// are split at 16 KiB.
    #[tokio::test]
    async fn partial_and_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = UnitLog::open(dir.path(), "p", BIG).unwrap();
        let script = "printf abc; sleep 0.1; echo def; head -c 40000 /dev/zero | tr '\\0' x; \
                      echo; printf tail";
        let (_guard, _watch, out, err) = start(dir.path(), "partial", script);
        let attachment = log.attach("p-1", &out, &err).unwrap();
        tokio::time::timeout(PATIENCE, attachment.finished())
            .await
            .unwrap();
        let lines = read_log(dir.path(), "p");
        let lens: Vec<usize> = lines.iter().map(|l| l.text.len()).collect();
        assert_eq!(lines[0].text, "abcdef");
        assert_eq!(lens[1..4], [MAX_LINE, MAX_LINE, 40000 - 2 * MAX_LINE]);
        assert!(lines[1..4]
            .iter()
            .all(|l| l.text.bytes().all(|b| b == b'x')));
        assert_eq!(lines[4].text, "tail");
        assert_eq!(lines.len(), 5);
    }

    /// Output of a process that exited before the reader attached is kept while its watch
    /// lives (chaind holds a read end); once nothing holds the pipe, attaching still ends
    /// at once instead of waiting for a writer that will never come.
    #[tokio::test]
    async fn attach_after_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = UnitLog::open(dir.path(), "late", BIG).unwrap();
        let (_guard, mut watch, out, err) = start(dir.path(), "late", "echo quick; echo fast >&2");
        assert_eq!((&mut watch).await, ExitStatus::Code(0));
        let attachment = log.attach("l-1", &out, &err).unwrap();
        tokio::time::timeout(PATIENCE, attachment.finished())
            .await
            .expect("reader ends at EOF");
        let mut got = texts(&read_log(dir.path(), "late"))
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        got.sort();
        assert_eq!(got, ["fast", "quick"]);

        drop(watch);
        let again = log.attach("l-1", &out, &err).unwrap();
        tokio::time::timeout(PATIENCE, again.finished())
            .await
            .expect("no writer and no data: EOF at once");

        let plain = dir.path().join("plain");
        fs::write(&plain, "").unwrap();
        assert!(log.attach("l-1", &plain, &err).is_err());
    }

    /// Heavy output arrives complete and in order.
    #[tokio::test]
    async fn many_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = UnitLog::open(dir.path(), "spam", BIG).unwrap();
        let (_guard, _watch, out, err) = start(dir.path(), "spam", "seq 1 20000");
        let attachment = log.attach("s-1", &out, &err).unwrap();
        tokio::time::timeout(PATIENCE, attachment.finished())
            .await
            .unwrap();
        let lines = read_log(dir.path(), "spam");
        let expected: Vec<String> = (1..=20000).map(|i| i.to_string()).collect();
        assert_eq!(texts(&lines), expected);
    }

    /// The workload keeps its output while no reader is attached, and gets no EPIPE when the
    /// reader goes away: lines written meanwhile appear once a reader attaches again.
    #[tokio::test]
    async fn fifo_survives_missing_reader() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = UnitLog::open(d, "fifo", BIG).unwrap();
        let script = "echo before; touch written; \
                      while [ ! -e go ]; do sleep 0.01; done; echo after && touch ok; \
                      while [ ! -e go2 ]; do sleep 0.01; done; echo final";
        let (_guard, watch, out, err) = start(d, "fifo", script);
        assert!(eventually(PATIENCE, || d.join("written").exists()).await);

        let first = log.attach("f-1", &out, &err).unwrap();
        assert!(
            eventually(PATIENCE, || texts(&read_log(d, "fifo")) == ["before"]).await,
            "output written before the reader attached is kept"
        );
        first.abort();
        fs::write(d.join("go"), "").unwrap();
        assert!(
            eventually(PATIENCE, || d.join("ok").exists()).await,
            "echo succeeded without a reader"
        );

        let second = log.attach("f-1", &out, &err).unwrap();
        fs::write(d.join("go2"), "").unwrap();
        tokio::time::timeout(PATIENCE, second.finished())
            .await
            .unwrap();
        assert_eq!(texts(&read_log(d, "fifo")), ["before", "after", "final"]);
        assert_eq!(watch.await, ExitStatus::Code(0));
    }

    async fn write_numbered(log: &UnitLog, from: usize, to: usize, instances: &[&str]) {
        for i in from..to {
            log.system(instances[i % instances.len()], &format!("line {i:05}"));
        }
        log.flush().await;
    }

    fn log_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Rotation renames `.log` → `.log.1` → … and keeps at most `max_files`, each within
    /// `max_size`; lowering `max_files` removes the excess.
    #[tokio::test]
    async fn rotation_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_size: 1000,
            max_files: 2,
        };
        let log = UnitLog::open(dir.path(), "rot", rotation).unwrap();
        write_numbered(&log, 0, 200, &["r-1"]).await;
        assert_eq!(log_files(dir.path()), ["rot.log", "rot.log.1", "rot.log.2"]);
        for name in log_files(dir.path()) {
            let len = fs::metadata(dir.path().join(&name)).unwrap().len();
            assert!(len <= 1000 && len > 0, "{name}: {len}");
        }
        let newest = read_log(dir.path(), "rot");
        assert_eq!(newest.last().unwrap().text, "line 00199");

        log.set_rotation(Rotation {
            max_size: 1000,
            max_files: 1,
        });
        write_numbered(&log, 200, 250, &["r-1"]).await;
        assert_eq!(log_files(dir.path()), ["rot.log", "rot.log.1"]);

        log.set_rotation(Rotation {
            max_size: 1000,
            max_files: 0,
        });
        write_numbered(&log, 250, 300, &["r-1"]).await;
        assert_eq!(log_files(dir.path()), ["rot.log"]);
        assert!(fs::metadata(dir.path().join("rot.log")).unwrap().len() <= 1000);
        assert_eq!(
            read_log(dir.path(), "rot").last().unwrap().text,
            "line 00299"
        );
    }

    /// `tail` reads across rotated files, newest last, optionally for one instance.
    #[tokio::test]
    async fn tail_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_size: 2000,
            max_files: 5,
        };
        let log = UnitLog::open(dir.path(), "t", rotation).unwrap();
        write_numbered(&log, 0, 100, &["a", "b"]).await;
        assert!(
            log_files(dir.path()).len() >= 3,
            "{:?}",
            log_files(dir.path())
        );

        let last = tail(dir.path(), "t", 30, None).unwrap();
        let got: Vec<String> = last.iter().map(|l| parse_line(l).unwrap().text).collect();
        let want: Vec<String> = (70..100).map(|i| format!("line {i:05}")).collect();
        assert_eq!(got, want);

        let only_a = tail(dir.path(), "t", 5, Some("a")).unwrap();
        let got: Vec<String> = only_a.iter().map(|l| parse_line(l).unwrap().text).collect();
        assert_eq!(
            got,
            [
                "line 00090",
                "line 00092",
                "line 00094",
                "line 00096",
                "line 00098"
            ]
        );

        assert!(tail(dir.path(), "t", 0, None).unwrap().is_empty());
        assert!(tail(dir.path(), "none", 10, None).unwrap().is_empty());
        assert!(tail(dir.path(), "t", 10, Some("zzz")).unwrap().is_empty());
    }

    /// Backwards block reading gets lines right across block boundaries in a big file.
    #[test]
    fn tail_big_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..20_000 {
            // Varying lengths put newlines at every offset relative to the blocks.
            let pad = "y".repeat(i % 37);
            text.push_str(&format!(
                "2026-01-01T00:00:00.000Z i-{} out {i} {pad}\n",
                i % 3
            ));
        }
        fs::write(dir.path().join("big.log"), &text).unwrap();
        let all: Vec<&str> = text.lines().collect();
        assert_eq!(tail(dir.path(), "big", 5000, None).unwrap(), all[15_000..]);
        assert_eq!(
            tail(dir.path(), "big", 100_000, None).unwrap().len(),
            20_000
        );
        let ones = tail(dir.path(), "big", 1000, Some("i-1")).unwrap();
        let want: Vec<&str> = all
            .iter()
            .copied()
            .filter(|l| l.contains(" i-1 "))
            .collect();
        assert_eq!(ones, want[want.len() - 1000..]);
    }

    /// `follow` sees lines appended after it started, across a rotation, and filters by
    /// instance.
    #[tokio::test]
    async fn follow_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_size: 1500,
            max_files: 2,
        };
        let log = UnitLog::open(dir.path(), "f", rotation).unwrap();
        write_numbered(&log, 0, 5, &["a"]).await;
        let mut all = follow(dir.path(), "f", None);
        let mut only_b = follow(dir.path(), "f", Some("b".into()));
        // Give the followers a moment to open the file at its current end: a line written
        // before that would be skipped, so wait until a probe line shows up.
        loop {
            log.system("probe", "probe");
            log.flush().await;
            if let Ok(Some(line)) =
                tokio::time::timeout(Duration::from_millis(300), all.recv()).await
            {
                assert!(line.ends_with("probe"));
                break;
            }
        }
        write_numbered(&log, 5, 80, &["a", "b"]).await;
        assert!(log_files(dir.path()).contains(&"f.log.1".to_string()));
        let mut got = Vec::new();
        while got.len() < 75 {
            let line = tokio::time::timeout(PATIENCE, all.recv())
                .await
                .expect("line arrives")
                .expect("follow runs");
            let parsed = parse_line(&line).unwrap();
            if parsed.instance != "probe" {
                got.push(parsed.text);
            }
        }
        let want: Vec<String> = (5..80).map(|i| format!("line {i:05}")).collect();
        assert_eq!(got, want);
        let first_b = tokio::time::timeout(PATIENCE, only_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(parse_line(&first_b).unwrap().instance, "b");
    }

    /// Lines parse back into their fields; other text does not.
    #[test]
    fn parse_lines() {
        assert_eq!(
            parse_line("2026-11-23T06:19:00.123Z web-1 out hello  world"),
            Some(LogLine {
                ts: "2026-11-23T06:19:00.123Z".into(),
                instance: "web-1".into(),
                stream: "out".into(),
                text: "hello  world".into(),
            })
        );
        assert_eq!(
            parse_line("2026-11-23T06:19:00.123Z web-1 err ")
                .unwrap()
                .text,
            ""
        );
        for bad in ["", "hello", "x y z w", "2026-11-23T06:19:00.123Z", "é"] {
            assert_eq!(parse_line(bad), None, "{bad}");
        }
    }

    /// Timestamps are UTC RFC 3339 with milliseconds, leap days included.
    #[test]
    fn timestamps() {
        assert_eq!(format_second(0), "1970-01-01T00:00:00");
        assert_eq!(format_second(1_795_414_740), "2026-11-23T06:19:00");
        assert_eq!(format_second(1_709_251_199), "2024-02-29T23:59:59");
        assert_eq!(format_second(4_107_542_400), "2100-03-01T00:00:00");
        let mut clock = Timestamps::default();
        let mut out = Vec::new();
        clock.push(
            &mut out,
            UNIX_EPOCH + Duration::from_millis(1_795_414_740_123),
        );
        assert_eq!(out, b"2026-11-23T06:19:00.123Z");
    }

    /// Timestamps round-trip through `format_timestamp` and `parse_timestamp_ms`; malformed
    /// ones are refused.
    #[test]
    fn timestamp_round_trip() {
        for ms in [
            0u64,
            1_709_251_199_999,
            1_795_414_740_123,
            4_107_542_400_001,
        ] {
            let text = format_timestamp(UNIX_EPOCH + Duration::from_millis(ms));
            assert_eq!(parse_timestamp_ms(&text), Some(ms), "{text}");
        }
        assert_eq!(
            parse_timestamp_ms("2026-11-23T06:19:00Z"),
            Some(1_795_414_740_000)
        );
        assert_eq!(
            parse_timestamp_ms("2026-11-23T06:19:00.1Z"),
            Some(1_795_414_740_100)
        );
        for bad in [
            "",
            "2026-11-23 06:19:00.123Z",
            "2026-11-23T06:19:00.123",
            "2026-13-01T00:00:00.000Z",
            "2026-02-29T00:00:00.000Z",
            "2026-11-23T24:00:00.000Z",
            "2026-11-23T06:19:00.Z",
            "2026-11-23T06:19:00.1234567890Z",
            "1969-12-31T23:59:59.999Z",
            "20a6-11-23T06:19:00.123Z",
            "2026-11-23T06:19:00.12é",
        ] {
            assert_eq!(parse_timestamp_ms(bad), None, "{bad}");
        }
    }

    /// Splitting an overlong line never cuts a UTF-8 character.
    #[test]
    fn utf8_split() {
        let text = "é".repeat(MAX_LINE);
        let cut = utf8_cut(text.as_bytes(), MAX_LINE);
        assert!(text.is_char_boundary(cut));
        assert_eq!(utf8_cut(b"abc", 10), 3);
        assert_eq!(utf8_cut(&[0x80; 8], 4), 4);
    }

    /// Unit names that would escape the log directory are refused.
    #[tokio::test]
    async fn bad_unit_names() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../x", "a/b", ".."] {
            assert!(UnitLog::open(dir.path(), bad, BIG).is_err(), "{bad}");
        }
    }
}
