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

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::outbox::{Item, Outbox};
use super::wire::{self, WsOpcode};
use crate::metrics::Metrics;
use crate::protocol::Opcode;

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
            // Either wake-up loops back to `take`, so items queued just before
            // the reader ended (a close echo) are still written.
            tokio::select! {
                _ = outbox.writer_wait() => {}
                _ = reader_done.cancelled() => {}
            }
            continue;
        }
        // Frame everything: headers go into one scratch buffer, payloads stay
        // where they are. The buffer lives for one batch only, so an idle
        // socket holds none (a header is at most 10 bytes).
        let mut headers: Vec<u8> = Vec::with_capacity((batch.items.len() + 1) * 10);
        let mut plan: Vec<(usize, usize, &[u8], &[u8])> = Vec::with_capacity(batch.items.len() + 1);
        let close_payload = batch
            .close
            .as_ref()
            .map(|c| wire::close_payload(c.code, &c.reason));
        let (mut text, mut binary, mut control) = (0u64, 0u64, 0u64);
        let (mut text_bytes, mut binary_bytes, mut control_bytes) = (0usize, 0usize, 0usize);
        for item in &batch.items {
            let start = headers.len();
            let (op, a, b): (WsOpcode, &[u8], &[u8]) = match item {
                Item::Frame(f) => match f.opcode {
                    Opcode::Text => {
                        text += 1;
                        (WsOpcode::Text, &f.head, &f.body)
                    }
                    Opcode::Binary => {
                        binary += 1;
                        (WsOpcode::Binary, &f.head, &f.body)
                    }
                },
                Item::Pong(p) => {
                    control += 1;
                    (WsOpcode::Pong, p, &[])
                }
                Item::CloseEcho(p) => {
                    control += 1;
                    (WsOpcode::Close, p, &[])
                }
            };
            wire::put_header(&mut headers, op, a.len() + b.len());
            let size = headers.len() - start + a.len() + b.len();
            match op {
                WsOpcode::Text => text_bytes += size,
                WsOpcode::Binary => binary_bytes += size,
                _ => control_bytes += size,
            }
            plan.push((start, headers.len(), a, b));
        }
        if let Some(p) = &close_payload {
            control += 1;
            let start = headers.len();
            wire::put_header(&mut headers, WsOpcode::Close, p.len());
            control_bytes += headers.len() - start + p.len();
            plan.push((start, headers.len(), p, &[]));
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(plan.len() * 3);
        for (hs, he, a, b) in &plan {
            slices.push(IoSlice::new(&headers[*hs..*he]));
            if !a.is_empty() {
                slices.push(IoSlice::new(a));
            }
            if !b.is_empty() {
                slices.push(IoSlice::new(b));
            }
        }
        // Boxed (one allocation per batch): an idle writer's task then holds
        // only its wait, not the timer of a write in progress.
        match Box::pin(write_all_vectored(
            &mut io,
            &mut slices,
            write_timeout,
            &metrics,
        ))
        .await
        {
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

async fn write_all_vectored<W: AsyncWrite + Unpin>(
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
