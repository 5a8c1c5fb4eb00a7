//! The login exchange of one MySQL client: the gateway's handshake, TLS, the token in
//! clear (caching_sha2 full authentication over TLS or the clear-text switch), the
//! grant through the shared `admit`, and the pinned upstream session.

use std::net::SocketAddr;
use std::sync::Arc;

use sqlgate_mysql::codes::{self, ErrorCode};
use sqlgate_mysql::frame::Packet;
use sqlgate_mysql::handshake::{
    self, ClientHello, ClientResponse, CACHING_SHA2_PASSWORD, CLEAR_PASSWORD,
};
use sqlgate_mysql::CapabilityFlags;

use super::framed::{self, Framed, ReadError};
use super::upstream::{self, MysqlUpstream};
use super::FINAL_WRITE_WAIT;
use crate::audit::{AuditEvent, AuditRecord};
use crate::config::{ConnectionConfig, Protocol};
use crate::gateway::Services;
use crate::session::{Admission, Refusal};

/// Largest packet in the login exchange (the token arrives in one).
const MAX_LOGIN_PACKET: usize = 64 << 10;
/// The version the gateway announces until it has seen an upstream's.
const DEFAULT_SERVER_VERSION: &str = "8.0.0-sqlgate";

/// A login refused with this error.
pub(super) struct LoginFailure {
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

pub(super) fn failure(code: ErrorCode, message: impl Into<String>) -> LoginFailure {
    LoginFailure {
        code,
        message: message.into(),
    }
}

/// What a finished login hands to the relay.
pub(super) struct Ready {
    pub(super) admission: Admission,
    pub(super) upstream: MysqlUpstream,
    pub(super) conn: ConnectionConfig,
    pub(super) client_caps: CapabilityFlags,
    /// Stored functions in the connection's database at login.
    pub(super) stored_functions: std::collections::HashSet<String>,
}

/// The login exchange with one client.
pub(super) struct Login {
    pub(super) id: String,
    pub(super) peer: SocketAddr,
    pub(super) services: Arc<Services>,
    pub(super) client: Framed,
    /// The next sequence id to the client.
    pub(super) seq: u8,
}

impl Login {
    pub(super) async fn fail(&mut self, code: ErrorCode, message: &str) {
        let payload = handshake::err(code, message);
        let _ = tokio::time::timeout(FINAL_WRITE_WAIT, self.client.send(self.seq, &payload)).await;
    }

    async fn read(&mut self) -> Result<Option<Packet>, LoginFailure> {
        match self.client.read(MAX_LOGIN_PACKET).await {
            Ok(Some(packet)) => {
                if packet.seq != self.seq {
                    return Err(failure(
                        codes::HANDSHAKE_ERROR,
                        "sqlgate: packets out of order",
                    ));
                }
                self.seq = packet.next_seq();
                Ok(Some(packet))
            }
            Ok(None) | Err(ReadError::Io(_)) => Ok(None),
            Err(ReadError::Protocol(e)) => {
                Err(failure(codes::HANDSHAKE_ERROR, format!("sqlgate: {e}")))
            }
        }
    }

    async fn send(&mut self, payload: &[u8]) -> Result<(), LoginFailure> {
        self.seq = self
            .client
            .send(self.seq, payload)
            .await
            .map_err(|_| failure(codes::HANDSHAKE_ERROR, "client closed the connection"))?;
        Ok(())
    }

    fn record(&self, event: AuditEvent, connection: &str) -> AuditRecord {
        let mut rec = AuditRecord::new(event, &self.id, connection, &self.peer.to_string());
        rec.protocol = "mysql";
        rec
    }

    /// Handshake, TLS, token, grant, upstream. `Ok(None)`: the client left.
    pub(super) async fn run(&mut self) -> Result<Option<Ready>, LoginFailure> {
        let services = self.services.clone();
        let config = &services.config;
        let tls_available = services.tls.is_some();
        let scramble: [u8; 20] = std::array::from_fn(|_| {
            // Printable, non-NUL bytes, as servers send.
            33 + rand::random::<u8>() % 94
        });
        let version = services
            .mysql_version
            .lock()
            .ok()
            .and_then(|v| v.clone())
            .unwrap_or_else(|| DEFAULT_SERVER_VERSION.to_owned());
        let hello = handshake::server_hello(
            &version,
            rand::random::<u32>() >> 1,
            &scramble,
            tls_available,
        );
        self.send(&hello).await?;
        let offered = handshake::offered_capabilities(tls_available);

        let Some(packet) = self.read().await? else {
            return Ok(None);
        };
        let mut tls = false;
        let response = match handshake::decode_client_hello(&packet.payload, offered)
            .map_err(|e| failure(codes::HANDSHAKE_ERROR, format!("sqlgate: {e}")))?
        {
            ClientHello::SslRequest { .. } => {
                let Some(acceptor) = services.tls.clone() else {
                    return Err(failure(
                        codes::HANDSHAKE_ERROR,
                        "sqlgate: TLS is not available",
                    ));
                };
                // Bytes read past the SSLRequest are the client's first TLS records
                // (it does not wait for an answer): they go to the TLS layer.
                let early = self.client.buf.split().freeze();
                let placeholder: crate::session::BoxStream = Box::new(tokio::io::duplex(1).0);
                let plain = std::mem::replace(&mut self.client.stream, placeholder);
                let plain = framed::Prefixed::new(early, plain);
                let stream = acceptor.accept(plain).await.map_err(|e| {
                    failure(
                        codes::HANDSHAKE_ERROR,
                        format!("sqlgate: TLS handshake failed: {e}"),
                    )
                })?;
                self.client.stream = Box::new(stream);
                tls = true;
                let Some(packet) = self.read().await? else {
                    return Ok(None);
                };
                match handshake::decode_client_hello(&packet.payload, offered)
                    .map_err(|e| failure(codes::HANDSHAKE_ERROR, format!("sqlgate: {e}")))?
                {
                    ClientHello::Response(response) => response,
                    ClientHello::SslRequest { .. } => {
                        return Err(failure(
                            codes::HANDSHAKE_ERROR,
                            "sqlgate: TLS requested twice",
                        ))
                    }
                }
            }
            ClientHello::Response(response) => response,
        };
        let plaintext_ok = config.listen.allow_plaintext && self.peer.ip().is_loopback();
        if !(tls || plaintext_ok) {
            return Err(failure(
                codes::TLS_REQUIRED,
                "sqlgate requires TLS: the password is a bearer token (mysql/mariadb: --ssl; drivers: ssl-mode=REQUIRED)",
            ));
        }
        let Some(connection) = response.database.clone() else {
            return Err(failure(
                codes::ACCESS_DENIED,
                "sqlgate: no database in the login; set the database to the name of the sqlgate connection",
            ));
        };
        let token = self.token(&response, tls).await?;
        let Some(token) = token else { return Ok(None) };
        let token = String::from_utf8(token).map_err(|_| {
            failure(
                codes::ACCESS_DENIED,
                "sqlgate: token rejected: the password is not UTF-8",
            )
        })?;

        let admission = crate::session::admit(
            &services,
            &self.record(AuditEvent::GrantIssued, &connection),
            &connection,
            token.trim(),
            Protocol::Mysql,
        )
        .await
        .map_err(|refusal| match refusal {
            Refusal::Token(e) => failure(codes::ACCESS_DENIED, format!("sqlgate: token rejected: {e}")),
            Refusal::NoGrant(denial) => failure(codes::ACCESS_DENIED, format!("sqlgate: {}", denial.reason)),
            Refusal::AuditUnavailable => failure(
                codes::UNAVAILABLE,
                "sqlgate: the audit trail is unavailable, so no connection can be granted",
            ),
            Refusal::Cap(cap) => failure(
                codes::TOO_MANY_CONNECTIONS,
                format!("sqlgate: {cap}; close sessions you no longer use, or ask the operator to raise the cap"),
            ),
        })?;
        let conn = config
            .connection(&connection)
            .ok_or_else(|| {
                failure(
                    codes::ACCESS_DENIED,
                    format!("sqlgate: no connection named {connection:?}"),
                )
            })?
            .clone();
        let limits = admission.grant.time_limits;
        let opened = async {
            let mut up =
                upstream::open(&conn, response.capabilities, config.limits.connect_timeout).await?;
            upstream::pin(&mut up, limits.statement_timeout).await?;
            let functions = upstream::stored_functions(&mut up.conn).await?;
            Ok::<_, crate::session::upstream::UpstreamError>((up, functions))
        }
        .await;
        let (up, stored_functions) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(session = %self.id, connection = %conn.name, error = %e, "upstream login failed");
                let mut rec = self.record(AuditEvent::SessionEnded, &connection);
                rec.grant_id = Some(admission.grant.id.clone());
                rec.sub = Some(admission.principal.subject.clone());
                rec.reason = Some(format!("upstream login failed: {e}"));
                rec.ended_by = Some("error");
                let _ = services.audit.record(rec).await;
                return Err(failure(
                    codes::UNAVAILABLE,
                    format!(
                        "sqlgate: cannot open connection {:?}: {}",
                        conn.name,
                        e.for_client()
                    ),
                ));
            }
        };
        if let Ok(mut version) = services.mysql_version.lock() {
            *version = Some(format!("{}-sqlgate", up.hello.version));
        }
        self.send(&handshake::ok(
            sqlgate_mysql::response::SERVER_STATUS_AUTOCOMMIT,
        ))
        .await?;
        tracing::info!(
            session = %self.id, sub = %admission.principal.subject, connection = %conn.name,
            grant = %admission.grant.id, upstream_auth = %up.auth_method, "session started"
        );
        Ok(Some(Ready {
            admission,
            upstream: up,
            conn,
            client_caps: response.capabilities,
            stored_functions,
        }))
    }

    /// Obtains the password (the token) in clear. `Ok(None)`: the client left.
    async fn token(
        &mut self,
        response: &ClientResponse,
        tls: bool,
    ) -> Result<Option<Vec<u8>>, LoginFailure> {
        let plugin = response.auth_plugin.as_deref().unwrap_or_default();
        if plugin == CLEAR_PASSWORD {
            return Ok(Some(
                handshake::clear_password(&response.auth_data).to_vec(),
            ));
        }
        if plugin == CACHING_SHA2_PASSWORD && tls {
            // "Perform full authentication": over TLS the client sends the password.
            self.send(&handshake::auth_more_data(&[4])).await?;
        } else {
            self.send(&handshake::auth_switch(CLEAR_PASSWORD, &[]))
                .await?;
        }
        let Some(packet) = self.read().await? else {
            return Ok(None);
        };
        if packet.payload.is_empty() {
            return Err(failure(
                codes::AUTH_MODE,
                "sqlgate: the client did not send the token in clear; enable the mysql_clear_password \
                 plugin (mysql/mariadb: --enable-cleartext-plugin; see the README for drivers)",
            ));
        }
        Ok(Some(handshake::clear_password(&packet.payload).to_vec()))
    }
}
