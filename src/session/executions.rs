//! Statements in flight: from the moment a statement is forwarded upstream to its last
//! answer, for both front ends.
//!
//! The side that forwards a statement writes its `statement` record and hands the
//! relay's answer side an [`Execution`]: the statement's number in the session, when it
//! was sent, and a [`Durable`] that resolves when its record is on disk. The answer
//! side keeps them in order in [`InFlight`]: before it releases any answer bytes it
//! waits until every record of a statement sent so far is durable (strict audit: the
//! statement runs upstream meanwhile, so the wait overlaps the work), counts the rows
//! and bytes of each answer, and when an answer ends writes a `statement.result`
//! record with the status, duration, rows, bytes and the upstream's error.

use std::collections::VecDeque;
use std::time::Instant;

use crate::audit::{AuditError, AuditEvent, AuditRecord, Durable};

use super::gate::Gate;

/// How a forwarded statement ended, as the trail says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The server finished it (rows returned or affected).
    Ok,
    /// The server answered with an error.
    Error,
    /// An earlier error made the server skip it.
    NotRun,
    /// The session ended before its answer did.
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::NotRun => "not_run",
            Status::Interrupted => "interrupted",
        }
    }
}

/// One forwarded statement whose answer has not ended.
pub struct Execution {
    /// The statement's number in its session (its record's `statement_seq`).
    pub seq: u64,
    pub started: Instant,
    /// Resolves when the statement's record is on disk.
    pub durable: Durable,
    /// Postgres: the ReadyForQuery count after which it has surely ended; 0 elsewhere.
    pub ready_at: u64,
    rows: u64,
    bytes: u64,
    /// Its place under the session's cap on statements in flight, freed when the
    /// answer ends ([`MAX_IN_FLIGHT`]).
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Statements one session may have forwarded and not yet seen answered. A client that
/// pipelines more waits (the relay stops reading it) until answers come back, so a
/// client that never reads its answers cannot grow the gateway's memory.
pub const MAX_IN_FLIGHT: usize = 16 * 1024;

impl Execution {
    pub fn new(seq: u64, durable: Durable, ready_at: u64) -> Self {
        Execution {
            seq,
            started: Instant::now(),
            durable,
            ready_at,
            rows: 0,
            bytes: 0,
            permit: None,
        }
    }

    /// Holds `permit` until the answer ends.
    pub fn holding(mut self, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        self.permit = Some(permit);
        self
    }
}

/// What the server said at the end of an answer.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    /// Rows returned or affected, when the server says (else the rows counted).
    pub rows: Option<u64>,
    /// SQLSTATE or MySQL error number, and message.
    pub error: Option<(String, String)>,
}

/// The statements of one session whose answers have not ended, oldest first.
#[derive(Default)]
pub struct InFlight {
    queue: VecDeque<Execution>,
    /// Bytes and rows seen while no statement was in flight (a probe's error, a
    /// Describe's answer): not attributed.
    unattributed: u64,
    /// Durability waits of statements whose answer ended before the relay released
    /// it (the relay reads a whole buffer of answers, then writes it).
    ended_unreleased: Vec<Durable>,
}

impl InFlight {
    pub fn push(&mut self, execution: Execution) {
        self.queue.push_back(execution);
    }

    pub fn front(&self) -> Option<&Execution> {
        self.queue.front()
    }

    /// Waits until the record of every statement in flight is durable; an error means
    /// one was not written, and no answer may be released.
    pub async fn released(&mut self) -> Result<(), AuditError> {
        while let Some(durable) = self.ended_unreleased.pop() {
            durable.wait().await?;
        }
        for execution in self.queue.iter_mut() {
            if !execution.durable.is_done() {
                std::mem::replace(&mut execution.durable, Durable::done())
                    .wait()
                    .await?;
            }
        }
        Ok(())
    }

    /// Counts `bytes` of answer (and a row, if it is one) for the oldest statement;
    /// returns the rows counted for it so far.
    pub fn answer(&mut self, bytes: usize, row: bool) -> u64 {
        match self.queue.front_mut() {
            Some(front) => {
                front.bytes += bytes as u64;
                front.rows += u64::from(row);
                front.rows
            }
            None => {
                self.unattributed += bytes as u64;
                0
            }
        }
    }

    /// The oldest statement's answer ended: its `statement.result` record.
    pub fn finish(&mut self, gate: &Gate, ending: Ending) -> Option<AuditRecord> {
        let execution = self.pop()?;
        let status = match ending.error {
            Some(_) => Status::Error,
            None => Status::Ok,
        };
        let rows = ending.rows.unwrap_or(execution.rows);
        Some(result_record(
            gate,
            &execution,
            status,
            Some(rows),
            ending.error,
        ))
    }

    /// The statements that have surely ended by ReadyForQuery number `ready` without an
    /// answer of their own: the server skipped them after an error.
    pub fn skipped(&mut self, gate: &Gate, ready: u64) -> Vec<AuditRecord> {
        let mut records = Vec::new();
        while let Some(front) = self.queue.front() {
            if front.ready_at > ready {
                break;
            }
            let Some(execution) = self.pop() else {
                break;
            };
            records.push(result_record(gate, &execution, Status::NotRun, None, None));
        }
        records
    }

    /// Takes the oldest statement out, keeping its durability wait for the release.
    fn pop(&mut self) -> Option<Execution> {
        let mut execution = self.queue.pop_front()?;
        if !execution.durable.is_done() {
            self.ended_unreleased
                .push(std::mem::replace(&mut execution.durable, Durable::done()));
        }
        Some(execution)
    }

    /// The session ended: every statement still in flight was interrupted.
    pub fn interrupted(&mut self, gate: &Gate) -> Vec<AuditRecord> {
        self.queue
            .drain(..)
            .map(|e| {
                let rows = Some(e.rows).filter(|r| *r > 0);
                result_record(gate, &e, Status::Interrupted, rows, None)
            })
            .collect()
    }
}

fn result_record(
    gate: &Gate,
    execution: &Execution,
    status: Status,
    rows: Option<u64>,
    error: Option<(String, String)>,
) -> AuditRecord {
    let mut rec = AuditRecord::new(
        AuditEvent::StatementResult,
        &gate.session_id,
        &gate.grant.connection,
        &gate.client_addr,
    );
    rec.protocol = gate.dialect.protocol();
    rec.grant_id = Some(gate.grant.id.clone());
    rec.sub = Some(gate.principal.subject.clone());
    rec.statement_seq = Some(execution.seq);
    rec.status = Some(status.as_str());
    // Microsecond resolution is plenty.
    rec.duration_ms = Some((execution.started.elapsed().as_micros() as f64) / 1000.0);
    rec.rows = rows;
    rec.bytes = Some(execution.bytes);
    if let Some((code, message)) = error {
        rec.error_code = Some(code);
        // Error messages quote values ("invalid input syntax for type integer:
        // \"hunter2\""): redacted with the parameters.
        if !gate.services.config.audit_redact_parameters {
            rec.error_message = Some(super::gate::truncate(&message, 2048));
        }
    }
    rec
}
