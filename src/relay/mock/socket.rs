//! One mock WebSocket: a reader that owes pongs and close echoes, and a
//! writer that sends prices, injected text and those owed frames.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError};
use hyper_util::rt::TokioIo;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::market::changed;
use super::{Control, Subscription};

/// A write that takes longer than this ends the socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames the reader owes the peer, handed to the writer.
enum Owed {
    Pong(Vec<u8>),
    Close(Vec<u8>),
}

/// Serve one socket: a reader (pongs and close echoes) and a writer (ticks,
/// controls) in one task. The reader's `read_frame` loop is raced only
/// against the writer ending, after which it is never polled again.
pub(super) async fn run(
    io: TokioIo<hyper::upgrade::Upgraded>,
    sub: Subscription,
    control: broadcast::Receiver<Control>,
    stop: CancellationToken,
) {
    let (r, w) = tokio::io::split(io);
    let (mut rx, tx) = fastwebsockets::after_handshake_split(r, w, Role::Server);
    rx.set_auto_pong(true);
    rx.set_auto_close(true);
    rx.set_max_message_size(64 << 10);
    let (owed_tx, owed_rx) = mpsc::channel::<Owed>(16);
    let send_fn = move |frame: Frame<'_>| {
        let owed = match frame.opcode {
            OpCode::Pong => Some(Owed::Pong(frame.payload.to_vec())),
            OpCode::Close => Some(Owed::Close(frame.payload.to_vec())),
            _ => None,
        };
        // A peer that floods pings loses some pongs rather than growing a queue.
        if let Some(owed) = owed {
            let _ = owed_tx.try_send(owed);
        }
        std::future::ready(Ok::<(), Infallible>(()))
    };
    let writer_done = CancellationToken::new();
    let reader = async {
        let mut send_fn = send_fn;
        tokio::select! {
            _ = async {
                loop {
                    match rx.read_frame(&mut send_fn).await {
                        Ok(f) if f.opcode == OpCode::Close => break,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "mock upstream read ended");
                            break;
                        }
                    }
                }
            } => {}
            _ = writer_done.cancelled() => {}
        }
    };
    let writer = async {
        let mut w = Writer { tx, sub: &sub };
        if let Err(e) = w.run(owed_rx, control, &stop).await {
            tracing::debug!(error = %e, "mock upstream write ended");
        }
        writer_done.cancel();
    };
    tokio::join!(reader, writer);
}

struct Writer<'a, W> {
    tx: fastwebsockets::WebSocketWrite<W>,
    sub: &'a Subscription,
}

impl<W: tokio::io::AsyncWrite + Unpin> Writer<'_, W> {
    async fn write(&mut self, frame: Frame<'_>) -> Result<(), WebSocketError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.tx.write_frame(frame)).await {
            Ok(r) => r,
            Err(_) => Err(WebSocketError::ConnectionClosed),
        }
    }

    async fn text(&mut self, text: &[u8]) -> Result<(), WebSocketError> {
        self.write(Frame::text(Payload::Owned(text.to_vec())))
            .await?;
        self.sub
            .shared
            .messages_sent
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Write until the peer closes, a control drops us, or the mock stops.
    async fn run(
        &mut self,
        mut owed: mpsc::Receiver<Owed>,
        mut control: broadcast::Receiver<Control>,
        stop: &CancellationToken,
    ) -> Result<(), WebSocketError> {
        let shared = self.sub.shared.clone();
        let assets = &self.sub.assets;
        let mut last: Vec<Option<String>> = vec![None; assets.len()];
        let now = Instant::now();
        let first = shared.tick_at(now);
        let mut ticks = tokio::time::interval_at(shared.instant_of(first + 1), shared.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The connect snapshot (unless silent), then changes per tick.
        let mut tick = Some(first);
        loop {
            if let Some(n) = tick.take() {
                if !shared.silent.load(Ordering::Relaxed) {
                    let message = changed(&mut last, assets, shared.prices(assets, n));
                    if let Some(message) = message {
                        self.text(message.as_bytes()).await?;
                    }
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    let _ = self.write(Frame::close(1001, b"mock upstream stopping")).await;
                    return Ok(());
                }
                o = owed.recv() => match o {
                    Some(Owed::Pong(p)) => {
                        if !shared.silent.load(Ordering::Relaxed) {
                            self.write(Frame::pong(Payload::Owned(p))).await?;
                        }
                    }
                    Some(Owed::Close(p)) => {
                        let _ = self.write(Frame::close_raw(Payload::Owned(p))).await;
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                c = control.recv() => match c {
                    Ok(Control::Inject(text)) => self.text(text.as_bytes()).await?,
                    Ok(Control::Drop) => return Ok(()),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "mock upstream control lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                at = ticks.tick() => tick = Some(shared.tick_scheduled(at)),
            }
        }
    }
}
