//! `protocol::v2::decode` on arbitrary bytes: never panics; whatever decodes
//! re-encodes to a frame that decodes to the same message.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice::protocol::{v2, Payload};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = v2::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let Payload::Json(payload) = &m.payload else {
        panic!("V2 text decoded a binary payload")
    };
    // Syntax only: a number out of f64 range is still JSON text (see the v2 module docs).
    assert!(
        serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok(),
        "payload is not one JSON value"
    );
    let frame = v2::encode_message(
        m.join_ref.as_ref(),
        m.ref_.as_ref(),
        m.topic.as_str(),
        m.event.as_str(),
        payload,
    );
    let again = v2::decode(frame.head.clone()).expect("re-encoded frame decodes");
    assert_eq!(again, m);
});
