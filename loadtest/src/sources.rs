//! `--source-addrs`: the local addresses outgoing connections are bound to,
//! in rotation (connection `i` binds `addrs[i % n]`, port 0).
//!
//! One source address gives at most the kernel's ephemeral port range
//! (about 28 000 ports on Linux) of connections to one server address;
//! rotating over several lifts that. On Linux all of 127.0.0.0/8 is local,
//! so `127.0.0.1-127.0.0.20` works on loopback without configuration.
//!
//! # Syntax
//! A comma-separated list of items, each an IPv4 or IPv6 address or a
//! range `FIRST-LAST` whose ends differ only in the last octet (IPv4) or
//! the last 16-bit group (IPv6), `FIRST <= LAST`, at most [`MAX_RANGE`]
//! addresses. Order is kept; duplicates are allowed (they weigh more).
//!
//! # Contract
//! * [`SourceAddrs::parse`] accepts exactly the syntax above and says what
//!   is wrong otherwise ([`SourceError`]); the list is never empty.
//! * The list's size is bounded by its text: at most [`MAX_RANGE`]
//!   addresses per item.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Most addresses one range may expand to.
pub const MAX_RANGE: usize = 256;

/// The source addresses, in rotation order (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddrs(Vec<IpAddr>);

/// Why a `--source-addrs` list is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Nothing was given, or an item between commas is empty.
    #[error("empty address in the list")]
    Empty,
    /// An item is not an IP address.
    #[error("{0:?} is not an IP address")]
    Addr(String),
    /// A range is malformed.
    #[error("bad range {range:?}: {why}")]
    Range {
        /// The range as given.
        range: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl SourceAddrs {
    /// Parse a list (see the module docs).
    pub fn parse(list: &str) -> Result<SourceAddrs, SourceError> {
        let mut addrs = Vec::new();
        for item in list.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(SourceError::Empty);
            }
            match item.split_once('-') {
                None => addrs.push(addr(item)?),
                Some((first, last)) => range(item, first.trim(), last.trim(), &mut addrs)?,
            }
        }
        Ok(SourceAddrs(addrs))
    }

    /// The address connection `i` binds to.
    pub fn pick(&self, i: usize) -> IpAddr {
        // Never empty (parse refuses an empty list).
        self.0[i % self.0.len()]
    }

    /// Every address, in rotation order.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.0
    }

    /// How many addresses are in rotation.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false (kept for the `len` convention).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for SourceAddrs {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SourceAddrs::parse(s)
    }
}

fn addr(s: &str) -> Result<IpAddr, SourceError> {
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| SourceError::Addr(s.to_owned()))
}

/// Expand `first-last` into `out`.
fn range(item: &str, first: &str, last: &str, out: &mut Vec<IpAddr>) -> Result<(), SourceError> {
    let bad = |why| SourceError::Range {
        range: item.to_owned(),
        why,
    };
    match (addr(first)?, addr(last)?) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let (a, b) = (a.octets(), b.octets());
            if a[..3] != b[..3] {
                return Err(bad("the ends may differ only in the last octet"));
            }
            if a[3] > b[3] {
                return Err(bad("the first address is after the last"));
            }
            out.extend((a[3]..=b[3]).map(|o| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], o))));
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let (a, b) = (a.segments(), b.segments());
            if a[..7] != b[..7] {
                return Err(bad("the ends may differ only in the last group"));
            }
            if a[7] > b[7] {
                return Err(bad("the first address is after the last"));
            }
            if usize::from(b[7] - a[7]) >= MAX_RANGE {
                return Err(bad("more than 256 addresses"));
            }
            out.extend((a[7]..=b[7]).map(|g| {
                let mut s = a;
                s[7] = g;
                IpAddr::V6(Ipv6Addr::from(s))
            }));
        }
        _ => return Err(bad("the ends are of different families")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn lists_and_ranges() {
        let s = SourceAddrs::parse("127.0.0.1").expect("parses");
        assert_eq!(s.addrs(), [v4("127.0.0.1")]);
        let s = SourceAddrs::parse("127.0.0.2-127.0.0.4, ::1,10.1.2.3").expect("parses");
        assert_eq!(
            s.addrs(),
            [
                v4("127.0.0.2"),
                v4("127.0.0.3"),
                v4("127.0.0.4"),
                v4("::1"),
                v4("10.1.2.3")
            ]
        );
        assert_eq!(
            (s.pick(0), s.pick(4), s.pick(5)),
            (v4("127.0.0.2"), v4("10.1.2.3"), v4("127.0.0.2"))
        );
        assert_eq!(
            SourceAddrs::parse("127.0.0.0-127.0.0.255")
                .expect("parses")
                .len(),
            256
        );
        assert_eq!(
            SourceAddrs::parse("127.0.0.9-127.0.0.9")
                .expect("parses")
                .len(),
            1
        );
        let s = SourceAddrs::parse("[fd00::1]-[fd00::3]").expect("parses");
        assert_eq!(s.addrs()[2], v4("fd00::3"));
        assert_eq!(
            "127.0.0.1,127.0.0.1"
                .parse::<SourceAddrs>()
                .expect("parses")
                .len(),
            2
        );
    }

    #[test]
    fn bad_lists_say_why() {
        assert_eq!(SourceAddrs::parse(""), Err(SourceError::Empty));
        assert_eq!(
            SourceAddrs::parse("127.0.0.1,,127.0.0.2"),
            Err(SourceError::Empty)
        );
        assert!(matches!(
            SourceAddrs::parse("localhost"),
            Err(SourceError::Addr(_))
        ));
        assert!(matches!(
            SourceAddrs::parse("127.0.0.1-x"),
            Err(SourceError::Addr(_))
        ));
        for (bad, why) in [
            ("127.0.0.5-127.0.0.4", "the first address is after the last"),
            (
                "127.0.0.1-127.0.1.1",
                "the ends may differ only in the last octet",
            ),
            ("127.0.0.1-::1", "the ends are of different families"),
            ("::1-::1:1", "the ends may differ only in the last group"),
            ("fd00::0-fd00::100", "more than 256 addresses"),
        ] {
            match SourceAddrs::parse(bad) {
                Err(SourceError::Range { why: w, .. }) => assert_eq!(w, why, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(SourceAddrs::parse("fd00::0-fd00::ff").is_ok());
    }
}
