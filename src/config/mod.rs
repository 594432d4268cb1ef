//! Typed configuration, layered as flags > environment > TOML file > defaults.
//!
//! # Contract
//! * Every setting has one key (`max_frame_bytes`), one flag (`--max-frame-bytes`),
//!   one environment variable (`SLUICE_MAX_FRAME_BYTES`) and one TOML key
//!   (`max_frame_bytes = "8MiB"`), with a documented default.
//! * [`Config::load`] validates everything before any port is bound; an invalid
//!   value is a [`ConfigError`] naming the key, the source and the reason. The
//!   binary exits with code 64 (EX_USAGE) on it.
//! * The list of settings lives in one table (the `settings!` invocation below);
//!   `docs/CONFIG.md` documents the same table.

pub mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::origin::OriginPolicy;
use crate::router::RouteSpec;

/// Where a configuration value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// A `SLUICE_*` environment variable.
    Env,
    /// The TOML file given with `--config`.
    File,
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Env => "environment",
            Source::File => "config file",
            Source::Default => "default",
        })
    }
}

/// A configuration problem, found before the server binds anything.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid value {value:?} for `{key}` (--{flag}, from {from}): {reason}")]
    Invalid {
        /// The setting key, e.g. `max_frame_bytes`.
        key: &'static str,
        /// The flag spelling, e.g. `max-frame-bytes`.
        flag: String,
        /// Where the value came from.
        from: Source,
        /// The offending value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The config file could not be read or parsed.
    #[error("cannot read config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The config file has a key Sluice does not know.
    #[error("unknown key `{key}` in config file {path}")]
    UnknownKey {
        /// The key.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// Settings that are each valid but conflict.
    #[error("invalid configuration: `{key}`: {reason}")]
    Conflict {
        /// The key at fault.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// What to do with a subscriber whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close the socket with 1013 (try again later); the client reconnects.
    Disconnect,
    /// Drop the message for that subscriber and count it.
    Drop,
}

fn slow_consumer(s: &str) -> Result<SlowConsumerPolicy, String> {
    match s.trim() {
        "disconnect" => Ok(SlowConsumerPolicy::Disconnect),
        "drop" => Ok(SlowConsumerPolicy::Drop),
        _ => Err("expected `disconnect` or `drop`".into()),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `text` or `json`".into()),
    }
}

fn routes(s: &str) -> Result<Vec<RouteSpec>, String> {
    values::list(s)?
        .iter()
        .map(|r| RouteSpec::parse(r))
        .collect()
}

fn origins(s: &str) -> Result<OriginPolicy, String> {
    OriginPolicy::parse(&values::list(s)?)
}

fn socket_paths(s: &str) -> Result<Vec<String>, String> {
    let paths = values::list(s)?;
    if paths.is_empty() {
        return Err("at least one path is needed".into());
    }
    for p in &paths {
        if !p.starts_with('/') || p.ends_with('/') || p.contains('?') {
            return Err(format!("`{p}` must start with `/` and not end with `/`"));
        }
    }
    Ok(paths)
}

fn secret(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() < 20 {
        return Err("must be at least 20 bytes (Phoenix's minimum for secret_key_base)".into());
    }
    Ok(Some(s.to_owned()))
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:literal via $parser:path ;)*) => {
        /// Raw setting values as given on the command line (all optional).
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct Flags {
            /// Read settings from this TOML file (flags and SLUICE_* variables override it).
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[doc = concat!("\n\n[env: SLUICE_", stringify!($field), "] [default: ", $default, "]")]
                #[arg(long, value_name = "VALUE", verbatim_doc_comment)]
                pub $field: Option<String>,
            )*
        }

        /// The validated configuration.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        /// Every setting key with its default value text, in documentation order.
        pub const SETTINGS: &[(&str, &str)] = &[ $( (stringify!($field), $default), )* ];

        impl Config {
            fn build(flags: &Flags, env: &dyn Fn(&str) -> Option<String>, file: &toml::Table) -> Result<Config, ConfigError> {
                Ok(Config { $(
                    $field: {
                        let key = stringify!($field);
                        let (source, value) = pick(key, flags.$field.as_deref(), env, file);
                        $parser(&value).map_err(|reason| ConfigError::Invalid {
                            key, flag: key.replace('_', "-"), from: source, value, reason,
                        })?
                    },
                )* })
            }
        }
    };
}

settings! {
    /// Address to listen on.
    listen: SocketAddr = "127.0.0.1:4000" via values::addr;
    /// Phoenix `secret_key_base` used to verify socket tokens (at least 20 bytes).
    /// Empty: a development secret from `.sluice-dev-secrets` (created on first use; logged loudly).
    secret_key_base: Option<String> = "" via secret;
    /// Bearer key for POST /api/broadcast. Empty: the development key from `.sluice-dev-secrets`.
    api_key: Option<String> = "" via values::opt_string;
    /// Phoenix.Token salt for socket tokens.
    token_salt: String = "user socket" via values::string;
    /// Maximum age of a socket token.
    token_max_age: Duration = "1209600s" via values::duration;
    /// How far in the future a token's signing time may be (clock skew).
    token_max_skew: Duration = "60s" via values::duration;
    /// Accept sockets that present no token (their user is anonymous; only
    /// `anyone` routes admit them). Invalid or expired tokens are always refused.
    anonymous_sockets: bool = "false" via values::boolean;
    /// Mount paths of the Phoenix socket (comma list); `/websocket` is appended.
    socket_paths: Vec<String> = "/socket" via socket_paths;
    /// Allowed Origin values (comma list, Phoenix check_origin syntax: `//host`,
    /// `https://host`, `//*.example.com`). Empty: any origin is allowed.
    check_origin: OriginPolicy = "" via origins;
    /// Topic routes `PATTERN=KIND/RULE` (comma list). RULE is anyone,
    /// authenticated, owner or nobody; PATTERN is exact or ends with `*`.
    routes: Vec<RouteSpec> = "echo:*=echo/authenticated,room:*=room/authenticated,user:*=room/owner,image:*=files/authenticated,files:*=files/authenticated,prices:*=prices/anyone" via routes;
    /// Most channels one socket may join at once.
    max_channels: usize = "100" via values::positive;
    /// Most simultaneous connections (HTTP and WebSocket).
    max_connections: usize = "10000" via values::positive;
    /// Largest inbound WebSocket message (after reassembly); larger closes with 1009.
    max_frame_bytes: usize = "8MiB" via values::nonzero_size;
    /// Bytes of broadcasts and pushes that may wait for one slow socket.
    outbound_queue_bytes: usize = "4MiB" via values::nonzero_size;
    /// Bytes of replies that may wait for one socket before Sluice stops reading from it.
    control_queue_bytes: usize = "1MiB" via values::nonzero_size;
    /// What to do when a socket's outbound queue is full: `disconnect` (close 1013) or `drop`.
    slow_consumer: SlowConsumerPolicy = "disconnect" via slow_consumer;
    /// Close a socket (1001) when nothing was received from it for this long.
    idle_timeout: Duration = "60s" via values::duration;
    /// Close a socket (1013) when a write makes no progress for this long.
    write_timeout: Duration = "30s" via values::duration;
    /// Largest body accepted by POST /api/broadcast.
    max_api_body_bytes: usize = "8MiB" via values::nonzero_size;
    /// On shutdown, how long to wait for sockets to close before exiting.
    drain_grace: Duration = "30s" via values::duration;
    /// On shutdown, how many sockets to close (1012) per batch.
    drain_batch_size: usize = "1000" via values::positive;
    /// On shutdown, the pause between two batches.
    drain_batch_interval: Duration = "50ms" via values::duration;
    /// Directory the `files` channel serves downloads from. Left at the default,
    /// `sluice serve` creates demo sample files there if they are missing.
    files_dir: PathBuf = "var/files" via values::path;
    /// Directory uploads are written to (`<uploads_dir>/<user id>/`).
    uploads_dir: PathBuf = "var/uploads" via values::path;
    /// File sent by `request-image` when the push names none.
    default_file: String = "channel.png" via values::string;
    /// Default download chunk size (a client may ask for another, see max_chunk_bytes).
    chunk_bytes: usize = "256KiB" via values::nonzero_size;
    /// Largest download chunk size a client may ask for.
    max_chunk_bytes: usize = "4MiB" via values::nonzero_size;
    /// Largest file `fetch` returns as one binary reply.
    max_fetch_bytes: usize = "8MiB" via values::nonzero_size;
    /// Largest upload (verified, implicit or raw socket).
    max_upload_bytes: u64 = "4GiB" via values::size;
    /// Upload credit window: bytes a client may send before they are acknowledged.
    upload_window_bytes: usize = "8MiB" via values::nonzero_size;
    /// Upload bytes that may wait for the disk across the whole server (all
    /// uploads share it; past it sockets sending chunks are not read).
    upload_buffer_bytes: usize = "256MiB" via values::nonzero_size;
    /// Partial uploads not written to for this long are deleted (checked at
    /// start and then every quarter of it, at most hourly).
    partial_max_age: Duration = "7d" via values::duration;
    /// Most download streams running at once on one socket.
    max_streams_per_socket: usize = "16" via values::positive;
    /// Most memory-mapped files kept open for sharing between downloads.
    file_cache_entries: usize = "64" via values::positive;
    /// A file modified more recently than this is served by copying reads, not
    /// mapped (it may still be being written).
    file_settle: Duration = "2s" via values::duration;
    /// Path of the raw WebSocket upload endpoint (the seed's `/rawsocket`); empty disables it.
    raw_socket_path: String = "/rawsocket" via values::string;
    /// Upstream price feed URL template (`ws://` or `wss://`, coincap format;
    /// `{assets}` is replaced by the asset), or `simulate` for the built-in
    /// feed on loopback.
    upstream: String = "simulate" via values::string;
    /// A PEM file of CA certificates trusted for `wss://` upstreams besides
    /// the Mozilla roots. Empty: none.
    upstream_ca_file: String = "" via values::opt_string_plain;
    /// Keep an upstream open this long after its last subscriber left.
    upstream_linger: Duration = "30s" via values::duration;
    /// Most upstream connections (one per relayed asset).
    upstream_max_connections: usize = "100" via values::positive;
    /// First reconnect delay ceiling (exponential backoff, full jitter).
    upstream_backoff_base: Duration = "250ms" via values::duration;
    /// Largest reconnect delay.
    upstream_backoff_max: Duration = "30s" via values::duration;
    /// Reconnect an upstream silent (no message, no pong) for this long;
    /// pings go out every third of it.
    upstream_silence_timeout: Duration = "30s" via values::duration;
    /// Assets of the simulated feed (`upstream = simulate`).
    simulate_assets: Vec<String> = "bitcoin,ethereum,solana,dogecoin,cardano" via values::list;
    /// Price updates per second of the simulated feed.
    simulate_rate: f64 = "2" via values::rate;
    /// Log format: `text` or `json`.
    log_format: LogFormat = "text" via log_format;
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `sluice=debug`.
    log_level: String = "info" via values::string;
}

/// Pick the value for `key` from the highest-precedence layer that has it.
fn pick(
    key: &str,
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    file: &toml::Table,
) -> (Source, String) {
    if let Some(v) = flag {
        return (Source::Flag, v.to_owned());
    }
    if let Some(v) = env(&format!("SLUICE_{}", key.to_ascii_uppercase())) {
        return (Source::Env, v);
    }
    if let Some(v) = file.get(key) {
        return (Source::File, toml_to_string(v));
    }
    let default = SETTINGS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, d)| *d)
        .unwrap_or_default();
    (Source::Default, default.to_owned())
}

/// TOML values become the same text a flag would carry: arrays join with `,`.
fn toml_to_string(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items
            .iter()
            .map(toml_to_string)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

impl Config {
    /// Load from flags, the real process environment and the `--config` file.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        Self::load_with_env(flags, &|k| std::env::var(k).ok())
    }

    /// Load with an explicit environment lookup (tests).
    pub fn load_with_env(
        flags: &Flags,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file_path = flags
            .config
            .clone()
            .or_else(|| env("SLUICE_CONFIG").map(PathBuf::from));
        let file = match &file_path {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        let config = Config::build(flags, env, &file)?;
        config.validate()?;
        Ok(config)
    }

    /// The defaults, with nothing from flags, environment or file (tests, embedding).
    pub fn defaults() -> Config {
        // The defaults are literals checked by `defaults_are_valid` below.
        #[allow(clippy::expect_used)]
        Config::build(&Flags::default(), &|_| None, &toml::Table::new())
            .expect("built-in defaults are valid")
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
            ("drain_grace", self.drain_grace),
            ("partial_max_age", self.partial_max_age),
            ("upstream_backoff_base", self.upstream_backoff_base),
            ("upstream_silence_timeout", self.upstream_silence_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Conflict {
                    key,
                    reason: "must be greater than zero".into(),
                });
            }
        }
        if self.max_connections > 1_000_000 {
            return Err(ConfigError::Conflict {
                key: "max_connections",
                reason: "at most 1000000".into(),
            });
        }
        if self.chunk_bytes < 4096 || self.chunk_bytes > self.max_chunk_bytes {
            return Err(ConfigError::Conflict {
                key: "chunk_bytes",
                reason: "must be at least 4KiB and at most max_chunk_bytes".into(),
            });
        }
        if self.max_chunk_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::Conflict {
                key: "max_chunk_bytes",
                reason: "at most 64MiB".into(),
            });
        }
        if !(self.raw_socket_path.is_empty()
            || (self.raw_socket_path.starts_with('/') && !self.raw_socket_path.ends_with('/')))
        {
            return Err(ConfigError::Conflict {
                key: "raw_socket_path",
                reason: "must be empty or start with `/` and not end with `/`".into(),
            });
        }
        if self.upstream_backoff_max < self.upstream_backoff_base {
            return Err(ConfigError::Conflict {
                key: "upstream_backoff_max",
                reason: "must be at least upstream_backoff_base".into(),
            });
        }
        if self.upstream != "simulate" {
            let sample = self.upstream.replace("{assets}", "bitcoin");
            if let Err(e) = crate::relay::client::UpstreamUrl::parse(&sample) {
                return Err(ConfigError::Conflict {
                    key: "upstream",
                    reason: format!("`simulate` or a ws:// / wss:// URL template: {e}"),
                });
            }
        }
        if self.control_queue_bytes < 64 * 1024 {
            return Err(ConfigError::Conflict {
                key: "control_queue_bytes",
                reason: "must be at least 64KiB so one reply always fits".into(),
            });
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    for key in table.keys() {
        if !SETTINGS.iter().any(|(k, _)| k == key) {
            return Err(ConfigError::UnknownKey {
                key: key.clone(),
                path: path.to_owned(),
            });
        }
    }
    Ok(table)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(c.max_frame_bytes, 8 * 1024 * 1024);
        assert_eq!(c.max_channels, 100);
        assert_eq!(c.token_max_age, Duration::from_secs(1_209_600));
        assert_eq!(c.routes.len(), 6);
        assert_eq!(c.slow_consumer, SlowConsumerPolicy::Disconnect);
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = std::env::temp_dir().join(format!("sluice-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "max_channels = 7\nidle_timeout = \"5s\"\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:3".into()),
            ..Flags::default()
        };
        let env = |k: &str| match k {
            "SLUICE_LISTEN" => Some("127.0.0.1:2".to_string()),
            "SLUICE_IDLE_TIMEOUT" => Some("9s".to_string()),
            _ => None,
        };
        let c = Config::load_with_env(&flags, &env).unwrap();
        assert_eq!(c.listen.port(), 3, "flag wins");
        assert_eq!(c.idle_timeout, Duration::from_secs(9), "env beats file");
        assert_eq!(c.max_channels, 7, "file beats default");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn invalid_value_names_key_and_source() {
        let flags = Flags {
            max_frame_bytes: Some("banana".into()),
            ..Flags::default()
        };
        let err = Config::load_with_env(&flags, &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_frame_bytes"), "{err}");
        assert!(err.contains("--max-frame-bytes"), "{err}");
        assert!(err.contains("flag"), "{err}");

        let env = |k: &str| (k == "SLUICE_SLOW_CONSUMER").then(|| "maybe".to_string());
        let err = Config::load_with_env(&Flags::default(), &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("slow_consumer") && err.contains("environment"),
            "{err}"
        );
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "max_chanels = 7\n").unwrap();
        let flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        let err = Config::load_with_env(&flags, &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_chanels"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../../README.md");
        for (key, default) in SETTINGS {
            let default = if default.is_empty() {
                "(empty)"
            } else {
                default
            };
            let row = format!(
                "`{key}` · `--{}` · `SLUICE_{}` | `{default}` |",
                key.replace('_', "-"),
                key.to_ascii_uppercase()
            );
            assert!(
                readme.contains(&row),
                "README.md lacks the row for {key}: {row}"
            );
        }
    }

    #[test]
    fn short_secret_is_refused() {
        let flags = Flags {
            secret_key_base: Some("short".into()),
            ..Flags::default()
        };
        assert!(Config::load_with_env(&flags, &no_env).is_err());
    }

    #[test]
    fn file_arrays_become_lists() {
        let dir = std::env::temp_dir().join(format!("sluice-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "routes = [\"echo:*=echo/anyone\", \"lobby=room/authenticated\"]\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        let c = Config::load_with_env(&flags, &no_env).unwrap();
        assert_eq!(c.routes.len(), 2);
        std::fs::remove_dir_all(&dir).ok();
    }
}
