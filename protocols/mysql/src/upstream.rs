//! The gateway's own login to the upstream server, as a sans-IO state machine.
//!
//! The session layer reads the server's HandshakeV10 ([`decode_server_hello`]), sends
//! an SSLRequest and starts TLS if the connection asks for it, sends the response
//! [`Login::start`] builds, then feeds every packet the server sends to
//! [`Login::on_packet`] until it says [`LoginStep::Done`]. Supported:
//! `mysql_native_password`; `caching_sha2_password` with its fast path and full
//! authentication over verified TLS; `mysql_clear_password` over verified TLS only;
//! auth switches between them. The password is sent in clear only over TLS whose
//! certificate was verified (`secure`): over unverified TLS, or to a server whose RSA
//! key the gateway would have to take on trust, a man in the middle could read it.
//! The held password never appears in an error.

use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakePacket;
use mysql_common::scramble::{scramble_native, scramble_sha256};

use crate::handshake::{
    CACHING_SHA2_PASSWORD, CLEAR_PASSWORD, NATIVE_PASSWORD, UTF8MB4_GENERAL_CI,
};
use crate::response::{decode_err, ServerError};
use crate::ProtocolError;

/// Largest packet the gateway announces it accepts (what the server may send it).
pub const MAX_PACKET: u32 = 64 << 20;

/// What the server said in its HandshakeV10.
#[derive(Debug, Clone)]
pub struct ServerHello {
    pub version: String,
    /// The upstream thread id (`KILL QUERY` takes it).
    pub connection_id: u32,
    pub capabilities: CapabilityFlags,
    pub nonce: Vec<u8>,
    pub plugin: String,
}

impl ServerHello {
    /// MariaDB says so in its version string.
    pub fn is_mariadb(&self) -> bool {
        self.version.contains("MariaDB")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("upstream refused the login: {} ({})", .0.message, .0.code)]
    Server(ServerError),
    #[error("upstream asks for authentication method {0:?}, which sqlgate does not support")]
    Unsupported(String),
    #[error(
        "upstream asks for {0}, which sends the password in clear: only over verified TLS (upstream_tls = \"verify-full\")"
    )]
    NeedsTls(&'static str),
    #[error("upstream does not support TLS, and the connection requires it")]
    NoTls,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Decodes the server's first packet.
pub fn decode_server_hello(payload: &[u8]) -> Result<ServerHello, LoginError> {
    if payload.first() == Some(&0xff) {
        return Err(LoginError::Server(decode_err(payload)));
    }
    let hello: HandshakePacket<'_> =
        ParseBuf(payload)
            .parse(())
            .map_err(|_| ProtocolError::Malformed {
                what: "server handshake",
                problem: "cannot be decoded",
            })?;
    if hello.protocol_version() != 10 {
        return Err(ProtocolError::Unexpected {
            what: "handshake protocol version",
        }
        .into());
    }
    Ok(ServerHello {
        version: String::from_utf8_lossy(hello.server_version_ref()).into_owned(),
        connection_id: hello.connection_id(),
        capabilities: hello.capabilities(),
        nonce: hello.nonce(),
        plugin: hello
            .auth_plugin_name_str()
            .map(|p| p.into_owned())
            .unwrap_or_else(|| NATIVE_PASSWORD.to_owned()),
    })
}

/// The fixed 32-byte prefix of an SSLRequest / HandshakeResponse41.
fn prefix(caps: CapabilityFlags) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&caps.bits().to_le_bytes());
    out.extend_from_slice(&MAX_PACKET.to_le_bytes());
    out.push(UTF8MB4_GENERAL_CI);
    out.extend_from_slice(&[0; 23]);
    out
}

/// An SSLRequest payload.
pub fn ssl_request(caps: CapabilityFlags) -> Vec<u8> {
    prefix(caps | CapabilityFlags::CLIENT_SSL)
}

/// The capabilities the gateway asks of the upstream: what the client negotiated
/// (so both sides agree on result formats), plus what the login and the tripwire
/// need.
pub fn upstream_capabilities(client: CapabilityFlags, tls: bool) -> CapabilityFlags {
    let relayed = CapabilityFlags::CLIENT_FOUND_ROWS
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_INTERACTIVE
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS;
    let mut caps = (client & relayed)
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_SESSION_TRACK;
    if tls {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    caps
}

/// One step of the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStep {
    /// Send this payload (next sequence id) and feed the answer.
    Send(Vec<u8>),
    /// Nothing to send; feed the next packet.
    Wait,
    /// Logged in.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Authenticating,
    Done,
}

/// The upstream login in progress.
pub struct Login {
    password: Vec<u8>,
    plugin: String,
    nonce: Vec<u8>,
    /// TLS with a verified certificate: the password may be sent in clear.
    secure: bool,
    state: State,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("plugin", &self.plugin)
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// Builds the HandshakeResponse41 for `hello`.
    pub fn start(
        hello: &ServerHello,
        user: &str,
        password: Option<&str>,
        database: &str,
        caps: CapabilityFlags,
        secure: bool,
    ) -> Result<(Login, Vec<u8>), LoginError> {
        let mut login = Login {
            password: password.unwrap_or_default().as_bytes().to_vec(),
            plugin: hello.plugin.clone(),
            nonce: hello.nonce.clone(),
            secure,
            state: State::Authenticating,
        };
        // An unknown first plugin is answered with the native scramble: the server
        // then switches to what the account needs.
        if !matches!(
            login.plugin.as_str(),
            NATIVE_PASSWORD | CACHING_SHA2_PASSWORD | CLEAR_PASSWORD
        ) {
            login.plugin = NATIVE_PASSWORD.to_owned();
        }
        let auth = login.auth_data()?;
        let mut out = prefix(caps);
        out.extend_from_slice(user.as_bytes());
        out.push(0);
        crate::put_lenenc_int(&mut out, auth.len() as u64);
        out.extend_from_slice(&auth);
        out.extend_from_slice(database.as_bytes());
        out.push(0);
        out.extend_from_slice(login.plugin.as_bytes());
        out.push(0);
        Ok((login, out))
    }

    /// The authentication method in use (changes with auth switches).
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    fn auth_data(&self) -> Result<Vec<u8>, LoginError> {
        if self.password.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match self.plugin.as_str() {
            NATIVE_PASSWORD => scramble_native(&self.nonce, &self.password)
                .map(|s| s.to_vec())
                .unwrap_or_default(),
            CACHING_SHA2_PASSWORD => scramble_sha256(&self.nonce, &self.password)
                .map(|s| s.to_vec())
                .unwrap_or_default(),
            CLEAR_PASSWORD if self.secure => {
                let mut out = self.password.clone();
                out.push(0);
                out
            }
            CLEAR_PASSWORD => return Err(LoginError::NeedsTls(CLEAR_PASSWORD)),
            other => return Err(LoginError::Unsupported(other.to_owned())),
        })
    }

    /// Feeds the next packet from the server.
    pub fn on_packet(&mut self, payload: &[u8]) -> Result<LoginStep, LoginError> {
        let unexpected = |what| LoginError::Protocol(ProtocolError::Unexpected { what });
        match (self.state, payload.first()) {
            (State::Done, _) => Err(unexpected("packet after login")),
            (_, Some(0x00)) => {
                self.state = State::Done;
                Ok(LoginStep::Done)
            }
            (_, Some(0xff)) => Err(LoginError::Server(decode_err(payload))),
            (State::Authenticating, Some(0xfe)) => {
                let rest = &payload[1..];
                let Some(end) = rest.iter().position(|b| *b == 0) else {
                    return Err(LoginError::Unsupported("mysql_old_password".into()));
                };
                self.plugin = String::from_utf8_lossy(&rest[..end]).into_owned();
                let data = &rest[end + 1..];
                self.nonce = match data {
                    [head @ .., 0] => head.to_vec(),
                    all => all.to_vec(),
                };
                Ok(LoginStep::Send(self.auth_data()?))
            }
            (State::Authenticating, Some(0x01)) if self.plugin == CACHING_SHA2_PASSWORD => {
                match payload.get(1) {
                    // Fast authentication succeeded; an OK follows.
                    Some(3) => Ok(LoginStep::Wait),
                    Some(4) if self.secure => {
                        let mut out = self.password.clone();
                        out.push(0);
                        Ok(LoginStep::Send(out))
                    }
                    Some(4) => Err(LoginError::NeedsTls(
                        "caching_sha2_password full authentication",
                    )),
                    _ => Err(unexpected("caching_sha2_password message")),
                }
            }
            _ => Err(unexpected("authentication packet")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(plugin: &str) -> ServerHello {
        ServerHello {
            version: "10.11.9-MariaDB".into(),
            connection_id: 3,
            capabilities: CapabilityFlags::CLIENT_PROTOCOL_41,
            nonce: vec![7; 20],
            plugin: plugin.into(),
        }
    }

    #[test]
    fn native_login_and_switches() {
        let (mut login, response) = Login::start(
            &hello(NATIVE_PASSWORD),
            "u",
            Some("pw"),
            "db",
            upstream_capabilities(CapabilityFlags::empty(), false),
            false,
        )
        .unwrap();
        assert!(response.ends_with(b"db\0mysql_native_password\0"));
        let switch = crate::handshake::auth_switch(CACHING_SHA2_PASSWORD, &[9; 20]);
        assert!(matches!(login.on_packet(&switch), Ok(LoginStep::Send(s)) if s.len() == 32));
        assert_eq!(login.on_packet(&[1, 3]).unwrap(), LoginStep::Wait);
        assert_eq!(
            login.on_packet(&[0, 0, 0, 2, 0, 0, 0]).unwrap(),
            LoginStep::Done
        );
    }

    #[test]
    fn clear_text_needs_tls_and_errors_never_hold_the_password() {
        let (mut login, _) = Login::start(
            &hello(NATIVE_PASSWORD),
            "u",
            Some("s3cret"),
            "db",
            CapabilityFlags::empty(),
            false,
        )
        .unwrap();
        let err = login
            .on_packet(&crate::handshake::auth_switch(CLEAR_PASSWORD, b""))
            .unwrap_err();
        assert!(matches!(err, LoginError::NeedsTls(_)));
        assert!(!err.to_string().contains("s3cret"));
        assert!(!format!("{login:?}").contains("s3cret"));
    }
}
