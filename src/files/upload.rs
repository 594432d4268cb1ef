//! Upload storage: resumable verified uploads, the seed's append log and the
//! raw socket's one-file-per-message store. Blocking file I/O: call it from
//! `tokio::task::spawn_blocking`.
//!
//! # Contract
//! * Layout under the uploads root: finished files at `<root>/<user>/<name>`;
//!   partial uploads, their digest sidecars and temporary files in
//!   `<root>/<user>/.partial/`. `<user>` is [`encode_user`] of the token's
//!   user id: always exactly one plain path component, so no user id reaches
//!   outside the root or into another user's directory.
//! * Upload names are one path component ([`check_upload_name`]); nothing is
//!   touched before the name and the declared digest are validated.
//! * A verified upload ([`UploadStore::start`]) writes only to its partial
//!   file `.partial/<name>.<size>.part`. It appears under its final name only
//!   in [`Partial::finish`], after the size and the sha256 are checked: fsync,
//!   `rename(2)` (replacing an older file of that name), fsync of the
//!   directory. A file under a final name is therefore always complete.
//! * Resume: a partial is identified by user, name, size and the declared
//!   digest (or its absence, recorded in the `<partial>.sha256` sidecar). A
//!   later `start` with the same identity continues from the partial's length
//!   and hashes the bytes already there, so `finish` never re-reads the file;
//!   a different declared digest, or a partial longer than the size, starts
//!   over from zero.
//! * One writer per partial: a newer `start` of the same partial (typically a
//!   client that reconnected before the server noticed its old socket was
//!   gone) takes it over; the older [`Partial`] then fails every call with
//!   [`UploadError::Superseded`] and never touches the files again. This holds
//!   within one process (one `UploadStore` per uploads root, shared).
//! * A full disk (`ENOSPC`, quota) is [`UploadError::DiskFull`]; any other
//!   I/O error is [`UploadError::Storage`]. Both answer `storage`. After a
//!   failed write the caller drops the [`Partial`]; what reached the disk is
//!   a correct prefix and a later `start` resumes from it.
//! * The append log ([`UploadStore::append`]) is the seed's behaviour: no
//!   size, no digest, visible while it grows, capped at the upload limit.
//!
//! # Write path of a verified upload
//! Copying every byte into the page cache (`pwrite` on a buffered
//! descriptor) costs more CPU than the rest of an upload together, so a
//! [`Partial`] writes with `O_DIRECT` when the file system takes it:
//! * `start` opens a second, `O_DIRECT` descriptor of the partial. If that
//!   fails (`EINVAL`/`EOPNOTSUPP` on file systems without direct I/O, or any
//!   other error) the partial is written buffered only, as before.
//!   [`Partial::is_direct`] tells which.
//! * A staging buffer ([`AlignedBuf`], [`STAGING_BYTES`]) holds the bytes
//!   `[base, offset)`, `base` a multiple of [`ALIGN`]; after every `write`
//!   it holds fewer than [`ALIGN`] bytes. `write` appends the chunk (in
//!   pieces when it is larger than the buffer), writes the largest
//!   [`ALIGN`]-multiple prefix with `O_DIRECT` at `base` (address, length
//!   and offset all aligned) and the remaining tail of the chunk with a
//!   buffered `pwrite` — so every acknowledged byte is in the file, as the
//!   `ok {offset}` contract requires — then moves the tail to the front and
//!   advances `base`. Chunks of a multiple of 4096 bytes (the default 1 MiB)
//!   never leave a tail.
//! * The next direct write rewrites that tail block in full with the same
//!   bytes. Linux writes back and invalidates cached pages a direct write
//!   overlaps (before and after it), so the file and the page cache agree.
//! * Resume: `base` is the partial's length rounded down to [`ALIGN`]; the
//!   bytes `[base, length)` are read back into the staging buffer.
//! * A failed direct write drops direct mode for the rest of this
//!   [`Partial`] (the staging state may be half-advanced; the buffered path
//!   writes at `offset` and needs none). `EINVAL` (a file system or device
//!   that accepted `O_DIRECT` at open but not this write) is retried
//!   buffered; any other error is reported. Bytes a failed write got to disk
//!   are the upload's own bytes at their own offsets, so the partial stays a
//!   correct prefix.
//! * A chunk of at least [`PARALLEL_HASH_BYTES`] is hashed on a second,
//!   scoped thread while its direct write waits for the device, so hashing
//!   overlaps the I/O instead of following it. The digest takes the chunk
//!   only once it is written.
//! * `finish` fsyncs, which covers the buffered tails and the metadata
//!   (size, allocation) the direct writes changed.
//! * Since Linux 6.6, tmpfs accepts `O_DIRECT` and serves it through the
//!   page cache; the direct path then behaves like the buffered one
//!   (including `ENOSPC` → [`UploadError::DiskFull`]).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use sha2::{Digest, Sha256};

use super::aligned::{AlignedBuf, ALIGN};
use super::mapped::hex;

/// The per-user directory holding partial uploads and temporary files.
pub const PARTIAL_DIR: &str = ".partial";
/// Longest upload name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// An encoded user id longer than this is shortened (prefix + digest).
const MAX_USER_COMPONENT: usize = 200;
/// How much of a long encoded user id is kept before its digest.
const USER_PREFIX_BYTES: usize = 128;
/// Buffer for hashing the bytes of a resumed partial.
const READ_BUF_BYTES: usize = 256 * 1024;
/// Staging buffer of a direct-write [`Partial`]: the largest `O_DIRECT`
/// write. Equal to the default chunk size, so a 1 MiB chunk is one direct
/// write; larger chunks are written in pieces of this size (1 MiB and 4 MiB
/// direct writes run at the same speed on the reference VM). Memory per
/// upload is at most this (pages are touched on first use).
pub const STAGING_BYTES: usize = 1 << 20;
/// Chunks at least this large are hashed on a second thread while their
/// direct write runs (a thread costs ~30 µs; hashing 256 KiB ~170 µs).
const PARALLEL_HASH_BYTES: usize = 256 * 1024;
/// [`ALIGN`] as a file offset.
const ALIGN_U64: u64 = ALIGN as u64;
/// Names tried for one raw-socket message before giving up.
const RAW_NAME_ATTEMPTS: u32 = 16;
/// `ENOSPC` on Linux (and most Unixes).
const ENOSPC: i32 = 28;

/// Why an upload operation failed. `reason()` is what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The name is not one plain path component of at most 255 bytes.
    #[error("invalid upload name")]
    InvalidName,
    /// The declared sha256 is not 64 hex digits.
    #[error("declared sha256 is not 64 hex digits")]
    BadDigest,
    /// The upload would exceed the configured limit.
    #[error("{size} bytes exceeds the upload limit of {max} bytes")]
    TooLarge {
        /// The size the upload would have.
        size: u64,
        /// The limit (`--max-upload-bytes`).
        max: u64,
    },
    /// The chunk would pass the declared size; nothing of it was written.
    #[error("chunk would pass the declared size (offset {offset})")]
    PastEnd {
        /// Bytes written so far.
        offset: u64,
    },
    /// `finish` before every byte was written; the partial is kept.
    #[error("upload incomplete at offset {offset}")]
    Incomplete {
        /// Bytes written so far.
        offset: u64,
    },
    /// The bytes do not hash to the declared digest; the partial is removed.
    #[error("sha256 mismatch (got {actual})")]
    DigestMismatch {
        /// Lowercase hex digest of what was received.
        actual: String,
    },
    /// A newer `start` of the same partial took it over.
    #[error("upload taken over by a newer start")]
    Superseded,
    /// The disk (or the user's quota) is full.
    #[error("disk full")]
    DiskFull,
    /// Any other I/O error.
    #[error("storage: {0}")]
    Storage(#[source] io::Error),
}

impl UploadError {
    /// A short, bounded reason for error replies and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            UploadError::InvalidName => "invalid_name",
            UploadError::BadDigest => "bad_digest",
            UploadError::TooLarge { .. } => "too_large",
            UploadError::PastEnd { .. } => "past_end",
            UploadError::Incomplete { .. } => "incomplete",
            UploadError::DigestMismatch { .. } => "digest_mismatch",
            UploadError::Superseded => "superseded",
            UploadError::DiskFull | UploadError::Storage(_) => "storage",
        }
    }

    /// Whether this is a full disk or quota.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, UploadError::DiskFull)
    }
}

/// Map an I/O error: a full disk or quota becomes [`UploadError::DiskFull`].
pub fn classify(err: io::Error) -> UploadError {
    let full = matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || err.raw_os_error() == Some(ENOSPC);
    if full {
        UploadError::DiskFull
    } else {
        UploadError::Storage(err)
    }
}

/// A file stored under its final name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stored {
    /// The file name inside the user's directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
}

/// Check an upload name: one plain path component (see
/// [`crate::stream::paths::check_name`]), no `/`, not starting with `.`
/// (which also keeps [`PARTIAL_DIR`] out of reach), at most 255 bytes.
pub fn check_upload_name(name: &str) -> Result<&str, UploadError> {
    crate::stream::paths::check_name(name).map_err(|_| UploadError::InvalidName)?;
    if name.len() > MAX_NAME_BYTES || name.contains('/') || name.starts_with('.') {
        return Err(UploadError::InvalidName);
    }
    Ok(name)
}

/// Validate a declared digest: 64 hex digits, returned in lowercase.
pub fn normalize_digest(hex: &str) -> Result<String, UploadError> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UploadError::BadDigest);
    }
    Ok(hex.to_ascii_lowercase())
}

/// The directory name of a user id: one plain path component, injective.
///
/// * `A-Z a-z 0-9 _ -` are kept, and `.` except as the first byte; every other
///   byte (UTF-8) is `%XX` (uppercase hex). So `.`, `..` and `/` never appear
///   as such and the name is never hidden: `../x` → `%2E.%2Fx`.
/// * The empty id is `%` (no other id encodes to a lone `%`).
/// * An encoding longer than 200 bytes is cut at a `%XX` boundary to at most
///   128 bytes and followed by `~` and the sha256 hex of the id (`~` is never
///   kept as such, so shortened names cannot meet unshortened ones).
pub fn encode_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    let mut prefix = 0;
    for (i, b) in user.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4, true));
            out.push(hex_digit(b & 0xf, true));
        }
        if out.len() <= USER_PREFIX_BYTES {
            prefix = out.len();
        }
    }
    if out.is_empty() {
        return "%".to_owned();
    }
    if out.len() > MAX_USER_COMPONENT {
        out.truncate(prefix);
        out.push('~');
        out.push_str(&hex(&Sha256::digest(user.as_bytes())));
    }
    out
}

/// Upload storage under one uploads root. Share one per root (it tracks
/// which [`Partial`] owns each partial file).
#[derive(Debug)]
pub struct UploadStore {
    root: PathBuf,
    max_upload_bytes: u64,
    owners: Owners,
    raw_counter: AtomicU64,
}

// === impl UploadStore ===

impl UploadStore {
    /// A store writing under `root` (created on demand), refusing uploads
    /// over `max_upload_bytes`.
    pub fn new(root: PathBuf, max_upload_bytes: u64) -> UploadStore {
        UploadStore {
            root,
            max_upload_bytes,
            owners: Owners::default(),
            raw_counter: AtomicU64::new(0),
        }
    }

    /// The uploads root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The size limit of one upload.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    /// The user's directory: `root/`[`encode_user`]`(user)`.
    pub fn user_dir(&self, user: &str) -> PathBuf {
        self.root.join(encode_user(user))
    }

    /// Begin or resume the verified upload `name` of `size` bytes, with an
    /// optional declared sha256 (64 hex digits, any case). The returned
    /// [`Partial`]'s `offset()` is where the client sends from.
    pub fn start(
        &self,
        user: &str,
        name: &str,
        size: u64,
        sha256: Option<&str>,
    ) -> Result<Partial, UploadError> {
        check_upload_name(name)?;
        let declared = sha256.map(normalize_digest).transpose()?;
        self.check_size(size)?;
        let dir = self.user_dir(user);
        let partial_dir = dir.join(PARTIAL_DIR);
        fs::create_dir_all(&partial_dir).map_err(classify)?;
        let path = partial_dir.join(partial_file_name(name, size));
        let sidecar = sidecar_of(&path);

        let owner = self.owners.claim(&path);
        let id = self.owners.next_id();
        // Held while the partial is prepared: an older owner's write waits
        // and then sees it has been superseded.
        let mut current = lock(&owner);
        *current = id;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(classify)?;
        let mut len = file.metadata().map_err(classify)?.len();
        let same_identity = read_sidecar(&sidecar).map_err(classify)? == declared;
        if len > size || !same_identity {
            file.set_len(0).map_err(classify)?;
            len = 0;
        }
        if !same_identity {
            match &declared {
                Some(digest) => fs::write(&sidecar, digest).map_err(classify)?,
                None => remove_if_exists(&sidecar).map_err(classify)?,
            }
        }
        let (hasher, offset) = hash_prefix(&file, len).map_err(classify)?;
        let direct = Direct::open(&path, &file, offset);
        drop(current);

        Ok(Partial {
            file,
            path,
            sidecar,
            dir,
            name: name.to_owned(),
            size,
            offset,
            hasher,
            declared,
            owner,
            id,
            direct,
        })
    }

    /// The seed's append log: append `data` to `<user dir>/<name>` (created
    /// if missing), refusing to grow it past the upload limit. Returns the
    /// file's new length.
    pub fn append(&self, user: &str, name: &str, data: &[u8]) -> Result<u64, UploadError> {
        check_upload_name(name)?;
        self.check_size(len_u64(data))?;
        let dir = self.user_dir(user);
        fs::create_dir_all(&dir).map_err(classify)?;
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join(name))
            .map_err(classify)?;
        let len = file.metadata().map_err(classify)?.len();
        let new_len = len.saturating_add(len_u64(data));
        self.check_size(new_len)?;
        file.write_all(data).map_err(classify)?;
        Ok(new_len)
    }

    /// The raw socket: store `data` as a new file `raw-<unix ms>-<n>.bin` in
    /// the user's directory (temporary file in [`PARTIAL_DIR`], fsync, link
    /// under a name that does not exist yet, fsync of the directory). An
    /// existing file is never replaced.
    pub fn store_whole(&self, user: &str, data: &[u8]) -> Result<Stored, UploadError> {
        let size = len_u64(data);
        self.check_size(size)?;
        let dir = self.user_dir(user);
        let partial_dir = dir.join(PARTIAL_DIR);
        fs::create_dir_all(&partial_dir).map_err(classify)?;
        let tmp = partial_dir.join(format!("raw-{:016x}.tmp", rand::random::<u64>()));
        let linked = write_new(&tmp, data)
            .map_err(classify)
            .and_then(|()| self.link_raw(&dir, &tmp));
        if let Err(err) = remove_if_exists(&tmp) {
            tracing::warn!(path = %tmp.display(), %err, "could not remove a temporary upload file");
        }
        let name = linked?;
        sync_dir(&dir).map_err(classify)?;
        Ok(Stored {
            name,
            size,
            sha256: hex(&Sha256::digest(data)),
        })
    }

    fn check_size(&self, size: u64) -> Result<(), UploadError> {
        if size > self.max_upload_bytes {
            return Err(UploadError::TooLarge {
                size,
                max: self.max_upload_bytes,
            });
        }
        Ok(())
    }

    /// Give the synced temporary file `tmp` a fresh `raw-*.bin` name in `dir`.
    fn link_raw(&self, dir: &Path, tmp: &Path) -> Result<String, UploadError> {
        for _ in 0..RAW_NAME_ATTEMPTS {
            let n = self.raw_counter.fetch_add(1, Ordering::Relaxed);
            let name = format!("raw-{}-{n}.bin", crate::clock::now_ms());
            let dest = dir.join(&name);
            match fs::hard_link(tmp, &dest) {
                Ok(()) => return Ok(name),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                // A file system without hard links: rename, after checking
                // the name is free (n is unique within this process).
                Err(_) if fs::symlink_metadata(&dest).is_err() => {
                    fs::rename(tmp, &dest).map_err(classify)?;
                    return Ok(name);
                }
                Err(err) => return Err(classify(err)),
            }
        }
        Err(UploadError::Storage(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free raw file name",
        )))
    }
}

/// An upload in progress, owning its partial file. Dropping it keeps the
/// partial for a later resume.
pub struct Partial {
    file: File,
    path: PathBuf,
    sidecar: PathBuf,
    dir: PathBuf,
    name: String,
    size: u64,
    offset: u64,
    hasher: Sha256,
    declared: Option<String>,
    owner: Arc<Mutex<u64>>,
    id: u64,
    /// `O_DIRECT` state; `None`: buffered writes only.
    direct: Option<Direct>,
}

// === impl Partial ===

impl Partial {
    /// Bytes written so far (where the next chunk goes).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The declared size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The upload name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared sha256, lowercase, if any.
    pub fn declared_sha256(&self) -> Option<&str> {
        self.declared.as_deref()
    }

    /// Whether every byte has been written.
    pub fn is_complete(&self) -> bool {
        self.offset == self.size
    }

    /// Whether writes go through `O_DIRECT` (see the module docs); `false`
    /// when the file system refused it or a direct write failed.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Give the staging buffer's memory back while the upload is idle (the
    /// unaligned tail is kept; the next write maps a fresh buffer's pages as
    /// it fills them). Without this an idle upload would pin up to
    /// [`STAGING_BYTES`] of resident memory.
    pub fn release_staging(&mut self) {
        if let Some(direct) = &mut self.direct {
            direct.shrink();
        }
    }

    /// Write `data` at the current offset and advance it. Returns the new
    /// offset. A chunk that would pass the size is refused whole.
    pub fn write(&mut self, data: &[u8]) -> Result<u64, UploadError> {
        let _owned = check_owner(&self.owner, self.id)?;
        let end = self
            .offset
            .checked_add(len_u64(data))
            .filter(|&end| end <= self.size)
            .ok_or(UploadError::PastEnd {
                offset: self.offset,
            })?;
        let mut hashed = None;
        if let Some(direct) = self.direct.as_mut() {
            let file = &self.file;
            match write_and_hash(&self.hasher, data, || direct.write(file, data)) {
                Ok(hasher) => hashed = Some(hasher),
                Err(err) => {
                    // The staging state may be half-advanced: buffered from now on.
                    self.direct = None;
                    if err.raw_os_error() != Some(libc::EINVAL) {
                        return Err(classify(err));
                    }
                    tracing::debug!(path = %self.path.display(), %err, "direct write refused; writing buffered");
                }
            }
        }
        match hashed {
            Some(hasher) => self.hasher = hasher,
            None => {
                self.file
                    .write_all_at(data, self.offset)
                    .map_err(classify)?;
                self.hasher.update(data);
            }
        }
        self.offset = end;
        Ok(end)
    }

    /// Verify and publish: size, then digest (when declared), fsync, rename
    /// to `<user dir>/<name>`, fsync of the directory. An incomplete upload
    /// keeps its partial; a digest mismatch removes it.
    pub fn finish(self) -> Result<Stored, UploadError> {
        let Partial {
            file,
            path,
            sidecar,
            dir,
            name,
            size,
            offset,
            hasher,
            declared,
            owner,
            id,
            direct,
        } = self;
        let _owned = check_owner(&owner, id)?;
        drop(direct);
        if offset != size {
            return Err(UploadError::Incomplete { offset });
        }
        let sha256 = hex(&hasher.finalize());
        if declared.as_ref().is_some_and(|d| *d != sha256) {
            drop(file);
            remove_if_exists(&path).map_err(classify)?;
            remove_if_exists(&sidecar).map_err(classify)?;
            return Err(UploadError::DigestMismatch { actual: sha256 });
        }
        if let Err(err) = file.sync_all() {
            // The kernel reports a writeback error once: pages it could not
            // write are then clean in the cache and a retry's digest and
            // fsync would both pass over data that is not on disk. So the
            // partial is not kept for a resume.
            drop(file);
            let _ = remove_if_exists(&path);
            let _ = remove_if_exists(&sidecar);
            return Err(classify(err));
        }
        fs::rename(&path, dir.join(&name)).map_err(classify)?;
        if let Err(err) = sync_dir(&dir) {
            // Published already; only the rename's durability is in doubt.
            tracing::warn!(dir = %dir.display(), %err, "fsync of the upload directory failed after publishing");
        }
        if let Err(err) = remove_if_exists(&sidecar) {
            // Harmless: a sidecar without its partial only decides whether a
            // later empty partial of this name starts over.
            tracing::warn!(path = %sidecar.display(), %err, "could not remove an upload sidecar");
        }
        Ok(Stored { name, size, sha256 })
    }

    /// Give up: remove the partial and its sidecar.
    pub fn abort(self) -> Result<(), UploadError> {
        let _owned = check_owner(&self.owner, self.id)?;
        remove_if_exists(&self.path).map_err(classify)?;
        remove_if_exists(&self.sidecar).map_err(classify)
    }
}

impl fmt::Debug for Partial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partial")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("offset", &self.offset)
            .field("declared", &self.declared)
            .field("direct", &self.is_direct())
            .finish_non_exhaustive()
    }
}

// === direct writes ===

/// The `O_DIRECT` side of a [`Partial`] (see the module docs).
struct Direct {
    /// The partial opened with `O_DIRECT`, write-only.
    file: File,
    /// The bytes `[base, offset)` of the upload; fewer than [`ALIGN`]
    /// between writes, and already in the file (written buffered).
    buf: AlignedBuf,
    /// File offset of `buf[0]`; a multiple of [`ALIGN`].
    base: u64,
}

impl Direct {
    /// Open `path` for direct writes continuing at `offset` (the partial's
    /// length, read back through `file`). `None`: write buffered.
    fn open(path: &Path, file: &File, offset: u64) -> Option<Direct> {
        match Direct::try_open(path, file, offset) {
            Ok(direct) => Some(direct),
            Err(err) => {
                tracing::debug!(path = %path.display(), %err, "no O_DIRECT; uploads to this file are buffered");
                None
            }
        }
    }

    fn try_open(path: &Path, file: &File, offset: u64) -> io::Result<Direct> {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let mut buf = AlignedBuf::new(STAGING_BYTES)?;
        let base = offset - offset % ALIGN_U64;
        // The partial's unaligned tail: fewer than ALIGN bytes.
        let mut tail = [0; ALIGN];
        let tail = usize::try_from(offset - base)
            .ok()
            .and_then(|n| tail.get_mut(..n))
            .ok_or_else(|| io::Error::other("unaligned tail too long"))?;
        file.read_exact_at(tail, base)?;
        buf.extend_from_slice(tail);
        Ok(Direct {
            file: direct,
            buf,
            base,
        })
    }

    /// Replace the buffer by a fresh (untouched, so not resident) one holding
    /// the same tail. On failure to map, keep the old one.
    fn shrink(&mut self) {
        if let Ok(mut fresh) = AlignedBuf::new(STAGING_BYTES) {
            fresh.extend_from_slice(self.buf.as_slice());
            self.buf = fresh;
        }
    }

    /// Append `data` (the bytes at the partial's offset) and write it:
    /// aligned prefixes with `O_DIRECT`, the unaligned tail buffered through
    /// `buffered`.
    fn write(&mut self, buffered: &File, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let taken = self.buf.extend_from_slice(rest);
            rest = &rest[taken..];
            if rest.is_empty() || self.buf.spare() == 0 {
                self.write_aligned()?;
            }
        }
        // What is left is the unaligned tail; the part of it that is new
        // (the end of `data`) goes through the page cache now.
        let held = self.buf.as_slice();
        let old = held.len().saturating_sub(data.len());
        let (before, new) = held.split_at(old);
        if !new.is_empty() {
            buffered.write_all_at(new, self.base + len_u64(before))?;
        }
        Ok(())
    }

    /// Write the largest [`ALIGN`]-multiple prefix of the buffer at `base`
    /// with `O_DIRECT`, then keep only the rest.
    fn write_aligned(&mut self) -> io::Result<()> {
        let held = self.buf.as_slice();
        let (aligned, _) = held.split_at(held.len() - held.len() % ALIGN);
        if aligned.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(aligned, self.base)?;
        let n = aligned.len();
        self.base += len_u64(aligned);
        self.buf.consume_front(n);
        Ok(())
    }
}

/// Run `write` (a direct write of `data`: the thread mostly waits for the
/// device) while `data` is hashed on a second, scoped thread, so hashing
/// overlaps the device wait. Returns `hasher` updated with `data`, or the
/// write's error (then `hasher` is untouched). Chunks under
/// [`PARALLEL_HASH_BYTES`], or no thread to be had: one after the other.
fn write_and_hash(
    hasher: &Sha256,
    data: &[u8],
    write: impl FnOnce() -> io::Result<()>,
) -> io::Result<Sha256> {
    let hash = |mut hasher: Sha256| {
        hasher.update(data);
        hasher
    };
    if data.len() < PARALLEL_HASH_BYTES {
        write()?;
        return Ok(hash(hasher.clone()));
    }
    std::thread::scope(|scope| {
        let copy = hasher.clone();
        let hashing = std::thread::Builder::new()
            .name("sluice-hash".to_owned())
            .spawn_scoped(scope, move || hash(copy));
        let written = write();
        let hashed = match hashing {
            Ok(handle) => handle
                .join()
                .map_err(|_| io::Error::other("upload hashing thread panicked"))?,
            Err(_) => hash(hasher.clone()),
        };
        written.map(|()| hashed)
    })
}

// === ownership of partial files ===

/// Which `start` owns each partial file: per path, a lock holding the id of
/// the current owner. Entries die with the last [`Partial`] of their path.
#[derive(Debug, Default)]
struct Owners {
    map: Mutex<HashMap<PathBuf, Weak<Mutex<u64>>>>,
    next: AtomicU64,
}

impl Owners {
    fn claim(&self, path: &Path) -> Arc<Mutex<u64>> {
        let mut map = lock(&self.map);
        map.retain(|_, owner| owner.strong_count() > 0);
        if let Some(owner) = map.get(path).and_then(Weak::upgrade) {
            return owner;
        }
        let owner = Arc::new(Mutex::new(0));
        map.insert(path.to_path_buf(), Arc::downgrade(&owner));
        owner
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_owner(owner: &Mutex<u64>, id: u64) -> Result<MutexGuard<'_, u64>, UploadError> {
    let current = lock(owner);
    if *current != id {
        return Err(UploadError::Superseded);
    }
    Ok(current)
}

// === helpers ===

/// `<name>.<size>.part`, or `~<sha256 of name>.<size>.part` when that would
/// not fit one path component together with the sidecar suffix.
fn partial_file_name(name: &str, size: u64) -> String {
    let readable = format!("{name}.{size}.part");
    if readable.len() + ".sha256".len() <= MAX_NAME_BYTES {
        readable
    } else {
        format!("~{}.{size}.part", hex(&Sha256::digest(name.as_bytes())))
    }
}

fn sidecar_of(partial: &Path) -> PathBuf {
    let mut os = partial.as_os_str().to_owned();
    os.push(".sha256");
    PathBuf::from(os)
}

/// The digest recorded for a partial; `None` when no sidecar exists. Content
/// that is not a digest is returned as is, so it matches no declaration.
fn read_sidecar(path: &Path) -> io::Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Hash the first `len` bytes of `file` with positioned reads. Returns the
/// hasher and the bytes hashed; a file found shorter is cut to what was read.
fn hash_prefix(file: &File, len: u64) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; READ_BUF_BYTES];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).map_or(buf.len(), |left| left.min(buf.len()));
        let n = match file.read_at(&mut buf[..want], done) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if n == 0 {
            file.set_len(done)?;
            break;
        }
        hasher.update(&buf[..n]);
        done += len_u64(&buf[..n]);
    }
    Ok((hasher, done))
}

fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn len_u64(data: &[u8]) -> u64 {
    u64::try_from(data.len()).unwrap_or(u64::MAX)
}

fn hex_digit(nibble: u8, upper: bool) -> char {
    let digits = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    char::from(digits[usize::from(nibble & 0xf)])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "sluice-upload-{}-{}-{:x}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                rand::random::<u32>()
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn store(max: u64) -> (TempDir, UploadStore) {
        let tmp = TempDir::new();
        let store = UploadStore::new(tmp.0.join("uploads"), max);
        (tmp, store)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    fn send(partial: &mut Partial, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk) {
            partial.write(piece).unwrap();
        }
    }

    fn partial_files(store: &UploadStore, user: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(store.user_dir(user).join(PARTIAL_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn start_write_finish_is_byte_identical() {
        let (_tmp, store) = store(1 << 20);
        let body = data(100_000);
        let digest = sha(&body);
        let mut p = store
            .start("alice", "a.bin", 100_000, Some(&digest.to_uppercase()))
            .unwrap();
        assert_eq!((p.offset(), p.size(), p.name()), (0, 100_000, "a.bin"));
        assert_eq!(p.declared_sha256(), Some(digest.as_str()));
        send(&mut p, &body, 4096);
        assert!(p.is_complete());
        let stored = p.finish().unwrap();
        assert_eq!(
            stored,
            Stored {
                name: "a.bin".into(),
                size: 100_000,
                sha256: digest
            }
        );
        assert_eq!(
            fs::read(store.user_dir("alice").join("a.bin")).unwrap(),
            body
        );
        assert!(
            partial_files(&store, "alice").is_empty(),
            "partial and sidecar gone"
        );
    }

    #[test]
    fn finish_replaces_an_older_file() {
        let (_tmp, store) = store(1 << 20);
        for body in [b"first".as_slice(), b"second!"] {
            let mut p = store.start("u", "f", len_u64(body), None).unwrap();
            p.write(body).unwrap();
            p.finish().unwrap();
        }
        assert_eq!(fs::read(store.user_dir("u").join("f")).unwrap(), b"second!");
    }

    #[test]
    fn empty_upload_finishes() {
        let (_tmp, store) = store(10);
        let stored = store
            .start("u", "empty", 0, None)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(stored.sha256, sha(b""));
        assert_eq!(fs::read(store.user_dir("u").join("empty")).unwrap(), b"");
    }

    #[test]
    fn resume_continues_offset_and_hash() {
        let (_tmp, store) = store(1 << 20);
        let body = data(700_000); // larger than the hashing buffer
        let digest = sha(&body);
        let mut p = store
            .start("bob", "big.iso", 700_000, Some(&digest))
            .unwrap();
        send(&mut p, &body[..300_001], 65_536);
        drop(p); // the socket went away

        let mut p = store
            .start("bob", "big.iso", 700_000, Some(&digest))
            .unwrap();
        assert_eq!(p.offset(), 300_001);
        send(&mut p, &body[300_001..], 65_536);
        let stored = p.finish().unwrap();
        assert_eq!(stored.sha256, digest);
        assert_eq!(
            fs::read(store.user_dir("bob").join("big.iso")).unwrap(),
            body
        );
    }

    #[test]
    fn resume_without_digest_and_other_sizes_are_separate() {
        let (_tmp, store) = store(1 << 20);
        let body = data(1000);
        let mut p = store.start("u", "f", 1000, None).unwrap();
        p.write(&body[..400]).unwrap();
        drop(p);
        assert_eq!(store.start("u", "f", 999, None).unwrap().offset(), 0);
        let mut p = store.start("u", "f", 1000, None).unwrap();
        assert_eq!(p.offset(), 400);
        p.write(&body[400..]).unwrap();
        assert_eq!(p.finish().unwrap().sha256, sha(&body));
    }

    #[test]
    fn a_partial_longer_than_the_size_starts_over() {
        let (_tmp, store) = store(1 << 20);
        let p = store.start("u", "f", 10, None).unwrap();
        fs::write(&p.path, b"0123456789abc").unwrap();
        drop(p);
        let p = store.start("u", "f", 10, None).unwrap();
        assert_eq!(p.offset(), 0);
        assert_eq!(fs::metadata(&p.path).unwrap().len(), 0);
    }

    #[test]
    fn a_changed_declaration_starts_over() {
        let (_tmp, store) = store(1 << 20);
        let a = sha(b"aaaa");
        let b = sha(b"bbbb");
        let mut p = store.start("u", "f", 4, Some(&a)).unwrap();
        p.write(b"aa").unwrap();
        drop(p);
        assert_eq!(store.start("u", "f", 4, Some(&a)).unwrap().offset(), 2);

        let mut p = store.start("u", "f", 4, Some(&b)).unwrap();
        assert_eq!(p.offset(), 0, "another digest: another file");
        p.write(b"bb").unwrap();
        drop(p);
        assert_eq!(
            store.start("u", "f", 4, None).unwrap().offset(),
            0,
            "digest dropped"
        );

        let mut p = store.start("u", "f", 4, None).unwrap();
        p.write(b"bb").unwrap();
        drop(p);
        let mut p = store.start("u", "f", 4, Some(&b)).unwrap();
        assert_eq!(p.offset(), 0, "digest added");
        p.write(b"bbbb").unwrap();
        assert_eq!(p.finish().unwrap().sha256, b);
    }

    #[test]
    fn a_corrupt_sidecar_starts_over() {
        let (_tmp, store) = store(100);
        let digest = sha(b"abcd");
        let mut p = store.start("u", "f", 4, Some(&digest)).unwrap();
        p.write(b"ab").unwrap();
        fs::write(&p.sidecar, b"garbage").unwrap();
        drop(p);
        assert_eq!(store.start("u", "f", 4, Some(&digest)).unwrap().offset(), 0);
    }

    #[test]
    fn past_end_writes_nothing() {
        let (_tmp, store) = store(100);
        let mut p = store.start("u", "f", 10, None).unwrap();
        p.write(b"123456").unwrap();
        let err = p.write(b"78901").unwrap_err();
        assert!(matches!(err, UploadError::PastEnd { offset: 6 }), "{err:?}");
        assert_eq!(err.reason(), "past_end");
        assert_eq!(p.offset(), 6);
        assert_eq!(fs::read(&p.path).unwrap(), b"123456");
        p.write(b"7890").unwrap();
        assert_eq!(p.finish().unwrap().size, 10);
    }

    #[test]
    fn incomplete_keeps_the_partial() {
        let (_tmp, store) = store(100);
        let mut p = store.start("u", "f", 10, None).unwrap();
        p.write(b"1234").unwrap();
        let err = p.finish().unwrap_err();
        assert!(
            matches!(err, UploadError::Incomplete { offset: 4 }),
            "{err:?}"
        );
        assert_eq!(err.reason(), "incomplete");
        assert!(!store.user_dir("u").join("f").exists());
        assert_eq!(store.start("u", "f", 10, None).unwrap().offset(), 4);
    }

    #[test]
    fn digest_mismatch_removes_the_partial() {
        let (_tmp, store) = store(100);
        let mut p = store.start("u", "f", 4, Some(&sha(b"good"))).unwrap();
        p.write(b"evil").unwrap();
        let err = p.finish().unwrap_err();
        match &err {
            UploadError::DigestMismatch { actual } => assert_eq!(*actual, sha(b"evil")),
            other => panic!("{other:?}"),
        }
        assert_eq!(err.reason(), "digest_mismatch");
        assert!(!store.user_dir("u").join("f").exists());
        assert!(partial_files(&store, "u").is_empty());
    }

    #[test]
    fn abort_removes_the_partial() {
        let (_tmp, store) = store(100);
        let mut p = store.start("u", "f", 4, Some(&sha(b"abcd"))).unwrap();
        p.write(b"ab").unwrap();
        p.abort().unwrap();
        assert!(partial_files(&store, "u").is_empty());
        assert_eq!(store.start("u", "f", 4, None).unwrap().offset(), 0);
    }

    #[test]
    fn a_newer_start_takes_over() {
        let (_tmp, store) = store(100);
        let mut old = store.start("u", "f", 4, None).unwrap();
        old.write(b"ab").unwrap();
        let mut new = store.start("u", "f", 4, None).unwrap();
        assert_eq!(new.offset(), 2);
        assert!(matches!(old.write(b"cd"), Err(UploadError::Superseded)));
        assert_eq!(old.write(b"x").unwrap_err().reason(), "superseded");
        assert!(matches!(old.abort(), Err(UploadError::Superseded)));
        new.write(b"cd").unwrap();
        assert_eq!(new.finish().unwrap().sha256, sha(b"abcd"));

        // Different users or names never interfere.
        let mut a = store.start("u", "g", 1, None).unwrap();
        let mut b = store.start("v", "g", 1, None).unwrap();
        a.write(b"a").unwrap();
        b.write(b"b").unwrap();
        a.finish().unwrap();
        b.finish().unwrap();
        assert!(lock(&store.owners.map).len() <= 2);
    }

    #[test]
    fn names_are_one_plain_component() {
        let (_tmp, store) = store(100);
        let long = "x".repeat(256);
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", ".hidden", "a\0b", "a\\b", &long,
        ] {
            let err = store.start("u", bad, 1, None).unwrap_err();
            assert!(matches!(err, UploadError::InvalidName), "{bad:?}: {err:?}");
            assert_eq!(err.reason(), "invalid_name");
            assert!(matches!(
                store.append("u", bad, b"x"),
                Err(UploadError::InvalidName)
            ));
        }
        assert!(!store.root().exists(), "nothing touched");
        for good in ["a.bin", "ünïcode ok.txt", "x.", "a..b"] {
            assert_eq!(check_upload_name(good).unwrap(), good);
        }
    }

    #[test]
    fn a_255_byte_name_round_trips() {
        let (_tmp, store) = store(100);
        let name = "n".repeat(255);
        let mut p = store.start("u", &name, 3, Some(&sha(b"abc"))).unwrap();
        p.write(b"ab").unwrap();
        drop(p);
        let mut p = store.start("u", &name, 3, Some(&sha(b"abc"))).unwrap();
        assert_eq!(p.offset(), 2);
        p.write(b"c").unwrap();
        p.finish().unwrap();
        assert_eq!(fs::read(store.user_dir("u").join(&name)).unwrap(), b"abc");
    }

    #[test]
    fn declared_digests_are_checked() {
        let (_tmp, store) = store(100);
        let g = "g".repeat(64);
        let short = "a".repeat(63);
        for bad in ["", "xyz", &g, &short] {
            let err = store.start("u", "f", 1, Some(bad)).unwrap_err();
            assert!(matches!(err, UploadError::BadDigest), "{bad:?}");
            assert_eq!(err.reason(), "bad_digest");
        }
        assert_eq!(
            normalize_digest(&"AbC1".repeat(16)).unwrap(),
            "abc1".repeat(16)
        );
    }

    #[test]
    fn user_ids_never_escape_the_root() {
        let (_tmp, store) = store(100);
        let long = "é".repeat(300);
        let users = [
            "", ".", "..", "../x", "a/b", "/abs", "a\0b", "%", "%25", "~", ".partial", "ü", "x.y",
            &long,
        ];
        let mut seen = std::collections::HashSet::new();
        for user in users {
            let dir = store.user_dir(user);
            assert_eq!(dir.parent(), Some(store.root()), "{user:?}");
            let component = dir.file_name().unwrap().to_str().unwrap();
            assert!(!component.starts_with('.'), "{user:?}: {component}");
            assert!(component.len() <= MAX_USER_COMPONENT, "{user:?}");
            assert!(seen.insert(component.to_owned()), "{user:?} collides");
            // Really stored inside.
            let stored = store.store_whole(user, b"x").unwrap();
            assert!(dir.join(&stored.name).is_file());
        }
        assert_eq!(encode_user("alice-1_b.c"), "alice-1_b.c");
        assert_eq!(encode_user("../x"), "%2E.%2Fx");
        assert_eq!(encode_user(""), "%");
        assert_eq!(encode_user("a b"), "a%20b");
        let short = encode_user(&long);
        assert!(short.ends_with(&hex(&Sha256::digest(long.as_bytes()))));
        assert!(short.starts_with("%C3%A9"));
        assert_eq!(fs::read_dir(store.root()).unwrap().count(), users.len());
    }

    #[test]
    fn too_large_on_start_append_and_store() {
        let (_tmp, store) = store(10);
        let err = store.start("u", "f", 11, None).unwrap_err();
        assert!(
            matches!(err, UploadError::TooLarge { size: 11, max: 10 }),
            "{err:?}"
        );
        assert_eq!(err.reason(), "too_large");
        assert!(store.start("u", "f", 10, None).is_ok());

        assert_eq!(store.append("u", "image-1.bin", b"123456").unwrap(), 6);
        let err = store.append("u", "image-1.bin", b"12345").unwrap_err();
        assert!(
            matches!(err, UploadError::TooLarge { size: 11, max: 10 }),
            "{err:?}"
        );
        assert_eq!(store.append("u", "image-1.bin", b"7890").unwrap(), 10);
        assert!(matches!(
            store.append("u", "other.bin", &[0; 11]),
            Err(UploadError::TooLarge { .. })
        ));
        assert_eq!(
            fs::read(store.user_dir("u").join("image-1.bin")).unwrap(),
            b"1234567890"
        );
        assert!(matches!(
            store.store_whole("u", &[0; 11]),
            Err(UploadError::TooLarge { .. })
        ));
    }

    #[test]
    fn store_whole_makes_new_files() {
        let (_tmp, store) = store(1 << 20);
        let mut names = std::collections::HashSet::new();
        for i in 0..20u8 {
            let body = data(1000 + usize::from(i));
            let stored = store.store_whole("raw", &body).unwrap();
            assert_eq!(stored.size, len_u64(&body));
            assert_eq!(stored.sha256, sha(&body));
            let parts: Vec<&str> = stored.name.split(['-', '.']).collect();
            assert_eq!(parts.len(), 4, "{}", stored.name);
            assert_eq!((parts[0], parts[3]), ("raw", "bin"));
            assert!(parts[1].parse::<u64>().is_ok() && parts[2].parse::<u64>().is_ok());
            assert_eq!(
                fs::read(store.user_dir("raw").join(&stored.name)).unwrap(),
                body
            );
            assert!(names.insert(stored.name));
        }
        assert!(
            partial_files(&store, "raw").is_empty(),
            "no temp files left"
        );
    }

    #[test]
    fn store_whole_never_replaces() {
        let (_tmp, store) = store(100);
        let dir = store.user_dir("u");
        fs::create_dir_all(&dir).unwrap();
        // Occupy the next names a second store of the same root would pick.
        let ms = crate::clock::now_ms();
        for t in ms..ms + 50 {
            fs::write(dir.join(format!("raw-{t}-0.bin")), b"old").unwrap();
        }
        let stored = store.store_whole("u", b"new").unwrap();
        assert_ne!(fs::read(dir.join(&stored.name)).unwrap(), b"old");
        let olds = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| fs::read(e.as_ref().unwrap().path()).ok().as_deref() == Some(b"old"))
            .count();
        assert_eq!(olds, 50);
    }

    #[test]
    fn a_failed_write_is_storage_and_publishes_nothing() {
        let (_tmp, store) = store(100);
        let mut p = store.start("u", "f", 4, None).unwrap();
        p.file = File::open(&p.path).unwrap(); // read-only descriptor
        let err = p.write(b"ab").unwrap_err();
        assert!(matches!(err, UploadError::Storage(_)), "{err:?}");
        assert_eq!(err.reason(), "storage");
        assert!(!err.is_disk_full());
        assert_eq!(p.offset(), 0);
        assert!(matches!(
            p.finish(),
            Err(UploadError::Incomplete { offset: 0 })
        ));
        assert!(!store.user_dir("u").join("f").exists());
    }

    #[test]
    fn a_directory_in_the_way_is_storage() {
        let (_tmp, store) = store(100);
        let p = store.start("u", "f", 1, None).unwrap();
        let path = p.path.clone();
        drop(p);
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let err = store.start("u", "f", 1, None).unwrap_err();
        assert!(matches!(err, UploadError::Storage(_)), "{err:?}");

        // A non-empty directory under the final name: rename fails, the
        // partial stays for a retry.
        fs::create_dir_all(store.user_dir("u").join("g/inner")).unwrap();
        let mut p = store.start("u", "g", 1, None).unwrap();
        p.write(b"x").unwrap();
        assert!(matches!(p.finish(), Err(UploadError::Storage(_))));
        assert_eq!(store.start("u", "g", 1, None).unwrap().offset(), 1);
        assert!(store.user_dir("u").join("g").is_dir());
    }

    /// Which write path ran, for the test output (`--nocapture`).
    fn path_of(p: &Partial) -> &'static str {
        if p.is_direct() {
            "O_DIRECT"
        } else {
            "buffered"
        }
    }

    #[test]
    fn any_chunk_sizes_are_byte_identical_on_both_paths() {
        let (_tmp, store) = store(1 << 30);
        // Larger than the staging buffer.
        let big = STAGING_BYTES * 2 + 5;
        // Each case: the body length and the chunk sizes, cycled.
        let cases: [(usize, &[usize]); 8] = [
            (10_007, &[1]),
            (3 * ALIGN + 17, &[4095]),
            (3 * ALIGN, &[4096]),
            (5 * ALIGN + 3, &[4097]),
            (3 * (1 << 20) + 11, &[(1 << 20) + 3]),
            (3 * (1 << 20), &[1 << 20]),
            (big * 2 + 9, &[big]),
            (
                9 * (1 << 20) + 123,
                &[1, 4095, 4097, (1 << 20) + 3, big, 7, 4096, 1 << 20, 8191, 3],
            ),
        ];
        for direct in [true, false] {
            for (i, (len, chunks)) in cases.iter().enumerate() {
                let body = data(*len);
                let name = format!("f{i}");
                let mut p = store
                    .start("u", &name, len_u64(&body), Some(&sha(&body)))
                    .unwrap();
                if !direct {
                    p.direct = None;
                }
                let path = path_of(&p);
                let mut at = 0;
                for &chunk in chunks.iter().cycle() {
                    if at == body.len() {
                        break;
                    }
                    let end = body.len().min(at + chunk);
                    assert_eq!(p.write(&body[at..end]).unwrap(), len_u64(&body[..end]));
                    at = end;
                    // Every acknowledged byte is in the file.
                    assert_eq!(fs::metadata(&p.path).unwrap().len(), p.offset());
                    if let Some(d) = &p.direct {
                        assert_eq!(d.base % ALIGN_U64, 0);
                        assert!(d.buf.len() < ALIGN);
                        assert_eq!(d.base + len_u64(d.buf.as_slice()), p.offset());
                    }
                }
                assert_eq!(fs::read(&p.path).unwrap(), body, "case {i} ({path})");
                assert_eq!(p.finish().unwrap().sha256, sha(&body), "case {i}");
                assert_eq!(
                    fs::read(store.user_dir("u").join(&name)).unwrap(),
                    body,
                    "case {i} ({path})"
                );
                println!("case {i}: {len} bytes in chunks {chunks:?}: {path}");
            }
        }
    }

    #[test]
    fn resume_at_unaligned_lengths_finishes_with_the_right_digest() {
        let (_tmp, store) = store(1 << 30);
        let body = data(5 * (1 << 20) + 1001);
        let digest = sha(&body);
        for (i, cut) in [0, 123, ALIGN, 3 * ALIGN + 123, (1 << 20) + 4095]
            .into_iter()
            .enumerate()
        {
            let name = format!("r{i}");
            let mut p = store
                .start("u", &name, len_u64(&body), Some(&digest))
                .unwrap();
            send(&mut p, &body[..cut], 1000);
            drop(p);
            let mut p = store
                .start("u", &name, len_u64(&body), Some(&digest))
                .unwrap();
            assert_eq!(p.offset(), len_u64(&body[..cut]));
            if let Some(d) = &p.direct {
                assert_eq!(d.base, len_u64(&body[..cut - cut % ALIGN]));
                assert_eq!(d.buf.as_slice(), &body[cut - cut % ALIGN..cut]);
            }
            let path = path_of(&p);
            // Chunks not aligned to the file either.
            send(&mut p, &body[cut..], (1 << 20) + 7);
            assert_eq!(p.finish().unwrap().sha256, digest, "cut {cut} ({path})");
            assert_eq!(fs::read(store.user_dir("u").join(&name)).unwrap(), body);
            println!("resume at {cut}: {path}");
        }
    }

    #[test]
    fn a_failed_direct_write_falls_back_to_buffered() {
        let (_tmp, store) = store(1 << 30);
        let body = data(3 * (1 << 20) + 10);
        let mut p = store
            .start("u", "f", len_u64(&body), Some(&sha(&body)))
            .unwrap();
        p.write(&body[..ALIGN + 1]).unwrap();
        let Some(d) = p.direct.as_mut() else {
            println!("no O_DIRECT in {}: nothing to test", store.root().display());
            return;
        };
        d.file = File::open(&p.path).unwrap(); // read-only: EBADF
                                               // Large enough to be hashed alongside the write: the digest must not
                                               // take a chunk that was not written.
        let failing = ALIGN + 1..ALIGN + 1 + PARALLEL_HASH_BYTES + 5;
        let err = p.write(&body[failing]).unwrap_err();
        assert!(matches!(err, UploadError::Storage(_)), "{err:?}");
        assert!(!p.is_direct());
        assert_eq!(p.offset(), len_u64(&body[..ALIGN + 1]));
        // Buffered from here on, still a correct file.
        send(&mut p, &body[ALIGN + 1..], (1 << 20) + 3);
        assert_eq!(p.finish().unwrap().sha256, sha(&body));
        assert_eq!(fs::read(store.user_dir("u").join("f")).unwrap(), body);
    }

    #[test]
    fn a_refused_direct_write_is_retried_buffered() {
        let (_tmp, store) = store(1 << 20);
        let body = data(3 * ALIGN + 10);
        let mut p = store.start("u", "f", len_u64(&body), None).unwrap();
        let Some(d) = p.direct.as_mut() else {
            println!("no O_DIRECT in {}: nothing to test", store.root().display());
            return;
        };
        // Only where this file system refuses an unaligned direct write
        // (tmpfs takes it, through the page cache).
        if d.file.write_at(&[0; 8], 1).map_err(|e| e.raw_os_error()) != Err(Some(libc::EINVAL)) {
            println!("unaligned O_DIRECT writes are accepted here: nothing to test");
            return;
        }
        d.base = 1; // the next direct write is refused with EINVAL
        assert_eq!(p.write(&body).unwrap(), len_u64(&body));
        assert!(!p.is_direct());
        assert_eq!(p.finish().unwrap().sha256, sha(&body));
        assert_eq!(fs::read(store.user_dir("u").join("f")).unwrap(), body);
    }

    #[test]
    fn disk_full_is_recognised() {
        let err = classify(io::Error::from_raw_os_error(ENOSPC));
        assert!(err.is_disk_full());
        assert_eq!(err.reason(), "storage");
        assert!(classify(io::Error::from(io::ErrorKind::StorageFull)).is_disk_full());
        assert!(classify(io::Error::from(io::ErrorKind::QuotaExceeded)).is_disk_full());
        let other = classify(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(matches!(other, UploadError::Storage(_)));
        assert!(!other.is_disk_full());
    }
}
