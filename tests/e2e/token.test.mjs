// Unit tests for the suite's own Phoenix.Token minting (lib/token.mjs) against the test
// vectors of shared/notes/phoenix-protocol.md §6.3 (minted with the real Plug.Crypto).
// No server needed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { atom, deriveKey, signPayload, signToken, termToBinary, tuple } from "./lib/token.mjs";

const SECRET = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const SIGNED_AT_MS = 1_700_000_000n * 1000n;

test("token: PBKDF2 key derivation matches the §6.3 vector", () => {
  assert.equal(deriveKey(SECRET, "user socket").toString("hex"),
    "b2ffd5c8b4e2c5c26b357cff09fe0fa16f9df913059a54777b86acdb18e91711");
});

test("token: ETF payload bytes of {42, 1700000000000, 86400}", () => {
  assert.equal(termToBinary(tuple(42, SIGNED_AT_MS, 86400)).toString("hex"),
    "836803612a6e06000068e5cf8b016200015180");
});

const vectors = [
  { name: "integer 42", data: 42, maxAge: 86400,
    token: "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.ohfF7q1_1Giuz3606zCGKz8FKJKwc4OthRFPWqvImO8" },
  { name: "string user-123, max_age 1209600", data: "user-123", maxAge: 1_209_600,
    token: "SFMyNTY.g2gDbQAAAAh1c2VyLTEyM24GAABo5c-LAWIAEnUA.IokoGIrKjmF1oB5eBOk-1rFlW0Pq2PlzBn5asv4qdHk" },
  { name: "map with string keys", data: { role: "admin", user_id: 7 }, maxAge: 86400,
    token: "SFMyNTY.g2gDdAAAAAJtAAAABHJvbGVtAAAABWFkbWlubQAAAAd1c2VyX2lkYQduBgAAaOXPiwFiAAFRgA.erQ6gqyyf15Bb8xrEbGnwqBQJ0u7PihRk8lR8Pei1tE" },
  { name: "big integer 123456789012", data: 123_456_789_012n, maxAge: 86400,
    token: "SFMyNTY.g2gDbgUAFBqZvhxuBgAAaOXPiwFiAAFRgA.aEhjhoI6-SSK9VM8QqyJb-ZlF8Xv7L2wctiRA2YDJa4" },
  { name: "map with an atom key", data: new Map([[atom("user_id"), 7]]), maxAge: 86400,
    token: "SFMyNTY.g2gDdAAAAAFkAAd1c2VyX2lkYQduBgAAaOXPiwFiAAFRgA.GDqB_1PoRVfbk12pVc35xiVDT3I0LWW_uOzoJDWu1EQ" },
  { name: "integer 1, max_age :infinity", data: 1, maxAge: atom("infinity"),
    token: "SFMyNTY.g2gDYQFuBgAAaOXPiwFkAAhpbmZpbml0eQ.i0Cc7bCyTU83aa5ocM82QBe6E1b2Jo8bdqf1Czuih4I" },
];

for (const v of vectors) {
  test(`token: vector ${v.name}`, () => {
    assert.equal(signToken({ secret: SECRET, data: v.data, signedAtMs: SIGNED_AT_MS, maxAge: v.maxAge }), v.token);
  });
}

test("token: legacy map vector %{data: 5, signed: 1700000000000}", () => {
  const payload = termToBinary(new Map([[atom("data"), 5], [atom("signed"), SIGNED_AT_MS]]));
  assert.equal(signPayload(SECRET, "user socket", payload),
    "SFMyNTY.g3QAAAACZAAEZGF0YWEFZAAGc2lnbmVkbgYAAGjlz4sB.NAnw5a8SsfxbZecgKURzUZhbUHEnrOC64z4KIg5Hu1k");
});

test("token: a different salt gives a different signature", () => {
  const a = signToken({ secret: SECRET, data: 42, signedAtMs: SIGNED_AT_MS });
  const b = signToken({ secret: SECRET, data: 42, signedAtMs: SIGNED_AT_MS, salt: "other salt" });
  assert.equal(a.split(".")[1], b.split(".")[1]);
  assert.notEqual(a.split(".")[2], b.split(".")[2]);
});
