//! Postgres wire protocol for sqlgate, without IO.
//!
//! This crate turns bytes into the few typed things the gateway has to decide on and
//! back into bytes; it never touches a socket, a token or a policy. The session layer
//! in the `sqlgate` crate owns the sockets and calls in here:
//!
//! * [`frame`]: splits a byte stream into whole messages (tag + length + body) with a
//!   size limit, so the relay can forward upstream traffic untouched.
//! * [`startup`]: the untagged first packets a client sends (SSLRequest, GSSENCRequest,
//!   CancelRequest, StartupMessage).
//! * [`frontend`]: strict decoding of the client messages whose content matters
//!   (Query, Parse, PasswordMessage). Strict means: exact bounds, valid UTF-8 or an
//!   error, never a lossy conversion — the text the gateway classifies must be the
//!   text the server executes.
//! * [`backend`]: the messages the gateway itself sends to clients (errors, auth
//!   requests, key data), and inspection of upstream messages it must observe.
//! * [`upstream`]: the gateway's own login to the upstream server (trust, cleartext,
//!   md5, SCRAM-SHA-256) as a sans-IO state machine.
//!
//! Encoding of backend messages uses `pgwire`'s codec; upstream login uses
//! `postgres-protocol` (the SCRAM client of tokio-postgres). Client-side decoding is
//! our own because `pgwire` decodes strings lossily (`from_utf8_lossy`) and can panic
//! on truncated bodies, neither of which a firewall can afford.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod sqlstate;
pub mod startup;
pub mod upstream;

/// Errors from decoding client or server bytes. Every variant means "stop and refuse":
/// the session layer turns them into a protocol error for the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message length {len} is invalid (must be between {min} and {max} bytes)")]
    BadLength { len: i64, min: usize, max: usize },
    #[error("message '{tag}' is {len} bytes, over the limit of {max} bytes")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("malformed {what} message: {problem}")]
    Malformed {
        what: &'static str,
        problem: &'static str,
    },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
}
