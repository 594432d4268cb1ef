//! The writer task: owns the socket's write half and drains its [`Outbox`].
//!
//! # Contract
//! * One writer per socket. Each wake-up it takes everything queued (control
//!   lane first, up to [`MAX_BATCH_FRAMES`](super::outbox::MAX_BATCH_FRAMES)),
//!   frames it, and writes it with vectored writes: one `writev` carries many
//!   frames (corking), and payload `Bytes` are written in place, never copied.
//! * A write that makes no progress for `write_timeout` ends the connection as
//!   a slow consumer.
//! * After a close request it writes the close frame, shuts the write half
//!   down (FIN), and waits briefly for the reader to see the client hang up.
//! * Returns when the connection is done; it cancels `done` so the reader stops.

use std::cell::Cell;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::outbox::{Item, Outbox};
use super::wire::{self, WsOpcode};
use crate::metrics::Metrics;
use crate::protocol::Opcode;

thread_local! {
    /// Each worker thread's header scratch, lent to one batch at a time.
    static HEADERS: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Largest header scratch a thread keeps between batches (a full batch of
/// [`MAX_BATCH_FRAMES`](super::outbox::MAX_BATCH_FRAMES) 10-byte headers).
const MAX_KEPT_HEADERS: usize = 4096;

/// How long to wait for the client's close answer after sending ours.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterExit {
    /// A close frame was written (ours or the echo of the client's).
    Closed,
    /// The reader ended first (connection gone).
    ReaderGone,
    /// A write failed.
    WriteError,
    /// A write stalled past `write_timeout`.
    Stalled,
}

/// Run the writer until the connection is done.
pub async fn run<W: AsyncWrite + Unpin>(
    mut io: W,
    outbox: Arc<Outbox>,
    reader_done: CancellationToken,
    write_timeout: Duration,
    metrics: Metrics,
) -> WriterExit {
    let exit = loop {
        let batch = outbox.take();
        if batch.items.is_empty() && batch.close.is_none() {
            if reader_done.is_cancelled() {
                break WriterExit::ReaderGone;
            }
            outbox.trim();
            // Either wake-up loops back to `take`, so items queued just before
            // the reader ended (a close echo) are still written.
            tokio::select! {
                _ = outbox.writer_wait() => {}
                _ = reader_done.cancelled() => {}
            }
            continue;
        }
        // Frame everything: headers go into one scratch buffer (this thread's,
        // reused: an idle socket holds none), payloads stay where they are.
        let mut headers = HEADERS.with(Cell::take);
        headers.clear();
        let close_payload = batch
            .close
            .as_ref()
            .map(|c| wire::close_payload(c.code, &c.reason));
        let (mut text, mut binary, mut control) = (0u64, 0u64, 0u64);
        let (mut text_bytes, mut binary_bytes, mut control_bytes) = (0usize, 0usize, 0usize);
        let mut pieces = 0;
        for item in &batch.items {
            let (op, a, b) = parts(item);
            let start = headers.len();
            wire::put_header(&mut headers, op, a.len() + b.len());
            let size = headers.len() - start + a.len() + b.len();
            match op {
                WsOpcode::Text => {
                    text += 1;
                    text_bytes += size;
                }
                WsOpcode::Binary => {
                    binary += 1;
                    binary_bytes += size;
                }
                _ => {
                    control += 1;
                    control_bytes += size;
                }
            }
            pieces += 1 + usize::from(!a.is_empty()) + usize::from(!b.is_empty());
        }
        if let Some(p) = &close_payload {
            control += 1;
            let start = headers.len();
            wire::put_header(&mut headers, WsOpcode::Close, p.len());
            control_bytes += headers.len() - start + p.len();
            pieces += 2;
        }
        // Second pass: header, head, body of each frame, in order.
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(pieces);
        let mut at = 0;
        let frames = batch.items.iter().map(parts).chain(
            close_payload
                .as_deref()
                .map(|p| (WsOpcode::Close, p, &[][..])),
        );
        for (_, a, b) in frames {
            let end = at + wire::header_len(a.len() + b.len());
            slices.push(IoSlice::new(&headers[at..end]));
            at = end;
            if !a.is_empty() {
                slices.push(IoSlice::new(a));
            }
            if !b.is_empty() {
                slices.push(IoSlice::new(b));
            }
        }
        let written = write_all_vectored(&mut io, &mut slices, write_timeout, &metrics).await;
        drop(slices);
        if headers.capacity() <= MAX_KEPT_HEADERS {
            HEADERS.with(|h| h.set(headers));
        }
        match written {
            Ok(()) => {}
            Err(WriteFail::Io) => break WriterExit::WriteError,
            Err(WriteFail::Stalled) => {
                metrics.slow_consumer_closes.increment(1);
                break WriterExit::Stalled;
            }
        }
        metrics.frames_out_text.increment(text);
        metrics.frames_out_binary.increment(binary);
        metrics.frames_out_control.increment(control);
        metrics.bytes_out_text.increment(text_bytes as u64);
        metrics.bytes_out_binary.increment(binary_bytes as u64);
        metrics.bytes_out_control.increment(control_bytes as u64);
        if batch.close.is_some() || batch.finished {
            Box::pin(finish(&mut io, &reader_done)).await;
            break WriterExit::Closed;
        }
    };
    Box::pin(shut(&mut io)).await;
    // Nothing more will be written: refuse further pushes and wake any waiter.
    outbox.close(super::outbox::close_code::INTERNAL, "writer gone");
    reader_done.cancel();
    exit
}

/// After the close frame: flush, half-close, and give the reader a moment.
async fn finish<W: AsyncWrite + Unpin>(io: &mut W, reader_done: &CancellationToken) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
    // Half-close now (the server closes the TCP connection first, RFC 6455
    // §7.1.1): the client sees FIN right behind our close frame and hangs up,
    // which ends the reader's drain at once. Then give the reader a moment to
    // see that.
    shut(io).await;
    let _ = tokio::time::timeout(CLOSE_LINGER, reader_done.cancelled()).await;
}

/// Shut the write half down, waiting at most a second.
async fn shut<W: AsyncWrite + Unpin>(io: &mut W) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

enum WriteFail {
    Io,
    Stalled,
}

/// Write every slice. The first attempt runs without a timer (a writable
/// socket takes the whole batch: no allocation, no timer); what is left is
/// written by the boxed, timed slow path, so an idle writer's task holds no
/// timer state.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut slices: &mut [IoSlice<'_>],
    timeout: Duration,
    metrics: &Metrics,
) -> Result<(), WriteFail> {
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *io).poll_write_vectored(cx, slices) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        })
    })
    .await;
    match first {
        Some(Ok(0)) | Some(Err(_)) => return Err(WriteFail::Io),
        Some(Ok(n)) => {
            metrics.writev.increment(1);
            IoSlice::advance_slices(&mut slices, n);
        }
        None => {}
    }
    if slices.is_empty() {
        return Ok(());
    }
    Box::pin(write_rest(io, slices, timeout, metrics)).await
}

async fn write_rest<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut slices: &mut [IoSlice<'_>],
    timeout: Duration,
    metrics: &Metrics,
) -> Result<(), WriteFail> {
    while !slices.is_empty() {
        let n = match tokio::time::timeout(timeout, io.write_vectored(slices)).await {
            Err(_) => return Err(WriteFail::Stalled),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(WriteFail::Io),
            Ok(Ok(n)) => n,
        };
        metrics.writev.increment(1);
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Opcode, head and body of a queued item.
fn parts(item: &Item) -> (WsOpcode, &[u8], &[u8]) {
    match item {
        Item::Frame(f) => match f.opcode {
            Opcode::Text => (WsOpcode::Text, &f.head, &f.body),
            Opcode::Binary => (WsOpcode::Binary, &f.head, &f.body),
        },
        Item::Pong(p) => (WsOpcode::Pong, p, &[]),
        Item::CloseEcho(p) => (WsOpcode::Close, p, &[]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;
    use crate::protocol::Frame;
    use crate::transport::outbox::Limits;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn frames_control_first_then_close_then_shutdown() {
        let outbox = Arc::new(Outbox::new(
            Limits {
                bulk_bytes: 1 << 20,
                control_bytes: 1 << 20,
                policy: SlowConsumerPolicy::Drop,
            },
            Metrics::new(),
        ));
        outbox.push_bulk(Frame {
            opcode: Opcode::Binary,
            head: Bytes::from_static(&[2, 1, 1]),
            body: Bytes::from_static(b"tep"),
        });
        outbox.push_control(Frame {
            opcode: Opcode::Text,
            head: Bytes::from_static(b"[1]"),
            body: Bytes::new(),
        });
        outbox.close(1012, "bye");
        let (client, server) = tokio::io::duplex(1 << 16);
        let done = CancellationToken::new();
        done.cancel(); // no reader: do not linger
        let exit = run(server, outbox, done, Duration::from_secs(5), Metrics::new()).await;
        assert_eq!(exit, WriterExit::Closed);
        let mut bytes = Vec::new();
        let mut client = client;
        client.read_to_end(&mut bytes).await.unwrap();
        // close() discards queued bulk frames; the reply goes out, then the close.
        assert_eq!(
            bytes,
            [&[0x81, 3][..], b"[1]", &[0x88, 5, 0x03, 0xf4], b"bye"].concat()
        );
    }

    #[tokio::test]
    async fn one_wakeup_writes_every_queued_frame() {
        let outbox = Arc::new(Outbox::new(
            Limits {
                bulk_bytes: 1 << 20,
                control_bytes: 1 << 20,
                policy: SlowConsumerPolicy::Drop,
            },
            Metrics::new(),
        ));
        for i in 0..100u8 {
            outbox.push_bulk(Frame {
                opcode: Opcode::Binary,
                head: Bytes::new(),
                body: Bytes::from(vec![i; 200]),
            });
        }
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let done = CancellationToken::new();
        let writer = tokio::spawn(run(
            server,
            outbox.clone(),
            done.clone(),
            Duration::from_secs(5),
            Metrics::new(),
        ));
        let mut buf = vec![0u8; 100 * 204];
        client.read_exact(&mut buf).await.unwrap();
        for (i, frame) in buf.chunks(204).enumerate() {
            assert_eq!(&frame[..4], &[0x82, 126, 0, 200]);
            assert!(frame[4..].iter().all(|&b| b == i as u8));
        }
        done.cancel();
        assert_eq!(writer.await.unwrap(), WriterExit::ReaderGone);
    }
}
