//! Opening a MySQL/MariaDB upstream session with the held credential, and pinning it.
//!
//! The gateway connects, reads the server's handshake, starts TLS if the connection
//! asks for it (an SSLRequest, then TLS), and runs the login state machine of
//! `sqlgate_mysql::upstream`, refusing authentication methods the connection's
//! `upstream_auth` does not list. Then it pins the session ([`pin`]): read-only
//! transactions, `utf8mb4`, an `sql_mode` without the modes that change how
//! statements are lexed, session-state tracking of the pinned variables (the
//! tripwire's input), and the server-side statement time limit. Errors never contain
//! the credential.

use std::time::Duration;

use bytes::BytesMut;
use sqlgate_mysql::command::COM_QUERY;
use sqlgate_mysql::response::{Expect, ResponseTracker, ServerError};
use sqlgate_mysql::upstream::{
    decode_server_hello, ssl_request, upstream_capabilities, Login, LoginError, LoginStep,
    ServerHello,
};
use sqlgate_mysql::CapabilityFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::framed::Framed;
use crate::config::{ConnectionConfig, UpstreamTls};
use crate::session::upstream::{io_closed, tls_handshake, UpstreamError};

/// Largest packet read from the upstream (rows can be large; `max_allowed_packet`
/// bounds them on the server too).
pub const MAX_UPSTREAM_PACKET: usize = sqlgate_mysql::upstream::MAX_PACKET as usize;

/// A logged-in upstream session.
pub struct MysqlUpstream {
    pub conn: Framed,
    pub hello: ServerHello,
    /// Capabilities in force with the upstream.
    pub capabilities: CapabilityFlags,
    /// The authentication method the server used.
    pub auth_method: String,
}

impl MysqlUpstream {
    pub fn session_track(&self) -> bool {
        self.capabilities
            .contains(CapabilityFlags::CLIENT_SESSION_TRACK)
    }
}

/// Connects and logs in; `client_caps` are the capabilities the client negotiated.
pub async fn open(
    conn: &ConnectionConfig,
    client_caps: CapabilityFlags,
    timeout: Duration,
) -> Result<MysqlUpstream, UpstreamError> {
    tokio::time::timeout(timeout, open_inner(conn, client_caps))
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

fn login_error(e: LoginError) -> UpstreamError {
    match e {
        LoginError::Server(err) => UpstreamError::Refused {
            code: format!("{} {}", err.code, err.sqlstate),
            message: err.message,
        },
        other => UpstreamError::Login(other.to_string()),
    }
}

fn read_error(e: super::framed::ReadError) -> UpstreamError {
    match e {
        super::framed::ReadError::Io(e) => io_closed(e),
        super::framed::ReadError::Protocol(e) => UpstreamError::Login(e.to_string()),
    }
}

async fn open_inner(
    conn: &ConnectionConfig,
    client_caps: CapabilityFlags,
) -> Result<MysqlUpstream, UpstreamError> {
    let password = conn.credential.load().map_err(UpstreamError::Credential)?;
    let tcp = TcpStream::connect(&conn.upstream)
        .await
        .map_err(|e| UpstreamError::Connect {
            addr: conn.upstream.clone(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    // The handshake is read off the TCP stream itself, which stays typed until TLS.
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let first = loop {
        if let Some(packet) = sqlgate_mysql::frame::decode(&mut buf, MAX_UPSTREAM_PACKET)
            .map_err(|e| UpstreamError::Login(e.to_string()))?
        {
            break packet;
        }
        if tcp.read_buf(&mut buf).await.map_err(io_closed)? == 0 {
            return Err(UpstreamError::Closed);
        }
    };
    let hello = decode_server_hello(&first.payload).map_err(login_error)?;
    let tls = conn.upstream_tls != UpstreamTls::Disable;
    let caps = upstream_capabilities(client_caps, tls)
        & (hello.capabilities | CapabilityFlags::CLIENT_SSL);
    let mut seq = first.next_seq();
    let mut framed = if tls {
        if !hello.capabilities.contains(CapabilityFlags::CLIENT_SSL) {
            return Err(UpstreamError::TlsRefused {
                addr: conn.upstream.clone(),
            });
        }
        let mut out = BytesMut::new();
        seq = sqlgate_mysql::frame::encode(seq, &ssl_request(caps), &mut out);
        tcp.write_all(&out).await.map_err(io_closed)?;
        if !buf.is_empty() {
            return Err(UpstreamError::Login(
                "data from the server before the TLS handshake".into(),
            ));
        }
        let tls_stream =
            tls_handshake(tcp, conn, conn.upstream_tls == UpstreamTls::VerifyFull).await?;
        Framed::new(Box::new(tls_stream), buf)
    } else {
        Framed::new(Box::new(tcp), buf)
    };
    // The password goes in clear (full authentication) only over verified TLS.
    let secure = conn.upstream_tls == UpstreamTls::VerifyFull;
    let (mut login, response) = Login::start(
        &hello,
        &conn.user,
        password.as_deref(),
        &conn.database,
        caps,
        secure,
    )
    .map_err(login_error)?;
    check_method(conn, login.plugin())?;
    framed.send(seq, &response).await.map_err(io_closed)?;
    loop {
        let packet = framed
            .read(MAX_UPSTREAM_PACKET)
            .await
            .map_err(read_error)?
            .ok_or(UpstreamError::Closed)?;
        match login.on_packet(&packet.payload).map_err(login_error)? {
            LoginStep::Send(payload) => {
                check_method(conn, login.plugin())?;
                framed
                    .send(packet.next_seq(), &payload)
                    .await
                    .map_err(io_closed)?;
            }
            LoginStep::Wait => {}
            LoginStep::Done => break,
        }
    }
    Ok(MysqlUpstream {
        conn: framed,
        auth_method: login.plugin().to_owned(),
        hello,
        capabilities: caps,
    })
}

fn check_method(conn: &ConnectionConfig, plugin: &str) -> Result<(), UpstreamError> {
    if conn.upstream_auth.iter().any(|m| m == plugin) {
        Ok(())
    } else {
        Err(UpstreamError::Login(format!(
            "the upstream asks for {plugin}, which this connection's upstream_auth does not allow"
        )))
    }
}

/// Text rows of a query the gateway runs itself.
pub type Rows = Vec<Vec<Option<String>>>;

/// Runs one statement of the gateway's own on an idle upstream session.
pub async fn query(up: &mut Framed, sql: &str) -> Result<Result<Rows, ServerError>, UpstreamError> {
    let mut payload = Vec::with_capacity(1 + sql.len());
    payload.push(COM_QUERY);
    payload.extend_from_slice(sql.as_bytes());
    up.send(0, &payload).await.map_err(io_closed)?;
    let mut tracker = ResponseTracker::new(Expect::Results, true);
    let mut rows = Vec::new();
    loop {
        let packet = up
            .read(MAX_UPSTREAM_PACKET)
            .await
            .map_err(read_error)?
            .ok_or(UpstreamError::Closed)?;
        let before = tracker.rows;
        let (step, _) = tracker
            .feed(&packet.payload)
            .map_err(|e| UpstreamError::Login(e.to_string()))?;
        if tracker.rows > before {
            rows.push(text_row(&packet.payload));
        }
        if step == sqlgate_mysql::response::Step::Done {
            break;
        }
    }
    Ok(match tracker.error {
        Some(e) => Err(e),
        None => Ok(rows),
    })
}

fn text_row(mut payload: &[u8]) -> Vec<Option<String>> {
    let mut row = Vec::new();
    while let Some(&first) = payload.first() {
        if first == 0xfb {
            row.push(None);
            payload = &payload[1..];
            continue;
        }
        let Some((len, n)) = sqlgate_mysql::lenenc_int(payload) else {
            break;
        };
        let end = usize::try_from(len)
            .map_or(payload.len(), |len| n.saturating_add(len))
            .min(payload.len());
        row.push(Some(String::from_utf8_lossy(&payload[n..end]).into_owned()));
        payload = &payload[end..];
    }
    row
}

/// The session's pinned `sql_mode`: the server's, without
/// [`crate::policy::mysql::LEXER_SQL_MODES`].
pub fn pinned_sql_mode(server_mode: &str) -> String {
    server_mode
        .split(',')
        .map(str::trim)
        .filter(|m| {
            !m.is_empty()
                && !crate::policy::mysql::LEXER_SQL_MODES
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(m))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Pins the upstream session (see the module docs). `statement_timeout`: the grant's.
pub async fn pin(up: &mut MysqlUpstream, statement_timeout: Duration) -> Result<(), UpstreamError> {
    let (mariadb, track) = (up.hello.is_mariadb(), up.session_track());
    pin_framed(&mut up.conn, mariadb, track, statement_timeout).await
}

/// [`pin`] on a session's packet connection (again after `COM_RESET_CONNECTION`).
pub async fn pin_framed(
    conn: &mut Framed,
    mariadb: bool,
    session_track: bool,
    statement_timeout: Duration,
) -> Result<(), UpstreamError> {
    let mode = match query(conn, "SELECT @@SESSION.sql_mode").await? {
        Ok(rows) => rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default(),
        Err(e) => return Err(refused(e)),
    };
    let read_only = if mariadb {
        "tx_read_only"
    } else {
        "transaction_read_only"
    };
    let mut statements = vec![
        "SET SESSION TRANSACTION READ ONLY".to_owned(),
        "SET NAMES utf8mb4".to_owned(),
        format!("SET SESSION sql_mode = '{}'", pinned_sql_mode(&mode)),
        "SET SESSION autocommit = 1".to_owned(),
    ];
    if session_track {
        statements.push(format!(
            "SET SESSION session_track_system_variables = \
             'sql_mode,character_set_client,character_set_connection,character_set_results,{read_only},autocommit'"
        ));
    }
    if !statement_timeout.is_zero() {
        statements.push(if mariadb {
            format!(
                "SET SESSION max_statement_time = {:.3}",
                statement_timeout.as_secs_f64()
            )
        } else {
            format!(
                "SET SESSION max_execution_time = {}",
                statement_timeout.as_millis()
            )
        });
    }
    for sql in statements {
        if let Err(e) = query(conn, &sql).await? {
            return Err(refused(e));
        }
    }
    Ok(())
}

fn refused(e: ServerError) -> UpstreamError {
    UpstreamError::Refused {
        code: format!("{} {}", e.code, e.sqlstate),
        message: e.message,
    }
}

/// Stops the statement running on upstream thread `thread_id` (`KILL QUERY`: the
/// session stays), or with `connection` the whole upstream session (`KILL
/// CONNECTION`), over a connection of its own.
pub async fn kill(
    conn: &ConnectionConfig,
    thread_id: u32,
    connection: bool,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let mut up = open(conn, CapabilityFlags::empty(), timeout).await?;
    let what = if connection { "CONNECTION" } else { "QUERY" };
    let result = tokio::time::timeout(
        timeout,
        query(&mut up.conn, &format!("KILL {what} {thread_id}")),
    )
    .await
    .map_err(|_| UpstreamError::Timeout(timeout))??;
    let _ = up.conn.send(0, &[sqlgate_mysql::command::COM_QUIT]).await;
    match result {
        Ok(_) => Ok(()),
        // 1094 "Unknown thread id": it had ended already.
        Err(e) if e.code == 1094 => Ok(()),
        Err(e) => Err(refused(e)),
    }
}

/// The lowercase names of the stored functions in the session's database.
pub async fn stored_functions(
    conn: &mut Framed,
) -> Result<std::collections::HashSet<String>, UpstreamError> {
    let rows = query(
        conn,
        "SELECT LOWER(ROUTINE_NAME) FROM information_schema.ROUTINES \
         WHERE ROUTINE_TYPE = 'FUNCTION' AND ROUTINE_SCHEMA = DATABASE()",
    )
    .await?
    .map_err(refused)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}
