//! Cross-serializer tests: golden frames captured from Phoenix 1.8.12 and
//! phoenix.js 1.8.16 (`testdata/phoenix-frames.txt`, a copy of
//! `shared/notes/phoenix-frames.txt`), property tests and the dispatchers.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::*;

const FRAMES: &str = include_str!("testdata/phoenix-frames.txt");

// === golden frames ===

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// A ref as Phoenix's JSON has it (independent of the code under test).
fn json_ref(v: &Value) -> Option<Ref> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(Ref::Str(s.clone())),
        Value::Number(n) => Some(Ref::Num(n.to_string())),
        other => panic!("unexpected ref {other}"),
    }
}

fn raw_bytes(raw: &RawValue) -> Bytes {
    Bytes::copy_from_slice(raw.get().as_bytes())
}

#[derive(Deserialize)]
struct ReplyPayload<'a> {
    #[serde(borrow)]
    response: &'a RawValue,
    status: String,
}

#[derive(Deserialize)]
struct V1Frame<'a> {
    event: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(rename = "ref")]
    ref_: Value,
    topic: String,
}

/// Re-encode a V2 JSON server frame from its parts.
fn reencode_v2(line: &str) -> Frame {
    let parts: Vec<&RawValue> = serde_json::from_str(line).expect("server frame is a JSON array");
    assert_eq!(parts.len(), 5);
    let join_ref = json_ref(&serde_json::from_str(parts[0].get()).unwrap());
    let ref_ = json_ref(&serde_json::from_str(parts[1].get()).unwrap());
    let topic: String = serde_json::from_str(parts[2].get()).unwrap();
    let event: String = serde_json::from_str(parts[3].get()).unwrap();
    if event == "phx_reply" {
        let reply: ReplyPayload = serde_json::from_str(parts[4].get()).unwrap();
        let response = Payload::Json(raw_bytes(reply.response));
        encode_reply(
            Format::V2,
            join_ref.as_ref(),
            ref_.as_ref(),
            &topic,
            &reply.status,
            &response,
        )
        .unwrap()
    } else {
        let payload = Payload::Json(raw_bytes(parts[4]));
        match (&join_ref, &ref_) {
            (None, None) => encode_broadcast(Format::V2, &topic, &event, &payload).unwrap(),
            (Some(_), None) => {
                encode_push(Format::V2, join_ref.as_ref(), &topic, &event, &payload).unwrap()
            }
            (_, Some(_)) => v2::encode_message(
                join_ref.as_ref(),
                ref_.as_ref(),
                &topic,
                &event,
                &raw_bytes(parts[4]),
            ),
        }
    }
}

/// Re-encode a V1 JSON server frame from its parts.
fn reencode_v1(line: &str) -> Frame {
    let f: V1Frame = serde_json::from_str(line).expect("server frame is a V1 object");
    let ref_ = json_ref(&f.ref_);
    if f.event == "phx_reply" {
        let reply: ReplyPayload = serde_json::from_str(f.payload.get()).unwrap();
        let response = Payload::Json(raw_bytes(reply.response));
        encode_reply(
            Format::V1,
            None,
            ref_.as_ref(),
            &f.topic,
            &reply.status,
            &response,
        )
        .unwrap()
    } else if ref_.is_none() {
        let payload = Payload::Json(raw_bytes(f.payload));
        let push = encode_push(Format::V1, None, &f.topic, &f.event, &payload).unwrap();
        let bcast = encode_broadcast(Format::V1, &f.topic, &f.event, &payload).unwrap();
        assert_eq!(push, bcast);
        bcast
    } else {
        v1::encode_message(ref_.as_ref(), &f.topic, &f.event, &raw_bytes(f.payload))
    }
}

/// Re-encode a binary server frame from its parts (parsed here, not by the code under test).
fn reencode_binary(frame: &[u8]) -> Frame {
    fn field(frame: &[u8], at: &mut usize, len: u8) -> String {
        let end = *at + usize::from(len);
        let s = std::str::from_utf8(&frame[*at..end])
            .expect("UTF-8 meta")
            .to_owned();
        *at = end;
        s
    }
    let opt_ref = |s: String| (!s.is_empty()).then_some(Ref::Str(s));
    match frame[0] {
        0 => {
            let mut at = 4;
            let join_ref = field(frame, &mut at, frame[1]);
            let topic = field(frame, &mut at, frame[2]);
            let event = field(frame, &mut at, frame[3]);
            let payload = Payload::Binary(Bytes::copy_from_slice(&frame[at..]));
            encode_push(
                Format::V2,
                opt_ref(join_ref).as_ref(),
                &topic,
                &event,
                &payload,
            )
            .unwrap()
        }
        1 => {
            let mut at = 5;
            let join_ref = field(frame, &mut at, frame[1]);
            let ref_ = field(frame, &mut at, frame[2]);
            let topic = field(frame, &mut at, frame[3]);
            let status = field(frame, &mut at, frame[4]);
            let payload = Payload::Binary(Bytes::copy_from_slice(&frame[at..]));
            encode_reply(
                Format::V2,
                opt_ref(join_ref).as_ref(),
                opt_ref(ref_).as_ref(),
                &topic,
                &status,
                &payload,
            )
            .unwrap()
        }
        2 => {
            let mut at = 3;
            let topic = field(frame, &mut at, frame[1]);
            let event = field(frame, &mut at, frame[2]);
            let payload = Payload::Binary(Bytes::copy_from_slice(&frame[at..]));
            encode_broadcast(Format::V2, &topic, &event, &payload).unwrap()
        }
        kind => panic!("unexpected server kind {kind}"),
    }
}

/// Check a decoded client JSON message against an independent serde_json parse.
fn check_client_json(format: Format, line: &str) {
    let data = Bytes::copy_from_slice(line.as_bytes());
    let m = decode(format, true, data.clone()).unwrap_or_else(|e| panic!("{line}: {e}"));
    let v: Value = serde_json::from_str(line).unwrap();
    let (join_ref, ref_, topic, event, payload) = match format {
        Format::V2 => (json_ref(&v[0]), json_ref(&v[1]), &v[2], &v[3], &v[4]),
        Format::V1 => (
            v.get("join_ref").and_then(json_ref),
            json_ref(&v["ref"]),
            &v["topic"],
            &v["event"],
            &v["payload"],
        ),
    };
    assert_eq!(m.join_ref, join_ref, "{line}");
    assert_eq!(m.ref_, ref_, "{line}");
    assert_eq!(Some(m.topic.as_str()), topic.as_str(), "{line}");
    assert_eq!(Some(m.event.as_str()), event.as_str(), "{line}");
    let Payload::Json(p) = &m.payload else {
        panic!("{line}: JSON payload expected")
    };
    assert_eq!(
        &serde_json::from_slice::<Value>(p).unwrap(),
        payload,
        "{line}"
    );
    // Zero copy: the payload is a slice of the frame.
    let start = p.as_ptr() as usize - data.as_ptr() as usize;
    assert!(
        start + p.len() <= data.len(),
        "{line}: payload not inside the frame"
    );
}

/// Check a decoded client binary push against a re-encoding of its parts.
fn check_client_binary(frame: &[u8]) {
    let m =
        decode(Format::V2, false, Bytes::copy_from_slice(frame)).unwrap_or_else(|e| panic!("{e}"));
    let Payload::Binary(p) = &m.payload else {
        panic!("binary payload expected")
    };
    let join_ref = m.join_ref.as_ref().map_or("", Ref::as_str);
    let ref_ = m.ref_.as_ref().map_or("", Ref::as_str);
    assert_eq!(
        client_push(join_ref, ref_, m.topic.as_str(), m.event.as_str(), p),
        frame
    );
}

/// A client kind-0 push, as phoenix.js builds it.
fn client_push(join_ref: &str, ref_: &str, topic: &str, event: &str, payload: &[u8]) -> Vec<u8> {
    let len = |s: &str| u8::try_from(s.len()).expect("meta fits");
    let mut v = vec![0, len(join_ref), len(ref_), len(topic), len(event)];
    for f in [join_ref, ref_, topic, event] {
        v.extend_from_slice(f.as_bytes());
    }
    v.extend_from_slice(payload);
    v
}

#[derive(Debug, Default, PartialEq)]
struct Counts {
    client_text: usize,
    client_binary: usize,
    server_text: usize,
    server_binary: usize,
}

#[test]
fn golden_frames_from_phoenix() {
    let mut counts = Counts::default();
    let mut format = None;
    let mut lines = FRAMES.lines();
    while let Some(line) = lines.next() {
        if let Some(title) = line.strip_prefix("## ") {
            format = if title.starts_with("V1 session") {
                Some(Format::V1)
            } else if title.starts_with("V2 session") || title.starts_with("phoenix.js") {
                Some(Format::V2)
            } else {
                None // connect failures, LongPoll
            };
            continue;
        }
        let Some(format) = format else { continue };
        let (dir, rest) = match line.split_once(' ') {
            Some((dir @ ("C->S" | "S->C"), rest)) => (dir, rest),
            _ => continue,
        };
        let client = dir == "C->S";
        if let Some(json) = rest.strip_prefix("text") {
            let json = json.trim_start();
            if client {
                check_client_json(format, json);
                counts.client_text += 1;
            } else {
                let frame = match format {
                    Format::V2 => reencode_v2(json),
                    Format::V1 => reencode_v1(json),
                };
                assert_eq!(frame.opcode, Opcode::Text, "{json}");
                assert_eq!(String::from_utf8(frame.to_vec()).unwrap(), json);
                counts.server_text += 1;
            }
        } else if let Some(header) = rest.strip_prefix("binary") {
            let hex = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("hex="))
                .expect("hex line after a binary frame");
            let bytes = unhex(hex);
            if let Some(len) = header
                .split_whitespace()
                .find_map(|w| w.strip_prefix("len="))
            {
                assert_eq!(len.parse::<usize>().unwrap(), bytes.len());
            }
            if client {
                check_client_binary(&bytes);
                counts.client_binary += 1;
            } else {
                let frame = reencode_binary(&bytes);
                assert_eq!(frame.opcode, Opcode::Binary);
                assert_eq!(frame.to_vec(), bytes, "{header}");
                counts.server_binary += 1;
            }
        } else {
            panic!("unrecognised frame line {line}");
        }
    }
    eprintln!("golden frames checked: {counts:?}");
    assert_eq!(
        counts,
        Counts {
            client_text: 35,
            client_binary: 4,
            server_text: 35,
            server_binary: 7,
        }
    );
}

#[test]
fn echo_reply_reuses_the_decoded_payload() {
    // ["5","6","echo:cap","ping",{..}] is echoed in the reply's response.
    let req = r#"["5","6","echo:cap","ping",{"a":1,"b":[true,null,"x"],"u":"héllo ☃"}]"#;
    let m = decode(Format::V2, true, Bytes::from_static(req.as_bytes())).unwrap();
    let f = encode_reply(
        Format::V2,
        m.join_ref.as_ref(),
        m.ref_.as_ref(),
        m.topic.as_str(),
        "ok",
        &m.payload,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(f.to_vec()).unwrap(),
        r#"["5","6","echo:cap","phx_reply",{"response":{"a":1,"b":[true,null,"x"],"u":"héllo ☃"},"status":"ok"}]"#
    );
    // Binary echo: 00 01 01 08 03 "5" "7" "echo:cap" "bin" 00 01 fe ff -> kind-1 reply.
    let push = unhex("000101080335376563686f3a63617062696e0001feff");
    let m = decode(Format::V2, false, Bytes::from(push)).unwrap();
    let f = encode_reply(
        Format::V2,
        m.join_ref.as_ref(),
        m.ref_.as_ref(),
        m.topic.as_str(),
        "ok",
        &m.payload,
    )
    .unwrap();
    assert_eq!(
        f.to_vec(),
        unhex("010101080235376563686f3a6361706f6b0001feff")
    );
}

// === dispatchers ===

#[test]
fn v1_has_no_binary() {
    let bin = Payload::Binary(Bytes::from_static(b"x"));
    assert_eq!(
        decode(Format::V1, false, Bytes::from_static(b"{}")),
        Err(DecodeError::BinaryUnsupported)
    );
    assert_eq!(
        encode_reply(Format::V1, None, None, "t", "ok", &bin),
        Err(EncodeError::BinaryUnsupported)
    );
    assert_eq!(
        encode_push(Format::V1, None, "t", "e", &bin),
        Err(EncodeError::BinaryUnsupported)
    );
    assert_eq!(
        encode_broadcast(Format::V1, "t", "e", &bin),
        Err(EncodeError::BinaryUnsupported)
    );
}

#[test]
fn v2_binary_dispatch() {
    let bin = Payload::Binary(Bytes::from_static(b"\x01"));
    let r = Ref::Str("3".into());
    assert_eq!(
        encode_push(Format::V2, Some(&r), "t", "e", &bin)
            .unwrap()
            .to_vec(),
        b"\x00\x01\x01\x013te\x01"
    );
    assert_eq!(
        encode_broadcast(Format::V2, "t", "e", &bin)
            .unwrap()
            .to_vec(),
        b"\x02\x01\x01te\x01"
    );
    assert_eq!(
        encode_reply(Format::V2, Some(&r), Some(&r), "t", "ok", &bin)
            .unwrap()
            .to_vec(),
        b"\x01\x01\x01\x01\x0233tok\x01"
    );
    // JSON in a binary opcode frame is not JSON to the V2 decoder (phoenix#4108).
    assert_eq!(
        decode(
            Format::V2,
            false,
            Bytes::from_static(br#"["1","1","t","e",{}]"#)
        ),
        Err(DecodeError::UnknownKind(b'['))
    );
}

// === property tests ===

fn arb_ref() -> impl Strategy<Value = Option<Ref>> {
    prop_oneof![
        Just(None),
        any::<String>().prop_map(|s| Some(Ref::Str(s))),
        any::<i64>().prop_map(|n| Some(Ref::Num(n.to_string()))),
        (any::<i32>(), 0u32..1000, -30i32..30)
            .prop_map(|(i, f, e)| Some(Ref::Num(format!("{i}.{f}e{e}")))),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_payload() -> impl Strategy<Value = Bytes> {
    arb_json().prop_map(|v| Bytes::from(serde_json::to_vec(&v).unwrap()))
}

/// Meta strings that fit a binary frame (≤ 60 chars × 4 bytes).
fn arb_meta(min: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), min..60).prop_map(|c| c.into_iter().collect())
}

/// Truncate `frame` and overwrite some bytes: almost-valid inputs reach deeper code.
fn mutate(
    mut frame: Vec<u8>,
    cut: prop::sample::Index,
    edits: &[(prop::sample::Index, u8)],
) -> Vec<u8> {
    if !frame.is_empty() {
        for (at, byte) in edits {
            let i = at.index(frame.len());
            frame[i] = *byte;
        }
        frame.truncate(cut.index(frame.len() + 1));
    }
    frame
}

proptest! {
    #[test]
    fn v2_message_round_trip(jr in arb_ref(), r in arb_ref(), topic in any::<String>(), event in any::<String>(), payload in arb_payload()) {
        let f = v2::encode_message(jr.as_ref(), r.as_ref(), &topic, &event, &payload);
        let m = v2::decode(f.head.clone()).unwrap();
        prop_assert_eq!(m.join_ref, jr);
        prop_assert_eq!(m.ref_, r);
        prop_assert_eq!(m.topic.as_str(), topic.as_str());
        prop_assert_eq!(m.event.as_str(), event.as_str());
        prop_assert_eq!(m.payload, Payload::Json(payload));
    }

    #[test]
    fn v2_reply_round_trip(jr in arb_ref(), r in arb_ref(), topic in any::<String>(), status in any::<String>(), response in arb_json()) {
        let bytes = Bytes::from(serde_json::to_vec(&response).unwrap());
        let f = v2::encode_reply(jr.as_ref(), r.as_ref(), &topic, &status, &bytes);
        let m = v2::decode(f.head.clone()).unwrap();
        prop_assert_eq!(m.join_ref, jr);
        prop_assert_eq!(m.ref_, r);
        prop_assert_eq!(m.event, Event::Reply);
        let Payload::Json(p) = m.payload else { panic!("json") };
        let v: Value = serde_json::from_slice(&p).unwrap();
        let expected: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&v["response"], &expected);
        prop_assert_eq!(&v["status"], &Value::String(status));
    }

    #[test]
    fn v1_message_round_trip(r in arb_ref(), topic in any::<String>(), event in any::<String>(), payload in arb_payload()) {
        let f = v1::encode_message(r.as_ref(), &topic, &event, &payload);
        let m = v1::decode(f.head.clone()).unwrap();
        prop_assert_eq!(m.join_ref, None);
        prop_assert_eq!(m.ref_, r);
        prop_assert_eq!(m.topic.as_str(), topic.as_str());
        prop_assert_eq!(m.event.as_str(), event.as_str());
        prop_assert_eq!(m.payload, Payload::Json(payload));
    }

    #[test]
    fn encoded_json_agrees_with_serde_json(jr in arb_ref(), topic in any::<String>(), event in any::<String>(), payload in arb_json()) {
        // Same text as serde_json's compact output, up to the case of \u escapes (Jason's upper case).
        let bytes = Bytes::from(serde_json::to_vec(&payload).unwrap());
        let f = v2::encode_message(jr.as_ref(), None, &topic, &event, &bytes);
        let jr_value = match &jr {
            None => Value::Null,
            Some(Ref::Str(s)) => Value::String(s.clone()),
            Some(Ref::Num(n)) => serde_json::from_str(n).unwrap(),
        };
        let payload: Value = serde_json::from_slice(&bytes).unwrap();
        let expected = Value::Array(vec![jr_value, Value::Null, Value::String(topic), Value::String(event), payload]);
        let ours: Value = serde_json::from_slice(&f.to_vec()).unwrap();
        prop_assert_eq!(ours, expected);
    }

    #[test]
    fn binary_push_round_trip(jr in arb_meta(1), r in arb_meta(1), topic in arb_meta(0), event in arb_meta(0), payload in prop::collection::vec(any::<u8>(), 0..512), empty_refs in any::<bool>()) {
        let (jr, r) = if empty_refs { (String::new(), String::new()) } else { (jr, r) };
        let frame = Bytes::from(client_push(&jr, &r, &topic, &event, &payload));
        let m = binary::decode_push(frame).unwrap();
        prop_assert_eq!(m.join_ref, (!jr.is_empty()).then(|| Ref::Str(jr.clone())));
        prop_assert_eq!(m.ref_, (!r.is_empty()).then(|| Ref::Str(r.clone())));
        prop_assert_eq!(m.topic.as_str(), topic.as_str());
        prop_assert_eq!(m.event.as_str(), event.as_str());
        prop_assert_eq!(m.payload, Payload::Binary(Bytes::from(payload)));
    }

    #[test]
    fn binary_server_frames_round_trip(jr in arb_meta(1), r in arb_meta(1), topic in arb_meta(0), event in arb_meta(0), payload in prop::collection::vec(any::<u8>(), 0..512)) {
        let jr_ref = Ref::Str(jr);
        let r_ref = Ref::Str(r);
        let data = Bytes::from(payload);
        for frame in [
            binary::encode_push(Some(&jr_ref), &topic, &event, data.clone()).unwrap(),
            binary::encode_reply(Some(&jr_ref), Some(&r_ref), &topic, &event, data.clone()).unwrap(),
            binary::encode_broadcast(&topic, &event, data.clone()).unwrap(),
        ] {
            prop_assert_eq!(reencode_binary(&frame.to_vec()), frame);
        }
    }

    #[test]
    fn decoders_never_panic_on_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        let data = Bytes::from(data);
        let _ = v1::decode(data.clone());
        let _ = v2::decode(data.clone());
        let _ = binary::decode_push(data);
    }

    #[test]
    fn decoders_never_panic_on_near_misses(
        jr in arb_ref(), topic in any::<String>(), payload in arb_payload(),
        cut in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let v2_frame = v2::encode_message(jr.as_ref(), None, &topic, "e", &payload).to_vec();
        let _ = v2::decode(Bytes::from(mutate(v2_frame, cut, &edits)));
        let v1_frame = v1::encode_message(jr.as_ref(), &topic, "e", &payload).to_vec();
        let _ = v1::decode(Bytes::from(mutate(v1_frame, cut, &edits)));
        let topic: String = topic.chars().take(60).collect();
        let bin = client_push("1", "2", &topic, "e", &payload);
        let _ = binary::decode_push(Bytes::from(mutate(bin, cut, &edits)));
    }
}
