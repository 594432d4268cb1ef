//! The public channel API: implement [`Channel`] and [`ChannelKind`] to add
//! your own channel kinds next to the built-in ones.
//!
//! # Contract
//! * One [`Channel`] value exists per joined topic per socket. Its callbacks
//!   run one at a time on the socket's session task, in message order, so a
//!   channel needs no locks for its own state. A slow callback delays that
//!   socket's next inbound message (and nothing else): that is the socket's
//!   backpressure. Long work belongs in a task spawned with a cloned
//!   [`ChannelHandle`].
//! * [`Channel::join`] decides the join reply; returning
//!   [`JoinError::Refused`] sends an `error` reply and registers nothing.
//! * [`Channel::handle_in`] answers one client push with an [`Outcome`];
//!   returning `Err` is a crash: the client gets `phx_error` and may rejoin.
//! * A panic inside a callback is caught and treated as a crash of that
//!   channel only.
//! * Every joined channel is subscribed to its topic: broadcasts (from a room,
//!   another node or `POST /api/broadcast`) reach it without any code here.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::protocol::{Format, Payload, Ref, Topic};
use crate::pubsub::PubSub;
use crate::transport::outbox::{Outbox, PushOutcome};

/// Everything a channel may do towards its client and its topic. Cheap to
/// clone; clones stay valid after the channel is gone (pushes then report
/// [`PushOutcome::Closed`] or go to a socket that ignores the stale join_ref).
#[derive(Clone)]
pub struct ChannelHandle {
    pub(crate) topic: Topic,
    pub(crate) join_ref: Option<Ref>,
    pub(crate) user_id: Option<Arc<str>>,
    pub(crate) format: Format,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) pubsub: PubSub,
}

impl ChannelHandle {
    /// The channel's topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The user id from the socket's token, if the socket has one.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// The join_ref of this join.
    pub fn join_ref(&self) -> Option<&Ref> {
        self.join_ref.as_ref()
    }

    /// The socket's serializer.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Push an event to this client only (`push/3` in Phoenix). Goes through
    /// the socket's bounded bulk lane: under the slow-consumer policy it may be
    /// dropped or disconnect the socket, which the outcome reports.
    pub fn push(&self, event: &str, payload: &Payload) -> PushOutcome {
        match crate::protocol::encode_push(
            self.format,
            self.join_ref.as_ref(),
            self.topic.as_str(),
            event,
            payload,
        ) {
            Ok(frame) => self.outbox.push_bulk(frame),
            Err(e) => {
                tracing::warn!(topic = %self.topic, event, error = %e, "cannot encode push");
                PushOutcome::Unencodable
            }
        }
    }

    /// Broadcast an event to every subscriber of this topic, this client included.
    pub fn broadcast(&self, event: &str, payload: &Payload) {
        self.pubsub.broadcast(
            self.topic.as_str(),
            event,
            payload,
            crate::pubsub::Origin::Channel,
        );
    }
}

/// A successful join: the reply payload sent with status `ok`.
pub type JoinReply = Payload;

/// Why a join failed.
#[derive(Debug)]
pub enum JoinError {
    /// The channel refused: reply `error` with this response (e.g. `{"reason":"unauthorized"}`).
    Refused(Payload),
    /// The join itself failed unexpectedly: reply `error` `{"reason":"join crashed"}`.
    Crashed(String),
}

/// What a deferred reply ([`Outcome::Later`]) resolves to.
pub struct LateReply {
    /// The status word.
    pub status: Cow<'static, str>,
    /// The response payload.
    pub response: Payload,
    /// Runs right after the reply is queued: work whose frames must reach the
    /// client after the reply (e.g. attaching a download stream).
    pub then: Option<Box<dyn FnOnce() + Send>>,
}

impl LateReply {
    /// A reply with nothing to run after it.
    pub fn new(status: Cow<'static, str>, response: Payload) -> LateReply {
        LateReply {
            status,
            response,
            then: None,
        }
    }
}

/// A reply computed later.
pub type LaterReply = std::pin::Pin<Box<dyn std::future::Future<Output = LateReply> + Send>>;

/// A channel's answer to one client push.
pub enum Outcome {
    /// Reply to the push with this status (`ok`, `error` or any other word) and response.
    Reply {
        /// The status word.
        status: Cow<'static, str>,
        /// The response payload (JSON or binary).
        response: Payload,
    },
    /// Send nothing back.
    NoReply,
    /// Stop the channel normally: optional reply, then `phx_close`; the client does not rejoin.
    Stop {
        /// An optional reply sent before `phx_close`.
        reply: Option<(Cow<'static, str>, Payload)>,
    },
    /// Reply when the future resolves (e.g. once a chunk is on disk); the
    /// socket goes on handling later messages meanwhile. A channel's deferred
    /// replies are sent in the order of the pushes they answer (each future is
    /// awaited after the previous one); at most 1024 may be outstanding per
    /// channel, past which the socket waits before reading more.
    Later(LaterReply),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Reply { status, response } => f
                .debug_struct("Reply")
                .field("status", status)
                .field("response", response)
                .finish(),
            Outcome::NoReply => f.write_str("NoReply"),
            Outcome::Stop { reply } => f.debug_struct("Stop").field("reply", reply).finish(),
            Outcome::Later(_) => f.write_str("Later(..)"),
        }
    }
}

impl Outcome {
    /// Reply `ok` with `response`.
    pub fn ok(response: Payload) -> Outcome {
        Outcome::Reply {
            status: Cow::Borrowed("ok"),
            response,
        }
    }

    /// Reply `error` with `response`.
    pub fn error(response: Payload) -> Outcome {
        Outcome::Reply {
            status: Cow::Borrowed("error"),
            response,
        }
    }
}

/// A channel crash: the client receives `phx_error` and the channel is removed.
#[derive(Debug, thiserror::Error)]
#[error("channel crashed: {0}")]
pub struct ChannelError(pub String);

/// Why a channel ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminate {
    /// The client left (`phx_leave`).
    Leave,
    /// The client joined the same topic again; this instance is replaced.
    DuplicateJoin,
    /// The channel returned [`Outcome::Stop`].
    Stop,
    /// The socket closed.
    SocketClosed,
}

/// One joined channel instance.
#[async_trait::async_trait]
pub trait Channel: Send + 'static {
    /// Decide the join. The default accepts with an empty reply.
    async fn join(&mut self, ch: &ChannelHandle, payload: Payload) -> Result<JoinReply, JoinError> {
        let _ = (ch, payload);
        Ok(Payload::empty())
    }

    /// Handle one client push on the joined topic.
    async fn handle_in(
        &mut self,
        ch: &ChannelHandle,
        event: &str,
        payload: Payload,
    ) -> Result<Outcome, ChannelError>;

    /// Called right after the join's `ok` reply is queued: for work whose
    /// frames must follow the reply (e.g. attaching a live value stream).
    fn after_join(&mut self, ch: &ChannelHandle) {
        let _ = ch;
    }

    /// Called once when the channel ends for any reason but a crash.
    async fn terminate(&mut self, ch: &ChannelHandle, reason: Terminate) {
        let _ = (ch, reason);
    }
}

/// A factory of channels, named in routes (`room:*=room/authenticated`).
pub trait ChannelKind: Send + Sync + 'static {
    /// Create the channel for one join of `topic`.
    fn create(&self, topic: &Topic) -> Box<dyn Channel>;
}

/// The channel kinds a server knows, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn ChannelKind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The built-in kinds: `echo` and `room`.
    pub fn with_builtins() -> Registry {
        let mut r = Registry::new();
        r.insert("echo", Arc::new(crate::channels::echo::EchoKind));
        r.insert("room", Arc::new(crate::channels::room::RoomKind));
        r
    }

    /// Add or replace a kind.
    pub fn insert(&mut self, name: &str, kind: Arc<dyn ChannelKind>) {
        self.kinds.insert(name.to_owned(), kind);
    }

    /// Look a kind up.
    pub fn get(&self, name: &str) -> Option<Arc<dyn ChannelKind>> {
        self.kinds.get(name).cloned()
    }

    /// The known names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.kinds.keys().map(String::as_str).collect()
    }
}
