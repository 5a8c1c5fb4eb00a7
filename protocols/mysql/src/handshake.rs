//! The client side of a login: the gateway's HandshakeV10, the client's answer, the
//! auth exchange that obtains the token in clear, and the packets the gateway sends.
//!
//! The gateway announces `caching_sha2_password` when it offers TLS (and
//! `mysql_native_password` when it does not), then gets the password — the token —
//! in clear by one of two ways:
//!
//! * for a client that answered with `caching_sha2_password` over TLS, the "perform
//!   full authentication" request, after which the client sends the password in clear
//!   as MySQL 8 clients do over a secure transport — no client option needed; or
//! * an auth switch to `mysql_clear_password` (the client must allow it; most need an
//!   option, see the README).
//!
//! A client that already answered with `mysql_clear_password` is taken at its word.

use std::borrow::Cow;

use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;

use crate::codes::ErrorCode;
use crate::ProtocolError;

/// `utf8mb4_general_ci`: the collation the gateway announces and pins.
pub const UTF8MB4_GENERAL_CI: u8 = 45;

pub const NATIVE_PASSWORD: &str = "mysql_native_password";
pub const CLEAR_PASSWORD: &str = "mysql_clear_password";
pub const CACHING_SHA2_PASSWORD: &str = "caching_sha2_password";

/// What the gateway offers clients. Not offered, on purpose: `CLIENT_LOCAL_FILES`
/// (LOAD DATA LOCAL reads client files), `CLIENT_COMPRESS` (not relayed),
/// `CLIENT_DEPRECATE_EOF` and optional metadata (the response tracker relies on EOF
/// packets), `CLIENT_IGNORE_SPACE` (changes how the server lexes function names),
/// `CLIENT_QUERY_ATTRIBUTES` (values the classifier would not see).
pub fn offered_capabilities(tls: bool) -> CapabilityFlags {
    let mut caps = CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_FOUND_ROWS
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_INTERACTIVE
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_CONNECT_ATTRS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_SESSION_TRACK;
    if tls {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    caps
}

/// The gateway's HandshakeV10 payload.
pub fn server_hello(
    server_version: &str,
    connection_id: u32,
    scramble: &[u8; 20],
    tls: bool,
) -> Vec<u8> {
    let plugin = if tls {
        CACHING_SHA2_PASSWORD
    } else {
        NATIVE_PASSWORD
    };
    let mut first = [0u8; 8];
    first.copy_from_slice(&scramble[..8]);
    let mut rest = scramble[8..].to_vec();
    rest.push(0);
    let packet = HandshakePacket::new(
        10,
        Cow::Borrowed(server_version.as_bytes()),
        connection_id,
        first,
        Some(rest),
        offered_capabilities(tls),
        UTF8MB4_GENERAL_CI,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(Cow::Borrowed(plugin.as_bytes())),
    );
    let mut out = Vec::new();
    packet.serialize(&mut out);
    out
}

/// The client's answer to the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    /// An SSLRequest: TLS starts right after it.
    SslRequest { capabilities: CapabilityFlags },
    /// A HandshakeResponse41.
    Response(ClientResponse),
}

/// A client's HandshakeResponse41, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// The client's capabilities, limited to what the gateway offered.
    pub capabilities: CapabilityFlags,
    pub collation: u8,
    pub user: String,
    /// The database: the connection name, for sqlgate.
    pub database: Option<String>,
    pub auth_plugin: Option<String>,
    pub auth_data: Vec<u8>,
}

/// Decodes the client's first packet after the handshake.
pub fn decode_client_hello(
    payload: &[u8],
    offered: CapabilityFlags,
) -> Result<ClientHello, ProtocolError> {
    let bad = |problem| ProtocolError::Malformed {
        what: "handshake response",
        problem,
    };
    let raw = payload.get(..4).ok_or(bad("too short"))?;
    let caps =
        CapabilityFlags::from_bits_truncate(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
    if !caps.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
        return Err(bad("the client does not speak protocol 4.1"));
    }
    if payload.len() == 32 && caps.contains(CapabilityFlags::CLIENT_SSL) {
        return Ok(ClientHello::SslRequest { capabilities: caps });
    }
    let mut buf = ParseBuf(payload);
    let response: HandshakeResponse<'_> = buf.parse(()).map_err(|_| bad("cannot be decoded"))?;
    let text = |bytes: &[u8], what| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::NotUtf8 { what })
    };
    Ok(ClientHello::Response(ClientResponse {
        capabilities: response.capabilities() & offered,
        collation: response.collation(),
        user: text(response.user(), "user name")?,
        database: response
            .db_name()
            .filter(|d| !d.is_empty())
            .map(|d| text(d, "database name"))
            .transpose()?,
        auth_plugin: response
            .auth_plugin()
            .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned()),
        auth_data: response.scramble_buf().to_vec(),
    }))
}

/// An ERR packet payload.
pub fn err(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + message.len());
    out.push(0xff);
    out.extend_from_slice(&code.code.to_le_bytes());
    out.push(b'#');
    out.extend_from_slice(code.sqlstate.as_bytes());
    out.extend_from_slice(message.as_bytes());
    out
}

/// An OK packet payload with the given status flags (no tracking data).
pub fn ok(status: u16) -> Vec<u8> {
    let mut out = vec![0, 0, 0];
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// An AuthSwitchRequest payload.
pub fn auth_switch(plugin: &str, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0xfe];
    out.extend_from_slice(plugin.as_bytes());
    out.push(0);
    out.extend_from_slice(data);
    out
}

/// An AuthMoreData payload (`caching_sha2_password`: `[4]` asks for full authentication).
pub fn auth_more_data(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x01];
    out.extend_from_slice(data);
    out
}

/// The password in a clear-text auth answer, without its terminating NUL.
pub fn clear_password(payload: &[u8]) -> &[u8] {
    match payload {
        [head @ .., 0] => head,
        all => all,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_hello_parses_as_a_server_hello() {
        let hello = server_hello("10.11.0-MariaDB-sqlgate", 7, &[1; 20], true);
        let parsed: HandshakePacket<'_> = ParseBuf(&hello).parse(()).unwrap();
        assert_eq!(parsed.connection_id(), 7);
        assert!(parsed.capabilities().contains(CapabilityFlags::CLIENT_SSL));
        assert!(!parsed
            .capabilities()
            .contains(CapabilityFlags::CLIENT_LOCAL_FILES));
        assert_eq!(parsed.nonce(), vec![1; 20]);
    }

    #[test]
    fn ssl_requests_and_responses_are_told_apart() {
        let mut ssl = Vec::new();
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41 | CapabilityFlags::CLIENT_SSL;
        ssl.extend_from_slice(&caps.bits().to_le_bytes());
        ssl.extend_from_slice(&[0; 28]);
        assert!(matches!(
            decode_client_hello(&ssl, offered_capabilities(true)),
            Ok(ClientHello::SslRequest { .. })
        ));
        assert!(decode_client_hello(&[0, 0, 0, 0], offered_capabilities(true)).is_err());
        assert!(decode_client_hello(&ssl[..20], offered_capabilities(true)).is_err());
    }
}
