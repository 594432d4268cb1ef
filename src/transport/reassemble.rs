//! Reassembly of fragmented WebSocket messages with a hard size bound, pure.
//!
//! fastwebsockets' `FragmentCollectorRead` checks each frame against the
//! maximum but not the sum of fragments, so a client could grow a message
//! without bound; this collector enforces `max` on the whole message.

use bytes::{Bytes, BytesMut};

/// A complete inbound data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InMessage {
    /// Text (true) or binary.
    pub text: bool,
    /// The payload.
    pub data: Bytes,
}

/// Why a message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReassembleError {
    /// The message exceeds the configured maximum (close 1009).
    #[error("message too big")]
    TooBig,
    /// A continuation without a start, or a new start inside a message (close 1002).
    #[error("bad fragment sequence")]
    BadSequence,
    /// A text message that is not UTF-8 (close 1007).
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

/// Frame kinds the collector sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Opcode 0x1.
    Text,
    /// Opcode 0x2.
    Binary,
    /// Opcode 0x0.
    Continuation,
}

/// Collects fragments into messages of at most `max` bytes.
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    partial: Option<(bool, BytesMut)>,
}

impl Reassembler {
    /// A collector for messages of at most `max` bytes.
    pub fn new(max: usize) -> Reassembler {
        Reassembler { max, partial: None }
    }

    /// Feed one data frame; returns a message when one is complete.
    pub fn push(
        &mut self,
        kind: Kind,
        fin: bool,
        payload: Bytes,
    ) -> Result<Option<InMessage>, ReassembleError> {
        match (kind, self.partial.as_mut()) {
            (Kind::Text | Kind::Binary, Some(_)) => Err(ReassembleError::BadSequence),
            (Kind::Continuation, None) => Err(ReassembleError::BadSequence),
            (Kind::Text | Kind::Binary, None) => {
                if payload.len() > self.max {
                    return Err(ReassembleError::TooBig);
                }
                let text = kind == Kind::Text;
                if fin {
                    return finish(text, payload).map(Some);
                }
                let mut buf = BytesMut::with_capacity(payload.len());
                buf.extend_from_slice(&payload);
                self.partial = Some((text, buf));
                Ok(None)
            }
            (Kind::Continuation, Some((_, buf))) => {
                if buf.len() + payload.len() > self.max {
                    self.partial = None;
                    return Err(ReassembleError::TooBig);
                }
                buf.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                match self.partial.take() {
                    Some((text, buf)) => finish(text, buf.freeze()).map(Some),
                    None => Err(ReassembleError::BadSequence),
                }
            }
        }
    }
}

fn finish(text: bool, data: Bytes) -> Result<InMessage, ReassembleError> {
    if text && std::str::from_utf8(&data).is_err() {
        return Err(ReassembleError::InvalidUtf8);
    }
    Ok(InMessage { text, data })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn whole_and_fragmented() {
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(Kind::Text, true, b(b"hi")).unwrap().unwrap().data,
            b(b"hi")
        );
        assert_eq!(r.push(Kind::Binary, false, b(b"ab")).unwrap(), None);
        assert_eq!(r.push(Kind::Continuation, false, b(b"cd")).unwrap(), None);
        let m = r.push(Kind::Continuation, true, b(b"e")).unwrap().unwrap();
        assert_eq!((m.text, m.data), (false, b(b"abcde")));
    }

    #[test]
    fn bound_applies_to_the_sum() {
        let mut r = Reassembler::new(4);
        assert_eq!(r.push(Kind::Binary, false, b(b"abc")).unwrap(), None);
        assert_eq!(
            r.push(Kind::Continuation, true, b(b"de")),
            Err(ReassembleError::TooBig)
        );
        assert_eq!(
            r.push(Kind::Binary, true, b(b"abcde")),
            Err(ReassembleError::TooBig)
        );
    }

    #[test]
    fn utf8_split_across_fragments() {
        let mut r = Reassembler::new(100);
        let s = "é".as_bytes();
        assert_eq!(r.push(Kind::Text, false, b(&s[..1])).unwrap(), None);
        assert!(r
            .push(Kind::Continuation, true, b(&s[1..]))
            .unwrap()
            .is_some());
        assert_eq!(
            r.push(Kind::Text, true, b(&[0xff])),
            Err(ReassembleError::InvalidUtf8)
        );
    }

    #[test]
    fn bad_sequences() {
        let mut r = Reassembler::new(100);
        assert_eq!(
            r.push(Kind::Continuation, true, b(b"x")),
            Err(ReassembleError::BadSequence)
        );
        r.push(Kind::Text, false, b(b"x")).unwrap();
        assert_eq!(
            r.push(Kind::Text, true, b(b"y")),
            Err(ReassembleError::BadSequence)
        );
    }
}
