//! Deleting abandoned partial uploads.
//!
//! # Contract
//! * [`sweep_partials`] removes every regular file in `<uploads>/<user>/.partial/`
//!   whose mtime is older than `max_age` (partial uploads nobody resumed,
//!   temporary files left by a crash). A partial being written is touched by
//!   every chunk, so only abandoned ones age. Completed uploads (outside
//!   `.partial/`) are never touched.
//! * Blocking; errors on single entries are logged and skipped.
//! * [`run`] sweeps at start and then every `max_age / 4` (at most hourly).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::upload::PARTIAL_DIR;
use super::Files;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Remove partials under `root` not modified for `max_age` (as of `now`).
pub fn sweep_partials(root: &Path, max_age: Duration, now: SystemTime) -> io::Result<Swept> {
    let mut swept = Swept::default();
    let users = match std::fs::read_dir(root) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e),
    };
    for user in users.flatten() {
        let partials = user.path().join(PARTIAL_DIR);
        let Ok(entries) = std::fs::read_dir(&partials) else {
            continue;
        };
        // A partial and its digest sidecar (`X` and `X.sha256`) age together:
        // only the partial is touched by writes, and losing the sidecar of a
        // live partial would make its next resume start over.
        let files: Vec<(std::path::PathBuf, std::fs::Metadata)> = entries
            .flatten()
            .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
            .filter(|(_, m)| m.is_file())
            .collect();
        let newest = |path: &Path| -> Option<SystemTime> {
            let partner = match path.to_str()?.strip_suffix(".sha256") {
                Some(base) => std::path::PathBuf::from(base),
                None => std::path::PathBuf::from(format!("{}.sha256", path.to_str()?)),
            };
            files
                .iter()
                .filter(|(p, _)| p == path || *p == partner)
                .filter_map(|(_, m)| m.modified().ok())
                .max()
        };
        for (path, meta) in &files {
            let age = newest(path)
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < max_age {
                continue;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {
                    swept.files += 1;
                    swept.bytes += meta.len();
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove abandoned partial")
                }
            }
        }
    }
    Ok(swept)
}

/// Sweep `files`' uploads directory now and periodically, forever.
pub async fn run(files: Arc<Files>, max_age: Duration) {
    let every = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        let root = files.uploads.root().to_owned();
        let result =
            tokio::task::spawn_blocking(move || sweep_partials(&root, max_age, SystemTime::now()))
                .await;
        match result {
            Ok(Ok(s)) if s.files > 0 => {
                tracing::info!(
                    files = s.files,
                    bytes = s.bytes,
                    "removed abandoned partial uploads"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "partial upload sweep failed"),
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_old_partials_go() {
        let root = std::env::temp_dir().join(format!("sluice-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let partials = root.join("42").join(PARTIAL_DIR);
        std::fs::create_dir_all(&partials).unwrap();
        std::fs::write(partials.join("old.bin.10.part"), [0u8; 10]).unwrap();
        std::fs::write(partials.join("new.bin.5.part"), [0u8; 5]).unwrap();
        std::fs::write(partials.join("new.bin.5.part.sha256"), b"ab").unwrap();
        std::fs::write(root.join("42").join("done.bin"), [0u8; 3]).unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let old = std::fs::File::options()
            .write(true)
            .open(partials.join("old.bin.10.part"))
            .unwrap();
        old.set_modified(SystemTime::now() - week - Duration::from_secs(60))
            .unwrap();
        drop(old);
        let sidecar = std::fs::File::options()
            .write(true)
            .open(partials.join("new.bin.5.part.sha256"))
            .unwrap();
        sidecar
            .set_modified(SystemTime::now() - week - Duration::from_secs(60))
            .unwrap();
        drop(sidecar);
        let swept = sweep_partials(&root, week, SystemTime::now()).unwrap();
        assert_eq!(
            swept,
            Swept {
                files: 1,
                bytes: 10
            }
        );
        assert!(!partials.join("old.bin.10.part").exists());
        assert!(partials.join("new.bin.5.part").exists());
        assert!(
            partials.join("new.bin.5.part.sha256").exists(),
            "a live partial's old sidecar stays"
        );
        assert!(
            root.join("42").join("done.bin").exists(),
            "finished uploads stay"
        );
        assert_eq!(
            sweep_partials(&root.join("missing"), week, SystemTime::now()).unwrap(),
            Swept::default()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
