//! Tests for the parent module.
use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect()
}

/// The payload of the first token vector (notes §6.3).
const VECTOR_1: &str = "836803612a6e06000068e5cf8b016200015180";

#[test]
fn decodes_annotated_vector() {
    let term = decode(&hex(VECTOR_1)).expect("decodes");
    assert_eq!(
        term,
        Term::Tuple(vec![
            Term::Int(42),
            Term::Int(1_700_000_000_000),
            Term::Int(86_400)
        ])
    );
    assert_eq!(encode(&term), hex(VECTOR_1));
}

#[test]
fn encodes_like_otp_25() {
    let cases: Vec<(Term, &str)> = vec![
        (Term::Int(0), "836100"),
        (Term::Int(255), "8361ff"),
        (Term::Int(256), "836200000100"),
        (Term::Int(-1), "8362ffffffff"),
        (Term::Int(i32::MAX.into()), "83627fffffff"),
        (Term::Int(i32::MIN.into()), "836280000000"),
        (Term::Int(i128::from(i32::MAX) + 1), "836e040000000080"),
        (Term::Int(-(i128::from(i32::MIN)) + 1), "836e040001000080"),
        (Term::Int(-2_147_483_649), "836e040101000080"),
        (Term::Int(123_456_789_012), "836e0500141a99be1c"),
        (
            Term::Int(i128::MIN),
            "836e100100000000000000000000000000000080",
        ),
        (Term::Float(1.5), "83463ff8000000000000"),
        (Term::atom("infinity"), "83640008696e66696e697479"),
        (Term::atom("é"), "83640001e9"),
        (Term::atom("λ"), "837702cebb"),
        (Term::atom(""), "83640000"),
        (Term::from("ab"), "836d000000026162"),
        (Term::List(vec![]), "836a"),
        (Term::List(vec![Term::Int(1), Term::Int(2)]), "836b00020102"),
        (
            Term::List(vec![Term::Int(1), Term::Int(256)]),
            "836c00000002610162000001006a",
        ),
        (Term::Tuple(vec![]), "836800"),
        (
            Term::Map(vec![(Term::atom("user_id"), Term::Int(7))]),
            "837400000001640007757365725f69646107",
        ),
    ];
    for (term, bytes) in cases {
        assert_eq!(encode(&term), hex(bytes), "encode {term:?}");
        assert_eq!(decode(&hex(bytes)), Ok(term), "decode {bytes}");
    }
}

#[test]
fn large_tuple_above_255_elements() {
    let term = Term::Tuple(vec![Term::Int(1); 256]);
    let bytes = encode(&term);
    assert_eq!(bytes.get(..6), Some(&[131, 105, 0, 0, 1, 0][..]));
    assert_eq!(decode(&bytes), Ok(term));
}

#[test]
fn long_byte_list_is_not_a_string() {
    let term = Term::List(vec![Term::Int(1); 65_536]);
    let bytes = encode(&term);
    assert_eq!(bytes.get(1), Some(&tag::LIST));
    assert_eq!(decode(&bytes), Ok(term));
}

#[test]
fn all_atom_encodings_decode_alike() {
    let user_id = Term::atom("user_id");
    for bytes in [
        "83640007757365725f6964",
        "837307757365725f6964",
        "83760007757365725f6964",
        "837707757365725f6964",
    ] {
        assert_eq!(decode(&hex(bytes)), Ok(user_id.clone()), "{bytes}");
    }
    // Latin-1 byte 0xE9 is "é"; as UTF-8 it is invalid.
    assert_eq!(decode(&hex("837301e9")), Ok(Term::atom("é")));
    assert_eq!(decode(&hex("837701e9")), Err(EtfError::BadAtom));
}

#[test]
fn atom_length_limit() {
    let mut ok = vec![131, tag::ATOM, 0, 255];
    ok.extend(std::iter::repeat_n(b'a', 255));
    assert_eq!(decode(&ok), Ok(Term::atom("a".repeat(255))));
    let mut long = vec![131, tag::ATOM, 1, 0];
    long.extend(std::iter::repeat_n(b'a', 256));
    assert_eq!(decode(&long), Err(EtfError::BadAtom));
    // Encode truncates to Erlang's limit rather than write a bad atom.
    assert_eq!(
        decode(&encode(&Term::atom("λ".repeat(300)))),
        Ok(Term::atom("λ".repeat(255)))
    );
}

#[test]
fn bignums() {
    // LARGE_BIG with a zero high digit beyond 16 bytes still fits.
    let mut bytes = vec![131, tag::LARGE_BIG, 0, 0, 0, 20, 0, 7];
    bytes.extend([0; 19]);
    assert_eq!(decode(&bytes), Ok(Term::Int(7)));
    // 2^128 does not.
    let mut big = vec![131, tag::SMALL_BIG, 17, 0];
    big.extend([0; 16]);
    big.push(1);
    assert_eq!(decode(&big), Err(EtfError::BigIntOverflow));
    // 2^127 fits only as a negative number.
    let mut pos = vec![131, tag::SMALL_BIG, 16, 0];
    pos.extend([0; 15]);
    pos.push(0x80);
    assert_eq!(decode(&pos), Err(EtfError::BigIntOverflow));
    let mut neg = pos.clone();
    neg[3] = 1;
    assert_eq!(decode(&neg), Ok(Term::Int(i128::MIN)));
    neg[3] = 2;
    assert_eq!(decode(&neg), Err(EtfError::BadBigSign(2)));
}

#[test]
fn rejects_malformed_input() {
    let cases: Vec<(&str, EtfError)> = vec![
        ("", EtfError::Truncated),
        ("83", EtfError::Truncated),
        ("82612a", EtfError::BadVersion(130)),
        ("83612a00", EtfError::TrailingBytes(1)),
        ("836d00000005616263", EtfError::Truncated),
        ("836cffffffff", EtfError::Truncated),
        ("8374ffffffff", EtfError::Truncated),
        ("836900ffffff", EtfError::Truncated),
        ("836c0000000161016102", EtfError::ImproperList),
        ("83467ff8000000000000", EtfError::BadFloat),
        ("83467ff0000000000000", EtfError::BadFloat),
        ("8374000000026101610261016103", EtfError::DuplicateMapKey),
        ("834d0000000103ff", EtfError::BitBinary(3)),
        ("835800", EtfError::UnknownTag(88)),
        ("8379", EtfError::UnknownTag(121)),
        ("8368025000", EtfError::UnknownTag(80)),
        ("8350ffffffff", EtfError::TooLarge),
    ];
    for (bytes, err) in cases {
        assert_eq!(decode(&hex(bytes)), Err(err), "{bytes}");
    }
}

#[test]
fn map_keys_compare_exactly() {
    // %{1 => 1, 1.0 => 2}: distinct keys in Erlang.
    let term = Term::Map(vec![
        (Term::Int(1), Term::Int(1)),
        (Term::Float(1.0), Term::Int(2)),
    ]);
    assert_eq!(decode(&encode(&term)), Ok(term));
}

#[test]
fn bit_binary_with_full_last_byte_is_a_binary() {
    assert_eq!(
        decode(&hex("834d0000000208abcd")),
        Ok(Term::binary([0xab, 0xcd]))
    );
    assert_eq!(decode(&hex("834d0000000008")), Err(EtfError::BitBinary(8)));
}

#[test]
fn list_tail_may_be_a_list() {
    // [1 | [2]] written with a LIST_EXT tail, and a STRING_EXT tail.
    let list = Term::List(vec![Term::Int(1), Term::Int(2)]);
    assert_eq!(
        decode(&hex("836c0000000161016c0000000161026a")),
        Ok(list.clone())
    );
    assert_eq!(decode(&hex("836c0000000161016b000102")), Ok(list));
}

fn nested_lists(levels: usize) -> Vec<u8> {
    // `levels` LIST_EXTs of one element each around an empty list.
    let mut bytes = vec![131];
    for _ in 0..levels {
        bytes.extend([tag::LIST, 0, 0, 0, 1]);
    }
    // The innermost `[]`, then each list's NIL tail.
    bytes.resize(bytes.len() + levels + 1, tag::NIL);
    bytes
}

#[test]
fn depth_limit() {
    assert!(decode(&nested_lists(MAX_DEPTH)).is_ok());
    assert_eq!(decode(&nested_lists(MAX_DEPTH + 1)), Err(EtfError::TooDeep));
    // A very deep input fails fast instead of overflowing the stack.
    assert_eq!(decode(&nested_lists(100_000)), Err(EtfError::TooDeep));
}

fn compress(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body).expect("compress");
    z.finish().expect("compress")
}

fn compressed_term(declared: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![131, tag::COMPRESSED];
    bytes.extend(declared.to_be_bytes());
    bytes.extend(compress(body));
    bytes
}

#[test]
fn compressed_terms() {
    let term = Term::Tuple(vec![Term::binary(vec![b'x'; 1000]), Term::Int(1)]);
    let body = encode(&term).split_off(1);
    let size = u32::try_from(body.len()).expect("small");
    assert_eq!(decode(&compressed_term(size, &body)), Ok(term));
    assert_eq!(
        decode(&compressed_term(size - 1, &body)),
        Err(EtfError::CompressedSizeMismatch {
            declared: body.len() - 1,
            actual: body.len()
        })
    );
    assert_eq!(
        decode(&compressed_term(size + 1, &body)),
        Err(EtfError::CompressedSizeMismatch {
            declared: body.len() + 1,
            actual: body.len()
        })
    );
    let mut trailing = compressed_term(size, &body);
    trailing.push(0);
    assert_eq!(decode(&trailing), Err(EtfError::TrailingBytes(1)));
    let mut corrupt = compressed_term(size, &body);
    if let Some(last) = corrupt.last_mut() {
        *last ^= 1; // break the adler32 checksum
    }
    assert_eq!(decode(&corrupt), Err(EtfError::CompressedCorrupt));
}

#[test]
fn compression_bomb_is_capped() {
    // 1 MiB of zeros compresses to about 1 KiB but declares too much...
    let bomb = vec![0u8; 1 << 20];
    assert_eq!(
        decode(&compressed_term(1 << 20, &bomb)),
        Err(EtfError::TooLarge)
    );
    // ...and lying about its size stops inflation one byte past the claim.
    assert_eq!(
        decode(&compressed_term(100, &bomb)),
        Err(EtfError::CompressedSizeMismatch {
            declared: 100,
            actual: 101
        })
    );
}

fn term_strategy() -> impl Strategy<Value = Term> {
    let leaf = prop_oneof![
        any::<i128>().prop_map(Term::Int),
        (0i128..=300).prop_map(Term::Int),
        any::<i32>().prop_map(|v| Term::Int(v.into())),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Term::Float),
        "\\PC{0,12}".prop_map(Term::Atom),
        "[a-z_\u{e0}-\u{ff}]{0,12}".prop_map(Term::Atom),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Term::Binary),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Term::List),
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Term::Tuple),
            proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(|pairs| {
                // Decoded maps have distinct keys; keep the first of each.
                let mut seen = HashSet::new();
                Term::Map(
                    pairs
                        .into_iter()
                        .filter(|(k, _)| seen.insert(encode(k)))
                        .collect(),
                )
            }),
        ]
    })
}

proptest! {
    #[test]
    fn round_trip(term in term_strategy()) {
        prop_assert_eq!(decode(&encode(&term)), Ok(term));
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
        let mut versioned = vec![VERSION];
        versioned.extend(&bytes);
        let _ = decode(&versioned);
    }

    #[test]
    fn decode_survives_mutations(
        term in term_strategy(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode(&term);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            if let Some(b) = bytes.get_mut(i) {
                *b = value;
            }
        }
        let _ = decode(&bytes);
    }
}
