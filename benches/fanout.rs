//! Fan-out of one broadcast to many subscriber queues (encode once, share bytes).
//!
//! Run: `cargo bench --bench fanout`. Throughput is in delivered frames.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::config::SlowConsumerPolicy;
use sluice::metrics::Metrics;
use sluice::protocol::{Format, Payload};
use sluice::pubsub::{Origin, PubSub};
use sluice::transport::outbox::{Limits, Outbox};

fn setup(n: usize) -> (PubSub, Vec<Arc<Outbox>>) {
    let metrics = Metrics::new();
    let pubsub = PubSub::new(metrics.clone());
    let limits = Limits {
        bulk_bytes: 1 << 20,
        control_bytes: 1 << 20,
        policy: SlowConsumerPolicy::Drop,
    };
    let outboxes: Vec<_> = (0..n)
        .map(|i| {
            let o = Arc::new(Outbox::new(limits, metrics.clone()));
            pubsub.subscribe("prices:bitcoin", i as u64, Format::V2, o.clone());
            o
        })
        .collect();
    (pubsub, outboxes)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.measurement_time(Duration::from_secs(5));
    let json = Payload::Json(Bytes::from_static(
        br#"{"value":"91234.12","time":1764107000000}"#,
    ));
    let binary = Payload::Binary(Bytes::from(vec![7u8; 64]));
    for &n in &[1_000usize, 10_000] {
        let (pubsub, outboxes) = setup(n);
        group.throughput(Throughput::Elements(n as u64));
        for (name, payload) in [("json", &json), ("binary64", &binary)] {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let d = pubsub.broadcast("prices:bitcoin", "new", payload, Origin::Api);
                        total += t.elapsed();
                        assert_eq!(d.queued, n);
                        for o in &outboxes {
                            let _ = o.take();
                        }
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
