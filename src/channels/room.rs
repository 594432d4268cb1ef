//! `room`: every client push is broadcast, with the same event and payload
//! (JSON or binary), to every subscriber of the topic, the sender included.
//! The pusher gets no reply (Phoenix's `{:noreply, socket}`).

use crate::channel::{Channel, ChannelError, ChannelHandle, ChannelKind, Outcome};
use crate::protocol::{Payload, Topic};

/// Factory for [`Room`].
pub struct RoomKind;

impl ChannelKind for RoomKind {
    fn create(&self, _topic: &Topic) -> Box<dyn Channel> {
        Box::new(Room)
    }
}

/// The room channel.
pub struct Room;

#[async_trait::async_trait]
impl Channel for Room {
    async fn handle_in(
        &mut self,
        ch: &ChannelHandle,
        event: &str,
        payload: Payload,
    ) -> Result<Outcome, ChannelError> {
        ch.broadcast(event, &payload);
        Ok(Outcome::NoReply)
    }
}
