//! One socket's Phoenix session: joined channels, refs, and the semantics of
//! the control events (join, leave, heartbeat, close, error).
//!
//! # Contract
//! * Owned by the socket's reader task; [`Session::handle`] is called once per
//!   decoded inbound message, in order. Replies go to the control lane of the
//!   socket's [`Outbox`]; nothing here touches the network.
//! * Phoenix 1.8 semantics (notes §4.3): heartbeat on `phoenix` always
//!   answered; unknown topic → `unmatched topic` with a null join_ref; duplicate
//!   join → ok reply for the new join, then `phx_close` with the old join_ref;
//!   a message with a stale join_ref is dropped silently; leave → ok reply then
//!   `phx_close`; leave of a topic not joined → ok; at most `max_channels` joined.
//! * A channel callback that fails or panics crashes that channel only
//!   (`phx_error`), never the socket.
//! * [`Session::shutdown`] terminates every channel and unsubscribes it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;

use crate::app::App;
use crate::channel::{
    Channel, ChannelHandle, JoinError, LateReply, LaterReply, Outcome, Terminate,
};
use crate::metrics;
use crate::protocol::{self, Event, Format, Frame, Message, Payload, Ref, Topic, MAX_META_LEN};
use crate::transport::outbox::Outbox;

struct Joined {
    join_ref: Option<Ref>,
    channel: Box<dyn Channel>,
    handle: ChannelHandle,
    /// Deferred replies of this channel, sent in push order by one task
    /// (created on first use; it ends once this sender is gone and the
    /// queue is drained).
    later: Option<tokio::sync::mpsc::Sender<(Option<Ref>, LaterReply)>>,
}

/// Most deferred replies one channel may have outstanding.
const LATER_QUEUE: usize = 1024;

/// Where a channel's deferred replies go.
struct LaterContext {
    format: Format,
    outbox: Arc<Outbox>,
    id: u64,
    topic: Topic,
    join_ref: Option<Ref>,
}

/// Await a channel's deferred replies one after the other, so they reach the
/// client in the order of the pushes they answer, then run their follow-ups.
async fn send_later_replies(
    mut rx: tokio::sync::mpsc::Receiver<(Option<Ref>, LaterReply)>,
    cx: LaterContext,
) {
    while let Some((ref_, reply)) = rx.recv().await {
        let Ok(LateReply {
            status,
            response,
            then,
        }) = AssertUnwindSafe(reply).catch_unwind().await
        else {
            tracing::error!(socket = cx.id, topic = %cx.topic, "deferred reply panicked");
            continue;
        };
        match protocol::encode_reply(
            cx.format,
            cx.join_ref.as_ref(),
            ref_.as_ref(),
            cx.topic.as_str(),
            &status,
            &response,
        ) {
            Ok(frame) => {
                cx.outbox.push_control(frame);
            }
            Err(e) => {
                tracing::warn!(socket = cx.id, topic = %cx.topic, error = %e, "deferred reply not encodable")
            }
        }
        if let Some(then) = then {
            if std::panic::catch_unwind(AssertUnwindSafe(then)).is_err() {
                tracing::error!(socket = cx.id, topic = %cx.topic, "deferred follow-up panicked");
            }
        }
    }
}

/// One socket's session state.
pub struct Session {
    id: u64,
    format: Format,
    user_id: Option<Arc<str>>,
    outbox: Arc<Outbox>,
    app: Arc<App>,
    /// Boxed values keep the map's empty buckets small.
    channels: HashMap<Topic, Box<Joined>>,
}

fn reason(text: &str) -> Payload {
    Payload::json(&serde_json::json!({ "reason": text }))
}

impl Session {
    /// A session for socket `id`.
    pub fn new(
        id: u64,
        format: Format,
        user_id: Option<Arc<str>>,
        outbox: Arc<Outbox>,
        app: Arc<App>,
    ) -> Session {
        Session {
            id,
            format,
            user_id,
            outbox,
            app,
            channels: HashMap::new(),
        }
    }

    /// Number of joined channels.
    pub fn joined(&self) -> usize {
        self.channels.len()
    }

    fn reply(
        &self,
        join_ref: Option<&Ref>,
        ref_: Option<&Ref>,
        topic: &str,
        status: &str,
        response: &Payload,
    ) {
        let frame = match protocol::encode_reply(
            self.format,
            join_ref,
            ref_,
            topic,
            status,
            response,
        ) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(socket = self.id, topic, error = %e, "reply not encodable; sending an error reply instead");
                metrics::bad_input("unencodable_reply");
                let fallback = reason(&format!("reply not encodable: {e}"));
                match protocol::encode_reply(self.format, join_ref, ref_, topic, "error", &fallback)
                {
                    Ok(f) => f,
                    Err(_) => return,
                }
            }
        };
        self.outbox.push_control(frame);
    }

    /// Reply `ok` `{}` to `msg` with its own refs (leave, heartbeat).
    fn ack(&self, msg: &Message) {
        self.reply(
            msg.join_ref.as_ref(),
            msg.ref_.as_ref(),
            msg.topic.as_str(),
            "ok",
            &Payload::empty(),
        );
    }

    /// `phx_close` / `phx_error`: join_ref = ref = the join's join_ref.
    fn control_event(
        &self,
        join_ref: Option<&Ref>,
        topic: &str,
        event: &str,
        payload: &'static [u8],
    ) {
        let json = Bytes::from_static(payload);
        let frame: Frame = match self.format {
            Format::V1 => protocol::v1::encode_message(join_ref, topic, event, &json),
            Format::V2 => protocol::v2::encode_message(join_ref, join_ref, topic, event, &json),
        };
        // Ordered after the channel's pushes queued before it (Phoenix keeps one
        // FIFO per socket; a client drops pushes for a channel it saw close).
        self.outbox.push_bulk_ordered(frame);
    }

    /// Handle one inbound message.
    pub async fn handle(&mut self, msg: Message) {
        match (&msg.event, msg.topic.as_str()) {
            (Event::Heartbeat, "phoenix") => {
                self.app.metrics.heartbeats.increment(1);
                self.reply(
                    msg.join_ref.as_ref(),
                    msg.ref_.as_ref(),
                    "phoenix",
                    "ok",
                    &Payload::empty(),
                );
            }
            (Event::Join, _) => self.join(msg).await,
            (Event::Leave, _) => self.leave(msg).await,
            _ => self.push(msg).await,
        }
    }

    /// Is this message's join_ref stale for the joined channel?
    fn is_stale(msg: &Message, joined: &Joined) -> bool {
        match (&msg.join_ref, &joined.join_ref) {
            (Some(theirs), Some(ours)) => theirs != ours,
            _ => false,
        }
    }

    async fn join(&mut self, msg: Message) {
        let topic = msg.topic.clone();
        let (jr, r) = (msg.join_ref.as_ref(), msg.ref_.as_ref());
        if topic.as_str().len() > MAX_META_LEN || topic.as_str().is_empty() {
            metrics::join("invalid_topic");
            self.reply(jr, r, topic.as_str(), "error", &reason("invalid topic"));
            return;
        }
        let Some(route) = self.app.router.route(topic.as_str()).cloned() else {
            metrics::join("unmatched");
            self.app.metrics.unmatched.increment(1);
            self.reply(None, r, topic.as_str(), "error", &reason("unmatched topic"));
            return;
        };
        // Duplicate join: the old instance goes away whatever the new join's fate.
        let old = self.channels.remove(&topic);
        let replaced = if let Some(mut old) = old {
            tracing::debug!(socket = self.id, %topic, "duplicate join; closing the previous join");
            Self::end_channel(&self.app, self.id, &mut old, Terminate::DuplicateJoin).await;
            Some(old.join_ref)
        } else {
            None
        };
        let close_old = |this: &Self| {
            if let Some(old_ref) = &replaced {
                this.control_event(old_ref.as_ref(), topic.as_str(), "phx_close", b"{}");
            }
        };
        if self.channels.len() >= self.app.config.max_channels {
            metrics::join("too_many");
            self.reply(
                jr,
                r,
                topic.as_str(),
                "error",
                &reason("too many channels joined"),
            );
            close_old(self);
            return;
        }
        if !route.rule.allows(self.user_id.as_deref(), topic.as_str()) {
            metrics::join("unauthorized");
            self.reply(jr, r, topic.as_str(), "error", &reason("unauthorized"));
            close_old(self);
            return;
        }
        let join_ref = msg.join_ref.clone().or_else(|| msg.ref_.clone());
        let handle = ChannelHandle {
            topic: topic.clone(),
            join_ref: join_ref.clone(),
            user_id: self.user_id.clone(),
            format: self.format,
            outbox: self.outbox.clone(),
            pubsub: self.app.pubsub.clone(),
        };
        let kind = route.kind.clone();
        let created = std::panic::catch_unwind(AssertUnwindSafe(|| kind.create(&topic)));
        let Ok(mut channel) = created else {
            metrics::join("crashed");
            self.app.metrics.crashes.increment(1);
            tracing::error!(socket = self.id, %topic, kind = %route.kind_name, "ChannelKind::create panicked");
            self.reply(jr, r, topic.as_str(), "error", &reason("join crashed"));
            close_old(self);
            return;
        };
        let result = AssertUnwindSafe(channel.join(&handle, msg.payload))
            .catch_unwind()
            .await;
        match result {
            Ok(Ok(reply)) => {
                metrics::join("ok");
                // Subscribe before replying so no broadcast sent after the
                // client sees `ok` can be missed.
                self.app.pubsub.subscribe(
                    topic.as_str(),
                    self.id,
                    self.format,
                    self.outbox.clone(),
                );
                self.reply(jr, r, topic.as_str(), "ok", &reply);
                if std::panic::catch_unwind(AssertUnwindSafe(|| channel.after_join(&handle)))
                    .is_err()
                {
                    self.app.metrics.crashes.increment(1);
                    tracing::error!(socket = self.id, %topic, "after_join panicked");
                }
                self.app.metrics.channels.increment(1.0);
                self.channels.insert(
                    topic.clone(),
                    Box::new(Joined {
                        join_ref,
                        channel,
                        handle,
                        later: None,
                    }),
                );
            }
            Ok(Err(JoinError::Refused(response))) => {
                metrics::join("refused");
                self.reply(jr, r, topic.as_str(), "error", &response);
            }
            Ok(Err(JoinError::Crashed(why))) => {
                metrics::join("crashed");
                tracing::warn!(socket = self.id, %topic, kind = %route.kind_name, why, "join crashed");
                self.reply(jr, r, topic.as_str(), "error", &reason("join crashed"));
            }
            Err(_) => {
                metrics::join("crashed");
                self.app.metrics.crashes.increment(1);
                tracing::error!(socket = self.id, %topic, kind = %route.kind_name, "join panicked");
                self.reply(jr, r, topic.as_str(), "error", &reason("join crashed"));
            }
        }
        close_old(self);
    }

    async fn leave(&mut self, msg: Message) {
        let topic = msg.topic.clone();
        let Some(joined) = self.channels.get(&topic) else {
            self.ack(&msg);
            return;
        };
        if Self::is_stale(&msg, joined) {
            self.app.metrics.stale.increment(1);
            return;
        }
        let Some(mut joined) = self.channels.remove(&topic) else {
            return;
        };
        Self::end_channel(&self.app, self.id, &mut joined, Terminate::Leave).await;
        self.ack(&msg);
        self.control_event(joined.join_ref.as_ref(), topic.as_str(), "phx_close", b"{}");
    }

    async fn push(&mut self, msg: Message) {
        let topic = msg.topic.clone();
        let Some(joined) = self.channels.get_mut(&topic) else {
            self.app.metrics.unmatched.increment(1);
            self.reply(
                None,
                msg.ref_.as_ref(),
                topic.as_str(),
                "error",
                &reason("unmatched topic"),
            );
            return;
        };
        if Self::is_stale(&msg, joined) {
            self.app.metrics.stale.increment(1);
            return;
        }
        let result = AssertUnwindSafe(joined.channel.handle_in(
            &joined.handle,
            msg.event.as_str(),
            msg.payload,
        ))
        .catch_unwind()
        .await;
        let join_ref = joined.join_ref.clone();
        match result {
            Ok(Ok(Outcome::Reply { status, response })) => {
                // A channel with deferred replies outstanding answers through
                // the same queue, so replies keep push order.
                let queue = self.channels.get(&topic).and_then(|j| j.later.clone());
                match queue {
                    Some(queue) => {
                        let ready: LaterReply =
                            Box::pin(std::future::ready(LateReply::new(status, response)));
                        let _ = queue.send((msg.ref_.clone(), ready)).await;
                    }
                    None => self.reply(
                        join_ref.as_ref(),
                        msg.ref_.as_ref(),
                        topic.as_str(),
                        &status,
                        &response,
                    ),
                }
            }
            Ok(Ok(Outcome::Later(reply))) => {
                let (format, outbox, id) = (self.format, self.outbox.clone(), self.id);
                let Some(joined) = self.channels.get_mut(&topic) else {
                    return;
                };
                let queue = joined.later.get_or_insert_with(|| {
                    let (tx, rx) = tokio::sync::mpsc::channel(LATER_QUEUE);
                    tokio::spawn(send_later_replies(
                        rx,
                        LaterContext {
                            format,
                            outbox,
                            id,
                            topic: topic.clone(),
                            join_ref: join_ref.clone(),
                        },
                    ));
                    tx
                });
                // Waits when the channel has LATER_QUEUE replies outstanding:
                // the socket is then not read (backpressure).
                let _ = queue.send((msg.ref_.clone(), reply)).await;
            }
            Ok(Ok(Outcome::NoReply)) => {}
            Ok(Ok(Outcome::Stop { reply })) => {
                if let Some((status, response)) = reply {
                    self.reply(
                        join_ref.as_ref(),
                        msg.ref_.as_ref(),
                        topic.as_str(),
                        &status,
                        &response,
                    );
                }
                if let Some(mut joined) = self.channels.remove(&topic) {
                    Self::end_channel(&self.app, self.id, &mut joined, Terminate::Stop).await;
                }
                self.control_event(join_ref.as_ref(), topic.as_str(), "phx_close", b"{}");
            }
            Ok(Err(e)) => self.crash(&topic, join_ref, &e.0),
            Err(_) => self.crash(&topic, join_ref, "panic"),
        }
    }

    fn crash(&mut self, topic: &Topic, join_ref: Option<Ref>, why: &str) {
        self.app.metrics.crashes.increment(1);
        tracing::warn!(socket = self.id, %topic, why, "channel crashed");
        if self.channels.remove(topic).is_some() {
            self.app.pubsub.unsubscribe(topic.as_str(), self.id);
            self.app.metrics.channels.decrement(1.0);
        }
        self.control_event(
            join_ref.as_ref(),
            topic.as_str(),
            "phx_error",
            br#"{"reason":"channel_crash"}"#,
        );
    }

    /// End a channel: unsubscribe, then `terminate` (a panic there is counted).
    /// A free function so no `&Session` lives across the await.
    async fn end_channel(app: &App, id: u64, joined: &mut Joined, why: Terminate) {
        app.pubsub.unsubscribe(joined.handle.topic.as_str(), id);
        app.metrics.channels.decrement(1.0);
        let fut = joined.channel.terminate(&joined.handle, why);
        if AssertUnwindSafe(fut).catch_unwind().await.is_err() {
            app.metrics.crashes.increment(1);
            tracing::error!(socket = id, topic = %joined.handle.topic, "terminate panicked");
        }
    }

    /// The socket is gone: end every channel.
    pub async fn shutdown(&mut self) {
        let channels: Vec<_> = self.channels.drain().collect();
        for (_, mut joined) in channels {
            Self::end_channel(&self.app, self.id, &mut joined, Terminate::SocketClosed).await;
        }
    }
}
