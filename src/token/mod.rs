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
mod tests;
