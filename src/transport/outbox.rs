//! One socket's outbound queue: two bounded lanes and a close request.
//!
//! # Contract
//! * **Control lane**: replies, heartbeat replies, pongs, close echoes. Never
//!   dropped. Bounded by `control_queue_bytes` through the reader: the session
//!   calls [`Outbox::wait_control_room`] before it reads the next inbound
//!   message, so a client that does not read its replies stops being read
//!   (TCP backpressure), and memory stays bounded.
//! * **Bulk lane**: pushes and broadcasts. Bounded by `outbound_queue_bytes`;
//!   when a frame does not fit, the slow-consumer policy decides: `drop` the
//!   frame (counted) or `disconnect` (close 1013, queue freed at once).
//! * **Stream lane**: sources of bulk frames (file downloads) that the writer
//!   *pulls* from, round-robin, only after the control and bulk lanes are
//!   drained and only up to [`MAX_BATCH_BULK_BYTES`] per wake-up. Nothing is
//!   produced ahead of the socket, so a slow reader costs one batch, whatever
//!   the size of the file; pushes and replies never queue behind chunks.
//! * **Urgent streams**: conflated live values (the newest price of an
//!   asset), each holding at most one frame, pulled right after the control
//!   lane: they never wait behind pushes or file chunks and never grow.
//! * The writer always drains the control lane before the bulk lane, so
//!   replies and heartbeats never wait behind bulk traffic queued earlier.
//! * After [`Outbox::close`], nothing more is accepted; the writer sends what
//!   is in the control lane, then the close frame, and stops.
//! * The lock is a short `std::sync::Mutex` critical section, never held
//!   across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::config::SlowConsumerPolicy;
use crate::metrics::Metrics;
use crate::protocol::Frame;

/// Close codes Sluice sends.
pub mod close_code {
    /// Going away: idle timeout; clients reconnect.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error in the WebSocket framing.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Data the endpoint cannot accept (binary on a V1 socket).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Message not decodable (malformed JSON, invalid UTF-8, bad binary header).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation.
    pub const POLICY: u16 = 1008;
    /// Inbound message larger than `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Server restart / drain: reconnect (elsewhere).
    pub const RESTART: u16 = 1012;
    /// Try again later: slow consumer.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// One queued item.
#[derive(Debug, Clone)]
pub enum Item {
    /// A Phoenix message frame.
    Frame(Frame),
    /// A WebSocket pong answering a ping.
    Pong(Bytes),
    /// The echo of the client's close frame (raw close payload).
    CloseEcho(Bytes),
}

/// Bytes charged per queued control item on top of its payload, so that
/// empty items (an empty pong) still count against `control_queue_bytes`.
const ITEM_OVERHEAD: usize = 64;

impl Item {
    fn len(&self) -> usize {
        ITEM_OVERHEAD
            + match self {
                Item::Frame(f) => f.len(),
                Item::Pong(b) | Item::CloseEcho(b) => b.len(),
            }
    }
}

/// What happened to a bulk frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued for the writer.
    Queued,
    /// The queue was full and the policy is `drop`: this frame was dropped.
    Dropped,
    /// The queue was full and the policy is `disconnect`: the socket is closing.
    Disconnected,
    /// The socket is already closing or closed.
    Closed,
    /// The message could not be encoded for this socket (e.g. binary on V1).
    Unencodable,
}

/// A close the writer must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// The close code.
    pub code: u16,
    /// A short reason (at most 123 bytes on the wire).
    pub reason: String,
}

/// What the writer takes in one wake-up.
#[derive(Debug, Default)]
pub struct Batch {
    /// Items in write order (control first).
    pub items: Vec<Item>,
    /// A close to send after the items, if requested.
    pub close: Option<CloseRequest>,
    /// The close was a client close echo already in `items`: stop after writing.
    pub finished: bool,
}

/// Limits for one outbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bulk lane bound in bytes.
    pub bulk_bytes: usize,
    /// Control lane bound in bytes (enforced through the reader).
    pub control_bytes: usize,
    /// Slow-consumer policy for the bulk lane.
    pub policy: SlowConsumerPolicy,
}

/// What a [`Stream`] yields when the writer pulls it.
#[derive(Debug)]
pub enum Pull {
    /// The next frame of the stream.
    Frame(Frame),
    /// Nothing ready now; the source calls [`Outbox::wake_writer`] when it is.
    Pending,
    /// The stream is over; its last frame (if any) is written, then it is dropped.
    Done(Option<Frame>),
}

/// A source of frames the writer pulls when the socket can take more (a file
/// download). `pull` runs inside the outbox's critical section: it must be
/// cheap and never block (no file reads; slicing a map and framing is fine).
pub trait Stream: Send {
    /// Produce the next frame.
    fn pull(&mut self) -> Pull;
}

/// One reserved stream slot of a socket; released when dropped.
pub struct StreamSlot {
    outbox: Arc<Outbox>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.outbox
            .stream_slots
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Default)]
struct State {
    control: VecDeque<Item>,
    control_bytes: usize,
    bulk: VecDeque<Frame>,
    bulk_bytes: usize,
    streams: VecDeque<Box<dyn Stream>>,
    /// Streams pulled right after the control lane (conflated live values).
    urgent: Vec<Box<dyn Stream>>,
    close: Option<CloseRequest>,
    close_echo_queued: bool,
    /// No more items are accepted.
    closing: bool,
}

/// Streams taken out of a closing outbox, dropped after its lock is released.
type Discarded = (VecDeque<Box<dyn Stream>>, Vec<Box<dyn Stream>>);

impl State {
    /// Take every stream out, to be dropped after the lock is released
    /// (dropping the last user of a file map unmaps it: a syscall).
    fn discard_streams(&mut self) -> Discarded {
        (
            std::mem::take(&mut self.streams),
            std::mem::take(&mut self.urgent),
        )
    }
}

/// A socket's outbound queue, shared by its session, its writer and the pubsub.
pub struct Outbox {
    state: Mutex<State>,
    /// Streams running or being prepared on this socket ([`StreamSlot`]s).
    stream_slots: std::sync::atomic::AtomicUsize,
    /// When input last arrived ([`crate::clock::mono_ms`]), for the idle sweep.
    last_input_ms: AtomicU64,
    /// Closed by the idle sweep.
    idle_closed: AtomicBool,
    writer: Notify,
    room: Notify,
    limits: Limits,
    metrics: Metrics,
}

/// Most frames the writer takes per wake-up (each frame uses up to three iovecs;
/// Linux allows 1024 per writev).
pub const MAX_BATCH_FRAMES: usize = 256;
/// Most bulk bytes the writer takes per wake-up, so control traffic queued
/// meanwhile waits for at most one such batch.
pub const MAX_BATCH_BULK_BYTES: usize = 512 * 1024;

impl Outbox {
    /// A new, empty outbox.
    pub fn new(limits: Limits, metrics: Metrics) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            stream_slots: std::sync::atomic::AtomicUsize::new(0),
            last_input_ms: AtomicU64::new(crate::clock::mono_ms()),
            idle_closed: AtomicBool::new(false),
            writer: Notify::new(),
            room: Notify::new(),
            limits,
            metrics,
        }
    }

    /// Record that input arrived at `now_ms` ([`crate::clock::mono_ms`]).
    pub fn touch_input(&self, now_ms: u64) {
        self.last_input_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether no input arrived for `idle_ms` before `now_ms`.
    pub fn is_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_input_ms.load(Ordering::Relaxed)) >= idle_ms
    }

    /// Close with 1001 if no input arrived for `idle_ms` before `now_ms`.
    /// Returns whether this call closed the socket.
    pub fn close_if_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.is_idle(now_ms, idle_ms) && self.close_as(close_code::GOING_AWAY, "idle timeout", true)
    }

    /// Whether the idle sweep closed this socket.
    pub fn closed_for_idle(&self) -> bool {
        self.idle_closed.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-push; the
        // queue itself is still consistent (every mutation is one statement).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a control frame (a reply). Returns false if the socket is closing.
    pub fn push_control(&self, frame: Frame) -> bool {
        self.push_control_item(Item::Frame(frame))
    }

    /// Queue a WebSocket-level control item (pong, close echo).
    pub fn push_control_item(&self, item: Item) -> bool {
        // Dropped when this function returns, after the lock is released.
        let mut discarded = Discarded::default();
        {
            let mut s = self.lock();
            if s.closing {
                return false;
            }
            // RFC 6455 §5.5.3: answering only the latest ping is enough, so at
            // most one pong waits at a time.
            if let Item::Pong(payload) = &item {
                if let Some(Item::Pong(queued)) =
                    s.control.iter_mut().find(|i| matches!(i, Item::Pong(_)))
                {
                    let old = queued.len();
                    *queued = payload.clone();
                    s.control_bytes = s.control_bytes - old + payload.len();
                    return true;
                }
            }
            if matches!(item, Item::CloseEcho(_)) {
                s.closing = true;
                s.close_echo_queued = true;
                s.bulk.clear();
                s.bulk_bytes = 0;
                discarded = s.discard_streams();
            }
            s.control_bytes += item.len();
            s.control.push_back(item);
        }
        drop(discarded);
        self.writer.notify_one();
        true
    }

    /// Queue a bulk frame (push or broadcast), applying the slow-consumer policy.
    pub fn push_bulk(&self, frame: Frame) -> PushOutcome {
        // Dropped when this function returns, after the lock is released.
        let mut discarded = Discarded::default();
        let outcome = {
            let mut s = self.lock();
            if s.closing {
                return PushOutcome::Closed;
            }
            // A frame larger than the whole lane is still accepted into an empty
            // lane, so one oversized broadcast cannot wedge a socket forever.
            if s.bulk_bytes > 0 && s.bulk_bytes + frame.len() > self.limits.bulk_bytes {
                match self.limits.policy {
                    SlowConsumerPolicy::Drop => PushOutcome::Dropped,
                    SlowConsumerPolicy::Disconnect => {
                        s.closing = true;
                        s.bulk.clear();
                        s.bulk_bytes = 0;
                        discarded = s.discard_streams();
                        s.close = Some(CloseRequest {
                            code: close_code::TRY_AGAIN_LATER,
                            reason: "slow consumer".into(),
                        });
                        PushOutcome::Disconnected
                    }
                }
            } else {
                s.bulk_bytes += frame.len();
                s.bulk.push_back(frame);
                PushOutcome::Queued
            }
        };
        drop(discarded);
        match outcome {
            PushOutcome::Queued => self.writer.notify_one(),
            PushOutcome::Dropped => self.metrics.queue_dropped.increment(1),
            PushOutcome::Disconnected => {
                self.metrics.slow_consumer_closes.increment(1);
                self.writer.notify_one();
            }
            _ => {}
        }
        outcome
    }

    /// Queue a frame on the bulk lane that must not be dropped and must stay
    /// behind the pushes queued before it (`phx_close`, `phx_error`). It
    /// ignores the lane's bound: at most one such frame exists per channel event.
    pub fn push_bulk_ordered(&self, frame: Frame) -> bool {
        {
            let mut s = self.lock();
            if s.closing {
                return false;
            }
            s.bulk_bytes += frame.len();
            s.bulk.push_back(frame);
        }
        self.writer.notify_one();
        true
    }

    /// Ask the writer to close the socket with `code` after the queued control
    /// frames. Queued bulk frames are discarded. The first close request wins.
    pub fn close(&self, code: u16, reason: &str) {
        self.close_as(code, reason, false);
    }

    /// [`Outbox::close`]; `idle` marks it as the idle sweep's. Returns
    /// whether this call closed the socket (false: it was closing already).
    fn close_as(&self, code: u16, reason: &str, idle: bool) -> bool {
        let dropped;
        {
            let mut s = self.lock();
            if s.closing {
                return false;
            }
            if idle {
                // Under the lock: only the close that wins is counted as idle.
                self.idle_closed.store(true, Ordering::Relaxed);
            }
            s.closing = true;
            s.bulk.clear();
            s.bulk_bytes = 0;
            dropped = (
                std::mem::take(&mut s.streams),
                std::mem::take(&mut s.urgent),
            );
            s.close = Some(CloseRequest {
                code,
                reason: reason.to_owned(),
            });
        }
        drop(dropped);
        self.writer.notify_one();
        self.room.notify_waiters();
        true
    }

    /// Add a stream the writer pulls from. Returns false (and drops it) if
    /// the socket is closing.
    pub fn add_stream(&self, stream: Box<dyn Stream>) -> bool {
        {
            let mut s = self.lock();
            if s.closing {
                return false;
            }
            s.streams.push_back(stream);
        }
        self.writer.notify_one();
        true
    }

    /// Reserve one of at most `max` stream slots on this socket, for a stream
    /// from the moment it is requested until it is dropped.
    pub fn try_reserve_stream(self: &Arc<Self>, max: usize) -> Option<StreamSlot> {
        use std::sync::atomic::Ordering;
        self.stream_slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot {
                outbox: self.clone(),
            })
    }

    /// Add an urgent stream: pulled once per writer wake-up right after the
    /// control lane, before the bulk lane (a conflated live value: it holds at
    /// most one frame, so it can never crowd out other traffic). Returns
    /// false (and drops it) if the socket is closing.
    pub fn add_urgent_stream(&self, stream: Box<dyn Stream>) -> bool {
        {
            let mut s = self.lock();
            if s.closing {
                return false;
            }
            s.urgent.push(stream);
        }
        self.writer.notify_one();
        true
    }

    /// Wake the writer: a [`Pull::Pending`] stream has something ready.
    pub fn wake_writer(&self) {
        self.writer.notify_one();
    }

    /// Streams currently attached.
    pub fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }

    /// Whether a close was requested or echoed.
    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Bytes currently queued in the bulk lane.
    pub fn bulk_bytes(&self) -> usize {
        self.lock().bulk_bytes
    }

    /// Give back the memory of emptied lanes; the writer calls this when it
    /// finds nothing to write, before it waits, so an idle socket holds no
    /// queue capacity while a busy one keeps reusing its lanes.
    pub fn trim(&self) {
        let mut s = self.lock();
        if s.control.is_empty() && s.control.capacity() > 0 {
            s.control = VecDeque::new();
        }
        if s.bulk.is_empty() && s.bulk.capacity() > 0 {
            s.bulk = VecDeque::new();
        }
    }

    /// Take what the writer should write now (non-blocking).
    pub fn take(&self) -> Batch {
        let mut batch = Batch::default();
        let mut s = self.lock();
        let mut frames = 0;
        while frames < MAX_BATCH_FRAMES {
            let Some(item) = s.control.pop_front() else {
                break;
            };
            s.control_bytes -= item.len();
            batch.items.push(item);
            frames += 1;
        }
        // Finished streams are dropped after the lock is released (dropping the
        // last user of a file map unmaps it: a syscall).
        let mut ended: Vec<Box<dyn Stream>> = Vec::new();
        if !s.closing {
            let mut i = 0;
            while i < s.urgent.len() && frames < MAX_BATCH_FRAMES {
                match s.urgent[i].pull() {
                    Pull::Frame(frame) => {
                        batch.items.push(Item::Frame(frame));
                        frames += 1;
                        i += 1;
                    }
                    Pull::Pending => i += 1,
                    Pull::Done(last) => {
                        if let Some(frame) = last {
                            batch.items.push(Item::Frame(frame));
                            frames += 1;
                        }
                        ended.push(s.urgent.swap_remove(i));
                    }
                }
            }
        }
        let mut bulk = 0;
        while frames < MAX_BATCH_FRAMES && bulk < MAX_BATCH_BULK_BYTES {
            let Some(frame) = s.bulk.pop_front() else {
                break;
            };
            s.bulk_bytes -= frame.len();
            bulk += frame.len();
            batch.items.push(Item::Frame(frame));
            frames += 1;
        }

        // Streams: only once the bulk lane is empty, round-robin one frame at a
        // time, until the batch budget is spent or every stream is pending.
        if s.bulk.is_empty() && !s.closing {
            let mut pending = 0;
            while frames < MAX_BATCH_FRAMES
                && bulk < MAX_BATCH_BULK_BYTES
                && pending < s.streams.len()
            {
                let Some(mut stream) = s.streams.pop_front() else {
                    break;
                };
                match stream.pull() {
                    Pull::Frame(frame) => {
                        bulk += frame.len();
                        batch.items.push(Item::Frame(frame));
                        frames += 1;
                        pending = 0;
                        s.streams.push_back(stream);
                    }
                    Pull::Pending => {
                        pending += 1;
                        s.streams.push_back(stream);
                    }
                    Pull::Done(last) => {
                        if let Some(frame) = last {
                            batch.items.push(Item::Frame(frame));
                            frames += 1;
                        }
                        pending = 0;
                        ended.push(stream);
                    }
                }
            }
        }
        if s.control.is_empty() && s.bulk.is_empty() {
            batch.close = s.close.take();
            batch.finished = s.close_echo_queued;
        }
        drop(s);
        drop(ended);
        self.room.notify_waiters();
        batch
    }

    /// Wait until the writer wakes us (something was queued).
    pub async fn writer_wait(&self) {
        self.writer.notified().await;
    }

    /// Wait until the control lane is under its bound (or the socket closes).
    /// Cancel-safe.
    pub async fn wait_control_room(&self) {
        let room = || {
            let s = self.lock();
            s.closing || s.control_bytes < self.limits.control_bytes
        };
        // Fast path, taken for nearly every message: room already, so no
        // waiter is registered with the notifier (a lock of its own).
        if room() {
            return;
        }
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if room() {
                return;
            }
            notified.await;
        }
    }

    /// Wait until the bulk lane has at most `low_water` bytes queued (or the
    /// socket closes): the pull point for streams that produce bulk frames.
    /// Returns false if the socket is closing. Cancel-safe.
    pub async fn wait_bulk_room(&self, low_water: usize) -> bool {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                if s.closing {
                    return false;
                }
                if s.bulk_bytes <= low_water {
                    return true;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::protocol::Opcode;

    fn frame(n: usize) -> Frame {
        Frame {
            opcode: Opcode::Binary,
            head: Bytes::new(),
            body: Bytes::from(vec![0u8; n]),
        }
    }

    fn outbox(policy: SlowConsumerPolicy) -> Outbox {
        Outbox::new(
            Limits {
                bulk_bytes: 100,
                control_bytes: 64 * 1024,
                policy,
            },
            Metrics::new(),
        )
    }

    #[test]
    fn idle_sweep_closes_once_after_the_timeout_with_1001() {
        let o = outbox(SlowConsumerPolicy::Drop);
        o.touch_input(10_000);
        assert!(!o.close_if_idle(10_999, 1_000), "not idle yet");
        assert!(!o.closed_for_idle() && !o.is_closing());
        o.touch_input(10_500);
        assert!(!o.close_if_idle(11_000, 1_000), "input moved the deadline");
        assert!(o.close_if_idle(11_500, 1_000));
        assert!(o.closed_for_idle() && o.is_closing());
        assert!(!o.close_if_idle(99_999, 1_000), "closes once");
        let batch = o.take();
        let close = batch.close.expect("a close frame");
        assert_eq!(close.code, close_code::GOING_AWAY);
    }

    #[test]
    fn a_replaced_pong_keeps_the_byte_count_exact() {
        let o = outbox(SlowConsumerPolicy::Drop);
        assert!(o.push_control_item(Item::Pong(Bytes::new())));
        assert!(o.push_control_item(Item::Pong(Bytes::from(vec![1u8; 125]))));
        assert_eq!(o.lock().control_bytes, ITEM_OVERHEAD + 125);
        assert!(o.push_control_item(Item::Pong(Bytes::from(vec![2u8; 3]))));
        assert_eq!(o.lock().control_bytes, ITEM_OVERHEAD + 3);
        let batch = o.take();
        assert_eq!(batch.items.len(), 1);
        assert_eq!(o.lock().control_bytes, 0);
    }

    #[test]
    fn a_lost_race_is_not_counted_as_idle() {
        let o = outbox(SlowConsumerPolicy::Drop);
        o.touch_input(0);
        o.close(close_code::POLICY, "slow consumer");
        assert!(!o.close_if_idle(10_000, 1_000));
        assert!(!o.closed_for_idle());
    }

    #[test]
    fn emptied_lanes_give_their_memory_back() {
        let o = outbox(SlowConsumerPolicy::Drop);
        assert_eq!(o.push_bulk(frame(10)), PushOutcome::Queued);
        assert!(o.push_control(frame(1)));
        assert_eq!(o.take().items.len(), 2);
        assert!(o.lock().control.capacity() > 0, "kept while busy");
        o.trim();
        let s = o.lock();
        assert_eq!((s.control.capacity(), s.bulk.capacity()), (0, 0));
    }

    #[test]
    fn control_before_bulk() {
        let o = outbox(SlowConsumerPolicy::Drop);
        assert_eq!(o.push_bulk(frame(10)), PushOutcome::Queued);
        assert!(o.push_control(frame(1)));
        let b = o.take();
        assert_eq!(b.items.len(), 2);
        assert!(matches!(&b.items[0], Item::Frame(f) if f.len() == 1));
    }

    #[test]
    fn drop_policy_bounds_memory() {
        let o = outbox(SlowConsumerPolicy::Drop);
        let mut queued = 0;
        for _ in 0..100 {
            if o.push_bulk(frame(30)) == PushOutcome::Queued {
                queued += 1;
            }
        }
        assert_eq!(queued, 3);
        assert!(o.bulk_bytes() <= 100);
        assert!(!o.is_closing());
    }

    #[test]
    fn disconnect_policy_closes_with_1013() {
        let o = outbox(SlowConsumerPolicy::Disconnect);
        for _ in 0..3 {
            assert_eq!(o.push_bulk(frame(30)), PushOutcome::Queued);
        }
        assert_eq!(o.push_bulk(frame(30)), PushOutcome::Disconnected);
        assert_eq!(o.bulk_bytes(), 0);
        assert_eq!(o.push_bulk(frame(1)), PushOutcome::Closed);
        let b = o.take();
        assert_eq!(b.close.unwrap().code, close_code::TRY_AGAIN_LATER);
    }

    #[test]
    fn pongs_coalesce_and_empty_items_count() {
        let o = outbox(SlowConsumerPolicy::Drop);
        for i in 0..1000u32 {
            assert!(o.push_control_item(Item::Pong(Bytes::from(i.to_be_bytes().to_vec()))));
        }
        let b = o.take();
        assert_eq!(b.items.len(), 1, "one pending pong at most");
        assert!(matches!(&b.items[0], Item::Pong(p) if p[..] == 999u32.to_be_bytes()));
        assert!(o.push_control(Frame {
            opcode: Opcode::Text,
            head: Bytes::new(),
            body: Bytes::new()
        }));
        assert_eq!(o.lock().control_bytes, ITEM_OVERHEAD);
    }

    #[test]
    fn ordered_bulk_frames_are_never_dropped() {
        let o = outbox(SlowConsumerPolicy::Drop);
        assert_eq!(o.push_bulk(frame(90)), PushOutcome::Queued);
        assert_eq!(o.push_bulk(frame(90)), PushOutcome::Dropped);
        assert!(o.push_bulk_ordered(frame(2)));
        let b = o.take();
        assert_eq!(b.items.len(), 2);
        assert!(matches!(&b.items[1], Item::Frame(f) if f.len() == 2));
    }

    #[test]
    fn oversized_frame_fits_empty_lane() {
        let o = outbox(SlowConsumerPolicy::Disconnect);
        assert_eq!(o.push_bulk(frame(1000)), PushOutcome::Queued);
    }

    struct Counting {
        left: usize,
        size: usize,
        pending_first: bool,
    }

    impl Stream for Counting {
        fn pull(&mut self) -> Pull {
            if self.pending_first {
                self.pending_first = false;
                return Pull::Pending;
            }
            if self.left == 0 {
                return Pull::Done(Some(frame(1)));
            }
            self.left -= 1;
            Pull::Frame(frame(self.size))
        }
    }

    #[test]
    fn streams_are_pulled_after_bulk_within_the_batch_budget() {
        let o = outbox(SlowConsumerPolicy::Drop);
        assert!(o.add_stream(Box::new(Counting {
            left: 100,
            size: 200 * 1024,
            pending_first: false,
        })));
        assert_eq!(o.push_bulk(frame(10)), PushOutcome::Queued);
        assert!(o.push_control(frame(3)));
        let b = o.take();
        // control, bulk, then chunks until 512 KiB is reached: 3 chunks.
        let sizes: Vec<usize> = b
            .items
            .iter()
            .map(|i| match i {
                Item::Frame(f) => f.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, vec![3, 10, 200 * 1024, 200 * 1024, 200 * 1024]);
        // Nothing was produced ahead: the next take continues the stream.
        assert_eq!(o.take().items.len(), 3);
        assert_eq!(o.bulk_bytes(), 0);
    }

    #[test]
    fn streams_round_robin_and_finish_with_their_last_frame() {
        let o = outbox(SlowConsumerPolicy::Drop);
        for size in [100, 200] {
            o.add_stream(Box::new(Counting {
                left: 2,
                size,
                pending_first: size == 200,
            }));
        }
        let b = o.take();
        let sizes: Vec<usize> = b
            .items
            .iter()
            .map(|i| match i {
                Item::Frame(f) => f.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, vec![100, 100, 200, 1, 200, 1]);
        assert_eq!(o.stream_count(), 0);
    }

    #[test]
    fn all_pending_streams_yield_an_empty_batch_and_close_drops_streams() {
        let o = outbox(SlowConsumerPolicy::Drop);
        o.add_stream(Box::new(Counting {
            left: 1,
            size: 1,
            pending_first: true,
        }));
        assert!(o.take().items.is_empty());
        assert_eq!(o.stream_count(), 1);
        o.close(close_code::RESTART, "bye");
        assert_eq!(o.stream_count(), 0);
        assert!(!o.add_stream(Box::new(Counting {
            left: 1,
            size: 1,
            pending_first: false,
        })));
    }

    #[tokio::test]
    async fn control_room_waits_for_writer() {
        let o = std::sync::Arc::new(Outbox::new(
            Limits {
                bulk_bytes: 100,
                control_bytes: 10,
                policy: SlowConsumerPolicy::Drop,
            },
            Metrics::new(),
        ));
        o.push_control(frame(20));
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.wait_control_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let _ = o.take();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
