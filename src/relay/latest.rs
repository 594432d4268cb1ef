//! Conflation: one subscriber's newest price, as an urgent outbox stream.
//!
//! # Contract
//! * A [`LatestSlot`] holds at most one price frame and one status frame
//!   (the status goes first). [`LatestSlot::offer`] replaces
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
    pending: Mutex<Option<(Frame, Instant)>>,
    status: Mutex<Option<Frame>>,
    closed: AtomicBool,
}

impl LatestSlot {
    /// Put `frame` (received from upstream at `at`) in the slot. Returns true
    /// if it replaced a frame the subscriber had not been sent yet.
    pub fn offer(&self, frame: Frame, at: Instant) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((frame, at))
            .is_some()
    }

    /// Put a `status` push in the slot (replacing an unsent one: only the
    /// newest upstream state matters). Sent before the next price.
    pub fn offer_status(&self, frame: Frame) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(frame);
    }

    /// End the stream (the subscriber left).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    fn take(&self) -> Option<(Frame, Instant)> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
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
        let status = self
            .slot
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(frame) = status {
            return Pull::Frame(frame);
        }
        match self.slot.take() {
            Some((frame, at)) => {
                self.latency.record(at.elapsed().as_secs_f64());
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
        slot.close();
        assert!(matches!(stream.pull(), Pull::Done(None)));
    }
}
