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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use sqlgate_postgres::backend::{self, PgError};
use sqlgate_postgres::frame::{split_frame, Frame, HEADER_LEN};
use sqlgate_postgres::frontend;
use sqlgate_postgres::startup::{decode_initial, InitialPacket, StartupMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};

use super::{cancel, new_session_id, upstream, Admission, BoxStream, EndReason, Refusal};
use crate::audit::{rfc3339, AuditEvent, AuditRecord, Decision};
use crate::catalog::FunctionCatalog;
use crate::gateway::Services;
use crate::identity::Principal;
use crate::policy::readonly::{self, Verdict, ALLOWED_SETTINGS};
use crate::policy::Grant;
use crate::sql::{self, ClassifyError};

/// Largest client message accepted after login (a Bind with big parameters can be
/// large; statements are limited separately by `limits.max_statement_bytes`).
const MAX_CLIENT_FRAME: usize = 256 << 20;
/// Largest password message (the token); Postgres itself allows 64 KB here.
const MAX_PASSWORD_FRAME: usize = 64 << 10;
/// Verdicts remembered per session.
const VERDICT_CACHE_ENTRIES: usize = 1024;
/// Statements up to this size are also looked up by their literal-free shape.
/// `normalize` runs on the caller's stack and recurses per tree level; 1 KiB bounds
/// the depth to a few hundred levels.
const SHAPE_CACHE_MAX_TEXT: usize = 1024;

/// Serves one client connection, from the first byte to the end of its session.
pub async fn handle_connection(tcp: TcpStream, peer: SocketAddr, services: Arc<Services>) {
    let _ = tcp.set_nodelay(true);
    let _active = crate::gateway::ActiveGuard::new(&services);
    let shutdown = services.shutdown.subscribe();
    let login_timeout = services.config.limits.login_timeout;
    let negotiated = tokio::time::timeout(login_timeout, negotiate(tcp, &services)).await;
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
    session.run(startup, tls, shutdown).await;
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
    match services.cancels.lookup(pid, secret) {
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
    async fn run(&mut self, startup: StartupMessage, tls: bool, shutdown: broadcast::Receiver<()>) {
        let connection = startup
            .param("database")
            .or(startup.param("user"))
            .unwrap_or_default()
            .to_owned();
        let timeout = self.services.config.limits.login_timeout;
        let login =
            match tokio::time::timeout(timeout, self.login(&startup, tls, &connection)).await {
                Ok(result) => result,
                Err(_) => Err(PgError::fatal(
                    "08006",
                    format!(
                        "sqlgate: login did not complete within {}s",
                        timeout.as_secs()
                    ),
                )),
            };
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
            Some(client) => write_error(client, error).await,
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
        })?;
        let Admission { principal, grant } = admission;

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

        let (pid, secret) =
            self.services
                .cancels
                .register(&conn.upstream, up.backend_pid, up.backend_secret);
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
            principal,
            grant,
            catalog,
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

    /// Runs the relay until one side ends; returns why.
    async fn relay(&mut self, ready: Ready, mut shutdown: broadcast::Receiver<()>) -> EndReason {
        let Ready {
            upstream,
            principal,
            grant,
            catalog,
            cancel_pid,
        } = ready;
        let connection = grant.connection.clone();
        let Some(client) = self.client.take() else {
            return EndReason::ClientClosed;
        };
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut up_r, mut up_w) = tokio::io::split(upstream.stream);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let nonce: u64 = rand::random();
        let ctx = RelayContext {
            session_id: self.id.clone(),
            client_addr: self.peer.to_string(),
            services: self.services.clone(),
            principal,
            grant: grant.clone(),
            catalog,
            marker: format!("sqlgate_denied_{nonce:016x}_"),
        };
        let deadline = Instant::now()
            + grant
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
        let client_buf = std::mem::take(&mut self.buf);

        let to_upstream = client_to_upstream(&mut client_r, client_buf, &mut up_w, ctl_tx, &ctx);
        let to_client = upstream_to_client(
            &mut up_r,
            upstream.buf,
            &mut client_w,
            ctl_rx,
            deadline,
            &mut shutdown,
            &ctx,
        );
        let reason = tokio::select! {
            r = to_upstream => r,
            r = to_client => r,
        };
        let _ = client_w.shutdown().await;
        self.services.cancels.unregister(cancel_pid);
        let mut rec = self.record(AuditEvent::SessionEnded, &connection);
        rec.grant_id = Some(grant.id.clone());
        rec.sub = Some(ctx.principal.subject.clone());
        rec.reason = Some(reason.to_string());
        let _ = self.services.audit.record(rec).await;
        reason
    }
}

fn closed() -> PgError {
    PgError::fatal("08006", "client closed the connection")
}

/// What the login hands to the relay.
struct Ready {
    upstream: upstream::UpstreamSession,
    principal: Principal,
    grant: Grant,
    catalog: Option<Arc<FunctionCatalog>>,
    cancel_pid: i32,
}

/// What both relay directions share (read-only).
struct RelayContext {
    session_id: String,
    client_addr: String,
    services: Arc<Services>,
    principal: Principal,
    grant: Grant,
    catalog: Option<Arc<FunctionCatalog>>,
    /// Prefix of the probe statements of this session; a number follows.
    marker: String,
}

/// Messages from the client-side task to the client-writing task.
enum Control {
    /// Probe number `seq` was sent upstream in place of a denied statement; replace
    /// its error with this one.
    Denied { seq: u64, error: PgError },
    /// End the session with this FATAL error.
    Fatal(PgError, EndReason),
}

/// One statement part's classification, for audit.
struct Classified {
    text: String,
    kind: String,
    verdict: Verdict,
}

/// The outcome for one Query/Parse text.
enum TextDecision {
    Allow(Arc<Vec<(String, String)>>),
    Deny {
        error: PgError,
        parts: Vec<Classified>,
    },
}

/// Allowed statements of one session, so repeated statements skip the parser.
///
/// `exact` is keyed by the statement text (prepared statements, repeated queries).
/// `shapes` is keyed by the text with its constants replaced by `$n`
/// (`pg_query::normalize`) and holds only single SELECT statements, whose verdict
/// cannot depend on a constant (unlike `SET client_encoding = ...` or `BEGIN READ
/// WRITE`). Keys are whole texts, never hashes, so no crafted collision can alias a
/// denied statement to an allowed one. The catalog is fixed for a session, so the
/// cache never outlives what its verdicts were computed from.
#[derive(Default)]
struct VerdictCache {
    exact: HashMap<String, Arc<Vec<(String, String)>>>,
    shapes: HashMap<String, ()>,
}

impl VerdictCache {
    fn remember(&mut self, text: &str, shape: Option<String>, parts: &Arc<Vec<(String, String)>>) {
        if self.exact.len() >= VERDICT_CACHE_ENTRIES {
            self.exact.clear();
        }
        self.exact.insert(text.to_owned(), parts.clone());
        if let (Some(shape), [(_, kind)]) = (shape, parts.as_slice()) {
            if kind == "SELECT" {
                if self.shapes.len() >= VERDICT_CACHE_ENTRIES {
                    self.shapes.clear();
                }
                self.shapes.insert(shape, ());
            }
        }
    }
}

impl RelayContext {
    fn decide(&self, text: &str, cache: &mut VerdictCache) -> TextDecision {
        if let Some(parts) = cache.exact.get(text) {
            return TextDecision::Allow(parts.clone());
        }
        let shape = (text.len() <= SHAPE_CACHE_MAX_TEXT)
            .then(|| pg_query::normalize(text).ok())
            .flatten();
        if let Some(shape) = &shape {
            if cache.shapes.contains_key(shape) {
                return TextDecision::Allow(Arc::new(vec![(
                    text.trim().to_owned(),
                    "SELECT".to_owned(),
                )]));
            }
        }
        let max = self.services.config.limits.max_statement_bytes;
        let facts = match sql::postgres::classify(text, max) {
            Ok(facts) => facts,
            Err(e) => {
                let code = match e {
                    ClassifyError::Syntax(_) => "42601",
                    ClassifyError::TooLarge { .. } | ClassifyError::TooComplex { .. } => "54000",
                    ClassifyError::Internal(_) => "XX000",
                };
                return TextDecision::Deny {
                    error: PgError::error(code, format!("sqlgate: statement denied: {e}"))
                        .with_hint("sqlgate only forwards statements it can parse"),
                    parts: vec![Classified {
                        text: text.to_owned(),
                        kind: "unparsed".into(),
                        verdict: Verdict::Deny {
                            reason: e.to_string(),
                        },
                    }],
                };
            }
        };
        let mut parts: Vec<Classified> = facts
            .iter()
            .map(|f| Classified {
                text: f.text.clone(),
                kind: f.kind.label(),
                verdict: readonly::decide(f, self.catalog.as_deref()),
            })
            .collect();
        let denied = parts.iter().position(|p| p.verdict != Verdict::Allow);
        match denied {
            None => {
                let allowed: Arc<Vec<(String, String)>> =
                    Arc::new(parts.into_iter().map(|p| (p.text, p.kind)).collect());
                cache.remember(text, shape, &allowed);
                TextDecision::Allow(allowed)
            }
            Some(index) => {
                let (kind, reason) = match &parts[index].verdict {
                    Verdict::Deny { reason } => (parts[index].kind.clone(), reason.clone()),
                    Verdict::Allow => (String::new(), String::new()),
                };
                let mut error =
                    PgError::error("42501", format!("sqlgate: {kind} denied: {reason}")).with_hint(
                        format!(
                    "the grant for connection {:?} is {}; nothing of this message was executed",
                    self.grant.connection,
                    self.grant.access.as_str()
                ),
                    );
                if parts.len() > 1 {
                    error = error.with_detail(format!(
                        "statement {} of {} in this message was denied: {}",
                        index + 1,
                        parts.len(),
                        truncate(&parts[index].text, 200)
                    ));
                    for (i, part) in parts.iter_mut().enumerate() {
                        if i != index && part.verdict == Verdict::Allow {
                            part.verdict = Verdict::Deny {
                                reason: format!(
                                    "not forwarded: statement {} of the same message was denied",
                                    index + 1
                                ),
                            };
                        }
                    }
                }
                TextDecision::Deny { error, parts }
            }
        }
    }

    fn statement_record(&self, text: &str, kind: &str, verdict: &Verdict) -> AuditRecord {
        let mut rec = AuditRecord::new(
            AuditEvent::Statement,
            &self.session_id,
            &self.grant.connection,
            &self.client_addr,
        );
        rec.grant_id = Some(self.grant.id.clone());
        rec.sub = Some(self.principal.subject.clone());
        rec.statement = Some(text.to_owned());
        rec.kind = Some(kind.to_owned());
        match verdict {
            Verdict::Allow => rec.decision = Some(Decision::Allow),
            Verdict::Deny { reason } => {
                rec.decision = Some(Decision::Deny);
                rec.reason = Some(reason.clone());
            }
        }
        rec
    }

    async fn audit(&self, rec: AuditRecord) {
        if let Err(e) = self.services.audit.record(rec).await {
            tracing::error!(error = %e, "audit record lost");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Client → upstream: classify statements, forward the rest, substitute probes.
async fn client_to_upstream(
    client: &mut ReadHalf<BoxStream>,
    mut buf: BytesMut,
    upstream: &mut WriteHalf<BoxStream>,
    ctl: mpsc::UnboundedSender<Control>,
    ctx: &RelayContext,
) -> EndReason {
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut cache = VerdictCache::default();
    let mut seq: u64 = 0;
    loop {
        let mut terminate = false;
        let mut fatal = None;
        loop {
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
                frontend::FUNCTION_CALL => {
                    seq += 1;
                    let error =
                        PgError::error("42501", "sqlgate: FunctionCall messages are not allowed")
                            .with_hint(
                            "call functions with SELECT; the statement is checked like any other",
                        );
                    let _ = ctl.send(Control::Denied { seq, error });
                    probe_query(&ctx.marker, seq, &mut out);
                    ctx.audit(ctx.statement_record(
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
                frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::CLOSE
                | frontend::SYNC
                | frontend::FLUSH
                | frontend::COPY_DATA
                | frontend::COPY_DONE
                | frontend::COPY_FAIL => {
                    // These refer only to statements that passed a Parse (a denied
                    // Parse never reached the upstream), so they are safe to forward.
                    out.extend_from_slice(&frame.raw);
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
            let decision = if ctx.services.audit.healthy() {
                ctx.decide(text, &mut cache)
            } else {
                TextDecision::Deny {
                    error: PgError::error(
                        "58030",
                        "sqlgate: statement denied: the audit trail cannot be written",
                    )
                    .with_hint("no statement runs unrecorded; ask the operator to check the audit directory"),
                    parts: vec![Classified {
                        text: text.to_owned(),
                        kind: "unaudited".into(),
                        verdict: Verdict::Deny {
                            reason: "audit trail unavailable".into(),
                        },
                    }],
                }
            };
            match decision {
                TextDecision::Allow(parts) => {
                    out.extend_from_slice(&frame.raw);
                    for (text, kind) in parts.iter() {
                        ctx.audit(ctx.statement_record(text, kind, &Verdict::Allow))
                            .await;
                    }
                }
                TextDecision::Deny { error, parts } => {
                    seq += 1;
                    tracing::info!(session = %ctx.session_id, message = %error.message, "statement denied");
                    // Register the replacement before the probe can be answered.
                    let _ = ctl.send(Control::Denied { seq, error });
                    match parse_name {
                        None => probe_query(&ctx.marker, seq, &mut out),
                        Some(name) => probe_parse(&ctx.marker, seq, name, &mut out),
                    }
                    for part in &parts {
                        ctx.audit(ctx.statement_record(&part.text, &part.kind, &part.verdict))
                            .await;
                    }
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = upstream.write_all(&out).await {
                return EndReason::Io(format!("writing upstream: {e}"));
            }
            out.clear();
        }
        if terminate {
            return EndReason::ClientQuit;
        }
        if let Some(error) = fatal {
            let reason = EndReason::ProtocolViolation(error.message.clone());
            let _ = ctl.send(Control::Fatal(error, reason));
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

/// The FATAL error for a client message that does not decode.
fn invalid_message(e: impl std::fmt::Display) -> PgError {
    PgError::fatal("08P01", format!("invalid message from client: {e}"))
}

/// A simple Query that the server rejects with a syntax error naming `marker` + seq.
fn probe_query(marker: &str, seq: u64, out: &mut BytesMut) {
    let text = format!("{marker}{seq}");
    let _ = postgres_protocol::message::frontend::query(&text, out);
}

/// A Parse of the probe statement under the client's statement name.
fn probe_parse(marker: &str, seq: u64, name: &str, out: &mut BytesMut) {
    let text = format!("{marker}{seq}");
    let _ = postgres_protocol::message::frontend::parse(name, &text, std::iter::empty(), out);
}

/// Upstream → client: forward everything, replacing probe errors with our denials.
/// Also ends the session on grant expiry, gateway shutdown, or a fatal error from
/// the client-side task.
async fn upstream_to_client(
    upstream: &mut ReadHalf<BoxStream>,
    mut buf: BytesMut,
    client: &mut WriteHalf<BoxStream>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
    deadline: Instant,
    shutdown: &mut broadcast::Receiver<()>,
    ctx: &RelayContext,
) -> EndReason {
    let mut pending: VecDeque<(u64, PgError)> = VecDeque::new();
    let deadline = tokio::time::Instant::from_std(deadline);
    let marker = ctx.marker.as_bytes();
    loop {
        // Forward every complete message in `buf`, in place where possible.
        let mut pos = 0;
        while buf.len() - pos >= HEADER_LEN {
            let len = (&buf[pos + 1..pos + HEADER_LEN]).get_i32();
            if len < 4 {
                return EndReason::ProtocolViolation("invalid message length from upstream".into());
            }
            let end = pos + 1 + len as usize;
            if end > buf.len() {
                // Grow step by step, as for client messages (frame::split_frame).
                buf.reserve((end - buf.len()).min(64 * 1024));
                break;
            }
            if buf[pos] == backend::ERROR_RESPONSE {
                if let Some(seq) = probe_seq(&buf[pos + HEADER_LEN..end], marker) {
                    // The denial was queued before its probe was sent; collect it.
                    while let Ok(control) = ctl.try_recv() {
                        match control {
                            Control::Denied { seq, error } => pending.push_back((seq, error)),
                            Control::Fatal(error, reason) => {
                                let _ = write_parts(client, &buf[..pos], &[]).await;
                                let _ = write_error(client, &error).await;
                                return reason;
                            }
                        }
                    }
                    // Only the server's syntax error for a pending probe is replaced;
                    // anything else that merely contains the marker (it is visible to
                    // other sessions in pg_stat_activity) is forwarded as it is.
                    let fields = backend::ErrorFields::parse(&buf[pos + HEADER_LEN..end])
                        .unwrap_or_default();
                    let expected = format!("syntax error at or near \"{}{seq}\"", ctx.marker);
                    let is_probe = fields.code == "42601"
                        && fields.message == expected
                        && pending.iter().any(|(s, _)| *s == seq);
                    if is_probe {
                        let mut replacement = BytesMut::new();
                        // Earlier probes were skipped by the server (extended-protocol
                        // error mode); their denials are dropped with them.
                        while let Some((s, error)) = pending.pop_front() {
                            if s == seq {
                                error.encode(&mut replacement);
                                break;
                            }
                        }
                        if let Err(e) = write_parts(client, &buf[..pos], &replacement).await {
                            return EndReason::Io(format!("writing client: {e}"));
                        }
                        buf.advance(end);
                        pos = 0;
                        continue;
                    }
                }
            }
            pos = end;
        }
        if pos > 0 {
            if let Err(e) = client.write_all(&buf[..pos]).await {
                return EndReason::Io(format!("writing client: {e}"));
            }
            buf.advance(pos);
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
            control = ctl.recv() => match control {
                Some(Control::Denied { seq, error }) => pending.push_back((seq, error)),
                Some(Control::Fatal(error, reason)) => {
                    let _ = write_error(client, &error).await;
                    return reason;
                }
                None => std::future::pending::<()>().await,
            },
            _ = tokio::time::sleep_until(deadline) => {
                let error = PgError::fatal(
                    "28000",
                    format!(
                        "sqlgate: grant {} for connection {:?} expired at {}",
                        ctx.grant.id, ctx.grant.connection, rfc3339(ctx.grant.expires_at)
                    ),
                )
                .with_hint("reconnect with a fresh token to request a new grant");
                let _ = write_error(client, &error).await;
                return EndReason::GrantExpired;
            }
            _ = shutdown.recv() => {
                let _ = write_error(client, &PgError::fatal("57P01", "sqlgate: the gateway is shutting down")).await;
                return EndReason::Shutdown;
            }
        }
    }
}

/// The probe number in an ErrorResponse body, if it is one of ours.
fn probe_seq(body: &[u8], marker: &[u8]) -> Option<u64> {
    let at = body.windows(marker.len()).position(|w| w == marker)?;
    let digits = &body[at + marker.len()..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

async fn write_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    first: &[u8],
    second: &[u8],
) -> std::io::Result<()> {
    if !first.is_empty() {
        w.write_all(first).await?;
    }
    w.write_all(second).await
}

async fn write_error<W: AsyncWrite + Unpin>(w: &mut W, error: &PgError) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    error.encode(&mut out);
    w.write_all(&out).await?;
    w.flush().await
}
