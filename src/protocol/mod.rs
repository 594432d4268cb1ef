//! Sans-IO Phoenix Channels wire format.
//!
//! This module owns the byte-level encoding of Phoenix messages for the three
//! serializers a `phoenix` 1.8 client can speak:
//!
//! * [`v1`]: vsn 1.0.0, JSON objects (`{"topic","event","payload","ref"}`), text only;
//! * [`v2`]: vsn 2.0.0, JSON arrays (`[join_ref, ref, topic, event, payload]`), text frames;
//! * [`binary`]: vsn 2.0.0 binary frames (kind 0 push, 1 reply, 2 broadcast).
//!
//! # Contract
//! * Pure functions over bytes: no sockets, no clocks, no tokio. Every decoder
//!   returns a typed [`DecodeError`] for malformed input and never panics.
//! * Decoding is zero-copy where it matters: a JSON payload is kept as the raw
//!   JSON text of the client's payload (a `Bytes` slice of the input frame),
//!   and a binary payload is a `Bytes` slice of the input frame.
//! * Encoding produces a [`Frame`]: the WebSocket opcode plus a `head` and a
//!   `body`; the wire bytes are `head ++ body`. Binary frames keep the payload in
//!   `body` so it is never copied; JSON frames are written into `head`.
//! * Meta fields (join_ref, ref, topic, event, status) longer than 255 bytes
//!   cannot be put in a binary frame: encoding reports [`EncodeError::MetaTooLong`].

pub mod binary;
mod event;
mod message;
pub mod v1;
pub mod v2;

#[cfg(test)]
mod tests;

pub use event::Event;
pub use message::{Format, Frame, Message, Opcode, Payload, Ref, Topic};

/// Largest length of a meta field (join_ref, ref, topic, event, status) in a
/// V2 binary frame: each length is stored in one byte.
pub const MAX_META_LEN: usize = 255;

/// Why an inbound frame could not be decoded. Every variant maps to a
/// `reason` label that is safe to use in metrics (bounded set).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The text frame is not valid JSON (or not the expected JSON shape).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// A V2 JSON message is not an array of at least five elements.
    #[error("expected a JSON array of 5 elements, got {0}")]
    Arity(usize),
    /// A field has the wrong JSON type (e.g. a numeric topic).
    #[error("field `{0}` has the wrong type")]
    FieldType(&'static str),
    /// A V1 object lacks a required key.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A binary frame is shorter than its header says.
    #[error("binary frame truncated")]
    Truncated,
    /// A binary frame has a kind byte other than 0 (clients only send pushes).
    #[error("unknown binary frame kind {0}")]
    UnknownKind(u8),
    /// A meta field of a binary frame is not valid UTF-8.
    #[error("field `{0}` is not valid UTF-8")]
    Utf8(&'static str),
    /// The serializer has no binary form (V1).
    #[error("binary frames are not supported by this serializer")]
    BinaryUnsupported,
}

impl DecodeError {
    /// A short, bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "malformed_json",
            DecodeError::Arity(_) => "wrong_arity",
            DecodeError::FieldType(_) => "field_type",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::Truncated => "truncated",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::Utf8(_) => "invalid_utf8",
            DecodeError::BinaryUnsupported => "binary_unsupported",
        }
    }
}

/// Why an outbound message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A meta field does not fit the one-byte length of a binary frame.
    #[error("field `{0}` is longer than 255 bytes")]
    MetaTooLong(&'static str),
    /// The serializer has no binary form (V1) and the payload is binary.
    #[error("binary payloads are not supported by this serializer")]
    BinaryUnsupported,
}

/// Decode one inbound WebSocket message for a socket speaking `format`.
///
/// `text` tells whether the frame had the text opcode. V2 text frames carry
/// JSON arrays, V2 binary frames carry kind-0 pushes, V1 accepts text only.
pub fn decode(format: Format, text: bool, data: bytes::Bytes) -> Result<Message, DecodeError> {
    match (format, text) {
        (Format::V1, true) => v1::decode(data),
        (Format::V1, false) => Err(DecodeError::BinaryUnsupported),
        (Format::V2, true) => v2::decode(data),
        (Format::V2, false) => binary::decode_push(data),
    }
}

/// Encode a reply (`phx_reply`) to the client's message `ref_`.
///
/// A JSON response becomes `{"response": .., "status": ..}` in a text frame; a
/// binary response becomes a V2 kind-1 frame (V1 cannot carry it).
pub fn encode_reply(
    format: Format,
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    response: &Payload,
) -> Result<Frame, EncodeError> {
    match (format, response) {
        (Format::V1, Payload::Binary(_)) => Err(EncodeError::BinaryUnsupported),
        (Format::V1, Payload::Json(json)) => Ok(v1::encode_reply(ref_, topic, status, json)),
        (Format::V2, Payload::Json(json)) => {
            Ok(v2::encode_reply(join_ref, ref_, topic, status, json))
        }
        (Format::V2, Payload::Binary(data)) => {
            binary::encode_reply(join_ref, ref_, topic, status, data.clone())
        }
    }
}

/// Encode a server push from a joined channel (carries the join_ref, no ref).
pub fn encode_push(
    format: Format,
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Frame, EncodeError> {
    match (format, payload) {
        (Format::V1, Payload::Binary(_)) => Err(EncodeError::BinaryUnsupported),
        (Format::V1, Payload::Json(json)) => Ok(v1::encode_message(None, topic, event, json)),
        (Format::V2, Payload::Json(json)) => {
            Ok(v2::encode_message(join_ref, None, topic, event, json))
        }
        (Format::V2, Payload::Binary(data)) => {
            binary::encode_push(join_ref, topic, event, data.clone())
        }
    }
}

/// Encode a broadcast (no join_ref, no ref): what every subscriber of a topic
/// receives, encoded once per format and shared.
pub fn encode_broadcast(
    format: Format,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Frame, EncodeError> {
    match (format, payload) {
        (Format::V1, Payload::Binary(_)) => Err(EncodeError::BinaryUnsupported),
        (Format::V1, Payload::Json(json)) => Ok(v1::encode_message(None, topic, event, json)),
        (Format::V2, Payload::Json(json)) => Ok(v2::encode_message(None, None, topic, event, json)),
        (Format::V2, Payload::Binary(data)) => binary::encode_broadcast(topic, event, data.clone()),
    }
}
