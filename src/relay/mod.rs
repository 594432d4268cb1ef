//! The upstream price relay: one upstream WebSocket per feed, fanned out to
//! every subscriber on this node.
//!
//! # Contract
//! * Nothing here disturbs a client session: an upstream that fails, stalls
//!   or sends garbage is counted and retried, never surfaced as a session
//!   error.
//! * The pure parts ([`feed`], [`backoff`]'s arithmetic) take bytes and
//!   durations and touch no sockets.
//!
//! # Layout
//! * [`feed`]: sans-IO coincap feed format (JSON object, asset → price text).
//! * [`backoff`]: reconnect delays, exponential with full jitter.
//! * [`client`]: one upstream `ws://` / `wss://` connection (fastwebsockets
//!   over hyper's upgrade), with a reader and a writer task, pings and
//!   `last_seen` for the silence detector.
//! * [`tls`]: rustls settings for `wss://` (Mozilla roots plus an extra CA file).
//! * [`pool`]: one upstream connection per relayed asset, linger, backoff,
//!   silence detection, status pushes, encode-once delivery.
//! * [`latest`]: conflation, a subscriber's newest value as an urgent outbox stream.
//! * [`channel`]: the `prices` channel kind.
//! * [`mock`]: the built-in upstream feed, a real WebSocket server
//!   (`--upstream simulate`, `sluice mock-upstream`).

pub mod backoff;
pub mod channel;
pub mod client;
pub mod feed;
pub mod latest;
pub mod mock;
pub mod pool;
pub mod tls;
