//! Message framing: a tag byte, a big-endian `i32` length that counts itself, a body.
//!
//! [`split_frame`] takes one complete message off the front of a buffer without copying
//! it, so a relay can forward the original bytes (`Frame::raw`) after looking at the
//! tag and, where needed, the body. Lengths are checked before any buffering happens:
//! a peer announcing a 2 GB message is refused at the header, not after reading it.

use bytes::{Buf, BytesMut};

use crate::ProtocolError;

/// Bytes in a tagged header: the tag and the length.
pub const HEADER_LEN: usize = 5;

/// Most memory reserved at once for a message still arriving.
const RESERVE_STEP: usize = 64 * 1024;

/// One whole protocol message, as it came off the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The message type byte (`Q`, `P`, `E`, `Z`, ...).
    pub tag: u8,
    /// The whole message: tag, length and body, ready to forward unchanged.
    pub raw: BytesMut,
}

impl Frame {
    /// The message body, after the tag and the length.
    pub fn body(&self) -> &[u8] {
        &self.raw[HEADER_LEN..]
    }
}

/// Takes one complete message off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (and reserves room for them), or an
/// error when the announced length is negative, shorter than the header, or larger
/// than `max_len` bytes of body.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let announced = (&buf[1..HEADER_LEN]).get_i32();
    if announced < 4 {
        return Err(ProtocolError::BadLength {
            len: i64::from(announced),
            min: 4,
            max: max_len + 4,
        });
    }
    // `announced` is positive and counts the 4 length bytes, not the tag.
    let body_len = announced as usize - 4;
    if body_len > max_len {
        return Err(ProtocolError::TooLarge {
            tag: tag as char,
            len: body_len,
            max: max_len,
        });
    }
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        // Grow towards the announced size a step at a time: a peer that announces a
        // large message and then sends nothing must not make us allocate it up front.
        buf.reserve((total - buf.len()).min(RESERVE_STEP));
        return Ok(None);
    }
    Ok(Some(Frame {
        tag,
        raw: buf.split_to(total),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whole_messages_and_waits_for_partial_ones() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0bSELECT\0Z\0\0"[..]);
        let frame = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(frame.tag, b'Q');
        assert_eq!(frame.body(), b"SELECT\0");
        assert!(split_frame(&mut buf, 100).unwrap().is_none());
        assert_eq!(&buf[..], b"Z\0\0");
    }

    #[test]
    fn refuses_bad_and_oversized_lengths() {
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(matches!(
            split_frame(&mut buf, 100),
            Err(ProtocolError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&b"Q\0\0\x10\0"[..]);
        assert!(matches!(
            split_frame(&mut buf, 100),
            Err(ProtocolError::TooLarge { tag: 'Q', .. })
        ));
    }
}
