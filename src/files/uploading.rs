//! One channel's upload pipeline: chunks are written in order by a worker
//! task while the socket goes on reading, and each chunk is acknowledged
//! (`ok {offset}`) only once its bytes are written.
//!
//! # Contract
//! * [`Pipeline::chunk`] reserves the chunk's bytes in the credit window
//!   (`upload_window_bytes`) before queueing it. When the window is full the
//!   call waits, which stops the socket's reader (TCP backpressure); that is
//!   counted as a credit stall. So at most one window of bytes per upload is
//!   in memory, whatever the client sends.
//! * Jobs run strictly in order on the blocking pool: writes, then `finish`
//!   or `abort`. Replies resolve in the same order.
//! * After a failed write (past the declared size, disk full, I/O error) the
//!   pipeline refuses every further chunk with the same reason: chunks carry
//!   no offset, so writing later ones would corrupt the file. The client
//!   resumes with a new `upload:start`.
//! * Dropping the [`Pipeline`] (channel left, socket gone) lets the worker
//!   finish the queued writes and stop; the partial stays for a resume.
//!   The worker holds the partial's lock until then.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use super::upload::{Partial, UploadError, UploadStore};
use super::FileMetrics;
use crate::channel::{LateReply, LaterReply};
use crate::protocol::Payload;

/// Where the bytes go.
pub enum Target {
    /// A verified upload (`upload:start`).
    Verified(Box<Partial>),
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

enum Job {
    Write {
        data: Bytes,
        _credit: OwnedSemaphorePermit,
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

/// Most jobs queued per upload; the credit window bounds their bytes.
const MAX_QUEUED_JOBS: usize = 4096;

/// The sending side, owned by the channel.
pub struct Pipeline {
    id: String,
    jobs: mpsc::Sender<Job>,
    window: Arc<Semaphore>,
    window_bytes: usize,
    metrics: FileMetrics,
}

impl Pipeline {
    /// Start the worker for `target`. `guard` (the partial's lock) is held by
    /// the worker until it stops.
    pub fn start(
        id: String,
        target: Target,
        window_bytes: usize,
        metrics: FileMetrics,
        guard: Option<OwnedMutexGuard<()>>,
    ) -> Pipeline {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_JOBS);
        tokio::spawn(worker(target, rx, metrics.clone(), guard));
        Pipeline {
            id,
            jobs: tx,
            window: Arc::new(Semaphore::new(window_bytes)),
            window_bytes,
            metrics,
        }
    }

    /// The upload id clients name in `upload:finish` / `upload:abort`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Queue one chunk; the returned reply resolves once it is written.
    pub async fn chunk(&self, data: Bytes) -> LaterReply {
        // A chunk larger than the window takes the whole window.
        let want = u32::try_from(data.len().min(self.window_bytes)).unwrap_or(u32::MAX);
        let credit = match self.window.clone().try_acquire_many_owned(want) {
            Ok(p) => Ok(p),
            Err(_) => {
                self.metrics.credit_stalls.increment(1);
                self.window.clone().acquire_many_owned(want).await
            }
        };
        let Ok(credit) = credit else {
            return later(error(json!({"reason": "upload_closed"})));
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
    pub async fn finish(&self) -> LaterReply {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Finish { reply }, rx).await
    }

    /// Remove the partial; resolves after every queued chunk.
    pub async fn abort(&self) -> LaterReply {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Abort { reply }, rx).await
    }

    async fn send(&self, job: Job, rx: oneshot::Receiver<Reply>) -> LaterReply {
        if self.jobs.send(job).await.is_err() {
            return later(error(json!({"reason": "upload_closed"})));
        }
        Box::pin(async move {
            let (status, response) = rx
                .await
                .unwrap_or_else(|_| error(json!({"reason": "upload_closed"})));
            LateReply::new(status, response)
        })
    }
}

fn later((status, response): Reply) -> LaterReply {
    Box::pin(async move { LateReply::new(status, response) })
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

async fn worker(
    target: Target,
    mut rx: mpsc::Receiver<Job>,
    metrics: FileMetrics,
    _guard: Option<OwnedMutexGuard<()>>,
) {
    let mut target = Some(target);
    // Set by the first failed write: every later chunk gets the same answer.
    let mut failed: Option<Reply> = None;
    while let Some(job) = rx.recv().await {
        match job {
            Job::Write { data, reply, .. } => {
                if let Some(f) = &failed {
                    let _ = reply.send(f.clone());
                    continue;
                }
                let Some(t) = target.take() else {
                    let _ = reply.send(error(json!({"reason": "upload_closed"})));
                    continue;
                };
                let len = data.len() as u64;
                let done = tokio::task::spawn_blocking(move || {
                    let mut t = t;
                    let r = match &mut t {
                        Target::Verified(p) => p.write(&data),
                        Target::Append { store, user, name } => store.append(user, name, &data),
                    };
                    (t, r)
                })
                .await;
                let Ok((t, result)) = done else {
                    let _ = reply.send(error(json!({"reason": "storage"})));
                    failed = Some(error(json!({"reason": "storage"})));
                    continue;
                };
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
                    Some(Target::Verified(p)) => {
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
                    Some(Target::Append { .. }) => error(json!({"reason": "no_upload"})),
                    None => error(json!({"reason": "upload_closed"})),
                };
                let _ = reply.send(r);
                return;
            }
            Job::Abort { reply } => {
                let r = match target.take() {
                    Some(Target::Verified(p)) => {
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
