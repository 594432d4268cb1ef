//! Serializer benchmarks: decode and encode of V2 JSON text frames and V2 binary
//! frames, reported as bytes per second of wire payload; and Phoenix.Token
//! verification (the work of every socket connect), signing and key derivation.
//!
//! Run briefly with `cargo bench --bench protocol -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::protocol::{binary, v2, Payload, Ref};

/// A JSON payload of roughly `size` bytes: `{"items":[{"id":0,"name":"item-0000","ok":true},...]}`.
fn json_payload(size: usize) -> Bytes {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < size {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item-{i:04}\",\"ok\":true}}"
        ));
        i += 1;
    }
    s.push_str("]}");
    Bytes::from(s)
}

/// A client kind-0 push as phoenix.js sends it.
fn client_push(join_ref: &str, ref_: &str, topic: &str, event: &str, payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(5 + 64 + payload.len());
    for f in [join_ref, ref_, topic, event] {
        v.push(u8::try_from(f.len()).expect("short meta"));
    }
    v.insert(0, 0);
    for f in [join_ref, ref_, topic, event] {
        v.extend_from_slice(f.as_bytes());
    }
    v.extend_from_slice(payload);
    Bytes::from(v)
}

fn v2_json(c: &mut Criterion) {
    let join_ref = Ref::Str("3".into());
    let ref_ = Ref::Str("5".into());
    let cases = [
        (
            "join",
            Bytes::from_static(br#"{"hello":"world"}"#),
            "phx_join",
        ),
        ("push_1KiB", json_payload(1024), "new_msg"),
    ];

    let mut group = c.benchmark_group("v2_json_decode");
    for (name, payload, event) in &cases {
        let frame =
            v2::encode_message(Some(&join_ref), Some(&ref_), "room:lobby", event, payload).head;
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &frame, |b, frame| {
            b.iter(|| v2::decode(black_box(frame.clone())))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("v2_json_encode");
    for (name, payload, event) in &cases {
        let len = v2::encode_message(Some(&join_ref), None, "room:lobby", event, payload).len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("push", name), payload, |b, payload| {
            b.iter(|| {
                v2::encode_message(
                    Some(black_box(&join_ref)),
                    None,
                    black_box("room:lobby"),
                    event,
                    payload,
                )
            })
        });
        let len = v2::encode_reply(Some(&join_ref), Some(&ref_), "room:lobby", "ok", payload).len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("reply", name), payload, |b, payload| {
            b.iter(|| {
                v2::encode_reply(
                    Some(&join_ref),
                    Some(black_box(&ref_)),
                    "room:lobby",
                    "ok",
                    payload,
                )
            })
        });
    }
    group.finish();
}

fn v2_binary(c: &mut Criterion) {
    let sizes = [("64B", 64), ("16KiB", 16 << 10), ("1MiB", 1 << 20)];
    let join_ref = Ref::Str("10".into());

    let mut group = c.benchmark_group("v2_binary_decode");
    for (name, size) in sizes {
        let frame = client_push("10", "15", "image:cap", "chunk", &vec![0xab; size]);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &frame, |b, frame| {
            b.iter(|| binary::decode_push(black_box(frame.clone())))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("v2_binary_encode");
    for (name, size) in sizes {
        let payload = Bytes::from(vec![0xab; size]);
        let push_len =
            binary::encode_push(Some(&join_ref), "image:cap", "new chunk", payload.clone())
                .map(|f| f.len())
                .unwrap_or_default();
        group.throughput(Throughput::Bytes(push_len as u64));
        group.bench_with_input(BenchmarkId::new("push", name), &payload, |b, payload| {
            b.iter(|| {
                binary::encode_push(
                    Some(&join_ref),
                    black_box("image:cap"),
                    "new chunk",
                    payload.clone(),
                )
            })
        });
        let bcast_len = binary::encode_broadcast("image:cap", "new chunk", payload.clone())
            .map(|f| f.len())
            .unwrap_or_default();
        group.throughput(Throughput::Bytes(bcast_len as u64));
        group.bench_with_input(
            BenchmarkId::new("broadcast", name),
            &payload,
            |b, payload| {
                b.iter(|| {
                    binary::encode_broadcast(black_box("image:cap"), "new chunk", payload.clone())
                })
            },
        );
        // What a writer task does with the frame when it needs one buffer
        // (long-poll, or a WebSocket library without vectored writes).
        let frame = sluice::protocol::encode_push(
            sluice::protocol::Format::V2,
            Some(&join_ref),
            "image:cap",
            "new chunk",
            &Payload::Binary(payload.clone()),
        )
        .expect("short meta");
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new("push_to_vec", name), &frame, |b, frame| {
            b.iter(|| black_box(frame).to_vec())
        });
    }
    group.finish();
}

/// Phoenix.Token: verify (HMAC-SHA256 + ETF decode, done on every connect),
/// sign, and deriving the key from secret_key_base (PBKDF2, done once).
fn token(c: &mut Criterion) {
    use sluice::token::{self, Key, MaxAge, Term, VerifyOptions};
    let secret = [b'k'; 64];
    let key = Key::derive(&secret, token::SOCKET_SALT.as_bytes());
    let now = 1_764_000_000_000u64;
    let opts = VerifyOptions::default();
    let mut group = c.benchmark_group("token");
    for (name, data) in [
        ("int_user", Term::Int(42)),
        (
            "binary_user",
            Term::Binary(b"user-0123456789abcdef".to_vec()),
        ),
    ] {
        let signed = token::sign(&key, &data, now, MaxAge::Seconds(86_400));
        group.bench_with_input(BenchmarkId::new("verify", name), &signed, |b, t| {
            b.iter(|| token::verify(&key, Some(black_box(t)), now, &opts))
        });
        group.bench_with_input(BenchmarkId::new("sign", name), &data, |b, d| {
            b.iter(|| token::sign(&key, black_box(d), now, MaxAge::Seconds(86_400)))
        });
    }
    group.bench_function("verify/invalid_signature", |b| {
        let mut bad = token::sign(&key, &Term::Int(42), now, MaxAge::Seconds(86_400));
        bad.push('x');
        b.iter(|| token::verify(&key, Some(black_box(&bad)), now, &opts))
    });
    group.sample_size(10);
    group.bench_function("derive_key", |b| {
        b.iter(|| Key::derive(black_box(&secret), token::SOCKET_SALT.as_bytes()))
    });
    group.finish();
}

/// `criterion_group!` generates an undocumented `pub fn`; keep it out of the lint.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::v2_json, super::v2_binary, super::token);
}
criterion_main!(group::benches);
