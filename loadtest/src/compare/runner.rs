//! The run: check what is installed, prepare the scratch directory and the
//! file, then for each case, for each round, each server in turn — start
//! it, measure once, stop it — and render the report.
//!
//! # Contract
//! * Servers are started fresh for every single measurement (no state,
//!   memory or warm caches carried from one run to the next; the file
//!   cases do one untimed download first).
//! * A server whose program is missing gives `not installed` samples and
//!   the run goes on, unless `--require-all`, which refuses to start.
//! * A failed measurement is recorded with its reason and the run goes on;
//!   Ctrl-C ends the run with [`CompareError::Interrupted`] after every
//!   process it started is stopped.
//! * Progress goes to stderr, one line per measurement.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::interrupt;
use super::machine::{self, Meta};
use super::measure::{self, Knobs, Sample, Status, Timing};
use super::options::{Options, OptionsError};
use super::plan::{self, Case, Kind, ServerKind};
use super::procfs;
use super::servers::{Bins, Env, Workdir, FILE_NAME};
use super::table;

/// Why a comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// Bad options.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// Something required is missing.
    #[error("missing: {0}")]
    Missing(String),
    /// The scratch directory, the file or an output could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CompareError {
    let what = what.into();
    move |source| CompareError::Io { what, source }
}

/// Everything a run produced.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// Date, machine, versions, command.
    pub meta: Meta,
    /// The cases, in run order.
    pub cases: Vec<Case>,
    /// Every measurement (and every `not installed` cell).
    pub samples: Vec<Sample>,
    /// The report.
    #[serde(skip)]
    pub markdown: String,
}

impl Outcome {
    /// Problems that make `--require-all` fail, one line each.
    pub fn troubles(&self) -> Vec<String> {
        self.samples
            .iter()
            .filter_map(|s| {
                let what = format!("{} · {} · round {}", s.case, s.server, s.round);
                match &s.status {
                    Status::Ok if s.errors > 0 || s.timeouts > 0 => Some(format!(
                        "{what}: {} errors, {} timeouts ({})",
                        s.errors,
                        s.timeouts,
                        s.first_error.as_deref().unwrap_or("-")
                    )),
                    Status::Ok => None,
                    Status::Failed(w) => Some(format!("{what}: failed: {w}")),
                    Status::NotInstalled(w) => Some(format!("{what}: not installed: {w}")),
                }
            })
            .collect()
    }
}

/// The workspace root: `--root`, else the current directory if it holds
/// `loadtest/`, else three levels above this executable.
pub fn find_root(given: Option<&Path>) -> Result<PathBuf, CompareError> {
    if let Some(r) = given {
        return Ok(r.to_owned());
    }
    let looks_right = |p: &Path| p.join("loadtest/Cargo.toml").is_file();
    if let Ok(cwd) = std::env::current_dir() {
        if looks_right(&cwd) {
            return Ok(cwd);
        }
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_owned))
        .filter(|p| looks_right(p))
        .ok_or_else(|| {
            CompareError::Missing("the workspace root (run from it, or pass --root)".into())
        })
}

fn random_hex(bytes: usize) -> Result<String, CompareError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io("reading /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// One progress line for a finished measurement.
pub fn progress_line(s: &Sample) -> String {
    let m = &s.metrics;
    let mut parts = Vec::new();
    if let Some(r) = m.rate {
        parts.push(format!("{} /s", plan::grouped(r.round() as u64)));
    }
    if let Some(p) = m.p99_us {
        parts.push(format!("p99 {} µs", plan::grouped(p as u64)));
    }
    if let Some(c) = m.cpu_us_per_unit {
        parts.push(format!("CPU {c:.2} µs/msg"));
    }
    if let Some(k) = m.rss_kib_per_socket {
        parts.push(format!("{k:.2} KiB/socket"));
    }
    if let Some(g) = m.gb_per_s {
        parts.push(format!("{g:.2} GB/s"));
    }
    if let Some(c) = m.cpu_s_per_gb {
        parts.push(format!("{c:.3} CPU-s/GB"));
    }
    if s.errors > 0 || s.timeouts > 0 {
        parts.push(format!(
            "{} errors, {} timeouts ({})",
            s.errors,
            s.timeouts,
            s.first_error.as_deref().unwrap_or("-")
        ));
    }
    match &s.status {
        Status::Ok => parts.join(", "),
        Status::Failed(w) => format!("FAILED: {w}"),
        Status::NotInstalled(w) => format!("not installed: {w}"),
    }
}

/// Run the comparison described by `opts`.
pub fn run(opts: &Options) -> Result<Outcome, CompareError> {
    opts.validate()?;
    let root = find_root(opts.root.as_deref())?;
    let bins = Bins::locate(&root);
    if bins.taskset.is_none() {
        return Err(CompareError::Missing("taskset (util-linux)".into()));
    }
    if machine::cpu_count() < 2 {
        return Err(CompareError::Missing(
            "a second CPU (servers on one core, generators on another)".into(),
        ));
    }
    let sel = opts.selection();
    let cases = plan::plan(&sel);
    if cases.is_empty() {
        return Err(CompareError::Options(OptionsError(
            "nothing selected".into(),
        )));
    }

    // What is installed.
    let mut missing: BTreeMap<ServerKind, String> = BTreeMap::new();
    for case in &cases {
        for &s in &case.servers {
            if let Err(why) = bins.check(s) {
                missing.insert(s, why);
            }
        }
    }
    let needs_load = cases.iter().any(|c| {
        c.servers
            .iter()
            .any(|s| !matches!(s, ServerKind::Nginx | ServerKind::Iperf3))
    });
    if needs_load && !bins.load.is_file() {
        return Err(CompareError::Missing(format!(
            "{} (cargo build --release -p sluice-load)",
            bins.load.display()
        )));
    }
    if opts.require_all && !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        return Err(CompareError::Missing(list.join("; ")));
    }

    // Scratch space, logs, the file.
    let logs = root.join("target/compare/logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
    let work = Workdir::create().map_err(io("creating the scratch directory"))?;
    let mut notes = Vec::new();
    let (ticks, tick_note) = procfs::clock_ticks_per_second();
    notes.extend(tick_note);
    let raise_nofile = match procfs::open_files_limit() {
        Some((soft, hard)) => {
            let want = sel.connect_sockets as u64 + 512;
            if cases.iter().any(|c| matches!(c.kind, Kind::Connect { .. })) && hard < want {
                notes.push(format!(
                    "the hard open-file limit ({hard}) is below {want}: the idle-sockets case cannot reach {} sockets",
                    sel.connect_sockets
                ));
            }
            (soft < hard).then_some(hard)
        }
        None => None,
    };
    let env = Env {
        bins,
        work,
        logs,
        secret: random_hex(48)?,
        base_port: opts.base_port,
        server_core: opts.server_core.clone(),
        load_core: opts.load_core.clone(),
        raise_nofile,
    };
    let downloads = cases.iter().any(|c| {
        matches!(c.kind, Kind::Download { .. })
            && c.servers
                .iter()
                .any(|s| matches!(s, ServerKind::Sluice | ServerKind::Nginx))
    });
    if downloads {
        eprintln!(
            "sluice-compare: writing a {} MiB file of random bytes",
            sel.file_bytes >> 20
        );
        write_file(&env, sel.file_bytes)?;
    }

    let mut meta = machine::collect(&env.bins);
    meta.rounds = opts.rounds();
    meta.duration_s = opts.duration().as_secs_f64();
    meta.warmup_s = opts.warmup().as_secs_f64();
    meta.server_core = opts.server_core.clone();
    meta.load_core = opts.load_core.clone();
    meta.ports = std::iter::once(ServerKind::Sluice)
        .chain(ServerKind::PEERS)
        .map(|k| (k.label().to_owned(), env.port(k)))
        .collect();
    meta.notes = notes;

    let knobs = Knobs {
        timing: Timing {
            duration: opts.duration(),
            warmup: opts.warmup(),
        },
        ticks_per_s: ticks,
        source_addrs: &opts.source_addrs,
    };
    let total: usize = cases.iter().map(|c| c.servers.len()).sum::<usize>() * meta.rounds as usize;
    let mut samples = Vec::new();
    for case in &cases {
        for round in 1..=meta.rounds {
            for &server in &case.servers {
                if interrupt::interrupted() {
                    return Err(CompareError::Interrupted);
                }
                let sample = match missing.get(&server) {
                    Some(why) => {
                        Sample::empty(&case.id, server, round, Status::NotInstalled(why.clone()))
                    }
                    None => measure::measure(&env, &case.id, &case.kind, server, round, knobs),
                };
                if interrupt::interrupted() {
                    return Err(CompareError::Interrupted);
                }
                eprintln!(
                    "[{}/{total}] {} · round {round}/{} · {server}: {}",
                    samples.len() + 1,
                    case.id,
                    meta.rounds,
                    progress_line(&sample)
                );
                samples.push(sample);
            }
        }
    }
    meta.load_after = machine::load_average();
    let markdown = table::render(&meta, &cases, &samples);
    Ok(Outcome {
        meta,
        cases,
        samples,
        markdown,
    })
}

fn write_file(env: &Env, bytes: u64) -> Result<(), CompareError> {
    let path = env.work.files().join(FILE_NAME);
    super::servers::write_random_file(&path, bytes)
        .map_err(io(format!("writing {}", path.display())))
}

/// Write `outcome` as JSON to `path` (directories created).
pub fn write_json(outcome: &Outcome, path: &Path) -> Result<(), CompareError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let text = serde_json::to_string_pretty(outcome).map_err(|e| CompareError::Io {
        what: "encoding the results".into(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(path, text + "\n").map_err(io(format!("writing {}", path.display())))
}

/// Splice the report into the markdown file at `path`.
pub fn write_docs(outcome: &Outcome, path: &Path) -> Result<(), CompareError> {
    let doc = std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    let new = super::docs::splice(&doc, &outcome.markdown).map_err(|e| CompareError::Io {
        what: format!("splicing {}", path.display()),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(path, new).map_err(io(format!("writing {}", path.display())))
}
