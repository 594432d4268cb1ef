//! Event names, parsed once when a message enters.

/// A Phoenix event. Control events get their own variants; everything else is
/// an application event carried as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    /// `phx_join`
    Join,
    /// `phx_leave`
    Leave,
    /// `phx_reply`
    Reply,
    /// `phx_close`
    Close,
    /// `phx_error`
    Error,
    /// `heartbeat` (on topic `phoenix`)
    Heartbeat,
    /// Any other event name.
    Custom(String),
}

impl Event {
    /// Parse an event name.
    pub fn parse(name: &str) -> Event {
        match name {
            "phx_join" => Event::Join,
            "phx_leave" => Event::Leave,
            "phx_reply" => Event::Reply,
            "phx_close" => Event::Close,
            "phx_error" => Event::Error,
            "heartbeat" => Event::Heartbeat,
            other => Event::Custom(other.to_owned()),
        }
    }

    /// The event name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Event::Join => "phx_join",
            Event::Leave => "phx_leave",
            Event::Reply => "phx_reply",
            Event::Close => "phx_close",
            Event::Error => "phx_error",
            Event::Heartbeat => "heartbeat",
            Event::Custom(s) => s,
        }
    }
}
