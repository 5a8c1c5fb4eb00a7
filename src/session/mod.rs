//! Sessions: the IO layer that joins a protocol front end to identity, policy and audit.
//!
//! One session per client connection. The protocol crates decode bytes; the session
//! owns the sockets and asks, in order: who is this (identity), may they reach this
//! connection (grant), is this statement allowed (policy) — recording each answer in
//! the audit trail before acting on it.
//!
//! * [`postgres`]: the Postgres front end — client handshake, login, relay.
//! * [`mysql`]: the MySQL/MariaDB front end — handshake, login, command relay.
//! * [`upstream`]: opening and logging in to a Postgres upstream.
//! * [`cancel`]: the gateway's own cancel keys and their mapping to upstream ones.
//! * [`tripwire`]: pinned settings watched in what the server reports.
//! * [`gate`]: the protocol-neutral statement decision and its audit record.
//! * [`clock`]: the grant's statement and idle-in-transaction timeouts.
//! * [`slots`]: session caps.
//! * [`admit`]: the protocol-neutral login — token, grant, audit — every front end
//!   calls with the token it received.

pub mod cancel;
pub mod clock;
pub mod executions;
pub mod gate;
pub mod mysql;
pub mod portals;
pub mod postgres;
pub mod slots;
pub mod tripwire;
pub mod upstream;

use std::fmt;
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::{rfc3339, AuditEvent, AuditRecord, Decision};
use crate::gateway::Services;
use crate::identity::{Principal, TokenError};
use crate::policy::{Denial, Grant};

/// A byte stream: plain TCP or TLS, on either side.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// A new session id ("s-" and 16 hex digits).
pub fn new_session_id() -> String {
    format!("s-{:016x}", rand::random::<u64>())
}

/// Why a session ended (recorded as `session.ended`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent Terminate.
    ClientQuit,
    /// The client closed its socket.
    ClientClosed,
    /// The upstream closed its socket.
    UpstreamClosed,
    GrantExpired,
    /// A configuration reload left no `[[grant]]` entry granting the session.
    GrantRevoked,
    Shutdown,
    ProtocolViolation(String),
    /// A pinned setting changed (the tripwire).
    Tamper(String),
    /// A statement ran past the grant's statement timeout and did not stop when cancelled.
    StatementTimeout(String),
    /// Idle inside a transaction past the grant's limit.
    IdleInTransaction(String),
    /// A limit of the grant's rule files (rows of one statement, statements of a
    /// session).
    Limit(String),
    Io(String),
}

impl EndReason {
    /// The audit trail's one-word `ended_by`.
    pub fn category(&self) -> &'static str {
        match self {
            EndReason::ClientQuit => "client_quit",
            EndReason::ClientClosed => "client_closed",
            EndReason::UpstreamClosed => "upstream_closed",
            EndReason::GrantExpired => "grant_expired",
            EndReason::GrantRevoked => "grant_revoked",
            EndReason::Shutdown => "shutdown",
            EndReason::ProtocolViolation(_) => "protocol_violation",
            EndReason::Tamper(_) => "tamper",
            EndReason::StatementTimeout(_)
            | EndReason::IdleInTransaction(_)
            | EndReason::Limit(_) => "limit",
            EndReason::Io(_) => "error",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::ClientQuit => f.write_str("client quit"),
            EndReason::ClientClosed => f.write_str("client closed the connection"),
            EndReason::UpstreamClosed => f.write_str("upstream closed the connection"),
            EndReason::GrantExpired => f.write_str("grant expired"),
            EndReason::GrantRevoked => f.write_str("grant removed by a configuration reload"),
            EndReason::Shutdown => f.write_str("gateway shutting down"),
            EndReason::ProtocolViolation(m) => write!(f, "protocol violation: {m}"),
            EndReason::Tamper(m) => write!(f, "tamper: {m}"),
            EndReason::Limit(m) => write!(f, "limit: {m}"),
            EndReason::StatementTimeout(limit) => {
                write!(f, "limit: a statement ran past statement_timeout ({limit}) and did not stop when cancelled")
            }
            EndReason::IdleInTransaction(limit) => {
                write!(
                    f,
                    "limit: idle in transaction past idle_in_transaction_timeout ({limit})"
                )
            }
            EndReason::Io(m) => write!(f, "i/o error: {m}"),
        }
    }
}

/// A login that passed: who it is, what they may reach, and the slot the session
/// holds while it lives.
pub struct Admission {
    pub principal: Principal,
    pub grant: Grant,
    pub slot: slots::SessionSlot,
}

/// Why a login was refused; each front end phrases it in its own protocol.
#[derive(Debug)]
pub enum Refusal {
    /// The token failed a check (Postgres: 28P01).
    Token(TokenError),
    /// The identity has no grant for the connection (Postgres: 28000).
    NoGrant(Denial),
    /// The grant could not be recorded, so it is not issued (Postgres: 58030).
    AuditUnavailable,
    /// A session cap is reached (Postgres: 53300).
    Cap(slots::CapReached),
}

/// The protocol-neutral part of a login: token → principal → grant, each decision in
/// the audit trail. `context` is a record with the session's id, connection and client
/// address filled in. An issued grant is synced to the trail before this returns
/// (audit before effect); refusals have no effect to precede and are queued, so a
/// flood of bad tokens cannot become a flood of fsyncs.
pub async fn admit(
    services: &Services,
    context: &AuditRecord,
    connection: &str,
    token: &str,
    protocol: crate::config::Protocol,
) -> Result<Admission, Refusal> {
    let record = |event: AuditEvent, decision: Decision| {
        let mut rec = context.clone();
        rec.time = rfc3339(SystemTime::now());
        rec.event = event;
        rec.decision = Some(decision);
        rec
    };
    let principal = match services.verifier.verify(token).await {
        Ok(p) => p,
        Err(e) => {
            let mut rec = record(AuditEvent::GrantDenied, Decision::Deny);
            rec.reason = Some(format!("token rejected: {e}"));
            queue(services, rec).await;
            return Err(Refusal::Token(e));
        }
    };
    let grant = match services
        .grants
        .decide(&principal, connection, SystemTime::now())
    {
        Ok(grant) => grant,
        Err(denial) => {
            let mut rec = record(AuditEvent::GrantDenied, Decision::Deny);
            rec.set_principal(&principal);
            rec.reason = Some(denial.reason.clone());
            queue(services, rec).await;
            return Err(Refusal::NoGrant(denial));
        }
    };
    let Some(conn) = services.config.connection(connection) else {
        let reason = format!("no connection named {connection:?}");
        let mut rec = record(AuditEvent::GrantDenied, Decision::Deny);
        rec.reason = Some(reason.clone());
        queue(services, rec).await;
        return Err(Refusal::NoGrant(Denial { reason }));
    };
    if conn.protocol != protocol {
        let reason = format!(
            "connection {connection:?} speaks {0}; connect to the gateway's {0} listener",
            conn.protocol.as_str()
        );
        let mut rec = record(AuditEvent::GrantDenied, Decision::Deny);
        rec.set_principal(&principal);
        rec.reason = Some(reason.clone());
        queue(services, rec).await;
        return Err(Refusal::NoGrant(Denial { reason }));
    }
    let key = slots::SessionKey {
        connection: connection.to_owned(),
        grant_entry: grant.rule_index,
        subject: principal.subject.clone(),
        token: principal
            .token_id
            .clone()
            .unwrap_or_else(|| crate::audit::sha256_hex(token.as_bytes())),
    };
    let caps = slots::SessionCaps {
        connection: conn.max_sessions,
        grant: grant.max_sessions,
        identity: grant.max_sessions_per_identity,
    };
    let slot = match services.slots.session(key, caps) {
        Ok(slot) => slot,
        Err(cap) => {
            tracing::warn!(sub = %principal.subject, %connection, %cap, "session refused");
            let mut rec = record(AuditEvent::GrantDenied, Decision::Deny);
            rec.set_principal(&principal);
            rec.reason = Some(cap.to_string());
            queue(services, rec).await;
            return Err(Refusal::Cap(cap));
        }
    };
    if slot.same_token >= 4 && slot.same_token.is_power_of_two() {
        tracing::warn!(
            sub = %principal.subject, %connection, sessions = slot.same_token,
            "one token has this many sessions open at once: if several agents share it, \
             they share one identity in the audit trail; give each agent its own"
        );
    }
    let mut rec = record(AuditEvent::GrantIssued, Decision::Allow);
    rec.grant_id = Some(grant.id.clone());
    rec.set_principal(&principal);
    rec.upstream = Some(format!("{}/{}", conn.upstream, conn.database));
    rec.reason = Some(format!(
        "grant[{}] matched on {}",
        grant.rule_index, grant.matched_on
    ));
    rec.expires_at = Some(rfc3339(grant.expires_at));
    if let Err(e) = services.audit.record_durable(rec).await {
        tracing::error!(error = %e, "audit trail unavailable; refusing the connection");
        return Err(Refusal::AuditUnavailable);
    }
    Ok(Admission {
        principal,
        grant,
        slot,
    })
}

async fn queue(services: &Services, rec: AuditRecord) {
    if let Err(e) = services.audit.record(rec).await {
        tracing::error!(error = %e, "audit record lost");
    }
}
