//! `sluice-compare`: Sluice side by side with its peers — raw fastwebsockets
//! (the floor), Bun (uWebSockets), Node `ws`, nginx and iperf3 — on the same
//! machine, in the same run, interleaved, and the report spliced into
//! docs/BENCHMARKS.md.
//!
//! # What one run does
//! For each case (echo at three sizes, broadcast to 100 / 1 000 / 5 000
//! subscribers flat out and to 10 000 at 10/s, 18 000 idle sockets, one
//! 1 GiB download), for each of `--rounds` rounds, for each server in turn
//! (Sluice, then the peers: A B C A B C …): start the server fresh pinned to
//! core 0, wait until it answers, run one generator pinned to core 1
//! (`sluice-load --json`, `curl` or `iperf3`) while reading the server's
//! CPU time from /proc before and after, stop the server. Then medians,
//! per-round ratios Sluice ÷ peer, the goals met or missed, as
//! markdown (stdout, and `--write-docs`) and every raw run as JSON
//! (`--json-out`).
//!
//! # Layout (one job each)
//! * [`options`]: the command line and the full / `--quick` defaults.
//! * [`plan`]: cases, servers per case, goals (pure).
//! * [`servers`]: locating programs, starting servers pinned, readiness,
//!   stopping process groups (a drop guard), the scratch directory.
//! * [`procfs`]: `/proc/<pid>/stat` and `status` of a process tree, listening ports.
//! * [`measure`]: generator commands, running them, parsing their output into figures.
//! * [`table`]: medians, per-round ratios, goal verdicts, markdown tables.
//! * [`machine`]: date, machine, versions, command line, method text.
//! * [`docs`]: splicing between `<!-- compare:begin -->` and `<!-- compare:end -->`.
//! * [`interrupt`]: Ctrl-C / SIGTERM as a flag, so guards stop every server.
//! * [`runner`]: the loop tying them together.

pub mod docs;
pub mod interrupt;
pub mod machine;
pub mod measure;
pub mod options;
pub mod plan;
pub mod procfs;
pub mod runner;
pub mod servers;
pub mod table;

pub use options::Options;
pub use runner::{run, CompareError, Outcome};
