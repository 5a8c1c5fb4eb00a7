//! The MySQL/MariaDB front end: handshake, token login, grant, upstream, command relay.
//!
//! ```text
//! client ◀─HandshakeV10 (ours: TLS offered, mysql_native_password announced)
//!        ──SSLRequest──▶ TLS            (required unless listen.allow_plaintext, loopback)
//!        ──HandshakeResponse41──▶ database = connection name
//!        ◀─AuthSwitch(mysql_clear_password) ──token──▶   (or caching_sha2 full auth over TLS)
//!                                         identity, grant, audit ─▶ upstream login, pin
//!        ◀─OK
//! relay:  one command at a time: decided, forwarded or answered with an ERR;
//!         the answer relayed packet by packet until the response tracker says it is complete
//! ```
//!
//! The classic protocol is strictly request → response, so the relay is one loop: read
//! a command, decide it, forward it and relay its answer (racing the grant's expiry,
//! the statement timeout and shutdown), or answer it with the gateway's own ERR
//! packet. A client that sends its next command early simply waits in the socket
//! buffer: the gateway reads it only after the answer before it is complete, so a
//! denial is never interleaved with an upstream answer.
//!
//! Prepared statements: `COM_STMT_PREPARE` is decided like `COM_QUERY`; the ids the
//! server returns for allowed statements are the only ones `COM_STMT_EXECUTE`,
//! `SEND_LONG_DATA`, `RESET` and `CLOSE` may name. Cursors (`COM_STMT_FETCH`) are not
//! relayed.
//!
//! Modules: [`framed`] (the packet connection both sides use), `login` (handshake,
//! TLS, token, grant, upstream), `relay` (the command loop of a logged-in session),
//! [`upstream`] (the gateway's upstream login, pinning, `KILL`).

pub mod framed;
mod login;
mod relay;
pub mod upstream;

use self::login::{Login, LoginFailure};
use self::relay::Session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sqlgate_mysql::codes::{self};
use sqlgate_mysql::handshake::{self};
use tokio::net::TcpStream;

use self::framed::Framed;
use super::new_session_id;
use crate::gateway::Services;

/// How long a session's last words may take to write: the client may not read.
pub(crate) const FINAL_WRITE_WAIT: Duration = Duration::from_secs(1);

/// Serves one client connection of the MySQL listener.
pub async fn handle_connection(tcp: TcpStream, peer: SocketAddr, services: Arc<Services>) {
    let _ = tcp.set_nodelay(true);
    let _active = crate::gateway::ActiveGuard::new(&services);
    let mut client = Framed::new(Box::new(tcp), BytesMut::with_capacity(4096));
    let unauthenticated = match services.slots.unauthenticated() {
        Ok(slot) => slot,
        Err(cap) => {
            let message = format!("sqlgate: {cap}; retry shortly");
            let _ = tokio::time::timeout(
                FINAL_WRITE_WAIT,
                client.send(0, &handshake::err(codes::TOO_MANY_CONNECTIONS, &message)),
            )
            .await;
            if let Some(refused) = services.refusals.tick() {
                tracing::warn!(%peer, refused, %cap, "connections refused");
            }
            return;
        }
    };
    let shutdown = services.shutdown.subscribe();
    let id = new_session_id();
    let login_deadline = tokio::time::Instant::now() + services.config.limits.login_timeout;
    let mut login = Login {
        id: id.clone(),
        peer,
        services: services.clone(),
        client,
        seq: 0,
    };
    let result = tokio::time::timeout_at(login_deadline, login.run()).await;
    drop(unauthenticated);
    let ready = match result {
        Ok(Ok(Some(ready))) => ready,
        Ok(Ok(None)) => return,
        Ok(Err(LoginFailure { code, message })) => {
            login.fail(code, &message).await;
            return;
        }
        Err(_) => {
            let message = format!(
                "sqlgate: login did not complete within {}s",
                services.config.limits.login_timeout.as_secs()
            );
            login.fail(codes::HANDSHAKE_ERROR, &message).await;
            return;
        }
    };
    let Login { client, .. } = login;
    let mut session = Session::new(id, peer, services, client, ready);
    let reason = session.relay(shutdown).await;
    tracing::info!(session = %session.gate.session_id, %reason, "session ended");
}
