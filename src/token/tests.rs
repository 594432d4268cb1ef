//! Tests for the parent module.
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
