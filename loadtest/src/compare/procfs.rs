//! Reading a server's CPU time and memory from `/proc`, and whether a port
//! is listening, without touching the server.
//!
//! # Contract
//! * [`parse_stat`] reads one `/proc/<pid>/stat` line; `comm` may contain
//!   spaces and parentheses (it runs to the *last* `)`).
//! * [`tree`] is a process and all its descendants alive at the time of the
//!   call (found through `ppid`), so a server's CPU is the sum over its tree
//!   (nginx: master + workers). [`ProcStat::cpu_ticks`] counts the reaped
//!   children's times too (`cutime`/`cstime`), so a child that exits between
//!   two samples is not lost.
//! * CPU times are in clock ticks; [`clock_ticks_per_second`] is
//!   `getconf CLK_TCK` (the workspace forbids `unsafe`, so no `sysconf`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// Why a `/proc` file could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (the process is gone, most often).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The contents did not have the expected shape.
    #[error("unexpected contents of {what}: {detail}")]
    Parse {
        /// The file or field.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// The fields of `/proc/<pid>/stat` this tool uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: u32,
    /// Executable name (up to 15 bytes; may hold spaces and parentheses).
    pub comm: String,
    /// State letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// Parent's pid.
    pub ppid: u32,
    /// User time, ticks.
    pub utime: u64,
    /// System time, ticks.
    pub stime: u64,
    /// Reaped children's user time, ticks.
    pub cutime: u64,
    /// Reaped children's system time, ticks.
    pub cstime: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// Own and reaped children's CPU time, ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime + self.stime + self.cutime + self.cstime
    }
}

fn field<T: std::str::FromStr>(fields: &[&str], i: usize, name: &str) -> Result<T, ProcError> {
    fields
        .get(i)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| ProcError::Parse {
            what: "stat",
            detail: format!("field {name} (#{}) missing or not a number", i + 3),
        })
}

/// Parse one `/proc/<pid>/stat` line.
pub fn parse_stat(line: &str) -> Result<ProcStat, ProcError> {
    let bad = |detail: &str| ProcError::Parse {
        what: "stat",
        detail: detail.to_owned(),
    };
    let open = line.find('(').ok_or_else(|| bad("no `(`"))?;
    let close = line.rfind(')').ok_or_else(|| bad("no `)`"))?;
    if close < open {
        return Err(bad("`)` before `(`"));
    }
    let pid = line[..open]
        .trim()
        .parse()
        .map_err(|_| bad("pid is not a number"))?;
    let comm = line[open + 1..close].to_owned();
    // Field 3 (state) onwards; index 0 here is field 3 of proc(5).
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let state = rest
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| bad("no state"))?;
    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid: field(&rest, 1, "ppid")?,
        utime: field(&rest, 11, "utime")?,
        stime: field(&rest, 12, "stime")?,
        cutime: field(&rest, 13, "cutime")?,
        cstime: field(&rest, 14, "cstime")?,
        rss_pages: field(&rest, 21, "rss")?,
    })
}

fn read(path: &Path) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// `/proc/<pid>/stat` of one process.
pub fn stat(pid: u32) -> Result<ProcStat, ProcError> {
    parse_stat(&read(Path::new(&format!("/proc/{pid}/stat")))?)
}

/// Every process readable under `/proc` (those that vanish meanwhile are skipped).
fn all() -> Result<Vec<ProcStat>, ProcError> {
    let dir = std::fs::read_dir("/proc").map_err(|source| ProcError::Read {
        path: "/proc".into(),
        source,
    })?;
    Ok(dir
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| parse_stat(&s).ok())
        })
        .collect())
}

/// `root` and its descendants among `procs` (root first).
pub fn descendants(root: u32, procs: &[ProcStat]) -> Vec<&ProcStat> {
    let mut children: HashMap<u32, Vec<&ProcStat>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out: Vec<&ProcStat> = procs.iter().filter(|p| p.pid == root).collect();
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i].pid) {
            out.extend(kids.iter().copied().filter(|k| k.pid != root));
        }
        i += 1;
    }
    out
}

/// `root` and its live descendants. Errors if `root` itself is gone.
pub fn tree(root: u32) -> Result<Vec<ProcStat>, ProcError> {
    let procs = all()?;
    let found: Vec<ProcStat> = descendants(root, &procs).into_iter().cloned().collect();
    if found.is_empty() {
        // Report why (most often: the process exited).
        stat(root)?;
    }
    Ok(found)
}

/// CPU ticks of `root`'s tree (see the module docs).
pub fn cpu_ticks_tree(root: u32) -> Result<u64, ProcError> {
    Ok(tree(root)?.iter().map(ProcStat::cpu_ticks).sum())
}

/// `VmRSS` in KiB from a `/proc/<pid>/status` text (0 for a kernel thread or zombie).
pub fn parse_vm_rss_kib(status: &str) -> Result<u64, ProcError> {
    match crate::system::status_kib(status, "VmRSS") {
        None => Ok(0),
        Some(Ok(kib)) => Ok(kib),
        Some(Err(v)) => Err(ProcError::Parse {
            what: "status",
            detail: format!("VmRSS `{v}`"),
        }),
    }
}

/// Resident memory of `root`'s tree, KiB (shared pages counted once per process).
pub fn rss_kib_tree(root: u32) -> Result<u64, ProcError> {
    let mut total = 0;
    for p in tree(root)? {
        match read(Path::new(&format!("/proc/{}/status", p.pid))) {
            Ok(s) => total += parse_vm_rss_kib(&s)?,
            // A child that exited meanwhile holds no memory.
            Err(_) if p.pid != root => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Whether a `/proc/net/tcp{,6}` text has a socket listening on `port`.
pub fn parse_listening(net_tcp: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    net_tcp.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = f.get(1).and_then(|a| a.rsplit(':').next());
        local_port == Some(want.as_str()) && f.get(3) == Some(&"0A")
    })
}

/// Whether anything listens on TCP `port` (IPv4 or IPv6), per `/proc/net`.
pub fn listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|p| {
        std::fs::read_to_string(p)
            .map(|s| parse_listening(&s, port))
            .unwrap_or(false)
    })
}

/// Clock ticks per second from `getconf CLK_TCK`; 100 (Linux's value on
/// every common architecture) if getconf is missing or says something odd,
/// with the reason.
pub fn clock_ticks_per_second() -> (u64, Option<String>) {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    match out {
        Ok(o) if o.status.success() => match String::from_utf8_lossy(&o.stdout).trim().parse() {
            Ok(n) if n > 0 => (n, None),
            _ => (
                100,
                Some("getconf CLK_TCK printed no number; assuming 100".into()),
            ),
        },
        _ => (100, Some("getconf CLK_TCK failed; assuming 100".into())),
    }
}

/// The soft and hard open-file limits of this process.
pub fn open_files_limit() -> Option<(u64, u64)> {
    rlimit::getrlimit(rlimit::Resource::NOFILE).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line (`cat /proc/self/stat`), comm changed to one with spaces
    /// and parentheses, as a process may name itself.
    const STAT: &str = "6228 (we(ird) na) me) S 6172 6172 1908 0 -1 4194304 99 0 0 0 \
        17 5 3 2 20 0 1 0 2347970 3133440 396 18446744073709551615 94405010448384 \
        94405010468265 140732481576688 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_line_with_odd_comm() {
        let s = parse_stat(STAT).expect("parses");
        assert_eq!(s.pid, 6228);
        assert_eq!(s.comm, "we(ird) na) me");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 6172);
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (17, 5, 3, 2));
        assert_eq!(s.cpu_ticks(), 27);
        assert_eq!(s.rss_pages, 396);
        assert!(parse_stat("12 (x) S 1 2").is_err());
        assert!(parse_stat("no parens").is_err());
    }

    #[test]
    fn own_stat_and_tree() {
        let me = std::process::id();
        let s = stat(me).expect("own stat");
        assert_eq!(s.pid, me);
        let t = tree(me).expect("own tree");
        assert_eq!(t[0].pid, me);
        assert!(rss_kib_tree(me).expect("rss") > 0);
    }

    #[test]
    fn descendants_follow_ppid() {
        let p = |pid, ppid| ProcStat {
            pid,
            comm: "x".into(),
            state: 'S',
            ppid,
            utime: 1,
            stime: 1,
            cutime: 0,
            cstime: 0,
            rss_pages: 0,
        };
        let procs = [p(1, 0), p(10, 1), p(11, 10), p(12, 10), p(13, 11), p(20, 1)];
        let pids: Vec<u32> = descendants(10, &procs).iter().map(|p| p.pid).collect();
        assert_eq!(pids, [10, 11, 12, 13]);
        assert!(descendants(99, &procs).is_empty());
    }

    #[test]
    fn status_and_limits_and_listen() {
        let status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss_kib(status).expect("parses"), 5120);
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n").expect("none"), 0);
        let (soft, hard) = open_files_limit().expect("getrlimit works on Linux");
        assert!(soft > 0 && soft <= hard);
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                   0: 0100007F:125F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 815595 1\n   \
                   1: 0100007F:1260 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 815596 1\n";
        assert!(parse_listening(tcp, 4703));
        assert!(!parse_listening(tcp, 4704), "established, not listening");
        assert!(!parse_listening(tcp, 80));
    }
}
