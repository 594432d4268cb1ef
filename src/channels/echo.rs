//! `echo`: every push is answered `ok` with the same payload, JSON or binary.
//! Useful for latency measurements and client conformance tests.

use crate::channel::{Channel, ChannelError, ChannelHandle, ChannelKind, Outcome};
use crate::protocol::{Payload, Topic};

/// Factory for [`Echo`].
pub struct EchoKind;

impl ChannelKind for EchoKind {
    fn create(&self, _topic: &Topic) -> Box<dyn Channel> {
        Box::new(Echo)
    }
}

/// The echo channel.
pub struct Echo;

#[async_trait::async_trait]
impl Channel for Echo {
    async fn handle_in(
        &mut self,
        _ch: &ChannelHandle,
        _event: &str,
        payload: Payload,
    ) -> Result<Outcome, ChannelError> {
        Ok(Outcome::ok(payload))
    }
}
