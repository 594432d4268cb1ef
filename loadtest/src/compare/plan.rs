//! What a comparison runs: the cases, which servers each one runs against,
//! in which order, and the goal of each (from issue 5). Pure data: nothing
//! here starts a process.
//!
//! # Contract
//! * [`plan`] returns the cases of the selected groups in a fixed order
//!   (echo, broadcast, connect, files); each case lists Sluice first, then
//!   the selected peers in [`ServerKind::PEERS`] order. That order is the
//!   order of one round (A B C A B C …).
//! * A case whose only server would be Sluice because no peer of it was
//!   selected still runs (its absolute goals still apply); a files case
//!   with `iperf` selected but `files` not runs iperf3 alone.

use std::fmt;

use serde::Serialize;

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// `sluice serve`, driven in Phoenix mode.
    Sluice,
    /// `sluice-peer-fws`: raw fastwebsockets, the floor.
    Fws,
    /// `bun loadtest/peers/bun-server.js` (uWebSockets).
    Bun,
    /// `node loadtest/peers/node-ws-server.mjs` (the `ws` package).
    NodeWs,
    /// nginx serving the same file over HTTP (sendfile).
    Nginx,
    /// `iperf3 -s`: the loopback ceiling for bytes.
    Iperf3,
}

impl ServerKind {
    /// Every peer, in round order.
    pub const PEERS: [ServerKind; 5] = [
        ServerKind::Fws,
        ServerKind::Bun,
        ServerKind::NodeWs,
        ServerKind::Nginx,
        ServerKind::Iperf3,
    ];

    /// The name used in tables, options and JSON.
    pub fn label(self) -> &'static str {
        match self {
            ServerKind::Sluice => "sluice",
            ServerKind::Fws => "fws",
            ServerKind::Bun => "bun",
            ServerKind::NodeWs => "node-ws",
            ServerKind::Nginx => "nginx",
            ServerKind::Iperf3 => "iperf3",
        }
    }

    /// Offset of its port from `--base-port`.
    pub fn port_offset(self) -> u16 {
        match self {
            ServerKind::Sluice => 0,
            ServerKind::Bun => 1,
            ServerKind::NodeWs => 2,
            ServerKind::Fws => 3,
            ServerKind::Nginx => 4,
            ServerKind::Iperf3 => 5,
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A group of cases, as named by `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// Request/reply round trips.
    Echo,
    /// One publisher, many subscribers.
    Broadcast,
    /// Idle sockets: server memory per socket.
    Connect,
    /// One file download, against nginx.
    Files,
    /// The iperf3 row of the files table.
    Iperf,
}

/// What one case does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "scenario", rename_all = "kebab-case")]
pub enum Kind {
    /// `connections` sockets, each with one `size`-byte binary message in flight.
    Echo {
        /// Sockets.
        connections: usize,
        /// Binary payload bytes.
        size: usize,
    },
    /// `size`-byte binary ticks to `subscribers` sockets; `rate` 0 = flat out.
    Broadcast {
        /// Subscribers (the publisher is one more socket).
        subscribers: usize,
        /// Publishes per second, 0 = as fast as the subscribers keep up.
        rate: u64,
        /// Binary payload bytes.
        size: usize,
    },
    /// `sockets` idle sockets held open (Sluice: joined to a channel).
    Connect {
        /// Sockets.
        sockets: usize,
    },
    /// One download of a `bytes`-byte file (iperf3: a `seconds` stream).
    Download {
        /// File size.
        bytes: u64,
        /// iperf3's `-t`.
        iperf_seconds: u64,
    },
}

/// A figure a case reports per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Messages (echo) or deliveries (broadcast) per second.
    Rate,
    /// Median latency, µs.
    P50Us,
    /// 99th percentile latency, µs.
    P99Us,
    /// Server CPU time per message or delivery, µs.
    CpuUsPerUnit,
    /// Server resident memory added per idle socket, KiB.
    RssKibPerSocket,
    /// Wall throughput, GB/s (10^9 B/s).
    GbPerS,
    /// Server CPU-seconds per GB moved.
    CpuSPerGb,
}

impl Metric {
    /// Whether a larger value is better (for reading ratios).
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::Rate | Metric::GbPerS)
    }
}

/// A goal of issue 5, checked on the medians of one case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Goal {
    /// The median per-round ratio Sluice ÷ `peer` of `metric` is at least `min`.
    AtLeastTimes {
        /// The peer compared with.
        peer: ServerKind,
        /// The figure.
        metric: Metric,
        /// Smallest ratio that meets the goal.
        min: f64,
    },
    /// Sluice's median `metric` is at most `max`.
    AtMost {
        /// The figure.
        metric: Metric,
        /// Largest value that meets the goal.
        max: f64,
    },
    /// Sluice's median `metric` is below `limit`.
    Below {
        /// The figure.
        metric: Metric,
        /// Smallest value that misses the goal.
        limit: f64,
    },
}

impl Goal {
    /// The server whose table row shows this goal.
    pub fn row(&self) -> ServerKind {
        match self {
            Goal::AtLeastTimes { peer, .. } => *peer,
            Goal::AtMost { .. } | Goal::Below { .. } => ServerKind::Sluice,
        }
    }
}

/// One case: what to run, against which servers, and what is hoped for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Case {
    /// Short unique name, e.g. `echo 100×20 B`.
    pub id: String,
    /// The `--only` group.
    pub group: Group,
    /// What the generator does.
    pub kind: Kind,
    /// Round order: Sluice (when in the case) first, then the peers.
    pub servers: Vec<ServerKind>,
    /// Goals, shown on the row of [`Goal::row`].
    pub goals: Vec<Goal>,
}

/// The sizes of a full or a `--quick` run.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Groups to run (`--only`).
    pub groups: Vec<Group>,
    /// Peers to run (`--peers`).
    pub peers: Vec<ServerKind>,
    /// Small sizes for the CI smoke.
    pub quick: bool,
    /// Idle sockets of the connect case.
    pub connect_sockets: usize,
    /// File size of the files case.
    pub file_bytes: u64,
    /// Seconds of one iperf3 stream.
    pub iperf_seconds: u64,
}

/// Subscribers and rate of the paced broadcast row (the p99 goal).
pub const PACED: (usize, u64) = (10_000, 10);
/// The idle-memory goal's socket count.
pub const IDLE_GOAL_SOCKETS: usize = 18_000;

fn human_size(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn human_file(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= 1024 * MIB && bytes % (1024 * MIB) == 0 {
        format!("{} GiB", bytes / (1024 * MIB))
    } else if bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} B")
    }
}

/// Thousands separated by spaces: `18 000`.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The cases of `sel`, in run order (see the module docs).
pub fn plan(sel: &Selection) -> Vec<Case> {
    let has = |g: Group| sel.groups.contains(&g);
    let servers = |peers: &[ServerKind], with_sluice: bool| -> Vec<ServerKind> {
        let mut v = Vec::new();
        if with_sluice {
            v.push(ServerKind::Sluice);
        }
        v.extend(
            ServerKind::PEERS
                .iter()
                .copied()
                .filter(|p| peers.contains(p) && sel.peers.contains(p)),
        );
        v
    };
    let ws_peers = [ServerKind::Fws, ServerKind::Bun, ServerKind::NodeWs];
    let mut cases = Vec::new();

    if has(Group::Echo) {
        let sizes: &[(usize, usize)] = if sel.quick {
            &[(10, 20)]
        } else {
            &[(100, 20), (10, 1024), (200, 16 * 1024)]
        };
        for &(connections, size) in sizes {
            cases.push(Case {
                id: format!("echo {connections}×{}", human_size(size)),
                group: Group::Echo,
                kind: Kind::Echo { connections, size },
                servers: servers(&ws_peers, true),
                goals: vec![Goal::AtLeastTimes {
                    peer: ServerKind::Fws,
                    metric: Metric::Rate,
                    min: 0.9,
                }],
            });
        }
    }

    if has(Group::Broadcast) {
        let flat: &[usize] = if sel.quick { &[50] } else { &[100, 1000, 5000] };
        for &subscribers in flat {
            cases.push(Case {
                id: format!("broadcast 64 B → {} flat out", grouped(subscribers as u64)),
                group: Group::Broadcast,
                kind: Kind::Broadcast {
                    subscribers,
                    rate: 0,
                    size: 64,
                },
                servers: servers(&ws_peers, true),
                goals: vec![
                    Goal::AtLeastTimes {
                        peer: ServerKind::Bun,
                        metric: Metric::Rate,
                        min: 0.5,
                    },
                    Goal::AtLeastTimes {
                        peer: ServerKind::NodeWs,
                        metric: Metric::Rate,
                        min: 3.0,
                    },
                ],
            });
        }
        let (subscribers, rate) = if sel.quick { (50, PACED.1) } else { PACED };
        cases.push(Case {
            id: format!(
                "broadcast 64 B → {} at {rate}/s",
                grouped(subscribers as u64)
            ),
            group: Group::Broadcast,
            kind: Kind::Broadcast {
                subscribers,
                rate,
                size: 64,
            },
            servers: servers(&ws_peers, true),
            goals: vec![Goal::Below {
                metric: Metric::P99Us,
                limit: 50_000.0,
            }],
        });
    }

    if has(Group::Connect) {
        let sockets = sel.connect_sockets;
        cases.push(Case {
            id: format!("idle {} sockets", grouped(sockets as u64)),
            group: Group::Connect,
            kind: Kind::Connect { sockets },
            servers: servers(&ws_peers, true),
            goals: vec![Goal::AtMost {
                metric: Metric::RssKibPerSocket,
                max: 4.0,
            }],
        });
    }

    if has(Group::Files) || has(Group::Iperf) {
        let mut peers = Vec::new();
        if has(Group::Files) {
            peers.push(ServerKind::Nginx);
        }
        if has(Group::Iperf) {
            peers.push(ServerKind::Iperf3);
        }
        let mut goals = Vec::new();
        if has(Group::Files) {
            goals.push(Goal::AtMost {
                metric: Metric::CpuSPerGb,
                max: 0.15,
            });
            goals.push(Goal::AtLeastTimes {
                peer: ServerKind::Nginx,
                metric: Metric::GbPerS,
                min: 0.8,
            });
        }
        cases.push(Case {
            id: format!("download {} ×1", human_file(sel.file_bytes)),
            group: if has(Group::Files) {
                Group::Files
            } else {
                Group::Iperf
            },
            kind: Kind::Download {
                bytes: sel.file_bytes,
                iperf_seconds: sel.iperf_seconds,
            },
            servers: servers(&peers, has(Group::Files)),
            goals,
        });
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(quick: bool) -> Selection {
        Selection {
            groups: vec![
                Group::Echo,
                Group::Broadcast,
                Group::Connect,
                Group::Files,
                Group::Iperf,
            ],
            peers: ServerKind::PEERS.to_vec(),
            quick,
            connect_sockets: 18_000,
            file_bytes: 1 << 30,
            iperf_seconds: 5,
        }
    }

    #[test]
    fn full_plan_has_every_case_of_the_issue() {
        let cases = plan(&sel(false));
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "echo 100×20 B",
                "echo 10×1 KiB",
                "echo 200×16 KiB",
                "broadcast 64 B → 100 flat out",
                "broadcast 64 B → 1 000 flat out",
                "broadcast 64 B → 5 000 flat out",
                "broadcast 64 B → 10 000 at 10/s",
                "idle 18 000 sockets",
                "download 1 GiB ×1",
            ]
        );
        use ServerKind::*;
        assert_eq!(cases[0].servers, [Sluice, Fws, Bun, NodeWs]);
        assert_eq!(cases[8].servers, [Sluice, Nginx, Iperf3]);
        assert_eq!(cases[8].goals.len(), 2);
        assert_eq!(cases[3].goals[1].row(), NodeWs);
        assert_eq!(cases[6].goals[0].row(), Sluice);
    }

    #[test]
    fn quick_is_small_and_selection_filters() {
        let cases = plan(&sel(true));
        assert_eq!(cases.len(), 5);
        assert_eq!(
            cases[0].kind,
            Kind::Echo {
                connections: 10,
                size: 20
            }
        );
        let mut s = sel(false);
        s.groups = vec![Group::Iperf];
        s.peers = vec![ServerKind::Iperf3];
        let cases = plan(&s);
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].servers, [ServerKind::Iperf3]);
        assert!(cases[0].goals.is_empty());
        let mut s = sel(false);
        s.groups = vec![Group::Echo];
        s.peers = vec![ServerKind::Bun];
        assert_eq!(plan(&s)[0].servers, [ServerKind::Sluice, ServerKind::Bun]);
    }

    #[test]
    fn grouping() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1 000");
        assert_eq!(grouped(1_234_567), "1 234 567");
    }
}
