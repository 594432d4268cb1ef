//! vsn 2.0.0 binary frames (WebSocket binary opcode).
//!
//! Every meta field is preceded by a one-byte length, so join_ref, ref, topic,
//! event and status are each at most [`MAX_META_LEN`] bytes (UTF-8 byte length);
//! the payload is the rest of the frame.
//!
//! | kind | direction | layout |
//! |---|---|---|
//! | 0 push | client → server | `0x00, len(join_ref), len(ref), len(topic), len(event), join_ref, ref, topic, event, payload` |
//! | 0 push | server → client | `0x00, len(join_ref), len(topic), len(event), join_ref, topic, event, payload` (no ref) |
//! | 1 reply | server → client | `0x01, len(join_ref), len(ref), len(topic), len(status), join_ref, ref, topic, status, payload` |
//! | 2 broadcast | server → client | `0x02, len(topic), len(event), topic, event, payload` |
//!
//! # Contract
//! * [`decode_push`] accepts only kind 0 (clients send nothing else) and returns
//!   the payload as a `Bytes` slice of the frame (no copy).
//! * A binary frame cannot say `null`: Phoenix writes a nil ref as the empty
//!   string, and phoenix.js treats an empty join_ref like a null one. So an empty
//!   join_ref or ref decodes to `None`, and `None` encodes as an empty string.
//!   (Phoenix itself keeps `""` as the join_ref of a decoded binary push; no
//!   real client sends one, as phoenix.js always pushes with its join's ref.)
//! * The encoders put the Phoenix header and meta fields in [`Frame::head`] and
//!   the payload, untouched, in [`Frame::body`]. A meta field longer than
//!   [`MAX_META_LEN`] bytes is [`EncodeError::MetaTooLong`].

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    DecodeError, EncodeError, Event, Frame, Message, Opcode, Payload, Ref, Topic, MAX_META_LEN,
};

/// Kind byte of a push (client → server or server → client).
const KIND_PUSH: u8 = 0;
/// Kind byte of a reply (server → client).
const KIND_REPLY: u8 = 1;
/// Kind byte of a broadcast (server → client).
const KIND_BROADCAST: u8 = 2;

/// Decode a client kind-0 push.
///
/// Errors: [`DecodeError::UnknownKind`] for a kind byte other than 0,
/// [`DecodeError::Truncated`] when the frame is shorter than its header says,
/// [`DecodeError::Utf8`] when a meta field is not UTF-8.
pub fn decode_push(data: Bytes) -> Result<Message, DecodeError> {
    let (&kind, rest) = data.split_first().ok_or(DecodeError::Truncated)?;
    if kind != KIND_PUSH {
        return Err(DecodeError::UnknownKind(kind));
    }
    let &[join_ref_len, ref_len, topic_len, event_len, ..] = rest else {
        return Err(DecodeError::Truncated);
    };
    let header = 5;
    let meta_end = header
        + usize::from(join_ref_len)
        + usize::from(ref_len)
        + usize::from(topic_len)
        + usize::from(event_len);
    if data.len() < meta_end {
        return Err(DecodeError::Truncated);
    }
    let mut meta = Meta {
        data: &data,
        at: header,
    };
    let join_ref = meta.take(join_ref_len, "join_ref")?;
    let ref_ = meta.take(ref_len, "ref")?;
    let topic = meta.take(topic_len, "topic")?;
    let event = meta.take(event_len, "event")?;
    Ok(Message {
        join_ref: non_empty_ref(join_ref),
        ref_: non_empty_ref(ref_),
        topic: Topic(topic.to_owned()),
        event: Event::parse(event),
        payload: Payload::Binary(data.slice(meta_end..)),
    })
}

/// Encode a kind-1 reply; `None` refs are written as empty strings.
pub fn encode_reply(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    data: Bytes,
) -> Result<Frame, EncodeError> {
    let join_ref = join_ref.map_or("", Ref::as_str);
    let ref_ = ref_.map_or("", Ref::as_str);
    let lens = [
        KIND_REPLY,
        meta_len(join_ref, "join_ref")?,
        meta_len(ref_, "ref")?,
        meta_len(topic, "topic")?,
        meta_len(status, "status")?,
    ];
    Ok(binary_frame(&lens, &[join_ref, ref_, topic, status], data))
}

/// Encode a kind-0 server push (no ref); a `None` join_ref is written as an empty string.
pub fn encode_push(
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    data: Bytes,
) -> Result<Frame, EncodeError> {
    let join_ref = join_ref.map_or("", Ref::as_str);
    let lens = [
        KIND_PUSH,
        meta_len(join_ref, "join_ref")?,
        meta_len(topic, "topic")?,
        meta_len(event, "event")?,
    ];
    Ok(binary_frame(&lens, &[join_ref, topic, event], data))
}

/// The meta part (everything before the payload) of a kind-0 server push, for
/// callers that send many pushes with the same meta, such as file chunks: the
/// frame is then `header ++ payload` with the payload never copied.
pub fn push_header(join_ref: Option<&Ref>, topic: &str, event: &str) -> Result<Bytes, EncodeError> {
    Ok(encode_push(join_ref, topic, event, Bytes::new())?.head)
}

/// Encode a kind-2 broadcast (no refs).
pub fn encode_broadcast(topic: &str, event: &str, data: Bytes) -> Result<Frame, EncodeError> {
    let lens = [
        KIND_BROADCAST,
        meta_len(topic, "topic")?,
        meta_len(event, "event")?,
    ];
    Ok(binary_frame(&lens, &[topic, event], data))
}

// === helpers ===

/// A cursor over the meta fields of a frame whose length is already checked.
struct Meta<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Meta<'a> {
    fn take(&mut self, len: u8, field: &'static str) -> Result<&'a str, DecodeError> {
        let end = self.at + usize::from(len);
        let bytes = self.data.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8(field))
    }
}

fn non_empty_ref(s: &str) -> Option<Ref> {
    (!s.is_empty()).then(|| Ref::Str(s.to_owned()))
}

fn meta_len(s: &str, field: &'static str) -> Result<u8, EncodeError> {
    debug_assert_eq!(MAX_META_LEN, usize::from(u8::MAX));
    u8::try_from(s.len()).map_err(|_| EncodeError::MetaTooLong(field))
}

/// `head` = kind and length bytes, then the meta fields; `body` = the payload.
fn binary_frame(lens: &[u8], fields: &[&str], data: Bytes) -> Frame {
    let meta: usize = fields.iter().map(|f| f.len()).sum();
    let mut head = BytesMut::with_capacity(lens.len() + meta);
    head.put_slice(lens);
    for field in fields {
        head.put_slice(field.as_bytes());
    }
    Frame {
        opcode: Opcode::Binary,
        head: head.freeze(),
        body: data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Ref {
        Ref::Str(v.to_owned())
    }

    /// What phoenix.js sends: a client kind-0 push.
    fn client_push(
        join_ref: &str,
        ref_: &str,
        topic: &str,
        event: &str,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut v = vec![
            0,
            join_ref.len() as u8,
            ref_.len() as u8,
            topic.len() as u8,
            event.len() as u8,
        ];
        for f in [join_ref, ref_, topic, event] {
            v.extend_from_slice(f.as_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_observed_phoenix_js_push() {
        // `channel.push("upload", ArrayBuffer [1,2,3,255])`, join_ref "3", ref "4".
        let frame =
            Bytes::from_static(b"\x00\x01\x01\x0a\x06\x33\x34room:lobbyupload\x01\x02\x03\xff");
        let m = decode_push(frame.clone()).expect("decodes");
        assert_eq!(m.join_ref, Some(s("3")));
        assert_eq!(m.ref_, Some(s("4")));
        assert_eq!(m.topic.as_str(), "room:lobby");
        assert_eq!(m.event, Event::Custom("upload".into()));
        let Payload::Binary(p) = &m.payload else {
            panic!("binary payload")
        };
        assert_eq!(&p[..], &[1, 2, 3, 255]);
        // Zero copy: the payload points into the frame.
        assert_eq!(p.as_ptr(), frame[frame.len() - 4..].as_ptr());
    }

    #[test]
    fn empty_refs_are_none_and_empty_payload_is_fine() {
        let m =
            decode_push(Bytes::from(client_push("", "", "t", "phx_leave", b""))).expect("decodes");
        assert_eq!(m.join_ref, None);
        assert_eq!(m.ref_, None);
        assert_eq!(m.event, Event::Leave);
        assert_eq!(m.payload, Payload::Binary(Bytes::new()));
    }

    #[test]
    fn non_ascii_topic_uses_utf8_lengths() {
        let frame = client_push("1", "2", "room:café", "é", b"x");
        assert_eq!(frame[3], 10);
        let m = decode_push(Bytes::from(frame)).expect("decodes");
        assert_eq!(m.topic.as_str(), "room:café");
        let f = encode_broadcast("room:café", "é", Bytes::from_static(b"x")).expect("encodes");
        assert_eq!(&f.head[..3], &[2, 10, 2]);
        assert_eq!(&f.head[3..], "room:caféé".as_bytes());
    }

    #[test]
    fn decode_errors() {
        assert_eq!(decode_push(Bytes::new()), Err(DecodeError::Truncated));
        assert_eq!(
            decode_push(Bytes::from_static(&[0, 1, 1, 1])),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_push(Bytes::from_static(&[1, 0, 0, 0, 0])),
            Err(DecodeError::UnknownKind(1))
        );
        assert_eq!(
            decode_push(Bytes::from_static(&[2])),
            Err(DecodeError::UnknownKind(2))
        );
        let full = client_push("1", "2", "topic", "event", b"");
        assert!(decode_push(Bytes::from(full.clone())).is_ok());
        for cut in 0..full.len() {
            assert_eq!(
                decode_push(Bytes::copy_from_slice(&full[..cut])),
                Err(DecodeError::Truncated),
                "cut {cut}"
            );
        }
        for (i, field) in ["join_ref", "ref", "topic", "event"]
            .into_iter()
            .enumerate()
        {
            let mut f = client_push("1", "2", "3", "4", b"\xff");
            f[5 + i] = 0xff;
            assert_eq!(decode_push(Bytes::from(f)), Err(DecodeError::Utf8(field)));
        }
    }

    #[test]
    fn encodes_observed_server_frames() {
        let reply = encode_reply(
            Some(&s("3")),
            Some(&s("4")),
            "room:lobby",
            "ok",
            Bytes::from_static(&[9, 8, 7]),
        )
        .expect("encodes");
        assert_eq!(reply.opcode, Opcode::Binary);
        assert_eq!(
            reply.to_vec(),
            b"\x01\x01\x01\x0a\x02\x33\x34room:lobbyok\x09\x08\x07"
        );
        let bcast = encode_broadcast("room:lobby", "bin_bcast", Bytes::from_static(&[0x2a, 0x2b]))
            .expect("encodes");
        assert_eq!(bcast.to_vec(), b"\x02\x0a\x09room:lobbybin_bcast\x2a\x2b");
        let push = encode_push(None, "t", "e", Bytes::from_static(b"p")).expect("encodes");
        assert_eq!(push.to_vec(), b"\x00\x00\x01\x01tep");
    }

    #[test]
    fn body_is_the_payload_without_copy() {
        let payload = Bytes::from(vec![7u8; 1024]);
        let f = encode_push(Some(&s("1")), "t", "e", payload.clone()).expect("encodes");
        assert_eq!(f.body.as_ptr(), payload.as_ptr());
        assert_eq!(&f.head[..], b"\x00\x01\x01\x011te");
    }

    #[test]
    fn meta_length_limit() {
        let ok = "t".repeat(255);
        let long = "t".repeat(256);
        let p = Bytes::new();
        let f = encode_broadcast(&ok, "e", p.clone()).expect("255 bytes fit");
        assert_eq!(f.head[1], 255);
        let m = decode_push(Bytes::from(client_push("1", "2", &ok, "e", b""))).expect("decodes");
        assert_eq!(m.topic.as_str(), ok);
        assert_eq!(
            encode_broadcast(&long, "e", p.clone()),
            Err(EncodeError::MetaTooLong("topic"))
        );
        assert_eq!(
            encode_broadcast("t", &long, p.clone()),
            Err(EncodeError::MetaTooLong("event"))
        );
        assert_eq!(
            encode_push(Some(&s(&long)), "t", "e", p.clone()),
            Err(EncodeError::MetaTooLong("join_ref"))
        );
        assert_eq!(
            encode_push(None, &long, "e", p.clone()),
            Err(EncodeError::MetaTooLong("topic"))
        );
        assert_eq!(
            encode_push(None, "t", &long, p.clone()),
            Err(EncodeError::MetaTooLong("event"))
        );
        assert_eq!(
            encode_reply(None, Some(&s(&long)), "t", "ok", p.clone()),
            Err(EncodeError::MetaTooLong("ref"))
        );
        assert_eq!(
            encode_reply(None, None, "t", &long, p.clone()),
            Err(EncodeError::MetaTooLong("status"))
        );
        assert_eq!(
            encode_reply(Some(&s(&long)), None, "t", "ok", p),
            Err(EncodeError::MetaTooLong("join_ref"))
        );
        // 128 two-byte characters: 128 chars but 256 bytes.
        assert_eq!(
            encode_broadcast(&"é".repeat(128), "e", Bytes::new()),
            Err(EncodeError::MetaTooLong("topic"))
        );
        // A numeric ref is written as its text.
        let f = encode_reply(Some(&Ref::Num("12".into())), None, "t", "ok", Bytes::new())
            .expect("encodes");
        assert_eq!(&f.head[..], b"\x01\x02\x00\x01\x0212tok");
    }
}
