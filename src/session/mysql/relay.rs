//! One logged-in MySQL session: the command loop, each command decided, forwarded and
//! its answer relayed (racing the grant, statement and idle timers and shutdown), the
//! tripwire, and the end of the upstream session.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlgate_mysql::codes::{self, ErrorCode};
use sqlgate_mysql::command::{self, ClientCommand};
use sqlgate_mysql::frame::Packet;
use sqlgate_mysql::handshake::{self};
use sqlgate_mysql::params::ParamTypes;
use sqlgate_mysql::response::{Expect, ResponseTracker, Step, SERVER_STATUS_IN_TRANS};
use sqlgate_mysql::CapabilityFlags;
use tokio::sync::broadcast;

use super::framed::{Framed, ReadError};
use super::login::Ready;
use super::upstream::{self, MAX_UPSTREAM_PACKET};
use super::FINAL_WRITE_WAIT;
use crate::audit::{AuditEvent, AuditRecord};
use crate::config::ConnectionConfig;
use crate::gateway::Services;
use crate::policy::readonly::Verdict;
use crate::session::clock::{TimeLimits, CANCEL_GRACE};
use crate::session::executions::{Ending, InFlight};
use crate::session::gate::{Denied, Dialect, Gate, TextDecision, VerdictCache};
use crate::session::{Admission, EndReason};
use crate::sql::ClassifyError;

/// Largest command packet after login (parameters of a prepared statement can be
/// large; statement texts are limited separately by `limits.max_statement_bytes`).
const MAX_CLIENT_PACKET: usize = 64 << 20;
/// Prepared statements one session may hold, and their text in all: the map is the
/// gateway's memory, and the server's `max_prepared_stmt_count` is shared by everyone.
const MAX_PREPARED: usize = 256;
const MAX_PREPARED_BYTES: usize = 8 << 20;

/// What interrupted waiting on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interrupt {
    GrantExpired,
    GrantRevoked,
    Shutdown,
    StatementTimeout,
    IdleInTransaction,
}

/// The deadlines a session races its IO against.
pub(super) struct Timers {
    grant: tokio::time::Instant,
    statement: Option<tokio::time::Instant>,
    idle: Option<tokio::time::Instant>,
}

pub(super) async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What ends a session from outside: gateway shutdown, and a reload that removes its
/// grant.
pub(super) struct Stops {
    shutdown: broadcast::Receiver<()>,
    grant: crate::policy::GrantWatch,
    services: Arc<crate::gateway::Services>,
    /// A sooner end of the grant, set by a reload.
    expires: Option<tokio::time::Instant>,
}

impl Stops {
    pub(super) fn new(gate: &Gate, shutdown: broadcast::Receiver<()>) -> Stops {
        Stops {
            shutdown,
            grant: gate.services.grants.watch(&gate.principal, &gate.grant),
            services: gate.services.clone(),
            expires: None,
        }
    }
}

/// Runs `fut` unless a timer, shutdown or the grant's removal comes first.
pub(super) async fn timed<T>(
    fut: impl Future<Output = T>,
    timers: &Timers,
    shutdown: &mut Stops,
) -> Result<T, Interrupt> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep_until(timers.grant) => return Err(Interrupt::GrantExpired),
            _ = until(shutdown.expires) => return Err(Interrupt::GrantExpired),
            _ = until(timers.statement) => return Err(Interrupt::StatementTimeout),
            _ = until(timers.idle) => return Err(Interrupt::IdleInTransaction),
            _ = shutdown.shutdown.recv() => return Err(Interrupt::Shutdown),
            change = shutdown.grant.next_change(&shutdown.services.grants) => match change {
                crate::policy::GrantChange::Revoked => return Err(Interrupt::GrantRevoked),
                crate::policy::GrantChange::ExpiresSooner(at) => {
                    // A reload shortened the grant: the session ends then.
                    let left = at
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    let at = tokio::time::Instant::now() + left;
                    shutdown.expires = Some(shutdown.expires.map_or(at, |e| e.min(at)));
                }
            },
        }
    }
}

/// A prepared statement the gateway allowed.
pub(super) struct Prepared {
    text: String,
    kind: String,
    /// Its parameter count, from the server's answer to the prepare.
    params: usize,
    /// The parameter types of the last execution that sent them.
    types: Option<ParamTypes>,
    /// Data streamed with COM_STMT_SEND_LONG_DATA since the last execution, per
    /// parameter; kept up to `audit.max_statement_bytes` each, for the record.
    long_data: Vec<(usize, Vec<u8>, usize)>,
    /// The policy generation it was allowed under: after a reload it is decided
    /// again before it runs.
    generation: u64,
    /// The `effect = "audit"` rules it meets.
    flags: Vec<String>,
}

/// One logged-in session.
pub(super) struct Session {
    pub(super) gate: Gate,
    pub(super) client: Framed,
    pub(super) up: Framed,
    pub(super) conn: ConnectionConfig,
    pub(super) thread_id: u32,
    pub(super) mariadb: bool,
    pub(super) client_track: bool,
    pub(super) up_track: bool,
    pub(super) limits: TimeLimits,
    pub(super) cache: VerdictCache,
    pub(super) prepared: HashMap<u32, Prepared>,
    /// Statements forwarded whose answer has not ended.
    pub(super) inflight: InFlight,
    /// A transaction is open (from the last status flags), and since when idle.
    pub(super) in_transaction: bool,
    pub(super) idle_since: tokio::time::Instant,
    pub(super) slot: Option<crate::session::slots::SessionSlot>,
    pub(super) grant_deadline: tokio::time::Instant,
    /// The sequence id of the gateway's own answer to the current command: the one
    /// after the command's last packet (a command over 16 MiB takes several).
    pub(super) reply_seq: u8,
}

impl Session {
    pub(super) fn new(
        id: String,
        peer: SocketAddr,
        services: Arc<Services>,
        client: Framed,
        ready: Ready,
    ) -> Session {
        let Ready {
            admission,
            upstream,
            conn,
            client_caps,
            stored_functions,
        } = ready;
        let Admission {
            principal,
            grant,
            slot,
        } = admission;
        let remaining = grant
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let budget = services.config.limits.verdict_cache_bytes;
        let up_track = upstream.session_track();
        Session {
            limits: grant.time_limits,
            grant_deadline: tokio::time::Instant::now() + remaining,
            gate: Gate::new(
                id,
                peer.to_string(),
                services,
                principal,
                grant,
                Dialect::Mysql {
                    database: conn.database.clone(),
                    stored_functions: Arc::new(stored_functions),
                },
            ),
            inflight: InFlight::default(),
            client,
            thread_id: upstream.hello.connection_id,
            mariadb: upstream.hello.is_mariadb(),
            up: upstream.conn,
            conn,
            client_track: client_caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK),
            up_track,
            cache: VerdictCache::new(budget),
            prepared: HashMap::new(),
            in_transaction: false,
            idle_since: tokio::time::Instant::now(),
            slot: Some(slot),
            reply_seq: 1,
        }
    }

    fn timers(&self, statement: Option<tokio::time::Instant>) -> Timers {
        let idle = (self.in_transaction && !self.limits.idle_in_transaction_timeout.is_zero())
            .then(|| self.idle_since + self.limits.idle_in_transaction_timeout);
        Timers {
            grant: self.grant_deadline,
            statement,
            idle: if statement.is_some() { None } else { idle },
        }
    }

    /// Runs the relay until the session ends, then closes the upstream; returns why
    /// it ended.
    pub(super) async fn relay(&mut self, shutdown: broadcast::Receiver<()>) -> EndReason {
        let mut shutdown = Stops::new(&self.gate, shutdown);
        let (reason, busy) = self.serve(&mut shutdown).await;
        self.close_upstream(busy).await;
        for rec in self.inflight.interrupted(&self.gate) {
            self.gate.audit(rec).await;
        }
        let mut rec = AuditRecord::new(
            AuditEvent::SessionEnded,
            &self.gate.session_id,
            &self.conn.name,
            &self.gate.client_addr,
        );
        rec.protocol = "mysql";
        rec.grant_id = Some(self.gate.grant.id.clone());
        rec.sub = Some(self.gate.principal.subject.clone());
        rec.reason = Some(reason.to_string());
        rec.ended_by = Some(reason.category());
        let _ = self.gate.services.audit.record(rec).await;
        reason
    }

    /// Sends the client a last error and returns why the session ends.
    async fn end(
        &mut self,
        seq: u8,
        code: ErrorCode,
        message: &str,
        reason: EndReason,
    ) -> EndReason {
        let payload = handshake::err(code, message);
        let _ = tokio::time::timeout(FINAL_WRITE_WAIT, self.client.send(seq, &payload)).await;
        reason
    }

    async fn interrupted(&mut self, seq: u8, interrupt: Interrupt) -> EndReason {
        match interrupt {
            Interrupt::GrantExpired => {
                self.end(
                    seq,
                    codes::CONNECTION_KILLED,
                    "sqlgate: the grant for this session has expired; reconnect with a fresh token",
                    EndReason::GrantExpired,
                )
                .await
            }
            Interrupt::GrantRevoked => {
                let message = format!(
                    "sqlgate: session ended: {}; reconnect to see which connections you may use now",
                    crate::session::gate::GRANT_REVOKED
                );
                self.end(
                    seq,
                    codes::CONNECTION_KILLED,
                    &message,
                    EndReason::GrantRevoked,
                )
                .await
            }
            Interrupt::Shutdown => {
                self.end(
                    seq,
                    codes::SHUTDOWN,
                    "sqlgate: the gateway is shutting down",
                    EndReason::Shutdown,
                )
                .await
            }
            Interrupt::IdleInTransaction => {
                let limit = crate::session::clock::human(self.limits.idle_in_transaction_timeout);
                self.end(
                    seq,
                    codes::CONNECTION_KILLED,
                    &format!(
                        "sqlgate: idle in transaction past idle_in_transaction_timeout ({limit})"
                    ),
                    EndReason::IdleInTransaction(limit),
                )
                .await
            }
            Interrupt::StatementTimeout => {
                let limit = crate::session::clock::human(self.limits.statement_timeout);
                self.end(
                    seq,
                    codes::STATEMENT_TIMEOUT,
                    &format!("sqlgate: a statement ran past statement_timeout ({limit}) and did not stop"),
                    EndReason::StatementTimeout(limit),
                )
                .await
            }
        }
    }

    /// The command loop. Returns why it ended and whether an answer was in flight.
    async fn serve(&mut self, shutdown: &mut Stops) -> (EndReason, bool) {
        loop {
            let timers = self.timers(None);
            let read = timed(self.client.read(MAX_CLIENT_PACKET), &timers, shutdown).await;
            let packet = match read {
                Err(interrupt) => return (self.interrupted(0, interrupt).await, false),
                Ok(Ok(Some(packet))) => packet,
                Ok(Ok(None)) | Ok(Err(ReadError::Io(_))) => {
                    return (EndReason::ClientClosed, false)
                }
                Ok(Err(ReadError::Protocol(e))) => {
                    let message = format!("sqlgate: {e}");
                    let code = match e {
                        sqlgate_mysql::ProtocolError::TooLarge { .. } => codes::PACKET_TOO_LARGE,
                        _ => codes::HANDSHAKE_ERROR,
                    };
                    return (
                        self.end(
                            1,
                            code,
                            &message,
                            EndReason::ProtocolViolation(e.to_string()),
                        )
                        .await,
                        false,
                    );
                }
            };
            if packet.seq != 0 {
                let reason =
                    EndReason::ProtocolViolation("a command did not start a new sequence".into());
                return (
                    self.end(
                        1,
                        codes::HANDSHAKE_ERROR,
                        "sqlgate: packets out of order",
                        reason,
                    )
                    .await,
                    false,
                );
            }
            self.reply_seq = packet.next_seq();
            let done = self.command(&packet, shutdown).await;
            drop(packet);
            self.client.shrink();
            self.up.shrink();
            if let Err((reason, busy)) = done {
                return (reason, busy);
            }
        }
    }

    /// Decides and runs one command.
    async fn command(
        &mut self,
        packet: &Packet,
        shutdown: &mut Stops,
    ) -> Result<(), (EndReason, bool)> {
        let cmd = match command::decode(&packet.payload) {
            Ok(cmd) => cmd,
            Err(e) => {
                return self
                    .deny(codes::STATEMENT_DENIED, &format!("sqlgate: {e}"))
                    .await;
            }
        };
        match cmd {
            ClientCommand::Quit => Err((EndReason::ClientQuit, false)),
            ClientCommand::Query(text) => {
                if self.allow_text(text, false).await?.is_some() {
                    self.forward(packet, Expect::Results, shutdown).await?;
                }
                Ok(())
            }
            ClientCommand::Prepare(text) => {
                let bytes: usize = self.prepared.values().map(|p| p.text.len()).sum();
                if self.prepared.len() >= MAX_PREPARED || bytes + text.len() > MAX_PREPARED_BYTES {
                    return self
                        .deny(
                            codes::STATEMENT_DENIED,
                            &format!(
                                "sqlgate: this session holds {} prepared statements ({bytes} bytes of text); \
                                 close some (COM_STMT_CLOSE) before preparing more (limits: {MAX_PREPARED} \
                                 statements, {MAX_PREPARED_BYTES} bytes)",
                                self.prepared.len()
                            ),
                        )
                        .await;
                }
                let text = text.to_owned();
                if let Some((kind, flags)) = self.allow_text(&text, true).await? {
                    let generation = self.gate.rules_generation();
                    let tracker = self.forward(packet, Expect::Prepare, shutdown).await?;
                    if let (Some(id), None) = (tracker.stmt_id, &tracker.error) {
                        let params = usize::from(tracker.stmt_params);
                        self.prepared.insert(
                            id,
                            Prepared {
                                text,
                                kind,
                                params,
                                types: None,
                                long_data: Vec::new(),
                                generation,
                                flags,
                            },
                        );
                    }
                }
                Ok(())
            }
            ClientCommand::Execute { stmt_id, flags } => {
                let Some(prepared) = self.prepared.get(&stmt_id) else {
                    return self.unknown_statement(stmt_id, "COM_STMT_EXECUTE").await;
                };
                if flags != 0 {
                    return self
                        .deny(
                            codes::STATEMENT_DENIED,
                            "sqlgate: server-side cursors (COM_STMT_EXECUTE with a cursor type) are not relayed; \
                             execute without a cursor",
                        )
                        .await;
                }
                if !self.gate.services.audit.healthy() {
                    return self
                        .deny(
                            codes::UNAVAILABLE,
                            "sqlgate: statement denied: the audit trail cannot be written",
                        )
                        .await;
                }
                // The parameters as the server will read them, or the execution is
                // refused: the trail must show what ran.
                let long_data: Vec<(usize, &[u8])> = prepared
                    .long_data
                    .iter()
                    .map(|(i, d, _)| (*i, d.as_slice()))
                    .collect();
                let decoded = sqlgate_mysql::params::decode_execute_params_with_long_data(
                    &packet.payload,
                    prepared.params,
                    prepared.types.as_ref(),
                    &long_data,
                );
                let (mut params, types) = match decoded {
                    Ok(decoded) => decoded,
                    Err(e) => {
                        let message = format!(
                            "sqlgate: COM_STMT_EXECUTE refused: its parameters cannot be read for the audit trail ({e})"
                        );
                        let rec = self.gate.statement_record(
                            &prepared.text,
                            &format!("EXECUTE {}", prepared.kind),
                            &Verdict::Deny {
                                reason: message.clone(),
                            },
                        );
                        self.gate.audit(rec).await;
                        return self.deny(codes::STATEMENT_DENIED, &message).await;
                    }
                };
                // Long data kept only in part says so, with its whole length.
                for (index, kept, total) in &prepared.long_data {
                    if kept.len() < *total {
                        if let Some(Some(value)) = params.get_mut(*index) {
                            value.push_str(&format!("... ({total} bytes in all)"));
                        }
                    }
                }
                let (text, kind) = (prepared.text.clone(), format!("EXECUTE {}", prepared.kind));
                let mut statement_flags = prepared.flags.clone();
                if prepared.generation != self.gate.services.grants.generation() {
                    // Allowed under rules a reload has replaced: decide it again.
                    let decision = self.gate.decide(&text, &mut self.cache, None).await;
                    if let TextDecision::Allow(allowed) = &decision {
                        // The flags of the rules now in force.
                        statement_flags = allowed.flags.clone();
                    }
                    if let TextDecision::Deny { denied, .. } = decision {
                        let why = format!(
                            "the rules now in force deny this statement, prepared before a configuration reload ({})",
                            denied.summary()
                        );
                        let rec = self.gate.statement_record(
                            &text,
                            &kind,
                            &Verdict::Deny {
                                reason: why.clone(),
                            },
                        );
                        self.gate.audit(rec).await;
                        return self
                            .deny(
                                codes::STATEMENT_DENIED,
                                &format!("sqlgate: {kind} denied: {why}"),
                            )
                            .await;
                    }
                }
                if let Some(rules) = self.gate.rules_in_force() {
                    if let Err(why) = self.gate.statement_budget(&rules, 1) {
                        let rec = self.gate.statement_record(
                            &text,
                            &kind,
                            &Verdict::Deny {
                                reason: why.clone(),
                            },
                        );
                        self.gate.audit(rec).await;
                        let message = format!("sqlgate: {kind} denied: {why}");
                        return self.deny(codes::STATEMENT_DENIED, &message).await;
                    }
                }
                let count = params.len();
                params.truncate(crate::session::portals::MAX_RECORDED_PARAMS);
                if let Some(prepared) = self.prepared.get_mut(&stmt_id) {
                    prepared.types = Some(types);
                    prepared.long_data.clear();
                }
                let execution = self
                    .gate
                    .forwarding(
                        &text,
                        &kind,
                        Some((params, count)),
                        None,
                        &statement_flags,
                        0,
                    )
                    .await;
                self.inflight.push(execution);
                self.forward(packet, Expect::Results, shutdown).await?;
                Ok(())
            }
            ClientCommand::SendLongData { stmt_id } => {
                let keep = self.gate.services.config.audit_max_statement_bytes;
                if let Some(prepared) = self.prepared.get_mut(&stmt_id) {
                    // [0x18][stmt_id: 4][param_id: 2][data...], as command::decode checked.
                    let Some((index, data)) = packet.payload.get(5..7).map(|id| {
                        (
                            usize::from(u16::from_le_bytes([id[0], id[1]])),
                            packet.payload.get(7..).unwrap_or_default(),
                        )
                    }) else {
                        return Ok(());
                    };
                    // What is kept for the record is bounded per statement, not per
                    // parameter: 65,535 parameters must not mean 65,535 copies.
                    let kept: usize = prepared.long_data.iter().map(|(_, d, _)| d.len()).sum();
                    let room = keep.saturating_sub(kept);
                    let whole = data.len();
                    let data = &data[..data.len().min(room)];
                    match prepared.long_data.iter_mut().find(|(i, _, _)| *i == index) {
                        Some((_, kept, total)) => {
                            kept.extend_from_slice(data);
                            *total += whole;
                        }
                        None if index < prepared.params => {
                            prepared.long_data.push((index, data.to_vec(), whole))
                        }
                        // The server refuses it at execution; nothing to keep.
                        None => {}
                    }
                    self.send_upstream(packet).await?;
                }
                // No answer is ever sent to SEND_LONG_DATA; an unknown id's data is dropped
                // and its EXECUTE refused.
                Ok(())
            }
            ClientCommand::Close { stmt_id } => {
                if self.prepared.remove(&stmt_id).is_some() {
                    self.send_upstream(packet).await?;
                }
                Ok(())
            }
            ClientCommand::Reset { stmt_id } => {
                if !self.prepared.contains_key(&stmt_id) {
                    return self.unknown_statement(stmt_id, "COM_STMT_RESET").await;
                }
                if !self
                    .audit_command(&format!("COM_STMT_RESET {stmt_id}"))
                    .await?
                {
                    return Ok(());
                }
                // Only once the reset goes to the server does its long data go.
                if let Some(prepared) = self.prepared.get_mut(&stmt_id) {
                    prepared.long_data.clear();
                }
                self.forward(packet, Expect::One, shutdown).await?;
                Ok(())
            }
            ClientCommand::Fetch { .. } => {
                self.deny(
                    codes::STATEMENT_DENIED,
                    "sqlgate: server-side cursors (COM_STMT_FETCH) are not relayed",
                )
                .await
            }
            ClientCommand::InitDb(db) => {
                if db != self.conn.database && db != self.conn.name {
                    let message = format!(
                        "sqlgate: this session may use only database {:?}, not {db:?}",
                        self.conn.database
                    );
                    let rec = self.gate.statement_record(
                        &format!("COM_INIT_DB {db}"),
                        "USE",
                        &Verdict::Deny {
                            reason: message.clone(),
                        },
                    );
                    self.gate.audit(rec).await;
                    return self.deny(codes::DATABASE_DENIED, &message).await;
                }
                let database = self.conn.database.clone();
                if !self
                    .audit_command(&format!("COM_INIT_DB {database}"))
                    .await?
                {
                    return Ok(());
                }
                let mut payload = vec![command::COM_INIT_DB];
                payload.extend_from_slice(self.conn.database.as_bytes());
                let rewritten = Packet {
                    seq: 0,
                    chunks: 1,
                    payload: payload.into(),
                };
                self.forward(&rewritten, Expect::One, shutdown).await?;
                Ok(())
            }
            ClientCommand::Ping => {
                // Runs nothing: not recorded.
                self.forward(packet, Expect::One, shutdown).await?;
                Ok(())
            }
            ClientCommand::SetOption(option) => {
                if !self
                    .audit_command(&format!("COM_SET_OPTION {option}"))
                    .await?
                {
                    return Ok(());
                }
                self.forward(packet, Expect::One, shutdown).await?;
                Ok(())
            }
            ClientCommand::Statistics => {
                if !self.audit_command("COM_STATISTICS").await? {
                    return Ok(());
                }
                self.forward(packet, Expect::Text, shutdown).await?;
                Ok(())
            }
            ClientCommand::FieldList { table } => {
                if table.is_empty() || table.contains(['.', '`', '/', '\\']) {
                    return self
                        .deny(
                            codes::STATEMENT_DENIED,
                            "sqlgate: COM_FIELD_LIST takes one plain table name",
                        )
                        .await;
                }
                let named = crate::sql::QualifiedName {
                    schema: None,
                    name: table.to_owned(),
                };
                let Some(rules) = self.gate.current_rules(&mut self.cache) else {
                    let message = format!("sqlgate: {}", crate::session::gate::GRANT_REVOKED);
                    return self.deny(codes::STATEMENT_DENIED, &message).await;
                };
                if let Some(denial) = rules
                    .denies_table(&named, None)
                    .or_else(|| rules.denies_unlisted(&named, self.gate.dialect.own_schema()))
                {
                    let message = format!("sqlgate: COM_FIELD_LIST {}", denial.reason());
                    let rec = self.gate.statement_record(
                        &format!("COM_FIELD_LIST {table}"),
                        "COM_FIELD_LIST",
                        &Verdict::Deny {
                            reason: denial.reason(),
                        },
                    );
                    self.gate.audit(rec).await;
                    return self.deny(codes::STATEMENT_DENIED, &message).await;
                }
                if !self
                    .audit_command(&format!("COM_FIELD_LIST {table}"))
                    .await?
                {
                    return Ok(());
                }
                self.forward(packet, Expect::FieldList, shutdown).await?;
                Ok(())
            }
            ClientCommand::ResetConnection => {
                if !self.audit_command("COM_RESET_CONNECTION").await? {
                    return Ok(());
                }
                // The server's OK is not relayed: the client gets the answer after the re-pin.
                self.send_upstream(packet).await?;
                let tracker = self.relay_answer(Expect::One, shutdown, false).await?;
                self.prepared.clear();
                let pinned = upstream::pin_framed(
                    &mut self.up,
                    self.mariadb,
                    self.up_track,
                    self.limits.statement_timeout,
                )
                .await;
                let answer = match (&tracker.error, pinned) {
                    (None, Ok(())) => {
                        handshake::ok(sqlgate_mysql::response::SERVER_STATUS_AUTOCOMMIT)
                    }
                    (Some(e), _) => handshake::err(
                        ErrorCode {
                            code: e.code,
                            sqlstate: "HY000",
                        },
                        &e.message,
                    ),
                    (None, Err(e)) => {
                        let reason = EndReason::Io(format!(
                            "re-pinning after COM_RESET_CONNECTION failed: {e}"
                        ));
                        return Err((
                            self.end(
                                self.reply_seq,
                                codes::CONNECTION_KILLED,
                                "sqlgate: the session could not be reset",
                                reason,
                            )
                            .await,
                            false,
                        ));
                    }
                };
                self.in_transaction = false;
                // The gateway's own answer, too, waits for the command's record.
                if let Err(e) = self.inflight.released().await {
                    let reason = EndReason::Io(format!("audit trail: {e}"));
                    return Err((
                        self.end(
                            self.reply_seq,
                            codes::UNAVAILABLE,
                            "sqlgate: session ended: the audit trail cannot be written",
                            reason,
                        )
                        .await,
                        false,
                    ));
                }
                self.answer(&answer).await
            }
            ClientCommand::Other { name, .. } => {
                let message = format!("sqlgate: {name} is not relayed (read-only gateway)");
                let rec = self.gate.statement_record(
                    name,
                    name,
                    &Verdict::Deny {
                        reason: message.clone(),
                    },
                );
                self.gate.audit(rec).await;
                self.deny(codes::UNKNOWN_COMMAND, &message).await
            }
        }
    }

    /// Audits a command that carries no statement but is forwarded (its answer is
    /// recorded too). `Ok(false)`: the trail cannot be written, the command was
    /// answered with an error and must not be forwarded.
    async fn audit_command(&mut self, what: &str) -> Result<bool, (EndReason, bool)> {
        if !self.gate.services.audit.healthy() {
            self.deny(
                codes::UNAVAILABLE,
                "sqlgate: statement denied: the audit trail cannot be written",
            )
            .await?;
            return Ok(false);
        }
        if let Some(rules) = self.gate.current_rules(&mut self.cache) {
            if let Err(why) = self.gate.statement_budget(&rules, 1) {
                self.deny(
                    codes::STATEMENT_DENIED,
                    &format!("sqlgate: {what} denied: {why}"),
                )
                .await?;
                return Ok(false);
            }
        }
        let execution = self.gate.forwarding(what, what, None, None, &[], 0).await;
        self.inflight.push(execution);
        Ok(true)
    }

    /// Answers the current command with an ERR; the session goes on.
    async fn deny(&mut self, code: ErrorCode, message: &str) -> Result<(), (EndReason, bool)> {
        self.answer(&handshake::err(code, message)).await
    }

    /// Sends the gateway's own answer to the current command, racing the timers (a
    /// client that does not read cannot hold its session past the grant).
    async fn answer(&mut self, payload: &[u8]) -> Result<(), (EndReason, bool)> {
        let timers = self.timers(None);
        let mut shutdown = Stops::new(&self.gate, self.gate.services.shutdown.subscribe());
        let seq = self.reply_seq;
        match timed(self.client.send(seq, payload), &timers, &mut shutdown).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err((EndReason::Io(e.to_string()), false)),
            Err(interrupt) => Err((self.interrupted(seq, interrupt).await, false)),
        }
    }

    async fn unknown_statement(
        &mut self,
        stmt_id: u32,
        command: &str,
    ) -> Result<(), (EndReason, bool)> {
        self.deny(
            codes::UNKNOWN_STATEMENT,
            &format!(
                "sqlgate: {command} names statement {stmt_id}, which this session did not prepare"
            ),
        )
        .await
    }

    /// Decides a statement text and audits it; answers denials. Returns the kind of
    /// its first statement when the text may be forwarded. An allowed text to be
    /// `prepare`d is not recorded here: each execution is.
    async fn allow_text(
        &mut self,
        text: &str,
        prepare: bool,
    ) -> Result<Option<(String, Vec<String>)>, (EndReason, bool)> {
        if !self.gate.services.audit.healthy() {
            return self
                .deny(
                    codes::UNAVAILABLE,
                    "sqlgate: statement denied: the audit trail cannot be written",
                )
                .await
                .map(|()| None);
        }
        match self.gate.decide(text, &mut self.cache, None).await {
            TextDecision::Allow(allowed) => {
                for (part, kind) in &allowed.parts {
                    // Preparing runs nothing: each execution is recorded, as in the
                    // Postgres extended protocol.
                    if !prepare {
                        let execution = self
                            .gate
                            .forwarding(part, kind, None, None, &allowed.flags, 0)
                            .await;
                        self.inflight.push(execution);
                    }
                }
                let first = allowed.parts.first().map(|(_, kind)| kind.clone());
                Ok(Some((
                    first.unwrap_or_else(|| "statement".into()),
                    allowed.flags.clone(),
                )))
            }
            TextDecision::Deny { denied, parts, .. } => {
                for part in &parts {
                    let rec = self
                        .gate
                        .statement_record(&part.text, &part.kind, &part.verdict);
                    self.gate.audit(rec).await;
                }
                let (code, message) = denial_error(&denied);
                tracing::info!(session = %self.gate.session_id, reason = %denied.summary(), "statement denied");
                self.deny(code, &message).await.map(|()| None)
            }
        }
    }

    async fn send_upstream(&mut self, packet: &Packet) -> Result<(), (EndReason, bool)> {
        self.up
            .send(0, &packet.payload)
            .await
            .map(|_| ())
            .map_err(|_| (EndReason::UpstreamClosed, false))
    }

    /// Forwards a command and relays its answer to the client.
    async fn forward(
        &mut self,
        packet: &Packet,
        expect: Expect,
        shutdown: &mut Stops,
    ) -> Result<ResponseTracker, (EndReason, bool)> {
        self.send_upstream(packet).await?;
        self.relay_answer(expect, shutdown, true).await
    }

    /// Relays one answer, packet by packet, until it is complete. A statement past
    /// the grant's statement timeout is killed upstream (`KILL QUERY` on a second
    /// connection); one that does not stop within the grace period ends the session.
    async fn relay_answer(
        &mut self,
        expect: Expect,
        shutdown: &mut Stops,
        to_client: bool,
    ) -> Result<ResponseTracker, (EndReason, bool)> {
        let mut tracker = ResponseTracker::new(expect, self.up_track);
        let started = tokio::time::Instant::now();
        let mut statement = (!self.limits.statement_timeout.is_zero())
            .then(|| started + self.limits.statement_timeout + CANCEL_GRACE / 5);
        let mut killed = false;
        let mut next_seq = self.reply_seq;
        // Strict audit: nothing of the answer reaches the client before the statement's
        // record is on disk; the statement runs upstream meanwhile.
        if to_client {
            let timers = self.timers(statement);
            match timed(self.inflight.released(), &timers, shutdown).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(session = %self.gate.session_id, error = %e, "a statement's audit record was not written; its answer is withheld");
                    let reason = EndReason::Io(format!("audit trail: {e}"));
                    return Err((
                        self.end(
                            next_seq,
                            codes::UNAVAILABLE,
                            "sqlgate: session ended: the audit trail cannot be written, so the statement's answer is withheld",
                            reason,
                        )
                        .await,
                        true,
                    ));
                }
                Err(interrupt) => return Err((self.interrupted(next_seq, interrupt).await, true)),
            }
        }
        // Where the current statement's result began, in the tracker's counts.
        let (mut rows_start, mut affected_start) = (0u64, 0u64);
        let max_rows = self.gate.max_rows();
        loop {
            loop {
                let packet = match self.up.buffered(MAX_UPSTREAM_PACKET) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(e) => {
                        let reason = EndReason::ProtocolViolation(format!("upstream: {e}"));
                        return Err((
                            self.end(
                                next_seq,
                                codes::UNAVAILABLE,
                                "sqlgate: the upstream answer was malformed",
                                reason,
                            )
                            .await,
                            true,
                        ));
                    }
                };
                let (rows_before, completed_before) = (tracker.rows, tracker.completed);
                let fed = tracker.feed(&packet.payload);
                let rows = self
                    .inflight
                    .answer(packet.payload.len() + 4, tracker.rows > rows_before);
                if let Some(limit) = max_rows.as_ref().filter(|m| to_client && rows > m.value) {
                    // This row and the rest are not forwarded; the session ends (its
                    // statement is recorded as interrupted).
                    let why = format!(
                        "a statement returned more rows than its grant allows ({})",
                        limit.describe("max_rows")
                    );
                    let message = format!(
                        "sqlgate: session ended: {why}; add a LIMIT or aggregate (a limit the DBA set in the grant's rule files)"
                    );
                    return Err((
                        self.end(
                            packet.seq,
                            codes::ROW_LIMIT,
                            &message,
                            EndReason::Limit(why),
                        )
                        .await,
                        true,
                    ));
                }
                if tracker.completed > completed_before {
                    let ending = Ending {
                        rows: Some(
                            (tracker.rows - rows_start) + (tracker.affected_rows - affected_start),
                        ),
                        error: None,
                    };
                    (rows_start, affected_start) = (tracker.rows, tracker.affected_rows);
                    if let Some(rec) = self.inflight.finish(&self.gate, ending) {
                        self.gate.audit(rec).await;
                    }
                }
                if let Some(e) = tracker.error.as_ref().filter(|_| tracker.is_done()) {
                    let ending = Ending {
                        rows: None,
                        error: Some((e.code.to_string(), e.message.clone())),
                    };
                    if let Some(rec) = self.inflight.finish(&self.gate, ending) {
                        self.gate.audit(rec).await;
                    }
                }
                if tracker.is_done() && tracker.error.is_none() && tracker.completed == 0 {
                    // A command answered by one packet (COM_INIT_DB, COM_FIELD_LIST, ...).
                    let ending = Ending {
                        rows: Some(tracker.rows),
                        error: None,
                    };
                    if let Some(rec) = self.inflight.finish(&self.gate, ending) {
                        self.gate.audit(rec).await;
                    }
                }
                if tracker.is_done() {
                    // The server skips the statements after an error.
                    for rec in self.inflight.skipped(&self.gate, 0) {
                        self.gate.audit(rec).await;
                    }
                }
                let (step, ok) = match fed {
                    Ok(fed) => fed,
                    Err(e) => {
                        let reason = EndReason::ProtocolViolation(format!("upstream: {e}"));
                        return Err((
                            self.end(
                                packet.seq,
                                codes::STATEMENT_DENIED,
                                &format!("sqlgate: {e}"),
                                reason,
                            )
                            .await,
                            true,
                        ));
                    }
                };
                if let Some(ok) = &ok {
                    for (name, value) in &ok.variables {
                        if let Err(why) = crate::policy::mysql::check_reported_setting(name, value)
                        {
                            let what = format!("{name} changed to {value:?}: {why}");
                            tracing::error!(session = %self.gate.session_id, %what, "tripwire: pinned setting changed");
                            let message = format!(
                                "sqlgate: session ended: a pinned setting changed ({what})"
                            );
                            return Err((
                                self.end(
                                    packet.seq,
                                    codes::CONNECTION_KILLED,
                                    &message,
                                    EndReason::Tamper(what),
                                )
                                .await,
                                true,
                            ));
                        }
                    }
                }
                if to_client {
                    match ok {
                        Some(ok) if self.up_track && !self.client_track && ok.state_changed => {
                            next_seq = self.client.queue(packet.seq, &ok.encode_untracked());
                        }
                        _ => next_seq = self.client.queue(packet.seq, &packet.payload),
                    }
                }
                if step == Step::Done {
                    if (tracker.eof_state_changed || tracker.error.is_some()) && self.up_track {
                        // A result set's EOF said the session state changed (a function a
                        // view calls can set variables) without saying what, or the answer
                        // ended in an error, which reports no state at all: read it.
                        if let Err(what) = self.recheck_pins().await {
                            tracing::error!(session = %self.gate.session_id, %what, "tripwire: pinned setting changed");
                            let message = format!(
                                "sqlgate: session ended: a pinned setting changed ({what})"
                            );
                            return Err((
                                self.end(
                                    0,
                                    codes::CONNECTION_KILLED,
                                    &message,
                                    EndReason::Tamper(what),
                                )
                                .await,
                                true,
                            ));
                        }
                    }
                    if let Some(status) = tracker.status {
                        self.in_transaction = status & SERVER_STATUS_IN_TRANS != 0;
                    }
                    self.idle_since = tokio::time::Instant::now();
                    let timers = self.timers(None);
                    return match timed(self.client.flush(), &timers, shutdown).await {
                        Ok(Ok(())) => Ok(tracker),
                        Ok(Err(e)) => Err((EndReason::Io(e.to_string()), false)),
                        Err(interrupt) => Err((self.interrupted(next_seq, interrupt).await, false)),
                    };
                }
            }
            let timers = self.timers(statement);
            let waited = if self.client.pending() {
                timed(self.client.flush(), &timers, shutdown)
                    .await
                    .map(|r| r.map(|()| true))
            } else {
                timed(self.up.fill(), &timers, shutdown).await
            };
            match waited {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    let reason = EndReason::UpstreamClosed;
                    return Err((
                        self.end(
                            next_seq,
                            codes::UNAVAILABLE,
                            "sqlgate: the upstream closed the connection",
                            reason,
                        )
                        .await,
                        false,
                    ));
                }
                Ok(Err(e)) => return Err((EndReason::Io(e.to_string()), true)),
                Err(Interrupt::StatementTimeout) if !killed => {
                    killed = true;
                    statement = Some(tokio::time::Instant::now() + CANCEL_GRACE);
                    tracing::info!(session = %self.gate.session_id, "statement timeout: killing the statement upstream");
                    self.spawn_kill(None, false);
                }
                Err(interrupt) => return Err((self.interrupted(next_seq, interrupt).await, true)),
            }
        }
    }

    /// Reads the pinned settings back from the upstream and checks them as the
    /// tripwire checks reported ones. `Err`: what changed.
    async fn recheck_pins(&mut self) -> Result<(), String> {
        let read_only = if self.mariadb {
            "tx_read_only"
        } else {
            "transaction_read_only"
        };
        let names = [
            "sql_mode",
            "character_set_client",
            "character_set_connection",
            "character_set_results",
            read_only,
        ];
        let sql = format!(
            "SELECT {}",
            names
                .iter()
                .map(|n| format!("@@SESSION.{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = match upstream::query(&mut self.up, &sql).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                return Err(format!(
                    "the pinned settings could not be read: {}",
                    e.message
                ))
            }
            Err(e) => return Err(format!("the pinned settings could not be read: {e}")),
        };
        let row = rows.into_iter().next().unwrap_or_default();
        for (name, value) in names.iter().zip(row) {
            let value = value.unwrap_or_default();
            let value = match (*name == read_only, value.as_str()) {
                (true, "1") => "ON".to_owned(),
                (true, "0") => "OFF".to_owned(),
                _ => value,
            };
            crate::policy::mysql::check_reported_setting(name, &value)
                .map_err(|why| format!("{name} is {value:?}: {why}"))?;
        }
        Ok(())
    }

    /// `KILL QUERY` (or, with `connection`, `KILL CONNECTION`: what follows in a
    /// multi-statement message stops too) for this session's upstream thread, on a
    /// connection of its own. `slot`: held until the kill is done, so caps count a
    /// statement still running.
    fn spawn_kill(&self, slot: Option<crate::session::slots::SessionSlot>, connection: bool) {
        let conn = self.conn.clone();
        let thread = self.thread_id;
        let timeout = self.gate.services.config.limits.connect_timeout;
        let session = self.gate.session_id.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = upstream::kill(&conn, thread, connection, timeout).await {
                tracing::error!(%session, thread, error = %e, "cannot stop the upstream statement");
            }
        });
    }

    /// Ends the upstream side: a connection still running statements is killed
    /// (`KILL CONNECTION` from a second connection), then it is closed with COM_QUIT.
    async fn close_upstream(&mut self, busy: bool) {
        let slot = self.slot.take();
        if busy {
            self.spawn_kill(slot, true);
        }
        let _ = tokio::time::timeout(FINAL_WRITE_WAIT, self.up.send(0, &[command::COM_QUIT])).await;
        let _ = tokio::time::timeout(
            FINAL_WRITE_WAIT,
            tokio::io::AsyncWriteExt::shutdown(&mut self.up.stream),
        )
        .await;
        let _ = tokio::time::timeout(
            FINAL_WRITE_WAIT,
            tokio::io::AsyncWriteExt::shutdown(&mut self.client.stream),
        )
        .await;
    }
}

/// The ERR a denial becomes.
pub(super) fn denial_error(denied: &Denied) -> (ErrorCode, String) {
    match denied {
        Denied::Unclassified(ClassifyError::Syntax(e)) => (
            codes::PARSE_ERROR,
            format!("sqlgate: statement denied: it does not parse as MySQL ({e}); nothing unparsed is forwarded"),
        ),
        Denied::Unclassified(ClassifyError::TooLarge { len, max }) => (
            codes::STATEMENT_DENIED,
            format!("sqlgate: statement denied: it is {len} bytes, over limits.max_statement_bytes ({max})"),
        ),
        Denied::Unclassified(e @ ClassifyError::Busy { .. }) => (codes::UNAVAILABLE, format!("sqlgate: {e}")),
        Denied::Unclassified(e) => (codes::STATEMENT_DENIED, format!("sqlgate: statement denied: {e}")),
        Denied::Statement {
            kind,
            reason,
            position,
            rule,
            ..
        } => {
            let at = position
                .as_ref()
                .map(|p| format!(" (statement {} of {}: {})", p.index, p.of, p.excerpt))
                .unwrap_or_default();
            let why = if *rule {
                "a rule the DBA set on this grant denies it"
            } else {
                "this session is read-only"
            };
            (
                codes::STATEMENT_DENIED,
                format!("sqlgate: {kind} denied{at}: {reason}; {why}"),
            )
        }
        Denied::AuditUnavailable => (
            codes::UNAVAILABLE,
            "sqlgate: statement denied: the audit trail cannot be written".into(),
        ),
        Denied::Front { reason, hint } => (codes::STATEMENT_DENIED, format!("sqlgate: {reason} ({hint})")),
    }
}
