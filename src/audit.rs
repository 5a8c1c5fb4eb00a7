//! The audit trail (minimal form): one JSON line per grant decision and per statement.
//!
//! Records go through [`AuditLog`], a handle to a single writer task, so lines from
//! concurrent sessions never interleave. Grant decisions are *acknowledged*
//! ([`AuditLog::record_durable`] returns after the line is written and flushed), because
//! the decision must be on disk before the upstream is touched. Statement records are
//! queued in order and written by the same task. The agent's connection has no path
//! to this file. (Hash chaining, export and replay are a later issue; the record shape
//! already carries what they need: time, session, grant, subject, decision.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// One line of the trail.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 time, UTC.
    pub time: String,
    pub event: AuditEvent,
    pub session_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub connection: String,
    pub protocol: &'static str,
    pub client_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The statement text, cut to `audit.max_statement_bytes` (see
    /// [`AuditRecord::set_statement`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    /// Set when `statement` was cut: the whole text's length in bytes and SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement_length: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    #[serde(rename = "grant.issued")]
    GrantIssued,
    #[serde(rename = "grant.denied")]
    GrantDenied,
    #[serde(rename = "statement")]
    Statement,
    #[serde(rename = "session.ended")]
    SessionEnded,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

impl AuditRecord {
    /// A record with the session context filled in and everything else empty.
    pub fn new(event: AuditEvent, session_id: &str, connection: &str, client_addr: &str) -> Self {
        AuditRecord {
            time: rfc3339(SystemTime::now()),
            event,
            session_id: session_id.to_owned(),
            grant_id: None,
            sub: None,
            connection: connection.to_owned(),
            protocol: "postgres",
            client_addr: client_addr.to_owned(),
            decision: None,
            reason: None,
            statement: None,
            statement_length: None,
            statement_sha256: None,
            kind: None,
            expires_at: None,
            groups: None,
        }
    }
}

impl AuditRecord {
    /// Records `text`, cut to at most `max` bytes (at a character boundary); a cut
    /// text comes with the whole text's length and SHA-256, so a reviewer holding the
    /// statement can prove it is the one recorded.
    pub fn set_statement(&mut self, text: &str, max: usize) {
        if text.len() <= max {
            self.statement = Some(text.to_owned());
            return;
        }
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.statement = Some(text[..end].to_owned());
        self.statement_length = Some(text.len());
        self.statement_sha256 = Some(sha256_hex(text.as_bytes()));
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit writer has stopped")]
    Stopped,
}

enum Command {
    /// Write a record; acknowledge after it is synced, if a sender is given.
    Write(
        Box<AuditRecord>,
        Option<oneshot::Sender<Result<(), String>>>,
    ),
    /// Acknowledge once everything before it is synced.
    Sync(oneshot::Sender<Result<(), String>>),
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    path: PathBuf,
    /// Cleared by the writer when a write fails, set again when one succeeds.
    healthy: Arc<AtomicBool>,
}

impl AuditLog {
    /// Opens (creating if needed) `dir/audit.jsonl` and starts the writer task.
    pub async fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        let path = dir.join("audit.jsonl");
        let io_err = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err)?;
        let (tx, rx) = mpsc::channel(4096);
        // A plain thread: file writes from async tasks would each hop through tokio's
        // blocking pool, which costs more than the write itself.
        let thread_path = path.clone();
        let healthy = Arc::new(AtomicBool::new(true));
        let thread_healthy = healthy.clone();
        std::thread::Builder::new()
            .name("sqlgate-audit".into())
            .spawn(move || writer(file, rx, thread_path, thread_healthy))
            .map_err(io_err)?;
        Ok(AuditLog { tx, path, healthy })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the last write succeeded and the writer is running. Sessions check this
    /// before forwarding a statement: no statement runs unrecorded (fail closed).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    /// Writes a record and waits until it is flushed to the file.
    pub async fn record_durable(&self, record: AuditRecord) -> Result<(), AuditError> {
        self.acknowledged(|ack| Command::Write(Box::new(record), Some(ack)))
            .await
    }

    /// Waits until every record queued so far is written and synced.
    pub async fn sync(&self) -> Result<(), AuditError> {
        self.acknowledged(Command::Sync).await
    }

    /// Sends a command carrying an acknowledgement and waits for it.
    async fn acknowledged(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), AuditError> {
        let (ack_tx, ack_rx) = oneshot::channel();
        self.tx
            .send(command(ack_tx))
            .await
            .map_err(|_| AuditError::Stopped)?;
        match ack_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Queues a record behind earlier ones (waits only if the queue is full).
    pub async fn record(&self, record: AuditRecord) -> Result<(), AuditError> {
        self.tx
            .send(Command::Write(Box::new(record), None))
            .await
            .map_err(|_| AuditError::Stopped)
    }
}

fn writer(
    file: std::fs::File,
    mut rx: mpsc::Receiver<Command>,
    path: PathBuf,
    healthy: Arc<AtomicBool>,
) {
    use std::io::Write;
    let mut file = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.blocking_recv() {
        // Batch whatever is queued into one write.
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                Command::Write(record, ack) => {
                    if serde_json::to_writer(&mut buf, &record).is_ok() {
                        buf.push(b'\n');
                    }
                    acks.extend(ack);
                }
                Command::Sync(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        let result = file
            .write_all(&buf)
            .and_then(|_| file.flush())
            .and_then(|_| {
                if acks.is_empty() {
                    Ok(())
                } else {
                    file.get_ref().sync_data()
                }
            });
        buf.clear();
        healthy.store(result.is_ok(), Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(path = %path.display(), error = %e, "audit write failed; statements are refused until it recovers");
        }
        for ack in acks {
            let _ = ack.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
    }
}
