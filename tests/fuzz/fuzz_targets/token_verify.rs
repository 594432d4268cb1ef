//! `token::verify` on fuzzed input, two ways (chosen by the first byte):
//! * even: the rest, as text, is the token: exercises splitting, base64 and
//!   the MAC check;
//! * odd: the rest is a payload that gets a *valid* HS256 signature (key
//!   derived here with pbkdf2, independently of sluice), so the fuzzer reaches
//!   the term decoder and the payload/expiry rules behind the MAC.
//!
//! Bytes 1..9 of the input also pick `now_ms`.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use sluice::token::{self, Key, MaxAge, TokenError, VerifyOptions};

const SECRET: &[u8] = b"fuzz secret key base, at least sixty-four bytes long for phoenix ok";
const SALT: &[u8] = b"user socket";

fn keys() -> &'static (Key, [u8; 32]) {
    static KEYS: OnceLock<(Key, [u8; 32])> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut raw = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(SECRET, SALT, 1000, &mut raw);
        (Key::derive(SECRET, SALT), raw)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now_ms = rest
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let opts = VerifyOptions {
        max_age: match (mode >> 1) & 3 {
            0 => None,
            1 => Some(MaxAge::Infinity),
            2 => Some(MaxAge::Seconds(0)),
            _ => Some(MaxAge::Seconds(86_400)),
        },
        max_future_skew_ms: 60_000,
    };
    let (key, raw_key) = keys();
    if mode & 1 == 0 {
        let text = String::from_utf8_lossy(rest);
        let _ = token::verify(key, Some(&text), now_ms, &opts);
    } else {
        let signed_text = format!("SFMyNTY.{}", URL_SAFE_NO_PAD.encode(rest));
        let mut mac = Hmac::<Sha256>::new_from_slice(raw_key).expect("any key length");
        mac.update(signed_text.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let tok = format!("{signed_text}.{tag}");
        let result = token::verify(key, Some(&tok), now_ms, &opts);
        if tok.len() <= token::MAX_TOKEN_LEN {
            // The MAC is right, so only the payload can make it invalid.
            if result.is_ok() || matches!(result, Err(TokenError::Expired | TokenError::FromFuture))
            {
                assert!(
                    token::etf::decode(rest).is_ok(),
                    "accepted a payload that is not a term"
                );
            }
            assert_ne!(result, Err(TokenError::Missing));
        }
    }
});
