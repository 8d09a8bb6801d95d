//! The key broker's audit log: every transfer decision and every admin action, one JSON object per
//! line, and the key broker answers only once the line is written (`docs/kbs.md`, "Audit log").
//!
//! - Fail closed: a sink returns an error when a record cannot be written (and, for a file, synced
//!   to disk); the HTTP layer then answers 503 and releases nothing, issues no token.
//! - Whole lines: a record is one `write` of one line. If the write or the sync fails, the file is
//!   truncated back to where the line began, so a failure never leaves half a record for the next
//!   one to be merged into; a half line left by a crash is cut off when the log is opened.
//! - Bounded: [`FileAudit`] rotates by size (`audit.jsonl`, `audit.jsonl.1`, ...) and keeps a bounded
//!   number of files. [`RateLimitedAudit`] bounds the records that anyone can cause without a token
//!   (denied transfers, failed logins): beyond a token bucket, they are counted, and one summary
//!   record names how many were left out.
//!
//! Records hold no secret: no key, wrapped key, `user_data`, password or token.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::admin::AdminEvent;
use crate::transfer::TransferDecision;

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The disk (or quota) is full.
    #[error("the audit log's storage is full: {source}")]
    StorageFull {
        /// The write error.
        #[source]
        source: std::io::Error,
    },

    /// Any other write, sync, rotation or encoding failure.
    #[error("cannot write the audit log: {source}")]
    Io {
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<std::io::Error> for AuditError {
    fn from(source: std::io::Error) -> Self {
        // ENOSPC and EDQUOT: out of space, which freeing space cures.
        if matches!(source.raw_os_error(), Some(28 | 122)) {
            Self::StorageFull { source }
        } else {
            Self::Io { source }
        }
    }
}

/// Where audit records go. The key broker answers a request only after its record is written.
pub trait AuditSink: Send + Sync {
    /// Records one transfer decision (online or offline). It holds no secret.
    fn record(&self, decision: &TransferDecision) -> Result<(), AuditError>;

    /// Records one admin action (login, policy or key change). It holds no secret.
    fn record_admin(&self, event: &AdminEvent) -> Result<(), AuditError>;

    /// Records any other record: the summary of records left out by [`RateLimitedAudit`].
    fn record_value(&self, value: &serde_json::Value) -> Result<(), AuditError>;
}

/// One line: the record's JSON and a newline, built before any byte is written.
fn line_of(record: &impl Serialize) -> Result<Vec<u8>, AuditError> {
    let mut line = serde_json::to_vec(record).map_err(|e| AuditError::Io {
        source: std::io::Error::other(e),
    })?;
    line.push(b'\n');
    Ok(line)
}

/// An audit sink writing one JSON object per line to any writer (standard output, for log
/// collectors such as journald or a container runtime; a buffer in tests). Each line is one
/// `write_all` and a flush, under a lock, so lines never interleave.
pub struct JsonLinesAudit<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> std::fmt::Debug for JsonLinesAudit<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesAudit").finish_non_exhaustive()
    }
}

impl<W: Write + Send> JsonLinesAudit<W> {
    /// An audit log written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    /// The writer, back.
    pub fn into_inner(self) -> W {
        self.out
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_line(&self, record: &impl Serialize) -> Result<(), AuditError> {
        let line = line_of(record)?;
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        out.write_all(&line)?;
        out.flush()?;
        Ok(())
    }
}

impl<W: Write + Send> AuditSink for JsonLinesAudit<W> {
    fn record(&self, decision: &TransferDecision) -> Result<(), AuditError> {
        self.write_line(decision)
    }

    fn record_admin(&self, event: &AdminEvent) -> Result<(), AuditError> {
        self.write_line(event)
    }

    fn record_value(&self, value: &serde_json::Value) -> Result<(), AuditError> {
        self.write_line(value)
    }
}

/// Rotation of a [`FileAudit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// A file is rotated before a record would take it past this size.
    pub max_file_bytes: u64,
    /// Files kept, the live one included: `audit.jsonl` and `audit.jsonl.1` to
    /// `audit.jsonl.{max_files - 1}`; the oldest is deleted at rotation.
    pub max_files: u32,
}

impl Default for Rotation {
    /// 64 MiB × 8 files: half a GiB at most, and at the default limit on unauthenticated records
    /// ([`RateLimit::default`]) at least weeks of history.
    fn default() -> Self {
        Self {
            max_file_bytes: 64 << 20,
            max_files: 8,
        }
    }
}

/// An audit log in a file, each record written whole and synced to disk before the request that
/// caused it is answered, rotated by size.
pub struct FileAudit {
    inner: Mutex<OpenLog>,
}

struct OpenLog {
    path: PathBuf,
    file: File,
    /// The file's length: where the next line begins.
    len: u64,
    rotation: Rotation,
}

impl std::fmt::Debug for FileAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAudit").finish_non_exhaustive()
    }
}

impl FileAudit {
    /// Opens (or creates, mode 0600) the log at `path` for appending. A half line at its end, left
    /// by a crash during a write, is cut off: that record's request was never answered.
    pub fn open(path: &Path, rotation: Rotation) -> Result<Self, AuditError> {
        let rotation = Rotation {
            max_file_bytes: rotation.max_file_bytes.max(1),
            max_files: rotation.max_files.max(1),
        };
        let file = open_log_file(path)?;
        let len = whole_lines_len(&file)?;
        if len != file.metadata()?.len() {
            file.set_len(len)?;
            file.sync_all()?;
        }
        Ok(Self {
            inner: Mutex::new(OpenLog {
                path: path.to_owned(),
                file,
                len,
                rotation,
            }),
        })
    }

    fn write_line(&self, record: &impl Serialize) -> Result<(), AuditError> {
        let line = line_of(record)?;
        let mut log = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        log.append(&line)
    }
}

impl OpenLog {
    fn append(&mut self, line: &[u8]) -> Result<(), AuditError> {
        if self.len > 0 && self.len + line.len() as u64 > self.rotation.max_file_bytes {
            self.rotate()?;
        }
        let written = self
            .file
            .write_all(line)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Cut off whatever part of the line reached the file, so that the next record starts
            // on a line of its own. Shrinking a file needs no space, so this works on a full disk.
            let _ = self.file.set_len(self.len);
            return Err(e.into());
        }
        self.len += line.len() as u64;
        Ok(())
    }

    /// `audit.jsonl.{n-2}` → `.{n-1}`, ..., `audit.jsonl` → `.1`, then a new `audit.jsonl`.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.rotation.max_files == 1 {
            // Only the live file is kept: start it afresh.
            self.file.set_len(0)?;
            self.file.sync_all()?;
            self.len = 0;
            return Ok(());
        }
        let oldest = self.rotation.max_files - 1;
        match std::fs::remove_file(numbered(oldest)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        for n in (1..oldest).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        let file = open_log_file(&self.path)?;
        sync_parent(&self.path)?;
        self.file = file;
        self.len = 0;
        Ok(())
    }
}

impl AuditSink for FileAudit {
    fn record(&self, decision: &TransferDecision) -> Result<(), AuditError> {
        self.write_line(decision)
    }

    fn record_admin(&self, event: &AdminEvent) -> Result<(), AuditError> {
        self.write_line(event)
    }

    fn record_value(&self, value: &serde_json::Value) -> Result<(), AuditError> {
        self.write_line(value)
    }
}

fn open_log_file(path: &Path) -> Result<File, AuditError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    Ok(options.open(path)?)
}

fn sync_parent(path: &Path) -> Result<(), AuditError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()?;
    Ok(())
}

/// The length of the file up to and including its last newline.
fn whole_lines_len(file: &File) -> Result<u64, AuditError> {
    let mut file = file;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The limit on records that need no token to cause.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Records per second, sustained.
    pub per_second: f64,
    /// Records at once, after a quiet spell.
    pub burst: u32,
}

impl Default for RateLimit {
    /// 2 per second, 100 at once: 170,000 lines (about 50 MiB) a day at most from anyone without a
    /// token, while a legitimate client's occasional refusal is always written.
    fn default() -> Self {
        Self {
            per_second: 2.0,
            burst: 100,
        }
    }
}

/// What a [`RateLimitedAudit`] writes in place of the records it left out.
#[derive(Debug, Serialize)]
struct SuppressedSummary {
    time: u64,
    event: &'static str,
    /// Denied transfers and failed logins not written since `since`.
    suppressed: u64,
    since: u64,
}

struct Bucket {
    tokens: f64,
    last: u64,
    suppressed: u64,
    suppressed_since: u64,
}

/// Wraps a sink: records that anyone can cause without a token (denied online transfers, failed
/// logins) pass a token bucket; the rest are counted, and one summary line is written before the
/// next record that passes (any record). Allowed transfers, offline transfers (an operator's) and
/// admin changes by an authenticated operator are always written.
pub struct RateLimitedAudit<S> {
    inner: S,
    limit: RateLimit,
    bucket: Mutex<Bucket>,
    clock: fn() -> u64,
}

impl<S> std::fmt::Debug for RateLimitedAudit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitedAudit")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S: AuditSink> RateLimitedAudit<S> {
    /// `inner`, with unauthenticated failures limited to `limit`; `clock` gives unix seconds.
    pub fn new(inner: S, limit: RateLimit, clock: fn() -> u64) -> Self {
        Self {
            inner,
            limit,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(limit.burst),
                last: clock(),
                suppressed: 0,
                suppressed_since: 0,
            }),
            clock,
        }
    }

    /// The wrapped sink.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Whether an unauthenticated failure may be written now; counts it if not.
    fn admit(&self, time: u64) -> bool {
        let now = (self.clock)().max(time);
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_sub(bucket.last) as f64;
        bucket.last = bucket.last.max(now);
        bucket.tokens =
            (bucket.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            if bucket.suppressed == 0 {
                bucket.suppressed_since = now;
            }
            bucket.suppressed += 1;
            false
        }
    }

    /// Writes the summary of the records left out, if any, before the next record.
    fn flush_summary(&self, time: u64) -> Result<(), AuditError> {
        let (suppressed, since) = {
            let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            let taken = (bucket.suppressed, bucket.suppressed_since);
            bucket.suppressed = 0;
            taken
        };
        if suppressed == 0 {
            return Ok(());
        }
        let summary = SuppressedSummary {
            time,
            event: "audit_records_suppressed",
            suppressed,
            since,
        };
        let written = serde_json::to_value(&summary)
            .map_err(|e| AuditError::Io {
                source: std::io::Error::other(e),
            })
            .and_then(|value| self.inner.record_value(&value));
        if written.is_err() {
            // Not written: keep the count for the next attempt.
            let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            if bucket.suppressed == 0 {
                bucket.suppressed_since = since;
            }
            bucket.suppressed += suppressed;
        }
        written
    }
}

impl<S: AuditSink> AuditSink for RateLimitedAudit<S> {
    fn record(&self, decision: &TransferDecision) -> Result<(), AuditError> {
        let unauthenticated = !decision.allowed && decision.offline.is_none();
        if unauthenticated && !self.admit(decision.time) {
            return Ok(());
        }
        self.flush_summary(decision.time)?;
        self.inner.record(decision)
    }

    fn record_admin(&self, event: &AdminEvent) -> Result<(), AuditError> {
        let unauthenticated = !event.allowed && event.action == crate::admin::AdminAction::Login;
        if unauthenticated && !self.admit(event.time) {
            return Ok(());
        }
        self.flush_summary(event.time)?;
        self.inner.record_admin(event)
    }

    fn record_value(&self, value: &serde_json::Value) -> Result<(), AuditError> {
        self.inner.record_value(value)
    }
}

/// An audit sink that keeps records in memory, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    decisions: Mutex<Vec<TransferDecision>>,
    admin_events: Mutex<Vec<AdminEvent>>,
    others: Mutex<Vec<serde_json::Value>>,
}

impl MemoryAudit {
    /// The decisions recorded so far, oldest first.
    pub fn decisions(&self) -> Vec<TransferDecision> {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The admin events recorded so far, oldest first.
    pub fn admin_events(&self) -> Vec<AdminEvent> {
        self.admin_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Other records (summaries of records left out), oldest first.
    pub fn other_records(&self) -> Vec<serde_json::Value> {
        self.others
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, decision: &TransferDecision) -> Result<(), AuditError> {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(decision.clone());
        Ok(())
    }

    fn record_admin(&self, event: &AdminEvent) -> Result<(), AuditError> {
        self.admin_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.clone());
        Ok(())
    }

    fn record_value(&self, value: &serde_json::Value) -> Result<(), AuditError> {
        self.others
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(value.clone());
        Ok(())
    }
}

impl<S: AuditSink + ?Sized> AuditSink for std::sync::Arc<S> {
    fn record(&self, decision: &TransferDecision) -> Result<(), AuditError> {
        (**self).record(decision)
    }

    fn record_admin(&self, event: &AdminEvent) -> Result<(), AuditError> {
        (**self).record_admin(event)
    }

    fn record_value(&self, value: &serde_json::Value) -> Result<(), AuditError> {
        (**self).record_value(value)
    }
}
