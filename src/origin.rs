//! `check_origin`: which browser origins may open a socket (Phoenix semantics).
//!
//! # Contract
//! * An empty policy allows every origin.
//! * A request without an `Origin` header is always allowed (native clients
//!   and Node send none; browsers always do).
//! * Each allowed entry is `scheme://host[:port]`, `//host` (any scheme and
//!   port) or `//*.example.com` (that host and its subdomains); a missing part
//!   is a wildcard, and `https://h` means port 443 as in Phoenix.
//! * An Origin that cannot be parsed (e.g. `null`) is refused by a non-empty policy.

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    scheme: Option<String>,
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

/// The configured origin policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    allowed: Vec<Allowed>,
}

struct Parsed {
    scheme: Option<String>,
    host: String,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn parse(s: &str) -> Option<Parsed> {
    let (scheme, rest) = if let Some(rest) = s.strip_prefix("//") {
        (None, rest)
    } else {
        let (scheme, rest) = s.split_once("://")?;
        (Some(scheme.to_ascii_lowercase()), rest)
    };
    let authority = rest.split('/').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p.parse::<u16>().ok()?)),
            None if after.is_empty() => (h, None),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = port.or_else(|| scheme.as_deref().and_then(default_port));
    Some(Parsed {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

impl OriginPolicy {
    /// Build from the configured list.
    pub fn parse(entries: &[String]) -> Result<OriginPolicy, String> {
        let mut allowed = Vec::with_capacity(entries.len());
        for e in entries {
            let p = parse(e)
                .ok_or_else(|| format!("`{e}` is not an origin like //host or https://host"))?;
            let (wildcard, host) = match p.host.strip_prefix("*.") {
                Some(h) => (true, h.to_owned()),
                None => (false, p.host),
            };
            allowed.push(Allowed {
                scheme: p.scheme,
                host,
                wildcard,
                port: p.port,
            });
        }
        Ok(OriginPolicy { allowed })
    }

    /// Whether a request with this `Origin` header value may connect.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        let Some(origin) = origin else {
            return true;
        };
        let Some(o) = parse(origin.trim()) else {
            return false;
        };
        self.allowed.iter().any(|a| {
            let host_ok = if a.wildcard {
                o.host == a.host || o.host.ends_with(&format!(".{}", a.host))
            } else {
                o.host == a.host
            };
            let scheme_ok = a.scheme.is_none() || a.scheme == o.scheme;
            let port_ok = a.port.is_none() || a.port == o.port;
            host_ok && scheme_ok && port_ok
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OriginPolicy {
        OriginPolicy::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn empty_allows_all() {
        assert!(policy(&[]).allows(Some("http://evil.test")));
    }

    #[test]
    fn no_origin_header_allowed() {
        assert!(policy(&["//example.com"]).allows(None));
    }

    #[test]
    fn host_only_entries() {
        let p = policy(&["//example.com"]);
        assert!(p.allows(Some("http://example.com")));
        assert!(p.allows(Some("https://example.com:8443")));
        assert!(!p.allows(Some("https://other.com")));
        assert!(!p.allows(Some("null")));
    }

    #[test]
    fn scheme_and_port() {
        let p = policy(&["https://example.com"]);
        assert!(p.allows(Some("https://example.com")));
        assert!(!p.allows(Some("http://example.com")));
        assert!(!p.allows(Some("https://example.com:8443")));
        let p = policy(&["http://localhost:4000"]);
        assert!(p.allows(Some("http://localhost:4000")));
        assert!(!p.allows(Some("http://localhost:4001")));
    }

    #[test]
    fn wildcard_subdomains() {
        let p = policy(&["//*.example.com"]);
        assert!(p.allows(Some("https://example.com")));
        assert!(p.allows(Some("https://a.b.example.com")));
        assert!(!p.allows(Some("https://badexample.com")));
    }

    #[test]
    fn invalid_entries() {
        assert!(OriginPolicy::parse(&["example.com".to_string()]).is_err());
    }
}
