//! vsn 1.0.0 (and no vsn): JSON objects in text frames.
//!
//! # Contract
//! * [`decode`] accepts an object with the keys `topic`, `event`, `payload` and
//!   `ref`, all required (the value may be `null` only where the type allows it),
//!   and an optional `join_ref`; other keys are ignored and a repeated key keeps
//!   its last value (as Jason does). A missing key is
//!   [`DecodeError::MissingField`], like Phoenix's `InvalidMessageError`.
//!   Refs and strings follow the same rules as [`super::v2::decode`]; the
//!   payload is a zero-copy slice of the input.
//! * The encoders write what Phoenix's V1 serializer writes:
//!   `{"event":..,"payload":..,"ref":..,"topic":..}` with sorted keys and no
//!   `join_ref` (V1 never sends one). Replies carry the client's ref; pushes and
//!   broadcasts carry `"ref":null`.
//! * V1 has no binary frames; [`super::decode`] and the `encode_*` dispatchers
//!   refuse them before reaching this module.

use std::fmt;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::v2::{
    json_error, parse_ref, parse_str, ref_len, slice_of, text_frame, write_ref,
    write_reply_payload, write_str,
};
use super::{DecodeError, Event, Frame, Message, Payload, Ref, Topic};

/// Decode a V1 text frame (`{"topic","event","payload","ref"[,"join_ref"]}`).
///
/// Errors: [`DecodeError::Json`] for invalid JSON or a non-object,
/// [`DecodeError::MissingField`] for an absent required key (checked in the
/// order topic, event, payload, ref), [`DecodeError::FieldType`] for a value of
/// the wrong type.
pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(&data);
    let fields = de
        .deserialize_map(FieldsVisitor)
        .map_err(|e| json_error(e, OBJECT))?;
    de.end().map_err(|e| json_error(e, OBJECT))?;
    let topic = fields.topic.ok_or(DecodeError::MissingField("topic"))?;
    let event = fields.event.ok_or(DecodeError::MissingField("event"))?;
    let payload = fields.payload.ok_or(DecodeError::MissingField("payload"))?;
    let ref_ = fields.ref_.ok_or(DecodeError::MissingField("ref"))?;
    Ok(Message {
        join_ref: match fields.join_ref {
            Some(raw) => parse_ref(raw, "join_ref")?,
            None => None,
        },
        ref_: parse_ref(ref_, "ref")?,
        topic: Topic(parse_str(topic, "topic")?.into_owned()),
        event: Event::parse(&parse_str(event, "event")?),
        payload: Payload::Json(slice_of(&data, payload)),
    })
}

/// Encode a V1 reply: `{"event":"phx_reply","payload":{"response":r,"status":s},"ref":ref,"topic":topic}`.
///
/// `response` must be the text of one JSON value; it is copied in verbatim.
pub fn encode_reply(ref_: Option<&Ref>, topic: &str, status: &str, response: &Bytes) -> Frame {
    let mut out =
        Vec::with_capacity(80 + ref_len(ref_) + topic.len() + status.len() + response.len());
    out.extend_from_slice(b"{\"event\":\"phx_reply\",\"payload\":");
    write_reply_payload(&mut out, status, response);
    finish(out, ref_, topic)
}

/// Encode a V1 push or broadcast: `{"event":..,"payload":..,"ref":..,"topic":..}`.
///
/// `ref_` is `None` for pushes and broadcasts (`"ref":null`); `phx_close` and
/// `phx_error` carry the join's ref. `payload` must be the text of one JSON
/// value; it is copied in verbatim.
pub fn encode_message(ref_: Option<&Ref>, topic: &str, event: &str, payload: &Bytes) -> Frame {
    let mut out =
        Vec::with_capacity(48 + ref_len(ref_) + topic.len() + event.len() + payload.len());
    out.extend_from_slice(b"{\"event\":");
    write_str(&mut out, event);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload);
    finish(out, ref_, topic)
}

/// Append `,"ref":..,"topic":..}` and wrap the text in a frame.
fn finish(mut out: Vec<u8>, ref_: Option<&Ref>, topic: &str) -> Frame {
    out.extend_from_slice(b",\"ref\":");
    write_ref(&mut out, ref_);
    out.extend_from_slice(b",\"topic\":");
    write_str(&mut out, topic);
    out.push(b'}');
    text_frame(out)
}

// === decode helpers ===

/// What a V1 frame must be, for error messages.
const OBJECT: &str = "a JSON object {topic, event, payload, ref}";

/// The raw values of the keys V1 knows.
#[derive(Default)]
struct Fields<'a> {
    topic: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    payload: Option<&'a RawValue>,
    ref_: Option<&'a RawValue>,
    join_ref: Option<&'a RawValue>,
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(OBJECT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Topic => &mut fields.topic,
                Key::Event => &mut fields.event,
                Key::Payload => &mut fields.payload,
                Key::Ref => &mut fields.ref_,
                Key::JoinRef => &mut fields.join_ref,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(fields)
    }
}

/// An object key, matched without allocating (escaped keys are unescaped first).
enum Key {
    Topic,
    Event,
    Payload,
    Ref,
    JoinRef,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "topic" => Key::Topic,
                    "event" => Key::Event,
                    "payload" => Key::Payload,
                    "ref" => Key::Ref,
                    "join_ref" => Key::JoinRef,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Opcode;

    fn decode_str(s: &str) -> Result<Message, DecodeError> {
        decode(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn text(frame: &Frame) -> String {
        assert_eq!(frame.opcode, Opcode::Text);
        String::from_utf8(frame.to_vec()).expect("encoder writes UTF-8")
    }

    #[test]
    fn decodes_client_object() {
        let m = decode_str(
            r#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
        )
        .expect("decodes");
        assert_eq!(m.topic.as_str(), "room:lobby");
        assert_eq!(m.event, Event::Join);
        assert_eq!(m.payload, Payload::empty());
        assert_eq!(m.ref_, Some(Ref::Str("1".into())));
        assert_eq!(m.join_ref, Some(Ref::Str("1".into())));
    }

    #[test]
    fn key_order_nulls_extras_and_duplicates() {
        let m = decode_str(
            r#"{"x":[1,{"y":2}],"ref":null,"payload":null,"event":"e","topic":"t","join_ref":null,"top\u0069c":"u"}"#,
        )
        .expect("decodes");
        assert_eq!(m.ref_, None);
        assert_eq!(m.join_ref, None);
        assert_eq!(m.payload, Payload::Json(Bytes::from_static(b"null")));
        // The escaped key is `topic` too; the last value wins.
        assert_eq!(m.topic.as_str(), "u");
        let m = decode_str(r#"{"topic":"t","event":"e","payload":[],"ref":7}"#).expect("decodes");
        assert_eq!(m.ref_, Some(Ref::Num("7".into())));
        assert_eq!(m.join_ref, None);
    }

    #[test]
    fn missing_keys() {
        let all = [
            ("topic", "\"t\""),
            ("event", "\"e\""),
            ("payload", "{}"),
            ("ref", "null"),
        ];
        for (skip, _) in all {
            let body: Vec<String> = all
                .iter()
                .filter(|(k, _)| *k != skip)
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            let frame = format!("{{{}}}", body.join(","));
            assert_eq!(
                decode_str(&frame),
                Err(DecodeError::MissingField(skip)),
                "{frame}"
            );
        }
        assert_eq!(decode_str("{}"), Err(DecodeError::MissingField("topic")));
    }

    #[test]
    fn wrong_types_and_bad_json() {
        assert_eq!(
            decode_str(r#"{"topic":null,"event":"e","payload":{},"ref":"1"}"#),
            Err(DecodeError::FieldType("topic"))
        );
        assert_eq!(
            decode_str(r#"{"topic":"t","event":1,"payload":{},"ref":"1"}"#),
            Err(DecodeError::FieldType("event"))
        );
        assert_eq!(
            decode_str(r#"{"topic":"t","event":"e","payload":{},"ref":[]}"#),
            Err(DecodeError::FieldType("ref"))
        );
        assert_eq!(
            decode_str(r#"{"topic":"t","event":"e","payload":{},"ref":"1","join_ref":false}"#),
            Err(DecodeError::FieldType("join_ref"))
        );
        let Err(DecodeError::Json(msg)) = decode_str(&format!("\"{}\"", "x".repeat(100_000)))
        else {
            panic!("json error")
        };
        assert!(msg.len() < 100, "{msg}");
        for bad in ["", "[]", "{", r#"{"topic":"t"} {}"#, "null"] {
            assert!(
                matches!(decode_str(bad), Err(DecodeError::Json(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn encodes_like_phoenix() {
        assert_eq!(
            text(&encode_reply(
                Some(&Ref::Str("1".into())),
                "room:lobby",
                "ok",
                &Bytes::from_static(b"{}")
            )),
            r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"room:lobby"}"#
        );
        assert_eq!(
            text(&encode_message(
                None,
                "room:lobby",
                "shout",
                &Bytes::from_static(br#"{"body":"v1"}"#)
            )),
            r#"{"event":"shout","payload":{"body":"v1"},"ref":null,"topic":"room:lobby"}"#
        );
        assert_eq!(
            text(&encode_reply(
                Some(&Ref::Num("5".into())),
                "t",
                "error",
                &Bytes::from_static(b"[]")
            )),
            r#"{"event":"phx_reply","payload":{"response":[],"status":"error"},"ref":5,"topic":"t"}"#
        );
    }
}
