//! Messages the gateway sends to clients, and inspection of upstream messages.
//!
//! The gateway speaks as a server during startup (authentication request, key data,
//! errors) and whenever it refuses something. Those messages are encoded with
//! `pgwire`'s codec. In the relay, the only upstream messages it reads are
//! ErrorResponse (to recognise the errors it provoked itself) and ReadyForQuery
//! (transaction status); [`ErrorFields::parse`] and [`ready_status`] read those.

use bytes::{BufMut, BytesMut};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;

pub const AUTHENTICATION: u8 = b'R';
pub const ERROR_RESPONSE: u8 = b'E';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const PARAMETER_STATUS: u8 = b'S';
pub const DATA_ROW: u8 = b'D';
/// CopyData: one row of a `COPY ... TO STDOUT` (the server sends one per row).
pub const COPY_DATA: u8 = b'd';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const ROW_DESCRIPTION: u8 = b'T';
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
pub const PORTAL_SUSPENDED: u8 = b's';

/// Severity of an error the gateway reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error as a Postgres client shows it: severity, SQLSTATE, message, optional
/// detail and hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            ..PgError::error(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends this error as an ErrorResponse message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut fields = vec![
            (b'S', self.severity.as_str().to_owned()),
            (b'V', self.severity.as_str().to_owned()),
            (b'C', self.code.to_owned()),
            (b'M', strip_nul(&self.message)),
        ];
        if let Some(detail) = &self.detail {
            fields.push((b'D', strip_nul(detail)));
        }
        if let Some(hint) = &self.hint {
            fields.push((b'H', strip_nul(hint)));
        }
        // Encoding only fails for messages over 1 GB; ours are a few hundred bytes.
        let _ = ErrorResponse::new(fields).encode(out);
    }
}

fn strip_nul(s: &str) -> String {
    s.replace('\0', "")
}

/// AuthenticationCleartextPassword: asks the client for its password (the token).
pub fn auth_cleartext(out: &mut BytesMut) {
    let _ = Authentication::CleartextPassword.encode(out);
}

/// AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    let _ = Authentication::Ok.encode(out);
}

/// BackendKeyData with the gateway's own process id and secret (protocol 3.0 form).
pub fn backend_key_data(pid: i32, secret: i32, out: &mut BytesMut) {
    let _ = BackendKeyData::new(pid, SecretKey::I32(secret)).encode(out);
}

/// ParameterStatus.
pub fn parameter_status(name: &str, value: &str, out: &mut BytesMut) {
    let _ = ParameterStatus::new(name.to_owned(), value.to_owned()).encode(out);
}

/// NegotiateProtocolVersion: the newest minor version we speak (0) and the protocol
/// options (`_pq_.*` parameters) we did not recognise.
/// Decodes a ParameterStatus body: the setting's name and value. `None` if the body is
/// not two NUL-terminated UTF-8 strings.
pub fn decode_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut fields = body.split(|b| *b == 0);
    let name = std::str::from_utf8(fields.next()?).ok()?;
    let value = std::str::from_utf8(fields.next()?).ok()?;
    // Exactly two terminated strings: "name\0value\0" splits into name, value, "".
    match (fields.next(), fields.next()) {
        (Some(b""), None) => Some((name, value)),
        _ => None,
    }
}

pub fn negotiate_protocol_version(unrecognised: &[&str], out: &mut BytesMut) {
    let body: usize = 8 + unrecognised.iter().map(|o| o.len() + 1).sum::<usize>();
    out.put_u8(b'v');
    out.put_i32(4 + body as i32);
    out.put_i32(0);
    out.put_i32(unrecognised.len() as i32);
    for option in unrecognised {
        out.put_slice(option.as_bytes());
        out.put_u8(0);
    }
}

/// The transaction status byte of a ReadyForQuery body (`I`, `T` or `E`).
pub fn ready_status(body: &[u8]) -> Option<u8> {
    match body {
        [status] => Some(*status),
        _ => None,
    }
}

/// The row count of a CommandComplete body (`SELECT 5`, `INSERT 0 5`, `FETCH 5`):
/// its last word, when that is a number.
pub fn command_complete_rows(body: &[u8]) -> Option<u64> {
    let tag = body.strip_suffix(b"\0")?;
    let last = tag.rsplit(|b| *b == b' ').next()?;
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// The fields of an upstream ErrorResponse or NoticeResponse the gateway reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    /// Keeps one field of an ErrorResponse (others are skipped, as the protocol says).
    fn set(&mut self, kind: u8, text: String) {
        match kind {
            b'V' => self.severity = text,
            b'S' if self.severity.is_empty() => self.severity = text,
            b'C' => self.code = text,
            b'M' => self.message = text,
            _ => {}
        }
    }

    /// The fields found in the first part of an ErrorResponse body (one too large to
    /// hold): the code and as much of the message as arrived.
    pub fn parse_prefix(body: &[u8]) -> ErrorFields {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        while let Some((&kind, after)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
            let text = String::from_utf8_lossy(&after[..end]).into_owned();
            fields.set(kind, text);
            rest = after.get(end + 1..).unwrap_or_default();
        }
        fields
    }

    /// Reads an ErrorResponse body: (type byte, NUL-terminated text)*, then a 0 byte.
    /// Unknown field types are skipped, as the protocol requires.
    pub fn parse(body: &[u8]) -> Option<ErrorFields> {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        loop {
            let (&kind, after) = rest.split_first()?;
            if kind == 0 {
                return Some(fields);
            }
            let end = after.iter().position(|&b| b == 0)?;
            let text = String::from_utf8_lossy(&after[..end]).into_owned();
            fields.set(kind, text);
            rest = &after[end + 1..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split_frame;

    #[test]
    fn command_complete_rows_reads_the_last_number() {
        assert_eq!(command_complete_rows(b"SELECT 5\0"), Some(5));
        assert_eq!(command_complete_rows(b"INSERT 0 7\0"), Some(7));
        assert_eq!(command_complete_rows(b"BEGIN\0"), None);
        assert_eq!(command_complete_rows(b"SELECT 5"), None);
    }

    #[test]
    fn error_round_trips_through_the_codec() {
        let mut out = BytesMut::new();
        PgError::error("42501", "INSERT is not allowed")
            .with_hint("read-only")
            .encode(&mut out);
        let frame = split_frame(&mut out, 1000).unwrap().unwrap();
        assert_eq!(frame.tag, ERROR_RESPONSE);
        let fields = ErrorFields::parse(frame.body()).unwrap();
        assert_eq!(fields.code, "42501");
        assert_eq!(fields.message, "INSERT is not allowed");
        assert_eq!(fields.severity, "ERROR");
    }
}
