//! One channel's upload pipeline: a worker task opens the upload and writes
//! its chunks in order while the socket goes on reading, and each chunk is
//! acknowledged (`ok {offset}`) only once its bytes are written.
//!
//! # Contract
//! * The first job of a verified upload opens (or resumes) the partial on the
//!   blocking pool, so re-hashing a large partial never holds up the socket;
//!   its reply is the `upload:start` reply.
//! * [`Pipeline::chunk`] reserves the chunk's bytes twice before queueing it:
//!   in the upload's credit window (`upload_window_bytes`) and in the
//!   server-wide upload buffer (`upload_buffer_bytes`). When either is full
//!   the call waits, which stops the socket's reader (TCP backpressure); that
//!   is counted as a credit stall. So bytes waiting for the disk are bounded
//!   per upload and for the whole server, whatever clients send.
//! * Jobs run strictly in order; replies resolve in the same order (and the
//!   session sends a channel's deferred replies in order).
//! * After a failed open or write (past the declared size, disk full, I/O
//!   error, superseded by a newer start of the same partial) the pipeline
//!   refuses every further chunk with the same reason: chunks carry no
//!   offset, so writing later ones would corrupt the file. The client
//!   resumes with a new `upload:start`.
//! * Dropping the [`Pipeline`] (channel left, socket gone, another
//!   `upload:start`) abandons it: chunks still queued are discarded (their
//!   memory freed at once), the partial on disk keeps a correct prefix for a
//!   resume. [`Pipeline::finish`] and [`Pipeline::abort`] consume it without
//!   abandoning what is queued before them.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::upload::{Partial, UploadError, UploadStore};
use super::FileMetrics;
use crate::channel::{LateReply, LaterReply};
use crate::protocol::Payload;

/// Where the bytes go.
pub enum Target {
    /// A verified upload (`upload:start`): opened by the worker.
    Verified {
        /// Storage.
        store: Arc<UploadStore>,
        /// The user.
        user: String,
        /// Upload name.
        name: String,
        /// Declared size.
        size: u64,
        /// Declared digest.
        sha256: Option<String>,
    },
    /// The seed's append semantics: `<user dir>/<name>` grows.
    Append {
        /// Storage.
        store: Arc<UploadStore>,
        /// The user.
        user: String,
        /// File name in the user's directory.
        name: String,
    },
}

/// The open state of a target inside the worker.
enum Open {
    Verified(Box<Partial>),
    Append {
        store: Arc<UploadStore>,
        user: String,
        name: String,
    },
}

enum Job {
    Write {
        data: Bytes,
        _credit: (OwnedSemaphorePermit, OwnedSemaphorePermit),
        reply: oneshot::Sender<Reply>,
    },
    Finish {
        reply: oneshot::Sender<Reply>,
    },
    Abort {
        reply: oneshot::Sender<Reply>,
    },
}

type Reply = (Cow<'static, str>, Payload);

fn ok(v: serde_json::Value) -> Reply {
    (Cow::Borrowed("ok"), Payload::json(&v))
}

fn error(v: serde_json::Value) -> Reply {
    (Cow::Borrowed("error"), Payload::json(&v))
}

fn later((status, response): Reply) -> LaterReply {
    Box::pin(async move { LateReply::new(status, response) })
}

fn closed() -> Reply {
    error(json!({"reason": "upload_closed"}))
}

/// Most jobs queued per upload; the credit window bounds their bytes.
const MAX_QUEUED_JOBS: usize = 4096;

/// Credit of one pipeline.
#[derive(Clone)]
pub struct Credit {
    /// Bytes per upload.
    pub window_bytes: usize,
    /// The server-wide buffer (shared by every pipeline).
    pub buffer: Arc<Semaphore>,
    /// Its size in bytes.
    pub buffer_bytes: usize,
}

/// The sending side, owned by the channel.
pub struct Pipeline {
    id: String,
    jobs: mpsc::Sender<Job>,
    window: Arc<Semaphore>,
    credit: Credit,
    metrics: FileMetrics,
    abandoned: Arc<AtomicBool>,
    /// Set by finish/abort: dropping then does not abandon the queue.
    consumed: bool,
}

impl Pipeline {
    /// Start the worker for `target`. For a verified target the returned
    /// reply is the `upload:start` answer (`{upload_id, offset, window}` or an
    /// error); for an append target it resolves at once to `ok {}`.
    pub fn start(
        id: String,
        target: Target,
        credit: Credit,
        metrics: FileMetrics,
    ) -> (Pipeline, LaterReply) {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_JOBS);
        let abandoned = Arc::new(AtomicBool::new(false));
        let (opened_tx, opened_rx) = oneshot::channel();
        tokio::spawn(worker(
            target,
            id.clone(),
            credit.window_bytes,
            rx,
            opened_tx,
            metrics.clone(),
            abandoned.clone(),
        ));
        let started: LaterReply = Box::pin(async move {
            let (status, response) = opened_rx.await.unwrap_or_else(|_| closed());
            LateReply::new(status, response)
        });
        (
            Pipeline {
                id,
                jobs: tx,
                window: Arc::new(Semaphore::new(credit.window_bytes)),
                credit,
                metrics,
                abandoned,
                consumed: false,
            },
            started,
        )
    }

    /// The upload id clients name in `upload:finish` / `upload:abort`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Queue one chunk; the returned reply resolves once it is written.
    pub async fn chunk(&self, data: Bytes) -> LaterReply {
        // A chunk larger than the window takes the whole window (same for the buffer).
        let want = |cap: usize| u32::try_from(data.len().min(cap)).unwrap_or(u32::MAX);
        let (w, b) = (
            want(self.credit.window_bytes),
            want(self.credit.buffer_bytes),
        );
        let window = self.window.clone();
        let buffer = self.credit.buffer.clone();
        let fast = window
            .clone()
            .try_acquire_many_owned(w)
            .ok()
            .and_then(|wp| {
                buffer
                    .clone()
                    .try_acquire_many_owned(b)
                    .ok()
                    .map(|bp| (wp, bp))
            });
        let credit = match fast {
            Some(c) => c,
            None => {
                self.metrics.credit_stalls.increment(1);
                let (Ok(wp), Ok(bp)) = (
                    window.acquire_many_owned(w).await,
                    buffer.acquire_many_owned(b).await,
                ) else {
                    return later(closed());
                };
                (wp, bp)
            }
        };
        let (reply, rx) = oneshot::channel();
        self.send(
            Job::Write {
                data,
                _credit: credit,
                reply,
            },
            rx,
        )
        .await
    }

    /// Verify and publish; resolves after every queued chunk.
    pub async fn finish(mut self) -> LaterReply {
        self.consumed = true;
        let (reply, rx) = oneshot::channel();
        self.send(Job::Finish { reply }, rx).await
    }

    /// Remove the partial; resolves after every queued chunk.
    pub async fn abort(mut self) -> LaterReply {
        self.consumed = true;
        let (reply, rx) = oneshot::channel();
        self.send(Job::Abort { reply }, rx).await
    }

    async fn send(&self, job: Job, rx: oneshot::Receiver<Reply>) -> LaterReply {
        if self.jobs.send(job).await.is_err() {
            return later(closed());
        }
        Box::pin(async move {
            let (status, response) = rx.await.unwrap_or_else(|_| closed());
            LateReply::new(status, response)
        })
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if !self.consumed {
            self.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

fn failure(e: &UploadError) -> Reply {
    match e {
        UploadError::PastEnd { offset } | UploadError::Incomplete { offset } => {
            error(json!({"reason": e.reason(), "offset": offset}))
        }
        UploadError::DigestMismatch { actual } => {
            error(json!({"reason": e.reason(), "sha256": actual}))
        }
        UploadError::TooLarge { size, max } => {
            error(json!({"reason": e.reason(), "size": size, "max": max}))
        }
        _ => error(json!({"reason": e.reason()})),
    }
}

async fn open(target: Target) -> Result<Open, UploadError> {
    match target {
        Target::Append { store, user, name } => Ok(Open::Append { store, user, name }),
        Target::Verified {
            store,
            user,
            name,
            size,
            sha256,
        } => tokio::task::spawn_blocking(move || {
            store
                .start(&user, &name, size, sha256.as_deref())
                .map(|p| Open::Verified(Box::new(p)))
        })
        .await
        .map_err(|e| UploadError::Storage(std::io::Error::other(e)))?,
    }
}

async fn worker(
    target: Target,
    id: String,
    window: usize,
    mut rx: mpsc::Receiver<Job>,
    opened: oneshot::Sender<Reply>,
    metrics: FileMetrics,
    abandoned: Arc<AtomicBool>,
) {
    // Set by a failed open or write: every later chunk gets the same answer.
    let mut failed: Option<Reply> = None;
    // A start abandoned before it ran (another start on the channel, the
    // socket gone) must not take the partial over from a newer one.
    if abandoned.load(Ordering::Relaxed) {
        let _ = opened.send(closed());
        return;
    }
    let mut target = match open(target).await {
        Ok(t) => {
            let offset = match &t {
                Open::Verified(p) => p.offset(),
                Open::Append { .. } => 0,
            };
            let _ = opened.send(ok(
                json!({"upload_id": id, "offset": offset, "window": window}),
            ));
            Some(t)
        }
        Err(e) => {
            tracing::info!(reason = e.reason(), error = %e, "upload:start refused");
            metrics.upload_end(e.reason());
            let r = failure(&e);
            failed = Some(r.clone());
            let _ = opened.send(r);
            None
        }
    };
    while let Some(job) = rx.recv().await {
        match job {
            Job::Write { data, reply, .. } => {
                if abandoned.load(Ordering::Relaxed) {
                    // Nobody will read the ack; free the bytes now.
                    let _ = reply.send(closed());
                    continue;
                }
                if let Some(f) = &failed {
                    let _ = reply.send(f.clone());
                    continue;
                }
                let Some(t) = target.take() else {
                    let _ = reply.send(closed());
                    continue;
                };
                let len = data.len() as u64;
                let done = tokio::task::spawn_blocking(move || {
                    let mut t = t;
                    let r = match &mut t {
                        Open::Verified(p) => p.write(&data),
                        Open::Append { store, user, name } => store.append(user, name, &data),
                    };
                    (t, r)
                })
                .await;
                let Ok((t, result)) = done else {
                    let _ = reply.send(error(json!({"reason": "storage"})));
                    failed = Some(error(json!({"reason": "storage"})));
                    continue;
                };
                let mut t = t;
                if rx.is_empty() {
                    // Idle: give the staging memory back until the next chunk.
                    if let Open::Verified(p) = &mut t {
                        p.release_staging();
                    }
                }
                target = Some(t);
                match result {
                    Ok(offset) => {
                        metrics.upload_bytes.increment(len);
                        let _ = reply.send(ok(json!({ "offset": offset })));
                    }
                    Err(e) => {
                        tracing::info!(reason = e.reason(), error = %e, "upload chunk refused");
                        metrics.upload_end(e.reason());
                        let r = failure(&e);
                        failed = Some(r.clone());
                        let _ = reply.send(r);
                    }
                }
            }
            Job::Finish { reply } => {
                let r = match target.take() {
                    Some(Open::Verified(p)) => {
                        match tokio::task::spawn_blocking(move || (*p).finish()).await {
                            Ok(Ok(stored)) => {
                                metrics.upload_end("ok");
                                ok(json!({
                                    "name": stored.name,
                                    "size": stored.size,
                                    "sha256": stored.sha256,
                                }))
                            }
                            Ok(Err(e)) => {
                                if matches!(e, UploadError::DigestMismatch { .. }) {
                                    metrics.digest_failures.increment(1);
                                }
                                metrics.upload_end(e.reason());
                                failure(&e)
                            }
                            Err(_) => error(json!({"reason": "storage"})),
                        }
                    }
                    Some(Open::Append { .. }) => error(json!({"reason": "no_upload"})),
                    None => failed.clone().unwrap_or_else(closed),
                };
                let _ = reply.send(r);
                return;
            }
            Job::Abort { reply } => {
                let r = match target.take() {
                    Some(Open::Verified(p)) => {
                        match tokio::task::spawn_blocking(move || (*p).abort()).await {
                            Ok(Ok(())) => {
                                metrics.upload_end("aborted");
                                ok(json!({}))
                            }
                            Ok(Err(e)) => failure(&e),
                            Err(_) => error(json!({"reason": "storage"})),
                        }
                    }
                    _ => ok(json!({})),
                };
                let _ = reply.send(r);
                return;
            }
        }
    }
}
