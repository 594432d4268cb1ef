//! Message types shared by the serializers.

use bytes::Bytes;

use super::Event;

/// Which serializer a socket negotiated through its `vsn` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// vsn 1.0.0 (or no vsn): JSON objects, text frames only.
    V1,
    /// vsn 2.0.0: JSON arrays in text frames and binary frames.
    V2,
}

impl Format {
    /// Pick the serializer for a `vsn` query parameter the way Phoenix does:
    /// absent → V1, `~> 1.0.0` → V1, `~> 2.0.0` → V2, anything else → `None`.
    pub fn from_vsn(vsn: Option<&str>) -> Option<Format> {
        let Some(vsn) = vsn else {
            return Some(Format::V1);
        };
        let mut parts = vsn.split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || patch.is_empty() || !patch.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        match (major, minor) {
            ("1", "0") => Some(Format::V1),
            ("2", "0") => Some(Format::V2),
            _ => None,
        }
    }

    /// Index of this format, for per-format caches (`[V1, V2]`).
    pub fn index(self) -> usize {
        match self {
            Format::V1 => 0,
            Format::V2 => 1,
        }
    }
}

/// A message reference (`ref` or `join_ref`), echoed exactly as the client sent it.
///
/// The JS client sends decimal strings; other clients may send JSON numbers,
/// which Phoenix echoes back as numbers in JSON frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    /// A JSON string (or any binary-frame ref).
    Str(String),
    /// A JSON number, kept as its literal text.
    Num(String),
}

impl Ref {
    /// The ref as text: what a binary frame carries.
    pub fn as_str(&self) -> &str {
        match self {
            Ref::Str(s) | Ref::Num(s) => s,
        }
    }
}

/// A channel topic such as `room:lobby`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(pub String);

impl Topic {
    /// The topic text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message payload: JSON or raw bytes (V2 binary frames only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Raw JSON text of one JSON value (validated when decoded or built).
    Json(Bytes),
    /// Opaque bytes from or for a binary frame.
    Binary(Bytes),
}

impl Payload {
    /// This payload with its bytes in an allocation of their own when it is
    /// small (at most `small` bytes): a payload decoded from a client frame
    /// is a view into the socket's read buffer, and one kept for long (queued
    /// to many slow subscribers) should not pin that whole buffer. Larger
    /// payloads stay views (no copy).
    pub fn detached(&self, small: usize) -> Payload {
        match self {
            Payload::Json(b) if b.len() <= small => Payload::Json(Bytes::copy_from_slice(b)),
            Payload::Binary(b) if b.len() <= small => Payload::Binary(Bytes::copy_from_slice(b)),
            other => other.clone(),
        }
    }

    /// The empty JSON object `{}`.
    pub fn empty() -> Payload {
        Payload::Json(Bytes::from_static(b"{}"))
    }

    /// Serialize a `serde_json::Value` into a JSON payload.
    pub fn json(value: &serde_json::Value) -> Payload {
        // Serializing a Value cannot fail (keys are strings).
        Payload::Json(Bytes::from(value.to_string()))
    }

    /// Whether this payload is binary.
    pub fn is_binary(&self) -> bool {
        matches!(self, Payload::Binary(_))
    }

    /// Length of the payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(b) | Payload::Binary(b) => b.len(),
        }
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One decoded client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The join_ref of the channel this message belongs to (`None` = JSON null).
    pub join_ref: Option<Ref>,
    /// The message ref the reply must carry (`None` = JSON null).
    pub ref_: Option<Ref>,
    /// The topic.
    pub topic: Topic,
    /// The event, parsed once at the edge.
    pub event: Event,
    /// The payload.
    pub payload: Payload,
}

/// WebSocket opcode of an encoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Text frame (JSON).
    Text,
    /// Binary frame.
    Binary,
}

/// One encoded server → client message: `head ++ body` is the WebSocket payload.
///
/// Cloning is cheap (two reference-counted `Bytes`), so one encoded broadcast
/// is shared by every subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Text or binary.
    pub opcode: Opcode,
    /// The first bytes (the whole JSON text, or the Phoenix binary header).
    pub head: Bytes,
    /// The rest (empty for JSON, the payload for binary frames).
    pub body: Bytes,
}

impl Frame {
    /// Total payload length on the wire (without the WebSocket header).
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Whether the frame carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's bytes joined into one buffer (tests, long-poll).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.head);
        v.extend_from_slice(&self.body);
        v
    }
}

#[cfg(test)]
mod detached_tests {
    use super::*;

    #[test]
    fn small_payloads_get_their_own_bytes_large_ones_stay_views() {
        let buffer = Bytes::from(vec![7u8; 8192]);
        let small = Payload::Binary(buffer.slice(10..74));
        let Payload::Binary(copied) = small.detached(1024) else {
            panic!("binary stays binary")
        };
        assert_eq!(copied, buffer.slice(10..74));
        assert_ne!(copied.as_ptr(), buffer.slice(10..74).as_ptr());
        let large = Payload::Json(buffer.slice(0..4096));
        let Payload::Json(view) = large.detached(1024) else {
            panic!("json stays json")
        };
        assert_eq!(view.as_ptr(), buffer.as_ptr());
    }
}
