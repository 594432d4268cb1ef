//! vsn 2.0.0 JSON arrays: `[join_ref, ref, topic, event, payload]` in text frames.
//!
//! # Contract
//! * [`decode`] accepts a JSON array of at least five elements (extra trailing
//!   elements are ignored, as Phoenix does). `join_ref` and `ref` may be a string,
//!   a number (kept as its literal text in [`Ref::Num`]) or `null`; `topic` and
//!   `event` must be strings; `payload` may be any JSON value and is returned as
//!   a zero-copy [`Bytes`] slice of the input covering exactly its JSON text.
//! * [`encode_reply`] and [`encode_message`] write the bytes Phoenix 1.8's
//!   `Jason` encoder writes: no whitespace, `null` for absent refs, numeric refs
//!   as numbers, reply payload `{"response":..,"status":..}` (sorted keys), and
//!   string escapes as Jason writes them (`\u001F`, upper-case hex, where
//!   serde_json would write `\u001f`). The payload is spliced in as-is: it must
//!   already be the text of one JSON value.
//! * This module also holds the JSON helpers the V1 serializer shares.
//!
//! Decoded payloads are echoed byte for byte; a client payload written with
//! whitespace or `\u` escapes is therefore echoed that way, where Phoenix would
//! re-encode it compactly. The two are the same JSON value. Payloads are
//! checked against the JSON grammar only: a number beyond `f64` range (`1e999`)
//! is accepted and kept as text, where Phoenix's Jason refuses the frame; code
//! that parses a payload into typed values reports such numbers itself.

use std::borrow::Cow;
use std::fmt;
use std::io;

use bytes::Bytes;
use serde::de::{Deserializer as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};
use serde_json::value::RawValue;

use super::{DecodeError, Event, Frame, Message, Opcode, Payload, Ref, Topic};

/// Decode a V2 text frame (`[join_ref, ref, topic, event, payload, ...]`).
///
/// The payload is a slice of `data` (no copy). Errors: [`DecodeError::Json`]
/// for invalid JSON or a non-array, [`DecodeError::Arity`] for fewer than five
/// elements, [`DecodeError::FieldType`] for a ref that is not a string, number
/// or null, or a topic/event that is not a string.
pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(&data);
    let (items, len) = de
        .deserialize_seq(FirstFive)
        .map_err(|e| json_error(e, ARRAY))?;
    de.end().map_err(|e| json_error(e, ARRAY))?;
    let [Some(join_ref), Some(ref_), Some(topic), Some(event), Some(payload)] = items else {
        return Err(DecodeError::Arity(len));
    };
    Ok(Message {
        join_ref: parse_ref(join_ref, "join_ref")?,
        ref_: parse_ref(ref_, "ref")?,
        topic: Topic(parse_str(topic, "topic")?.into_owned()),
        event: Event::parse(&parse_str(event, "event")?),
        payload: Payload::Json(slice_of(&data, payload)),
    })
}

/// Encode a V2 reply: `[join_ref, ref, topic, "phx_reply", {"response": r, "status": s}]`.
///
/// `response` must be the text of one JSON value; it is copied in verbatim.
pub fn encode_reply(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    response: &Bytes,
) -> Frame {
    let mut out = Vec::with_capacity(
        64 + ref_len(join_ref) + ref_len(ref_) + topic.len() + status.len() + response.len(),
    );
    out.push(b'[');
    write_ref(&mut out, join_ref);
    out.push(b',');
    write_ref(&mut out, ref_);
    out.push(b',');
    write_str(&mut out, topic);
    out.extend_from_slice(b",\"phx_reply\",");
    write_reply_payload(&mut out, status, response);
    out.push(b']');
    text_frame(out)
}

/// Encode a V2 message: `[join_ref, ref, topic, event, payload]`.
///
/// Pushes carry the channel's join_ref and no ref, broadcasts neither;
/// `phx_close`/`phx_error` carry both. `payload` must be the text of one JSON
/// value; it is copied in verbatim.
pub fn encode_message(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Bytes,
) -> Frame {
    let mut out = Vec::with_capacity(
        32 + ref_len(join_ref) + ref_len(ref_) + topic.len() + event.len() + payload.len(),
    );
    out.push(b'[');
    write_ref(&mut out, join_ref);
    out.push(b',');
    write_ref(&mut out, ref_);
    out.push(b',');
    write_str(&mut out, topic);
    out.push(b',');
    write_str(&mut out, event);
    out.push(b',');
    out.extend_from_slice(payload);
    out.push(b']');
    text_frame(out)
}

// === decode helpers (shared with v1) ===

/// What a V2 frame must be, for error messages.
const ARRAY: &str = "a JSON array [join_ref, ref, topic, event, payload]";

/// Collects the first five elements of an array as raw JSON and skips the rest.
struct FirstFive;

impl<'de> Visitor<'de> for FirstFive {
    type Value = ([Option<&'de RawValue>; 5], usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ARRAY)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = [None; 5];
        let mut len = 0;
        while len < items.len() {
            match seq.next_element::<&'de RawValue>()? {
                Some(item) => {
                    items[len] = Some(item);
                    len += 1;
                }
                None => return Ok((items, len)),
            }
        }
        // Extra trailing elements are ignored (Phoenix matches `[a, b, c, d, e | _]`).
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok((items, len))
    }
}

/// Map a serde_json error to [`DecodeError::Json`], keeping the message bounded.
///
/// Syntax errors have fixed texts; a wrong top-level type ("data" errors) would
/// quote the client's value, possibly megabytes of it, so it is replaced by
/// what was `expected`.
pub(super) fn json_error(e: serde_json::Error, expected: &str) -> DecodeError {
    if e.is_data() {
        DecodeError::Json(format!(
            "expected {expected} at line {} column {}",
            e.line(),
            e.column()
        ))
    } else {
        DecodeError::Json(e.to_string())
    }
}

/// The `Bytes` slice of `data` that `raw` borrows from (zero copy).
///
/// `raw` must borrow from `data`; if it somehow does not, its text is copied
/// rather than panicking.
pub(super) fn slice_of(data: &Bytes, raw: &RawValue) -> Bytes {
    let text = raw.get().as_bytes();
    let start = (text.as_ptr() as usize).checked_sub(data.as_ptr() as usize);
    match start {
        Some(start) if start <= data.len() && text.len() <= data.len() - start => {
            data.slice(start..start + text.len())
        }
        _ => Bytes::copy_from_slice(text),
    }
}

/// A ref: string → [`Ref::Str`], number → [`Ref::Num`] (literal text), null → `None`.
pub(super) fn parse_ref(raw: &RawValue, field: &'static str) -> Result<Option<Ref>, DecodeError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => Ok(Some(Ref::Str(parse_str(raw, field)?.into_owned()))),
        // A valid JSON value starting with `n` is `null`.
        Some(b'n') => Ok(None),
        Some(b'-' | b'0'..=b'9') => Ok(Some(Ref::Num(text.to_owned()))),
        _ => Err(DecodeError::FieldType(field)),
    }
}

/// A JSON string's contents, borrowed when it has no escapes.
pub(super) fn parse_str<'a>(
    raw: &'a RawValue,
    field: &'static str,
) -> Result<Cow<'a, str>, DecodeError> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(DecodeError::FieldType(field));
    }
    // `raw` is a valid JSON string, so it ends with `"` and, without a
    // backslash, its contents are exactly the bytes between the quotes.
    match text.get(1..text.len() - 1) {
        Some(inner) if !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(text)
            .map(Cow::Owned)
            .map_err(|e| json_error(e, "a JSON string")),
    }
}

// === encode helpers (shared with v1) ===

/// Compact JSON formatting with Jason's escapes.
///
/// serde_json and Jason (Phoenix's encoder) agree on every escape except
/// control characters without a short form: Jason writes `\u001F`, serde_json
/// `\u001f`. Neither escapes `/`, non-ASCII or U+2028/2029 by default.
pub(super) struct JasonFormatter;

impl Formatter for JasonFormatter {
    fn write_char_escape<W>(&mut self, writer: &mut W, char_escape: CharEscape) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        match char_escape {
            CharEscape::AsciiControl(byte) => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                let escaped = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ];
                writer.write_all(&escaped)
            }
            other => CompactFormatter.write_char_escape(writer, other),
        }
    }
}

/// Append `s` as a quoted, escaped JSON string.
pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, JasonFormatter);
    // Writing a `&str` into a `Vec<u8>` cannot fail: no IO error, no non-string key.
    let written = serde::Serialize::serialize(s, &mut ser);
    debug_assert!(written.is_ok());
}

/// Append a ref: `null`, a JSON string, or a JSON number's literal text.
pub(super) fn write_ref(out: &mut Vec<u8>, r: Option<&Ref>) {
    match r {
        None => out.extend_from_slice(b"null"),
        Some(Ref::Num(n)) if is_json_number(n) => out.extend_from_slice(n.as_bytes()),
        // A `Num` that is not a JSON number (never produced by a decoder) is
        // written as a string rather than producing invalid JSON.
        Some(Ref::Str(s) | Ref::Num(s)) => write_str(out, s),
    }
}

/// Append `{"response":<response>,"status":"<status>"}` (Jason sorts map keys).
pub(super) fn write_reply_payload(out: &mut Vec<u8>, status: &str, response: &[u8]) {
    out.extend_from_slice(b"{\"response\":");
    out.extend_from_slice(response);
    out.extend_from_slice(b",\"status\":");
    write_str(out, status);
    out.push(b'}');
}

/// Upper bound of a ref's encoded length before escaping.
pub(super) fn ref_len(r: Option<&Ref>) -> usize {
    r.map_or(4, |r| r.as_str().len() + 2)
}

/// Wrap a finished JSON text in a text [`Frame`].
pub(super) fn text_frame(out: Vec<u8>) -> Frame {
    Frame {
        opcode: Opcode::Text,
        head: Bytes::from(out),
        body: Bytes::new(),
    }
}

/// Whether `s` is a JSON number literal: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    fn digits(b: &[u8]) -> usize {
        b.iter().take_while(|c| c.is_ascii_digit()).count()
    }
    let mut b = s.as_bytes();
    if let [b'-', rest @ ..] = b {
        b = rest;
    }
    match b {
        [b'0', rest @ ..] => b = rest,
        [b'1'..=b'9', ..] => b = &b[digits(b)..],
        _ => return false,
    }
    if let [b'.', rest @ ..] = b {
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        b = &rest[n..];
    }
    if let [b'e' | b'E', rest @ ..] = b {
        let rest = match rest {
            [b'+' | b'-', r @ ..] => r,
            r => r,
        };
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        b = &rest[n..];
    }
    b.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_str(s: &str) -> Result<Message, DecodeError> {
        decode(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn text(frame: &Frame) -> String {
        assert_eq!(frame.opcode, Opcode::Text);
        assert!(frame.body.is_empty());
        String::from_utf8(frame.to_vec()).expect("encoder writes UTF-8")
    }

    fn s(v: &str) -> Ref {
        Ref::Str(v.to_owned())
    }

    #[test]
    fn decodes_join() {
        let m =
            decode_str(r#"["3","3","room:lobby","phx_join",{"hello":"world"}]"#).expect("decodes");
        assert_eq!(m.join_ref, Some(s("3")));
        assert_eq!(m.ref_, Some(s("3")));
        assert_eq!(m.topic.as_str(), "room:lobby");
        assert_eq!(m.event, Event::Join);
        assert_eq!(
            m.payload,
            Payload::Json(Bytes::from_static(br#"{"hello":"world"}"#))
        );
    }

    #[test]
    fn payload_is_a_slice_of_the_input() {
        let data = Bytes::from_static(
            b" [ null , \"6\" , \"phoenix\" , \"heartbeat\" , { \"a\" : [1, 2] } ] ",
        );
        let m = decode(data.clone()).expect("decodes");
        let Payload::Json(p) = &m.payload else {
            panic!("json payload")
        };
        assert_eq!(&p[..], br#"{ "a" : [1, 2] }"#);
        let start = p.as_ptr() as usize - data.as_ptr() as usize;
        assert_eq!(&data[start..start + p.len()], &p[..]);
        assert_eq!(m.join_ref, None);
        assert_eq!(m.event, Event::Heartbeat);
    }

    #[test]
    fn numeric_refs_are_kept_and_echoed_as_numbers() {
        let m = decode_str(r#"[1,-2.5e3,"t","e",{}]"#).expect("decodes");
        assert_eq!(m.join_ref, Some(Ref::Num("1".into())));
        assert_eq!(m.ref_, Some(Ref::Num("-2.5e3".into())));
        let f = encode_reply(
            m.join_ref.as_ref(),
            m.ref_.as_ref(),
            "t",
            "ok",
            &Bytes::from_static(b"{}"),
        );
        assert_eq!(
            text(&f),
            r#"[1,-2.5e3,"t","phx_reply",{"response":{},"status":"ok"}]"#
        );
    }

    #[test]
    fn extra_trailing_elements_are_ignored() {
        let m = decode_str(r#"["1","2","t","e",[1],"extra",{"x":[1,2,3]},null]"#).expect("decodes");
        assert_eq!(m.payload, Payload::Json(Bytes::from_static(b"[1]")));
    }

    #[test]
    fn any_json_payload() {
        for p in ["null", "1", "\"x\"", "[]", "true", "{\"a\":{\"b\":[]}}"] {
            let m = decode_str(&format!(r#"[null,null,"t","e",{p}]"#)).expect("decodes");
            assert_eq!(
                m.payload,
                Payload::Json(Bytes::copy_from_slice(p.as_bytes()))
            );
        }
    }

    #[test]
    fn huge_numbers_are_kept_as_text() {
        // Found by the decode_v2 fuzz target: valid JSON grammar, out of f64 range.
        let m = decode_str(r#"["5","5","t","e",{"some":-22220e222222}]"#).expect("decodes");
        assert_eq!(
            m.payload,
            Payload::Json(Bytes::from_static(br#"{"some":-22220e222222}"#))
        );
        let m = decode_str(r#"[1e999,null,"t","e",{}]"#).expect("decodes");
        assert_eq!(m.join_ref, Some(Ref::Num("1e999".into())));
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let m = decode_str(r#"["a\"b","\u0031","room:caf\u00e9","new\nmsg",{}]"#).expect("decodes");
        assert_eq!(m.join_ref, Some(s("a\"b")));
        assert_eq!(m.ref_, Some(s("1")));
        assert_eq!(m.topic.as_str(), "room:café");
        assert_eq!(m.event, Event::Custom("new\nmsg".into()));
    }

    #[test]
    fn errors() {
        assert_eq!(
            decode_str(r#"["1","2","t","e"]"#),
            Err(DecodeError::Arity(4))
        );
        assert_eq!(decode_str("[]"), Err(DecodeError::Arity(0)));
        assert_eq!(
            decode_str(r#"["1","2",3,"e",{}]"#),
            Err(DecodeError::FieldType("topic"))
        );
        assert_eq!(
            decode_str(r#"["1","2","t",null,{}]"#),
            Err(DecodeError::FieldType("event"))
        );
        assert_eq!(
            decode_str(r#"[true,"2","t","e",{}]"#),
            Err(DecodeError::FieldType("join_ref"))
        );
        assert_eq!(
            decode_str(r#"["1",{},"t","e",{}]"#),
            Err(DecodeError::FieldType("ref"))
        );
        for bad in [
            "",
            "{}",
            "\"x\"",
            "[",
            r#"["1","2","t","e",{}] x"#,
            r#"["1","2","t","e",{]"#,
        ] {
            assert!(
                matches!(decode_str(bad), Err(DecodeError::Json(_))),
                "{bad:?}"
            );
        }
        // A wrong top-level type does not quote the client's value.
        let big = format!("\"{}\"", "x".repeat(100_000));
        let Err(DecodeError::Json(msg)) = decode_str(&big) else {
            panic!("json error")
        };
        assert!(msg.len() < 100, "{msg}");
        let invalid_utf8 = Bytes::from_static(b"[\"1\",\"2\",\"t\xff\",\"e\",{}]");
        assert!(matches!(decode(invalid_utf8), Err(DecodeError::Json(_))));
    }

    #[test]
    fn encodes_like_phoenix() {
        let p = Bytes::from_static(br#"{"body":"hi"}"#);
        assert_eq!(
            text(&encode_message(
                Some(&s("3")),
                None,
                "room:lobby",
                "new_msg",
                &p
            )),
            r#"["3",null,"room:lobby","new_msg",{"body":"hi"}]"#
        );
        assert_eq!(
            text(&encode_message(None, None, "room:lobby", "new_msg", &p)),
            r#"[null,null,"room:lobby","new_msg",{"body":"hi"}]"#
        );
        assert_eq!(
            text(&encode_reply(
                None,
                Some(&s("6")),
                "phoenix",
                "ok",
                &Bytes::from_static(b"{}")
            )),
            r#"[null,"6","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        );
    }

    #[test]
    fn escapes_like_jason() {
        let f = encode_message(
            None,
            Some(&s("\u{1f}\u{0b}")),
            "a\"b\\c/d\u{8}\u{c}\n\r\t",
            "é\u{2028}\u{7f}",
            &Bytes::from_static(b"{}"),
        );
        assert_eq!(
            text(&f),
            "[null,\"\\u001F\\u000B\",\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\",\"é\u{2028}\u{7f}\",{}]"
        );
    }

    #[test]
    fn invalid_numeric_ref_is_written_as_a_string() {
        let f = encode_message(
            Some(&Ref::Num("1]".into())),
            Some(&Ref::Num("07".into())),
            "t",
            "e",
            &Bytes::from_static(b"{}"),
        );
        assert_eq!(text(&f), r#"["1]","07","t","e",{}]"#);
    }

    #[test]
    fn json_number_grammar() {
        for ok in ["0", "-0", "12", "1.5", "-1.5e10", "1E+2", "3e-7", "0.0"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1 ", "0x1", "NaN",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }
}
