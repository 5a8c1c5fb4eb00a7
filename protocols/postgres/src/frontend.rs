//! Strict decoding of the client messages the gateway must read.
//!
//! Only three message bodies carry content the gateway decides on: Query (`Q`), Parse
//! (`P`) and PasswordMessage (`p`). Everything else in the extended protocol (Bind,
//! Describe, Execute, Close, Sync, Flush) only refers to statements that already
//! passed a Parse, so the relay forwards those frames as they are; it decodes Bind,
//! Execute and Close only to tell the audit trail which statement ran with which
//! parameters.

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

/// A Bind message: which prepared statement a portal runs, with which parameters.
#[derive(Debug, PartialEq, Eq)]
pub struct BindMessage<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    /// Each parameter's bytes (`None`: NULL) and whether they are in binary format.
    pub params: Vec<(Option<&'a [u8]>, bool)>,
}

/// Decodes a Bind message body: portal, statement, parameter format codes, parameter
/// values, result format codes.
pub fn bind_message(body: &[u8]) -> Result<BindMessage<'_>, ProtocolError> {
    let malformed = |problem| ProtocolError::Malformed {
        what: "Bind",
        problem,
    };
    let mut rest = body;
    let portal = take_cstr(&mut rest, "Bind portal name")?;
    let statement = take_cstr(&mut rest, "Bind statement name")?;
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Some(head)
    }
    fn int16(rest: &mut &[u8]) -> Option<i16> {
        take(rest, 2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    let short = || malformed("shorter than its counts say");
    let formats = int16(&mut rest).ok_or_else(short)?;
    if formats < 0 {
        return Err(malformed("negative format count"));
    }
    let formats: Vec<bool> = (0..formats)
        .map(|_| int16(&mut rest).map(|f| f == 1).ok_or_else(short))
        .collect::<Result<_, _>>()?;
    let n = int16(&mut rest).ok_or_else(short)?;
    if n < 0 || (formats.len() > 1 && formats.len() != n as usize) {
        return Err(malformed("parameter count does not match its format codes"));
    }
    let mut params = Vec::with_capacity((n as usize).min(rest.len() / 4));
    for i in 0..n as usize {
        let len = take(&mut rest, 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(short)?;
        let value = match len {
            -1 => None,
            len if len < 0 => return Err(malformed("negative parameter length")),
            len => Some(take(&mut rest, len as usize).ok_or_else(short)?),
        };
        let binary = match formats.len() {
            0 => false,
            1 => formats[0],
            _ => formats[i],
        };
        params.push((value, binary));
    }
    let results = int16(&mut rest).ok_or_else(short)?;
    if results < 0 || rest.len() != 2 * results as usize {
        return Err(malformed("result format codes do not match their count"));
    }
    Ok(BindMessage {
        portal,
        statement,
        params,
    })
}

/// The portal an Execute message runs.
pub fn execute_portal(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut rest = body;
    let portal = take_cstr(&mut rest, "Execute portal name")?;
    if rest.len() != 4 {
        return Err(ProtocolError::Malformed {
            what: "Execute",
            problem: "missing or extra bytes after the portal name",
        });
    }
    Ok(portal)
}

/// What a Close message closes: `(b'S', name)` a prepared statement, `(b'P', name)` a
/// portal.
pub fn close_target(body: &[u8]) -> Result<(u8, &str), ProtocolError> {
    let Some((&kind, mut rest)) = body.split_first() else {
        return Err(ProtocolError::Malformed {
            what: "Close",
            problem: "empty",
        });
    };
    let name = take_cstr(&mut rest, "Close name")?;
    if !matches!(kind, b'S' | b'P') || !rest.is_empty() {
        return Err(ProtocolError::Malformed {
            what: "Close",
            problem: "not 'S' or 'P' and one name",
        });
    }
    Ok((kind, name))
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
    fn bind_execute_and_close_decode_strictly() {
        let mut buf = bytes::BytesMut::new();
        postgres_protocol::message::frontend::bind(
            "p1",
            "s1",
            [1i16],
            [Some(&b"42"[..]), None],
            |v: Option<&[u8]>, out: &mut bytes::BytesMut| match v {
                Some(v) => {
                    out.extend_from_slice(v);
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            [0i16],
            &mut buf,
        )
        .map_err(|_| "bind")
        .unwrap();
        let body = &buf[5..];
        let bind = bind_message(body).unwrap();
        assert_eq!((bind.portal, bind.statement), ("p1", "s1"));
        assert_eq!(bind.params, vec![(Some(&b"42"[..]), true), (None, true)]);
        for cut in 0..body.len() {
            assert!(bind_message(&body[..cut]).is_err(), "prefix {cut}");
        }
        assert_eq!(execute_portal(b"p1\0\0\0\0\0").unwrap(), "p1");
        assert!(execute_portal(b"p1\0\0").is_err());
        assert_eq!(close_target(b"Ss1\0").unwrap(), (b'S', "s1"));
        assert!(close_target(b"Xs1\0").is_err());
    }

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
