//! The Postgres front end: client handshake, token login, grant, upstream, relay.
//!
//! ```text
//! client ──SSLRequest──▶ 'S' + TLS (or 'N'; GSSENCRequest → 'N'; CancelRequest → forwarded)
//!        ──Startup────▶ database = connection name
//!        ◀─AuthenticationCleartextPassword── ──password = JWT──▶ identity, grant, audit
//!                                                                  └─▶ upstream login
//!        ◀─AuthenticationOk, ParameterStatus*, BackendKeyData (ours), ReadyForQuery
//! relay:  client → upstream: Query / Parse classified; Bind, Execute, Sync, ... forwarded
//!         upstream → client: forwarded untouched, except the errors we provoked
//! ```
//!
//! **How denials keep the protocol exact.** A denied Query or Parse is never
//! forwarded. In its place the gateway sends the upstream a *probe*: a statement that
//! is a guaranteed syntax error and carries a per-session marker. The upstream answers
//! it exactly where the denied statement would have been answered — after the results
//! of everything before it in a pipeline, aborting an open transaction block, skipping
//! to the next Sync in the extended protocol — and the gateway replaces that one
//! ErrorResponse with its own (SQLSTATE 42501, naming the statement kind and the
//! reason). So clients see precisely what Postgres would show for a failing
//! statement, without the gateway tracking the extended-protocol state machine.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use sqlgate_postgres::backend::{self, PgError};
use sqlgate_postgres::frame::{split_frame, Frame, HEADER_LEN};
use sqlgate_postgres::frontend;
use sqlgate_postgres::sqlstate;
use sqlgate_postgres::startup::{decode_initial, InitialPacket, StartupMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, watch};

use super::clock::{self, Due, Sent, SessionClock};
use super::executions::{Ending, Execution, InFlight};
use super::gate::{Classified, Denied, Gate, TextDecision, VerdictCache, GRANT_REVOKED};
use super::portals::{check_name, Portals};
use super::tripwire::Tripwire;
use super::{cancel, new_session_id, upstream, Admission, BoxStream, EndReason, Refusal};
use crate::audit::{rfc3339, AuditEvent, AuditRecord, Decision};
use crate::catalog::{FunctionCatalog, CATALOG_TTL};
use crate::gateway::Services;
use crate::identity::Principal;
use crate::policy::readonly::{self, Verdict, ALLOWED_SETTINGS};
use crate::policy::{Grant, GrantChange, GrantWatch};
use crate::sql::ClassifyError;

/// The hint of a session ended by a limit of the grant's rule files.
const RULE_HINT: &str =
    "a limit the DBA set in the grant's rule files; ask them to raise it if your work needs more";

/// Largest client message accepted after login (a Bind with big parameters can be
/// large; statements are limited separately by `limits.max_statement_bytes`).
const MAX_CLIENT_FRAME: usize = 64 << 20;
/// Query and Parse messages over twice `limits.max_statement_bytes` and this much are
/// refused unread, ending the session; smaller ones over the limit are read and get
/// the usual (non-fatal) 54000.
const STATEMENT_FRAME_SLACK: usize = 64 << 10;
/// Largest password message (the token); Postgres itself allows 64 KB here.
const MAX_PASSWORD_FRAME: usize = 64 << 10;
/// Upstream messages the relay reads (ErrorResponse, ParameterStatus, ReadyForQuery)
/// are assembled up to this size; all others, and larger errors, stream through.
const MAX_INSPECTED_MESSAGE: usize = 64 << 10;
/// How long the end of a session waits for the server to close the upstream
/// connection before ending its backend from another connection.
const UPSTREAM_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long a session's last words (a FATAL error, TLS close) may take to write: the
/// client may have stopped reading.
const FINAL_WRITE_WAIT: Duration = Duration::from_secs(1);
/// The newest PostgreSQL major version whose grammar the classifier parses (pg_query 6
/// is libpg_query 17). An upstream of a newer major version could accept syntax the
/// classifier reads differently, so sessions to it are refused (fail closed).
const GRAMMAR_MAJOR: u32 = 17;
/// Probe statements start with this; a 128-bit random number follows, new per probe.
const PROBE_PREFIX: &str = "sqlgate_denied_";

/// Serves one client connection, from the first byte to the end of its session.
pub async fn handle_connection(tcp: TcpStream, peer: SocketAddr, services: Arc<Services>) {
    let _ = tcp.set_nodelay(true);
    let _active = crate::gateway::ActiveGuard::new(&services);
    // Held until the session is logged in (or the connection is gone).
    let unauthenticated = match services.slots.unauthenticated() {
        Ok(slot) => slot,
        Err(cap) => {
            refuse_unauthenticated(tcp, peer, &services, &cap).await;
            return;
        }
    };
    let shutdown = services.shutdown.subscribe();
    // One deadline from the first byte to a ready session (TLS, startup, token, upstream).
    let login_deadline = tokio::time::Instant::now() + services.config.limits.login_timeout;
    let negotiated = tokio::time::timeout_at(login_deadline, negotiate(tcp, &services)).await;
    let (stream, buf, startup, tls) = match negotiated {
        Ok(Ok(Some(opened))) => opened,
        Ok(Ok(None)) => return,
        Ok(Err(message)) => {
            tracing::debug!(%peer, %message, "connection refused before startup");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no startup packet within the login timeout");
            return;
        }
    };
    let mut session = Session {
        id: new_session_id(),
        peer,
        services,
        client: Some(stream),
        buf,
    };
    session
        .run(startup, tls, shutdown, (unauthenticated, login_deadline))
        .await;
}

/// Refuses a connection over `limits.max_unauthenticated` with 53300 before reading
/// anything from it. The refusal is logged and audited, at most once a second (with
/// the number refused since), so a flood of connections is not a flood of records.
async fn refuse_unauthenticated(
    mut tcp: TcpStream,
    peer: SocketAddr,
    services: &Services,
    cap: &super::slots::CapReached,
) {
    let mut out = BytesMut::new();
    PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, format!("sqlgate: {cap}"))
        .with_hint("retry shortly; connections that do not finish logging in are closed after limits.login_timeout")
        .encode(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&out)).await;
    if let Some(refused) = services.refusals.tick() {
        tracing::warn!(%peer, refused, %cap, "connections refused");
        let mut rec = AuditRecord::new(AuditEvent::GrantDenied, "-", "", &peer.to_string());
        rec.decision = Some(Decision::Deny);
        rec.reason = Some(format!(
            "{cap}; {refused} connection(s) refused in the last second"
        ));
        let _ = services.audit.record(rec).await;
    }
}

/// Reads encryption requests and the startup packet. Returns the (possibly TLS)
/// stream, bytes read past the startup packet, the startup message, and whether TLS
/// is on. `Ok(None)`: the connection was a cancel, or went away.
async fn negotiate(
    mut tcp: TcpStream,
    services: &Services,
) -> Result<Option<(BoxStream, BytesMut, StartupMessage, bool)>, String> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let Some(packet) = read_initial(&mut tcp, &mut buf).await? else {
            return Ok(None);
        };
        match packet {
            InitialPacket::SslRequest => {
                let Some(acceptor) = services.tls.clone() else {
                    tcp.write_all(b"N").await.map_err(|e| e.to_string())?;
                    continue;
                };
                if !buf.is_empty() {
                    // Bytes sent before the TLS handshake would be trusted as if they
                    // came over TLS (CVE-2021-23214 in Postgres itself).
                    return Err("data after SSLRequest before the TLS handshake".into());
                }
                tcp.write_all(b"S").await.map_err(|e| e.to_string())?;
                let tls = acceptor
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                let mut stream: BoxStream = Box::new(tls);
                return match read_initial(&mut stream, &mut buf).await? {
                    Some(InitialPacket::Startup(startup)) => Ok(Some((stream, buf, startup, true))),
                    Some(InitialPacket::Cancel { pid, secret }) => {
                        forward_cancel(services, pid, &secret).await;
                        Ok(None)
                    }
                    Some(_) => Err("encryption requested twice".into()),
                    None => Ok(None),
                };
            }
            InitialPacket::GssEncRequest => {
                tcp.write_all(b"N").await.map_err(|e| e.to_string())?;
            }
            InitialPacket::Cancel { pid, secret } => {
                forward_cancel(services, pid, &secret).await;
                return Ok(None);
            }
            InitialPacket::Startup(startup) => {
                return Ok(Some((Box::new(tcp), buf, startup, false)))
            }
        }
    }
}

async fn read_initial<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<InitialPacket>, String> {
    loop {
        if let Some(packet) = decode_initial(buf).map_err(|e| e.to_string())? {
            return Ok(Some(packet));
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Ok(None);
        }
    }
}

async fn forward_cancel(services: &Services, pid: i32, secret: &[u8]) {
    // Only a cancel with a valid key costs an upstream connection, so only those are
    // rate limited (bogus keys cannot use up the budget of real ones).
    match services.cancels.lookup(pid, secret) {
        Some(_) if !services.cancel_rate.allow() => {
            tracing::warn!(
                limit = services.config.limits.max_cancels_per_second,
                "cancel request dropped: more than limits.max_cancels_per_second"
            );
        }
        Some(target) => {
            if let Err(e) = cancel::send_upstream_cancel(&target).await {
                tracing::warn!(error = %e, "could not forward a cancel request upstream");
            }
        }
        None => tracing::info!(pid, "cancel request with an unknown key ignored"),
    }
}

/// One client session.
struct Session {
    id: String,
    peer: SocketAddr,
    services: Arc<Services>,
    /// The client stream until the relay splits it.
    client: Option<BoxStream>,
    buf: BytesMut,
}

impl Session {
    async fn run(
        &mut self,
        startup: StartupMessage,
        tls: bool,
        shutdown: broadcast::Receiver<()>,
        (unauthenticated, login_deadline): (
            super::slots::UnauthenticatedSlot,
            tokio::time::Instant,
        ),
    ) {
        let connection = startup
            .param("database")
            .or(startup.param("user"))
            .unwrap_or_default()
            .to_owned();
        let timeout = self.services.config.limits.login_timeout;
        let login =
            match tokio::time::timeout_at(login_deadline, self.login(&startup, tls, &connection))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(PgError::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!(
                        "sqlgate: login did not complete within {}s",
                        timeout.as_secs()
                    ),
                )),
            };
        drop(unauthenticated);
        match login {
            Ok(Some(ready)) => {
                let reason = self.relay(ready, shutdown).await;
                tracing::info!(session = %self.id, %reason, "session ended");
            }
            Ok(None) => {}
            Err(error) => {
                let _ = self.send(&error).await;
            }
        }
    }

    async fn send(&mut self, error: &PgError) -> std::io::Result<()> {
        match self.client.as_mut() {
            Some(client) => tokio::time::timeout(FINAL_WRITE_WAIT, write_error(client, error))
                .await
                .unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    fn record(&self, event: AuditEvent, connection: &str) -> AuditRecord {
        AuditRecord::new(event, &self.id, connection, &self.peer.to_string())
    }

    /// Startup checks, token, grant, upstream. `Ok(Some)`: ready to relay.
    /// `Ok(None)`: the client left. `Err`: send this FATAL error and close.
    async fn login(
        &mut self,
        startup: &StartupMessage,
        tls: bool,
        connection: &str,
    ) -> Result<Option<Ready>, PgError> {
        let services = self.services.clone();
        let config = &services.config;
        let plaintext_ok = config.listen.allow_plaintext && self.peer.ip().is_loopback();
        if !(tls || plaintext_ok) {
            return Err(PgError::fatal(
                "28000",
                "sqlgate requires TLS: the password is a bearer token",
            )
            .with_hint("connect with sslmode=require"));
        }
        if startup.param("user").is_none_or(str::is_empty) {
            return Err(PgError::fatal(
                "28000",
                "no user name in the startup packet",
            ));
        }
        if startup
            .param("replication")
            .is_some_and(|v| !matches!(v, "false" | "off" | "0" | "no"))
        {
            return Err(PgError::fatal(
                "0A000",
                "sqlgate does not allow replication connections",
            ));
        }
        if startup
            .param("options")
            .is_some_and(|v| !v.trim().is_empty())
        {
            return Err(PgError::fatal(
                "0A000",
                "sqlgate does not accept startup options (-c ...)",
            )
            .with_hint(
                "run SET after connecting; settings a read-only session may change are allowed",
            ));
        }
        if let Some((_, path)) = startup
            .params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("search_path"))
        {
            readonly::check_search_path(std::slice::from_ref(path)).map_err(|e| {
                PgError::fatal(
                    "42501",
                    format!("sqlgate: startup parameter search_path refused: {e}"),
                )
            })?;
        }
        let mut out = BytesMut::new();
        let protocol_options: Vec<&str> = startup
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect();
        if startup.minor > 0 || !protocol_options.is_empty() {
            backend::negotiate_protocol_version(&protocol_options, &mut out);
        }
        backend::auth_cleartext(&mut out);
        self.write(&out).await.map_err(|_| closed())?;

        // The password message carries the token.
        let Some(frame) = self.read_frame(MAX_PASSWORD_FRAME).await? else {
            return Ok(None);
        };
        if frame.tag != frontend::PASSWORD {
            return Err(PgError::fatal("08P01", "expected a password message"));
        }
        let token = frontend::password(frame.body())
            .map_err(|e| PgError::fatal("08P01", format!("invalid password message: {e}")))?;

        let admission = super::admit(
            &self.services,
            &self.record(AuditEvent::GrantIssued, connection),
            connection,
            token,
            crate::config::Protocol::Postgres,
        )
        .await
        .map_err(|refusal| match refusal {
            Refusal::Token(e) => PgError::fatal("28P01", format!("sqlgate: token rejected: {e}")),
            Refusal::NoGrant(denial) => {
                PgError::fatal("28000", format!("sqlgate: {}", denial.reason))
            }
            Refusal::AuditUnavailable => PgError::fatal(
                "58030",
                "sqlgate: the audit trail is unavailable, so no connection can be granted",
            ),
            Refusal::Cap(cap) => {
                PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, format!("sqlgate: {cap}")).with_hint(
                    "close sessions you no longer use, or ask the operator to raise the cap",
                )
            }
        })?;
        let Admission {
            principal,
            grant,
            slot,
        } = admission;
        if grant.rules.has_allow_lists()
            && startup
                .params
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("search_path"))
        {
            return Err(PgError::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "sqlgate: startup parameter search_path refused: the grant's table allow-list pins the search path (it decides what unqualified names mean)",
            )
            .with_hint("connect without search_path (or currentSchema); qualify table names instead"));
        }

        let conn = config
            .connection(connection)
            .ok_or_else(|| {
                PgError::fatal(
                    "3D000",
                    format!("sqlgate: no connection named {connection:?}"),
                )
            })?
            .clone();
        let client_params: Vec<(String, String)> = startup
            .params
            .iter()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k != "client_encoding" && ALLOWED_SETTINGS.contains(&k.as_str())
            })
            .cloned()
            .collect();
        for (name, value) in &client_params {
            config
                .limits
                .setting_caps
                .check_value(name, value)
                .map_err(|e| {
                    PgError::fatal(
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        format!("sqlgate: startup parameter refused: {e}"),
                    )
                })?;
        }
        let mut up = match upstream::open(&conn, &client_params, config.limits.connect_timeout)
            .await
        {
            Ok(up) => up,
            Err(e) => {
                tracing::warn!(session = %self.id, connection = %conn.name, error = %e, "upstream login failed");
                // The grant was recorded; so is the reason it was never used.
                let mut rec = self.record(AuditEvent::SessionEnded, connection);
                rec.grant_id = Some(grant.id.clone());
                rec.sub = Some(principal.subject.clone());
                rec.reason = Some(format!("upstream login failed: {e}"));
                rec.ended_by = Some("error");
                let _ = self.services.audit.record(rec).await;
                return Err(PgError::fatal(
                    "08006",
                    format!(
                        "sqlgate: cannot open connection {:?}: {}",
                        conn.name,
                        e.for_client()
                    ),
                ));
            }
        };

        let cache = self.services.catalogs.get(&conn.name);
        let catalog = match cache.and_then(|c| c.fresh()) {
            Some(c) => Some(c),
            None => match upstream::fetch_catalog(&mut up).await {
                Ok(c) => {
                    if let Some(cache) = cache {
                        cache.store(c.clone());
                    }
                    Some(c)
                }
                Err(e) => {
                    tracing::warn!(connection = %conn.name, error = %e, "cannot read the function catalog; function calls will be denied");
                    None
                }
            },
        };

        match upstream::risky_privileges(&mut up).await {
            Ok(risky) if !risky.is_empty() => tracing::warn!(
                session = %self.id, connection = %conn.name, privileges = %risky.join(", "),
                "the held role is more powerful than a read-only gateway needs (see README: least privilege)"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(connection = %conn.name, error = %e, "cannot read the held role's privileges")
            }
        }
        let reported = |name: &str| {
            up.parameter_status.iter().find_map(|f| {
                backend::decode_parameter_status(f.body())
                    .filter(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_owned())
            })
        };
        let major: u32 = reported("server_version")
            .and_then(|v| {
                v.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|m| m.parse().ok())
            })
            .unwrap_or(0);
        if major > GRAMMAR_MAJOR {
            let reason = format!(
                "the upstream is PostgreSQL {major}, newer than the grammar sqlgate parses ({GRAMMAR_MAJOR})"
            );
            tracing::error!(session = %self.id, connection = %conn.name, %reason, "refusing the session");
            let mut rec = self.record(AuditEvent::SessionEnded, connection);
            rec.grant_id = Some(grant.id.clone());
            rec.sub = Some(principal.subject.clone());
            rec.reason = Some(reason.clone());
            rec.ended_by = Some("error");
            let _ = self.services.audit.record(rec).await;
            return Err(PgError::fatal("0A000", format!("sqlgate: {reason}"))
                .with_hint("ask the operator to upgrade sqlgate"));
        }
        // What the server reports must stay as sqlgate pinned it, or as it was at login.
        let mut tripwire = Tripwire::default();
        tripwire.pin("standard_conforming_strings", "on");
        tripwire.pin("client_encoding", "UTF8");
        tripwire.pin("default_transaction_read_only", "on");
        for name in ["is_superuser", "session_authorization", "in_hot_standby"] {
            if let Some(value) = reported(name) {
                tripwire.pin(name, &value);
            }
        }

        let (up_pid, up_secret) = (up.backend_pid, up.backend_secret);
        let (pid, secret) = self
            .services
            .cancels
            .register(&conn.upstream, up_pid, up_secret);
        let mut out = BytesMut::new();
        backend::auth_ok(&mut out);
        for frame in up.parameter_status.iter().chain(&up.notices) {
            out.extend_from_slice(&frame.raw);
        }
        backend::backend_key_data(pid, secret, &mut out);
        out.extend_from_slice(&up.ready.raw);
        if let Err(e) = self.write(&out).await {
            self.services.cancels.unregister(pid);
            tracing::debug!(error = %e, "client left during login");
            return Ok(None);
        }
        tracing::info!(
            session = %self.id, sub = %principal.subject, connection = %conn.name, grant = %grant.id,
            upstream_auth = up.auth_method, "session started"
        );
        Ok(Some(Ready {
            upstream: up,
            upstream_cancel: cancel::CancelTarget {
                secret: 0,
                upstream_addr: conn.upstream.clone(),
                upstream_pid: up_pid,
                upstream_secret: up_secret,
            },
            slot,
            principal,
            grant,
            catalog,
            tripwire,
            cancel_pid: pid,
        }))
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.client.as_mut() {
            Some(client) => client.write_all(bytes).await,
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn read_frame(&mut self, max: usize) -> Result<Option<Frame>, PgError> {
        loop {
            match split_frame(&mut self.buf, max) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(PgError::fatal("08P01", format!("invalid message: {e}"))),
            }
            let Some(client) = self.client.as_mut() else {
                return Ok(None);
            };
            match client.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Runs the relay until one side ends, then makes sure nothing of the session
    /// outlives it upstream; returns why it ended.
    async fn relay(&mut self, ready: Ready, mut shutdown: broadcast::Receiver<()>) -> EndReason {
        let Ready {
            upstream,
            upstream_cancel,
            slot,
            principal,
            grant,
            catalog,
            tripwire,
            cancel_pid,
        } = ready;
        let connection = grant.connection.clone();
        let Some(client) = self.client.take() else {
            return EndReason::ClientClosed;
        };
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut up_r, mut up_w) = tokio::io::split(upstream.stream);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (exec_tx, exec_rx) = mpsc::unbounded_channel();
        let errored: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
        let mut answers = Answers {
            execs: exec_rx,
            inflight: InFlight::default(),
            errored: errored.clone(),
        };
        let (ready_tx, ready_rx) = watch::channel(0u64);
        let (sent_tx, sent_rx) = watch::channel(Sent::default());
        let sent_at_end = sent_rx.clone();
        let mut clock = SessionClock::new(grant.time_limits);
        let ctx = RelayContext {
            gate: Gate::new(
                self.id.clone(),
                self.peer.to_string(),
                self.services.clone(),
                principal,
                grant.clone(),
                super::gate::Dialect::Postgres,
            ),
            tripwire,
            upstream_cancel,
        };
        let deadline = Instant::now()
            + grant
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
        let client_buf = std::mem::take(&mut self.buf);

        let to_upstream = client_to_upstream(
            &mut client_r,
            client_buf,
            &mut up_w,
            ClientSide {
                ctl: ctl_tx,
                ready: ready_rx,
                sent: sent_tx,
                catalog,
                execs: exec_tx,
                in_flight: Arc::new(tokio::sync::Semaphore::new(
                    super::executions::MAX_IN_FLIGHT,
                )),
                errored,
            },
            &ctx,
        );
        let to_client = upstream_to_client(
            &mut up_r,
            upstream.buf,
            &mut client_w,
            UpstreamSide {
                ctl: ctl_rx,
                ready: ready_tx,
                sent: sent_rx,
                deadline,
            },
            &mut clock,
            &mut shutdown,
            &mut answers,
            &ctx,
        );
        let reason = tokio::select! {
            r = to_upstream => r,
            r = to_client => r,
        };
        self.services.cancels.unregister(cancel_pid);
        clock.sent(Instant::now(), *sent_at_end.borrow());
        let busy = clock.busy();
        // The upstream first: nothing the client does (or fails to read) delays it.
        close_upstream(&mut up_r, &mut up_w, busy, &ctx, slot).await;
        let _ = tokio::time::timeout(FINAL_WRITE_WAIT, client_w.shutdown()).await;
        answers.collect();
        for rec in answers.inflight.interrupted(&ctx.gate) {
            ctx.gate.audit(rec).await;
        }
        let mut rec = self.record(AuditEvent::SessionEnded, &connection);
        rec.grant_id = Some(grant.id.clone());
        rec.sub = Some(ctx.gate.principal.subject.clone());
        rec.reason = Some(reason.to_string());
        rec.ended_by = Some(reason.category());
        let _ = self.services.audit.record(rec).await;
        reason
    }
}

/// Ends the upstream side of a session so that nothing of it keeps running: a
/// statement still running is cancelled, the connection is told to terminate, and the
/// gateway waits (at most [`UPSTREAM_CLOSE_WAIT`]) for the server to close it. If it
/// does not, the backend is ended from a separate connection (the cancel may have
/// arrived before the statement began). The session's slot is held until then, so
/// the connection's cap counts a backend that still lives.
async fn close_upstream(
    up_r: &mut ReadHalf<BoxStream>,
    up_w: &mut WriteHalf<BoxStream>,
    busy: bool,
    ctx: &RelayContext,
    slot: super::slots::SessionSlot,
) {
    if busy {
        let _ = tokio::time::timeout(
            UPSTREAM_CLOSE_WAIT,
            cancel::send_upstream_cancel(&ctx.upstream_cancel),
        )
        .await;
    }
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::terminate(&mut out);
    let _ = tokio::time::timeout(UPSTREAM_CLOSE_WAIT, async {
        up_w.write_all(&out).await?;
        up_w.shutdown().await
    })
    .await;
    if !busy {
        return;
    }
    // Read (and drop) whatever the server still sends until it closes the connection.
    let closed = tokio::time::timeout(UPSTREAM_CLOSE_WAIT, async {
        let mut sink = vec![0u8; 16 * 1024];
        loop {
            match up_r.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    if closed {
        return;
    }
    let services = ctx.gate.services.clone();
    let name = ctx.gate.grant.connection.clone();
    let pid = ctx.upstream_cancel.upstream_pid;
    let session = ctx.gate.session_id.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let Some(conn) = services.config.connection(&name) else {
            return;
        };
        let timeout = services.config.limits.connect_timeout;
        match upstream::terminate_backend(conn, pid, timeout).await {
            Ok(_) => {
                tracing::info!(%session, pid, "upstream backend terminated after the session ended")
            }
            Err(e) => {
                tracing::error!(%session, pid, error = %e, "cannot terminate the upstream backend of an ended session")
            }
        }
    });
}

fn closed() -> PgError {
    PgError::fatal("08006", "client closed the connection")
}

/// What the login hands to the relay.
struct Ready {
    upstream: upstream::UpstreamSession,
    /// Where the gateway's own cancels go (statement timeout, session end).
    upstream_cancel: cancel::CancelTarget,
    /// Counted against the session caps while the session lives.
    slot: super::slots::SessionSlot,
    principal: Principal,
    grant: Grant,
    catalog: Option<Arc<FunctionCatalog>>,
    tripwire: Tripwire,
    cancel_pid: i32,
}

/// What both relay directions share (read-only).
struct RelayContext {
    /// The statement gate, with who and which grant.
    gate: Gate,
    /// Settings the server's reports must not change.
    tripwire: Tripwire,
    /// The upstream backend's cancel key.
    upstream_cancel: cancel::CancelTarget,
}

/// What the client → upstream direction owns.
struct ClientSide {
    ctl: mpsc::UnboundedSender<Control>,
    /// How many ReadyForQuery messages the other direction has relayed.
    ready: watch::Receiver<u64>,
    /// What has been sent upstream, for the session clock.
    sent: watch::Sender<Sent>,
    /// The catalog verdicts are computed from; replaced as it ages.
    catalog: Option<Arc<FunctionCatalog>>,
    /// Forwarded statements, to the answer side.
    execs: mpsc::UnboundedSender<Execution>,
    /// Places for statements in flight ([`super::executions::MAX_IN_FLIGHT`]).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Batches (ReadyForQuery numbers) the server reported an error in, from the
    /// answer side.
    errored: Arc<std::sync::Mutex<Vec<u64>>>,
}

/// What the upstream → client direction owns.
struct UpstreamSide {
    ctl: mpsc::UnboundedReceiver<Control>,
    ready: watch::Sender<u64>,
    /// What the client side has sent upstream.
    sent: watch::Receiver<Sent>,
    /// When the grant expires.
    deadline: Instant,
}

/// The answer side's view of the statements the client side forwarded.
struct Answers {
    execs: mpsc::UnboundedReceiver<Execution>,
    inflight: InFlight,
    /// Batches the server reported an error in, for the client side's tracker.
    errored: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Answers {
    /// Takes in what the client side has forwarded. Each statement is handed over
    /// before it is written upstream, so its answer never arrives first.
    fn collect(&mut self) {
        while let Ok(execution) = self.execs.try_recv() {
            self.inflight.push(execution);
        }
    }

    /// The oldest statement's answer ended at this point of the answer stream (after
    /// `ready` ReadyForQuery messages): its result record, if the statement is in the
    /// current batch.
    fn finish(&mut self, ctx: &RelayContext, ready: u64, ending: Ending) -> Vec<AuditRecord> {
        let mut records = self.inflight.skipped(&ctx.gate, ready);
        if self
            .inflight
            .front()
            .is_some_and(|f| f.ready_at == ready + 1)
        {
            records.extend(self.inflight.finish(&ctx.gate, ending));
        }
        records
    }

    /// Waits until every forwarded statement's record is durable (strict audit), or
    /// the session must end.
    async fn release(
        &mut self,
        timers: &mut Timers<'_>,
        ctx: &RelayContext,
    ) -> Result<(), (PgError, EndReason)> {
        self.collect();
        tokio::select! {
            written = self.inflight.released() => written.map_err(|e| {
                tracing::error!(session = %ctx.gate.session_id, error = %e, "a statement's audit record was not written; its answer is withheld");
                (
                    PgError::fatal(
                        sqlstate::SYSTEM_IO_ERROR,
                        "sqlgate: session ended: the audit trail cannot be written, so the statement's answer is withheld",
                    )
                    .with_hint("no statement's answer is released unrecorded; ask the operator to check the audit directory"),
                    EndReason::Io(format!("audit trail: {e}")),
                )
            }),
            end = timers.next_end(ctx) => Err(end),
        }
    }
}

/// Messages from the client-side task to the client-writing task.
enum Control {
    /// The probe statement `token` was sent upstream in place of a denied statement;
    /// replace its error with this one.
    Denied { token: String, error: PgError },
    /// End the session with this FATAL error.
    Fatal(PgError, EndReason),
}

/// What the client has sent upstream that the server has not answered yet, as far as
/// it matters to the tripwire.
///
/// Code a statement runs (a user function a DBA labelled STABLE) may change a pinned
/// setting, say `standard_conforming_strings` or `client_encoding`, and the server
/// reports the change only before its next ReadyForQuery. A statement the server
/// parses after such a change could be read differently from how sqlgate read it, but
/// only if its text contains a backslash or a non-ASCII byte ([`lexes_alike`]): plain
/// ASCII reads the same under every setting. So such text is forwarded only when the
/// server has answered everything before it (and the tripwire has seen its reports);
/// otherwise it waits, or is denied where waiting could not end.
#[derive(Default)]
struct Pipeline {
    /// Messages sent upstream that each produce one ReadyForQuery (Query, Sync).
    sync_points: u64,
    /// Extended-protocol messages were sent since the last Sync: the server may be
    /// skipping to the next Sync after an error, and no ReadyForQuery will tell us
    /// when they are done.
    extended_since_sync: bool,
}

impl Pipeline {
    /// A Query (never sent while extended-protocol messages are outstanding: the
    /// server would drop it while skipping to Sync, and the count would be wrong).
    fn query(&mut self) {
        self.sync_points += 1;
    }

    fn sync(&mut self) {
        self.sync_points += 1;
        self.extended_since_sync = false;
    }
}

/// Whether `text` is read the same whatever `standard_conforming_strings` and the
/// client encoding are: plain ASCII without backslashes.
fn lexes_alike(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii() && b != b'\\')
}

/// A fresh, unguessable probe statement (see [`probe_query`]).
fn probe_token() -> String {
    format!(
        "{PROBE_PREFIX}{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Client → upstream: classify statements, forward the rest, substitute probes.
async fn client_to_upstream(
    client: &mut ReadHalf<BoxStream>,
    mut buf: BytesMut,
    upstream: &mut WriteHalf<BoxStream>,
    mut side: ClientSide,
    ctx: &RelayContext,
) -> EndReason {
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut cache = VerdictCache::new(ctx.gate.services.config.limits.verdict_cache_bytes);
    let mut pipeline = Pipeline::default();
    let mut portals = Portals::default();
    // When the session's catalog was read (a session without one asks at once).
    let mut catalog_at = match (
        &side.catalog,
        ctx.gate.services.catalogs.get(&ctx.gate.grant.connection),
    ) {
        (Some(_), Some(cache)) => cache.current().map_or_else(Instant::now, |(at, _)| at),
        _ => Instant::now() - CATALOG_TTL,
    };
    loop {
        let mut terminate = false;
        let mut fatal = None;
        // The fatal error is a rule file's limit, not a protocol violation.
        let mut fatal_limit: Option<String> = None;
        loop {
            // A statement message far over the statement limit is refused from its
            // header, before its body is buffered.
            if buf.len() >= HEADER_LEN && matches!(buf[0], frontend::QUERY | frontend::PARSE) {
                let len = usize::try_from((&buf[1..HEADER_LEN]).get_i32()).unwrap_or(0);
                let max =
                    ctx.gate.services.config.limits.max_statement_bytes * 2 + STATEMENT_FRAME_SLACK;
                if len > max {
                    fatal = Some(PgError::fatal(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        format!("sqlgate: a {len}-byte statement message is far over limits.max_statement_bytes"),
                    ));
                    break;
                }
            }
            let frame = match split_frame(&mut buf, MAX_CLIENT_FRAME) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    fatal = Some(invalid_message(e));
                    break;
                }
            };
            let text = match frame.tag {
                frontend::QUERY => frontend::query_text(frame.body()).map(|t| (t, None)),
                frontend::PARSE => {
                    frontend::parse_message(frame.body()).map(|p| (p.query, Some(p.name)))
                }
                frontend::FUNCTION_CALL if pipeline.extended_since_sync => {
                    // Answered by a probe Query, which the server drops while it skips
                    // to Sync: as for a simple Query, the batch must end first.
                    fatal = Some(
                        PgError::fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            "sqlgate: a FunctionCall inside an unfinished extended-protocol batch",
                        )
                        .with_hint("send Sync first; FunctionCall messages are not allowed anyway"),
                    );
                    break;
                }
                frontend::FUNCTION_CALL => {
                    let error =
                        PgError::error("42501", "sqlgate: FunctionCall messages are not allowed")
                            .with_hint(
                            "call functions with SELECT; the statement is checked like any other",
                        );
                    let token = probe_token();
                    let _ = side.ctl.send(Control::Denied {
                        token: token.clone(),
                        error,
                    });
                    probe_query(&token, &mut out);
                    pipeline.query();
                    ctx.gate
                        .audit(ctx.gate.statement_record(
                            "<FunctionCall message>",
                            "FunctionCall",
                            &Verdict::Deny {
                                reason: "FunctionCall protocol messages are not allowed".into(),
                            },
                        ))
                        .await;
                    continue;
                }
                frontend::TERMINATE => {
                    out.extend_from_slice(&frame.raw);
                    terminate = true;
                    break;
                }
                frontend::SYNC => {
                    out.extend_from_slice(&frame.raw);
                    pipeline.sync();
                    forget_errored(&mut portals, &side);
                    continue;
                }
                frontend::BIND => {
                    // Bind, Execute and Close refer only to statements that passed a
                    // Parse (a denied Parse never reached the upstream), so they are
                    // forwarded; the tracker ties each Execute to its statement text
                    // and parameters for the trail (see `portals`).
                    let bind = match frontend::bind_message(frame.body()) {
                        Ok(bind) => bind,
                        Err(e) => {
                            fatal = Some(invalid_message(e));
                            break;
                        }
                    };
                    if let Err(why) =
                        check_name(bind.portal).and_then(|()| check_name(bind.statement))
                    {
                        fatal = Some(PgError::fatal(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            format!("sqlgate: {why}"),
                        ));
                        break;
                    }
                    if let Some(batch) = portals.statement_batch(bind.statement) {
                        if let Err(end) = settle(upstream, &mut out, &side, &pipeline, batch).await
                        {
                            return end;
                        }
                    }
                    forget_errored(&mut portals, &side);
                    let budget = ctx.gate.services.config.audit_max_statement_bytes / 4;
                    if let Err(why) = portals.bound(&bind, pipeline.sync_points + 1, budget) {
                        fatal = Some(PgError::fatal(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            format!("sqlgate: session ended: {why}"),
                        ));
                        break;
                    }
                    if !bind.portal.is_empty() {
                        let bound = portals.execute(bind.portal);
                        ctx.gate
                            .audit_names(
                                AuditEvent::PortalBound,
                                bind.statement,
                                Some(bind.portal),
                                &bound.statement.text,
                                &bound.statement.kind,
                                Some((bound.params.to_vec(), bound.param_count)),
                            )
                            .await;
                    }
                    out.extend_from_slice(&frame.raw);
                    pipeline.extended_since_sync = true;
                    continue;
                }
                frontend::EXECUTE => {
                    let name = match frontend::execute_portal(frame.body()) {
                        Ok(name) => name,
                        Err(e) => {
                            fatal = Some(invalid_message(e));
                            break;
                        }
                    };
                    if let Err(why) = check_name(name) {
                        fatal = Some(PgError::fatal(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            format!("sqlgate: {why}"),
                        ));
                        break;
                    }
                    if let Some(rules) = ctx.gate.rules_in_force() {
                        if let Err(why) = ctx.gate.statement_budget(&rules, 1) {
                            // An Execute cannot be answered with a probe: the session ends.
                            fatal_limit = Some(why.clone());
                            fatal = Some(
                                PgError::fatal(
                                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                                    format!("sqlgate: session ended: {why}"),
                                )
                                .with_hint(RULE_HINT),
                            );
                            break;
                        }
                    }
                    if !ctx.gate.services.audit.healthy() {
                        // An Execute cannot be answered with a probe; nothing runs
                        // unrecorded, so the session ends.
                        fatal = Some(
                            PgError::fatal(
                                sqlstate::SYSTEM_IO_ERROR,
                                "sqlgate: session ended: the audit trail cannot be written, so nothing may run",
                            )
                            .with_hint("ask the operator to check the audit directory"),
                        );
                        break;
                    }
                    if let Some(batch) = portals.portal_batch(name) {
                        if let Err(end) = settle(upstream, &mut out, &side, &pipeline, batch).await
                        {
                            return end;
                        }
                    }
                    forget_errored(&mut portals, &side);
                    let run = portals.execute(name);
                    let mut flags = run.statement.flags.clone();
                    if run.statement.generation != ctx.gate.services.grants.generation() {
                        // Allowed under rules a reload has replaced: decide it again.
                        let decision = ctx
                            .gate
                            .decide(&run.statement.text, &mut cache, side.catalog.as_deref())
                            .await;
                        if let TextDecision::Allow(allowed) = &decision {
                            // The flags of the rules now in force.
                            flags = allowed.flags.as_slice().into();
                        }
                        if let TextDecision::Deny { denied, .. } = decision {
                            let why = format!(
                                "the rules now in force deny a statement prepared before a configuration reload ({})",
                                denied.summary()
                            );
                            fatal_limit = Some(why.clone());
                            fatal = Some(
                                PgError::fatal(
                                    sqlstate::INSUFFICIENT_PRIVILEGE,
                                    format!("sqlgate: session ended: {why}"),
                                )
                                .with_hint(
                                    "reconnect; statements are checked against the rules in force",
                                ),
                            );
                            break;
                        }
                    }
                    let permit = match in_flight_places(
                        upstream,
                        &mut out,
                        &side,
                        &pipeline,
                        1,
                        portals.has_failed(pipeline.sync_points + 1),
                    )
                    .await
                    {
                        Ok(permit) => permit,
                        Err(end) => return end,
                    };
                    let execution = ctx
                        .gate
                        .forwarding(
                            &run.statement.text,
                            &run.statement.kind,
                            Some((run.params.to_vec(), run.param_count)),
                            Some((name, &run.statement_name)),
                            &flags,
                            pipeline.sync_points + 1,
                        )
                        .await
                        .holding(permit);
                    let _ = side.execs.send(execution);
                    portals.ran(&run.statement.kind);
                    out.extend_from_slice(&frame.raw);
                    pipeline.extended_since_sync = true;
                    continue;
                }
                frontend::CLOSE => {
                    match frontend::close_target(frame.body()) {
                        Ok((kind, name)) => {
                            if let Err(why) = check_name(name) {
                                fatal = Some(PgError::fatal(
                                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                                    format!("sqlgate: {why}"),
                                ));
                                break;
                            }
                            portals.closed(kind, name);
                        }
                        Err(e) => {
                            fatal = Some(invalid_message(e));
                            break;
                        }
                    }
                    out.extend_from_slice(&frame.raw);
                    pipeline.extended_since_sync = true;
                    continue;
                }
                frontend::DESCRIBE | frontend::FLUSH => {
                    out.extend_from_slice(&frame.raw);
                    pipeline.extended_since_sync = true;
                    continue;
                }
                frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {
                    // COPY FROM STDIN is never allowed, and the server ignores these
                    // outside it: not forwarded.
                    continue;
                }
                other => {
                    fatal = Some(PgError::fatal(
                        "08P01",
                        format!("sqlgate: message type '{}' is not supported", other as char),
                    ));
                    break;
                }
            };
            let (text, parse_name) = match text {
                Ok(t) => t,
                Err(e) => {
                    fatal = Some(invalid_message(e));
                    break;
                }
            };
            if let Some(Err(why)) = parse_name.map(check_name) {
                fatal = Some(PgError::fatal(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    format!("sqlgate: {why}"),
                ));
                break;
            }
            if parse_name.is_none() && pipeline.extended_since_sync {
                // The server drops a Query while it skips to Sync after an error, and
                // nothing tells when: answers could no longer be matched to statements.
                fatal = Some(
                    PgError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "sqlgate: a simple Query inside an unfinished extended-protocol batch",
                    )
                    .with_hint("send Sync before a simple Query"),
                );
                break;
            }

            // Text that a changed setting could make the server read differently is
            // parsed upstream only once everything before it has been answered.
            let mut unsettled = None;
            if !lexes_alike(text) && *side.ready.borrow() < pipeline.sync_points {
                if pipeline.extended_since_sync {
                    unsettled = Some(
                        "earlier messages of this pipeline are still running and no Sync ends them",
                    );
                } else {
                    if let Err(e) = send_upstream(upstream, &mut out, &side, &pipeline).await {
                        return e;
                    }
                    let need = pipeline.sync_points;
                    if side.ready.wait_for(|n| *n >= need).await.is_err() {
                        // The other direction ended the session.
                        std::future::pending::<()>().await;
                    }
                }
            }
            if let Some(newer) = ctx.gate.newer_catalog(catalog_at, false).await {
                side.catalog = Some(newer);
                catalog_at = Instant::now();
                cache.clear();
            }

            let mut decision = if ctx.gate.services.audit.healthy() {
                ctx.gate
                    .decide(text, &mut cache, side.catalog.as_deref())
                    .await
            } else {
                TextDecision::Deny {
                    denied: Denied::AuditUnavailable,
                    parts: vec![Classified {
                        text: text.to_owned(),
                        kind: "unaudited".into(),
                        verdict: Verdict::Deny {
                            reason: "audit trail unavailable".into(),
                        },
                    }],
                    catalog_miss: false,
                }
            };
            if let TextDecision::Deny {
                catalog_miss: true, ..
            } = decision
            {
                // Perhaps created after the catalog was read: read it again, decide again.
                if let Some(newer) = ctx.gate.newer_catalog(catalog_at, true).await {
                    side.catalog = Some(newer);
                    catalog_at = Instant::now();
                    cache.clear();
                    decision = ctx
                        .gate
                        .decide(text, &mut cache, side.catalog.as_deref())
                        .await;
                }
            }
            forget_errored(&mut portals, &side);
            if let (None, TextDecision::Allow(allowed)) = (parse_name, &decision) {
                if allowed.parts.len() > super::executions::MAX_IN_FLIGHT {
                    let reason = format!(
                        "a Query of more than {} statements",
                        super::executions::MAX_IN_FLIGHT
                    );
                    decision = TextDecision::Deny {
                        denied: Denied::Front {
                            reason: reason.clone(),
                            hint: "send fewer statements per Query".into(),
                        },
                        parts: vec![Classified {
                            text: text.to_owned(),
                            kind: "multi-statement".into(),
                            verdict: Verdict::Deny { reason },
                        }],
                        catalog_miss: false,
                    };
                }
            }
            if let (Some(name), TextDecision::Allow(_)) = (parse_name, &decision) {
                if !portals.fits(name, text) {
                    let reason = format!(
                        "this session's prepared statements hold more than {} MiB of text",
                        super::portals::MAX_PREPARED_BYTES >> 20
                    );
                    decision = TextDecision::Deny {
                        denied: Denied::Front {
                            reason: reason.clone(),
                            hint:
                                "close (deallocate) prepared statements the client no longer uses"
                                    .into(),
                        },
                        parts: vec![Classified {
                            text: text.to_owned(),
                            kind: "PREPARE".into(),
                            verdict: Verdict::Deny { reason },
                        }],
                        catalog_miss: false,
                    };
                }
            }
            if let (Some(reason), TextDecision::Allow(_)) = (unsettled, &decision) {
                let reason = format!("a statement with backslashes or non-ASCII characters must wait until the server is idle, and {reason}");
                decision = TextDecision::Deny {
                    denied: Denied::Front {
                        reason: reason.clone(),
                        hint: "send Sync (or wait for the results) before this statement".into(),
                    },
                    parts: vec![Classified {
                        text: text.to_owned(),
                        kind: "pipelined".into(),
                        verdict: Verdict::Deny { reason },
                    }],
                    catalog_miss: false,
                };
            }
            match decision {
                TextDecision::Allow(allowed) => {
                    // Places for every statement of a Query before any of it goes
                    // upstream: each is handed to the answer side before its answer
                    // can arrive.
                    let mut permits = match parse_name {
                        None => match in_flight_places(
                            upstream,
                            &mut out,
                            &side,
                            &pipeline,
                            allowed.parts.len(),
                            false,
                        )
                        .await
                        {
                            Ok(permits) => Some(permits),
                            Err(end) => return end,
                        },
                        Some(_) => None,
                    };
                    out.extend_from_slice(&frame.raw);
                    match parse_name {
                        None => {
                            pipeline.query();
                            for (text, kind) in allowed.parts.iter() {
                                let permit = match permits.as_mut().and_then(|p| p.split(1)) {
                                    Some(permit) => permit,
                                    None => break,
                                };
                                portals.ran(kind);
                                let execution = ctx
                                    .gate
                                    .forwarding(
                                        text,
                                        kind,
                                        None,
                                        None,
                                        &allowed.flags,
                                        pipeline.sync_points,
                                    )
                                    .await
                                    .holding(permit);
                                let _ = side.execs.send(execution);
                            }
                        }
                        Some(name) => {
                            // Recorded at each Execute, with its parameters.
                            pipeline.extended_since_sync = true;
                            let kinds: Vec<&str> =
                                allowed.parts.iter().map(|(_, k)| k.as_str()).collect();
                            let kind = kinds.join(", ");
                            portals.generation = ctx.gate.rules_generation();
                            portals.parsed(
                                name,
                                text,
                                &kind,
                                pipeline.sync_points + 1,
                                &allowed.flags,
                            );
                            // Every text the server may run is in the trail, whatever an
                            // Execute's record can tell of it.
                            ctx.gate
                                .audit_names(
                                    AuditEvent::StatementPrepared,
                                    name,
                                    None,
                                    text,
                                    &kind,
                                    None,
                                )
                                .await;
                        }
                    }
                }
                TextDecision::Deny { denied, parts, .. } => {
                    tracing::info!(session = %ctx.gate.session_id, denied = %denied.summary(), "statement denied");
                    let error = denial_error(&denied, &ctx.gate.grant);
                    let token = probe_token();
                    // Register the replacement before the probe can be answered.
                    let _ = side.ctl.send(Control::Denied {
                        token: token.clone(),
                        error,
                    });
                    match parse_name {
                        None => {
                            probe_query(&token, &mut out);
                            pipeline.query();
                        }
                        Some(name) => {
                            probe_parse(&token, name, &mut out);
                            pipeline.extended_since_sync = true;
                            portals.parse_denied(name);
                        }
                    }
                    for part in &parts {
                        ctx.gate
                            .audit(
                                ctx.gate
                                    .statement_record(&part.text, &part.kind, &part.verdict),
                            )
                            .await;
                    }
                }
            }
        }
        if let Err(e) = send_upstream(upstream, &mut out, &side, &pipeline).await {
            return e;
        }
        if terminate {
            return EndReason::ClientQuit;
        }
        if let Some(error) = fatal {
            let reason = match fatal_limit {
                Some(limit) => EndReason::Limit(limit),
                None => EndReason::ProtocolViolation(error.message.clone()),
            };
            let _ = side.ctl.send(Control::Fatal(error, reason));
            // The other direction writes the error and ends the session.
            std::future::pending::<()>().await;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match client.read_buf(&mut buf).await {
            Ok(0) => return EndReason::ClientClosed,
            Ok(_) => {}
            Err(e) => return EndReason::Io(format!("reading client: {e}")),
        }
    }
}

/// Places for `n` more statements in flight; when the session has too many
/// ([`super::executions::MAX_IN_FLIGHT`]), what is buffered goes upstream and the client
/// waits until answers free some.
async fn in_flight_places(
    upstream: &mut WriteHalf<BoxStream>,
    out: &mut BytesMut,
    side: &ClientSide,
    pipeline: &Pipeline,
    n: usize,
    batch_failed: bool,
) -> Result<tokio::sync::OwnedSemaphorePermit, EndReason> {
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    if let Ok(permit) = side.in_flight.clone().try_acquire_many_owned(n) {
        return Ok(permit);
    }
    send_upstream(upstream, out, side, pipeline).await?;
    loop {
        tokio::select! {
            permit = side.in_flight.clone().acquire_many_owned(n) => match permit {
                Ok(permit) => return Ok(permit),
                // Never closed; if it were, the other direction is ending the session.
                Err(_) => std::future::pending().await,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                // After an error the server skips the rest of the batch and answers
                // nothing until its Sync, which the client has not been read up to:
                // waiting could not end.
                let current = pipeline.sync_points + 1;
                let failed =
                    batch_failed || side.errored.lock().is_ok_and(|e| e.contains(&current));
                if pipeline.extended_since_sync && failed {
                    let why = format!(
                        "more than {} statements are waiting in one batch after an error",
                        super::executions::MAX_IN_FLIGHT
                    );
                    let _ = side.ctl.send(Control::Fatal(
                        PgError::fatal(sqlstate::PROGRAM_LIMIT_EXCEEDED, format!("sqlgate: session ended: {why}"))
                            .with_hint("send Sync sooner"),
                        EndReason::ProtocolViolation(why),
                    ));
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Waits until the server has answered `batch` (the ReadyForQuery that ends it), when
/// it is an earlier batch than the one being sent: what an Execute runs depends on
/// whether that batch's Parse and Bind succeeded.
async fn settle(
    upstream: &mut WriteHalf<BoxStream>,
    out: &mut BytesMut,
    side: &ClientSide,
    pipeline: &Pipeline,
    batch: u64,
) -> Result<(), EndReason> {
    if batch > pipeline.sync_points || *side.ready.borrow() >= batch {
        return Ok(());
    }
    send_upstream(upstream, out, side, pipeline).await?;
    if side.ready.clone().wait_for(|n| *n >= batch).await.is_err() {
        // The other direction ended the session.
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// Forgets what batches the server reported errors in made (it skipped the rest of
/// each such batch).
fn forget_errored(portals: &mut Portals, side: &ClientSide) {
    let batches: Vec<u64> = match side.errored.lock() {
        Ok(mut errored) => errored.drain(..).collect(),
        Err(_) => return,
    };
    for batch in batches {
        portals.errored(batch);
    }
}

/// Writes `out` upstream, after telling the session clock what it holds.
async fn send_upstream(
    upstream: &mut WriteHalf<BoxStream>,
    out: &mut BytesMut,
    side: &ClientSide,
    pipeline: &Pipeline,
) -> Result<(), EndReason> {
    if out.is_empty() {
        return Ok(());
    }
    side.sent.send_replace(Sent {
        ready_points: pipeline.sync_points,
        open: pipeline.extended_since_sync,
    });
    upstream
        .write_all(out)
        .await
        .map_err(|e| EndReason::Io(format!("writing upstream: {e}")))?;
    out.clear();
    Ok(())
}

/// How a denial reads in Postgres: the SQLSTATE a client can act on, and a message,
/// hint and detail a person can.
fn denial_error(denied: &Denied, grant: &Grant) -> PgError {
    match denied {
        Denied::Unclassified(e) => {
            let code = match e {
                ClassifyError::Syntax(_) => sqlstate::SYNTAX_ERROR,
                ClassifyError::TooLarge { .. } | ClassifyError::TooComplex { .. } => {
                    sqlstate::PROGRAM_LIMIT_EXCEEDED
                }
                ClassifyError::Busy { .. } => sqlstate::INSUFFICIENT_RESOURCES,
                ClassifyError::Internal(_) => sqlstate::INTERNAL_ERROR,
            };
            PgError::error(code, format!("sqlgate: statement denied: {e}"))
                .with_hint("sqlgate only forwards statements it can parse")
        }
        Denied::Statement {
            kind,
            reason,
            position,
            setting_cap,
            rule,
        } => {
            let why = if *setting_cap {
                "the gateway caps this setting ([limits.setting_caps])".to_owned()
            } else if *rule {
                format!(
                    "a rule the DBA set on the grant for connection {:?} denies it",
                    grant.connection
                )
            } else {
                format!(
                    "the grant for connection {:?} is {}",
                    grant.connection,
                    grant.access.as_str()
                )
            };
            let error = PgError::error(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("sqlgate: {kind} denied: {reason}"),
            )
            .with_hint(format!("{why}; nothing of this message was executed"));
            match position {
                Some(p) => error.with_detail(format!(
                    "statement {} of {} in this message was denied: {}",
                    p.index, p.of, p.excerpt
                )),
                None => error,
            }
        }
        Denied::AuditUnavailable => PgError::error(
            sqlstate::SYSTEM_IO_ERROR,
            "sqlgate: statement denied: the audit trail cannot be written",
        )
        .with_hint("no statement runs unrecorded; ask the operator to check the audit directory"),
        Denied::Front { reason, hint } => PgError::error(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("sqlgate: statement denied: {reason}"),
        )
        .with_hint(hint.clone()),
    }
}

/// The FATAL error for a client message that does not decode.
fn invalid_message(e: impl std::fmt::Display) -> PgError {
    PgError::fatal("08P01", format!("invalid message from client: {e}"))
}

/// A simple Query that the server rejects with a syntax error naming `token`. The
/// token is new for every probe: by the time the server reports its text (in
/// `pg_stat_activity`, to any session), nothing of this session runs before the probe's
/// error, so no statement can forge it.
fn probe_query(token: &str, out: &mut BytesMut) {
    let _ = postgres_protocol::message::frontend::query(token, out);
}

/// A Parse of the probe statement under the client's statement name.
fn probe_parse(token: &str, name: &str, out: &mut BytesMut) {
    let _ = postgres_protocol::message::frontend::parse(name, token, std::iter::empty(), out);
}

/// Upstream → client: forward everything, replacing probe errors with our denials
/// and watching the server's reports (the tripwire). Messages stream through as they
/// arrive; only those the relay reads are assembled, up to [`MAX_INSPECTED_MESSAGE`].
/// Also runs the session clock (statement and idle-in-transaction timeouts) and ends
/// the session on grant expiry, gateway shutdown, or a fatal error from the
/// client-side task.
#[allow(clippy::too_many_arguments)]
async fn upstream_to_client(
    upstream: &mut ReadHalf<BoxStream>,
    mut buf: BytesMut,
    client: &mut WriteHalf<BoxStream>,
    mut side: UpstreamSide,
    clock: &mut SessionClock,
    shutdown: &mut broadcast::Receiver<()>,
    answers: &mut Answers,
    ctx: &RelayContext,
) -> EndReason {
    let mut pending: VecDeque<(String, PgError)> = VecDeque::new();
    let mut timers = Timers {
        clock,
        deadline: tokio::time::Instant::from_std(side.deadline),
        grant_watch: ctx
            .gate
            .services
            .grants
            .watch(&ctx.gate.principal, &ctx.gate.grant),
        shutdown,
        sent: side.sent.clone(),
        sent_open: true,
    };
    let mut ready_count: u64 = 0;
    // Bytes of a streamed message that have not arrived yet.
    let mut streaming: usize = 0;
    loop {
        // Forward every complete message in `buf`, in place where possible.
        answers.collect();
        let max_rows = ctx.gate.max_rows();
        let mut pos = 0;
        let ready_before = ready_count;
        loop {
            if streaming > 0 {
                let n = streaming.min(buf.len() - pos);
                pos += n;
                streaming -= n;
                if streaming > 0 {
                    break;
                }
                continue;
            }
            if buf.len() - pos < HEADER_LEN {
                break;
            }
            let tag = buf[pos];
            let len = (&buf[pos + 1..pos + HEADER_LEN]).get_i32();
            if len < 4 {
                return EndReason::ProtocolViolation("invalid message length from upstream".into());
            }
            let total = 1 + len as usize;
            let inspected = matches!(
                tag,
                backend::ERROR_RESPONSE
                    | backend::PARAMETER_STATUS
                    | backend::READY_FOR_QUERY
                    | backend::COMMAND_COMPLETE
                    | backend::EMPTY_QUERY_RESPONSE
                    | backend::PORTAL_SUSPENDED
            );
            if !inspected || (tag == backend::ERROR_RESPONSE && total > MAX_INSPECTED_MESSAGE) {
                // Nothing to read in it (a denial's probe error is short): pass it on
                // as it streams.
                // CopyData of a COPY TO STDOUT: one per row.
                let row = tag == backend::DATA_ROW || tag == backend::COPY_DATA;
                let rows = answers.inflight.answer(total, row);
                if let Some(limit) = max_rows.as_ref().filter(|m| rows > m.value) {
                    // This row and the rest are not forwarded; the session ends (its
                    // statement is recorded as interrupted).
                    if let Err(end) = answers.release(&mut timers, ctx).await {
                        return final_error(client, &[], end).await;
                    }
                    let why = format!(
                        "a statement returned more rows than its grant allows ({})",
                        limit.describe("max_rows")
                    );
                    let error = PgError::fatal(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        format!("sqlgate: session ended: {why}"),
                    )
                    .with_hint(format!("add a LIMIT or aggregate; {RULE_HINT}"));
                    return final_error(client, &buf[..pos], (error, EndReason::Limit(why))).await;
                }
                if tag == backend::ERROR_RESPONSE {
                    // An error too large to hold is still its statement's ending; its
                    // code and the start of its message are in what has arrived.
                    if let Ok(mut errored) = answers.errored.lock() {
                        if errored.last() != Some(&(ready_count + 1)) {
                            errored.push(ready_count + 1);
                        }
                    }
                    let arrived =
                        &buf[(pos + HEADER_LEN).min(buf.len())..(pos + total).min(buf.len())];
                    let fields = backend::ErrorFields::parse_prefix(arrived);
                    let ending = Ending {
                        rows: None,
                        error: Some((fields.code, fields.message)),
                    };
                    for rec in answers.finish(ctx, ready_count, ending) {
                        ctx.gate.audit(rec).await;
                    }
                }
                streaming = total;
                continue;
            }
            if total > MAX_INSPECTED_MESSAGE {
                return EndReason::ProtocolViolation(format!(
                    "the upstream sent a '{}' message of {total} bytes",
                    tag as char
                ));
            }
            let end = pos + total;
            if end > buf.len() {
                buf.reserve(end - buf.len());
                break;
            }
            answers.inflight.answer(total, false);
            let body = &buf[pos + HEADER_LEN..end];
            let mut results = Vec::new();
            match tag {
                backend::ERROR_RESPONSE => {
                    if let Ok(mut errored) = answers.errored.lock() {
                        if errored.last() != Some(&(ready_count + 1)) {
                            errored.push(ready_count + 1);
                        }
                    }
                    let replacement =
                        replacement_error(body, &mut side, &mut pending, timers.clock, ctx);
                    let fields = backend::ErrorFields::parse(body).unwrap_or_default();
                    if replacement.is_none() || fields.code != sqlstate::SYNTAX_ERROR {
                        // The server's own error (not a denial's probe): the statement's.
                        let ending = Ending {
                            rows: None,
                            error: Some((fields.code, fields.message)),
                        };
                        results = answers.finish(ctx, ready_count, ending);
                    }
                    for rec in results.drain(..) {
                        ctx.gate.audit(rec).await;
                    }
                    if let Some(replacement) = replacement {
                        if let Err(end) = answers.release(&mut timers, ctx).await {
                            return final_error(client, &[], end).await;
                        }
                        let replacement = match replacement {
                            Replacement::Error(error) => error,
                            Replacement::Fatal(error, reason) => {
                                return final_error(client, &buf[..pos], (error, reason)).await;
                            }
                        };
                        let mut out = BytesMut::new();
                        replacement.encode(&mut out);
                        if let Err(end) =
                            write_or_end(client, &[&buf[..pos], &out], &mut timers, ctx).await
                        {
                            return end;
                        }
                        buf.advance(end);
                        pos = 0;
                        continue;
                    }
                }
                backend::PARAMETER_STATUS => {
                    let tripped = match backend::decode_parameter_status(body) {
                        Some((name, value)) => {
                            ctx.tripwire.check(name, value).err().map(|t| t.to_string())
                        }
                        None => Some("the upstream sent a malformed ParameterStatus".into()),
                    };
                    if let Some(why) = tripped {
                        if let Err(end) = answers.release(&mut timers, ctx).await {
                            return final_error(client, &[], end).await;
                        }
                        tracing::error!(session = %ctx.gate.session_id, %why, "tripwire: ending the session");
                        let error = PgError::fatal(sqlstate::INSUFFICIENT_PRIVILEGE, format!("sqlgate: session ended: {why}"))
                            .with_hint("a statement changed a setting sqlgate pins; nothing further was forwarded, and the event is in the audit trail");
                        return final_error(client, &buf[..pos], (error, EndReason::Tamper(why)))
                            .await;
                    }
                }
                backend::READY_FOR_QUERY => {
                    ready_count += 1;
                    let in_transaction = body.first().is_some_and(|s| *s != b'I');
                    timers.clock.ready(Instant::now(), in_transaction);
                    results = answers.inflight.skipped(&ctx.gate, ready_count);
                }
                backend::COMMAND_COMPLETE => {
                    let ending = Ending {
                        rows: backend::command_complete_rows(body),
                        error: None,
                    };
                    results = answers.finish(ctx, ready_count, ending);
                }
                backend::EMPTY_QUERY_RESPONSE | backend::PORTAL_SUSPENDED => {
                    results = answers.finish(ctx, ready_count, Ending::default());
                }
                _ => {}
            }
            for rec in results {
                ctx.gate.audit(rec).await;
            }
            pos = end;
        }
        if pos > 0 {
            if let Err(end) = answers.release(&mut timers, ctx).await {
                return final_error(client, &[], end).await;
            }
            if let Err(end) = write_or_end(client, &[&buf[..pos]], &mut timers, ctx).await {
                return end;
            }
            buf.advance(pos);
        }
        if ready_count != ready_before {
            let _ = side.ready.send(ready_count);
        }
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(64 * 1024);
        }
        tokio::select! {
            read = upstream.read_buf(&mut buf) => match read {
                Ok(0) => return EndReason::UpstreamClosed,
                Ok(_) => {}
                Err(e) => return EndReason::Io(format!("reading upstream: {e}")),
            },
            control = side.ctl.recv() => match control {
                Some(Control::Denied { token, error }) => {
                    if let Err(end) = hold_denial(&mut pending, token, error) {
                        return final_error(client, &[], *end).await;
                    }
                }
                Some(Control::Fatal(error, reason)) => {
                    return final_error(client, &[], (error, reason)).await;
                }
                None => std::future::pending::<()>().await,
            },
            end = timers.next_end(ctx) => return final_error(client, &[], end).await,
        }
    }
}

/// Denials whose probe the server has not answered yet, at most this many. The server
/// never answers a probe sent while it skips to Sync after an error, so without a
/// bound a client could grow the queue forever.
const MAX_PENDING_DENIALS: usize = 4096;

/// Queues a denial for its probe's answer, or says the session must end.
fn hold_denial(
    pending: &mut VecDeque<(String, PgError)>,
    token: String,
    error: PgError,
) -> Result<(), Box<(PgError, EndReason)>> {
    if pending.len() >= MAX_PENDING_DENIALS {
        let why =
            format!("more than {MAX_PENDING_DENIALS} denied statements await the server's answer");
        return Err(Box::new((
            PgError::fatal(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!("sqlgate: session ended: {why}"),
            )
            .with_hint("send Sync after denied statements"),
            EndReason::ProtocolViolation(why),
        )));
    }
    pending.push_back((token, error));
    Ok(())
}

/// Everything that can end a session while the relay waits on something else (the
/// upstream, or a client that is slow to read): the session clock, grant expiry,
/// gateway shutdown. It also keeps the clock told of what the client side sends.
struct Timers<'a> {
    clock: &'a mut SessionClock,
    deadline: tokio::time::Instant,
    /// Resolves when a reload removes the session's grant.
    grant_watch: GrantWatch,
    shutdown: &'a mut broadcast::Receiver<()>,
    sent: watch::Receiver<Sent>,
    sent_open: bool,
}

impl Timers<'_> {
    /// Waits until the session must end; returns the FATAL error and the reason.
    /// Statement timeouts on the way are handled (the statement is cancelled
    /// upstream) without ending the session. Cancel-safe: state changes happen
    /// between awaits.
    async fn next_end(&mut self, ctx: &RelayContext) -> (PgError, EndReason) {
        loop {
            let due_at = self
                .clock
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                changed = self.sent.changed(), if self.sent_open => match changed {
                    Ok(()) => {
                        let sent = *self.sent.borrow_and_update();
                        self.clock.sent(Instant::now(), sent);
                    }
                    Err(_) => self.sent_open = false,
                },
                _ = tokio::time::sleep_until(due_at.unwrap_or(self.deadline)), if due_at.is_some() => {
                    let limits = self.clock.limits();
                    match self.clock.due(Instant::now()) {
                        Some(Due::Cancel) => {
                            tracing::info!(session = %ctx.gate.session_id, limit = %clock::human(limits.statement_timeout), "statement timeout: cancelling upstream");
                            let target = ctx.upstream_cancel.clone();
                            tokio::spawn(async move {
                                if let Err(e) = cancel::send_upstream_cancel(&target).await {
                                    tracing::warn!(error = %e, "could not send the statement-timeout cancel upstream");
                                }
                            });
                        }
                        Some(Due::EndOverrun) => {
                            let limit = clock::human(limits.statement_timeout);
                            let error = PgError::fatal(
                                sqlstate::QUERY_CANCELED,
                                format!("sqlgate: session ended: a statement ran past the grant's statement_timeout ({limit}) and did not stop when cancelled"),
                            );
                            return (error, EndReason::StatementTimeout(limit));
                        }
                        Some(Due::EndIdleInTransaction) => {
                            let limit = clock::human(limits.idle_in_transaction_timeout);
                            let error = PgError::fatal(
                                sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                                format!("sqlgate: session ended: idle in a transaction for longer than the grant's idle_in_transaction_timeout ({limit})"),
                            )
                            .with_hint("commit or roll back transactions promptly; the open transaction was rolled back");
                            return (error, EndReason::IdleInTransaction(limit));
                        }
                        None => {}
                    }
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    let error = PgError::fatal(
                        sqlstate::INVALID_AUTHORIZATION,
                        format!(
                            "sqlgate: grant {} for connection {:?} expired at {}",
                            ctx.gate.grant.id, ctx.gate.grant.connection, rfc3339(ctx.gate.grant.expires_at)
                        ),
                    )
                    .with_hint("reconnect with a fresh token to request a new grant");
                    return (error, EndReason::GrantExpired);
                }
                change = self.grant_watch.next_change(&ctx.gate.services.grants) => match change {
                    GrantChange::Revoked => {
                        let error = PgError::fatal(
                            sqlstate::INVALID_AUTHORIZATION,
                            format!("sqlgate: session ended: {GRANT_REVOKED}"),
                        )
                        .with_hint("reconnect to see which connections you may use now");
                        return (error, EndReason::GrantRevoked);
                    }
                    GrantChange::ExpiresSooner(at) => {
                        // A reload shortened the grant: the session ends then.
                        let left = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                        self.deadline = self.deadline.min(tokio::time::Instant::now() + left);
                    }
                },
                _ = self.shutdown.recv() => {
                    let error = PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "sqlgate: the gateway is shutting down");
                    return (error, EndReason::Shutdown);
                }
            }
        }
    }
}

/// Writes `parts` to the client while the session's timers keep running: a client
/// that stops reading cannot hold the session (and its upstream transaction) past
/// its limits. `Err`: the session must end, and why.
async fn write_or_end(
    client: &mut WriteHalf<BoxStream>,
    parts: &[&[u8]],
    timers: &mut Timers<'_>,
    ctx: &RelayContext,
) -> Result<(), EndReason> {
    let end = {
        let write = async {
            for part in parts {
                if !part.is_empty() {
                    client.write_all(part).await?;
                }
            }
            Ok::<(), std::io::Error>(())
        };
        tokio::pin!(write);
        tokio::select! {
            written = &mut write => {
                return written.map_err(|e| EndReason::Io(format!("writing client: {e}")));
            }
            end = timers.next_end(ctx) => end,
        }
    };
    // The client may not be reading: the FATAL is best effort.
    Err(final_error(client, &[], end).await)
}

/// Writes `before` and a FATAL `error` to the client, giving up after
/// [`FINAL_WRITE_WAIT`] (a client that does not read must not hold the session's
/// end); returns the reason.
async fn final_error(
    client: &mut WriteHalf<BoxStream>,
    before: &[u8],
    (error, reason): (PgError, EndReason),
) -> EndReason {
    let _ = tokio::time::timeout(FINAL_WRITE_WAIT, async {
        if !before.is_empty() {
            client.write_all(before).await?;
        }
        write_error(client, &error).await
    })
    .await;
    reason
}

/// What replaces a server's ErrorResponse: the denial whose probe it answers, or,
/// after the gateway cancelled a statement for its timeout, an error naming the
/// grant's limit. `Fatal`: a fatal error from the client side arrived first; end the
/// session with it.
enum Replacement {
    Error(PgError),
    Fatal(PgError, EndReason),
}

/// What replaces the server's ErrorResponse `body` ([`Replacement`]), if anything.
fn replacement_error(
    body: &[u8],
    side: &mut UpstreamSide,
    pending: &mut VecDeque<(String, PgError)>,
    clock: &SessionClock,
    ctx: &RelayContext,
) -> Option<Replacement> {
    let probe = body
        .windows(PROBE_PREFIX.len())
        .any(|w| w == PROBE_PREFIX.as_bytes());
    if !probe && !clock.cancelled_for_timeout() {
        return None;
    }
    let fields = backend::ErrorFields::parse(body).unwrap_or_default();
    if !probe {
        if fields.code != sqlstate::QUERY_CANCELED {
            return None;
        }
        let limit = clock::human(clock.limits().statement_timeout);
        tracing::info!(session = %ctx.gate.session_id, %limit, "statement cancelled for its timeout");
        return Some(Replacement::Error(PgError::error(
            sqlstate::QUERY_CANCELED,
            format!("sqlgate: statement cancelled: it ran longer than the grant's statement_timeout ({limit})"),
        )
        .with_hint(format!(
            "the grant for connection {:?} limits each statement to {limit}; narrow the query or ask for a grant with a longer statement_timeout",
            ctx.gate.grant.connection
        ))));
    }
    // The denial was queued before its probe was sent; collect it.
    while let Ok(control) = side.ctl.try_recv() {
        match control {
            Control::Denied { token, error } => pending.push_back((token, error)),
            Control::Fatal(error, reason) => return Some(Replacement::Fatal(error, reason)),
        }
    }
    // Only the server's syntax error for a pending probe is replaced; anything else
    // that merely mentions a probe is forwarded as it is.
    if fields.code != sqlstate::SYNTAX_ERROR {
        return None;
    }
    let index = pending
        .iter()
        .position(|(token, _)| fields.message.contains(token.as_str()))?;
    // Earlier probes were skipped by the server (extended-protocol error mode); their
    // denials are dropped with them.
    pending
        .drain(..=index)
        .next_back()
        .map(|(_, error)| Replacement::Error(error))
}

async fn write_error<W: AsyncWrite + Unpin>(w: &mut W, error: &PgError) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    error.encode(&mut out);
    w.write_all(&out).await?;
    w.flush().await
}
