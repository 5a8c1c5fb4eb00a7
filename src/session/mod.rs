//! Sessions: the IO layer that joins a protocol front end to identity, policy and audit.
//!
//! One session per client connection. The protocol crates decode bytes; the session
//! owns the sockets and asks, in order: who is this (identity), may they reach this
//! connection (grant), is this statement allowed (policy) — recording each answer in
//! the audit trail before acting on it.
//!
//! * [`postgres`]: the Postgres front end — client handshake, login, relay.
//! * [`upstream`]: opening and logging in to a Postgres upstream.
//! * [`cancel`]: the gateway's own cancel keys and their mapping to upstream ones.

pub mod cancel;
pub mod postgres;
pub mod upstream;

use std::fmt;

use tokio::io::{AsyncRead, AsyncWrite};

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
    Shutdown,
    ProtocolViolation(String),
    Io(String),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::ClientQuit => f.write_str("client quit"),
            EndReason::ClientClosed => f.write_str("client closed the connection"),
            EndReason::UpstreamClosed => f.write_str("upstream closed the connection"),
            EndReason::GrantExpired => f.write_str("grant expired"),
            EndReason::Shutdown => f.write_str("gateway shutting down"),
            EndReason::ProtocolViolation(m) => write!(f, "protocol violation: {m}"),
            EndReason::Io(m) => write!(f, "i/o error: {m}"),
        }
    }
}
