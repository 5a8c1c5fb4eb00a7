//! The untagged packets that open a connection: SSLRequest, GSSENCRequest,
//! CancelRequest and StartupMessage.
//!
//! Each is a big-endian `i32` length (counting itself) followed by a `i32` code and a
//! payload. [`decode_initial`] reads one of them strictly: startup parameters must be
//! valid UTF-8, NUL-terminated, and the list must end with an empty name.

use bytes::{Buf, BytesMut};

use crate::ProtocolError;

/// Longest startup packet accepted (Postgres itself allows 10,000 bytes).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// What a client sent as its first (or, after a refused encryption request, next)
/// packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialPacket {
    /// Asks for TLS; answered with a single `S` or `N` byte.
    SslRequest,
    /// Asks for GSSAPI encryption; sqlgate always answers `N`.
    GssEncRequest,
    /// Cancels the running query of another session, identified by the key data the
    /// gateway handed out.
    Cancel { pid: i32, secret: Vec<u8> },
    /// Opens a session.
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and parameters in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of parameter `name`, if the client sent it.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one initial packet off the front of `buf`, or `Ok(None)` if incomplete.
pub fn decode_initial(buf: &mut BytesMut) -> Result<Option<InitialPacket>, ProtocolError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = (&buf[0..4]).get_i32();
    if len < 8 || len as usize > MAX_STARTUP_LEN {
        return Err(ProtocolError::BadLength {
            len: i64::from(len),
            min: 8,
            max: MAX_STARTUP_LEN,
        });
    }
    let len = len as usize;
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    let code = packet.get_i32();
    let decoded = match code {
        SSL_REQUEST_CODE => InitialPacket::SslRequest,
        GSSENC_REQUEST_CODE => InitialPacket::GssEncRequest,
        CANCEL_REQUEST_CODE => {
            // pid, then a 4-byte key (protocol 3.0) or up to 256 bytes (3.2).
            if packet.len() < 8 || packet.len() > 4 + 256 {
                return Err(ProtocolError::Malformed {
                    what: "CancelRequest",
                    problem: "wrong length",
                });
            }
            let pid = packet.get_i32();
            InitialPacket::Cancel {
                pid,
                secret: packet.to_vec(),
            }
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedVersion { major, minor });
            }
            InitialPacket::Startup(StartupMessage {
                major,
                minor,
                params: decode_params(&packet)?,
            })
        }
    };
    Ok(Some(decoded))
}

fn decode_params(mut body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut body, "startup parameter name")?;
        if name.is_empty() {
            if !body.is_empty() {
                return Err(ProtocolError::Malformed {
                    what: "StartupMessage",
                    problem: "bytes after the parameter list",
                });
            }
            return Ok(params);
        }
        let value = take_cstr(&mut body, "startup parameter value")?;
        // The server applies the last of repeated names; a checker reading the first
        // would check the wrong one. Nothing legitimate repeats a parameter.
        if params
            .iter()
            .any(|(n, _): &(String, String)| n.eq_ignore_ascii_case(name))
        {
            return Err(ProtocolError::Malformed {
                what: "StartupMessage",
                problem: "a parameter is given twice",
            });
        }
        params.push((name.to_owned(), value.to_owned()));
    }
}

/// Takes a NUL-terminated UTF-8 string off the front of `body`.
pub(crate) fn take_cstr<'a>(
    body: &mut &'a [u8],
    what: &'static str,
) -> Result<&'a str, ProtocolError> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Malformed {
            what,
            problem: "missing NUL terminator",
        })?;
    let text = std::str::from_utf8(&body[..end]).map_err(|_| ProtocolError::NotUtf8 { what })?;
    *body = &body[end + 1..];
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn packet(code: i32, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(8 + payload.len() as i32);
        b.put_i32(code);
        b.put_slice(payload);
        b
    }

    #[test]
    fn decodes_startup_parameters() {
        let mut b = packet(196_608, b"user\0agent\0database\0demo\0\0");
        let Some(InitialPacket::Startup(s)) = decode_initial(&mut b).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(s.param("user"), Some("agent"));
        assert_eq!(s.param("database"), Some("demo"));
    }

    #[test]
    fn refuses_unterminated_or_non_utf8_parameters() {
        let mut b = packet(196_608, b"user\0agent");
        assert!(decode_initial(&mut b).is_err());
        let mut b = packet(196_608, b"user\0\xff\0\0");
        assert!(decode_initial(&mut b).is_err());
    }

    #[test]
    fn decodes_ssl_and_cancel() {
        let mut b = packet(SSL_REQUEST_CODE, b"");
        assert_eq!(
            decode_initial(&mut b).unwrap(),
            Some(InitialPacket::SslRequest)
        );
        let mut b = packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1, 2, 3, 4]);
        assert_eq!(
            decode_initial(&mut b).unwrap(),
            Some(InitialPacket::Cancel {
                pid: 7,
                secret: vec![1, 2, 3, 4]
            })
        );
    }
}
