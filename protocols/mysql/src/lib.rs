//! MySQL/MariaDB wire protocol for sqlgate, without IO.
//!
//! As `sqlgate-postgres` does for Postgres, this crate turns bytes into the few typed
//! things the gateway decides on and back into bytes; it never touches a socket, a
//! token or a policy. The session layer (`sqlgate::session::mysql`) owns the sockets.
//!
//! * [`frame`]: splits a byte stream into logical packets (3-byte length, sequence
//!   id, 16 MiB continuation chunks) with a size limit, and writes them back.
//! * [`command`]: one type per client command (`COM_QUERY`, `COM_STMT_EXECUTE`, ...),
//!   decoded strictly: the text the gateway classifies is the text the server runs.
//! * [`response`]: a state machine that follows the server's answer to one command
//!   (OK, ERR, result sets, multi-results, prepare answers) so the relay knows when
//!   the answer is complete, what it said, and what session state it reported.
//! * [`handshake`]: the gateway's own HandshakeV10 to clients, their responses, the
//!   auth switch to `mysql_clear_password`, OK/ERR packets the gateway sends.
//! * [`upstream`]: the gateway's login to the upstream server (`mysql_native_password`,
//!   `caching_sha2_password` fast and full paths) as a sans-IO state machine.
//! * [`params`]: the bound parameters of a `COM_STMT_EXECUTE` as text, for the audit
//!   trail, read exactly as the server reads them (or refused).
//! * [`codes`]: named server error codes and SQLSTATEs.
//!
//! Packet layouts come from `mysql_common` (the crate `mysql_async` is built on):
//! handshake packets, OK/ERR parsing with session-state tracking, scrambles, RSA.

pub mod codes;
pub mod command;
pub mod frame;
pub mod handshake;
pub mod params;
pub mod response;
pub mod upstream;

pub use mysql_common::constants::{CapabilityFlags, StatusFlags};
pub use params::{
    decode_execute_params, decode_execute_params_with_long_data, ParamType, ParamTypes, ParamsError,
};

/// Errors from decoding client or server bytes. Every variant means "stop and refuse".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("packet is {len} bytes, over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("packet out of order: sequence id {got}, expected {expected}")]
    Sequence { got: u8, expected: u8 },
    #[error("malformed {what}: {problem}")]
    Malformed {
        what: &'static str,
        problem: &'static str,
    },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("unexpected {what} from the server")]
    Unexpected { what: &'static str },
}

/// Reads a length-encoded integer at the start of `buf`: (value, bytes used).
pub fn lenenc_int(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let n = match first {
        0..=0xfa => return Some((u64::from(first), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = buf.get(1..1 + n)?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    Some((v, 1 + n))
}

/// Appends a length-encoded integer.
pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xfa => out.push(v as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_round_trips() {
        for v in [
            0u64,
            250,
            251,
            0xffff,
            0x1_0000,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, v);
            assert_eq!(lenenc_int(&out), Some((v, out.len())));
        }
        assert_eq!(lenenc_int(&[0xff]), None);
        assert_eq!(lenenc_int(&[0xfc, 1]), None);
    }
}
