//! The coincap price feed format, sans-IO: one upstream text message is a
//! JSON object mapping asset ids to prices sent as strings,
//! `{"bitcoin":"91234.12","ethereum":"3012.5"}`.
//!
//! # Contract
//! * [`parse`] takes the bytes of one whole message and never panics. A
//!   message that is not JSON or not an object is a [`FeedError`]; inside an
//!   object, **each entry is judged on its own**: a bad entry is skipped and
//!   counted in [`Parsed::rejected`], the good ones are returned. One bad
//!   asset does not hide the prices of the others; the caller counts a
//!   message with `rejected > 0` as malformed for metrics.
//! * An entry is accepted when its key passes [`valid_asset`] and its value
//!   is a JSON string holding a plain decimal (`digits[.digits][e[+-]digits]`,
//!   no sign, no whitespace, at most [`MAX_PRICE_LEN`] bytes) whose value is
//!   finite and greater than zero. `"inf"`, `"NaN"`, `"-1"`, `"0"`, `"1e400"`
//!   and JSON numbers (`{"bitcoin": 1}`) are rejected.
//! * Ticks keep the message's order; a repeated asset yields one tick per
//!   occurrence (the last one wins when applied in order).
//! * [`encode`] writes the same format; `parse(encode(x))` gives back `x`.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Longest accepted asset id, in bytes.
pub const MAX_ASSET_LEN: usize = 64;
/// Longest accepted price text, in bytes.
pub const MAX_PRICE_LEN: usize = 64;

/// One price update for one asset.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// The asset id, valid per [`valid_asset`].
    pub asset: String,
    /// The price: finite and greater than zero.
    pub value: f64,
    /// The price text exactly as the upstream sent it (after JSON unescaping).
    pub raw: String,
}

/// The good entries of one message, and how many entries were skipped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// Accepted ticks, in message order.
    pub ticks: Vec<Tick>,
    /// Entries skipped as malformed.
    pub rejected: usize,
    /// Why the first skipped entry was skipped (for a debug log line).
    pub first_reject: Option<Reject>,
}

impl Parsed {
    /// True when no entry was rejected.
    pub fn is_clean(&self) -> bool {
        self.rejected == 0
    }
}

/// Why a whole message was refused.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Not UTF-8 or not JSON at all.
    #[error("not a JSON message: {0}")]
    Json(#[source] serde_json::Error),
    /// JSON, but not an object (an array, a string, `null`, ...).
    #[error("not a JSON object")]
    NotObject,
}

impl FeedError {
    /// A bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            FeedError::Json(_) => "json",
            FeedError::NotObject => "not_object",
        }
    }
}

/// Why one entry of an object was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// The key is not a valid asset id ([`valid_asset`]).
    #[error("invalid asset id")]
    Asset,
    /// The value is not a JSON string.
    #[error("price is not a string")]
    NotString,
    /// The string is not a plain decimal number.
    #[error("price is not a decimal number")]
    Number,
    /// The number is zero, too small to represent, or too large.
    #[error("price is not finite and positive")]
    OutOfRange,
}

impl Reject {
    /// A bounded label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Asset => "asset",
            Reject::NotString => "not_string",
            Reject::Number => "number",
            Reject::OutOfRange => "out_of_range",
        }
    }
}

/// True for a coincap-style asset id: 1..=[`MAX_ASSET_LEN`] bytes of
/// `[a-z0-9-]`.
pub fn valid_asset(asset: &str) -> bool {
    !asset.is_empty()
        && asset.len() <= MAX_ASSET_LEN
        && asset
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parse one upstream message. See the module contract for what is accepted.
pub fn parse(text: &[u8]) -> Result<Parsed, FeedError> {
    let entries: Entries<'_> = serde_json::from_slice(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => FeedError::NotObject,
        _ => FeedError::Json(e),
    })?;
    let mut parsed = Parsed {
        ticks: Vec::with_capacity(entries.0.len()),
        ..Parsed::default()
    };
    for (asset, value) in entries.0 {
        match entry(asset, value) {
            Ok(tick) => parsed.ticks.push(tick),
            Err(reject) => {
                parsed.rejected += 1;
                parsed.first_reject.get_or_insert(reject);
            }
        }
    }
    Ok(parsed)
}

/// Encode `(asset, price text)` pairs as one message, in order.
pub fn encode<A: AsRef<str>, P: AsRef<str>>(ticks: &[(A, P)]) -> String {
    let mut out = String::with_capacity(2 + ticks.len() * 32);
    out.push('{');
    for (i, (asset, price)) in ticks.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // `Value`'s Display is infallible and escapes as JSON.
        out.push_str(&serde_json::Value::from(asset.as_ref()).to_string());
        out.push(':');
        out.push_str(&serde_json::Value::from(price.as_ref()).to_string());
    }
    out.push('}');
    out
}

fn entry(asset: String, value: &RawValue) -> Result<Tick, Reject> {
    if !valid_asset(&asset) {
        return Err(Reject::Asset);
    }
    if !value.get().starts_with('"') {
        return Err(Reject::NotString);
    }
    let raw: String = serde_json::from_str(value.get()).map_err(|_| Reject::NotString)?;
    let value = parse_price(&raw)?;
    Ok(Tick { asset, value, raw })
}

/// Parse a plain decimal price text (see the module contract).
pub fn parse_price(raw: &str) -> Result<f64, Reject> {
    if raw.is_empty() || raw.len() > MAX_PRICE_LEN || !plain_decimal(raw.as_bytes()) {
        return Err(Reject::Number);
    }
    let value: f64 = raw.parse().map_err(|_| Reject::Number)?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Reject::OutOfRange)
    }
}

/// `digits[.digits][(e|E)[+-]digits]`
fn plain_decimal(s: &[u8]) -> bool {
    fn digits(s: &[u8]) -> usize {
        s.iter().take_while(|b| b.is_ascii_digit()).count()
    }
    let int = digits(s);
    if int == 0 {
        return false;
    }
    let mut rest = &s[int..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = digits(frac);
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    if let Some(exp) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let exp = exp
            .strip_prefix(b"+")
            .or_else(|| exp.strip_prefix(b"-"))
            .unwrap_or(exp);
        let n = digits(exp);
        if n == 0 {
            return false;
        }
        rest = &exp[n..];
    }
    rest.is_empty()
}

// === impl Entries ===

/// The entries of one object in message order, values left unparsed (so a
/// number literal out of f64 range is one rejected entry, not a bad message).
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of asset → price")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Entries<'de>, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(text: &str) -> Parsed {
        parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn parses_a_coincap_message_in_order() {
        let p = ok(r#"{"bitcoin":"91234.12","ethereum":"3012.5"}"#);
        assert!(p.is_clean());
        assert_eq!(
            p.ticks,
            vec![
                Tick {
                    asset: "bitcoin".into(),
                    value: 91234.12,
                    raw: "91234.12".into()
                },
                Tick {
                    asset: "ethereum".into(),
                    value: 3012.5,
                    raw: "3012.5".into()
                },
            ]
        );
    }

    #[test]
    fn empty_object_is_clean_and_empty() {
        let p = ok("{}");
        assert!(p.ticks.is_empty() && p.is_clean());
        let p = ok(" { } ");
        assert!(p.ticks.is_empty());
    }

    #[test]
    fn whole_message_errors() {
        for (text, label) in [
            ("", "json"),
            ("{", "json"),
            ("not json", "json"),
            (r#"{"bitcoin":"1"} trailing"#, "json"),
            ("[1,2]", "not_object"),
            (r#""bitcoin""#, "not_object"),
            ("null", "not_object"),
            ("42", "not_object"),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert_eq!(e.label(), label, "{text:?}: {e}");
        }
        assert_eq!(parse(b"\xff\xfe").unwrap_err().label(), "json");
    }

    #[test]
    fn bad_entries_are_skipped_and_counted() {
        let p = ok(concat!(
            r#"{"bitcoin":"1.5","":"1","BTC":"1","a b":"1","#,
            r#""solana":1,"x":null,"y":{"z":"1"},"dogecoin":"-1","#,
            r#""cardano":"0","tether":"NaN","usd":"inf","big":"1e400","#,
            r#""tiny":"1e-400","sp":" 1","plus":"+1","dot":"1.","lead":".5","#,
            r#""huge":1e400,"ethereum":"2e3"}"#
        ));
        let assets: Vec<_> = p.ticks.iter().map(|t| t.asset.as_str()).collect();
        assert_eq!(assets, ["bitcoin", "ethereum"]);
        assert_eq!(p.ticks[1].value, 2000.0);
        assert_eq!(p.rejected, 17);
        assert_eq!(p.first_reject, Some(Reject::Asset));
    }

    #[test]
    fn reject_reasons() {
        let first = |t: &str| ok(t).first_reject;
        assert_eq!(first(r#"{"bitcoin":1}"#), Some(Reject::NotString));
        assert_eq!(first(r#"{"bitcoin":"abc"}"#), Some(Reject::Number));
        assert_eq!(first(r#"{"bitcoin":"0.000"}"#), Some(Reject::OutOfRange));
        assert_eq!(first(r#"{"bitcoin":"1e999"}"#), Some(Reject::OutOfRange));
        let long = "9".repeat(MAX_PRICE_LEN + 1);
        assert_eq!(
            first(&format!(r#"{{"bitcoin":"{long}"}}"#)),
            Some(Reject::Number)
        );
    }

    #[test]
    fn escapes_are_decoded() {
        let p = ok(r#"{"bit\u0063oin":"\u0031.5"}"#);
        assert_eq!(p.ticks[0].asset, "bitcoin");
        assert_eq!(p.ticks[0].raw, "1.5");
    }

    #[test]
    fn duplicates_are_kept_in_order() {
        let p = ok(r#"{"bitcoin":"1","bitcoin":"2"}"#);
        let raws: Vec<_> = p.ticks.iter().map(|t| t.raw.as_str()).collect();
        assert_eq!(raws, ["1", "2"]);
    }

    #[test]
    fn asset_validation() {
        assert!(valid_asset("bitcoin"));
        assert!(valid_asset("binance-coin"));
        assert!(valid_asset("0x"));
        assert!(valid_asset(&"a".repeat(MAX_ASSET_LEN)));
        assert!(!valid_asset(&"a".repeat(MAX_ASSET_LEN + 1)));
        assert!(!valid_asset(""));
        assert!(!valid_asset("Bitcoin"));
        assert!(!valid_asset("bit coin"));
        assert!(!valid_asset("bit_coin"));
        assert!(!valid_asset("bitcoin:usd"));
        assert!(!valid_asset("é"));
    }

    #[test]
    fn encode_escapes() {
        assert_eq!(encode::<&str, &str>(&[]), "{}");
        assert_eq!(
            encode(&[("bitcoin", "1.5"), ("a\"b", "x")]),
            r#"{"bitcoin":"1.5","a\"b":"x"}"#
        );
    }

    fn price() -> impl Strategy<Value = String> {
        prop_oneof![
            "[1-9][0-9]{0,8}",
            "[0-9]{1,6}\\.[0-9]{1,10}[1-9]",
            "[1-9]\\.[0-9]{1,6}[eE][+-]?[1-9][0-9]?",
        ]
    }

    proptest! {
        #[test]
        fn parse_encode_roundtrip(
            entries in proptest::collection::vec(("[a-z0-9-]{1,64}", price()), 0..20)
        ) {
            let p = parse(encode(&entries).as_bytes()).unwrap();
            prop_assert!(p.is_clean());
            let back: Vec<(String, String)> =
                p.ticks.iter().map(|t| (t.asset.clone(), t.raw.clone())).collect();
            prop_assert_eq!(back, entries);
            for t in &p.ticks {
                prop_assert!(t.value.is_finite() && t.value > 0.0);
                prop_assert_eq!(t.value, t.raw.parse::<f64>().unwrap());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_entries_are_accounted(
            entries in proptest::collection::vec((".{0,70}", ".{0,20}"), 0..12)
        ) {
            let p = parse(encode(&entries).as_bytes()).unwrap();
            prop_assert_eq!(p.ticks.len() + p.rejected, entries.len());
            for t in &p.ticks {
                prop_assert!(valid_asset(&t.asset));
                prop_assert!(t.value.is_finite() && t.value > 0.0);
            }
        }

        #[test]
        fn arbitrary_json_never_panics(text in "[{}\\[\\]\":,0-9a-z.eE+ -]{0,64}") {
            let _ = parse(text.as_bytes());
        }
    }
}
