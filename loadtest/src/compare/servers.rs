//! Starting, probing and stopping the servers under test (and any child
//! process), pinned to the server core.
//!
//! # Contract
//! * Every process this tool starts is a [`Spawned`]: its own process group
//!   (so a terminal's Ctrl-C reaches only `sluice-compare`), stopped on
//!   [`Spawned::stop`] or when dropped: SIGTERM to the group, up to
//!   [`STOP_GRACE`] for the leader to exit, then SIGKILL to the group (any
//!   worker left behind), then reaped. Signals go through `kill(1)` with the
//!   group id of a process this tool started, never by name.
//! * [`Server::start`] refuses a port something already listens on (it
//!   would measure someone else's server), then polls readiness
//!   ([`Readiness`]) every 50 ms up to [`READY_TIMEOUT`]; a server that exits
//!   first is an error quoting the tail of its log.
//! * The command line is `[prlimit --nofile=H:H] taskset -c CORE program
//!   args`: prlimit only when the soft open-file limit is below the hard one;
//!   both exec, so the child's pid is the server's.
//! * Logs (stdout and stderr of every server) are appended to
//!   `<logs>/<server>.log`.
//! * nginx runs from `loadtest/peers/nginx.conf.template` (the settings of
//!   `loadtest/files-bench.sh`: one worker, sendfile, tcp_nopush, no access
//!   log), or the same settings written here if the template is missing.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::interrupt;
use super::plan::ServerKind;
use super::procfs;

/// How long a server may take to answer its readiness probe.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process has to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The port is taken by a process this tool did not start.
    #[error("{kind}: port {port} is already in use (another server running?)")]
    PortInUse {
        /// The server.
        kind: ServerKind,
        /// Its port.
        port: u16,
    },
    /// The process could not be spawned.
    #[error("{what}: cannot start: {source}")]
    Spawn {
        /// The program.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The server exited before it was ready.
    #[error("{kind} exited before it was ready ({status}); log tail:\n{log}")]
    Exited {
        /// The server.
        kind: ServerKind,
        /// How it exited.
        status: String,
        /// The last lines of its log.
        log: String,
    },
    /// The readiness probe never succeeded.
    #[error("{kind} not ready after {secs} s; log tail:\n{log}")]
    NotReady {
        /// The server.
        kind: ServerKind,
        /// How long it was given.
        secs: u64,
        /// The last lines of its log.
        log: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

/// A child process in its own process group, stopped when dropped.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    pid: u32,
    status: Option<ExitStatus>,
}

fn signal_group(pgid: u32, signal: &str) {
    // `kill -SIG -- -PGID`: the group this tool created; an already empty
    // group is not an error worth reporting.
    let _ = Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Spawned {
    /// Spawn `cmd` as the leader of a new process group.
    pub fn spawn(mut cmd: Command) -> Result<Spawned, ServerError> {
        let what = format!("{:?}", cmd.get_program());
        let child = cmd
            .process_group(0)
            .spawn()
            .map_err(|source| ServerError::Spawn { what, source })?;
        Ok(Spawned {
            pid: child.id(),
            child,
            status: None,
        })
    }

    /// The leader's pid (= the group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its exit status, if it has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The `Child`, to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether the leader has exited (zombie or reaped) without reaping it,
    /// so that its pid, the group id, stays reserved.
    fn leader_done(&self) -> bool {
        self.status.is_some()
            || procfs::stat(self.pid)
                .map(|s| s.state == 'Z' || s.state == 'X')
                .unwrap_or(true)
    }

    /// SIGTERM the group, wait up to `grace` for the leader, SIGKILL the
    /// group, reap the leader. Idempotent.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.status {
            return Some(s);
        }
        signal_group(self.pid, "TERM");
        let until = Instant::now() + grace;
        while !self.leader_done() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Workers left behind by a leader that exited, or a leader that ignored TERM.
        signal_group(self.pid, "KILL");
        self.status = self.child.wait().ok();
        self.status
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// How to tell that a server is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// `GET path` answers; with `ok_only`, with status 200.
    Http {
        /// Request path.
        path: &'static str,
        /// Whether only 200 counts (else any HTTP response).
        ok_only: bool,
    },
    /// Something listens on the port (`/proc/net/tcp`): for iperf3, which
    /// would take a probe connection for a client.
    Listening,
}

/// The programs and files the comparison uses.
#[derive(Debug, Clone)]
pub struct Bins {
    /// Workspace root (the servers' working directory).
    pub root: PathBuf,
    /// `target/release/sluice`.
    pub sluice: PathBuf,
    /// `target/release/sluice-load`.
    pub load: PathBuf,
    /// `target/release/sluice-peer-fws`.
    pub fws: PathBuf,
    /// `loadtest/peers/node_modules/.bin/bun`.
    pub bun: PathBuf,
    /// `node` on PATH.
    pub node: Option<PathBuf>,
    /// `nginx` on PATH or in /usr/sbin.
    pub nginx: Option<PathBuf>,
    /// `iperf3` on PATH.
    pub iperf3: Option<PathBuf>,
    /// `curl` on PATH.
    pub curl: Option<PathBuf>,
    /// `taskset` on PATH.
    pub taskset: Option<PathBuf>,
    /// `prlimit` on PATH.
    pub prlimit: Option<PathBuf>,
}

/// `name` in `$PATH` (then /usr/sbin and /sbin, where nginx lives).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Bins {
    /// Locate everything relative to the workspace `root` and `$PATH`.
    pub fn locate(root: &Path) -> Bins {
        let release = root.join("target/release");
        Bins {
            root: root.to_owned(),
            sluice: release.join("sluice"),
            load: release.join("sluice-load"),
            fws: release.join("sluice-peer-fws"),
            bun: root.join("loadtest/peers/node_modules/.bin/bun"),
            node: find_in_path("node"),
            nginx: find_in_path("nginx"),
            iperf3: find_in_path("iperf3"),
            curl: find_in_path("curl"),
            taskset: find_in_path("taskset"),
            prlimit: find_in_path("prlimit"),
        }
    }

    /// The peers' directory.
    pub fn peers_dir(&self) -> PathBuf {
        self.root.join("loadtest/peers")
    }

    /// `Ok` if `kind` can run here, else why not ("not installed: …").
    pub fn check(&self, kind: ServerKind) -> Result<(), String> {
        let file = |p: &Path, how: &str| {
            if is_executable(p) {
                Ok(())
            } else {
                Err(format!("{} missing ({how})", p.display()))
            }
        };
        let source = |p: PathBuf| {
            if p.is_file() {
                Ok(())
            } else {
                Err(format!("{} missing", p.display()))
            }
        };
        let on_path = |p: &Option<PathBuf>, name: &str| match p {
            Some(_) => Ok(()),
            None => Err(format!("`{name}` not on PATH (loadtest/peers/install.sh)")),
        };
        match kind {
            ServerKind::Sluice => file(&self.sluice, "cargo build --release -p sluice"),
            ServerKind::Fws => file(&self.fws, "cargo build --release -p sluice-load"),
            ServerKind::Bun => {
                file(&self.bun, "loadtest/peers/install.sh")?;
                source(self.peers_dir().join("bun-server.js"))
            }
            ServerKind::NodeWs => {
                on_path(&self.node, "node")?;
                source(self.peers_dir().join("node-ws-server.mjs"))?;
                source(self.peers_dir().join("node_modules/ws/package.json"))
                    .map_err(|e| format!("{e} (loadtest/peers/install.sh)"))
            }
            ServerKind::Nginx => {
                on_path(&self.nginx, "nginx")?;
                on_path(&self.curl, "curl")
            }
            ServerKind::Iperf3 => on_path(&self.iperf3, "iperf3"),
        }
    }
}

/// The scratch directory of one run: the served file, nginx's files,
/// uploads; removed when dropped.
#[derive(Debug)]
pub struct Workdir {
    /// The directory.
    pub dir: PathBuf,
}

impl Workdir {
    /// A fresh directory under the system temp dir.
    pub fn create() -> std::io::Result<Workdir> {
        use std::os::unix::fs::PermissionsExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("sluice-compare.{}.{nanos:08x}", std::process::id()));
        for sub in ["files", "uploads", "nginx/tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // nginx's worker runs as an unprivileged user when started by root.
        for d in [dir.clone(), dir.join("files"), dir.join("nginx")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::set_permissions(
            dir.join("nginx/tmp"),
            std::fs::Permissions::from_mode(0o1777),
        )?;
        Ok(Workdir { dir })
    }

    /// The served files' directory.
    pub fn files(&self) -> PathBuf {
        self.dir.join("files")
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Write `bytes` random bytes to `path` (from /dev/urandom), dated a minute
/// ago so that Sluice maps it rather than copying (its `--file-settle`).
pub fn write_random_file(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut src = File::open("/dev/urandom")?;
    let mut out = File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        src.read_exact(&mut buf[..n])?;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))?;
    out.sync_all()?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// The name of the served file inside [`Workdir::files`].
pub const FILE_NAME: &str = "big.bin";

/// Everything needed to start any server.
#[derive(Debug)]
pub struct Env {
    /// Programs.
    pub bins: Bins,
    /// Scratch directory.
    pub work: Workdir,
    /// Where server logs go.
    pub logs: PathBuf,
    /// Sluice's `--secret-key-base` (and the generator's).
    pub secret: String,
    /// First port; each server adds [`ServerKind::port_offset`].
    pub base_port: u16,
    /// Core the servers are pinned to.
    pub server_core: String,
    /// Core the generators are pinned to.
    pub load_core: String,
    /// Hard open-file limit to raise children to, when above the soft one.
    pub raise_nofile: Option<u64>,
}

impl Env {
    /// The port of `kind`.
    pub fn port(&self, kind: ServerKind) -> u16 {
        self.base_port + kind.port_offset()
    }

    /// `[prlimit …] taskset -c CORE program`, ready for arguments.
    pub fn pinned(&self, core: &str, program: impl Into<OsString>) -> Command {
        let taskset = self
            .bins
            .taskset
            .clone()
            .unwrap_or_else(|| PathBuf::from("taskset"));
        let mut cmd = match (self.raise_nofile, &self.bins.prlimit) {
            (Some(n), Some(prlimit)) => {
                let mut c = Command::new(prlimit);
                c.arg(format!("--nofile={n}:{n}")).arg(taskset);
                c
            }
            _ => Command::new(taskset),
        };
        cmd.args(["-c", core]).arg(program.into());
        cmd.current_dir(&self.bins.root).stdin(Stdio::null());
        cmd
    }

    /// The nginx configuration: `loadtest/peers/nginx.conf.template`
    /// (built in) with its placeholders filled.
    pub fn nginx_conf(&self) -> String {
        fill_nginx_template(
            NGINX_TEMPLATE,
            &self.work.files().display().to_string(),
            self.port(ServerKind::Nginx),
            &self.work.dir.join("nginx").display().to_string(),
        )
    }

    /// The command that starts `kind`, and how to tell it is ready.
    pub fn launch(&self, kind: ServerKind) -> (Command, Readiness) {
        let port = self.port(kind);
        let core = self.server_core.as_str();
        let peers = self.bins.peers_dir();
        let health = Readiness::Http {
            path: "/health",
            ok_only: true,
        };
        match kind {
            ServerKind::Sluice => {
                let mut c = self.pinned(core, &self.bins.sluice);
                c.arg("serve")
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--secret-key-base")
                    .arg(&self.secret)
                    .arg("--api-key")
                    .arg(format!("compare-{}", &self.secret[..16]))
                    .args(["--max-connections", "20000"])
                    .arg("--files-dir")
                    .arg(self.work.files())
                    .arg("--uploads-dir")
                    .arg(self.work.dir.join("uploads"))
                    .args(["--drain-grace", "1s", "--log-level", "warn"]);
                let ready = Readiness::Http {
                    path: "/healthz",
                    ok_only: true,
                };
                (c, ready)
            }
            ServerKind::Fws => {
                let mut c = self.pinned(core, &self.bins.fws);
                c.arg(port.to_string()).env("PORT", port.to_string());
                (c, health)
            }
            ServerKind::Bun => {
                let mut c = self.pinned(core, &self.bins.bun);
                c.arg(peers.join("bun-server.js"))
                    .arg(port.to_string())
                    .env("PORT", port.to_string());
                (c, health)
            }
            ServerKind::NodeWs => {
                let node = self.bins.node.clone().unwrap_or_else(|| "node".into());
                let mut c = self.pinned(core, node);
                c.arg(peers.join("node-ws-server.mjs"))
                    .arg(port.to_string())
                    .env("PORT", port.to_string());
                (c, health)
            }
            ServerKind::Nginx => {
                let nginx = self.bins.nginx.clone().unwrap_or_else(|| "nginx".into());
                let n = self.work.dir.join("nginx");
                let mut c = self.pinned(core, nginx);
                c.arg("-e")
                    .arg(n.join("error.log"))
                    .arg("-p")
                    .arg(format!("{}/", n.display()))
                    .arg("-c")
                    .arg(n.join("nginx.conf"));
                let ready = Readiness::Http {
                    path: "/",
                    ok_only: false,
                };
                (c, ready)
            }
            ServerKind::Iperf3 => {
                // Not `-1`: the server stays up after the test so its CPU
                // time can still be read from /proc; it is stopped like the others.
                let iperf = self.bins.iperf3.clone().unwrap_or_else(|| "iperf3".into());
                let mut c = self.pinned(core, iperf);
                c.args(["-s", "-p", &port.to_string()]);
                (c, Readiness::Listening)
            }
        }
    }
}

/// `loadtest/peers/nginx.conf.template`, one copy for the compare tool and
/// for people running the peer by hand.
const NGINX_TEMPLATE: &str = include_str!("../../peers/nginx.conf.template");

/// `nginx.conf.template` with `@ROOT@` (served directory), `@PORT@` and
/// `@TMP@` (nginx's own directory) replaced.
pub fn fill_nginx_template(template: &str, root: &str, port: u16, tmp: &str) -> String {
    template
        .replace("@ROOT@", root)
        .replace("@PORT@", &port.to_string())
        .replace("@TMP@", tmp)
}

/// `GET path` on 127.0.0.1:`port`: the response's status code, if any.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    parse_status_line(&head[..got])
}

/// The status code of an `HTTP/1.x NNN` status line.
pub fn parse_status_line(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    let rest = text.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Which one.
    pub kind: ServerKind,
    /// Its port.
    pub port: u16,
    /// Its log file.
    pub log: PathBuf,
    proc: Spawned,
}

impl Server {
    /// Start `kind` and wait until it is ready (see the module docs).
    pub fn start(env: &Env, kind: ServerKind) -> Result<Server, ServerError> {
        let port = env.port(kind);
        if procfs::listening(port) {
            return Err(ServerError::PortInUse { kind, port });
        }
        if kind == ServerKind::Nginx {
            let conf = env.work.dir.join("nginx/nginx.conf");
            std::fs::write(&conf, env.nginx_conf()).map_err(|source| ServerError::Spawn {
                what: conf.display().to_string(),
                source,
            })?;
        }
        let log = env.logs.join(format!("{kind}.log"));
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| ServerError::Spawn {
                    what: p.display().to_string(),
                    source,
                })
        };
        let out = open(&log)?;
        let err = out.try_clone().map_err(|source| ServerError::Spawn {
            what: log.display().to_string(),
            source,
        })?;
        let (mut cmd, ready) = env.launch(kind);
        cmd.stdout(out).stderr(err);
        let mut server = Server {
            kind,
            port,
            proc: Spawned::spawn(cmd)?,
            log,
        };
        server.wait_ready(&ready)?;
        Ok(server)
    }

    fn wait_ready(&mut self, ready: &Readiness) -> Result<(), ServerError> {
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            if interrupt::interrupted() {
                return Err(ServerError::Interrupted);
            }
            if let Some(status) = self.proc.exited() {
                return Err(ServerError::Exited {
                    kind: self.kind,
                    status: status.to_string(),
                    log: log_tail(&self.log, 20),
                });
            }
            let ok = match ready {
                Readiness::Http { path, ok_only } => match http_status(self.port, path) {
                    Some(200) => true,
                    Some(_) => !ok_only,
                    None => false,
                },
                Readiness::Listening => procfs::listening(self.port),
            };
            if ok {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(ServerError::NotReady {
                    kind: self.kind,
                    secs: READY_TIMEOUT.as_secs(),
                    log: log_tail(&self.log, 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's pid (the root of its process tree).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.proc.exited().is_none()
    }

    /// CPU ticks of its process tree.
    pub fn cpu_ticks(&self) -> Result<u64, procfs::ProcError> {
        procfs::cpu_ticks_tree(self.pid())
    }

    /// Resident memory of its process tree, KiB.
    pub fn rss_kib(&self) -> Result<u64, procfs::ProcError> {
        procfs::rss_kib_tree(self.pid())
    }

    /// Stop it (SIGTERM, then SIGKILL); also done on drop.
    pub fn stop(mut self) {
        self.proc.stop(STOP_GRACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_template_placeholders() {
        let t = "pid @TMP@/nginx.pid;\nlisten 127.0.0.1:@PORT@;\nroot @ROOT@;\n";
        assert_eq!(
            fill_nginx_template(t, "/w/files", 4764, "/w/nginx"),
            "pid /w/nginx/nginx.pid;\nlisten 127.0.0.1:4764;\nroot /w/files;\n"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(parse_status_line(b"HTTP/1.1 2"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH_9.2"), None);
    }

    #[test]
    fn spawned_group_is_stopped_on_drop() {
        let mut cmd = Command::new("sh");
        // A leader that ignores TERM, with a child: both must go.
        cmd.args(["-c", "trap '' TERM; sleep 30 & wait"]);
        let p = Spawned::spawn(cmd).expect("spawns");
        let pid = p.pid();
        std::thread::sleep(Duration::from_millis(100));
        let kids: Vec<u32> = procfs::tree(pid)
            .expect("tree")
            .iter()
            .map(|s| s.pid)
            .collect();
        assert!(kids.len() >= 2, "{kids:?}");
        let t = Instant::now();
        drop(p);
        assert!(t.elapsed() < STOP_GRACE + Duration::from_secs(2));
        for k in kids {
            let gone = procfs::stat(k).map(|s| s.state == 'Z').unwrap_or(true);
            assert!(gone, "{k} still running");
        }
    }
}
