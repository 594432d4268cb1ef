//! The `files` channel kind: downloads (`request-image`, `download`,
//! `fetch`, `cancel`) and uploads (`upload:start`, binary `chunk`,
//! `upload:finish`, `upload:abort`). Wire contract: docs/FILES.md.
//!
//! # Contract
//! * Names are resolved on the blocking pool through [`super::mapped::FileCache`];
//!   a refused name is an error reply `{"reason"}` and a counted rejection.
//! * A stream is attached to the socket's outbox only after its `ok` reply is
//!   queued ([`Outcome::Later`] with a follow-up), so the reply always
//!   precedes the chunks. The file's digest (needed in the reply) is computed
//!   off the session: the socket keeps answering while it runs.
//! * One stream per file name per channel (asking again restarts it); at
//!   most `max_streams_per_socket` streams per socket.
//! * Ending the channel cancels its streams and drops its upload pipeline
//!   (queued writes finish; the partial stays for a resume).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use super::chunks::{ChunkStream, Endings, StreamCtl};
use super::mapped::{OpenError, OpenFile};
use super::uploading::{Pipeline, Target};
use super::{FileMetrics, Files, MIN_CHUNK_BYTES};
use crate::channel::{
    Channel, ChannelError, ChannelHandle, ChannelKind, LateReply, Outcome, Terminate,
};
use crate::protocol::{binary, encode_push, Format, Payload, Ref, Topic};
use crate::stream::plan::Plan;
use crate::transport::outbox::Outbox;

/// Factory for [`FilesChannel`].
pub struct FilesKind {
    files: Arc<Files>,
}

impl FilesKind {
    /// A kind serving `files`.
    pub fn new(files: Arc<Files>) -> FilesKind {
        FilesKind { files }
    }
}

impl ChannelKind for FilesKind {
    fn create(&self, _topic: &Topic) -> Box<dyn Channel> {
        Box::new(FilesChannel {
            files: self.files.clone(),
            streams: HashMap::new(),
            upload: None,
            verified: false,
        })
    }
}

/// One joined files channel.
pub struct FilesChannel {
    files: Arc<Files>,
    /// Running streams by file name (finished ones are pruned lazily).
    streams: HashMap<String, Arc<StreamCtl>>,
    upload: Option<Pipeline>,
    /// This channel has used `upload:start`: stray chunks are refused.
    verified: bool,
}

impl Drop for FilesChannel {
    /// However the channel ends (leave, crash, socket gone), its streams stop,
    /// including ones still waiting for their digest.
    fn drop(&mut self) {
        for ctl in self.streams.values() {
            ctl.cancel();
        }
    }
}

fn reason(r: &str) -> Outcome {
    Outcome::error(Payload::json(&json!({ "reason": r })))
}

fn json_of(payload: &Payload) -> Option<Value> {
    match payload {
        Payload::Json(b) => serde_json::from_slice(b).ok(),
        Payload::Binary(_) => None,
    }
}

fn str_field<'a>(v: &'a Option<Value>, key: &str) -> Option<&'a str> {
    v.as_ref()?.get(key)?.as_str()
}

fn u64_field(v: &Option<Value>, key: &str) -> Result<Option<u64>, ()> {
    match v.as_ref().and_then(|v| v.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(Some).ok_or(()),
    }
}

/// A download waiting for its file's digest.
struct StartStream {
    file: Arc<OpenFile>,
    plan: Plan,
    name: String,
    ctl: Arc<StreamCtl>,
    topic: String,
    join_ref: Option<Ref>,
    format: Format,
    outbox: Arc<Outbox>,
    metrics: FileMetrics,
}

impl StartStream {
    async fn run(self) -> LateReply {
        let fail = |r: &str| {
            LateReply::new(
                Cow::Borrowed("error"),
                Payload::json(&json!({ "reason": r })),
            )
        };
        let sha256 = match self.file.sha256().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %self.name, error = %e, "cannot digest file");
                return fail("io_error");
            }
        };
        let plan = self.plan;
        let meta = json!({
            "file": self.name,
            "size": plan.size,
            "chunk_size": plan.chunk_size,
            "chunks": plan.chunks,
            "first_chunk": plan.first,
            "offset": plan.first * plan.chunk_size,
            "sha256": sha256,
            "etag": self.file.id.etag(),
        });
        let complete = json!({
            "file": self.name,
            "size": plan.size,
            "chunks": plan.chunks,
            "chunk_size": plan.chunk_size,
            "sha256": sha256,
        });
        let header = binary::push_header(self.join_ref.as_ref(), &self.topic, "new chunk");
        let complete = encode_push(
            self.format,
            self.join_ref.as_ref(),
            &self.topic,
            "image complete",
            &Payload::json(&complete),
        );
        let failed = encode_push(
            self.format,
            self.join_ref.as_ref(),
            &self.topic,
            "download error",
            &Payload::json(&json!({"file": self.name, "reason": "io_error"})),
        );
        let (Ok(header), Ok(complete), Ok(failed)) = (header, complete, failed) else {
            return fail("bad_request");
        };
        let StartStream {
            file,
            ctl,
            outbox,
            metrics,
            ..
        } = self;
        LateReply {
            status: Cow::Borrowed("ok"),
            response: Payload::json(&meta),
            then: Some(Box::new(move || {
                // Cancelled meanwhile (cancel, a restart, the channel ended).
                if ctl.is_cancelled() {
                    return;
                }
                let endings = Endings { complete, failed };
                let stream = ChunkStream::new(file, plan, header, endings, ctl, metrics, &outbox);
                outbox.add_stream(Box::new(stream));
            })),
        }
    }
}

/// What a download request asks for.
struct Request {
    file: String,
    offset: u64,
    chunk_size: usize,
}

impl FilesChannel {
    async fn open(&self, name: &str) -> Result<Arc<OpenFile>, Outcome> {
        let files = self.files.clone();
        let owned = name.to_owned();
        let opened = tokio::task::spawn_blocking(move || files.cache.open(&owned)).await;
        match opened {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(OpenError::Path(p))) => {
                self.files.metrics.path_rejected(p.reason());
                tracing::info!(file = name, reason = p.reason(), "file name refused");
                Err(reason(p.reason()))
            }
            Ok(Err(OpenError::Io(e))) => {
                tracing::warn!(file = name, error = %e, "cannot open file");
                Err(reason("io_error"))
            }
            Err(_) => Err(reason("io_error")),
        }
    }

    fn parse_request(&self, payload: &Payload, default_file: bool) -> Result<Request, Outcome> {
        let v = json_of(payload);
        let file = match str_field(&v, "file") {
            Some(f) => f.to_owned(),
            None if default_file => self.files.limits.default_file.clone(),
            None => return Err(reason("bad_request")),
        };
        let offset = u64_field(&v, "offset").map_err(|_| reason("bad_request"))?;
        let chunk = u64_field(&v, "chunk_size").map_err(|_| reason("bad_request"))?;
        let limits = &self.files.limits;
        let chunk_size = chunk
            .map(|c| usize::try_from(c).unwrap_or(usize::MAX))
            .unwrap_or(limits.chunk_bytes)
            .clamp(MIN_CHUNK_BYTES, limits.max_chunk_bytes);
        Ok(Request {
            file,
            offset: offset.unwrap_or(0),
            chunk_size,
        })
    }

    async fn download(
        &mut self,
        ch: &ChannelHandle,
        payload: &Payload,
        seed: bool,
    ) -> Result<Outcome, ChannelError> {
        if ch.format() == Format::V1 {
            return Ok(reason("binary_unsupported"));
        }
        let req = match self.parse_request(payload, seed) {
            Ok(r) => r,
            Err(o) => return Ok(o),
        };
        self.streams.retain(|_, c| !c.is_ended());
        let restarting = self.streams.get(&req.file).cloned();
        if let Some(old) = &restarting {
            old.cancel();
        }
        // Reserved from now until the stream is dropped, so downloads waiting
        // for their digest count too.
        let Some(slot) = ch
            .outbox
            .try_reserve_stream(self.files.limits.max_streams_per_socket)
        else {
            return Ok(reason("too_many_streams"));
        };
        let file = match self.open(&req.file).await {
            Ok(f) => f,
            Err(o) => return Ok(o),
        };
        let plan = match Plan::new(file.id.size, req.chunk_size as u64, req.offset) {
            Ok(p) => p,
            Err(_) => return Ok(reason("bad_offset")),
        };
        if u32::try_from(plan.chunks).is_err() {
            return Ok(reason("too_many_chunks"));
        }
        if plan.first > 0 {
            self.files.metrics.resumes.increment(1);
        }
        let ctl = Arc::new(StreamCtl::new(slot));
        self.streams.insert(req.file.clone(), ctl.clone());
        // The digest of a file not seen before takes a while (about a second
        // per GB): compute it off the session, so the socket keeps answering
        // heartbeats and other channels meanwhile. Reply, then attach the stream.
        let start = StartStream {
            file,
            plan,
            name: req.file,
            ctl,
            topic: ch.topic().as_str().to_owned(),
            join_ref: ch.join_ref().cloned(),
            format: ch.format(),
            outbox: ch.outbox.clone(),
            metrics: self.files.metrics.clone(),
        };
        Ok(Outcome::Later(Box::pin(start.run())))
    }

    async fn fetch(&mut self, ch: &ChannelHandle, payload: &Payload) -> Outcome {
        if ch.format() == Format::V1 {
            return reason("binary_unsupported");
        }
        let v = json_of(payload);
        let Some(name) = str_field(&v, "file") else {
            return reason("bad_request");
        };
        let file = match self.open(name).await {
            Ok(f) => f,
            Err(o) => return o,
        };
        let size = file.id.size;
        if size > self.files.limits.max_fetch_bytes as u64 {
            return Outcome::error(Payload::json(
                &json!({"reason": "too_large", "size": size, "max": self.files.limits.max_fetch_bytes}),
            ));
        }
        if let Some(bytes) = file.slice(0..size) {
            self.files.metrics.bytes_zero_copy.increment(size);
            return Outcome::ok(Payload::Binary(bytes));
        }
        let f = file.clone();
        match tokio::task::spawn_blocking(move || f.read(0..size)).await {
            Ok(Ok(bytes)) => {
                self.files.metrics.bytes_copied.increment(size);
                Outcome::ok(Payload::Binary(bytes))
            }
            _ => reason("io_error"),
        }
    }

    fn cancel(&mut self, payload: &Payload) -> Outcome {
        let v = json_of(payload);
        let mut n = 0;
        match str_field(&v, "file") {
            Some(name) => {
                if let Some(ctl) = self.streams.remove(name) {
                    n += usize::from(!ctl.is_ended());
                    ctl.cancel();
                }
            }
            None => {
                for (_, ctl) in self.streams.drain() {
                    n += usize::from(!ctl.is_ended());
                    ctl.cancel();
                }
            }
        }
        Outcome::ok(Payload::json(&json!({ "cancelled": n })))
    }

    fn user(ch: &ChannelHandle) -> Option<String> {
        ch.user_id().map(str::to_owned)
    }

    async fn upload_start(&mut self, ch: &ChannelHandle, payload: &Payload) -> Outcome {
        if ch.format() == Format::V1 {
            return reason("binary_unsupported");
        }
        let Some(user) = Self::user(ch) else {
            return reason("unauthorized");
        };
        let v = json_of(payload);
        let (Some(name), Ok(Some(size))) = (str_field(&v, "name"), u64_field(&v, "size")) else {
            return reason("bad_request");
        };
        let name = name.to_owned();
        let sha = str_field(&v, "sha256").map(str::to_owned);
        if let Err(e) = super::upload::check_upload_name(&name) {
            self.files.metrics.path_rejected(e.reason());
            return reason(e.reason());
        }
        let max = self.files.uploads.max_upload_bytes();
        if size > max {
            self.files.metrics.upload_end("too_large");
            return Outcome::error(Payload::json(
                &json!({"reason": "too_large", "size": size, "max": max}),
            ));
        }
        // A previous upload on this channel is abandoned (its partial kept for
        // a resume). A start of the same partial elsewhere (a reconnect while
        // the old socket is still open) takes it over: the older pipeline's
        // next write answers `superseded`.
        self.upload = None;
        self.verified = true;
        let id = format!("{:016x}", rand::random::<u64>());
        let (pipeline, started) = Pipeline::start(
            id,
            Target::Verified {
                store: self.files.uploads.clone(),
                user,
                name,
                size,
                sha256: sha,
            },
            self.files.credit(),
            self.files.metrics.clone(),
        );
        self.upload = Some(pipeline);
        // Opening a partial re-hashes what it holds: done by the worker, so the
        // socket is not held up; the reply comes when it is ready.
        Outcome::Later(started)
    }

    async fn chunk(&mut self, ch: &ChannelHandle, data: Bytes) -> Outcome {
        if self.upload.is_none() {
            if self.verified {
                // This channel uses upload:start: a chunk outside an upload is
                // refused, never appended to the seed-style implicit file.
                return reason("no_upload");
            }
            // The seed's semantics: append to a file named after the topic.
            let Some(user) = Self::user(ch) else {
                return reason("unauthorized");
            };
            let name = implicit_name(ch.topic().as_str());
            let (pipeline, _opened) = Pipeline::start(
                String::new(),
                Target::Append {
                    store: self.files.uploads.clone(),
                    user,
                    name,
                },
                self.files.credit(),
                self.files.metrics.clone(),
            );
            self.upload = Some(pipeline);
        }
        match &self.upload {
            Some(p) => Outcome::Later(p.chunk(data).await),
            None => reason("no_upload"),
        }
    }

    async fn upload_end(&mut self, payload: &Payload, finish: bool) -> Outcome {
        let v = json_of(payload);
        let id = str_field(&v, "upload_id");
        let Some(p) = self.upload.take() else {
            return reason("no_upload");
        };
        if p.id().is_empty() || id != Some(p.id()) {
            self.upload = Some(p);
            return reason("no_upload");
        }
        if finish {
            Outcome::Later(p.finish().await)
        } else {
            Outcome::Later(p.abort().await)
        }
    }
}

/// `image:1` → `image-1.bin`: one safe path component named after the topic.
pub fn implicit_name(topic: &str) -> String {
    let mut name: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.starts_with('.') {
        name.replace_range(0..1, "-");
    }
    name.truncate(200);
    name.push_str(".bin");
    name
}

#[async_trait::async_trait]
impl Channel for FilesChannel {
    async fn handle_in(
        &mut self,
        ch: &ChannelHandle,
        event: &str,
        payload: Payload,
    ) -> Result<Outcome, ChannelError> {
        Ok(match event {
            "request-image" => self.download(ch, &payload, true).await?,
            "download" => self.download(ch, &payload, false).await?,
            "fetch" => self.fetch(ch, &payload).await,
            "cancel" => self.cancel(&payload),
            "upload:start" => self.upload_start(ch, &payload).await,
            "chunk" => match payload {
                Payload::Binary(data) => self.chunk(ch, data).await,
                // JSON chunks are ignored, as in the seed.
                Payload::Json(_) => Outcome::ok(Payload::empty()),
            },
            "upload:finish" => self.upload_end(&payload, true).await,
            "upload:abort" => self.upload_end(&payload, false).await,
            _ => reason("unknown_event"),
        })
    }

    async fn terminate(&mut self, _ch: &ChannelHandle, _reason: Terminate) {
        for (_, ctl) in self.streams.drain() {
            ctl.cancel();
        }
        self.upload = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_names_are_one_safe_component() {
        assert_eq!(implicit_name("image:1"), "image-1.bin");
        assert_eq!(implicit_name("files:../../x"), "files-..-..-x.bin");
        assert_eq!(implicit_name(".hidden"), "-hidden.bin");
        assert!(!implicit_name(&"a/".repeat(300)).contains('/'));
    }
}
