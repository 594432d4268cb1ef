//! Erlang External Term Format (ETF): the plain-data subset that Phoenix
//! tokens carry.
//!
//! This module owns the bytes of `:erlang.term_to_binary/1` and
//! `:erlang.binary_to_term/1` for data terms (integers, floats, atoms,
//! binaries, proper lists, tuples, maps). It knows nothing about tokens,
//! keys or time; [`super`] builds on it.
//!
//! # Contract
//! * Pure: bytes in, [`Term`] out (and back). No IO, no clock, no global state.
//! * [`decode`] accepts untrusted input. It never panics, checks every
//!   declared length or count against the bytes that are left before using it
//!   (so it never preallocates from an untrusted count), stops at
//!   [`MAX_DEPTH`] levels of nesting and inflates a compressed term (tag 80) to
//!   at most [`MAX_INFLATED`] bytes. Memory use is therefore proportional to the
//!   (inflated) input.
//! * Only data is decoded. Pids, ports, references, funs, exports and
//!   `LOCAL_EXT` are rejected with [`EtfError::UnknownTag`]; improper lists,
//!   non-finite floats, duplicate map keys and atoms longer than 255 characters
//!   are rejected as `binary_to_term/1` rejects them.
//! * [`encode`] writes what OTP 25 `term_to_binary/1` (default
//!   `minor_version` 1) writes for the same term, so signatures over it match
//!   Phoenix byte for byte:
//!
//!   | term | tag |
//!   | --- | --- |
//!   | integer `0..=255` | 97 `SMALL_INTEGER_EXT` |
//!   | other integer that fits `i32` | 98 `INTEGER_EXT` |
//!   | any other integer | 110 `SMALL_BIG_EXT` (fewest digits) |
//!   | float | 70 `NEW_FLOAT_EXT` |
//!   | atom of Latin-1 characters | 100 `ATOM_EXT` |
//!   | other atom | 119 `SMALL_ATOM_UTF8_EXT`, or 118 `ATOM_UTF8_EXT` past 255 bytes |
//!   | binary | 109 `BINARY_EXT` |
//!   | `[]` | 106 `NIL_EXT` |
//!   | list of at most 65 535 integers in `0..=255` | 107 `STRING_EXT` |
//!   | other list | 108 `LIST_EXT` + `NIL_EXT` tail |
//!   | tuple | 104 `SMALL_TUPLE_EXT`, or 105 `LARGE_TUPLE_EXT` past 255 elements |
//!   | map | 116 `MAP_EXT` |
//!
//!   Map entries are written in the order of [`Term::Map`]'s vector. OTP writes
//!   maps of up to 32 keys sorted in term order (numbers < atoms < tuples <
//!   maps < lists < binaries; binaries bytewise), so build maps in that order
//!   when the bytes must match OTP's.
//! * `decode(&encode(t)) == t` for every term `decode` can return. `encode` is
//!   total and never panics; for terms OTP cannot hold it truncates where a
//!   length field has no room: atoms to 255 characters, binaries and
//!   containers to `u32::MAX` elements. Non-finite floats are written as their
//!   bits but do not decode, and terms nested deeper than [`MAX_DEPTH`] encode
//!   but do not decode.

use std::collections::HashSet;
use std::io::Read;

/// First byte of every external term.
pub const VERSION: u8 = 131;

/// Deepest nesting [`decode`] accepts: a term may sit inside at most this many
/// tuples, lists and maps (a list's tail counts as one more level).
pub const MAX_DEPTH: usize = 64;

/// Largest uncompressed size [`decode`] accepts for a compressed term (tag 80).
pub const MAX_INFLATED: usize = 64 * 1024;

/// Longest atom, in characters, that Erlang allows.
pub const MAX_ATOM_CHARS: usize = 255;

/// Preallocation cap for decoded containers: counts come from the input, so
/// vectors start small and grow with the elements actually decoded.
const PREALLOC: usize = 64;

/// Tag bytes (see the Erlang "External Term Format" guide).
mod tag {
    pub const NEW_FLOAT: u8 = 70;
    pub const BIT_BINARY: u8 = 77;
    pub const COMPRESSED: u8 = 80;
    pub const SMALL_INTEGER: u8 = 97;
    pub const INTEGER: u8 = 98;
    pub const ATOM: u8 = 100;
    pub const SMALL_TUPLE: u8 = 104;
    pub const LARGE_TUPLE: u8 = 105;
    pub const NIL: u8 = 106;
    pub const STRING: u8 = 107;
    pub const LIST: u8 = 108;
    pub const BINARY: u8 = 109;
    pub const SMALL_BIG: u8 = 110;
    pub const LARGE_BIG: u8 = 111;
    pub const SMALL_ATOM: u8 = 115;
    pub const MAP: u8 = 116;
    pub const ATOM_UTF8: u8 = 118;
    pub const SMALL_ATOM_UTF8: u8 = 119;
}

/// A decoded Erlang data term.
///
/// Elixir strings are [`Term::Binary`]; `nil`, `true` and `false` are atoms.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// An integer: `SMALL_INTEGER_EXT`, `INTEGER_EXT`, or a bignum that fits
    /// `i128` (`SMALL_BIG_EXT` / `LARGE_BIG_EXT`).
    Int(i128),
    /// A finite float (`NEW_FLOAT_EXT`).
    Float(f64),
    /// An atom, whichever of the four atom tags carried it.
    Atom(String),
    /// A binary (`BINARY_EXT`, or a byte-aligned `BIT_BINARY_EXT`).
    Binary(Vec<u8>),
    /// A proper list. `STRING_EXT` decodes to a list of [`Term::Int`]s.
    List(Vec<Term>),
    /// A tuple.
    Tuple(Vec<Term>),
    /// A map, entries in wire order. [`decode`] guarantees the keys are
    /// distinct.
    Map(Vec<(Term, Term)>),
}

/// Why bytes are not an external term this module accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtfError {
    /// The input ends before the term does.
    #[error("term truncated")]
    Truncated,
    /// The first byte is not 131.
    #[error("bad version byte {0}")]
    BadVersion(u8),
    /// A tag this decoder does not handle (pids, refs, funs, `LOCAL_EXT`, ...).
    #[error("unsupported tag {0}")]
    UnknownTag(u8),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("term nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A compressed term declares more than [`MAX_INFLATED`] bytes.
    #[error("compressed term larger than {MAX_INFLATED} bytes")]
    TooLarge,
    /// A bignum outside `i128`.
    #[error("integer does not fit in 128 bits")]
    BigIntOverflow,
    /// A bignum sign byte other than 0 or 1.
    #[error("bad bignum sign byte {0}")]
    BadBigSign(u8),
    /// A float that is NaN or infinite (Erlang has none).
    #[error("non-finite float")]
    BadFloat,
    /// An atom that is not valid UTF-8 or is longer than 255 characters.
    #[error("bad atom")]
    BadAtom,
    /// A list whose tail is not a list.
    #[error("improper list")]
    ImproperList,
    /// A bitstring whose last byte is not full (the field is its bit count).
    #[error("bitstring with {0} bits in its last byte")]
    BitBinary(u8),
    /// A map with the same key twice.
    #[error("duplicate map key")]
    DuplicateMapKey,
    /// A compressed term that does not inflate (bad zlib stream or checksum).
    #[error("corrupt compressed term")]
    CompressedCorrupt,
    /// A compressed term whose inflated size differs from the declared one.
    #[error("compressed term declares {declared} bytes but inflates to {actual}")]
    CompressedSizeMismatch {
        /// Size written in the header.
        declared: usize,
        /// Size actually inflated (at most `declared + 1`).
        actual: usize,
    },
    /// Bytes left over after the term (the field is how many).
    #[error("{0} trailing bytes after the term")]
    TrailingBytes(usize),
}

// === impl Term ===

impl Term {
    /// An atom: `Term::atom("infinity")` is `:infinity`.
    pub fn atom(name: impl Into<String>) -> Term {
        Term::Atom(name.into())
    }

    /// A binary (an Elixir string when the bytes are UTF-8).
    pub fn binary(bytes: impl Into<Vec<u8>>) -> Term {
        Term::Binary(bytes.into())
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i128> {
        match self {
            Term::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The atom's name, if this is an atom.
    pub fn as_atom(&self) -> Option<&str> {
        match self {
            Term::Atom(name) => Some(name),
            _ => None,
        }
    }

    /// The bytes, if this is a binary.
    pub fn as_binary(&self) -> Option<&[u8]> {
        match self {
            Term::Binary(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The text, if this is a binary holding valid UTF-8 (an Elixir string).
    pub fn as_str(&self) -> Option<&str> {
        self.as_binary().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Whether this is the atom `name`.
    pub fn is_atom(&self, name: &str) -> bool {
        self.as_atom() == Some(name)
    }

    /// The value under `key` if this is a map holding it.
    pub fn get(&self, key: &Term) -> Option<&Term> {
        match self {
            Term::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under the atom key `name` (`map[:name]`) if this is a map.
    pub fn get_atom_key(&self, name: &str) -> Option<&Term> {
        match self {
            Term::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.is_atom(name))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under the string key `name` (`map["name"]`) if this is a map.
    pub fn get_str_key(&self, name: &str) -> Option<&Term> {
        match self {
            Term::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_binary() == Some(name.as_bytes()))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

impl From<i128> for Term {
    fn from(v: i128) -> Term {
        Term::Int(v)
    }
}

impl From<i64> for Term {
    fn from(v: i64) -> Term {
        Term::Int(v.into())
    }
}

impl From<u64> for Term {
    fn from(v: u64) -> Term {
        Term::Int(v.into())
    }
}

impl From<&str> for Term {
    /// A string becomes a binary, as in Elixir.
    fn from(s: &str) -> Term {
        Term::Binary(s.as_bytes().to_vec())
    }
}

impl From<String> for Term {
    /// A string becomes a binary, as in Elixir.
    fn from(s: String) -> Term {
        Term::Binary(s.into_bytes())
    }
}

// === decode ===

/// Decode one external term (`binary_to_term/1`): the version byte 131, then
/// either a term or a compressed term (tag 80), and nothing after it.
pub fn decode(bytes: &[u8]) -> Result<Term, EtfError> {
    let mut r = Reader { rest: bytes };
    let version = r.u8()?;
    if version != VERSION {
        return Err(EtfError::BadVersion(version));
    }
    if r.rest.first() == Some(&tag::COMPRESSED) {
        r.u8()?;
        let inflated = inflate(&mut r)?;
        return decode_body(&inflated);
    }
    decode_body(r.rest)
}

/// Decode a term (no version byte) that must use all of `bytes`.
fn decode_body(bytes: &[u8]) -> Result<Term, EtfError> {
    let mut r = Reader { rest: bytes };
    let term = r.term(0)?;
    if r.rest.is_empty() {
        Ok(term)
    } else {
        Err(EtfError::TrailingBytes(r.rest.len()))
    }
}

/// Inflate the body of a compressed term: 4-byte big-endian size, then a zlib
/// stream that must inflate to exactly that size and end the input.
fn inflate(r: &mut Reader<'_>) -> Result<Vec<u8>, EtfError> {
    let declared = r.len32()?;
    if declared > MAX_INFLATED {
        return Err(EtfError::TooLarge);
    }
    let mut out = Vec::with_capacity(declared);
    let mut zlib = flate2::bufread::ZlibDecoder::new(r.rest);
    // One byte more than declared, so an oversized stream is seen, not cut.
    let limit = u64::try_from(declared).map_err(|_| EtfError::TooLarge)? + 1;
    (&mut zlib)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| EtfError::CompressedCorrupt)?;
    if out.len() != declared {
        return Err(EtfError::CompressedSizeMismatch {
            declared,
            actual: out.len(),
        });
    }
    let left = zlib.into_inner().len();
    if left != 0 {
        return Err(EtfError::TrailingBytes(left));
    }
    Ok(out)
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EtfError> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(EtfError::Truncated)?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EtfError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(EtfError::Truncated)?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, EtfError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<usize, EtfError> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    /// A 32-bit big-endian length or count.
    fn len32(&mut self) -> Result<usize, EtfError> {
        usize::try_from(u32::from_be_bytes(self.array()?)).map_err(|_| EtfError::TooLarge)
    }

    /// Check that `count` items of at least `min_size` bytes each can still
    /// follow, before looping over an untrusted count.
    fn expect_items(&self, count: usize, min_size: usize) -> Result<(), EtfError> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.rest.len() => Ok(()),
            _ => Err(EtfError::Truncated),
        }
    }

    /// One term nested inside `depth` containers.
    fn term(&mut self, depth: usize) -> Result<Term, EtfError> {
        if depth > MAX_DEPTH {
            return Err(EtfError::TooDeep);
        }
        let tag = self.u8()?;
        match tag {
            tag::SMALL_INTEGER => Ok(Term::Int(self.u8()?.into())),
            tag::INTEGER => Ok(Term::Int(i32::from_be_bytes(self.array()?).into())),
            tag::SMALL_BIG => {
                let n = usize::from(self.u8()?);
                self.big(n)
            }
            tag::LARGE_BIG => {
                let n = self.len32()?;
                self.big(n)
            }
            tag::NEW_FLOAT => {
                let f = f64::from_be_bytes(self.array()?);
                if f.is_finite() {
                    Ok(Term::Float(f))
                } else {
                    Err(EtfError::BadFloat)
                }
            }
            tag::ATOM | tag::ATOM_UTF8 => {
                let n = self.u16()?;
                self.atom(n, tag == tag::ATOM_UTF8)
            }
            tag::SMALL_ATOM | tag::SMALL_ATOM_UTF8 => {
                let n = usize::from(self.u8()?);
                self.atom(n, tag == tag::SMALL_ATOM_UTF8)
            }
            tag::BINARY => {
                let n = self.len32()?;
                Ok(Term::Binary(self.take(n)?.to_vec()))
            }
            tag::BIT_BINARY => {
                let n = self.len32()?;
                let bits = self.u8()?;
                let bytes = self.take(n)?;
                // A bitstring whose last byte is full is a binary; anything
                // else has no `Term` and is refused.
                if bits == 8 && n > 0 {
                    Ok(Term::Binary(bytes.to_vec()))
                } else {
                    Err(EtfError::BitBinary(bits))
                }
            }
            tag::SMALL_TUPLE => {
                let n = usize::from(self.u8()?);
                Ok(Term::Tuple(self.elements(n, depth)?))
            }
            tag::LARGE_TUPLE => {
                let n = self.len32()?;
                Ok(Term::Tuple(self.elements(n, depth)?))
            }
            tag::NIL => Ok(Term::List(Vec::new())),
            tag::STRING => {
                let n = self.u16()?;
                let bytes = self.take(n)?;
                Ok(Term::List(
                    bytes.iter().map(|&b| Term::Int(b.into())).collect(),
                ))
            }
            tag::LIST => {
                let n = self.len32()?;
                let mut items = self.elements(n, depth)?;
                match self.term(depth + 1)? {
                    Term::List(tail) => {
                        items.extend(tail);
                        Ok(Term::List(items))
                    }
                    _ => Err(EtfError::ImproperList),
                }
            }
            tag::MAP => {
                let n = self.len32()?;
                self.map(n, depth)
            }
            other => Err(EtfError::UnknownTag(other)),
        }
    }

    /// `n` terms, each one level deeper.
    fn elements(&mut self, n: usize, depth: usize) -> Result<Vec<Term>, EtfError> {
        self.expect_items(n, 1)?;
        let mut items = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            items.push(self.term(depth + 1)?);
        }
        Ok(items)
    }

    /// `n` key/value pairs with distinct keys.
    fn map(&mut self, n: usize, depth: usize) -> Result<Term, EtfError> {
        self.expect_items(n, 2)?;
        let mut entries = Vec::with_capacity(n.min(PREALLOC));
        // Keys are compared by their canonical encoding, which is exact
        // equality (`=:=`) on decoded terms: `1` and `1.0` stay distinct.
        let mut seen = HashSet::new();
        for _ in 0..n {
            let key = self.term(depth + 1)?;
            let value = self.term(depth + 1)?;
            if n > 1 && !seen.insert(encode(&key)) {
                return Err(EtfError::DuplicateMapKey);
            }
            entries.push((key, value));
        }
        Ok(Term::Map(entries))
    }

    /// A bignum body: sign byte, then `n` little-endian base-256 digits.
    fn big(&mut self, n: usize) -> Result<Term, EtfError> {
        let sign = self.u8()?;
        let digits = self.take(n)?;
        let mut magnitude: u128 = 0;
        for (i, &digit) in digits.iter().enumerate() {
            if digit == 0 {
                continue;
            }
            if i >= 16 {
                return Err(EtfError::BigIntOverflow);
            }
            magnitude |= u128::from(digit) << (8 * i);
        }
        let value = match sign {
            0 => i128::try_from(magnitude).map_err(|_| EtfError::BigIntOverflow)?,
            1 => 0i128
                .checked_sub_unsigned(magnitude)
                .ok_or(EtfError::BigIntOverflow)?,
            other => return Err(EtfError::BadBigSign(other)),
        };
        Ok(Term::Int(value))
    }

    /// An atom name of `n` bytes, Latin-1 or UTF-8.
    fn atom(&mut self, n: usize, utf8: bool) -> Result<Term, EtfError> {
        let bytes = self.take(n)?;
        let name: String = if utf8 {
            std::str::from_utf8(bytes)
                .map_err(|_| EtfError::BadAtom)?
                .to_owned()
        } else {
            bytes.iter().map(|&b| char::from(b)).collect()
        };
        if name.chars().count() > MAX_ATOM_CHARS {
            return Err(EtfError::BadAtom);
        }
        Ok(Term::Atom(name))
    }
}

// === encode ===

/// Encode `term` as OTP 25 `term_to_binary/1` would (see the module docs for
/// the tag chosen per term and for what is truncated).
pub fn encode(term: &Term) -> Vec<u8> {
    let mut out = vec![VERSION];
    encode_into(term, &mut out);
    out
}

/// A length for a 32-bit field: saturates (callers write only that many items).
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Widen a 32-bit count back to `usize` for slicing (lossless on the 32- and
/// 64-bit targets Sluice builds for; saturates elsewhere).
fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn encode_into(term: &Term, out: &mut Vec<u8>) {
    match term {
        Term::Int(v) => encode_int(*v, out),
        Term::Float(f) => {
            out.push(tag::NEW_FLOAT);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Term::Atom(name) => encode_atom(name, out),
        Term::Binary(bytes) => {
            let n = len_u32(bytes.len());
            out.push(tag::BINARY);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(bytes.get(..to_usize(n)).unwrap_or(bytes));
        }
        Term::List(items) if items.is_empty() => out.push(tag::NIL),
        Term::List(items) => encode_list(items, out),
        Term::Tuple(items) => {
            if let Ok(n) = u8::try_from(items.len()) {
                out.push(tag::SMALL_TUPLE);
                out.push(n);
                items.iter().for_each(|t| encode_into(t, out));
            } else {
                let n = len_u32(items.len());
                out.push(tag::LARGE_TUPLE);
                out.extend_from_slice(&n.to_be_bytes());
                items
                    .iter()
                    .take(to_usize(n))
                    .for_each(|t| encode_into(t, out));
            }
        }
        Term::Map(entries) => {
            let n = len_u32(entries.len());
            out.push(tag::MAP);
            out.extend_from_slice(&n.to_be_bytes());
            for (k, v) in entries.iter().take(to_usize(n)) {
                encode_into(k, out);
                encode_into(v, out);
            }
        }
    }
}

fn encode_int(v: i128, out: &mut Vec<u8>) {
    if let Ok(small) = u8::try_from(v) {
        out.push(tag::SMALL_INTEGER);
        out.push(small);
    } else if let Ok(int) = i32::try_from(v) {
        out.push(tag::INTEGER);
        out.extend_from_slice(&int.to_be_bytes());
    } else {
        let magnitude = v.unsigned_abs();
        let digits = magnitude.to_le_bytes();
        // |v| > 2^31 here, so 4..=16 digits; always a SMALL_BIG.
        let n = 16 - (magnitude.leading_zeros() / 8) as usize;
        out.push(tag::SMALL_BIG);
        out.push(n as u8);
        out.push(u8::from(v < 0));
        out.extend_from_slice(digits.get(..n).unwrap_or(&digits));
    }
}

fn encode_atom(name: &str, out: &mut Vec<u8>) {
    let name = match name.char_indices().nth(MAX_ATOM_CHARS) {
        Some((cut, _)) => name.get(..cut).unwrap_or(name),
        None => name,
    };
    let latin1: Option<Vec<u8>> = name.chars().map(|c| u8::try_from(c).ok()).collect();
    if let Some(bytes) = latin1 {
        // At most 255 characters, so the 16-bit length always fits.
        out.push(tag::ATOM);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
    } else if let Ok(n) = u8::try_from(name.len()) {
        out.push(tag::SMALL_ATOM_UTF8);
        out.push(n);
        out.extend_from_slice(name.as_bytes());
    } else {
        // 255 characters of at most 4 bytes: at most 1020 bytes.
        out.push(tag::ATOM_UTF8);
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
}

fn encode_list(items: &[Term], out: &mut Vec<u8>) {
    let bytes: Option<Vec<u8>> = if items.len() <= usize::from(u16::MAX) {
        items
            .iter()
            .map(|t| t.as_int().and_then(|v| u8::try_from(v).ok()))
            .collect()
    } else {
        None
    };
    if let Some(bytes) = bytes {
        out.push(tag::STRING);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
    } else {
        let n = len_u32(items.len());
        out.push(tag::LIST);
        out.extend_from_slice(&n.to_be_bytes());
        items
            .iter()
            .take(to_usize(n))
            .for_each(|t| encode_into(t, out));
        out.push(tag::NIL);
    }
}

#[cfg(test)]
#[path = "etf_tests.rs"]
mod tests;
