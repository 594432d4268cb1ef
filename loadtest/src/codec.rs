//! Sans-IO Phoenix vsn 2.0.0 client codec: what a client writes, and how it
//! reads what a server writes.
//!
//! Sluice's own `protocol` module is the server half (it decodes client
//! pushes and encodes server frames); this is the mirror image, small enough
//! to keep here and check against Sluice's in the tests.
//!
//! | direction | JSON text frame | binary frame |
//! |---|---|---|
//! | client push | `[join_ref, ref, topic, event, payload]` | `0x00, len(join_ref), len(ref), len(topic), len(event), join_ref, ref, topic, event, payload` |
//! | server reply | `[join_ref, ref, topic, "phx_reply", {"response": r, "status": s}]` | `0x01, len(join_ref), len(ref), len(topic), len(status), join_ref, ref, topic, status, r` |
//! | server push | `[join_ref, null, topic, event, payload]` | `0x00, len(join_ref), len(topic), len(event), join_ref, topic, event, payload` |
//! | server broadcast | `[null, null, topic, event, payload]` | `0x02, len(topic), len(event), topic, event, payload` |
//!
//! # Contract
//! * Pure functions over bytes: no sockets, no clocks, no tokio.
//! * [`encode_push`] appends to a caller-owned buffer, so a connection reuses
//!   one buffer for every message (no allocation per message).
//! * The decoders borrow from the frame: meta fields are `&str` slices of it
//!   (only a JSON string with escapes is copied) and the payload is a slice.
//!   They never panic on malformed input.
//! * A binary frame cannot say `null`: an empty join_ref or ref decodes to
//!   `None`, and `None` encodes as the empty string (as phoenix.js does).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Kind byte of a push (both directions).
const KIND_PUSH: u8 = 0;
/// Kind byte of a reply (server → client).
const KIND_REPLY: u8 = 1;
/// Kind byte of a broadcast (server → client).
const KIND_BROADCAST: u8 = 2;

/// How a client writes its pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// A JSON array in a text frame; the payload is JSON text.
    Json,
    /// A kind-0 binary frame; the payload is raw bytes (a JS ArrayBuffer push).
    Binary,
}

/// Why a push could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A meta field does not fit the one-byte length of a binary frame.
    #[error("field `{0}` is longer than 255 bytes")]
    MetaTooLong(&'static str),
}

/// Why a server frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON shape of a V2 message (or of a reply's payload).
    #[error("malformed JSON message: {0}")]
    Json(#[from] serde_json::Error),
    /// A ref is neither a string, a number nor null.
    #[error("field `{0}` has the wrong type")]
    FieldType(&'static str),
    /// A binary frame is shorter than its header says.
    #[error("binary frame truncated")]
    Truncated,
    /// A binary frame has a kind byte other than 0, 1 or 2.
    #[error("unknown binary frame kind {0}")]
    UnknownKind(u8),
    /// A meta field of a binary frame is not valid UTF-8.
    #[error("field `{0}` is not valid UTF-8")]
    Utf8(&'static str),
}

/// What kind of message a server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `phx_reply` to one of the client's messages (has a ref and a status).
    Reply,
    /// A push from a joined channel (has a join_ref, no ref), including
    /// `phx_close` / `phx_error`, which carry both.
    Push,
    /// A broadcast (neither join_ref nor ref).
    Broadcast,
}

/// A message payload as received, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// The exact text of one JSON value.
    Json(&'a str),
    /// Raw bytes from a binary frame.
    Binary(&'a [u8]),
}

impl Body<'_> {
    /// The payload's bytes (JSON text or raw bytes).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Json(s) => s.as_bytes(),
            Body::Binary(b) => b,
        }
    }
}

/// One decoded server message, borrowed from its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMsg<'a> {
    /// Reply, push or broadcast.
    pub kind: Kind,
    /// The join_ref (`None` = null / empty).
    pub join_ref: Option<Cow<'a, str>>,
    /// The ref the message answers (replies, `phx_close`, `phx_error`).
    pub ref_: Option<Cow<'a, str>>,
    /// The topic.
    pub topic: Cow<'a, str>,
    /// The event name (`phx_reply` for replies).
    pub event: Cow<'a, str>,
    /// The reply status (`ok`, `error`, ...); `None` unless a reply.
    pub status: Option<Cow<'a, str>>,
    /// The payload; for a reply, the `response` only.
    pub payload: Body<'a>,
}

// === encode ===

/// Append a client push to `out` (which is not cleared).
///
/// JSON: `payload` must be the text of one JSON value; it is copied in as is.
/// Binary: `payload` is raw bytes; meta fields longer than 255 bytes are
/// [`EncodeError::MetaTooLong`] (nothing is appended then).
pub fn encode_push(
    out: &mut Vec<u8>,
    encoding: Encoding,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<(), EncodeError> {
    match encoding {
        Encoding::Json => {
            out.reserve(16 + join_ref.map_or(4, str::len) + ref_.map_or(4, str::len));
            out.push(b'[');
            write_json_ref(out, join_ref);
            out.push(b',');
            write_json_ref(out, ref_);
            out.push(b',');
            write_json_str(out, topic);
            out.push(b',');
            write_json_str(out, event);
            out.push(b',');
            out.extend_from_slice(payload);
            out.push(b']');
        }
        Encoding::Binary => {
            let join_ref = join_ref.unwrap_or("");
            let ref_ = ref_.unwrap_or("");
            let lens = [
                KIND_PUSH,
                meta_len(join_ref, "join_ref")?,
                meta_len(ref_, "ref")?,
                meta_len(topic, "topic")?,
                meta_len(event, "event")?,
            ];
            out.reserve(
                5 + join_ref.len() + ref_.len() + topic.len() + event.len() + payload.len(),
            );
            out.extend_from_slice(&lens);
            for field in [join_ref, ref_, topic, event] {
                out.extend_from_slice(field.as_bytes());
            }
            out.extend_from_slice(payload);
        }
    }
    Ok(())
}

fn meta_len(s: &str, field: &'static str) -> Result<u8, EncodeError> {
    u8::try_from(s.len()).map_err(|_| EncodeError::MetaTooLong(field))
}

fn write_json_ref(out: &mut Vec<u8>, r: Option<&str>) {
    match r {
        None => out.extend_from_slice(b"null"),
        Some(s) => write_json_str(out, s),
    }
}

/// Append `s` as a quoted JSON string; the common case (nothing to escape) is a copy.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `&str` into a `Vec` cannot fail.
        let written = serde_json::to_writer(&mut *out, s);
        debug_assert!(written.is_ok());
    }
}

// === decode ===

/// Decode a server text frame (a V2 JSON array).
///
/// A `phx_reply` is split into its status and `response`; any other event
/// keeps its payload as is.
pub fn decode_text(data: &[u8]) -> Result<ServerMsg<'_>, DecodeError> {
    let Array(join_ref, ref_, topic, event, payload) = serde_json::from_slice(data)?;
    let join_ref = join_ref.map(|r| json_ref(r, "join_ref")).transpose()?;
    let ref_ = ref_.map(|r| json_ref(r, "ref")).transpose()?;
    if event == "phx_reply" {
        let reply: ReplyPayload<'_> = serde_json::from_str(payload.get())?;
        return Ok(ServerMsg {
            kind: Kind::Reply,
            join_ref,
            ref_,
            topic,
            event,
            status: Some(reply.status),
            payload: Body::Json(reply.response.get()),
        });
    }
    let kind = if join_ref.is_none() && ref_.is_none() {
        Kind::Broadcast
    } else {
        Kind::Push
    };
    Ok(ServerMsg {
        kind,
        join_ref,
        ref_,
        topic,
        event,
        status: None,
        payload: Body::Json(payload.get()),
    })
}

/// Decode a server binary frame (kind 0 push, 1 reply or 2 broadcast).
pub fn decode_binary(data: &[u8]) -> Result<ServerMsg<'_>, DecodeError> {
    let (&kind, rest) = data.split_first().ok_or(DecodeError::Truncated)?;
    let mut cur = Cursor { data, at: 1 };
    match kind {
        KIND_PUSH => {
            let &[jr, topic, event, ..] = rest else {
                return Err(DecodeError::Truncated);
            };
            cur.at = 4;
            let join_ref = cur.take(jr, "join_ref")?;
            let topic = cur.take(topic, "topic")?;
            let event = cur.take(event, "event")?;
            Ok(ServerMsg {
                kind: Kind::Push,
                join_ref: non_empty(join_ref),
                ref_: None,
                topic: Cow::Borrowed(topic),
                event: Cow::Borrowed(event),
                status: None,
                payload: Body::Binary(cur.rest()),
            })
        }
        KIND_REPLY => {
            let &[jr, r, topic, status, ..] = rest else {
                return Err(DecodeError::Truncated);
            };
            cur.at = 5;
            let join_ref = cur.take(jr, "join_ref")?;
            let ref_ = cur.take(r, "ref")?;
            let topic = cur.take(topic, "topic")?;
            let status = cur.take(status, "status")?;
            Ok(ServerMsg {
                kind: Kind::Reply,
                join_ref: non_empty(join_ref),
                ref_: non_empty(ref_),
                topic: Cow::Borrowed(topic),
                event: Cow::Borrowed("phx_reply"),
                status: Some(Cow::Borrowed(status)),
                payload: Body::Binary(cur.rest()),
            })
        }
        KIND_BROADCAST => {
            let &[topic, event, ..] = rest else {
                return Err(DecodeError::Truncated);
            };
            cur.at = 3;
            let topic = cur.take(topic, "topic")?;
            let event = cur.take(event, "event")?;
            Ok(ServerMsg {
                kind: Kind::Broadcast,
                join_ref: None,
                ref_: None,
                topic: Cow::Borrowed(topic),
                event: Cow::Borrowed(event),
                status: None,
                payload: Body::Binary(cur.rest()),
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// `[join_ref, ref, topic, event, payload]`, borrowing from the frame.
#[derive(Deserialize)]
struct Array<'a>(
    #[serde(borrow)] Option<&'a RawValue>,
    #[serde(borrow)] Option<&'a RawValue>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] &'a RawValue,
);

/// The payload of a JSON `phx_reply`.
#[derive(Deserialize)]
struct ReplyPayload<'a> {
    #[serde(borrow)]
    response: &'a RawValue,
    #[serde(borrow)]
    status: Cow<'a, str>,
}

/// A JSON ref: a string's contents, or a number's literal text.
fn json_ref<'a>(raw: &'a RawValue, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => match text.get(1..text.len() - 1) {
            Some(inner) if !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
            _ => Ok(Cow::Owned(serde_json::from_str::<String>(text)?)),
        },
        Some(b'-' | b'0'..=b'9') => Ok(Cow::Borrowed(text)),
        _ => Err(DecodeError::FieldType(field)),
    }
}

fn non_empty(s: &str) -> Option<Cow<'_, str>> {
    (!s.is_empty()).then_some(Cow::Borrowed(s))
}

/// Walks the meta fields of a binary frame.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: u8, field: &'static str) -> Result<&'a str, DecodeError> {
        let end = self.at + usize::from(len);
        let bytes = self.data.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8(field))
    }

    fn rest(&self) -> &'a [u8] {
        self.data.get(self.at..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sluice::protocol::{self, Format, Payload, Ref};

    use super::*;

    fn push(enc: Encoding, jr: Option<&str>, r: Option<&str>, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_push(&mut out, enc, jr, r, "echo:load-1", "ping", payload).expect("encodes");
        out
    }

    fn sref(s: &str) -> Ref {
        Ref::Str(s.to_owned())
    }

    #[test]
    fn json_push_matches_phoenix_js() {
        let out = push(Encoding::Json, Some("1"), Some("7"), br#"{"d":"xx"}"#);
        assert_eq!(out, br#"["1","7","echo:load-1","ping",{"d":"xx"}]"#);
        let out = push(Encoding::Json, None, Some("2"), b"{}");
        assert_eq!(out, br#"[null,"2","echo:load-1","ping",{}]"#);
    }

    #[test]
    fn json_push_escapes_strings() {
        let mut out = Vec::new();
        encode_push(
            &mut out,
            Encoding::Json,
            Some("a\"b"),
            None,
            "t\\",
            "e\n",
            b"1",
        )
        .expect("encodes");
        assert_eq!(out, br#"["a\"b",null,"t\\","e\n",1]"#);
        let m = protocol::decode(Format::V2, true, Bytes::from(out)).expect("sluice decodes");
        assert_eq!(m.join_ref, Some(sref("a\"b")));
        assert_eq!(m.topic.as_str(), "t\\");
        assert_eq!(m.event.as_str(), "e\n");
    }

    #[test]
    fn binary_push_matches_observed_phoenix_js_frame() {
        // `channel.push("upload", ArrayBuffer [1,2,3,255])`, join_ref "3", ref "4".
        let mut out = Vec::new();
        encode_push(
            &mut out,
            Encoding::Binary,
            Some("3"),
            Some("4"),
            "room:lobby",
            "upload",
            &[1, 2, 3, 255],
        )
        .expect("encodes");
        assert_eq!(
            out,
            b"\x00\x01\x01\x0a\x06\x33\x34room:lobbyupload\x01\x02\x03\xff"
        );
    }

    #[test]
    fn encode_appends_and_limits_meta() {
        let mut out = b"keep".to_vec();
        encode_push(&mut out, Encoding::Binary, None, None, "t", "e", b"p").expect("encodes");
        assert_eq!(out, b"keep\x00\x00\x00\x01\x01tep");
        let long = "x".repeat(256);
        let mut out = Vec::new();
        assert_eq!(
            encode_push(&mut out, Encoding::Binary, None, None, &long, "e", b""),
            Err(EncodeError::MetaTooLong("topic"))
        );
        assert_eq!(
            encode_push(&mut out, Encoding::Binary, Some(&long), None, "t", "e", b""),
            Err(EncodeError::MetaTooLong("join_ref"))
        );
        assert!(out.is_empty());
        // JSON has no such limit.
        encode_push(&mut out, Encoding::Json, None, None, &long, "e", b"{}").expect("encodes");
    }

    #[test]
    fn sluice_decodes_what_we_encode() {
        for enc in [Encoding::Json, Encoding::Binary] {
            let payload: &[u8] = match enc {
                Encoding::Json => br#"{"d":"hello"}"#,
                Encoding::Binary => &[0, 1, 2, 0xff],
            };
            let out = push(enc, Some("12"), Some("345"), payload);
            let m = protocol::decode(Format::V2, enc == Encoding::Json, Bytes::from(out))
                .expect("sluice decodes");
            assert_eq!(m.join_ref, Some(sref("12")));
            assert_eq!(m.ref_, Some(sref("345")));
            assert_eq!(m.topic.as_str(), "echo:load-1");
            assert_eq!(m.event.as_str(), "ping");
            let got = match &m.payload {
                Payload::Json(b) | Payload::Binary(b) => b.clone(),
            };
            assert_eq!(&got[..], payload);
        }
    }

    #[test]
    fn decodes_sluice_json_frames() {
        let jr = sref("1");
        let r = sref("9");
        let reply = protocol::v2::encode_reply(
            Some(&jr),
            Some(&r),
            "echo:x",
            "ok",
            &Bytes::from_static(br#"{"d":"a"}"#),
        )
        .to_vec();
        let m = decode_text(&reply).expect("decodes");
        assert_eq!(m.kind, Kind::Reply);
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.ref_.as_deref(), Some("9"));
        assert_eq!(m.topic, "echo:x");
        assert_eq!(m.event, "phx_reply");
        assert_eq!(m.status.as_deref(), Some("ok"));
        assert_eq!(m.payload, Body::Json(r#"{"d":"a"}"#));
        // Borrowed, not copied.
        assert!(matches!(m.topic, Cow::Borrowed(_)));

        let bcast = protocol::v2::encode_message(
            None,
            None,
            "room:load",
            "msg",
            &Bytes::from_static(br#"{"t":5}"#),
        )
        .to_vec();
        let m = decode_text(&bcast).expect("decodes");
        assert_eq!(m.kind, Kind::Broadcast);
        assert_eq!((m.join_ref, m.ref_, m.status), (None, None, None));
        assert_eq!(m.event, "msg");
        assert_eq!(m.payload, Body::Json(r#"{"t":5}"#));

        let close =
            protocol::v2::encode_message(Some(&jr), Some(&jr), "room:a", "phx_close", &"{}".into())
                .to_vec();
        let m = decode_text(&close).expect("decodes");
        assert_eq!(m.kind, Kind::Push);
        assert_eq!(m.event, "phx_close");

        // Numeric refs keep their literal text; escaped strings are unescaped.
        let m = decode_text(br#"[1,-2,"t\u0041","phx_reply",{"status":"error","response":{}}]"#)
            .expect("decodes");
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.ref_.as_deref(), Some("-2"));
        assert_eq!(m.topic, "tA");
        assert_eq!(m.status.as_deref(), Some("error"));
    }

    #[test]
    fn decodes_sluice_binary_frames() {
        let jr = sref("3");
        let r = sref("4");
        let body = Bytes::from_static(&[9, 8, 7]);
        let reply =
            protocol::binary::encode_reply(Some(&jr), Some(&r), "echo:x", "ok", body.clone())
                .expect("encodes")
                .to_vec();
        let m = decode_binary(&reply).expect("decodes");
        assert_eq!(m.kind, Kind::Reply);
        assert_eq!(m.join_ref.as_deref(), Some("3"));
        assert_eq!(m.ref_.as_deref(), Some("4"));
        assert_eq!(m.topic, "echo:x");
        assert_eq!(m.status.as_deref(), Some("ok"));
        assert_eq!(m.payload, Body::Binary(&[9, 8, 7]));

        let bcast = protocol::binary::encode_broadcast("room:load", "msg", body.clone())
            .expect("encodes")
            .to_vec();
        let m = decode_binary(&bcast).expect("decodes");
        assert_eq!(m.kind, Kind::Broadcast);
        assert_eq!((&m.join_ref, &m.ref_, &m.status), (&None, &None, &None));
        assert_eq!(m.topic, "room:load");
        assert_eq!(m.event, "msg");
        assert_eq!(m.payload.as_bytes(), &[9, 8, 7]);

        let pushed = protocol::binary::encode_push(Some(&jr), "user:1", "note", body)
            .expect("encodes")
            .to_vec();
        let m = decode_binary(&pushed).expect("decodes");
        assert_eq!(m.kind, Kind::Push);
        assert_eq!(m.join_ref.as_deref(), Some("3"));
        assert_eq!(m.ref_, None);
        assert_eq!(m.event, "note");

        // Empty refs are None; an empty payload is fine.
        let m = decode_binary(b"\x01\x00\x00\x01\x02tok").expect("decodes");
        assert_eq!((m.join_ref, m.ref_), (None, None));
        assert_eq!(m.payload, Body::Binary(&[]));
    }

    #[test]
    fn binary_decode_errors_never_panic() {
        assert!(matches!(decode_binary(b""), Err(DecodeError::Truncated)));
        assert!(matches!(
            decode_binary(b"\x03\x00\x00"),
            Err(DecodeError::UnknownKind(3))
        ));
        for full in [
            &b"\x00\x01\x01\x01jte"[..],
            b"\x01\x01\x01\x01\x02jrtok",
            b"\x02\x01\x01te",
        ] {
            assert!(decode_binary(full).is_ok());
            for cut in 0..full.len() {
                assert!(
                    matches!(decode_binary(&full[..cut]), Err(DecodeError::Truncated)),
                    "{full:?} cut at {cut}"
                );
            }
        }
        assert!(matches!(
            decode_binary(b"\x02\x01\x01\xffe"),
            Err(DecodeError::Utf8("topic"))
        ));
        assert!(matches!(
            decode_binary(b"\x01\x00\x00\x01\x01t\xff"),
            Err(DecodeError::Utf8("status"))
        ));
    }

    #[test]
    fn json_decode_errors() {
        for bad in [
            &b""[..],
            b"{}",
            b"[1,2,3]",
            br#"[null,null,"t","e",{}"#,
            br#"[null,null,1,"e",{}]"#,
            br#"[true,null,"t","e",{}]"#,
            br#"[null,"1","t","phx_reply",{"status":"ok"}]"#,
            br#"[null,"1","t","phx_reply",5]"#,
        ] {
            assert!(
                decode_text(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
