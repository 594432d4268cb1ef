//! `Phoenix.Token` sign and verify, bit-compatible with Plug.Crypto 2.x as
//! used by Phoenix 1.8.
//!
//! This module owns the token format: key derivation, the MAC, the payload
//! term and the expiry rules. It does not read the clock, touch sockets or
//! decide which salt or max age a route uses; callers pass `now_ms` and
//! [`VerifyOptions`] in. The Erlang term codec lives in [`etf`].
//!
//! # Format
//! * Key: PBKDF2-HMAC-SHA256(`secret_key_base`, salt, 1000 iterations, 32
//!   bytes), derived once per (secret, salt) with [`Key::derive`].
//! * Payload: `term_to_binary({data, signed_at_ms, max_age})`, `max_age` being
//!   integer seconds or the atom `:infinity`.
//! * Token: `header.b64url(payload).b64url(mac)` where the MAC is HMAC over the
//!   ASCII text `header.b64url(payload)`. [`sign`] always writes `SFMyNTY`
//!   (HS256) as Phoenix does; [`verify`] also accepts `SFMzODQ` (HS384) and
//!   `SFM1MTI` (HS512) with the same 32-byte key.
//!
//! # Contract
//! * Pure and deterministic: time comes in as milliseconds since the Unix
//!   epoch; no IO, no global state, no async.
//! * [`verify`] takes untrusted text. It never panics, refuses anything longer
//!   than [`MAX_TOKEN_LEN`] before any work, compares MACs in constant time and
//!   decodes the payload term only after the MAC has matched.
//! * Outcomes are Phoenix's `{:error, :missing | :invalid | :expired}` plus a
//!   Sluice-only [`TokenError::FromFuture`]: Phoenix accepts tokens signed in
//!   the future, Sluice refuses those signed more than
//!   [`VerifyOptions::max_future_skew_ms`] ahead of `now_ms`.
//! * Accepted payloads: `{data, signed_ms, max_age}`, the legacy `{data,
//!   signed_ms}` and the legacy map `%{data: data, signed: signed_ms}` (both
//!   legacy forms with a max age of 86 400 s), with atoms in either the OTP 25
//!   (Latin-1) or the OTP 26 (UTF-8) encoding.

pub mod etf;

pub use etf::Term;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};

/// The salt Phoenix's generated `UserSocket` signs socket tokens with.
pub const SOCKET_SALT: &str = "user socket";

/// The max age the Phoenix guides verify socket tokens with (two weeks).
pub const SOCKET_MAX_AGE: MaxAge = MaxAge::Seconds(1_209_600);

/// The max age Plug.Crypto signs with by default, and assumes for legacy
/// payloads that do not carry one (one day).
pub const DEFAULT_MAX_AGE: MaxAge = MaxAge::Seconds(86_400);

/// Longest token [`verify`] looks at; longer input is [`TokenError::Invalid`].
pub const MAX_TOKEN_LEN: usize = 4096;

/// Default for [`VerifyOptions::max_future_skew_ms`]: one minute.
pub const DEFAULT_MAX_FUTURE_SKEW_MS: u64 = 60_000;

/// PBKDF2 iterations Plug.Crypto uses by default.
const KEY_ITERATIONS: u32 = 1000;

/// Derived key length Plug.Crypto uses by default.
const KEY_LEN: usize = 32;

/// base64url; writes no padding, reads it with or without.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A derived HMAC key: PBKDF2-HMAC-SHA256(secret_key_base, salt, 1000
/// iterations, 32 bytes), as Plug.Crypto's `KeyGenerator` makes it.
///
/// Derivation is deliberately slow (1000 HMAC rounds): derive once per
/// (secret, salt) and keep the key. `Debug` never prints the key bytes.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; KEY_LEN],
}

/// How long a token stays valid after it was signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxAge {
    /// Valid for this many seconds; `Seconds(0)` is always expired.
    Seconds(u64),
    /// Never expires (`:infinity`).
    Infinity,
}

/// What [`verify`] checks besides the signature.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The max age to enforce; `None` uses the one embedded in the token, as
    /// `Phoenix.Token.verify/4` without `:max_age` does.
    pub max_age: Option<MaxAge>,
    /// How far ahead of `now_ms` a token's signing time may be before it is
    /// [`TokenError::FromFuture`] (Sluice-only; Phoenix has no such check).
    pub max_future_skew_ms: u64,
}

/// Why a token was refused. The variants are Phoenix's error atoms (plus
/// `from_future`); [`TokenError::reason`] gives a bounded metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token, or an empty one (`{:error, :missing}`).
    #[error("token missing")]
    Missing,
    /// Malformed, too long, wrongly signed, or an unexpected payload
    /// (`{:error, :invalid}`).
    #[error("token invalid")]
    Invalid,
    /// Validly signed but older than its max age (`{:error, :expired}`).
    #[error("token expired")]
    Expired,
    /// Validly signed, but at a time further ahead than the allowed clock skew.
    #[error("token signed in the future")]
    FromFuture,
}

// === impl Key ===

impl Key {
    /// Derive the key Phoenix uses for `secret_key_base` and `salt` (e.g.
    /// [`SOCKET_SALT`]).
    pub fn derive(secret_key_base: &[u8], salt: &[u8]) -> Key {
        let mut bytes = [0u8; KEY_LEN];
        pbkdf2::pbkdf2_hmac::<Sha256>(secret_key_base, salt, KEY_ITERATIONS, &mut bytes);
        Key { bytes }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

// === impl VerifyOptions ===

impl Default for VerifyOptions {
    /// The embedded max age and a [`DEFAULT_MAX_FUTURE_SKEW_MS`] skew.
    fn default() -> Self {
        VerifyOptions {
            max_age: None,
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
        }
    }
}

// === impl TokenError ===

impl TokenError {
    /// The Phoenix error atom as text: `missing`, `invalid`, `expired`, or
    /// `from_future`.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Invalid => "invalid",
            TokenError::Expired => "expired",
            TokenError::FromFuture => "from_future",
        }
    }
}

// === sign / verify ===

/// Mint a token exactly as `Phoenix.Token.sign/4` would: HS256 over
/// `term_to_binary({data, signed_at_ms, max_age})`.
///
/// The result is deterministic. A token longer than [`MAX_TOKEN_LEN`] (data
/// of roughly 3 KiB or more) is minted but will not pass [`verify`].
pub fn sign(key: &Key, data: &Term, signed_at_ms: u64, max_age: MaxAge) -> String {
    let max_age = match max_age {
        MaxAge::Seconds(s) => Term::Int(s.into()),
        MaxAge::Infinity => Term::atom("infinity"),
    };
    let payload = etf::encode(&Term::Tuple(vec![
        data.clone(),
        Term::Int(signed_at_ms.into()),
        max_age,
    ]));
    let alg = Alg::Hs256;
    let mut token = format!("{}.{}", alg.header(), B64.encode(payload));
    let tag = alg.tag(&key.bytes, token.as_bytes());
    token.push('.');
    token.push_str(&B64.encode(tag));
    token
}

/// Verify a token as `Phoenix.Token.verify/4` does and return its data.
///
/// `None` or `""` is [`TokenError::Missing`]. The max age is
/// `opts.max_age`, else the token's own; a token is expired when
/// `signed_ms + max_age * 1000 < now_ms` (equality is still valid) and always
/// when the max age is zero or negative. Expiry is checked before
/// [`TokenError::FromFuture`].
pub fn verify(
    key: &Key,
    token: Option<&str>,
    now_ms: u64,
    opts: &VerifyOptions,
) -> Result<Term, TokenError> {
    let token = match token {
        None | Some("") => return Err(TokenError::Missing),
        Some(token) => token,
    };
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Invalid);
    }
    let payload = open(key, token)?;
    let term = etf::decode(&payload).map_err(|_| TokenError::Invalid)?;
    let (data, signed_ms, embedded) = unpack(term)?;
    let lifetime = opts.max_age.map_or(embedded, Lifetime::from);
    let now_ms = i128::from(now_ms);
    if lifetime.expired(signed_ms, now_ms) {
        return Err(TokenError::Expired);
    }
    if signed_ms > now_ms + i128::from(opts.max_future_skew_ms) {
        return Err(TokenError::FromFuture);
    }
    Ok(data)
}

/// The user id a socket token carries, as text:
/// * an integer: its decimal form;
/// * a binary that is valid UTF-8: itself;
/// * a map with a `user_id` key, else an `id` key (string or atom key): that
///   value if it is an integer or a UTF-8 binary. A `user_id` key with any
///   other value gives `None` rather than falling back to `id`.
///
/// Anything else is `None`.
pub fn user_id(data: &Term) -> Option<String> {
    match data {
        Term::Map(_) => ["user_id", "id"]
            .into_iter()
            .find_map(|name| data.get_str_key(name).or_else(|| data.get_atom_key(name)))
            .and_then(scalar_id),
        _ => scalar_id(data),
    }
}

fn scalar_id(term: &Term) -> Option<String> {
    match term {
        Term::Int(v) => Some(v.to_string()),
        Term::Binary(_) => term.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Check the token's shape and MAC; return the decoded payload bytes.
fn open(key: &Key, token: &str) -> Result<Vec<u8>, TokenError> {
    let (signed_text, sig_b64) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
    let (header, payload_b64) = signed_text.split_once('.').ok_or(TokenError::Invalid)?;
    if payload_b64.contains('.') {
        return Err(TokenError::Invalid);
    }
    let alg = Alg::from_header(header).ok_or(TokenError::Invalid)?;
    let sig = B64.decode(sig_b64).map_err(|_| TokenError::Invalid)?;
    if !alg.check(&key.bytes, signed_text.as_bytes(), &sig) {
        return Err(TokenError::Invalid);
    }
    B64.decode(payload_b64).map_err(|_| TokenError::Invalid)
}

/// Split a payload term into (data, signed_ms, embedded lifetime).
fn unpack(term: Term) -> Result<(Term, i128, Lifetime), TokenError> {
    let default = Lifetime::from(DEFAULT_MAX_AGE);
    match term {
        Term::Tuple(items) if items.len() == 3 => {
            let [data, signed, max_age] =
                <[Term; 3]>::try_from(items).map_err(|_| TokenError::Invalid)?;
            Ok((data, signed_ms(&signed)?, Lifetime::embedded(&max_age)?))
        }
        Term::Tuple(items) if items.len() == 2 => {
            let [data, signed] = <[Term; 2]>::try_from(items).map_err(|_| TokenError::Invalid)?;
            Ok((data, signed_ms(&signed)?, default))
        }
        Term::Map(entries) => {
            // `%{data: d, signed: s}` matches maps holding at least these keys.
            let (mut data, mut signed) = (None, None);
            for (k, v) in entries {
                if k.is_atom("data") {
                    data = Some(v);
                } else if k.is_atom("signed") {
                    signed = Some(v);
                }
            }
            match (data, signed) {
                (Some(data), Some(signed)) => Ok((data, signed_ms(&signed)?, default)),
                _ => Err(TokenError::Invalid),
            }
        }
        _ => Err(TokenError::Invalid),
    }
}

fn signed_ms(term: &Term) -> Result<i128, TokenError> {
    term.as_int().ok_or(TokenError::Invalid)
}

/// A max age resolved to the expiry arithmetic Plug.Crypto does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifetime {
    /// `:infinity`.
    Forever,
    /// A max age `<= 0`: expired whatever the times.
    Zero,
    /// A positive max age, in milliseconds.
    Millis(i128),
}

impl Lifetime {
    /// The max age a payload carries: integer seconds, float seconds (Plug
    /// takes `trunc(max_age * 1000)`), or `:infinity`.
    fn embedded(term: &Term) -> Result<Lifetime, TokenError> {
        match term {
            Term::Int(s) if *s <= 0 => Ok(Lifetime::Zero),
            Term::Int(s) => Ok(Lifetime::Millis(s.saturating_mul(1000))),
            // Decoded floats are finite, and `as` saturates.
            Term::Float(s) if *s <= 0.0 => Ok(Lifetime::Zero),
            Term::Float(s) => Ok(Lifetime::Millis((s * 1000.0).trunc() as i128)),
            t if t.is_atom("infinity") => Ok(Lifetime::Forever),
            _ => Err(TokenError::Invalid),
        }
    }

    fn expired(self, signed_ms: i128, now_ms: i128) -> bool {
        match self {
            Lifetime::Forever => false,
            Lifetime::Zero => true,
            Lifetime::Millis(ms) => signed_ms.saturating_add(ms) < now_ms,
        }
    }
}

impl From<MaxAge> for Lifetime {
    fn from(max_age: MaxAge) -> Lifetime {
        match max_age {
            MaxAge::Infinity => Lifetime::Forever,
            MaxAge::Seconds(0) => Lifetime::Zero,
            MaxAge::Seconds(s) => Lifetime::Millis(i128::from(s) * 1000),
        }
    }
}

/// The MAC algorithms a token header can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
}

impl Alg {
    fn from_header(header: &str) -> Option<Alg> {
        match header {
            "SFMyNTY" => Some(Alg::Hs256),
            "SFMzODQ" => Some(Alg::Hs384),
            "SFM1MTI" => Some(Alg::Hs512),
            _ => None,
        }
    }

    /// base64url of `HS256` / `HS384` / `HS512`.
    fn header(self) -> &'static str {
        match self {
            Alg::Hs256 => "SFMyNTY",
            Alg::Hs384 => "SFMzODQ",
            Alg::Hs512 => "SFM1MTI",
        }
    }

    fn tag(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        match self {
            Alg::Hs256 => keyed::<Hmac<Sha256>>(key, msg)
                .finalize()
                .into_bytes()
                .to_vec(),
            Alg::Hs384 => keyed::<Hmac<Sha384>>(key, msg)
                .finalize()
                .into_bytes()
                .to_vec(),
            Alg::Hs512 => keyed::<Hmac<Sha512>>(key, msg)
                .finalize()
                .into_bytes()
                .to_vec(),
        }
    }

    /// Constant-time comparison of `tag` with the MAC of `msg`.
    fn check(self, key: &[u8], msg: &[u8], tag: &[u8]) -> bool {
        match self {
            Alg::Hs256 => keyed::<Hmac<Sha256>>(key, msg).verify_slice(tag).is_ok(),
            Alg::Hs384 => keyed::<Hmac<Sha384>>(key, msg).verify_slice(tag).is_ok(),
            Alg::Hs512 => keyed::<Hmac<Sha512>>(key, msg).verify_slice(tag).is_ok(),
        }
    }
}

/// An HMAC over `msg` with `key`, not yet finalized.
fn keyed<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> M {
    #[allow(clippy::expect_used)]
    let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    const SECRET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const SIGNED_AT: u64 = 1_700_000_000_000;
    /// 2026-11-25T00:00:00Z.
    const NOW_2026: u64 = 1_795_564_800_000;

    fn key() -> &'static Key {
        static KEY: OnceLock<Key> = OnceLock::new();
        KEY.get_or_init(|| Key::derive(SECRET, SOCKET_SALT.as_bytes()))
    }

    fn opts(max_age: Option<MaxAge>) -> VerifyOptions {
        VerifyOptions {
            max_age,
            ..VerifyOptions::default()
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Sign `payload` (ETF bytes) by hand with the header's algorithm.
    fn hand_sign(header: &str, payload: &[u8]) -> String {
        let text = format!("{header}.{}", B64.encode(payload));
        let tag = match header {
            "SFMzODQ" => {
                let mut m = Hmac::<Sha384>::new_from_slice(&key().bytes).expect("key");
                m.update(text.as_bytes());
                m.finalize().into_bytes().to_vec()
            }
            "SFM1MTI" => {
                let mut m = Hmac::<Sha512>::new_from_slice(&key().bytes).expect("key");
                m.update(text.as_bytes());
                m.finalize().into_bytes().to_vec()
            }
            _ => {
                let mut m = Hmac::<Sha256>::new_from_slice(&key().bytes).expect("key");
                m.update(text.as_bytes());
                m.finalize().into_bytes().to_vec()
            }
        };
        format!("{text}.{}", B64.encode(tag))
    }

    struct Vector {
        token: &'static str,
        data: Term,
        /// `None` for the legacy map token, which `sign` does not produce.
        signed_with: Option<MaxAge>,
        user_id: &'static str,
    }

    /// Notes §6.3: minted by Plug.Crypto on OTP 25.
    fn vectors() -> Vec<Vector> {
        let map_7 = Term::Map(vec![
            (Term::from("role"), Term::from("admin")),
            (Term::from("user_id"), Term::Int(7)),
        ]);
        vec![
            Vector {
                token: "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.ohfF7q1_1Giuz3606zCGKz8FKJKwc4OthRFPWqvImO8",
                data: Term::Int(42),
                signed_with: Some(DEFAULT_MAX_AGE),
                user_id: "42",
            },
            Vector {
                token: "SFMyNTY.g2gDbQAAAAh1c2VyLTEyM24GAABo5c-LAWIAEnUA.IokoGIrKjmF1oB5eBOk-1rFlW0Pq2PlzBn5asv4qdHk",
                data: Term::from("user-123"),
                signed_with: Some(SOCKET_MAX_AGE),
                user_id: "user-123",
            },
            Vector {
                token: "SFMyNTY.g2gDdAAAAAJtAAAABHJvbGVtAAAABWFkbWlubQAAAAd1c2VyX2lkYQduBgAAaOXPiwFiAAFRgA.erQ6gqyyf15Bb8xrEbGnwqBQJ0u7PihRk8lR8Pei1tE",
                data: map_7,
                signed_with: Some(DEFAULT_MAX_AGE),
                user_id: "7",
            },
            Vector {
                token: "SFMyNTY.g2gDbgUAFBqZvhxuBgAAaOXPiwFiAAFRgA.aEhjhoI6-SSK9VM8QqyJb-ZlF8Xv7L2wctiRA2YDJa4",
                data: Term::Int(123_456_789_012),
                signed_with: Some(DEFAULT_MAX_AGE),
                user_id: "123456789012",
            },
            Vector {
                token: "SFMyNTY.g2gDdAAAAAFkAAd1c2VyX2lkYQduBgAAaOXPiwFiAAFRgA.GDqB_1PoRVfbk12pVc35xiVDT3I0LWW_uOzoJDWu1EQ",
                data: Term::Map(vec![(Term::atom("user_id"), Term::Int(7))]),
                signed_with: Some(DEFAULT_MAX_AGE),
                user_id: "7",
            },
            Vector {
                token: "SFMyNTY.g2gDYQFuBgAAaOXPiwFkAAhpbmZpbml0eQ.i0Cc7bCyTU83aa5ocM82QBe6E1b2Jo8bdqf1Czuih4I",
                data: Term::Int(1),
                signed_with: Some(MaxAge::Infinity),
                user_id: "1",
            },
            Vector {
                token: "SFMyNTY.g3QAAAACZAAEZGF0YWEFZAAGc2lnbmVkbgYAAGjlz4sB.NAnw5a8SsfxbZecgKURzUZhbUHEnrOC64z4KIg5Hu1k",
                data: Term::Int(5),
                signed_with: None,
                user_id: "5",
            },
        ]
    }

    #[test]
    fn derives_the_plug_crypto_key() {
        assert_eq!(
            hex(&key().bytes),
            "b2ffd5c8b4e2c5c26b357cff09fe0fa16f9df913059a54777b86acdb18e91711"
        );
    }

    #[test]
    fn debug_hides_key_bytes() {
        let shown = format!("{:?}", key());
        assert_eq!(shown, "Key(<redacted>)");
        assert!(!shown.contains("b2ff"));
    }

    #[test]
    fn vectors_verify_like_phoenix() {
        for v in vectors() {
            let default = verify(key(), Some(v.token), NOW_2026, &VerifyOptions::default());
            if v.signed_with == Some(MaxAge::Infinity) {
                assert_eq!(default, Ok(v.data.clone()), "{}", v.token);
            } else {
                assert_eq!(default, Err(TokenError::Expired), "{}", v.token);
            }
            let forever = verify(
                key(),
                Some(v.token),
                NOW_2026,
                &opts(Some(MaxAge::Infinity)),
            );
            assert_eq!(forever, Ok(v.data.clone()), "{}", v.token);
            assert_eq!(user_id(&v.data).as_deref(), Some(v.user_id), "{}", v.token);
        }
    }

    #[test]
    fn vectors_are_valid_just_before_expiry() {
        // Each token is valid up to and including signed + max_age.
        for v in vectors() {
            let secs = match v.signed_with {
                Some(MaxAge::Seconds(s)) => s,
                Some(MaxAge::Infinity) => continue,
                None => 86_400,
            };
            let edge = SIGNED_AT + secs * 1000;
            let at = |now| verify(key(), Some(v.token), now, &VerifyOptions::default());
            assert_eq!(at(edge), Ok(v.data.clone()), "{}", v.token);
            assert_eq!(at(edge + 1), Err(TokenError::Expired), "{}", v.token);
        }
    }

    #[test]
    fn sign_reproduces_vectors() {
        for v in vectors() {
            if let Some(max_age) = v.signed_with {
                assert_eq!(sign(key(), &v.data, SIGNED_AT, max_age), v.token);
            }
        }
    }

    fn otp26_payload() -> Vec<u8> {
        // {%{user_id: 7}, 1_700_000_000_000, :infinity} with SMALL_ATOM_UTF8.
        let mut p = vec![131, 104, 3, 116, 0, 0, 0, 1, 119, 7];
        p.extend(b"user_id");
        p.extend([97, 7, 110, 6, 0, 0, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 119, 8]);
        p.extend(b"infinity");
        p
    }

    #[test]
    fn otp26_atoms_verify() {
        let data = Term::Map(vec![(Term::atom("user_id"), Term::Int(7))]);
        for header in ["SFMyNTY", "SFMzODQ", "SFM1MTI"] {
            let token = hand_sign(header, &otp26_payload());
            let got = verify(key(), Some(&token), NOW_2026, &VerifyOptions::default());
            assert_eq!(got, Ok(data.clone()), "{header}");
            assert_eq!(user_id(&data).as_deref(), Some("7"));
        }
    }

    #[test]
    fn header_selects_the_digest() {
        // An HS512 MAC under an HS256 header (and vice versa) is refused.
        let hs512 = hand_sign("SFM1MTI", &otp26_payload());
        let relabelled = hs512.replacen("SFM1MTI", "SFMyNTY", 1);
        assert_eq!(
            verify(
                key(),
                Some(&relabelled),
                NOW_2026,
                &VerifyOptions::default()
            ),
            Err(TokenError::Invalid)
        );
        let hs256 = hand_sign("SFMyNTY", &otp26_payload());
        let relabelled = hs256.replacen("SFMyNTY", "SFM1MTI", 1);
        assert_eq!(
            verify(
                key(),
                Some(&relabelled),
                NOW_2026,
                &VerifyOptions::default()
            ),
            Err(TokenError::Invalid)
        );
    }

    fn forever(token: &str) -> Result<Term, TokenError> {
        verify(key(), Some(token), NOW_2026, &opts(Some(MaxAge::Infinity)))
    }

    #[test]
    fn rejects_tampering_and_malformed_tokens() {
        let good = vectors().first().map(|v| v.token).expect("a vector");
        assert_eq!(forever(good), Ok(Term::Int(42)));
        let (header, rest) = good.split_once('.').expect("three parts");
        let (payload, sig) = rest.split_once('.').expect("three parts");

        // One flipped signature byte.
        let mut raw = B64.decode(sig).expect("b64");
        raw[0] ^= 1;
        let flipped = format!("{header}.{payload}.{}", B64.encode(raw));
        // A truncated signature.
        let short = format!("{header}.{payload}.{}", &sig[..sig.len() - 4]);
        let cases = [
            flipped,
            short,
            format!("{header}.{payload}"),
            format!("{header}.{payload}.{sig}.{sig}"),
            format!("{header}.{payload}.{sig}."),
            format!("SFMyNTZ.{payload}.{sig}"),
            format!("SFMyNTY=.{payload}.{sig}"),
            format!("sfmynty.{payload}.{sig}"),
            format!(".{payload}.{sig}"),
            format!("{header}.{payload}!.{sig}"),
            format!("{header}.{payload}.{sig}!"),
            format!("{header}.{payload}.{}", sig.replace('_', "/")),
            "..".to_string(),
            ".".to_string(),
            "garbage".to_string(),
            "SFMyNTY.%%%.%%%".to_string(),
        ];
        for token in &cases {
            assert_eq!(forever(token), Err(TokenError::Invalid), "{token}");
        }
    }

    #[test]
    fn wrong_salt_or_secret_is_invalid() {
        let token = vectors().first().map(|v| v.token).expect("a vector");
        let other_salt = Key::derive(SECRET, b"other salt");
        let other_secret = Key::derive(b"another secret key base of enough bytes", b"user socket");
        for k in [&other_salt, &other_secret] {
            assert_eq!(
                verify(k, Some(token), NOW_2026, &opts(Some(MaxAge::Infinity))),
                Err(TokenError::Invalid)
            );
        }
    }

    #[test]
    fn validly_signed_non_etf_payload_is_invalid() {
        for payload in [
            b"not a term".to_vec(),
            vec![],
            vec![131],
            vec![131, 97],
            vec![131, 97, 1, 0],
            // A valid term of the wrong shape: a bare integer, a 4-tuple,
            // a non-integer signing time, an unknown max age.
            etf::encode(&Term::Int(1)),
            etf::encode(&Term::Tuple(vec![Term::Int(1); 4])),
            etf::encode(&Term::Tuple(vec![Term::Int(1), Term::from("x")])),
            etf::encode(&Term::Tuple(vec![
                Term::Int(1),
                Term::Int(SIGNED_AT.into()),
                Term::atom("forever"),
            ])),
            etf::encode(&Term::Map(vec![(Term::atom("data"), Term::Int(1))])),
            etf::encode(&Term::Map(vec![
                (Term::from("data"), Term::Int(1)),
                (Term::from("signed"), Term::Int(SIGNED_AT.into())),
            ])),
        ] {
            let token = hand_sign("SFMyNTY", &payload);
            assert_eq!(forever(&token), Err(TokenError::Invalid), "{payload:?}");
        }
    }

    #[test]
    fn missing_tokens() {
        let o = VerifyOptions::default();
        assert_eq!(verify(key(), None, NOW_2026, &o), Err(TokenError::Missing));
        assert_eq!(
            verify(key(), Some(""), NOW_2026, &o),
            Err(TokenError::Missing)
        );
    }

    #[test]
    fn reasons() {
        assert_eq!(TokenError::Missing.reason(), "missing");
        assert_eq!(TokenError::Invalid.reason(), "invalid");
        assert_eq!(TokenError::Expired.reason(), "expired");
        assert_eq!(TokenError::FromFuture.reason(), "from_future");
    }

    #[test]
    fn tolerates_base64_padding() {
        // Padding on the signature alone (not covered by the MAC)...
        let token = vectors().first().map(|v| v.token).expect("a vector");
        assert_eq!(forever(&format!("{token}=")), Ok(Term::Int(42)));
        // ...and a token whose payload was signed with padding.
        let payload = etf::encode(&Term::Tuple(vec![
            Term::Int(42),
            Term::Int(SIGNED_AT.into()),
            Term::Int(86_400),
        ]));
        let text = format!(
            "SFMyNTY.{}",
            base64::engine::general_purpose::URL_SAFE.encode(&payload)
        );
        assert!(text.ends_with('='));
        let tag = Alg::Hs256.tag(&key().bytes, text.as_bytes());
        let padded = format!(
            "{text}.{}",
            base64::engine::general_purpose::URL_SAFE.encode(tag)
        );
        assert_eq!(forever(&padded), Ok(Term::Int(42)));
    }

    #[test]
    fn expiry_boundaries() {
        let token = sign(key(), &Term::Int(9), SIGNED_AT, MaxAge::Seconds(10));
        let at = |now, max_age| verify(key(), Some(&token), now, &opts(max_age));
        assert_eq!(at(SIGNED_AT + 10_000, None), Ok(Term::Int(9)));
        assert_eq!(at(SIGNED_AT + 10_001, None), Err(TokenError::Expired));
        // The caller's max age overrides the embedded one, both ways.
        assert_eq!(
            at(SIGNED_AT + 20_000, Some(MaxAge::Seconds(20))),
            Ok(Term::Int(9))
        );
        assert_eq!(
            at(SIGNED_AT + 5_001, Some(MaxAge::Seconds(5))),
            Err(TokenError::Expired)
        );
        // A zero max age is expired even at the signing instant.
        assert_eq!(
            at(SIGNED_AT, Some(MaxAge::Seconds(0))),
            Err(TokenError::Expired)
        );
        let zero = sign(key(), &Term::Int(9), SIGNED_AT, MaxAge::Seconds(0));
        assert_eq!(
            verify(key(), Some(&zero), SIGNED_AT, &VerifyOptions::default()),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn embedded_max_age_forms() {
        let at = |max_age: Term, now| {
            let payload = etf::encode(&Term::Tuple(vec![
                Term::Int(3),
                Term::Int(SIGNED_AT.into()),
                max_age,
            ]));
            verify(
                key(),
                Some(&hand_sign("SFMyNTY", &payload)),
                now,
                &VerifyOptions::default(),
            )
        };
        assert_eq!(at(Term::Int(-1), SIGNED_AT), Err(TokenError::Expired));
        assert_eq!(at(Term::Int(0), SIGNED_AT), Err(TokenError::Expired));
        assert_eq!(at(Term::Float(1.5), SIGNED_AT + 1_500), Ok(Term::Int(3)));
        assert_eq!(
            at(Term::Float(1.5), SIGNED_AT + 1_501),
            Err(TokenError::Expired)
        );
        assert_eq!(at(Term::Int(i128::MAX), u64::MAX), Ok(Term::Int(3)));
    }

    #[test]
    fn legacy_two_tuple_defaults_to_one_day() {
        let payload = etf::encode(&Term::Tuple(vec![
            Term::Int(5),
            Term::Int(SIGNED_AT.into()),
        ]));
        let token = hand_sign("SFMyNTY", &payload);
        let at = |now| verify(key(), Some(&token), now, &VerifyOptions::default());
        assert_eq!(at(SIGNED_AT + 86_400_000), Ok(Term::Int(5)));
        assert_eq!(at(SIGNED_AT + 86_400_001), Err(TokenError::Expired));
    }

    #[test]
    fn future_tokens_and_skew() {
        let now = SIGNED_AT;
        let o = VerifyOptions {
            max_age: None,
            max_future_skew_ms: 60_000,
        };
        let at = |ahead_ms: u64| {
            let token = sign(key(), &Term::Int(1), now + ahead_ms, MaxAge::Seconds(3600));
            verify(key(), Some(&token), now, &o)
        };
        assert_eq!(at(61_000), Err(TokenError::FromFuture));
        assert_eq!(at(60_001), Err(TokenError::FromFuture));
        assert_eq!(at(60_000), Ok(Term::Int(1)));
        assert_eq!(at(59_000), Ok(Term::Int(1)));
        // Never-expiring tokens are checked too.
        let token = sign(key(), &Term::Int(1), now + 61_000, MaxAge::Infinity);
        assert_eq!(
            verify(key(), Some(&token), now, &o),
            Err(TokenError::FromFuture)
        );
    }

    #[test]
    fn length_cap() {
        let small = sign(
            key(),
            &Term::from("x".repeat(2000)),
            SIGNED_AT,
            MaxAge::Infinity,
        );
        assert!(small.len() <= MAX_TOKEN_LEN);
        assert_eq!(forever(&small), Ok(Term::from("x".repeat(2000))));
        let big = sign(
            key(),
            &Term::from("x".repeat(4000)),
            SIGNED_AT,
            MaxAge::Infinity,
        );
        assert!(big.len() > MAX_TOKEN_LEN);
        assert_eq!(forever(&big), Err(TokenError::Invalid));
    }

    #[test]
    fn user_id_shapes() {
        let map = |k: Term, v: Term| Term::Map(vec![(k, v)]);
        assert_eq!(user_id(&Term::Int(-3)).as_deref(), Some("-3"));
        assert_eq!(user_id(&Term::from("abc")).as_deref(), Some("abc"));
        assert_eq!(user_id(&Term::binary([0xff, 0xfe])), None);
        assert_eq!(user_id(&Term::atom("admin")), None);
        assert_eq!(user_id(&Term::Float(1.0)), None);
        assert_eq!(user_id(&Term::List(vec![])), None);
        assert_eq!(
            user_id(&map(Term::from("id"), Term::from("u-1"))).as_deref(),
            Some("u-1")
        );
        assert_eq!(
            user_id(&map(Term::atom("id"), Term::Int(9))).as_deref(),
            Some("9")
        );
        assert_eq!(user_id(&map(Term::atom("id"), Term::atom("nil"))), None);
        assert_eq!(user_id(&map(Term::atom("name"), Term::Int(9))), None);
        // user_id wins over id, whichever comes first.
        let both = Term::Map(vec![
            (Term::from("id"), Term::Int(1)),
            (Term::atom("user_id"), Term::Int(2)),
        ]);
        assert_eq!(user_id(&both).as_deref(), Some("2"));
    }

    proptest! {
        #[test]
        fn sign_verify_round_trip(
            id in any::<i64>(),
            name in "\\PC{0,40}",
            signed_at in 0u64..4_000_000_000_000,
            max_age in 1u64..10_000_000,
        ) {
            let o = VerifyOptions::default();
            for data in [Term::from(id), Term::from(name.as_str())] {
                let token = sign(key(), &data, signed_at, MaxAge::Seconds(max_age));
                prop_assert_eq!(verify(key(), Some(&token), signed_at, &o), Ok(data.clone()));
                let last = signed_at + max_age * 1000;
                prop_assert_eq!(verify(key(), Some(&token), last, &o), Ok(data.clone()));
                prop_assert_eq!(
                    verify(key(), Some(&token), last + 1, &o),
                    Err(TokenError::Expired)
                );
            }
            prop_assert_eq!(user_id(&Term::from(id)), Some(id.to_string()));
        }

        #[test]
        fn verify_never_panics(
            text in "\\PC{0,200}",
            b64 in "[A-Za-z0-9_=-]{0,120}",
            now in any::<u64>(),
            skew in any::<u64>(),
            max_age in prop_oneof![
                Just(None),
                Just(Some(MaxAge::Infinity)),
                any::<u64>().prop_map(|s| Some(MaxAge::Seconds(s))),
            ],
        ) {
            let o = VerifyOptions { max_age, max_future_skew_ms: skew };
            let _ = verify(key(), Some(&text), now, &o);
            let _ = verify(key(), Some(&format!("SFMyNTY.{b64}.{b64}")), now, &o);
            // A valid token at extreme times and options.
            let token = sign(key(), &Term::Int(1), now, MaxAge::Seconds(skew));
            let _ = verify(key(), Some(&token), now, &o);
            let _ = verify(key(), Some(&token), u64::MAX, &o);
            let _ = verify(key(), Some(&token), 0, &o);
        }

        #[test]
        fn any_signed_payload_is_handled(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Bytes that pass the MAC still never panic the decoder.
            let mut versioned = vec![131];
            versioned.extend(&payload);
            for p in [payload, versioned] {
                let _ = forever(&hand_sign("SFMyNTY", &p));
            }
        }
    }
}
