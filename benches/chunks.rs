//! Chunk framing for file downloads: what the writer pays per `new chunk`
//! frame (Phoenix header + index + zero-copy slice of a mapped file), and a
//! whole pull through an outbox the way the socket writer drains it.
//!
//! Run: `cargo bench --bench chunks`. Throughput is in file bytes framed; no
//! file byte is copied, so it is independent of the bytes themselves.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::config::SlowConsumerPolicy;
use sluice::files::chunks::{chunk_frame, ChunkStream, Endings, StreamCtl};
use sluice::files::mapped::FileCache;
use sluice::files::FileMetrics;
use sluice::metrics::Metrics;
use sluice::protocol::{binary, Frame, Opcode, Ref};
use sluice::stream::plan::Plan;
use sluice::transport::outbox::{Item, Limits, Outbox};

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk_frame");
    let header =
        binary::push_header(Some(&Ref::Str("3".into())), "files:abc", "new chunk").unwrap();
    for size in [16 * 1024, 256 * 1024, 4 * 1024 * 1024] {
        let data = Bytes::from(vec![7u8; size]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            let mut i = 0u32;
            b.iter(|| {
                i = i.wrapping_add(1);
                chunk_frame(&header, i, data.slice(..))
            })
        });
    }
    group.finish();
}

fn pull_through_outbox(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-bench-chunks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let size = 64 * 1024 * 1024;
    std::fs::write(dir.join("f.bin"), vec![1u8; size]).unwrap();
    let cache = FileCache::new(&dir, 4, Duration::ZERO).unwrap();
    let file = cache.open("f.bin").unwrap();
    assert!(file.is_mapped());
    let header = binary::push_header(None, "files:abc", "new chunk").unwrap();
    let metrics = Metrics::new();
    let limits = Limits {
        bulk_bytes: 4 << 20,
        control_bytes: 1 << 20,
        policy: SlowConsumerPolicy::Drop,
    };
    let mut group = c.benchmark_group("stream_64MiB");
    group.throughput(Throughput::Bytes(size as u64));
    group.sample_size(20);
    for chunk in [64 * 1024, 256 * 1024, 1024 * 1024] {
        group.bench_with_input(BenchmarkId::from_parameter(chunk), &chunk, |b, &chunk| {
            b.iter(|| {
                let _guard = rt.enter();
                let outbox = Arc::new(Outbox::new(limits, metrics.clone()));
                let plan = Plan::new(size as u64, chunk as u64, 0).unwrap();
                let complete = Frame {
                    opcode: Opcode::Text,
                    head: Bytes::from_static(b"{}"),
                    body: Bytes::new(),
                };
                outbox.add_stream(Box::new(ChunkStream::new(
                    file.clone(),
                    plan,
                    header.clone(),
                    Endings {
                        complete: complete.clone(),
                        failed: complete,
                    },
                    Arc::new(StreamCtl::new(outbox.try_reserve_stream(1).unwrap())),
                    FileMetrics::new(),
                    &outbox,
                )));
                let mut frames = 0usize;
                loop {
                    let batch = outbox.take();
                    if batch.items.is_empty() {
                        break;
                    }
                    frames += batch
                        .items
                        .iter()
                        .filter(|i| matches!(i, Item::Frame(_)))
                        .count();
                }
                assert_eq!(frames as u64, plan.chunks + 1);
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, framing, pull_through_outbox);
criterion_main!(benches);
