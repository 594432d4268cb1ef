//! Conflation: one subscriber's newest price, as an urgent outbox stream.
//!
//! # Contract
//! * A [`LatestSlot`] holds at most one price frame and one status frame,
//!   sent in the order they were offered. [`LatestSlot::offer`] replaces
//!   an unsent frame (counted as conflated): a slow subscriber gets the
//!   newest price, never a queue of old ones, and never a disconnect.
//! * The socket's writer pulls the slot right after its control lane
//!   ([`crate::transport::outbox::Outbox::add_urgent_stream`]); the time from
//!   the upstream message to that pull is recorded in
//!   `sluice_relay_latency_seconds`.
//! * [`LatestSlot::close`] ends the stream at the next pull.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use metrics::Histogram;

use crate::protocol::Frame;
use crate::transport::outbox::{Pull, Stream};

/// A subscriber's pending newest value (and newest upstream status).
#[derive(Default)]
pub struct LatestSlot {
    pending: Mutex<Pending>,
    closed: AtomicBool,
}

/// The newest price and status, each with the order it was offered in.
#[derive(Default)]
struct Pending {
    price: Option<(Frame, Instant, u64)>,
    status: Option<(Frame, u64)>,
    seq: u64,
}

impl LatestSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put `frame` (received from upstream at `at`) in the slot. Returns true
    /// if it replaced a frame the subscriber had not been sent yet.
    pub fn offer(&self, frame: Frame, at: Instant) -> bool {
        let mut p = self.lock();
        p.seq += 1;
        let seq = p.seq;
        p.price.replace((frame, at, seq)).is_some()
    }

    /// Put a `status` push in the slot (replacing an unsent one: only the
    /// newest upstream state matters). It goes out in the order it was
    /// offered relative to the pending price.
    pub fn offer_status(&self, frame: Frame) {
        let mut p = self.lock();
        p.seq += 1;
        let seq = p.seq;
        p.status = Some((frame, seq));
    }

    /// End the stream (the subscriber left).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// The pending frame offered first, and for a price its arrival time.
    fn take(&self) -> Option<(Frame, Option<Instant>)> {
        let mut p = self.lock();
        let status_first = match (&p.status, &p.price) {
            (Some((_, s)), Some((_, _, q))) => s < q,
            (Some(_), None) => true,
            _ => false,
        };
        if status_first {
            p.status.take().map(|(f, _)| (f, None))
        } else {
            p.price.take().map(|(f, at, _)| (f, Some(at)))
        }
    }
}

/// The outbox side of a [`LatestSlot`].
pub struct LatestStream {
    slot: Arc<LatestSlot>,
    latency: Histogram,
}

impl LatestStream {
    /// A stream draining `slot`.
    pub fn new(slot: Arc<LatestSlot>, latency: Histogram) -> LatestStream {
        LatestStream { slot, latency }
    }
}

impl Stream for LatestStream {
    fn pull(&mut self) -> Pull {
        if self.slot.closed.load(Ordering::Relaxed) {
            return Pull::Done(None);
        }
        match self.slot.take() {
            Some((frame, at)) => {
                if let Some(at) = at {
                    self.latency.record(at.elapsed().as_secs_f64());
                }
                Pull::Frame(frame)
            }
            None => Pull::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Opcode;
    use bytes::Bytes;

    fn frame(b: &'static [u8]) -> Frame {
        Frame {
            opcode: Opcode::Text,
            head: Bytes::from_static(b),
            body: Bytes::new(),
        }
    }

    #[test]
    fn only_the_newest_value_waits() {
        let slot = Arc::new(LatestSlot::default());
        let mut stream = LatestStream::new(slot.clone(), metrics::Histogram::noop());
        assert!(matches!(stream.pull(), Pull::Pending));
        assert!(!slot.offer(frame(b"1"), Instant::now()));
        assert!(slot.offer(frame(b"2"), Instant::now()), "conflated");
        match stream.pull() {
            Pull::Frame(f) => assert_eq!(&f.head[..], b"2"),
            other => panic!("expected the newest frame, got {other:?}"),
        }
        assert!(matches!(stream.pull(), Pull::Pending));
        // A price offered before a status goes first, and the other way round.
        slot.offer(frame(b"p1"), Instant::now());
        slot.offer_status(frame(b"s1"));
        slot.offer(frame(b"p2"), Instant::now());
        let order: Vec<Vec<u8>> = (0..2)
            .map(|_| match stream.pull() {
                Pull::Frame(f) => f.head.to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            vec![b"s1".to_vec(), b"p2".to_vec()],
            "p1 conflated by p2, which came after s1"
        );
        slot.offer(frame(b"p3"), Instant::now());
        slot.offer_status(frame(b"s2"));
        match stream.pull() {
            Pull::Frame(f) => {
                assert_eq!(&f.head[..], b"p3", "an earlier price before a later status")
            }
            other => panic!("{other:?}"),
        }
        slot.close();
        assert!(matches!(stream.pull(), Pull::Done(None)));
    }
}
