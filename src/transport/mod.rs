//! Transports: how Phoenix messages reach sockets.
//!
//! * [`connect`]: who may connect (vsn, origin, token), pure.
//! * [`websocket`]: upgrade and the reader task that runs a session.
//! * [`input`]: a socket's input: the source and the undecoded bytes.
//! * [`writer`]: the writer task (vectored, corked writes).
//! * [`outbox`]: a socket's bounded outbound lanes.
//! * [`wire`], [`frames`], [`reassemble`]: pure WebSocket framing helpers
//!   (server frames out, client frames in, messages from fragments).

pub mod connect;
pub mod frames;
pub mod input;
pub mod outbox;
pub mod reassemble;
pub mod websocket;
pub mod wire;
pub mod writer;
