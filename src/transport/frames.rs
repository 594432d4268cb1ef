//! Sans-IO decoder of client WebSocket frames (RFC 6455 §5), over a buffer
//! the caller owns.
//!
//! The socket reader owns its input buffer so that it can *give it back*
//! while the socket is idle: it waits for readability holding no buffer and
//! allocates one only when bytes arrive (see [`super::websocket`]). That is
//! why frames are decoded here instead of by fastwebsockets' reader, which
//! keeps an 8 KiB buffer per socket for the socket's whole life.
//!
//! # Contract
//! * [`decode`] looks at the front of `buf`: it returns a whole frame and
//!   removes exactly its bytes, or [`Decoded::Need`] with the total number
//!   of bytes the frame needs (so the caller reserves once), leaving `buf`
//!   untouched. It never reads past the frame.
//! * Client frames must be masked (§5.1), use no reserved bits (§5.2, no
//!   extensions are negotiated) and a known opcode; control frames are not
//!   fragmented and carry at most 125 bytes (§5.5). Any of these → a
//!   [`FrameError`], and the caller closes with 1002.
//! * A frame longer than `max` bytes is refused from its header alone, before
//!   any of its payload is buffered ([`FrameError::TooBig`] → 1009).
//! * Payloads are unmasked in place and handed out as [`Bytes`] split off the
//!   caller's buffer (no copy).
//! * Close frames are validated by [`check_close`]: empty, or a status code a
//!   peer may send followed by UTF-8.

use bytes::{Buf, Bytes, BytesMut};

/// Longest frame header a client sends: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: UTF-8 data.
    Text,
    /// 0x2: binary data.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl Op {
    fn from_bits(bits: u8) -> Option<Op> {
        Some(match bits {
            0x0 => Op::Continuation,
            0x1 => Op::Text,
            0x2 => Op::Binary,
            0x8 => Op::Close,
            0x9 => Op::Ping,
            0xA => Op::Pong,
            _ => return None,
        })
    }

    /// Close, ping or pong.
    pub fn is_control(self) -> bool {
        matches!(self, Op::Close | Op::Ping | Op::Pong)
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    /// The opcode.
    pub op: Op,
    /// The unmasked payload.
    pub payload: Bytes,
}

/// What [`decode`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame (its bytes are gone from the buffer).
    Frame(Frame),
    /// Not a whole frame yet: the buffer must hold at least this many bytes.
    Need(usize),
}

/// Why a client frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV1–3 set without a negotiated extension.
    #[error("reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    BadOpcode(u8),
    /// A client frame without a mask.
    #[error("unmasked client frame")]
    Unmasked,
    /// A control frame with `fin` clear or more than 125 bytes.
    #[error("bad control frame")]
    BadControl,
    /// Longer than the limit (decided from the header).
    #[error("frame of {0} bytes is over the limit")]
    TooBig(u64),
    /// A close frame with a 1-byte payload or a code a peer may not send.
    #[error("bad close frame")]
    BadClose,
    /// A close frame whose reason is not UTF-8.
    #[error("close reason is not UTF-8")]
    CloseReasonUtf8,
}

/// Decode the frame at the front of `buf` (see the module contract).
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Decoded, FrameError> {
    let Some(&[b0, b1]) = buf.get(..2) else {
        return Ok(Decoded::Need(2));
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let op = Op::from_bits(b0 & 0x0F).ok_or(FrameError::BadOpcode(b0 & 0x0F))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (extra, short) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let header = 2 + extra + 4;
    if buf.len() < header {
        return Ok(Decoded::Need(header));
    }
    let len = match short {
        Some(n) => n,
        None if extra == 2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        None => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            u64::from_be_bytes(b)
        }
    };
    if op.is_control() && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    let len = match usize::try_from(len) {
        Ok(n) if n <= max => n,
        _ => return Err(FrameError::TooBig(len)),
    };
    let total = header + len;
    if buf.len() < total {
        return Ok(Decoded::Need(total));
    }
    let mask = [
        buf[header - 4],
        buf[header - 3],
        buf[header - 2],
        buf[header - 1],
    ];
    buf.advance(header);
    let mut payload = buf.split_to(len);
    fastwebsockets::unmask(&mut payload, mask);
    Ok(Decoded::Frame(Frame {
        fin,
        op,
        payload: payload.freeze(),
    }))
}

/// Check a close frame's payload (RFC 6455 §5.5.1, §7.4).
pub fn check_close(payload: &[u8]) -> Result<(), FrameError> {
    match payload {
        [] => Ok(()),
        [_] => Err(FrameError::BadClose),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(FrameError::BadClose);
            }
            std::str::from_utf8(reason)
                .map(|_| ())
                .map_err(|_| FrameError::CloseReasonUtf8)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A masked client frame.
    fn client(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | op];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn frame(d: Decoded) -> Frame {
        match d {
            Decoded::Frame(f) => f,
            Decoded::Need(n) => panic!("needs {n}"),
        }
    }

    #[test]
    fn decodes_each_length_form_and_leaves_the_rest() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut bytes = client(true, 2, &payload, [1, 2, 3, 4]);
            bytes.extend_from_slice(b"next");
            let mut buf = BytesMut::from(&bytes[..]);
            let f = frame(decode(&mut buf, 1 << 20).unwrap());
            assert_eq!((f.fin, f.op), (true, Op::Binary));
            assert_eq!(&f.payload[..], &payload[..], "len {len}");
            assert_eq!(&buf[..], b"next");
        }
    }

    #[test]
    fn partial_input_asks_for_the_whole_frame_and_consumes_nothing() {
        let bytes = client(false, 1, &[b'a'; 300], [9, 8, 7, 6]);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            let need = match decode(&mut buf, 1 << 20).unwrap() {
                Decoded::Need(n) => n,
                Decoded::Frame(_) => panic!("frame from {cut} bytes"),
            };
            assert!(need > cut && need <= bytes.len(), "cut {cut} need {need}");
            assert_eq!(buf.len(), cut);
        }
        // Once the header is in, the answer is exact.
        let mut buf = BytesMut::from(&bytes[..8]);
        assert_eq!(
            decode(&mut buf, 1 << 20).unwrap(),
            Decoded::Need(bytes.len())
        );
    }

    #[test]
    fn refuses_what_a_client_may_not_send() {
        let decode_one = |b: &[u8], max| decode(&mut BytesMut::from(b), max);
        let mut unmasked = client(true, 1, b"hi", [0; 4]);
        unmasked[1] &= 0x7F;
        assert_eq!(decode_one(&unmasked, 100), Err(FrameError::Unmasked));
        let mut rsv = client(true, 1, b"hi", [1; 4]);
        rsv[0] |= 0x40;
        assert_eq!(decode_one(&rsv, 100), Err(FrameError::ReservedBits));
        assert_eq!(
            decode_one(&client(true, 3, b"", [1; 4]), 100),
            Err(FrameError::BadOpcode(3))
        );
        assert_eq!(
            decode_one(&client(false, 9, b"", [1; 4]), 100),
            Err(FrameError::BadControl)
        );
        assert_eq!(
            decode_one(&client(true, 9, &[0; 126], [1; 4]), 1000),
            Err(FrameError::BadControl)
        );
        // Too big is known from the header alone.
        let big = client(true, 2, &[0; 1000], [1; 4]);
        assert_eq!(decode_one(&big[..8], 999), Err(FrameError::TooBig(1000)));
        assert!(matches!(decode_one(&big, 1000), Ok(Decoded::Frame(_))));
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode_one(&huge, 1 << 30),
            Err(FrameError::TooBig(u64::MAX))
        );
    }

    #[test]
    fn close_payloads() {
        assert!(check_close(b"").is_ok());
        assert!(check_close(&[0x03]).is_err());
        assert!(check_close(&[0x03, 0xE8]).is_ok());
        assert!(check_close(&[0x03, 0xE8, b'o', b'k']).is_ok());
        assert_eq!(
            check_close(&[0x03, 0xE8, 0xFF]),
            Err(FrameError::CloseReasonUtf8)
        );
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert!(check_close(&bad.to_be_bytes()).is_err(), "{bad}");
        }
        for good in [1000u16, 1001, 1011, 3000, 4999] {
            assert!(check_close(&good.to_be_bytes()).is_ok(), "{good}");
        }
    }

    proptest! {
        #[test]
        fn any_split_of_a_frame_stream_decodes_the_same(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
            mask in any::<[u8; 4]>(),
            step in 1usize..64,
        ) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| client(true, 2, p, mask)).collect();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Decoded::Frame(f) = decode(&mut buf, 1 << 20).unwrap() {
                    got.push(f.payload.to_vec());
                }
            }
            prop_assert_eq!(got, payloads);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode(&mut buf, 1 << 10);
            let _ = check_close(&bytes);
        }
    }
}
