//! Resolving client-supplied file names under a root directory.
//!
//! # Contract
//! * A name is a relative path of plain components: empty names, absolute
//!   paths, empty, `.` and `..` segments, segments over 255 bytes, names over
//!   1024 bytes, backslashes and NUL bytes are refused before the file
//!   system is touched.
//! * The joined path is then canonicalized (symlinks resolved) and must still
//!   lie under the canonical root: a symlink pointing outside is refused.
//! * Only regular files resolve; a directory is an error.
//! * Blocking (file-system calls): run it on the blocking pool.

use std::path::{Component, Path, PathBuf};

/// Why a name does not resolve. `reason()` is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The name has a form that is never allowed.
    #[error("invalid file name")]
    Invalid,
    /// The name resolves outside the root.
    #[error("path escapes the root")]
    Escapes,
    /// Nothing by that name.
    #[error("no such file")]
    NotFound,
    /// It exists but is not a regular file.
    #[error("not a regular file")]
    NotAFile,
}

impl PathError {
    /// A short, bounded reason for error replies and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::Invalid => "invalid_name",
            PathError::Escapes => "escapes_root",
            PathError::NotFound => "not_found",
            PathError::NotAFile => "not_a_file",
        }
    }
}

/// Longest name accepted (a relative path).
pub const MAX_NAME: usize = 1024;
/// Longest path segment accepted (the usual file-system limit).
pub const MAX_SEGMENT: usize = 255;

/// Check the form of a name without touching the file system.
pub fn check_name(name: &str) -> Result<&Path, PathError> {
    if name.is_empty() || name.contains('\0') || name.contains('\\') || name.len() > MAX_NAME {
        return Err(PathError::Invalid);
    }
    // Judge the text itself: `Path::components` would silently drop a `.`
    // or an empty segment in the middle (`a/./b`, `a//b`).
    if name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg.len() > MAX_SEGMENT)
    {
        return Err(PathError::Invalid);
    }
    let path = Path::new(name);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(PathError::Invalid);
    }
    Ok(path)
}

/// Resolve `name` under `root` (which must already be canonical).
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf, PathError> {
    let rel = check_name(name)?;
    let full = root
        .join(rel)
        .canonicalize()
        .map_err(|_| PathError::NotFound)?;
    if !full.starts_with(root) {
        return Err(PathError::Escapes);
    }
    let meta = std::fs::metadata(&full).map_err(|_| PathError::NotFound)?;
    if !meta.is_file() {
        return Err(PathError::NotAFile);
    }
    Ok(full)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_never_allowed() {
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "./a",
            "a\\b",
            "a\0b",
            "a/./b",
            "a//b",
            "a/",
            &"x".repeat(256),
        ] {
            assert_eq!(check_name(bad), Err(PathError::Invalid), "{bad:?}");
        }
        assert!(check_name("images/cat.jpg").is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn resolution_stays_under_the_root() {
        let base = std::env::temp_dir().join(format!("sluice-paths-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.bin"), b"a").unwrap();
        std::fs::write(base.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(base.join("secret"), root.join("link-out")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/a.bin"), root.join("link-in")).unwrap();
        let root = root.canonicalize().unwrap();

        assert!(resolve(&root, "sub/a.bin").unwrap().ends_with("sub/a.bin"));
        assert!(
            resolve(&root, "link-in").is_ok(),
            "a symlink inside the root is fine"
        );
        assert_eq!(resolve(&root, "link-out"), Err(PathError::Escapes));
        assert_eq!(resolve(&root, "sub"), Err(PathError::NotAFile));
        assert_eq!(resolve(&root, "nope"), Err(PathError::NotFound));
        assert_eq!(resolve(&root, "../secret"), Err(PathError::Invalid));
        std::fs::remove_dir_all(&base).unwrap();
    }

    proptest::proptest! {
        /// Whatever the text, an accepted name is relative, has only plain
        /// segments, and joined to a root stays under it lexically.
        #[test]
        fn accepted_names_stay_under_the_root(name in "[a-z./\\\\\\x00]{0,12}") {
            if let Ok(path) = check_name(&name) {
                let root = Path::new("/srv/files");
                let joined = root.join(path);
                let mut depth = 0i32;
                for c in path.components() {
                    match c {
                        Component::Normal(_) => depth += 1,
                        _ => proptest::prop_assert!(false, "component {:?} in {:?}", c, name),
                    }
                }
                proptest::prop_assert!(depth >= 1);
                proptest::prop_assert!(joined.starts_with(root));
                proptest::prop_assert!(!name.split('/').any(|s| s == ".." || s == "." || s.is_empty()));
            }
        }
    }
}
