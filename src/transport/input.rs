//! A socket's input: where its bytes come from ([`Source`]) and the bytes
//! read but not yet decoded ([`Input`]), handed out frame by frame.
//!
//! # Contract
//! * An idle socket holds no read buffer: [`Input::next`] waits on
//!   [`Source::ready`] holding none (and gives the buffer back if a read
//!   finds nothing after all), and an emptied buffer goes back to a
//!   one-per-thread spare (at most 64 KiB) that the next read on that
//!   thread writes into.
//! * Memory follows what arrived: a frame's buffer grows by at most what has
//!   arrived (64 KiB at least), not to the size its header announces.
//! * Payloads are split off the buffer (no copy) and keep their bytes alive;
//!   code that keeps a small payload for long copies it first
//!   ([`crate::protocol::Payload::detached`], done once per broadcast).
//! * [`Input::next`] is cancel-safe: bytes read stay in the buffer.
//! * Frames are decoded by [`super::frames`].

use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

use super::frames;
use super::outbox::Outbox;

/// Where a socket's bytes come from: reads, and a wait for input that holds
/// no buffer (so an idle socket costs no read buffer).
pub trait Source: AsyncRead + Unpin + Send + 'static {
    /// Resolves once a read would make progress (data, EOF or an error).
    /// Cancel-safe; holds no buffer.
    fn ready(&mut self) -> impl std::future::Future<Output = ()> + Send + '_;

    /// Read what is there without waiting, if this source can: `None` when
    /// it cannot (the caller then awaits a read instead).
    fn read_now(&mut self, buf: &mut BytesMut) -> Option<std::io::Result<usize>> {
        let _ = buf;
        None
    }
}

impl Source for OwnedReadHalf {
    async fn ready(&mut self) {
        // An error here shows up again on the read that follows.
        let _ = self.readable().await;
    }

    fn read_now(&mut self, buf: &mut BytesMut) -> Option<std::io::Result<usize>> {
        Some(self.try_read_buf(buf))
    }
}

/// A source without a readiness wait (an upgraded stream that is not a
/// plain TCP stream): the reader keeps a buffer while idle.
pub struct Buffered<R>(pub R);

impl<R: AsyncRead + Unpin + Send + 'static> AsyncRead for Buffered<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> Source for Buffered<R> {
    fn ready(&mut self) -> impl std::future::Future<Output = ()> + Send + '_ {
        std::future::ready(())
    }
}

/// Bytes asked for per read when no frame says how many it needs.
pub const READ_CHUNK: usize = 8 * 1024;
/// A frame's buffer grows by at most what has arrived, and at least this:
/// announcing a large frame and trickling it does not reserve it up front.
const GROW_STEP: usize = 64 * 1024;
/// Largest buffer kept as a thread's spare.
const MAX_SPARE: usize = 64 * 1024;

/// Why reading the next frame failed.
#[derive(Debug)]
pub enum ReadFail {
    /// The client hung up (or the connection broke).
    Eof,
    /// The client sent a frame we refuse.
    Frame(frames::FrameError),
}

/// A socket's input: the source and the bytes read but not yet decoded.
/// The buffer exists only while it holds bytes: it is released whenever it
/// empties, and allocated again when the source becomes readable.
pub struct Input<R> {
    /// Where bytes come from.
    pub src: R,
    buf: BytesMut,
}

impl<R> Input<R> {
    /// Drop any undecoded bytes (and the buffer holding them).
    pub fn discard(&mut self) {
        self.buf = BytesMut::new();
    }
}

impl<R: Source> Input<R> {
    /// Input from `src`, starting with `early` (bytes read past the upgrade).
    pub fn new(src: R, early: BytesMut) -> Input<R> {
        Input { src, buf: early }
    }

    /// The next client frame, at most `max` bytes. Cancel-safe: bytes read
    /// stay in the buffer. Tells `outbox` when bytes arrive (the idle sweep).
    pub async fn next(&mut self, max: usize, outbox: &Outbox) -> Result<frames::Frame, ReadFail> {
        loop {
            let need = match frames::decode(&mut self.buf, max) {
                Ok(frames::Decoded::Frame(f)) => {
                    if self.buf.is_empty() {
                        park(std::mem::take(&mut self.buf));
                    }
                    return Ok(f);
                }
                Ok(frames::Decoded::Need(n)) => n,
                Err(e) => return Err(ReadFail::Frame(e)),
            };
            if self.buf.is_empty() {
                park(std::mem::take(&mut self.buf));
                self.src.ready().await;
            }
            if self.buf.capacity() == 0 {
                self.buf = unpark();
            }
            // Room for the rest of the frame, but a large one grows at most
            // by doubling what has arrived.
            let len = self.buf.len();
            let want = need.min(len.max(GROW_STEP) * 2).max(READ_CHUNK);
            self.buf.reserve(want.saturating_sub(len));
            let read = match self.src.read_now(&mut self.buf) {
                Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Readiness was stale; wait again, holding no buffer if empty.
                    if self.buf.is_empty() {
                        park(std::mem::take(&mut self.buf));
                    }
                    self.src.ready().await;
                    continue;
                }
                Some(r) => r,
                None => self.src.read_buf(&mut self.buf).await,
            };
            match read {
                Ok(0) | Err(_) => return Err(ReadFail::Eof),
                Ok(_) => outbox.touch_input(crate::clock::mono_ms()),
            }
        }
    }
}

thread_local! {
    /// One empty read buffer per thread, handed from socket to socket: a
    /// reader gives its buffer back whenever it empties (an idle socket holds
    /// none) and the next read on this thread writes into its spare capacity
    /// instead of allocating. Frames split off earlier keep their own bytes.
    static SPARE: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Keep an emptied read buffer for the next reader on this thread.
fn park(buf: BytesMut) {
    if buf.is_empty() && (1024..=MAX_SPARE).contains(&buf.capacity()) {
        SPARE.with(|s| s.set(Some(buf)));
    }
}

/// This thread's spare read buffer, or an empty one.
fn unpark() -> BytesMut {
    SPARE.with(Cell::take).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;
    use crate::metrics::Metrics;
    use crate::transport::outbox::Limits;
    use tokio::io::AsyncWriteExt;

    fn masked(payload: &[u8]) -> Vec<u8> {
        let mask = [7, 1, 2, 9];
        let mut out = vec![0x82, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test]
    async fn frames_across_reads_and_no_buffer_kept_when_idle() {
        let outbox = Outbox::new(
            Limits {
                bulk_bytes: 1 << 20,
                control_bytes: 1 << 20,
                policy: SlowConsumerPolicy::Drop,
            },
            Metrics::new(),
        );
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut input = Input::new(Buffered(server), BytesMut::new());
        let two = [masked(b"first"), masked(b"second")].concat();
        // The first frame arrives in two pieces, the second right behind it.
        client.write_all(&two[..4]).await.unwrap();
        let reader = tokio::spawn(async move {
            let a = input.next(1024, &outbox).await.unwrap();
            let b = input.next(1024, &outbox).await.unwrap();
            (a, b, input.buf.capacity())
        });
        tokio::task::yield_now().await;
        client.write_all(&two[4..]).await.unwrap();
        let (a, b, left) = reader.await.unwrap();
        assert_eq!(
            (&a.payload[..], &b.payload[..]),
            (&b"first"[..], &b"second"[..])
        );
        assert_eq!(left, 0, "an emptied buffer is given back");
    }

    #[tokio::test]
    async fn a_large_announced_frame_does_not_reserve_its_size_up_front() {
        let outbox = Outbox::new(
            Limits {
                bulk_bytes: 1 << 20,
                control_bytes: 1 << 20,
                policy: SlowConsumerPolicy::Drop,
            },
            Metrics::new(),
        );
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut input = Input::new(Buffered(server), BytesMut::new());
        // A masked binary frame header announcing 4 MiB, then 100 bytes of it.
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&(4u64 << 20).to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        client.write_all(&head).await.unwrap();
        client.write_all(&[0u8; 100]).await.unwrap();
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            input.next(8 << 20, &outbox),
        )
        .await;
        assert!(read.is_err(), "the frame is not complete");
        assert!(
            input.buf.capacity() < 256 * 1024,
            "{}",
            input.buf.capacity()
        );
    }

    #[tokio::test]
    async fn eof_and_refused_frames_are_errors() {
        let outbox = Outbox::new(
            Limits {
                bulk_bytes: 1 << 20,
                control_bytes: 1 << 20,
                policy: SlowConsumerPolicy::Drop,
            },
            Metrics::new(),
        );
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut input = Input::new(Buffered(server), BytesMut::new());
        client.write_all(&masked(&[0; 100])).await.unwrap();
        assert!(matches!(
            input.next(99, &outbox).await,
            Err(ReadFail::Frame(frames::FrameError::TooBig(100)))
        ));
        drop(client);
        let (_client, server) = tokio::io::duplex(16);
        drop(_client);
        let mut input = Input::new(Buffered(server), BytesMut::new());
        assert!(matches!(input.next(99, &outbox).await, Err(ReadFail::Eof)));
    }
}
