//! Parsers for the value syntaxes used in configuration: durations (`250ms`,
//! `30s`, `2m`), sizes (`8MiB`, `64KiB`, `1024`), and lists (`a,b,c`).
//!
//! Each parser returns `Err(reason)` with a short human reason; the caller
//! attaches the key and the source of the value.

use std::net::SocketAddr;
use std::time::Duration;

/// Parse a duration such as `250ms`, `30s`, `2m`, `1h`, `14d`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as 250ms, 30s, 2m)"))
}

/// Parse a size such as `8MiB`, `64KiB`, `512B` or a plain byte count.
pub fn size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e} (expected a size such as 8MiB, 64KiB, 1024)"))
}

/// Parse a size that must fit in memory (`usize`) and be non-zero.
pub fn nonzero_size(s: &str) -> Result<usize, String> {
    let n = size(s)?;
    if n == 0 {
        return Err("must be greater than zero".into());
    }
    usize::try_from(n).map_err(|_| "too large for this machine".into())
}

/// Parse a positive integer.
pub fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (expected a positive integer)")),
    }
}

/// Parse a socket address such as `127.0.0.1:4000` or `[::1]:4000`.
pub fn addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse::<SocketAddr>()
        .map_err(|e| format!("{e} (expected an address such as 127.0.0.1:4000)"))
}

/// A boolean: true/false, yes/no, on/off, 1/0.
pub fn boolean(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Any non-empty string.
pub fn string(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

/// An optional string: empty means unset.
pub fn opt_string(s: &str) -> Result<Option<String>, String> {
    Ok(if s.is_empty() {
        None
    } else {
        Some(s.to_owned())
    })
}

/// A comma-separated list; blank entries are ignored.
pub fn list(s: &str) -> Result<Vec<String>, String> {
    Ok(s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A filesystem path (not checked for existence here).
pub fn path(s: &str) -> Result<std::path::PathBuf, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(std::path::PathBuf::from(s))
}

/// A string that may be empty (kept as is).
pub fn opt_string_plain(s: &str) -> Result<String, String> {
    Ok(s.trim().to_owned())
}

/// A rate in events per second: finite, > 0, at most 1000.
pub fn rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number of events per second, e.g. 2 or 0.5".to_owned())?;
    if !(r.is_finite() && r > 0.0 && r <= 1000.0) {
        return Err("must be greater than 0 and at most 1000".into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("banana").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size("8MiB"), Ok(8 * 1024 * 1024));
        assert_eq!(size("64KiB"), Ok(64 * 1024));
        assert_eq!(size("1024"), Ok(1024));
        assert!(size("lots").is_err());
        assert!(nonzero_size("0").is_err());
    }

    #[test]
    fn lists() {
        assert_eq!(
            list("a, b,,c"),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(list(""), Ok(vec![]));
    }
}
