//! The mock's market, pure: one geometric random walk per asset and the
//! price text a message carries.
//!
//! # Contract
//! * A walk is a function of (seed, asset, tick): asking for tick `n` gives
//!   the same price whoever asks and however often.
//! * Prices stay within 1/1000 and 1000 times the start price, so they are
//!   always finite and positive, and [`format_price`] output always passes
//!   [`feed::parse_price`](crate::relay::feed::parse_price).

use rand::{Rng, SeedableRng};

use crate::relay::feed;

/// Largest price change per tick, as a fraction (a geometric random walk).
pub(super) const VOLATILITY: f64 = 0.001;
/// Most walk steps replayed to catch an idle asset up to the current tick.
const MAX_CATCH_UP: u64 = 10_000;

/// Start prices of well-known assets; other names get one from their hash.
const KNOWN: &[(&str, f64)] = &[
    ("bitcoin", 91_000.0),
    ("ethereum", 3_000.0),
    ("solana", 150.0),
    ("dogecoin", 0.15),
    ("cardano", 0.6),
    ("tether", 1.0),
    ("xrp", 2.2),
    ("litecoin", 100.0),
];

/// One asset's geometric random walk, a function of (seed, asset, tick).
#[derive(Debug)]
pub(super) struct Walk {
    tick: u64,
    price: f64,
    pub(super) start: f64,
    rng: rand::rngs::StdRng,
}

impl Walk {
    pub(super) fn new(seed: u64, asset: &str, tick: u64) -> Walk {
        let start = start_price(asset);
        Walk {
            tick,
            price: start,
            start,
            rng: rand::rngs::StdRng::seed_from_u64(seed ^ fnv1a(asset)),
        }
    }

    /// Advance to tick `n` (earlier ticks give the current price).
    pub(super) fn price_at(&mut self, n: u64) -> f64 {
        let steps = n.saturating_sub(self.tick).min(MAX_CATCH_UP);
        for _ in 0..steps {
            let u: f64 = self.rng.gen_range(-1.0..=1.0);
            let next = self.price * (VOLATILITY * u).exp();
            self.price = next.clamp(self.start / 1000.0, self.start * 1000.0);
        }
        self.tick = self.tick.max(n);
        self.price
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A plausible start price: a known asset's, else 1.00–9.99 × 10^(-2..=4)
/// from the name's hash.
pub(super) fn start_price(asset: &str) -> f64 {
    if let Some((_, p)) = KNOWN.iter().find(|(a, _)| *a == asset) {
        return *p;
    }
    let h = fnv1a(asset);
    let mantissa = 1.0 + (h % 900) as f64 / 100.0;
    let exponent = ((h >> 16) % 7) as i32 - 2;
    mantissa * 10f64.powi(exponent)
}

/// About 7 significant digits, 2 to 12 decimals: `91234.12`, `3012.500`,
/// `0.1534210`.
pub fn format_price(price: f64) -> String {
    let magnitude = if price > 0.0 {
        price.log10().floor() as i32
    } else {
        0
    };
    let decimals = (6 - magnitude).clamp(2, 12) as usize;
    format!("{price:.decimals$}")
}

/// The message for the assets whose price text changed since `last`
/// (updating `last`), or `None` when nothing changed.
pub(super) fn changed(
    last: &mut [Option<String>],
    assets: &[String],
    prices: Vec<Option<String>>,
) -> Option<String> {
    let mut out: Vec<(&str, String)> = Vec::new();
    for ((asset, prev), price) in assets.iter().zip(last.iter_mut()).zip(prices) {
        if let Some(price) = price {
            if prev.as_deref() != Some(price.as_str()) {
                *prev = Some(price.clone());
                out.push((asset, price));
            }
        }
    }
    (!out.is_empty()).then(|| feed::encode(&out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn walks_depend_only_on_seed_asset_and_tick() {
        let mut a = Walk::new(7, "bitcoin", 0);
        let mut b = Walk::new(7, "bitcoin", 0);
        let mut c = Walk::new(8, "bitcoin", 0);
        let pa: Vec<f64> = (1..50).map(|n| a.price_at(n * 3)).collect();
        // b is asked less often but lands on the same prices.
        assert_eq!(b.price_at(147), pa[48]);
        assert_ne!(c.price_at(147), pa[48]);
        // Going back in time gives the current price.
        assert_eq!(a.price_at(10), pa[48]);
        for w in pa.windows(2) {
            let ratio = w[1] / w[0];
            assert!(
                ratio > (-3.0 * VOLATILITY).exp() - 1e-12
                    && ratio < (3.0 * VOLATILITY).exp() + 1e-12
            );
        }
    }

    #[test]
    fn walks_stay_bounded() {
        let mut w = Walk::new(1, "dogecoin", 0);
        let p = w.price_at(u64::MAX);
        assert!(p.is_finite() && p >= w.start / 1000.0 && p <= w.start * 1000.0);
    }

    #[test]
    fn start_prices() {
        assert_eq!(start_price("bitcoin"), 91_000.0);
        assert_eq!(start_price("foo-coin"), start_price("foo-coin"));
        for name in ["a", "foo-coin", "zzz", "0x-123"] {
            let p = start_price(name);
            assert!((0.01..100_000.0).contains(&p), "{name}: {p}");
        }
    }

    #[test]
    fn price_formatting() {
        assert_eq!(format_price(91234.123), "91234.12");
        assert_eq!(format_price(3012.5), "3012.500");
        assert_eq!(format_price(150.0), "150.0000");
        assert_eq!(format_price(0.153421), "0.1534210");
        assert_eq!(format_price(1.0), "1.000000");
    }

    #[test]
    fn only_changed_assets_are_sent() {
        let assets: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let mut last = vec![None; 3];
        let p = |v: [Option<&str>; 3]| v.map(|x| x.map(String::from)).to_vec();
        let m = changed(&mut last, &assets, p([Some("1"), Some("2"), None])).unwrap();
        assert_eq!(m, r#"{"a":"1","b":"2"}"#);
        let m = changed(&mut last, &assets, p([Some("1"), Some("3"), None])).unwrap();
        assert_eq!(m, r#"{"b":"3"}"#);
        assert_eq!(
            changed(&mut last, &assets, p([Some("1"), Some("3"), None])),
            None
        );
    }

    proptest! {
        #[test]
        fn formatted_prices_parse(exp in -5.0f64..9.0, mantissa in 1.0f64..10.0) {
            let price = mantissa * 10f64.powf(exp);
            let text = format_price(price);
            let back = feed::parse_price(&text).unwrap();
            prop_assert!((back - price).abs() / price < 1e-5, "{price} -> {text}");
        }
    }
}
