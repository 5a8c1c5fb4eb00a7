//! The audit trail (minimal form): one JSON line per grant decision and per statement.
//!
//! Records go through [`AuditLog`], a handle to a single writer task, so lines from
//! concurrent sessions never interleave. Grant decisions are *acknowledged*
//! ([`AuditLog::record_durable`] returns after the line is written and flushed), because
//! the decision must be on disk before the upstream is touched. Statement records are
//! queued in order and written by the same task. The agent's connection has no path
//! to this file. (Hash chaining, export and replay are a later issue; the record shape
//! already carries what they need: time, session, grant, subject, decision.)

pub mod export;
pub mod progress;
pub mod read;
pub mod replay;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// One line of the trail. README.md ("Audit trail") documents every field.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditRecord {
    /// Position in the trail, from 1, set by the writer.
    pub seq: u64,
    /// SHA-256 (hex) of the previous line's bytes, set by the writer: the hash chain.
    /// The first record of a trail has 64 zeros.
    pub prev: String,
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
    /// The `effect = "audit"` rules an allowed statement met (statement records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flagged_by: Option<Vec<String>>,
    /// The token's scopes, OAuth client id, `jti` and issuer (grant and session records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `grant.issued`: the upstream the session connects to (host:port/database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// `session.ended`: why, as one word (client_quit, client_closed, upstream_closed,
    /// grant_expired, shutdown, tamper, limit, protocol_violation, error); `reason`
    /// has the details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<&'static str>,
    /// `statement` and `statement.result`: the statement's number in its session
    /// (from 1), which ties a result to its statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement_seq: Option<u64>,
    /// The prepared statement's and the portal's names (`statement.prepared`,
    /// `portal.bound`, and the `statement` of a Postgres Execute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portal: Option<String>,
    /// `statement` of a prepared execution: the bound parameters (text, or `\x` and
    /// hex for binary values; null for NULL), each cut like the statement text;
    /// absent when `audit.redact_parameters` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Vec<Option<String>>>,
    /// How many parameters were bound (also when they are redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter_count: Option<usize>,
    /// `statement.result`: ok, error, not_run (an earlier error skipped it) or
    /// interrupted (the session ended first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// Milliseconds from forwarding the statement to its last answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Rows returned to the client, or affected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes of the answer sent to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The upstream's error: SQLSTATE (Postgres) or error number (MySQL), and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// `trail.torn`: the length and SHA-256 of the incomplete last line found when the
    /// trail was opened (a crash mid-write); the line stays in the file, unchained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torn_length: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torn_sha256: Option<String>,
    /// `trail.gap`: records lost to failed writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_records: Option<u64>,
    /// `trail.pruned`: the last removed record's seq and line hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_through_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_through_sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    #[serde(rename = "grant.issued")]
    GrantIssued,
    #[serde(rename = "grant.denied")]
    GrantDenied,
    /// A statement the client sent: its decision, and for an allowed one, written
    /// before its answer reaches the client.
    #[default]
    #[serde(rename = "statement")]
    Statement,
    /// A Postgres Parse of a named statement was allowed (SQL `EXECUTE name` can run
    /// it too, so its text is always in the trail).
    #[serde(rename = "statement.prepared")]
    StatementPrepared,
    /// A Postgres Bind of a named portal (SQL `FETCH ... FROM name` can read it).
    #[serde(rename = "portal.bound")]
    PortalBound,
    /// How an allowed statement ended: status, duration, rows, bytes, error.
    #[serde(rename = "statement.result")]
    StatementResult,
    #[serde(rename = "session.ended")]
    SessionEnded,
    /// Written when a trail is opened whose last line was incomplete.
    #[serde(rename = "trail.torn")]
    TrailTorn,
    /// Written after failed writes: how many records were lost.
    #[serde(rename = "trail.gap")]
    TrailGap,
    /// Written after retention removed closed segments: where the chain was cut.
    #[serde(rename = "trail.pruned")]
    TrailPruned,
    /// A reload put new `[[grant]]` entries and rules in force.
    #[serde(rename = "config.reloaded")]
    ConfigReloaded,
    /// A reload was refused (the config or a rule file is broken); the old policy stays.
    #[serde(rename = "config.reload_refused")]
    ConfigReloadRefused,
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
            connection: connection.to_owned(),
            protocol: "postgres",
            client_addr: client_addr.to_owned(),
            ..AuditRecord::default()
        }
    }

    /// Fills in who: subject, groups, scopes, client id, token id and issuer.
    pub fn set_principal(&mut self, principal: &crate::identity::Principal) {
        self.sub = Some(principal.subject.clone());
        self.groups = Some(principal.groups.clone());
        self.scopes = Some(principal.scopes.clone());
        self.client_id = principal.client_id.clone();
        self.token_id = principal.token_id.clone();
        self.issuer = Some(principal.issuer.clone());
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

/// When a statement's record must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Before the statement's answer reaches the client: the session waits for the
    /// record's sync (shared by every record queued at the time: group commit) while
    /// the statement runs upstream.
    #[default]
    Strict,
    /// Within this bound: the writer syncs at least this often; a crash can lose the
    /// records of the last interval.
    Batched(std::time::Duration),
    /// Benchmarks only (`sqlgate serve --bench-discard-audit`, never from a config
    /// file): records are built and dropped unwritten, to measure what the trail costs.
    DiscardForBenchmarks,
}

impl Durability {
    /// How often the writer syncs records nobody waits for (denials, results, session
    /// ends) — in strict mode too.
    fn sync_interval(self) -> std::time::Duration {
        match self {
            Durability::Strict | Durability::DiscardForBenchmarks => {
                std::time::Duration::from_secs(1)
            }
            Durability::Batched(bound) => bound,
        }
    }
}

/// Resolves when a statement record is on disk (see [`AuditLog::record_statement`]).
#[must_use = "a statement's answer waits for its record"]
pub struct Durable(Option<oneshot::Receiver<Result<(), String>>>);

impl Durable {
    /// Already durable, or nothing to wait for.
    pub fn done() -> Durable {
        Durable(None)
    }

    /// Waits for the record's sync; an error means it was not written, and the
    /// statement's answer must not be released.
    pub async fn wait(self) -> Result<(), AuditError> {
        let Some(rx) = self.0 else { return Ok(()) };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Io {
                path: PathBuf::from("audit.jsonl"),
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// A record that could not be queued: waiting fails.
    pub fn failed() -> Durable {
        let (_, rx) = oneshot::channel();
        Durable(Some(rx))
    }

    /// Whether waiting would return at once.
    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }
}

enum Command {
    /// Write a record; acknowledge after it is synced, if a sender is given.
    Write(
        Box<AuditRecord>,
        Option<oneshot::Sender<Result<(), String>>>,
    ),
    /// Acknowledge once everything before it is synced.
    Sync(oneshot::Sender<Result<(), String>>),
    /// Sync what is written, if anything is not (the batch interval's tick).
    Flush,
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    path: PathBuf,
    /// Cleared by the writer when a write fails, set again when one succeeds.
    healthy: Arc<AtomicBool>,
    durability: Durability,
}

impl AuditLog {
    /// [`AuditLog::open_with`] with the default segments.
    pub async fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(dir, Segments::default()).await
    }

    /// Opens (creating if needed) `dir/audit.jsonl`, the active segment, and starts the
    /// writer task. The hash chain continues from the trail's last complete record; an
    /// incomplete last line (a crash mid-write) is terminated and reported by a
    /// `trail.torn` record.
    pub async fn open_with(dir: &Path, segments: Segments) -> Result<AuditLog, AuditError> {
        AuditLog::open_durable(dir, segments, Durability::default()).await
    }

    /// [`AuditLog::open_with`], with statement records as durable as `durability` says.
    pub async fn open_durable(
        dir: &Path,
        segments: Segments,
        durability: Durability,
    ) -> Result<AuditLog, AuditError> {
        let path = dir.join("audit.jsonl");
        let io_err = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io_err)?;
        let (mut chain, torn) = recover(&file).map_err(io_err)?;
        if chain.good_len == 0 {
            // An empty active segment (the gateway stopped right after a rotation):
            // the chain goes on from the newest closed segment.
            if let Some(newest) = closed_segments(dir).map_err(io_err)?.last() {
                let (last, _) =
                    recover(&std::fs::File::open(newest).map_err(io_err)?).map_err(io_err)?;
                chain.seq = last.seq;
                chain.prev = last.prev;
            }
        }
        let torn_found = torn.is_some();
        if let Some(torn) = &torn {
            tracing::warn!(path = %path.display(), bytes = torn.length, "the audit trail ends in an incomplete record (a crash mid-write); it is kept, and reported by a trail.torn record");
        }
        let (tx, rx) = mpsc::channel(4096);
        // A plain thread: file writes from async tasks would each hop through tokio's
        // blocking pool, which costs more than the write itself.
        let healthy = Arc::new(AtomicBool::new(true));
        let trail = Trail {
            file,
            path: path.clone(),
            dir: dir.to_owned(),
            segments,
            opened: std::time::Instant::now(),
            healthy: healthy.clone(),
        };
        // Benchmarks only (bench/pgbench.sh AUDIT_VARIANTS=1): measure the gateway
        // without the trail's cost. Loud in the log.
        let discard = durability == Durability::DiscardForBenchmarks;
        if discard {
            tracing::error!(
                "--bench-discard-audit: audit records are DISCARDED, not written (benchmark mode)"
            );
        }
        std::thread::Builder::new()
            .name("sqlgate-audit".into())
            .spawn(move || {
                if discard {
                    discard_all(rx)
                } else {
                    writer(trail, rx, chain, torn)
                }
            })
            .map_err(io_err)?;
        let log = AuditLog {
            tx,
            path,
            healthy,
            durability,
        };
        // Records nobody waits for are synced within the interval. The ticker stops
        // when the writer does.
        let ticker = log.tx.downgrade();
        let interval = durability.sync_interval();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(tx) = ticker.upgrade() else { return };
                if tx.send(Command::Flush).await.is_err() {
                    return;
                }
            }
        });
        if torn_found {
            // Record the torn line now, not with the first statement.
            let _ = log.sync().await;
        }
        Ok(log)
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

    /// Queues an allowed statement's record. Strict durability: the returned
    /// [`Durable`] resolves when it is synced, and the statement's answer waits for it
    /// (the statement itself runs meanwhile). Batched: resolved at once.
    /// A record that cannot be queued gives a [`Durable`] whose wait fails.
    pub async fn record_statement(&self, record: AuditRecord) -> Durable {
        match self.durability {
            Durability::Strict => {
                let (ack_tx, ack_rx) = oneshot::channel();
                match self
                    .tx
                    .send(Command::Write(Box::new(record), Some(ack_tx)))
                    .await
                {
                    Ok(()) => Durable(Some(ack_rx)),
                    Err(_) => Durable::failed(),
                }
            }
            Durability::Batched(_) | Durability::DiscardForBenchmarks => {
                match self.record(record).await {
                    Ok(()) => Durable::done(),
                    Err(_) => Durable::failed(),
                }
            }
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

/// When the active segment is closed and a new one begun, and how long closed
/// segments are kept. Closed segments are `audit-<last seq, 20 digits>.jsonl`, so
/// their names sort in chain order; the chain runs on from one into the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    pub max_bytes: u64,
    /// Counted from when the gateway opened the segment.
    pub max_age: std::time::Duration,
    /// Closed segments whose last write is older are deleted. `None`: kept forever.
    pub retention: Option<std::time::Duration>,
}

impl Default for Segments {
    fn default() -> Self {
        Segments {
            max_bytes: 64 << 20,
            max_age: std::time::Duration::from_secs(24 * 3600),
            retention: None,
        }
    }
}

/// The closed segments in `dir`, in chain order.
pub fn closed_segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let named = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("audit-"))
                .and_then(|n| n.strip_suffix(".jsonl"))
                .is_some_and(|seq| seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()));
            named && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
        })
        .collect();
    segments.sort();
    Ok(segments)
}

/// The writer's files.
struct Trail {
    file: std::fs::File,
    path: PathBuf,
    dir: PathBuf,
    segments: Segments,
    opened: std::time::Instant,
    healthy: Arc<AtomicBool>,
}

impl Trail {
    fn due(&self, chain: &Chain) -> bool {
        chain.good_len >= self.segments.max_bytes
            || (chain.good_len > 0 && self.opened.elapsed() >= self.segments.max_age)
    }

    /// Closes the active segment under its final name and opens a new one; then
    /// applies retention, oldest segments first, and says what it removed.
    fn rotate(&mut self, chain: &mut Chain) -> std::io::Result<Option<Pruned>> {
        self.file.sync_data()?;
        let closed = self.dir.join(format!("audit-{:020}.jsonl", chain.seq));
        // Never replace a segment: link the new name (fails if it exists), then put a
        // fresh active segment in place of the old name.
        std::fs::hard_link(&self.path, &closed)?;
        let staged = self.dir.join(".audit.jsonl.new");
        let fresh = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&staged)?;
        std::fs::rename(&staged, &self.path)?;
        self.file = fresh;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        chain.good_len = 0;
        self.opened = std::time::Instant::now();
        tracing::info!(segment = %closed.display(), "audit segment closed");
        let Some(keep) = self.segments.retention else {
            return Ok(None);
        };
        let mut pruned: Option<Pruned> = None;
        for segment in closed_segments(&self.dir)? {
            let old = std::fs::metadata(&segment)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > keep);
            if !old || segment == closed {
                break;
            }
            let (last, _) = recover(&std::fs::File::open(&segment)?)?;
            if let Err(e) = std::fs::remove_file(&segment) {
                tracing::warn!(segment = %segment.display(), error = %e, "cannot remove an old audit segment");
                break;
            }
            tracing::info!(segment = %segment.display(), "audit segment removed (retention)");
            let count = pruned.as_ref().map_or(0, |p| p.segments);
            pruned = Some(Pruned {
                segments: count + 1,
                through_seq: last.seq,
                through_sha256: last.prev,
            });
        }
        Ok(pruned)
    }
}

/// Where the hash chain stands: the last record's sequence number and the SHA-256 of
/// its line, and how many bytes of the file are whole records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    seq: u64,
    prev: String,
    good_len: u64,
}

/// The prev of a trail's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What retention removed: the chain's last record in the removed segments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pruned {
    segments: u64,
    through_seq: u64,
    through_sha256: String,
}

/// An incomplete last line found when a trail is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Torn {
    length: usize,
    sha256: String,
}

/// Reads the end of an existing trail: where the chain stands, and a torn last line.
/// A last complete line that is not a record is an error (the trail must be looked
/// at with `sqlgate audit verify`, not silently restarted); one without `seq` was
/// written before the chain existed, and the chain starts after it.
fn recover(file: &std::fs::File) -> std::io::Result<(Chain, Option<Torn>)> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    let fresh = Chain {
        seq: 0,
        prev: GENESIS.into(),
        good_len: len,
    };
    if len == 0 {
        return Ok((fresh, None));
    }
    // Read a window that holds the whole last complete line (a newline before it, or
    // the start of the file), growing it for long lines.
    let mut window = (4u64 << 20).min(len);
    let tail = loop {
        let mut f = file;
        f.seek(SeekFrom::Start(len - window))?;
        let mut tail = Vec::with_capacity(window as usize);
        f.take(window).read_to_end(&mut tail)?;
        let complete_end = tail.iter().rposition(|b| *b == b'\n');
        let whole = match complete_end {
            Some(end) => tail[..end].contains(&b'\n'),
            None => false,
        };
        if whole || window == len {
            break tail;
        }
        window = (window * 4).min(len);
    };
    let (complete, torn) = match tail.iter().rposition(|b| *b == b'\n') {
        Some(end) if end + 1 == tail.len() => (&tail[..end], None),
        Some(end) => (&tail[..end], Some(&tail[end + 1..])),
        None => (&tail[..0], Some(&tail[..])),
    };
    let parse = |line: &[u8]| -> Option<serde_json::Value> {
        serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .filter(|v| v.is_object())
    };
    // A "torn" tail that is a whole record only lacks its newline.
    if let Some(bytes) = torn {
        if let Some(v) = parse(bytes) {
            return Ok((
                Chain {
                    seq: v["seq"].as_u64().unwrap_or(0),
                    prev: sha256_hex(bytes),
                    good_len: len,
                },
                Some(Torn {
                    length: 0,
                    sha256: String::new(),
                }),
            ));
        }
    }
    let last = complete
        .rsplit(|b| *b == b'\n')
        .next()
        .filter(|l| !l.is_empty());
    let chain = match last {
        Some(line) => match parse(line) {
            Some(v) => Chain {
                seq: v["seq"].as_u64().unwrap_or(0),
                prev: sha256_hex(line),
                good_len: len,
            },
            None => {
                return Err(std::io::Error::other(
                    "the last complete line of the audit trail is not a record; check it with \
                     `sqlgate audit verify` before the gateway appends to it",
                ))
            }
        },
        None if complete.is_empty() => fresh,
        None => {
            return Err(std::io::Error::other(
                "the audit trail ends in an empty line; check it with `sqlgate audit verify`",
            ))
        }
    };
    let torn = torn.map(|bytes| Torn {
        length: bytes.len(),
        sha256: sha256_hex(bytes),
    });
    Ok((chain, torn))
}

/// Appends `record` to `buf` as the chain's next line.
fn chain_line(chain: &mut Chain, record: &mut AuditRecord, buf: &mut Vec<u8>) {
    record.seq = chain.seq.saturating_add(1);
    record.prev = chain.prev.clone();
    let start = buf.len();
    if serde_json::to_writer(&mut *buf, &*record).is_err() {
        buf.truncate(start);
        return;
    }
    chain.prev = sha256_hex(&buf[start..]);
    chain.seq = record.seq;
    buf.push(b'\n');
}

/// The writer in benchmark mode: acknowledges everything, writes nothing.
fn discard_all(mut rx: mpsc::Receiver<Command>) {
    while let Some(command) = rx.blocking_recv() {
        match command {
            Command::Write(_, Some(ack)) | Command::Sync(ack) => {
                let _ = ack.send(Ok(()));
            }
            Command::Write(_, None) | Command::Flush => {}
        }
    }
}

/// Bytes of records the writer gathers into one write.
const MAX_BATCH_BYTES: usize = 8 << 20;

fn writer(mut trail: Trail, mut rx: mpsc::Receiver<Command>, mut chain: Chain, torn: Option<Torn>) {
    use std::io::Write;
    let path = trail.path.clone();
    let healthy = trail.healthy.clone();
    let mut buf = Vec::with_capacity(64 * 1024);
    // Bytes past `chain.good_len` that a failed write may have left.
    let mut dirty = false;
    // Written before the next records, until a write succeeds: the torn line's end
    // and report, how many records failed writes lost, what retention removed.
    let mut torn = torn;
    let mut lost: u64 = 0;
    let mut pruned: Option<Pruned> = None;
    // Records written but not yet synced, and how many.
    let mut unsynced = false;
    let mut unsynced_records: u64 = 0;
    while let Some(first) = rx.blocking_recv() {
        let before = chain.clone();
        if let Some(t) = &torn {
            // Terminate the incomplete line; unless it was a whole record without its
            // newline, say so in the chain.
            buf.push(b'\n');
            if t.length > 0 {
                let mut rec = AuditRecord::new(AuditEvent::TrailTorn, "-", "", "");
                rec.reason = Some(
                    "the trail ended in an incomplete record when it was opened (the gateway \
                     stopped mid-write); that line is kept unchained"
                        .into(),
                );
                rec.torn_length = Some(t.length);
                rec.torn_sha256 = Some(t.sha256.clone());
                chain_line(&mut chain, &mut rec, &mut buf);
            }
        }
        if lost > 0 {
            let mut rec = AuditRecord::new(AuditEvent::TrailGap, "-", "", "");
            rec.reason = Some(format!(
                "{lost} record(s) could not be written, or synced, when the trail was not writable and may be lost"
            ));
            rec.lost_records = Some(lost);
            chain_line(&mut chain, &mut rec, &mut buf);
        }
        if let Some(p) = &pruned {
            let mut rec = AuditRecord::new(AuditEvent::TrailPruned, "-", "", "");
            rec.reason = Some(format!(
                "retention removed {} closed segment(s) through seq {}",
                p.segments, p.through_seq
            ));
            rec.pruned_through_seq = Some(p.through_seq);
            rec.pruned_through_sha256 = Some(p.through_sha256.clone());
            chain_line(&mut chain, &mut rec, &mut buf);
        }
        // Batch whatever is queued into one write.
        let mut records = 0u64;
        let mut acks = Vec::new();
        let mut flush = false;
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                Command::Write(mut record, ack) => {
                    chain_line(&mut chain, &mut record, &mut buf);
                    records += 1;
                    acks.extend(ack);
                }
                Command::Sync(ack) => acks.push(ack),
                Command::Flush => flush = true,
            }
            // A batch stops growing past MAX_BATCH_BYTES; the rest is the next batch.
            next = if buf.len() < MAX_BATCH_BYTES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let must_sync = !acks.is_empty()
            || torn.is_some()
            || lost > 0
            || pruned.is_some()
            || (flush && (unsynced || !buf.is_empty()));
        let result = (|| {
            if dirty {
                // Remove what a failed write left, so the next record starts a line.
                trail.file.set_len(before.good_len)?;
                dirty = false;
            }
            if !buf.is_empty() {
                trail.file.write_all(&buf)?;
                unsynced = true;
            }
            if must_sync {
                trail.file.sync_data()?;
                unsynced = false;
            }
            Ok::<(), std::io::Error>(())
        })();
        match &result {
            Ok(()) if unsynced => {
                unsynced_records += records;
                chain.good_len = before.good_len + buf.len() as u64;
                torn = None;
                lost = 0;
                pruned = None;
            }
            Ok(()) => {
                unsynced_records = 0;
                chain.good_len = before.good_len + buf.len() as u64;
                torn = None;
                lost = 0;
                pruned = None;
            }
            Err(e) => {
                // The batch is lost: the chain goes on from the last record on disk,
                // and the next write says how many records are missing.
                chain = before;
                dirty = true;
                // Records written earlier but never synced may be lost too (a failed
                // sync is reported once): counted, to be safe.
                lost += records + unsynced_records;
                unsynced_records = 0;
                tracing::error!(path = %path.display(), error = %e, lost, "audit write failed; statements are refused until it recovers");
            }
        }
        buf.clear();
        if result.is_ok() && trail.due(&chain) {
            match trail.rotate(&mut chain) {
                Ok(p) => pruned = p,
                // The active segment just grows; the chain is unaffected. Rotation syncs
                // first: if that failed, what was not synced may be lost, and the next
                // write says so (a failed sync is reported only once).
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot rotate the audit segment");
                    if unsynced {
                        lost += unsynced_records;
                        unsynced_records = 0;
                    }
                }
            }
        }
        healthy.store(result.is_ok(), Ordering::Relaxed);
        for ack in acks {
            let _ = ack.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
    }
}
