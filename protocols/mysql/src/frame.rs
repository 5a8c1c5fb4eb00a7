//! Packet framing: a 3-byte little-endian length, a sequence id, the payload.
//!
//! A payload of 16 MiB − 1 bytes or more travels as several chunks, each but the last
//! exactly `0xFFFFFF` bytes long, each with the next sequence id; the logical packet
//! ends with the first shorter chunk (possibly empty). [`decode`] reassembles one
//! logical packet, refusing it as soon as its declared size passes the caller's
//! limit (before buffering it), and checks that chunk sequence ids follow each other.
//! [`encode`] writes a payload back as chunks and returns the next sequence id, so a
//! relay that re-frames a packet keeps the numbering its peer expects.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtocolError;

/// Largest chunk; a chunk of this size means "more follows".
pub const MAX_CHUNK: usize = 0xff_ffff;

/// One logical packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of its first chunk.
    pub seq: u8,
    /// How many chunks it took (sequence ids `seq .. seq + chunks`).
    pub chunks: u8,
    pub payload: Bytes,
}

impl Packet {
    /// The sequence id that follows this packet.
    pub fn next_seq(&self) -> u8 {
        self.seq.wrapping_add(self.chunks)
    }

    /// The first payload byte (the packet's "header"), if any.
    pub fn first(&self) -> Option<u8> {
        self.payload.first().copied()
    }
}

/// Takes one whole logical packet off the front of `buf`, or `None` if more bytes are
/// needed. `max` bounds the payload: a larger declared size is an error at once.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, ProtocolError> {
    let mut pos = 0usize;
    let mut total = 0usize;
    let mut chunks = 0u8;
    let first_seq = match buf.get(3) {
        Some(seq) => *seq,
        None => return Ok(None),
    };
    loop {
        let Some(header) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        let expected = first_seq.wrapping_add(chunks);
        if header[3] != expected {
            return Err(ProtocolError::Sequence {
                got: header[3],
                expected,
            });
        }
        total += len;
        if total > max {
            return Err(ProtocolError::TooLarge { len: total, max });
        }
        if buf.len() < pos + 4 + len {
            buf.reserve(pos + 4 + len - buf.len());
            return Ok(None);
        }
        pos += 4 + len;
        chunks = chunks.wrapping_add(1);
        if len < MAX_CHUNK {
            break;
        }
        if chunks == 0 {
            return Err(ProtocolError::Malformed {
                what: "packet",
                problem: "more than 255 continuation chunks",
            });
        }
    }
    let payload = if chunks == 1 {
        let mut whole = buf.split_to(pos);
        whole.advance(4);
        whole.freeze()
    } else {
        let mut joined = BytesMut::with_capacity(total);
        let mut whole = buf.split_to(pos);
        while !whole.is_empty() {
            let len =
                usize::from(whole[0]) | usize::from(whole[1]) << 8 | usize::from(whole[2]) << 16;
            whole.advance(4);
            joined.put_slice(&whole.split_to(len));
        }
        joined.freeze()
    };
    Ok(Some(Packet {
        seq: first_seq,
        chunks,
        payload,
    }))
}

/// Appends `payload` as one logical packet starting at sequence id `seq`; returns the
/// next sequence id.
pub fn encode(seq: u8, payload: &[u8], out: &mut BytesMut) -> u8 {
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_CHUNK);
        out.reserve(4 + n);
        out.put_slice(&(n as u32).to_le_bytes()[..3]);
        out.put_u8(seq);
        out.put_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_CHUNK {
            return seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_including_continuations() {
        for len in [
            0usize,
            1,
            100,
            MAX_CHUNK - 1,
            MAX_CHUNK,
            MAX_CHUNK + 5,
            2 * MAX_CHUNK,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = BytesMut::new();
            let next = encode(7, &payload, &mut buf);
            let packet = decode(&mut buf, 64 << 20).unwrap().unwrap();
            assert_eq!(packet.payload.len(), len);
            assert_eq!(&packet.payload[..], &payload[..]);
            assert_eq!(packet.seq, 7);
            assert_eq!(packet.next_seq(), next);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_input_waits_and_oversize_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        encode(0, b"hello", &mut buf);
        let mut part = BytesMut::from(&buf[..6]);
        assert_eq!(decode(&mut part, 100), Ok(None));
        let mut huge = BytesMut::from(&[0xff, 0xff, 0x7f, 0][..]);
        assert!(matches!(
            decode(&mut huge, 1 << 20),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn continuation_chunks_must_follow_in_sequence() {
        let mut buf = BytesMut::new();
        buf.put_slice(&[0xff, 0xff, 0xff, 3]);
        buf.put_slice(&vec![0u8; MAX_CHUNK]);
        buf.put_slice(&[1, 0, 0, 9, b'x']);
        assert!(matches!(
            decode(&mut buf, 64 << 20),
            Err(ProtocolError::Sequence {
                got: 9,
                expected: 4
            })
        ));
    }
}
