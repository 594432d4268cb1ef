//! A download as a pull-based [`Stream`]: the socket's writer asks for the
//! next `new chunk` frame only when it can write it.
//!
//! # Contract
//! * Frames are `new chunk` binary pushes, payload `<<index::32 big-endian,
//!   bytes>>`, for the chunks of the [`Plan`] in order, then the prepared
//!   `image complete` push; then the stream is done. If the file cannot be
//!   read any more, a `download error` push `{file, reason}` ends it instead.
//! * Mapped files: each chunk is a zero-copy slice of the map; its head is the
//!   stream's precomputed Phoenix header plus the 4-byte index. The next few
//!   chunks are advised to the kernel (`MADV_WILLNEED`) so `writev` rarely
//!   waits for a page fault.
//! * Copied files: a feeder task reads ahead at most [`COPIED_AHEAD`] chunks
//!   on the blocking pool; `pull` returns [`Pull::Pending`] until one is ready.
//! * [`StreamCtl::cancel`] stops the stream at the next pull (no `image
//!   complete`). Every stream counts itself in `sluice_streams_active` while it
//!   exists and in `sluice_streams_total{end}` once; its [`StreamCtl`] holds
//!   the socket's [`StreamSlot`] until the stream ends or is cancelled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::mapped::OpenFile;
use super::FileMetrics;
use crate::protocol::{Frame, Opcode};
use crate::stream::plan::Plan;
use crate::transport::outbox::{Outbox, Pull, Stream, StreamSlot};

/// Chunks a copied stream reads ahead of the writer.
pub const COPIED_AHEAD: usize = 2;
/// Bytes advised to the kernel ahead of the chunk being sent (mapped files).
pub const READ_AHEAD_BYTES: u64 = 4 << 20;

/// Controls one download from its channel, from the request on. It holds
/// the socket's [`StreamSlot`] until the download ends or is cancelled.
pub struct StreamCtl {
    cancelled: AtomicBool,
    ended: AtomicBool,
    slot: Mutex<Option<StreamSlot>>,
}

impl StreamCtl {
    /// A control holding `slot`.
    pub fn new(slot: StreamSlot) -> StreamCtl {
        StreamCtl {
            cancelled: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            slot: Mutex::new(Some(slot)),
        }
    }

    fn release(&self) {
        drop(self.slot.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Stop the stream at its next pull (or before it starts); its slot is
    /// free at once.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.release();
    }

    /// Whether the stream was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Whether the stream is over (complete, cancelled, failed or dropped).
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }
}

/// The frame of one chunk: `header ++ index ++ data`, `data` not copied.
pub fn chunk_frame(header: &Bytes, index: u32, data: Bytes) -> Frame {
    let mut head = BytesMut::with_capacity(header.len() + 4);
    head.put_slice(header);
    head.put_u32(index);
    Frame {
        opcode: Opcode::Binary,
        head: head.freeze(),
        body: data,
    }
}

/// Read-ahead buffer of a copied stream, shared with its feeder task.
#[derive(Default)]
struct Feed {
    ready: Mutex<VecDeque<Bytes>>,
    room: Notify,
    failed: AtomicBool,
}

/// The frames that end a stream.
pub struct Endings {
    /// `image complete`, after the last chunk.
    pub complete: Frame,
    /// `download error`, if the file cannot be read any more.
    pub failed: Frame,
}

/// One running download.
pub struct ChunkStream {
    file: Arc<OpenFile>,
    plan: Plan,
    next: u64,
    header: Bytes,
    complete: Option<Frame>,
    failed: Option<Frame>,
    ctl: Arc<StreamCtl>,
    metrics: FileMetrics,
    advised_to: u64,
    feed: Option<(Arc<Feed>, DropGuard)>,
    ended: bool,
}

impl ChunkStream {
    /// A stream of `plan`'s remaining chunks of `file`, framed with `header`
    /// (the `new chunk` push header), ending with `complete`. Copied files
    /// start their feeder task, which wakes `outbox`'s writer as chunks land.
    pub fn new(
        file: Arc<OpenFile>,
        plan: Plan,
        header: Bytes,
        endings: Endings,
        ctl: Arc<StreamCtl>,
        metrics: FileMetrics,
        outbox: &Arc<Outbox>,
    ) -> ChunkStream {
        metrics.streams_active.increment(1.0);
        let feed = (!file.is_mapped()).then(|| {
            let feed = Arc::new(Feed::default());
            let stop = CancellationToken::new();
            tokio::spawn(feeder(
                file.clone(),
                plan,
                feed.clone(),
                stop.clone(),
                outbox.clone(),
            ));
            (feed, stop.drop_guard())
        });
        ChunkStream {
            next: plan.first,
            file,
            plan,
            header,
            complete: Some(endings.complete),
            failed: Some(endings.failed),
            ctl,
            metrics,
            advised_to: 0,
            feed,
            ended: false,
        }
    }

    fn end(&mut self, how: &'static str) {
        self.ctl.ended.store(true, Ordering::Relaxed);
        self.ctl.release();
        if !self.ended {
            self.ended = true;
            self.metrics.stream_end(how);
        }
    }

    /// The file cannot be read any more: tell the client, end the stream.
    fn fail(&mut self) -> Pull {
        tracing::warn!(path = %self.file.path.display(), chunk = self.next, "download stopped: file unreadable");
        self.end("failed");
        Pull::Done(self.failed.take())
    }

    /// Keep the kernel's read-ahead [`READ_AHEAD_BYTES`] in front of `from`,
    /// re-advising when less than half of it is left.
    fn advise(&mut self, from: u64) {
        if from + READ_AHEAD_BYTES / 2 < self.advised_to {
            return;
        }
        let start = self.advised_to.max(from);
        let end = (from + READ_AHEAD_BYTES).min(self.plan.size);
        if start < end {
            self.file.will_need(start..end);
        }
        self.advised_to = self.advised_to.max(end);
    }
}

impl Stream for ChunkStream {
    fn pull(&mut self) -> Pull {
        if self.ctl.cancelled.load(Ordering::Relaxed) {
            self.end("cancelled");
            return Pull::Done(None);
        }
        let Some(range) = self.plan.range(self.next) else {
            self.end("complete");
            return Pull::Done(self.complete.take());
        };
        let Ok(index) = u32::try_from(self.next) else {
            // More than 2^32 chunks cannot be indexed on the wire; refused at start.
            self.end("cancelled");
            return Pull::Done(None);
        };
        let len = range.end - range.start;
        let data = match &self.feed {
            None => {
                self.advise(range.start);
                match self.file.slice(range) {
                    Some(d) => d,
                    None => return self.fail(),
                }
            }
            Some((feed, _)) => {
                if feed.failed.load(Ordering::Relaxed) {
                    return self.fail();
                }
                let popped = feed
                    .ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop_front();
                match popped {
                    Some(d) => {
                        feed.room.notify_one();
                        d
                    }
                    None => return Pull::Pending,
                }
            }
        };
        self.next += 1;
        if self.feed.is_some() {
            self.metrics.bytes_copied.increment(len);
        } else {
            self.metrics.bytes_zero_copy.increment(len);
        }
        Pull::Frame(chunk_frame(&self.header, index, data))
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        self.end("closed");
        self.metrics.streams_active.decrement(1.0);
    }
}

/// Reads a copied stream's chunks ahead of the writer, at most [`COPIED_AHEAD`].
async fn feeder(
    file: Arc<OpenFile>,
    plan: Plan,
    feed: Arc<Feed>,
    stop: CancellationToken,
    outbox: Arc<Outbox>,
) {
    for (_, range) in plan.remaining() {
        loop {
            let room = feed.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if feed.ready.lock().unwrap_or_else(|p| p.into_inner()).len() < COPIED_AHEAD {
                break;
            }
            tokio::select! {
                _ = room => {}
                _ = stop.cancelled() => return,
            }
        }
        let f = file.clone();
        let read = tokio::select! {
            r = tokio::task::spawn_blocking(move || f.read(range)) => r,
            _ = stop.cancelled() => return,
        };
        match read {
            Ok(Ok(data)) => feed
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(data),
            Ok(Err(e)) => {
                tracing::warn!(path = %file.path.display(), error = %e, "read failed; stream stopped");
                feed.failed.store(true, Ordering::Relaxed);
            }
            Err(_) => feed.failed.store(true, Ordering::Relaxed),
        }
        outbox.wake_writer();
        if feed.failed.load(Ordering::Relaxed) {
            return;
        }
    }
}
