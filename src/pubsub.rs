//! Local publish/subscribe: topic → subscribed sockets, encode once, share bytes.
//!
//! # Contract
//! * A broadcast is encoded at most once per wire format (V1 JSON, V2 JSON or
//!   V2 binary) and the resulting [`Frame`] (reference-counted `Bytes`) is
//!   cloned into every subscriber's bulk lane: no per-subscriber encoding or
//!   copying.
//! * Queuing never blocks and never grows memory beyond each subscriber's
//!   bound: a full subscriber is handled by its own slow-consumer policy
//!   ([`Outbox::push_bulk`]), which does not affect the others.
//! * The registry is one `RwLock`ed map; the lock is held only while queuing
//!   (no `.await` inside) and subscribe/unsubscribe take the write lock briefly.
//! * This module knows nothing about channels or sessions; cluster adapters
//!   will plug in behind [`PubSub::broadcast`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::protocol::{self, Format, Frame, Payload};
use crate::transport::outbox::{Outbox, PushOutcome};

/// Where a broadcast came from (a bounded metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A channel (e.g. a room push).
    Channel,
    /// `POST /api/broadcast`.
    Api,
}

struct Subscriber {
    id: u64,
    format: Format,
    outbox: Arc<Outbox>,
}

/// What one broadcast did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Frames queued.
    pub queued: usize,
    /// Frames dropped or sockets closed by the slow-consumer policy.
    pub refused: usize,
    /// Subscribers whose format cannot carry the payload (binary to V1).
    pub unencodable: usize,
}

/// Broadcast payloads up to this size get their own allocation before
/// they are queued ([`Payload::detached`]).
pub const DETACH_BELOW: usize = 1024;

/// The local pubsub. Cheap to clone.
#[derive(Clone)]
pub struct PubSub {
    topics: Arc<RwLock<HashMap<String, Vec<Subscriber>>>>,
    metrics: Metrics,
}

impl PubSub {
    /// An empty registry.
    pub fn new(metrics: Metrics) -> PubSub {
        PubSub {
            topics: Arc::new(RwLock::new(HashMap::new())),
            metrics,
        }
    }

    /// Subscribe socket `id` to `topic`. A socket subscribes once per topic.
    pub fn subscribe(&self, topic: &str, id: u64, format: Format, outbox: Arc<Outbox>) {
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let subs = topics.entry(topic.to_owned()).or_default();
        if !subs.iter().any(|s| s.id == id) {
            subs.push(Subscriber { id, format, outbox });
        }
    }

    /// Remove socket `id` from `topic`.
    pub fn unsubscribe(&self, topic: &str, id: u64) {
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if let Some(subs) = topics.get_mut(topic) {
            if let Some(i) = subs.iter().position(|s| s.id == id) {
                subs.swap_remove(i);
            }
            if subs.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Number of local subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics.get(topic).map_or(0, Vec::len)
    }

    /// Queue `event`/`payload` to every subscriber of `topic`.
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: &Payload,
        origin: Origin,
    ) -> Delivery {
        let started = Instant::now();
        match origin {
            Origin::Channel => self.metrics.broadcasts_channel.increment(1),
            Origin::Api => self.metrics.broadcasts_api.increment(1),
        }
        // Once per broadcast, not per delivery: frames queued to slow
        // subscribers must not pin the publisher's read buffer.
        let payload = &payload.detached(DETACH_BELOW);
        let mut delivery = Delivery::default();
        // Encoded lazily, once per format: [V1, V2].
        let mut encoded: [Option<Option<Frame>>; 2] = [None, None];
        {
            let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
            let Some(subs) = topics.get(topic) else {
                return delivery;
            };
            for sub in subs {
                let slot = &mut encoded[sub.format.index()];
                let frame = slot.get_or_insert_with(|| {
                    match protocol::encode_broadcast(sub.format, topic, event, payload) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            tracing::debug!(topic, event, error = %e, "broadcast not encodable for {:?}", sub.format);
                            None
                        }
                    }
                });
                let Some(frame) = frame else {
                    delivery.unencodable += 1;
                    continue;
                };
                match sub.outbox.push_bulk(frame.clone()) {
                    PushOutcome::Queued => delivery.queued += 1,
                    _ => delivery.refused += 1,
                }
            }
        }
        self.metrics.deliveries.increment(delivery.queued as u64);
        self.metrics
            .fanout_seconds
            .record(started.elapsed().as_secs_f64());
        delivery
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;
    use crate::transport::outbox::{Item, Limits};
    use bytes::Bytes;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(
            Limits {
                bulk_bytes: 1 << 20,
                control_bytes: 1 << 20,
                policy: SlowConsumerPolicy::Drop,
            },
            Metrics::new(),
        ))
    }

    #[test]
    fn shared_bytes_and_unsubscribe() {
        let ps = PubSub::new(Metrics::new());
        let (a, b) = (outbox(), outbox());
        ps.subscribe("room:1", 1, Format::V2, a.clone());
        ps.subscribe("room:1", 2, Format::V2, b.clone());
        ps.subscribe("room:1", 2, Format::V2, b.clone());
        assert_eq!(ps.subscribers("room:1"), 2);
        let d = ps.broadcast(
            "room:1",
            "ev",
            &Payload::Binary(Bytes::from_static(b"xyz")),
            Origin::Api,
        );
        assert_eq!(d.queued, 2);
        let (ia, ib) = (a.take(), b.take());
        let (Item::Frame(fa), Item::Frame(fb)) = (&ia.items[0], &ib.items[0]) else {
            panic!("frames expected");
        };
        // The same allocation is shared, not copied per subscriber.
        assert_eq!(fa.head.as_ptr(), fb.head.as_ptr());
        ps.unsubscribe("room:1", 1);
        ps.unsubscribe("room:1", 2);
        assert_eq!(ps.subscribers("room:1"), 0);
    }

    #[test]
    fn binary_to_v1_is_counted_not_sent() {
        let ps = PubSub::new(Metrics::new());
        let a = outbox();
        ps.subscribe("t", 1, Format::V1, a.clone());
        let d = ps.broadcast(
            "t",
            "ev",
            &Payload::Binary(Bytes::from_static(b"x")),
            Origin::Api,
        );
        assert_eq!(d.unencodable, 1);
        assert!(a.take().items.is_empty());
    }
}
