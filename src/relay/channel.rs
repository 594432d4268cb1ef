//! The `prices` channel kind: `prices:<asset>` relays an upstream price feed.
//!
//! # Contract
//! * Join `prices:<asset>` (asset per [`super::feed::valid_asset`], else
//!   refused `invalid_asset`) → reply `ok` `{asset, value, time, upstream}`
//!   with the last known value (`null` before the first) and the upstream
//!   state (`connecting`, `live`, `reconnecting`), then pushes `new`
//!   `{value, time}` on every update (conflated: a slow socket gets the newest
//!   value, never a backlog) and `status` `{upstream}` when the upstream
//!   drops or comes back. Refused `upstream_limit` past
//!   `upstream_max_connections` relayed assets.
//! * Leaving, a duplicate join, a crash or the socket closing unsubscribes
//!   (the channel's `Drop`), so the pool's linger starts after the last one.

use std::sync::Arc;

use serde_json::json;

use super::feed;
use super::latest::{LatestSlot, LatestStream};
use super::pool::Relay;
use crate::channel::{Channel, ChannelError, ChannelHandle, ChannelKind, JoinError, Outcome};
use crate::protocol::{Payload, Topic};

/// Factory for [`PricesChannel`].
pub struct PricesKind {
    relay: Arc<Relay>,
}

impl PricesKind {
    /// A kind relaying through `relay`.
    pub fn new(relay: Arc<Relay>) -> PricesKind {
        PricesKind { relay }
    }
}

impl ChannelKind for PricesKind {
    fn create(&self, _topic: &Topic) -> Box<dyn Channel> {
        Box::new(PricesChannel {
            relay: self.relay.clone(),
            subscription: None,
            pending_slot: None,
        })
    }
}

/// One joined `prices:<asset>` channel.
pub struct PricesChannel {
    relay: Arc<Relay>,
    subscription: Option<(String, u64)>,
    pending_slot: Option<Arc<LatestSlot>>,
}

impl Drop for PricesChannel {
    fn drop(&mut self) {
        if let Some((asset, id)) = self.subscription.take() {
            self.relay.unsubscribe(&asset, id);
        }
    }
}

fn refuse(reason: &str) -> JoinError {
    JoinError::Refused(Payload::json(&json!({ "reason": reason })))
}

#[async_trait::async_trait]
impl Channel for PricesChannel {
    async fn join(&mut self, ch: &ChannelHandle, _payload: Payload) -> Result<Payload, JoinError> {
        let asset = ch
            .topic()
            .as_str()
            .split_once(':')
            .map(|(_, a)| a)
            .unwrap_or_default();
        if !feed::valid_asset(asset) {
            return Err(refuse("invalid_asset"));
        }
        let slot = Arc::new(LatestSlot::default());
        let (id, last, status) = self
            .relay
            .subscribe(asset, ch.outbox.clone(), ch.format(), slot.clone())
            .map_err(|e| refuse(e.reason()))?;
        self.subscription = Some((asset.to_owned(), id));
        // Attached in `after_join`, once the reply is queued: prices offered
        // meanwhile wait (conflated) in the slot.
        self.pending_slot = Some(slot);
        let (value, time) = match last {
            Some(l) => (json!(l.value), json!(l.time)),
            None => (json!(null), json!(null)),
        };
        Ok(Payload::json(&json!({
            "asset": asset,
            "value": value,
            "time": time,
            "upstream": status.label(),
        })))
    }

    fn after_join(&mut self, ch: &ChannelHandle) {
        if let Some(slot) = self.pending_slot.take() {
            ch.outbox
                .add_urgent_stream(Box::new(LatestStream::new(slot, self.relay.latency())));
        }
    }

    async fn handle_in(
        &mut self,
        _ch: &ChannelHandle,
        _event: &str,
        _payload: Payload,
    ) -> Result<Outcome, ChannelError> {
        Ok(Outcome::error(Payload::json(
            &json!({ "reason": "unknown_event" }),
        )))
    }
}
