//! From samples to the markdown report: medians over rounds, ratios to the
//! peer of the same round, goals met or missed, one table per group.
//!
//! # Contract
//! * [`median`] of an even count is the mean of the two middle values; of
//!   nothing, `None`. NaNs are ignored.
//! * A ratio is always Sluice ÷ peer, computed per round from the two runs
//!   of that round ([`round_ratios`]), then the median of those; rounds
//!   where either run has no figure are skipped.
//! * Nothing is hidden: a server whose runs all failed shows `failed: …`,
//!   one that is missing `not installed: …`, partial failures say how many
//!   rounds failed, and generator errors and timeouts have their column.
//! * [`render`] is deterministic in its inputs (no clock, no I/O).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::machine::Meta;
use super::measure::{Sample, Status};
use super::plan::{grouped, Case, Goal, Group, Metric, ServerKind};

/// Median of `values` (NaNs ignored).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Per-round ratios `a ÷ b` for the rounds both have (b > 0).
pub fn round_ratios(a: &BTreeMap<u32, f64>, b: &BTreeMap<u32, f64>) -> Vec<f64> {
    a.iter()
        .filter_map(|(round, x)| b.get(round).filter(|y| **y > 0.0).map(|y| x / y))
        .collect()
}

/// A figure of a sample.
pub fn metric_of(s: &Sample, m: Metric) -> Option<f64> {
    let x = &s.metrics;
    match m {
        Metric::Rate => x.rate,
        Metric::P50Us => x.p50_us,
        Metric::P99Us => x.p99_us,
        Metric::CpuUsPerUnit => x.cpu_us_per_unit,
        Metric::RssKibPerSocket => x.rss_kib_per_socket,
        Metric::GbPerS => x.gb_per_s,
        Metric::CpuSPerGb => x.cpu_s_per_gb,
    }
}

/// The samples of one case, by server.
pub struct CaseSamples<'a> {
    /// The case.
    pub case: &'a Case,
    samples: Vec<&'a Sample>,
}

impl<'a> CaseSamples<'a> {
    /// The samples of `case` among `all`.
    pub fn new(case: &'a Case, all: &'a [Sample]) -> CaseSamples<'a> {
        CaseSamples {
            case,
            samples: all.iter().filter(|s| s.case == case.id).collect(),
        }
    }

    fn of(&self, server: ServerKind) -> impl Iterator<Item = &&'a Sample> {
        self.samples.iter().filter(move |s| s.server == server)
    }

    /// `metric` of `server` by round (measured runs only).
    pub fn by_round(&self, server: ServerKind, metric: Metric) -> BTreeMap<u32, f64> {
        self.of(server)
            .filter(|s| s.ok())
            .filter_map(|s| metric_of(s, metric).map(|v| (s.round, v)))
            .collect()
    }

    /// Median of `metric` of `server`.
    pub fn median(&self, server: ServerKind, metric: Metric) -> Option<f64> {
        median(
            &self
                .by_round(server, metric)
                .into_values()
                .collect::<Vec<_>>(),
        )
    }

    /// Median per-round ratio Sluice ÷ `peer` of `metric`.
    pub fn ratio(&self, peer: ServerKind, metric: Metric) -> Option<f64> {
        median(&round_ratios(
            &self.by_round(ServerKind::Sluice, metric),
            &self.by_round(peer, metric),
        ))
    }

    /// Why `server` has no figures, if none of its runs was measured.
    pub fn unavailable(&self, server: ServerKind) -> Option<String> {
        let runs: Vec<&&Sample> = self.of(server).collect();
        if runs.is_empty() {
            return Some("not run".into());
        }
        if runs.iter().any(|s| s.ok()) {
            return None;
        }
        Some(match &runs[0].status {
            Status::NotInstalled(why) => format!("not installed: {why}"),
            Status::Failed(why) => format!("failed: {}", one_line(why)),
            Status::Ok => String::new(),
        })
    }

    /// Errors, timeouts and failed runs of `server`, for its row.
    pub fn errors(&self, server: ServerKind) -> String {
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let (mut errors, mut timeouts, mut failed, mut runs) = (0, 0, 0, 0);
        for s in self.of(server) {
            runs += 1;
            errors += s.errors;
            timeouts += s.timeouts;
            for (k, v) in &s.error_kinds {
                *kinds.entry(k.clone()).or_default() += v;
            }
            if matches!(s.status, Status::Failed(_)) {
                failed += 1;
            }
        }
        let mut out = errors.to_string();
        if !kinds.is_empty() {
            let list: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = write!(out, " ({})", list.join(", "));
        }
        if timeouts > 0 {
            let _ = write!(out, "; {} timeouts", grouped(timeouts));
        }
        if failed > 0 && failed < runs {
            let first = self
                .of(server)
                .find_map(|s| match &s.status {
                    Status::Failed(w) => Some(one_line(w)),
                    _ => None,
                })
                .unwrap_or_default();
            let _ = write!(out, "; {failed} of {runs} runs failed: {first}");
        }
        out
    }

    /// Whether any run of any server failed or counted errors or timeouts.
    pub fn any_trouble(&self) -> bool {
        self.samples
            .iter()
            .any(|s| !s.ok() || s.errors > 0 || s.timeouts > 0)
    }
}

fn one_line(s: &str) -> String {
    let first = s.lines().next().unwrap_or("");
    let mut out: String = first.chars().take(160).collect();
    if out.len() < first.len() || s.lines().count() > 1 {
        out.push('…');
    }
    out.replace('|', "\\|")
}

/// A goal's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Met, with the figure it was judged on.
    Met(f64),
    /// Missed, with the figure.
    Missed(f64),
    /// No figure to judge.
    Unknown,
}

/// Judge `goal` on the samples of its case.
pub fn judge(goal: &Goal, cs: &CaseSamples<'_>) -> Verdict {
    let (value, ok) = match *goal {
        Goal::AtLeastTimes { peer, metric, min } => match cs.ratio(peer, metric) {
            Some(r) => (r, r >= min),
            None => return Verdict::Unknown,
        },
        Goal::AtMost { metric, max } => match cs.median(ServerKind::Sluice, metric) {
            Some(v) => (v, v <= max),
            None => return Verdict::Unknown,
        },
        Goal::Below { metric, limit } => match cs.median(ServerKind::Sluice, metric) {
            Some(v) => (v, v < limit),
            None => return Verdict::Unknown,
        },
    };
    if ok {
        Verdict::Met(value)
    } else {
        Verdict::Missed(value)
    }
}

fn goal_text(goal: &Goal, case: &Case) -> String {
    match *goal {
        Goal::AtLeastTimes { peer, min, .. } => format!("≥ {min}× {peer}"),
        Goal::AtMost {
            metric: Metric::RssKibPerSocket,
            max,
        } => {
            let at = match case.kind {
                super::plan::Kind::Connect { sockets } => {
                    format!(" at {}", grouped(sockets as u64))
                }
                _ => String::new(),
            };
            format!("≤ {max} KiB/socket{at}")
        }
        Goal::AtMost { metric, max } => format!("≤ {max} {}", unit(metric)),
        Goal::Below {
            metric: Metric::P99Us,
            limit,
        } => format!("p99 < {} ms", limit / 1000.0),
        Goal::Below { metric, limit } => format!("< {limit} {}", unit(metric)),
    }
}

fn unit(m: Metric) -> &'static str {
    match m {
        Metric::Rate => "/s",
        Metric::P50Us | Metric::P99Us => "µs",
        Metric::CpuUsPerUnit => "µs",
        Metric::RssKibPerSocket => "KiB/socket",
        Metric::GbPerS => "GB/s",
        Metric::CpuSPerGb => "CPU-s/GB",
    }
}

/// The goal cell of `server`'s row.
pub fn goal_cell(cs: &CaseSamples<'_>, server: ServerKind) -> String {
    let cells: Vec<String> = cs
        .case
        .goals
        .iter()
        .filter(|g| g.row() == server)
        .map(|g| {
            let metric = match *g {
                Goal::AtLeastTimes { .. } => None,
                Goal::AtMost { metric, .. } | Goal::Below { metric, .. } => Some(metric),
            };
            let fmt = |v: f64| match metric {
                None => format!("{v:.2}×"),
                // Latency goals are in ms.
                Some(Metric::P50Us | Metric::P99Us) => {
                    format!("{} ms", grouped((v / 1e3).round() as u64))
                }
                Some(m) => format!("{} {}", fmt_metric(m, v), short_unit(m)),
            };
            let verdict = match judge(g, cs) {
                Verdict::Met(v) => format!("**met** ({})", fmt(v)),
                Verdict::Missed(v) => format!("**missed** ({})", fmt(v)),
                Verdict::Unknown => "no figure".into(),
            };
            format!("{}: {verdict}", goal_text(g, cs.case))
        })
        .collect();
    cells.join("; ")
}

fn short_unit(m: Metric) -> &'static str {
    match m {
        Metric::P50Us | Metric::P99Us => "µs",
        Metric::RssKibPerSocket => "KiB",
        Metric::CpuSPerGb => "CPU-s/GB",
        Metric::GbPerS => "GB/s",
        Metric::CpuUsPerUnit => "µs",
        Metric::Rate => "/s",
    }
}

/// A figure formatted for its kind.
pub fn fmt_metric(m: Metric, v: f64) -> String {
    match m {
        Metric::Rate | Metric::P50Us | Metric::P99Us => grouped(v.round().max(0.0) as u64),
        Metric::CpuUsPerUnit => format!("{v:.2}"),
        Metric::RssKibPerSocket => format!("{v:.1}"),
        Metric::GbPerS => format!("{v:.2}"),
        Metric::CpuSPerGb => format!("{v:.3}"),
    }
}

/// One column of a group's table.
#[derive(Debug, Clone, Copy)]
enum Col {
    /// Median, with the min–max range when there are several rounds.
    Range(Metric, &'static str),
    /// Median only.
    Value(Metric, &'static str),
    /// Sluice ÷ this row's server.
    Ratio(Metric),
    /// Connections established (median).
    Established,
    /// Errors and failures.
    Errors,
    /// Goals shown on this row.
    Goal,
}

fn columns(group: Group) -> Vec<Col> {
    use Col::*;
    match group {
        Group::Echo => vec![
            Range(Metric::Rate, "msg/s"),
            Ratio(Metric::Rate),
            Value(Metric::P50Us, "p50 µs"),
            Value(Metric::P99Us, "p99 µs"),
            Value(Metric::CpuUsPerUnit, "server CPU µs/msg"),
            Ratio(Metric::CpuUsPerUnit),
            Errors,
            Goal,
        ],
        Group::Broadcast => vec![
            Range(Metric::Rate, "deliveries/s"),
            Ratio(Metric::Rate),
            Value(Metric::P50Us, "p50 µs"),
            Value(Metric::P99Us, "p99 µs"),
            Value(Metric::CpuUsPerUnit, "server CPU µs/delivery"),
            Ratio(Metric::CpuUsPerUnit),
            Errors,
            Goal,
        ],
        Group::Connect => vec![
            Established,
            Range(Metric::RssKibPerSocket, "server RSS KiB/socket"),
            Ratio(Metric::RssKibPerSocket),
            Errors,
            Goal,
        ],
        Group::Files | Group::Iperf => vec![
            Range(Metric::GbPerS, "GB/s"),
            Ratio(Metric::GbPerS),
            Value(Metric::CpuSPerGb, "server CPU-s/GB"),
            Ratio(Metric::CpuSPerGb),
            Errors,
            Goal,
        ],
    }
}

fn header(c: Col) -> &'static str {
    match c {
        Col::Range(_, h) | Col::Value(_, h) => h,
        Col::Ratio(_) => "sluice ÷",
        Col::Established => "established",
        Col::Errors => "errors",
        Col::Goal => "goal",
    }
}

fn cell(c: Col, cs: &CaseSamples<'_>, server: ServerKind, rounds: u32) -> String {
    match c {
        Col::Range(m, _) => {
            let v: Vec<f64> = cs.by_round(server, m).into_values().collect();
            match median(&v) {
                None => "–".into(),
                Some(med) if rounds > 1 && v.len() > 1 => {
                    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    format!(
                        "{} ({}–{})",
                        fmt_metric(m, med),
                        fmt_metric(m, lo),
                        fmt_metric(m, hi)
                    )
                }
                Some(med) => fmt_metric(m, med),
            }
        }
        Col::Value(m, _) => cs
            .median(server, m)
            .map(|v| fmt_metric(m, v))
            .unwrap_or_else(|| "–".into()),
        Col::Ratio(m) => {
            if server == ServerKind::Sluice {
                "–".into()
            } else {
                cs.ratio(server, m)
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "–".into())
            }
        }
        Col::Established => {
            let v: Vec<f64> = cs
                .of(server)
                .filter(|s| s.ok())
                .filter_map(|s| s.metrics.established.map(|e| e as f64))
                .collect();
            median(&v)
                .map(|e| grouped(e.round() as u64))
                .unwrap_or_else(|| "–".into())
        }
        Col::Errors => cs.errors(server),
        Col::Goal => goal_cell(cs, server),
    }
}

fn group_title(g: Group) -> &'static str {
    match g {
        Group::Echo => "Echo (binary, one message in flight per socket)",
        Group::Broadcast => "Broadcast (64 B binary ticks, one publisher)",
        Group::Connect => "Idle sockets (server memory)",
        Group::Files | Group::Iperf => "File streaming (loopback bytes)",
    }
}

/// The table of the cases of one group.
pub fn render_group(cases: &[&Case], samples: &[Sample], rounds: u32) -> String {
    let Some(first) = cases.first() else {
        return String::new();
    };
    let cols = columns(first.group);
    let mut out = String::new();
    let _ = writeln!(out, "### {}\n", group_title(first.group));
    let mut head = vec!["case", "server"];
    head.extend(cols.iter().map(|c| header(*c)));
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    for case in cases {
        let cs = CaseSamples::new(case, samples);
        for &server in &case.servers {
            let mut row = vec![case.id.clone(), server.label().to_owned()];
            match cs.unavailable(server) {
                Some(why) => {
                    // One wide note, then the goal cell still judged (unknown).
                    row.push(why);
                    for c in &cols[1..] {
                        row.push(match c {
                            Col::Goal => goal_cell(&cs, server),
                            _ => String::new(),
                        });
                    }
                }
                None => row.extend(cols.iter().map(|c| cell(*c, &cs, server, rounds))),
            }
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
    }
    out
}

/// The whole report: header, method and one table per group.
pub fn render(meta: &Meta, cases: &[Case], samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Generated by `sluice-compare` (loadtest/src/compare); everything between the \
         markers is rewritten on each run.\n"
    );
    out.push_str(&meta.render());
    out.push('\n');
    let mut groups: Vec<Group> = Vec::new();
    for c in cases {
        let g = if c.group == Group::Iperf {
            Group::Files
        } else {
            c.group
        };
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for g in groups {
        let of: Vec<&Case> = cases
            .iter()
            .filter(|c| c.group == g || (g == Group::Files && c.group == Group::Iperf))
            .collect();
        out.push('\n');
        out.push_str(&render_group(&of, samples, meta.rounds));
    }
    out.push('\n');
    out.push_str(&render_commands(meta, cases, samples));
    out
}

/// The generator command of every case, once per distinct command (ports
/// written as `$PORT`), with the servers it ran against.
pub fn render_commands(meta: &Meta, cases: &[Case], samples: &[Sample]) -> String {
    let mut out = format!(
        "Generator commands (each `taskset -c {} …`, binaries in target/release; `$SKB` is the \
         run's generated secret key base, `$PID` the server's pid):\n\n",
        meta.load_core
    );
    for case in cases {
        let mut seen: Vec<(String, Vec<&str>)> = Vec::new();
        for &server in &case.servers {
            let Some(cmd) = samples
                .iter()
                .find(|s| s.case == case.id && s.server == server && s.command.is_some())
                .and_then(|s| s.command.clone())
            else {
                continue;
            };
            let port = meta
                .ports
                .iter()
                .find(|(k, _)| k == server.label())
                .map(|(_, p)| *p);
            let cmd = match port {
                Some(p) => cmd
                    .replace(&format!(":{p}"), ":$PORT")
                    .replace(&format!(" {p} "), " $PORT "),
                None => cmd,
            };
            match seen.iter_mut().find(|(c, _)| *c == cmd) {
                Some((_, servers)) => servers.push(server.label()),
                None => seen.push((cmd, vec![server.label()])),
            }
        }
        for (cmd, servers) in seen {
            let _ = writeln!(out, "* {} ({}): `{cmd}`", case.id, servers.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::machine::Meta;
    use crate::compare::measure::Metrics;
    use crate::compare::plan::{plan, Kind, Selection};

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn ratios_pair_rounds() {
        let a: BTreeMap<u32, f64> = [(1, 90.0), (2, 100.0), (3, 80.0)].into();
        let b: BTreeMap<u32, f64> = [(1, 100.0), (2, 50.0), (4, 1.0)].into();
        assert_eq!(round_ratios(&a, &b), vec![0.9, 2.0]);
        // Median of per-round ratios, not ratio of medians.
        let a: BTreeMap<u32, f64> = [(1, 10.0), (2, 20.0), (3, 30.0)].into();
        let b: BTreeMap<u32, f64> = [(1, 10.0), (2, 40.0), (3, 10.0)].into();
        assert_eq!(median(&round_ratios(&a, &b)), Some(1.0));
        assert_ne!(Some(20.0 / 10.0), Some(1.0));
        let zero: BTreeMap<u32, f64> = [(1, 0.0)].into();
        assert!(round_ratios(&a, &zero).is_empty());
    }

    fn sample(case: &str, server: ServerKind, round: u32, rate: f64, cpu: f64) -> Sample {
        let mut s = Sample::empty(case, server, round, Status::Ok);
        s.metrics = Metrics {
            rate: Some(rate),
            p50_us: Some(100.0),
            p99_us: Some(1500.0),
            cpu_us_per_unit: Some(cpu),
            established: Some(10),
            ..Metrics::default()
        };
        s
    }

    pub(crate) fn meta() -> Meta {
        Meta::fixed_for_tests()
    }

    #[test]
    fn renders_echo_with_ratios_goals_and_gaps() {
        let sel = Selection {
            groups: vec![Group::Echo],
            peers: ServerKind::PEERS.to_vec(),
            quick: true,
            connect_sockets: 200,
            file_bytes: 1 << 26,
            iperf_seconds: 1,
        };
        let cases = plan(&sel);
        let id = cases[0].id.clone();
        let mut samples = vec![];
        for r in 1..=3 {
            samples.push(sample(
                &id,
                ServerKind::Sluice,
                r,
                90_000.0 + r as f64,
                10.0,
            ));
            samples.push(sample(&id, ServerKind::Fws, r, 100_000.0, 8.0));
            samples.push(Sample::empty(
                &id,
                ServerKind::Bun,
                r,
                Status::NotInstalled("loadtest/peers/node_modules/.bin/bun missing".into()),
            ));
            let mut n = sample(&id, ServerKind::NodeWs, r, 30_000.0, 30.0);
            if r == 2 {
                n = Sample::empty(
                    &id,
                    ServerKind::NodeWs,
                    r,
                    Status::Failed("boom\nmore".into()),
                );
            }
            if r == 3 {
                n.errors = 2;
                n.error_kinds = [("closed".to_string(), 2)].into();
            }
            samples.push(n);
        }
        let md = render_group(&[&cases[0]], &samples, 3);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[0],
            "### Echo (binary, one message in flight per socket)"
        );
        assert_eq!(
            lines[2],
            "| case | server | msg/s | sluice ÷ | p50 µs | p99 µs | server CPU µs/msg | sluice ÷ | errors | goal |"
        );
        assert_eq!(lines[3], "|---|---|---|---|---|---|---|---|---|---|");
        assert_eq!(
            lines[4],
            "| echo 10×20 B | sluice | 90 002 (90 001–90 003) | – | 100 | 1 500 | 10.00 | – | 0 |  |"
        );
        assert_eq!(
            lines[5],
            "| echo 10×20 B | fws | 100 000 (100 000–100 000) | 0.90 | 100 | 1 500 | 8.00 | 1.25 | 0 | ≥ 0.9× fws: **met** (0.90×) |"
        );
        assert_eq!(
            lines[6],
            "| echo 10×20 B | bun | not installed: loadtest/peers/node_modules/.bin/bun missing |  |  |  |  |  |  |  |"
        );
        assert!(
            lines[7].ends_with("| 2 (closed 2); 1 of 3 runs failed: boom… |  |"),
            "{}",
            lines[7]
        );
        // Rendering is a pure function of its inputs.
        assert_eq!(md, render_group(&[&cases[0]], &samples, 3));
    }

    #[test]
    fn goals_judged_on_medians() {
        let case = Case {
            id: "idle 200 sockets".into(),
            group: Group::Connect,
            kind: Kind::Connect { sockets: 200 },
            servers: vec![ServerKind::Sluice],
            goals: vec![Goal::AtMost {
                metric: Metric::RssKibPerSocket,
                max: 4.0,
            }],
        };
        let mut s = Sample::empty(&case.id, ServerKind::Sluice, 1, Status::Ok);
        s.metrics.rss_kib_per_socket = Some(5.25);
        s.metrics.established = Some(200);
        let all = [s];
        let cs = CaseSamples::new(&case, &all);
        assert_eq!(judge(&case.goals[0], &cs), Verdict::Missed(5.25));
        assert_eq!(
            goal_cell(&cs, ServerKind::Sluice),
            "≤ 4 KiB/socket at 200: **missed** (5.2 KiB)"
        );
        let none: [Sample; 0] = [];
        let cs = CaseSamples::new(&case, &none);
        assert_eq!(judge(&case.goals[0], &cs), Verdict::Unknown);
        let mut late = Sample::empty(&case.id, ServerKind::Sluice, 2, Status::Ok);
        late.timeouts = 12_345;
        let with_late = [all[0].clone(), late];
        assert_eq!(
            CaseSamples::new(&case, &with_late).errors(ServerKind::Sluice),
            "0; 12 345 timeouts"
        );
        let p99 = Goal::Below {
            metric: Metric::P99Us,
            limit: 50_000.0,
        };
        let mut paced = case.clone();
        paced.goals = vec![p99];
        let mut s = Sample::empty(&paced.id, ServerKind::Sluice, 1, Status::Ok);
        s.metrics.p99_us = Some(1_948_671.0);
        let one = [s];
        assert_eq!(
            goal_cell(&CaseSamples::new(&paced, &one), ServerKind::Sluice),
            "p99 < 50 ms: **missed** (1 949 ms)"
        );
        let md = render(&meta(), std::slice::from_ref(&case), &all);
        assert!(
            md.contains("| idle 200 sockets | sluice | 200 | 5.2 | – | 0 |"),
            "{md}"
        );
    }
}
