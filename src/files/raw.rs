//! The raw WebSocket upload endpoint (`/rawsocket?token=...`), the seed's
//! custom transport: no Phoenix protocol, one file per binary message.
//!
//! # Contract
//! * The transport (upgrade, token check, reader, writer, limits, drain) is
//!   the Phoenix socket's; only the message handling differs: every complete
//!   binary message is stored as a new file in the user's upload directory
//!   (temporary file, fsync, rename) and answered with one text frame
//!   `{"ok":true,"name","size","sha256"}`; a text message is answered
//!   `{"ok":false,"error":"binary_only"}`; a storage failure
//!   `{"ok":false,"error":"storage"}`.
//! * Messages are stored one at a time; the socket is not read meanwhile
//!   (backpressure by TCP).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::upload::UploadError;
use super::Files;
use crate::protocol::{Frame, Opcode};
use crate::transport::outbox::Outbox;

/// One raw socket's handler.
pub struct RawSession {
    files: Arc<Files>,
    user: String,
    outbox: Arc<Outbox>,
}

fn text(v: serde_json::Value) -> Frame {
    Frame {
        opcode: Opcode::Text,
        head: Bytes::from(v.to_string()),
        body: Bytes::new(),
    }
}

impl RawSession {
    /// A handler for `user`'s socket.
    pub fn new(files: Arc<Files>, user: String, outbox: Arc<Outbox>) -> RawSession {
        RawSession {
            files,
            user,
            outbox,
        }
    }

    /// Handle one complete message.
    pub async fn handle(&mut self, text_message: bool, data: Bytes) {
        if text_message {
            self.outbox
                .push_control(text(json!({"ok": false, "error": "binary_only"})));
            return;
        }
        let store = self.files.uploads.clone();
        let user = self.user.clone();
        let len = data.len() as u64;
        let stored = tokio::task::spawn_blocking(move || store.store_whole(&user, &data)).await;
        let reply = match stored {
            Ok(Ok(s)) => {
                self.files.metrics.upload_bytes.increment(len);
                self.files.metrics.upload_end("raw");
                json!({"ok": true, "name": s.name, "size": s.size, "sha256": s.sha256})
            }
            Ok(Err(e)) => {
                tracing::warn!(user = %self.user, error = %e, "raw upload not stored");
                let error = match e {
                    UploadError::TooLarge { .. } => "too_large",
                    _ => "storage",
                };
                self.files.metrics.upload_end(error);
                json!({"ok": false, "error": error})
            }
            Err(_) => json!({"ok": false, "error": "storage"}),
        };
        self.outbox.push_control(text(reply));
    }
}
