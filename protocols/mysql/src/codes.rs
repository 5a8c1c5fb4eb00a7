//! Server error codes and SQLSTATEs the gateway sends, by name.
//!
//! Clients and drivers act on the code (retry, re-authenticate, give up), so each
//! denial uses the code a MySQL server would use for the same situation; the message
//! says what sqlgate decided and why.

/// An error code with its SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: u16,
    pub sqlstate: &'static str,
}

const fn code(code: u16, sqlstate: &'static str) -> ErrorCode {
    ErrorCode { code, sqlstate }
}

/// Login refused: bad token, no grant (`ER_ACCESS_DENIED_ERROR`).
pub const ACCESS_DENIED: ErrorCode = code(1045, "28000");
/// A statement denied by policy (`ER_SPECIFIC_ACCESS_DENIED_ERROR`).
pub const STATEMENT_DENIED: ErrorCode = code(1227, "42000");
/// A table denied by policy (`ER_TABLEACCESS_DENIED_ERROR`).
pub const TABLE_DENIED: ErrorCode = code(1142, "42000");
/// A database other than the granted one (`ER_DBACCESS_DENIED_ERROR`).
pub const DATABASE_DENIED: ErrorCode = code(1044, "42000");
/// The statement does not parse (`ER_PARSE_ERROR`).
pub const PARSE_ERROR: ErrorCode = code(1064, "42000");
/// A command the gateway does not forward (`ER_UNKNOWN_COM_ERROR`).
pub const UNKNOWN_COMMAND: ErrorCode = code(1047, "08S01");
/// A prepared statement id the gateway did not allow (`ER_UNKNOWN_STMT_HANDLER`).
pub const UNKNOWN_STATEMENT: ErrorCode = code(1243, "HY000");
/// A packet over the gateway's limit (`ER_NET_PACKET_TOO_LARGE`).
pub const PACKET_TOO_LARGE: ErrorCode = code(1153, "08S01");
/// Malformed packets, bad handshakes (`ER_HANDSHAKE_ERROR`).
pub const HANDSHAKE_ERROR: ErrorCode = code(1043, "08S01");
/// A session cap is reached (`ER_CON_COUNT_ERROR`).
pub const TOO_MANY_CONNECTIONS: ErrorCode = code(1040, "08004");
/// The grant expired, the tripwire fired, a limit ended the session
/// (`ER_CONNECTION_KILLED`).
pub const CONNECTION_KILLED: ErrorCode = code(1927, "70100");
/// A statement stopped at the grant's statement timeout (`ER_STATEMENT_TIMEOUT`).
pub const STATEMENT_TIMEOUT: ErrorCode = code(1969, "70100");
/// A result stopped at the grant's `max_rows` (MariaDB's
/// `ER_QUERY_RESULT_INCOMPLETE`).
pub const ROW_LIMIT: ErrorCode = code(1931, "HY000");
/// The gateway is shutting down (`ER_SERVER_SHUTDOWN`).
pub const SHUTDOWN: ErrorCode = code(1053, "08S01");
/// The gateway cannot serve the request now: audit trail, upstream, parser busy
/// (`ER_UNKNOWN_ERROR` family; MySQL has no better fit).
pub const UNAVAILABLE: ErrorCode = code(1105, "HY000");
/// The client must use TLS (`ER_SECURE_TRANSPORT_REQUIRED`, MySQL 5.7+).
pub const TLS_REQUIRED: ErrorCode = code(3159, "HY000");
/// The client cannot send a clear-text password (`ER_NOT_SUPPORTED_AUTH_MODE`).
pub const AUTH_MODE: ErrorCode = code(1251, "08004");
