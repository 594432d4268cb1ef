//! What the generator reads from, and sets on, the operating system: a
//! process's memory figures (`/proc/PID/status`, Linux) and its own limit
//! on open files.
//!
//! # Contract
//! * [`memory`] reads `VmRSS`, `RssAnon` and `VmHWM` (kB in the file) and
//!   returns bytes; a missing or unreadable file, or a missing field, is a
//!   [`SystemError`], never a panic or a zero.
//! * [`ensure_fds`] raises the soft `RLIMIT_NOFILE` to the hard limit once
//!   per call and fails if the run needs more descriptors than that.

use serde::Serialize;

/// A process's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Resident set size (`VmRSS`).
    pub vm_rss_bytes: u64,
    /// Resident anonymous memory (`RssAnon`): the heap, stacks, buffers.
    pub rss_anon_bytes: u64,
    /// Peak resident set size (`VmHWM`).
    pub vm_hwm_bytes: u64,
}

/// Why a system figure could not be read or a limit not set.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// `/proc/PID/status` could not be read (no such process, not Linux).
    #[error("cannot read /proc/{pid}/status: {source}")]
    Status {
        /// The process.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// A field is missing or not a number of kB.
    #[error("/proc/PID/status has no usable {0} line")]
    Field(&'static str),
    /// The open-files limit could not be read or raised.
    #[error("cannot raise the open-files limit: {0}")]
    Limit(std::io::Error),
    /// The run needs more open files than the hard limit allows.
    #[error(
        "{needed} connections need about {} open files but the limit is {limit}; \
         raise the hard limit (ulimit -Hn, or LimitNOFILE=)",
        needed + FD_MARGIN
    )]
    TooManyFiles {
        /// Connections the run opens.
        needed: u64,
        /// The soft limit after raising it as far as allowed.
        limit: u64,
    },
}

/// Descriptors a run needs beyond one per connection (stdio, the runtime's
/// epoll and wakers, the resolver).
pub const FD_MARGIN: u64 = 16;

/// Read the memory figures of process `pid`.
pub fn memory(pid: u32) -> Result<Memory, SystemError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| SystemError::Status { pid, source })?;
    parse_status(&text)
}

/// Parse the text of a `/proc/PID/status` file.
pub fn parse_status(text: &str) -> Result<Memory, SystemError> {
    let field = |name: &'static str| -> Result<u64, SystemError> {
        status_kib(text, name)
            .and_then(Result::ok)
            .and_then(|kb| kb.checked_mul(1024))
            .ok_or(SystemError::Field(name))
    };
    Ok(Memory {
        vm_rss_bytes: field("VmRSS")?,
        rss_anon_bytes: field("RssAnon")?,
        vm_hwm_bytes: field("VmHWM")?,
    })
}

/// The `name:` field of a `/proc/PID/status` text in KiB: `None` if the
/// line is absent, `Some(Err(value))` if it is there but not `N kB`.
pub fn status_kib<'a>(text: &'a str, name: &str) -> Option<Result<u64, &'a str>> {
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
        .trim();
    Some(
        value
            .strip_suffix("kB")
            .and_then(|kb| kb.trim().parse().ok())
            .ok_or(value),
    )
}

/// Raise this process's soft open-files limit to the hard limit, and check
/// that `connections` (+ [`FD_MARGIN`]) fit. Returns the limit now in force.
pub fn ensure_fds(connections: u64) -> Result<u64, SystemError> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).map_err(SystemError::Limit)?;
    if connections.saturating_add(FD_MARGIN) > limit {
        return Err(SystemError::TooManyFiles {
            needed: connections,
            limit,
        });
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsluice\nVmPeak:\t  900000 kB\nVmHWM:\t   81234 kB\n\
        VmRSS:\t   80000 kB\nRssAnon:\t   70000 kB\nRssFile:\t   10000 kB\n";

    #[test]
    fn status_fields_in_bytes() {
        let m = parse_status(STATUS).expect("parses");
        assert_eq!(
            m,
            Memory {
                vm_rss_bytes: 80_000 * 1024,
                rss_anon_bytes: 70_000 * 1024,
                vm_hwm_bytes: 81_234 * 1024,
            }
        );
        assert!(matches!(
            parse_status("VmRSS:\t1 kB\nVmHWM:\t1 kB\n"),
            Err(SystemError::Field("RssAnon"))
        ));
        assert!(matches!(
            parse_status("VmRSS:\tlots kB\nRssAnon:\t1 kB\nVmHWM:\t1 kB\n"),
            Err(SystemError::Field("VmRSS"))
        ));
    }

    #[test]
    fn own_status_and_limits() {
        let m = memory(std::process::id()).expect("/proc/self is readable on Linux");
        assert!(
            m.vm_rss_bytes > 0 && m.vm_hwm_bytes >= m.vm_rss_bytes,
            "{m:?}"
        );
        assert!(matches!(memory(u32::MAX), Err(SystemError::Status { .. })));
        let limit = ensure_fds(10).expect("10 connections fit");
        assert!(limit >= 10 + FD_MARGIN);
        assert!(matches!(
            ensure_fds(u64::MAX),
            Err(SystemError::TooManyFiles { .. })
        ));
    }
}
