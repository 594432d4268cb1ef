//! Where and with what a comparison ran: date, machine, versions of every
//! program, the command line, and the method, rendered above the tables.
//!
//! # Contract
//! * [`collect`] only reads (`/proc`, `--version` outputs, git); anything it
//!   cannot find is written as `not installed` / `unknown`, never an error.
//! * [`Meta::render`] is a pure function of the struct.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::servers::Bins;

/// The facts printed above the tables (and stored in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// Start of the run, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// Logical CPUs of the machine.
    pub cpus: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// MemTotal, GiB.
    pub memory_gib: f64,
    /// Program → version, in display order.
    pub versions: Vec<(String, String)>,
    /// The command line as run (with the CPU pinning it ran under).
    pub command: String,
    /// Rounds.
    pub rounds: u32,
    /// Measured seconds per run.
    pub duration_s: f64,
    /// Warm-up seconds per run.
    pub warmup_s: f64,
    /// Core of the servers.
    pub server_core: String,
    /// Core of the generators.
    pub load_core: String,
    /// Ports by server.
    pub ports: Vec<(String, u16)>,
    /// Load average (1, 5, 15 min) before the run.
    pub load_before: String,
    /// Load average after the run.
    pub load_after: String,
    /// Anything worth knowing about this run (assumptions, warnings).
    pub notes: Vec<String>,
}

/// `(year, month, day, hour, minute)` of a Unix time (UTC).
pub fn civil(unix_secs: u64) -> (i64, u32, u32, u32, u32) {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, (rem / 3600) as u32, ((rem % 3600) / 60) as u32)
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, mi) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC")
}

/// The first line `program args` prints (stdout, else stderr).
fn first_line(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let s = String::from_utf8_lossy(&text);
    s.lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// /proc/cpuinfo's processor count and first model name.
pub fn parse_cpuinfo(text: &str) -> (usize, String) {
    let cpus = text
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count();
    let model = text
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    (cpus, model)
}

/// MemTotal of a /proc/meminfo text, GiB.
pub fn parse_mem_total_gib(text: &str) -> Option<f64> {
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// This process's `Cpus_allowed_list` (e.g. `1` under `taskset -c 1`).
pub fn cpus_allowed() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn versions(bins: &Bins) -> Vec<(String, String)> {
    let missing = || "not installed".to_owned();
    let root = bins.root.as_path();
    let git = |args: &[&str]| {
        let mut a = vec!["-C", root.to_str().unwrap_or(".")];
        a.extend_from_slice(args);
        first_line(Path::new("git"), &a)
    };
    let sluice = match (
        git(&["describe", "--always", "--dirty"]),
        git(&["rev-parse", "HEAD"]),
    ) {
        (Some(d), Some(c)) => format!("{d} (commit {c})"),
        (Some(d), None) => d,
        _ => "unknown (not a git checkout)".into(),
    };
    let ws = std::fs::read_to_string(root.join("loadtest/peers/node_modules/ws/package.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("version").and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_else(missing);
    let opt = |p: &Option<std::path::PathBuf>, args: &[&str]| {
        p.as_deref()
            .and_then(|p| first_line(p, args))
            .unwrap_or_else(missing)
    };
    // Each tool's own name is dropped from its version line.
    let strip = |line: String, prefix: &str| match line.strip_prefix(prefix) {
        Some(v) => v.to_owned(),
        None => line,
    };
    let nginx = strip(opt(&bins.nginx, &["-v"]), "nginx version: nginx/");
    let iperf3 = strip(opt(&bins.iperf3, &["--version"]), "iperf ");
    let curl = opt(&bins.curl, &["--version"]);
    let curl = match curl.strip_prefix("curl ") {
        Some(v) => v.split_whitespace().next().unwrap_or(v).to_owned(),
        None => curl,
    };
    let rustc = first_line(Path::new("rustc"), &["-V"]).unwrap_or_else(missing);
    vec![
        ("sluice".into(), sluice),
        ("rustc".into(), strip(rustc, "rustc ")),
        (
            "bun".into(),
            first_line(&bins.bun, &["--version"]).unwrap_or_else(missing),
        ),
        ("node".into(), opt(&bins.node, &["--version"])),
        ("ws".into(), ws),
        ("nginx".into(), nginx),
        ("iperf3".into(), iperf3),
        ("curl".into(), curl),
    ]
}

/// The command line this process was started with, pinning included.
pub fn command_line(root: &Path) -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        if let Ok(rel) = Path::new(first.as_str()).strip_prefix(root) {
            *first = rel.display().to_string();
        }
    }
    let mut cmd = super::measure::shell_words(&args);
    if let (Some(allowed), Ok(n)) = (cpus_allowed(), std::thread::available_parallelism()) {
        if n.get() < cpu_count() {
            cmd = format!("taskset -c {allowed} {cmd}");
        }
    }
    cmd
}

/// CPUs listed in /proc/cpuinfo (0 if it cannot be read).
pub fn cpu_count() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| parse_cpuinfo(&s).0)
        .unwrap_or(0)
}

/// Gather the machine and versions (the per-run fields are filled by the caller).
pub fn collect(bins: &Bins) -> Meta {
    let (cpus, cpu_model) = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| parse_cpuinfo(&s))
        .unwrap_or((0, "unknown".into()));
    Meta {
        date: now_utc(),
        cpus,
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
        memory_gib: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_mem_total_gib(&s))
            .unwrap_or(0.0),
        versions: versions(bins),
        command: command_line(&bins.root),
        rounds: 0,
        duration_s: 0.0,
        warmup_s: 0.0,
        server_core: String::new(),
        load_core: String::new(),
        ports: Vec::new(),
        load_before: load_average(),
        load_after: String::new(),
        notes: Vec::new(),
    }
}

impl Meta {
    /// Fixed values for rendering tests.
    #[cfg(test)]
    pub fn fixed_for_tests() -> Meta {
        Meta {
            date: "2026-11-26 04:00 UTC".into(),
            cpus: 2,
            cpu_model: "AMD EPYC".into(),
            kernel: "6.18.44".into(),
            memory_gib: 23.44,
            versions: vec![
                ("sluice".into(), "abc1234".into()),
                ("bun".into(), "1.4.5".into()),
            ],
            command: "taskset -c 1 target/release/sluice-compare --quick".into(),
            rounds: 1,
            duration_s: 1.0,
            warmup_s: 0.5,
            server_core: "0".into(),
            load_core: "1".into(),
            ports: vec![("sluice".into(), 4760)],
            load_before: "0.10 0.20 0.30".into(),
            load_after: "1.00 0.50 0.40".into(),
            notes: vec![],
        }
    }

    /// The header: when, where, with what, how.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run {} with `{}`: {} round{}, each run {} s measured after {} s of warm-up.\n",
            self.date,
            self.command,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" },
            self.duration_s,
            self.warmup_s,
        );
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {:.1} GiB, Linux {}; load average {} before, {} after \
             (anything else running on these cores skews the figures).\n",
            self.cpus,
            self.cpu_model,
            self.memory_gib,
            self.kernel,
            self.load_before,
            self.load_after
        );
        let v: Vec<String> = self
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "Versions: {}.\n", v.join(" · "));
        let ports: Vec<String> = self.ports.iter().map(|(k, p)| format!("{k} {p}")).collect();
        let _ = writeln!(
            out,
            "Method:\n\n\
             * Every run starts its server fresh, pinned with `taskset -c {s}` (127.0.0.1, ports \
             {ports}), waits until it answers, runs one generator pinned with `taskset -c {l}`, \
             then stops the server (SIGTERM). Each round runs Sluice then every peer in turn \
             (A B C A B C …).\n\
             * Cells are medians over rounds (min–max where shown). **sluice ÷** is Sluice's \
             figure over the peer's *from the same round*: the median of the per-round ratios.\n\
             * Sluice is driven in Phoenix mode (token, channel join, Phoenix framing around the \
             binary payloads); the peers speak the raw protocol of loadtest/peers \
             (`sluice-load --protocol raw`: `/echo`, `/sub` + `/pub`).\n\
             * Server CPU: utime+stime of the server's process tree (/proc) over the whole \
             generator run, setup included, divided by the messages of warm-up + measured \
             window at the measured rate.\n\
             * Idle memory: the server's VmRSS once `sluice-load connect` has set up every \
             socket (Sluice: joined to `room:idle`; peers: `/sub`) and 2 s have passed, minus \
             before the first, per socket established.\n\
             * Files: one download of the same random file after an untimed one: \
             `sluice-load download --no-verify` (the client's sha256 would be the limit) and \
             nginx (`sendfile on; tcp_nopush on; worker_processes 1`) with `curl -o /dev/null`; \
             iperf3 `-R -l 1M` (the server sends, 1 MiB writes) is the loopback reference for \
             bytes.",
            s = self.server_core,
            l = self.load_core,
            ports = ports.join(", "),
        );
        for n in &self.notes {
            let _ = writeln!(out, "\nNote: {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0));
        // 2026-11-26T03:57:13Z, iperf3's own timestamp of the sample.
        assert_eq!(civil(1_795_665_433), (2026, 11, 26, 3, 57));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0));
    }

    #[test]
    fn cpuinfo_and_meminfo() {
        let cpu = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: x\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(parse_cpuinfo(cpu), (2, "AMD EPYC".into()));
        let mem = "MemTotal:       24576000 kB\nMemFree:  1 kB\n";
        let gib = parse_mem_total_gib(mem).expect("total");
        assert!((gib - 23.4375).abs() < 1e-9);
    }

    #[test]
    fn header_names_everything() {
        let m = Meta::fixed_for_tests();
        let h = m.render();
        assert!(
            h.contains("`taskset -c 1 target/release/sluice-compare --quick`"),
            "{h}"
        );
        assert!(
            h.contains("2 CPUs (AMD EPYC), 23.4 GiB, Linux 6.18.44"),
            "{h}"
        );
        assert!(h.contains("sluice abc1234 · bun 1.4.5"), "{h}");
        assert!(h.contains("1 round,"), "{h}");
    }
}
