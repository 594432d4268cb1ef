//! The writer task: owns the socket's write half and drains its [`Outbox`].
//!
//! # Contract
//! * One writer per socket. Each wake-up it takes everything queued (control
//!   lane first, up to [`MAX_BATCH_FRAMES`](super::outbox::MAX_BATCH_FRAMES)),
//!   frames it, and writes it with vectored writes: one `writev` carries many
//!   frames (corking), and payload `Bytes` are written in place, never copied.
//! * A write that makes no progress for `write_timeout` ends the connection as
//!   a slow consumer.
//! * After a close request it writes the close frame, waits briefly for the
//!   reader to see the client's answer, then shuts the write half down.
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
    let mut headers: Vec<u8> = Vec::with_capacity(4096);
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
        // where they are.
        headers.clear();
        let mut plan: Vec<(usize, usize, &[u8], &[u8])> = Vec::with_capacity(batch.items.len() + 1);
        let close_payload = batch
            .close
            .as_ref()
            .map(|c| wire::close_payload(c.code, &c.reason));
        let (mut text, mut binary, mut control) = (0u64, 0u64, 0u64);
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
            plan.push((start, headers.len(), a, b));
        }
        if let Some(p) = &close_payload {
            control += 1;
            let start = headers.len();
            wire::put_header(&mut headers, WsOpcode::Close, p.len());
            plan.push((start, headers.len(), p, &[]));
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(plan.len() * 3);
        let mut total = 0usize;
        for (hs, he, a, b) in &plan {
            slices.push(IoSlice::new(&headers[*hs..*he]));
            total += he - hs;
            if !a.is_empty() {
                slices.push(IoSlice::new(a));
                total += a.len();
            }
            if !b.is_empty() {
                slices.push(IoSlice::new(b));
                total += b.len();
            }
        }
        match write_all_vectored(&mut io, &mut slices, write_timeout, &metrics).await {
            Ok(()) => {}
            Err(WriteFail::Io) => break WriterExit::WriteError,
            Err(WriteFail::Stalled) => {
                metrics.slow_consumer_closes.increment(1);
                crate::metrics::disconnect("write_stalled");
                break WriterExit::Stalled;
            }
        }
        metrics.frames_out_text.increment(text);
        metrics.frames_out_binary.increment(binary);
        metrics.frames_out_control.increment(control);
        metrics.bytes_out.increment(total as u64);
        if batch.close.is_some() || batch.finished {
            let _ = io.flush().await;
            // Give the client a moment to answer our close; the reader sees it.
            let _ = tokio::time::timeout(CLOSE_LINGER, reader_done.cancelled()).await;
            break WriterExit::Closed;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    reader_done.cancel();
    exit
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
