//! `protocol::v1::decode` on arbitrary bytes: never panics; whatever decodes
//! re-encodes to a frame that decodes to the same message (less the join_ref,
//! which V1 never sends).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice::protocol::{v1, Payload};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = v1::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let Payload::Json(payload) = &m.payload else {
        panic!("V1 decoded a binary payload")
    };
    // Syntax only: a number out of f64 range is still JSON text (see the v2 module docs).
    assert!(
        serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok(),
        "payload is not one JSON value"
    );
    let frame = v1::encode_message(m.ref_.as_ref(), m.topic.as_str(), m.event.as_str(), payload);
    let again = v1::decode(frame.head.clone()).expect("re-encoded frame decodes");
    assert_eq!(again.join_ref, None);
    assert_eq!(
        (&again.ref_, &again.topic, &again.event, &again.payload),
        (&m.ref_, &m.topic, &m.event, &m.payload)
    );
});
