// Independent Phoenix.Token (Plug.Crypto.sign, HS256) minting for the e2e suite.
//
// key     = PBKDF2-HMAC-SHA256(secret_key_base, salt, 1000 iterations, 32 bytes)
// payload = :erlang.term_to_binary({data, signed_at_ms, max_age_s})
// token   = "SFMyNTY." + b64url(payload) + "." + b64url(HMAC-SHA256(key, "SFMyNTY." + b64url(payload)))
//
// Only the small subset of the Erlang External Term Format that tokens need is encoded here.
import { createHmac, pbkdf2Sync } from "node:crypto";

/** An Erlang atom (encoded as ATOM_EXT, tag 100, like OTP <= 25 does). */
export class Atom {
  constructor(name) { this.name = name; }
}
/** An Erlang tuple. */
export class Tuple {
  constructor(items) { this.items = items; }
}
export const atom = (name) => new Atom(name);
export const tuple = (...items) => new Tuple(items);

const VERSION = 131;

function u16(n) { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; }
function u32(n) { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; }

function encodeInteger(value) {
  const v = BigInt(value);
  if (v >= 0n && v <= 255n) return Buffer.from([97, Number(v)]); // SMALL_INTEGER_EXT
  if (v >= -(2n ** 31n) && v <= 2n ** 31n - 1n) { // INTEGER_EXT
    const b = Buffer.alloc(5); b[0] = 98; b.writeInt32BE(Number(v), 1); return b;
  }
  // SMALL_BIG_EXT: n (digit count), sign, little-endian base-256 digits
  const sign = v < 0n ? 1 : 0;
  let mag = v < 0n ? -v : v;
  const digits = [];
  while (mag > 0n) { digits.push(Number(mag & 0xffn)); mag >>= 8n; }
  if (digits.length > 255) throw new Error("integer too large for SMALL_BIG_EXT");
  return Buffer.from([110, digits.length, sign, ...digits]);
}

function encodeTerm(term) {
  if (term instanceof Atom) {
    const name = Buffer.from(term.name, "latin1");
    return Buffer.concat([Buffer.from([100]), u16(name.length), name]); // ATOM_EXT
  }
  if (term === null || term === undefined) return encodeTerm(atom("nil"));
  if (term === true) return encodeTerm(atom("true"));
  if (term === false) return encodeTerm(atom("false"));
  if (typeof term === "bigint") return encodeInteger(term);
  if (typeof term === "number") {
    if (Number.isInteger(term)) return encodeInteger(term);
    const b = Buffer.alloc(9); b[0] = 70; b.writeDoubleBE(term, 1); return b; // NEW_FLOAT_EXT
  }
  if (typeof term === "string" || Buffer.isBuffer(term)) {
    const bytes = Buffer.isBuffer(term) ? term : Buffer.from(term, "utf8");
    return Buffer.concat([Buffer.from([109]), u32(bytes.length), bytes]); // BINARY_EXT
  }
  if (term instanceof Tuple) {
    if (term.items.length > 255) throw new Error("tuple too large");
    return Buffer.concat([Buffer.from([104, term.items.length]), ...term.items.map(encodeTerm)]); // SMALL_TUPLE_EXT
  }
  if (Array.isArray(term)) {
    if (term.length === 0) return Buffer.from([106]); // NIL_EXT
    return Buffer.concat([Buffer.from([108]), u32(term.length), ...term.map(encodeTerm), Buffer.from([106])]);
  }
  // MAP_EXT. A JS Map allows non-string keys (atoms); a plain object gives binary keys.
  // Pairs are written in the given order (Erlang sorts small maps by key; callers pass them sorted).
  const pairs = term instanceof Map ? [...term.entries()] : Object.entries(term);
  return Buffer.concat([
    Buffer.from([116]), u32(pairs.length),
    ...pairs.flatMap(([k, v]) => [encodeTerm(k), encodeTerm(v)]),
  ]);
}

/** :erlang.term_to_binary/1 for the supported subset. */
export function termToBinary(term) {
  return Buffer.concat([Buffer.from([VERSION]), encodeTerm(term)]);
}

const keyCache = new Map();
/** PBKDF2-HMAC-SHA256(secret, salt, 1000, 32). */
export function deriveKey(secretKeyBase, salt = "user socket") {
  const id = `${secretKeyBase}\u0000${salt}`;
  if (!keyCache.has(id)) keyCache.set(id, pbkdf2Sync(secretKeyBase, salt, 1000, 32, "sha256"));
  return keyCache.get(id);
}

/** Signs an already encoded payload (e.g. a legacy map term). */
export function signPayload(secretKeyBase, salt, payloadBytes) {
  const protectedAndPayload = "SFMyNTY." + Buffer.from(payloadBytes).toString("base64url");
  const mac = createHmac("sha256", deriveKey(secretKeyBase, salt)).update(protectedAndPayload).digest();
  return protectedAndPayload + "." + mac.toString("base64url");
}

/**
 * Phoenix.Token.sign(secret_key_base, salt, data, signed_at: s, max_age: m).
 * @param {object} o
 * @param {string} o.secret secret_key_base
 * @param {*} o.data term (number/bigint/string/Atom/Tuple/Map/object/array)
 * @param {string} [o.salt] default "user socket"
 * @param {number|bigint} [o.signedAtMs] default Date.now()
 * @param {number|Atom} [o.maxAge] seconds, default 86400 (Phoenix's default); atom("infinity") allowed
 */
export function signToken({ secret, data, salt = "user socket", signedAtMs = Date.now(), maxAge = 86400 }) {
  const payload = termToBinary(tuple(data, BigInt(signedAtMs), maxAge));
  return signPayload(secret, salt, payload);
}
