//! Strict decoding of the client messages the gateway must read.
//!
//! Only three message bodies carry content the gateway decides on: Query (`Q`), Parse
//! (`P`) and PasswordMessage (`p`). Everything else in the extended protocol (Bind,
//! Describe, Execute, Close, Sync, Flush) only refers to statements that already
//! passed a Parse, so the relay forwards those frames by tag without decoding them.

use crate::startup::take_cstr;
use crate::ProtocolError;

pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const TERMINATE: u8 = b'X';
pub const PASSWORD: u8 = b'p';
pub const FUNCTION_CALL: u8 = b'F';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';

/// The statement text of a Query message body.
pub fn query_text(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut rest = body;
    let text = take_cstr(&mut rest, "Query text")?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed {
            what: "Query",
            problem: "bytes after the statement text",
        });
    }
    Ok(text)
}

/// The parts of a Parse message the gateway uses.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseMessage<'a> {
    /// Prepared statement name; empty for the unnamed statement.
    pub name: &'a str,
    /// Statement text.
    pub query: &'a str,
}

/// Decodes a Parse message body: name, text, then `i16` count of parameter type OIDs.
pub fn parse_message(body: &[u8]) -> Result<ParseMessage<'_>, ProtocolError> {
    let mut rest = body;
    let name = take_cstr(&mut rest, "Parse statement name")?;
    let query = take_cstr(&mut rest, "Parse statement text")?;
    if rest.len() < 2 {
        return Err(ProtocolError::Malformed {
            what: "Parse",
            problem: "missing parameter type count",
        });
    }
    let count = i16::from_be_bytes([rest[0], rest[1]]);
    if count < 0 || rest.len() != 2 + 4 * count as usize {
        return Err(ProtocolError::Malformed {
            what: "Parse",
            problem: "parameter type list does not match its count",
        });
    }
    Ok(ParseMessage { name, query })
}

/// The password of a PasswordMessage body (the bearer token, for sqlgate).
pub fn password(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut rest = body;
    let text = take_cstr(&mut rest, "password")?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed {
            what: "PasswordMessage",
            problem: "bytes after the password",
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_must_be_one_terminated_utf8_string() {
        assert_eq!(query_text(b"SELECT 1\0").unwrap(), "SELECT 1");
        assert!(query_text(b"SELECT 1").is_err());
        assert!(query_text(b"SELECT 1\0DELETE\0").is_err());
        assert!(query_text(b"SELECT '\xff'\0").is_err());
    }

    #[test]
    fn parse_checks_the_type_list() {
        let ok = parse_message(b"s1\0SELECT $1\0\0\x01\0\0\0\x17").unwrap();
        assert_eq!(
            ok,
            ParseMessage {
                name: "s1",
                query: "SELECT $1"
            }
        );
        assert!(parse_message(b"s1\0SELECT $1\0\0\x02\0\0\0\x17").is_err());
        assert!(parse_message(b"s1\0SELECT 1\0").is_err());
    }
}
