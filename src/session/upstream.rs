//! Opening a Postgres upstream session with the held credential.
//!
//! The gateway connects (optionally over TLS), sends a StartupMessage whose `options`
//! pin `default_transaction_read_only=on` and `standard_conforming_strings=on` — as
//! startup options they are the session's *reset* values, so `RESET ALL` or `DISCARD
//! ALL` cannot turn writes back on — and `client_encoding=UTF8`, then runs the login
//! state machine of `sqlgate_postgres::upstream` until ReadyForQuery. Errors never
//! contain the credential.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use sqlgate_postgres::frame::{split_frame, Frame};
use sqlgate_postgres::upstream::{startup_packet, LoginStep, UpstreamLogin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::BoxStream;
use crate::catalog::{catalog_query, FunctionCatalog};
use crate::config::{ConnectionConfig, UpstreamTls};

/// Settings pinned on every upstream session, as startup `options`.
pub const PINNED_OPTIONS: &str =
    "-c default_transaction_read_only=on -c standard_conforming_strings=on";

/// Why the upstream session could not be opened. Shown to the client (without
/// secrets) and logged.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach upstream {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("upstream {addr} does not accept TLS, and upstream_tls requires it")]
    TlsRefused { addr: String },
    #[error("TLS to upstream failed: {0}")]
    Tls(String),
    #[error("the held credential for this connection is unavailable: {0}")]
    Credential(String),
    #[error("upstream login failed: {0}")]
    Login(String),
    #[error("upstream refused the login ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("upstream closed the connection during login")]
    Closed,
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
}

impl UpstreamError {
    /// What the agent is told: enough to know whom to ask, nothing about the
    /// upstream's address, role or the gateway's configuration (those go to the log
    /// and the audit trail).
    pub fn for_client(&self) -> String {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::TlsRefused { .. }
            | UpstreamError::Closed
            | UpstreamError::Timeout(_) => "the upstream database is unreachable".into(),
            UpstreamError::Refused { code, .. } => format!(
                "the upstream refused the login of the gateway (SQLSTATE {code}); \
                 ask the DBA to check this connection's credential"
            ),
            UpstreamError::Credential(_) => {
                "the gateway has no credential for this connection right now; ask the DBA".into()
            }
            UpstreamError::Tls(_) | UpstreamError::Login(_) => {
                "the gateway could not log in to the upstream database; ask the DBA".into()
            }
        }
    }
}

/// A logged-in upstream session, ready for queries.
pub struct UpstreamSession {
    pub stream: BoxStream,
    /// Bytes read past ReadyForQuery (normally none).
    pub buf: BytesMut,
    /// ParameterStatus frames to pass on to the client, raw.
    pub parameter_status: Vec<Frame>,
    /// NoticeResponse frames sent during login.
    pub notices: Vec<Frame>,
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// The ReadyForQuery frame that ended the login.
    pub ready: Frame,
    /// How the upstream authenticated us ("trust", "md5", "scram-sha-256", ...).
    pub auth_method: &'static str,
}

/// Connects and logs in. `client_params` are client startup parameters already
/// filtered to the allowed ones.
pub async fn open(
    conn: &ConnectionConfig,
    client_params: &[(String, String)],
    timeout: Duration,
) -> Result<UpstreamSession, UpstreamError> {
    tokio::time::timeout(timeout, open_inner(conn, client_params))
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

async fn open_inner(
    conn: &ConnectionConfig,
    client_params: &[(String, String)],
) -> Result<UpstreamSession, UpstreamError> {
    let password = conn.credential.load().map_err(UpstreamError::Credential)?;
    let tcp = TcpStream::connect(&conn.upstream)
        .await
        .map_err(|e| UpstreamError::Connect {
            addr: conn.upstream.clone(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let mut stream: BoxStream = match conn.upstream_tls {
        UpstreamTls::Disable => Box::new(tcp),
        mode => Box::new(start_tls(tcp, conn, mode == UpstreamTls::VerifyFull).await?),
    };

    let mut params: Vec<(&str, &str)> = vec![
        ("user", conn.user.as_str()),
        ("database", conn.database.as_str()),
        ("client_encoding", "UTF8"),
        ("options", PINNED_OPTIONS),
    ];
    if !client_params.iter().any(|(k, _)| k == "application_name") {
        params.push(("application_name", "sqlgate"));
    }
    for (k, v) in client_params {
        params.push((k.as_str(), v.as_str()));
    }
    let mut out = BytesMut::new();
    startup_packet(&params, &mut out).map_err(|e| UpstreamError::Login(e.to_string()))?;
    stream.write_all(&out).await.map_err(io_closed)?;

    let mut login = UpstreamLogin::new(
        &conn.user,
        password.as_deref().map(str::as_bytes),
        &conn.upstream_auth,
    );
    let mut buf = BytesMut::with_capacity(8192);
    let mut parameter_status = Vec::new();
    let mut notices = Vec::new();
    let mut key = (0, 0);
    let mut authenticated = false;
    loop {
        let frame = read_frame(&mut stream, &mut buf).await?;
        match frame.tag {
            b'R' if !authenticated => {
                let message = parse_backend(&frame)?;
                match login
                    .on_auth(&message)
                    .map_err(|e| UpstreamError::Login(e.to_string()))?
                {
                    LoginStep::Send(bytes) => stream.write_all(&bytes).await.map_err(io_closed)?,
                    LoginStep::Continue => {}
                    LoginStep::Done => authenticated = true,
                }
            }
            b'E' => {
                let fields =
                    sqlgate_postgres::backend::ErrorFields::parse(frame.body()).unwrap_or_default();
                return Err(UpstreamError::Refused {
                    code: fields.code,
                    message: fields.message,
                });
            }
            b'S' if authenticated => parameter_status.push(frame),
            b'N' => notices.push(frame),
            b'K' if authenticated => {
                if let Message::BackendKeyData(body) = parse_backend(&frame)? {
                    key = (body.process_id(), body.secret_key());
                }
            }
            b'v' => {} // NegotiateProtocolVersion: we asked for 3.0, nothing to do
            b'Z' if authenticated => {
                return Ok(UpstreamSession {
                    stream,
                    buf,
                    parameter_status,
                    notices,
                    backend_pid: key.0,
                    backend_secret: key.1,
                    ready: frame,
                    auth_method: login.method(),
                })
            }
            other => {
                return Err(UpstreamError::Login(format!(
                    "unexpected message '{}' during login",
                    other as char
                )))
            }
        }
    }
}

async fn start_tls(
    mut tcp: TcpStream,
    conn: &ConnectionConfig,
    verify: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let mut req = BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut req);
    tcp.write_all(&req).await.map_err(io_closed)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io_closed)?;
    if answer[0] != b'S' {
        return Err(UpstreamError::TlsRefused {
            addr: conn.upstream.clone(),
        });
    }
    tls_handshake(tcp, conn, verify).await
}

/// The TLS handshake with an upstream, once its protocol has agreed to TLS (any
/// protocol: Postgres after 'S', MySQL after an SSLRequest).
pub async fn tls_handshake(
    tcp: TcpStream,
    conn: &ConnectionConfig,
    verify: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let config = crate::tls::upstream_config(verify, conn.upstream_ca.as_deref())
        .map_err(UpstreamError::Tls)?;
    let host = conn.upstream_tls_name.clone().unwrap_or_else(|| {
        conn.upstream
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&conn.upstream)
            .trim_matches(['[', ']'])
            .to_owned()
    });
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| UpstreamError::Tls(format!("{host:?} is not a valid TLS server name")))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))
}

/// Reads the function catalog over a logged-in session (before the client's relay
/// starts). Leaves the session idle.
pub async fn fetch_catalog(
    session: &mut UpstreamSession,
) -> Result<Arc<FunctionCatalog>, UpstreamError> {
    let rows = query_rows::<4>(session, &catalog_query()).await?;
    Ok(Arc::new(FunctionCatalog::from_rows(rows)))
}

/// Reads the catalog over a new, short-lived upstream session of `conn` (a session
/// that is relaying cannot be used: its client owns the protocol state).
pub async fn fetch_catalog_separately(
    conn: &ConnectionConfig,
    timeout: Duration,
) -> Result<Arc<FunctionCatalog>, UpstreamError> {
    let mut session = open(conn, &[], timeout).await?;
    let catalog = tokio::time::timeout(timeout, fetch_catalog(&mut session))
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))??;
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::terminate(&mut out);
    let _ = session.stream.write_all(&out).await;
    Ok(catalog)
}

/// Ends the upstream backend `pid` from a separate connection (the last resort when a
/// session's own connection is closed and a cancel did not stop its statement). The
/// held role may end its own backends without further privileges.
pub async fn terminate_backend(
    conn: &ConnectionConfig,
    pid: i32,
    timeout: Duration,
) -> Result<bool, UpstreamError> {
    let mut session = open(conn, &[], timeout).await?;
    let sql = format!("SELECT pg_catalog.pg_terminate_backend({pid})");
    let rows = tokio::time::timeout(timeout, query_rows::<1>(&mut session, &sql))
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))??;
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::terminate(&mut out);
    let _ = session.stream.write_all(&out).await;
    Ok(rows.first().is_some_and(|[t]| t == "t"))
}

/// Privileges the held role should not have: superuser, or membership in a role that
/// reads or writes server files, runs programs, signals other backends, bypasses
/// row-level security or writes every table. sqlgate's checks do not depend on the
/// role being weak, but a DBA should know (README: least-privilege recipe).
pub const RISKY_ROLE_QUERY: &str = "SELECT 'superuser' FROM pg_catalog.pg_roles \
     WHERE rolname OPERATOR(pg_catalog.=) CURRENT_USER AND rolsuper \
     UNION ALL SELECT 'bypassrls' FROM pg_catalog.pg_roles \
     WHERE rolname OPERATOR(pg_catalog.=) CURRENT_USER AND rolbypassrls \
     UNION ALL SELECT m FROM pg_catalog.unnest(ARRAY['pg_read_server_files', \
       'pg_write_server_files', 'pg_execute_server_program', 'pg_signal_backend', \
       'pg_write_all_data']::pg_catalog.text[]) AS m \
     WHERE pg_catalog.pg_has_role(CURRENT_USER, m::pg_catalog.name, 'MEMBER')";

/// The risky privileges of the held role ([`RISKY_ROLE_QUERY`]).
pub async fn risky_privileges(session: &mut UpstreamSession) -> Result<Vec<String>, UpstreamError> {
    let rows = query_rows::<1>(session, RISKY_ROLE_QUERY).await?;
    Ok(rows.into_iter().map(|[m]| m).collect())
}

/// Runs one simple query on an idle session and returns its rows as text, each with
/// exactly `N` columns (NULL as ""). Leaves the session idle.
async fn query_rows<const N: usize>(
    session: &mut UpstreamSession,
    sql: &str,
) -> Result<Vec<[String; N]>, UpstreamError> {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out)
        .map_err(|e| UpstreamError::Login(e.to_string()))?;
    session.stream.write_all(&out).await.map_err(io_closed)?;
    let mut rows: Vec<[String; N]> = Vec::new();
    let mut failure = None;
    loop {
        let frame = read_frame(&mut session.stream, &mut session.buf).await?;
        match frame.tag {
            b'D' => {
                if let Message::DataRow(row) = parse_backend(&frame)? {
                    let buffer = row.buffer();
                    let mut values: Vec<String> = Vec::with_capacity(N);
                    let mut ranges = row.ranges();
                    while let Ok(Some(range)) =
                        fallible_iterator::FallibleIterator::next(&mut ranges)
                    {
                        let text = range
                            .and_then(|r| buffer.get(r))
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default();
                        values.push(text);
                    }
                    if let Ok(row) = <[String; N]>::try_from(values) {
                        rows.push(row);
                    }
                }
            }
            b'E' => {
                let fields =
                    sqlgate_postgres::backend::ErrorFields::parse(frame.body()).unwrap_or_default();
                failure = Some(UpstreamError::Refused {
                    code: fields.code,
                    message: fields.message,
                });
            }
            b'Z' => break,
            _ => {}
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

async fn read_frame(stream: &mut BoxStream, buf: &mut BytesMut) -> Result<Frame, UpstreamError> {
    loop {
        if let Some(frame) =
            split_frame(buf, 1 << 30).map_err(|e| UpstreamError::Login(e.to_string()))?
        {
            return Ok(frame);
        }
        if stream.read_buf(buf).await.map_err(io_closed)? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}

fn parse_backend(frame: &Frame) -> Result<Message, UpstreamError> {
    let mut raw = frame.raw.clone();
    match Message::parse(&mut raw) {
        Ok(Some(message)) => Ok(message),
        _ => Err(UpstreamError::Login(format!(
            "malformed '{}' message",
            frame.tag as char
        ))),
    }
}

pub fn io_closed(e: std::io::Error) -> UpstreamError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            UpstreamError::Closed
        }
        _ => UpstreamError::Connect {
            addr: String::new(),
            reason: e.to_string(),
        },
    }
}
