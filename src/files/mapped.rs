//! Opened download files, shared by every connection: memory-mapped once,
//! sliced into zero-copy chunks, digested once.
//!
//! # Contract
//! * [`FileCache::open`] resolves a client-supplied name under the root
//!   ([`crate::stream::paths`]), opens it, checks that the descriptor really
//!   points under the root (a symlink swapped in after resolution is refused)
//!   and reads size, mtime and inode through the descriptor (`fstat`). It is
//!   blocking: call it on the blocking pool.
//! * An entry is reused while path, size, mtime, inode and device are
//!   unchanged; otherwise a fresh one is made. At most `capacity` entries are
//!   kept (least recently opened evicted); an evicted map lives on until the
//!   last stream using it ends.
//! * **mmap safety policy** (docs/FILES.md): only a regular, non-empty file
//!   whose mtime is at least `settle` old is mapped; user space never reads
//!   the map (the digest uses positioned reads), only the kernel does, inside
//!   `writev`, where a page lost to truncation by another process fails the
//!   write with `EFAULT` instead of raising SIGBUS. Younger files are served
//!   by positioned reads ([`Body::Copied`]).
//! * The sha256 digest is computed at most once per entry, on the blocking
//!   pool, with positioned reads.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::stream::paths::{self, PathError};

/// Why a file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The name is refused or does not resolve to a regular file under the root.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The file system failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl OpenError {
    /// A short, bounded reason for error replies.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Path(p) => p.reason(),
            OpenError::Io(_) => "io_error",
        }
    }
}

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// The entity tag clients compare before resuming: changes with the file.
    pub fn etag(&self) -> String {
        format!("{:x}-{:x}-{:x}", self.size, self.mtime_ns, self.ino)
    }
}

/// How a file's bytes are served.
pub enum Body {
    /// Memory-mapped; chunks are slices of this (the whole file).
    Mapped {
        /// The whole file as one shared buffer.
        bytes: Bytes,
        /// The map, kept for read-ahead advice.
        map: Arc<Mmap>,
    },
    /// Served by positioned reads (young or empty file).
    Copied,
}

/// One opened version of a file.
pub struct OpenFile {
    /// Canonical path.
    pub path: PathBuf,
    /// Size, mtime, inode.
    pub id: Identity,
    /// Mapped or copied.
    pub body: Body,
    file: File,
    digest: tokio::sync::OnceCell<String>,
}

/// Owner handed to `Bytes::from_owner`: the map stays alive while any chunk does.
struct MapOwner(Arc<Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl OpenFile {
    /// Whether chunks are zero-copy slices of a map.
    pub fn is_mapped(&self) -> bool {
        matches!(self.body, Body::Mapped { .. })
    }

    /// A zero-copy slice (mapped files only).
    pub fn slice(&self, range: Range<u64>) -> Option<Bytes> {
        match &self.body {
            Body::Mapped { bytes, .. } => {
                let start = usize::try_from(range.start).ok()?;
                let end = usize::try_from(range.end).ok()?;
                (start <= end && end <= bytes.len()).then(|| bytes.slice(start..end))
            }
            Body::Copied => None,
        }
    }

    /// Ask the kernel to read `range` ahead (mapped files; best effort).
    pub fn will_need(&self, range: Range<u64>) {
        if let Body::Mapped { map, .. } = &self.body {
            let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end))
            else {
                return;
            };
            let end = end.min(map.len());
            if start < end {
                let _ = map.advise_range(memmap2::Advice::WillNeed, start, end - start);
            }
        }
    }

    /// Read `range` with positioned reads (blocking; any body).
    pub fn read(&self, range: Range<u64>) -> io::Result<Bytes> {
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, range.start)?;
        Ok(Bytes::from(buf))
    }

    /// The lowercase hex sha256 of the file, computed once (blocking pool).
    pub async fn sha256(self: &Arc<Self>) -> io::Result<String> {
        let me = self.clone();
        self.digest
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || digest_file(&me.file, me.id.size))
                    .await
                    .map_err(io::Error::other)?
            })
            .await
            .cloned()
    }
}

/// sha256 of the first `size` bytes of `file`, by positioned reads.
pub fn digest_file(file: &File, size: u64) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let want = usize::try_from((size - at).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being digested",
            ));
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The shared cache of opened files under one root.
pub struct FileCache {
    root: PathBuf,
    capacity: usize,
    settle: Duration,
    /// Most recently opened first; at most `capacity` entries.
    entries: Mutex<Vec<Arc<OpenFile>>>,
}

impl FileCache {
    /// A cache for files under `root` (created if missing, then canonicalized).
    pub fn new(root: &Path, capacity: usize, settle: Duration) -> io::Result<FileCache> {
        std::fs::create_dir_all(root)?;
        Ok(FileCache {
            root: root.canonicalize()?,
            capacity: capacity.max(1),
            settle,
            entries: Mutex::new(Vec::new()),
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Entries currently cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<OpenFile>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolve and open `name` (blocking).
    pub fn open(&self, name: &str) -> Result<Arc<OpenFile>, OpenError> {
        let path = paths::resolve(&self.root, name)?;
        // O_NONBLOCK: if a FIFO was swapped in after the check, opening it
        // must not block a pool thread until some writer appears.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|_| PathError::NotFound)?;
        // The name was resolved before the open: make sure what we opened is
        // still under the root (a component swapped for a symlink in between).
        if let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", fd(&file))) {
            if !real.starts_with(&self.root) {
                return Err(PathError::Escapes.into());
            }
        }
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(PathError::NotAFile.into());
        }
        let id = Identity::of(&meta);
        {
            let mut entries = self.lock();
            if let Some(i) = entries.iter().position(|e| e.path == path) {
                if entries[i].id == id {
                    let hit = entries.remove(i);
                    entries.insert(0, hit.clone());
                    return Ok(hit);
                }
                entries.remove(i);
            }
        }
        let settled = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age >= self.settle);
        let body = if settled && id.size > 0 {
            match map(&file, id.size) {
                Ok(map) => {
                    let map = Arc::new(map);
                    Body::Mapped {
                        bytes: Bytes::from_owner(MapOwner(map.clone())),
                        map,
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "mmap failed; serving with reads");
                    Body::Copied
                }
            }
        } else {
            Body::Copied
        };
        let entry = Arc::new(OpenFile {
            path,
            id,
            body,
            file,
            digest: tokio::sync::OnceCell::new(),
        });
        let mut entries = self.lock();
        entries.insert(0, entry.clone());
        entries.truncate(self.capacity);
        Ok(entry)
    }
}

fn fd(file: &File) -> i32 {
    use std::os::fd::AsRawFd;
    file.as_raw_fd()
}

/// Map exactly `len` bytes of `file` read-only.
#[allow(unsafe_code)]
fn map(file: &File, len: u64) -> io::Result<Mmap> {
    let len = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
    // SAFETY: the map is read-only and private to this process. Rust code never
    // dereferences it: bytes are only handed to the kernel through `writev`
    // (a page lost to a concurrent truncation then fails the syscall with
    // EFAULT, it does not fault in user space), and the digest is computed
    // with positioned reads. Only settled files are mapped (module contract).
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-mapped-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn maps_settled_files_once_and_slices_without_copying() {
        let d = dir("map");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.join("a.bin"), &data).unwrap();
        let cache = FileCache::new(&d, 4, Duration::ZERO).unwrap();
        let a = cache.open("a.bin").unwrap();
        assert!(a.is_mapped());
        let b = cache.open("a.bin").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one map shared by every opener");
        let s = a.slice(10..20).unwrap();
        assert_eq!(&s[..], &data[10..20]);
        assert!(a.slice(0..100_001).is_none());
        let sha = a.sha256().await.unwrap();
        assert_eq!(sha, hex(&Sha256::digest(&data)));
        assert_eq!(a.read(5..9).unwrap(), Bytes::copy_from_slice(&data[5..9]));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn young_and_empty_files_are_copied_and_changes_make_a_new_entry() {
        let d = dir("young");
        std::fs::write(d.join("y.bin"), b"young").unwrap();
        std::fs::write(d.join("e.bin"), b"").unwrap();
        let cache = FileCache::new(&d, 4, Duration::from_secs(3600)).unwrap();
        let y = cache.open("y.bin").unwrap();
        assert!(!y.is_mapped());
        assert_eq!(&y.read(0..5).unwrap()[..], b"young");
        let settled = FileCache::new(&d, 4, Duration::ZERO).unwrap();
        assert!(
            !settled.open("e.bin").unwrap().is_mapped(),
            "empty: nothing to map"
        );
        std::fs::write(d.join("y.bin"), b"younger").unwrap();
        let y2 = cache.open("y.bin").unwrap();
        assert!(!Arc::ptr_eq(&y, &y2));
        assert_eq!(y2.id.size, 7);
        assert_ne!(y.id.etag(), y2.id.etag());
        assert_eq!(cache.len(), 1, "the stale entry was replaced");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn capacity_bounds_the_cache_and_names_are_checked() {
        let d = dir("cap");
        for i in 0..5 {
            std::fs::write(d.join(format!("{i}.bin")), [i as u8; 10]).unwrap();
        }
        let cache = FileCache::new(&d, 2, Duration::ZERO).unwrap();
        for i in 0..5 {
            cache.open(&format!("{i}.bin")).unwrap();
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.open("../x").err().unwrap().reason(), "invalid_name");
        assert_eq!(cache.open("nope").err().unwrap().reason(), "not_found");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        assert_eq!(cache.open("sub").err().unwrap().reason(), "not_a_file");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn digest_of_a_file_that_shrank_is_an_error() {
        let d = dir("shrink");
        std::fs::write(d.join("s.bin"), [1u8; 10]).unwrap();
        let f = File::open(d.join("s.bin")).unwrap();
        assert!(digest_file(&f, 20).is_err());
        assert_eq!(
            digest_file(&f, 10).unwrap(),
            hex(&Sha256::digest([1u8; 10]))
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
