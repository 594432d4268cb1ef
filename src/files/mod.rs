//! Files: zero-copy downloads, resumable uploads and the raw upload socket.
//! The wire contract is `docs/FILES.md`.
//!
//! * [`mapped`]: the shared cache of opened (memory-mapped) files, digests.
//! * [`chunks`]: the pull-based download stream the socket writer drains.
//! * [`channel`]: the `files` channel kind (download, fetch, cancel, uploads).
//! * [`uploading`]: the per-channel upload pipeline (credit window, ordered writes).
//! * [`raw`]: the raw WebSocket upload endpoint.
//! * [`upload`]: blocking upload storage (partials, verify, atomic rename).
//! * [`samples`]: demo files for `make run`.
//! * [`sweep`]: deleting abandoned partial uploads.

pub mod aligned;
pub mod channel;
pub mod chunks;
pub mod mapped;
pub mod raw;
pub mod samples;
pub mod sweep;
pub mod upload;
pub mod uploading;

use std::sync::Arc;

use metrics::{counter, gauge, Counter, Gauge};

use crate::config::Config;
use mapped::FileCache;
use upload::UploadStore;

/// Pre-resolved metric handles of the files feature.
#[derive(Clone)]
pub struct FileMetrics {
    /// `sluice_stream_bytes_total{mode="zero_copy"}`.
    pub bytes_zero_copy: Counter,
    /// `sluice_stream_bytes_total{mode="copied"}`.
    pub bytes_copied: Counter,
    /// `sluice_streams_active`.
    pub streams_active: Gauge,
    /// `sluice_stream_resumes_total`.
    pub resumes: Counter,
    /// `sluice_upload_bytes_total`.
    pub upload_bytes: Counter,
    /// `sluice_upload_credit_stalls_total`.
    pub credit_stalls: Counter,
    /// `sluice_digest_failures_total`.
    pub digest_failures: Counter,
}

impl FileMetrics {
    /// Resolve the handles (no-ops without a recorder).
    pub fn new() -> FileMetrics {
        FileMetrics {
            bytes_zero_copy: counter!("sluice_stream_bytes_total", "mode" => "zero_copy"),
            bytes_copied: counter!("sluice_stream_bytes_total", "mode" => "copied"),
            streams_active: gauge!("sluice_streams_active"),
            resumes: counter!("sluice_stream_resumes_total"),
            upload_bytes: counter!("sluice_upload_bytes_total"),
            credit_stalls: counter!("sluice_upload_credit_stalls_total"),
            digest_failures: counter!("sluice_digest_failures_total"),
        }
    }

    /// Count a finished stream.
    pub fn stream_end(&self, how: &'static str) {
        counter!("sluice_streams_total", "end" => how).increment(1);
    }

    /// Count a finished upload.
    pub fn upload_end(&self, result: &'static str) {
        counter!("sluice_uploads_total", "result" => result).increment(1);
    }

    /// Count a refused file name.
    pub fn path_rejected(&self, reason: &'static str) {
        counter!("sluice_path_rejections_total", "reason" => reason).increment(1);
    }
}

impl Default for FileMetrics {
    fn default() -> Self {
        FileMetrics::new()
    }
}

/// Limits of the files feature, from [`Config`].
#[derive(Debug, Clone)]
pub struct FileLimits {
    /// File for `request-image` without a name.
    pub default_file: String,
    /// Default chunk size.
    pub chunk_bytes: usize,
    /// Largest chunk size a client may ask for.
    pub max_chunk_bytes: usize,
    /// Largest `fetch`.
    pub max_fetch_bytes: usize,
    /// Upload credit window.
    pub upload_window_bytes: usize,
    /// Streams per socket.
    pub max_streams_per_socket: usize,
}

/// Smallest chunk a client may ask for.
pub const MIN_CHUNK_BYTES: usize = 4096;

/// Shared state of the files feature: one per server.
pub struct Files {
    /// Opened download files.
    pub cache: FileCache,
    /// Upload storage.
    pub uploads: Arc<UploadStore>,
    /// Limits.
    pub limits: FileLimits,
    /// Metric handles.
    pub metrics: FileMetrics,
    /// Upload bytes waiting for the disk, server-wide (`upload_buffer_bytes`).
    upload_buffer: Arc<tokio::sync::Semaphore>,
    upload_buffer_bytes: usize,
}

impl Files {
    /// Set up from the configuration: creates the directories if missing and,
    /// when `files_dir` is the built-in default, the demo sample files.
    pub fn new(config: &Config) -> std::io::Result<Files> {
        let default_dir = crate::config::SETTINGS
            .iter()
            .any(|(k, d)| *k == "files_dir" && config.files_dir == std::path::Path::new(d));
        if default_dir {
            let created = samples::ensure_samples(&config.files_dir)?;
            for path in created {
                tracing::info!(path = %path.display(), "created demo sample file");
            }
        }
        std::fs::create_dir_all(&config.uploads_dir)?;
        Ok(Files {
            cache: FileCache::new(
                &config.files_dir,
                config.file_cache_entries,
                config.file_settle,
            )?,
            uploads: Arc::new(UploadStore::new(
                config.uploads_dir.clone(),
                config.max_upload_bytes,
            )),
            limits: FileLimits {
                default_file: config.default_file.clone(),
                chunk_bytes: config.chunk_bytes,
                max_chunk_bytes: config.max_chunk_bytes,
                max_fetch_bytes: config.max_fetch_bytes,
                upload_window_bytes: config.upload_window_bytes,
                max_streams_per_socket: config.max_streams_per_socket,
            },
            metrics: FileMetrics::new(),
            upload_buffer: Arc::new(tokio::sync::Semaphore::new(config.upload_buffer_bytes)),
            upload_buffer_bytes: config.upload_buffer_bytes,
        })
    }

    /// The credit a new upload pipeline gets.
    pub fn credit(&self) -> uploading::Credit {
        uploading::Credit {
            window_bytes: self.limits.upload_window_bytes,
            buffer: self.upload_buffer.clone(),
            buffer_bytes: self.upload_buffer_bytes,
        }
    }
}
