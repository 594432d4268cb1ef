//! The `sluice-compare` command line, and the defaults of a full and a
//! `--quick` run.

use std::path::PathBuf;
use std::time::Duration;

use super::plan::{Group, Selection, ServerKind, IDLE_GOAL_SOCKETS};

/// `sluice-compare`: Sluice against Bun, Node `ws`, raw fastwebsockets,
/// nginx and iperf3 on this machine, interleaved, with a markdown report.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sluice-compare",
    version,
    about = "Side-by-side benchmark: Sluice and its peers, same machine, same run, interleaved"
)]
pub struct Options {
    /// Rounds per case; each round runs Sluice then every peer [default: 3, --quick 1].
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Measured time per run [default: 5s, --quick 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Warm-up per run, not measured [default: 1s, --quick 500ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// Only these groups (comma list) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Group>,
    /// Only these peers (comma list; Sluice always runs) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peers: Vec<ServerKind>,
    /// Small and short, for the CI smoke: 1 round of 1 s, echo 10×20 B,
    /// broadcast to 50, 200 idle sockets, a 64 MiB file.
    #[arg(long)]
    pub quick: bool,
    /// Splice the report into this markdown file between
    /// `<!-- compare:begin -->` and `<!-- compare:end -->`.
    #[arg(long)]
    pub write_docs: Option<PathBuf>,
    /// Where every run's raw results go (JSON).
    #[arg(long, default_value = "target/compare/results.json")]
    pub json_out: PathBuf,
    /// Fail (exit 1) if a peer is not installed, a run fails or counts errors or timeouts.
    #[arg(long)]
    pub require_all: bool,
    /// Port of Sluice; bun, node-ws, fws, nginx and iperf3 take the next five.
    #[arg(long, default_value_t = 4760)]
    pub base_port: u16,
    /// Idle sockets of the connect case [default: 18000, --quick 200].
    #[arg(long)]
    pub sockets: Option<usize>,
    /// Size of the downloaded file, MiB [default: 1024, --quick 64].
    #[arg(long)]
    pub file_mib: Option<u64>,
    /// Source addresses the connect case's sockets rotate over.
    #[arg(long, default_value = "127.0.0.1-127.0.0.4")]
    pub source_addrs: String,
    /// Core the servers are pinned to.
    #[arg(long, default_value = "0")]
    pub server_core: String,
    /// Core the generators are pinned to.
    #[arg(long, default_value = "1")]
    pub load_core: String,
    /// Workspace root [default: the current directory if it holds
    /// loadtest/, else three levels above this binary].
    #[arg(long)]
    pub root: Option<PathBuf>,
}

/// Why the options cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid option: {0}")]
pub struct OptionsError(pub String);

impl Options {
    /// Rounds to run.
    pub fn rounds(&self) -> u32 {
        self.rounds.unwrap_or(if self.quick { 1 } else { 3 })
    }

    /// Measured time per run.
    pub fn duration(&self) -> Duration {
        self.duration.unwrap_or(if self.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        })
    }

    /// Warm-up per run.
    pub fn warmup(&self) -> Duration {
        self.warmup.unwrap_or(if self.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        })
    }

    /// What to run.
    pub fn selection(&self) -> Selection {
        let groups = if self.only.is_empty() {
            vec![
                Group::Echo,
                Group::Broadcast,
                Group::Connect,
                Group::Files,
                Group::Iperf,
            ]
        } else {
            self.only.clone()
        };
        let peers = if self.peers.is_empty() {
            ServerKind::PEERS.to_vec()
        } else {
            self.peers.clone()
        };
        Selection {
            groups,
            peers,
            quick: self.quick,
            connect_sockets: self.sockets.unwrap_or(if self.quick {
                200
            } else {
                IDLE_GOAL_SOCKETS
            }),
            file_bytes: self.file_mib.unwrap_or(if self.quick { 64 } else { 1024 }) << 20,
            iperf_seconds: self.duration().as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// Check ranges.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.rounds() == 0 {
            return Err(OptionsError("--rounds must be at least 1".into()));
        }
        if self.duration().is_zero() {
            return Err(OptionsError("--duration must be positive".into()));
        }
        if self.base_port == 0 || self.base_port > u16::MAX - 5 {
            return Err(OptionsError(
                "--base-port must leave room for 6 ports".into(),
            ));
        }
        if self.sockets == Some(0) || self.file_mib == Some(0) {
            return Err(OptionsError(
                "--sockets and --file-mib must be positive".into(),
            ));
        }
        if self.server_core == self.load_core {
            return Err(OptionsError(
                "--server-core and --load-core must differ".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_full_and_quick() {
        let o = Options::try_parse_from(["sluice-compare"]).expect("parses");
        assert_eq!(
            (o.rounds(), o.duration(), o.warmup()),
            (3, Duration::from_secs(5), Duration::from_secs(1))
        );
        let s = o.selection();
        assert_eq!(s.groups.len(), 5);
        assert_eq!(s.connect_sockets, 18_000);
        assert_eq!(s.file_bytes, 1 << 30);
        assert_eq!(s.iperf_seconds, 5);
        assert!(o.validate().is_ok());

        let o = Options::try_parse_from([
            "sluice-compare",
            "--quick",
            "--only",
            "echo,files",
            "--peers",
            "bun,nginx",
            "--rounds",
            "2",
        ])
        .expect("parses");
        assert_eq!((o.rounds(), o.duration()), (2, Duration::from_secs(1)));
        let s = o.selection();
        assert_eq!(s.groups, [Group::Echo, Group::Files]);
        assert_eq!(s.peers, [ServerKind::Bun, ServerKind::Nginx]);
        assert_eq!((s.connect_sockets, s.file_bytes), (200, 64 << 20));
        assert!(Options::try_parse_from(["sluice-compare", "--only", "nope"]).is_err());
        let o = Options::try_parse_from(["sluice-compare", "--rounds", "0"]).expect("parses");
        assert!(o.validate().is_err());
    }
}
