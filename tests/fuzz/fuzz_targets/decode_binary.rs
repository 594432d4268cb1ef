//! `protocol::binary::decode_push` on arbitrary bytes: never panics; whatever
//! decodes is rebuilt byte for byte from its parts.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice::protocol::{binary, Payload, Ref};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = binary::decode_push(Bytes::copy_from_slice(data)) else {
        return;
    };
    let Payload::Binary(payload) = &m.payload else {
        panic!("binary push decoded a JSON payload")
    };
    let fields = [
        m.join_ref.as_ref().map_or("", Ref::as_str),
        m.ref_.as_ref().map_or("", Ref::as_str),
        m.topic.as_str(),
        m.event.as_str(),
    ];
    let mut rebuilt = vec![0u8];
    for f in fields {
        rebuilt.push(u8::try_from(f.len()).expect("decoded meta fits a byte"));
    }
    for f in fields {
        rebuilt.extend_from_slice(f.as_bytes());
    }
    rebuilt.extend_from_slice(payload);
    assert_eq!(rebuilt, data);
});
