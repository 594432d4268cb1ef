// Socket authentication: Phoenix.Token in query (token / userToken) or the 1.8 authToken
// subprotocol, token validity (signature, salt, age, future skew), vsn negotiation,
// `sluice token`, origin checks.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { SECRET, runSluice, startServer, withLogs } from "./lib/server.mjs";
import { join, joinOk, phxSocket, push, waitFor } from "./lib/phx.mjs";
import { tryUpgrade } from "./lib/raw.mjs";
import { signToken } from "./lib/token.mjs";

let srv;
before(async () => { srv = await startServer(); }, { timeout: 30000 });
after(async () => { await srv?.stop(); }, { timeout: 15000 });
const T = (name, fn) => test(name, withLogs(() => srv, fn));

const now = () => Date.now();
const DAY = 86_400_000;

/** Upgrade status for a query string, closing the socket if it opened. */
async function statusFor(query, opts = {}) {
  const r = await tryUpgrade(`${srv.wsUrl}${query}`, opts);
  r.ws?.close();
  return r;
}

T("auth: valid token in ?token= → 101", async () => {
  assert.equal((await statusFor(`?token=${srv.token(42)}&vsn=2.0.0`)).status, 101);
});

T("auth: valid token in ?userToken= → 101 and identifies the user", async (t) => {
  assert.equal((await statusFor(`?userToken=${srv.token(42)}&vsn=2.0.0`)).status, 101);
  const socket = await phxSocket(t, srv, { user: null, params: { userToken: srv.token(77) } });
  await joinOk(socket.channel("user:77"));
});

T("auth: missing token → 403", async () => {
  assert.equal((await statusFor("?vsn=2.0.0")).status, 403);
  assert.equal((await statusFor("")).status, 403);
});

T("auth: malformed / tampered / wrongly keyed tokens → 403", async () => {
  const good = srv.token(42);
  const [h, p, s] = good.split(".");
  const flip = (str) => str.slice(0, -2) + (str.at(-2) === "A" ? "B" : "A") + str.at(-1);
  const bad = {
    garbage: "not-a-token",
    empty: "",
    twoParts: `${h}.${p}`,
    badHeader: `SFMyNTZ.${p}.${s}`,
    flippedSig: `${h}.${p}.${flip(s)}`,
    flippedPayload: `${h}.${flip(p)}.${s}`,
    wrongSecret: signToken({ secret: "some-other-secret-key-base-0123456789abcdef", data: 42 }),
    wrongSalt: signToken({ secret: SECRET, data: 42, salt: "not user socket" }),
  };
  for (const [name, tok] of Object.entries(bad)) {
    const r = await statusFor(`?token=${encodeURIComponent(tok)}&vsn=2.0.0`);
    assert.equal(r.status, 403, `${name} token must be refused with 403, got ${JSON.stringify(r.status)}`);
  }
});

T("auth: token older than 1209600 s → 403; younger → 101", async () => {
  const expired = signToken({ secret: SECRET, data: 42, signedAtMs: now() - 14 * DAY - 3_600_000, maxAge: 1_209_600 });
  assert.equal((await statusFor(`?token=${expired}&vsn=2.0.0`)).status, 403);
  const old = signToken({ secret: SECRET, data: 42, signedAtMs: now() - 13 * DAY, maxAge: 1_209_600 });
  assert.equal((await statusFor(`?token=${old}&vsn=2.0.0`)).status, 101);
});

T("auth: token signed > 60 s in the future → 403; 20 s ahead → 101", async () => {
  const future = signToken({ secret: SECRET, data: 42, signedAtMs: now() + 120_000 });
  assert.equal((await statusFor(`?token=${future}&vsn=2.0.0`)).status, 403);
  const slightly = signToken({ secret: SECRET, data: 42, signedAtMs: now() + 20_000 });
  assert.equal((await statusFor(`?token=${slightly}&vsn=2.0.0`)).status, 101);
});

T("auth: token data shapes accepted for user ids (big integer)", async (t) => {
  const socket = await phxSocket(t, srv, { user: 123_456_789_012n });
  await joinOk(socket.channel("user:123456789012"));
});

T("auth: vsn negotiation — 1.0.0/2.0.0/absent → 101; 3.0.0 and garbage → 403", async () => {
  const tok = srv.token(42);
  for (const [vsn, expected] of [["2.0.0", 101], ["1.0.0", 101], [null, 101], ["3.0.0", 403], ["123.1.1", 403], ["banana", 403]]) {
    const q = vsn === null ? `?token=${tok}` : `?token=${tok}&vsn=${vsn}`;
    assert.equal((await statusFor(q)).status, expected, `vsn=${vsn}`);
  }
});

T("auth: phoenix.js authToken (subprotocol) connects; server answers Sec-WebSocket-Protocol: phoenix", async (t) => {
  const tok = srv.token(42);
  const socket = await phxSocket(t, srv, { user: null, socketOpts: { authToken: tok } });
  const offered = socket.record.offered[0];
  assert.equal(offered[0], "phoenix");
  assert.equal(offered[1], "base64url.bearer.phx." + Buffer.from(tok).toString("base64").replace(/=/g, ""));
  assert.equal(socket.record.protocols[0], "phoenix");
  assert.equal(socket.record.responses[0].headers["sec-websocket-protocol"], "phoenix");
  await joinOk(socket.channel("user:42"));
  const ch = socket.channel("echo:authtoken");
  await joinOk(ch);
  assert.deepEqual(await push(ch, "ping", { a: 1 }), { status: "ok", response: { a: 1 } });
});

T("auth: raw subprotocol bearer (standard and URL-safe base64) → 101 with protocol phoenix", async () => {
  const tok = srv.token(42);
  const std = Buffer.from(tok).toString("base64").replace(/=/g, "");
  const url = Buffer.from(tok).toString("base64url");
  for (const enc of [std, url]) {
    const r = await tryUpgrade(`${srv.wsUrl}?vsn=2.0.0`, { protocols: ["phoenix", `base64url.bearer.phx.${enc}`] });
    r.ws?.close();
    assert.equal(r.status, 101);
    assert.equal(r.protocol, "phoenix");
  }
});

T("auth: invalid authToken → 403", async () => {
  const bad = Buffer.from("SFMyNTY.nope.nope").toString("base64").replace(/=/g, "");
  const r = await tryUpgrade(`${srv.wsUrl}?vsn=2.0.0`, { protocols: ["phoenix", `base64url.bearer.phx.${bad}`] });
  r.ws?.close();
  assert.equal(r.status, 403);
});

T("auth: refused phoenix.js socket errors (close 1006) and keeps retrying", async (t) => {
  const socket = await phxSocket(t, srv, { user: null, params: { token: "invalid" }, connect: false });
  socket.connect();
  await waitFor(() => socket.record.urls.length >= 3, 5000, "3 connection attempts (reconnectAfterMs 100)");
  assert.equal(socket.opens, 0);
  assert.ok(socket.record.responses.some((r) => r.status === 403), `a 403 was seen: ${JSON.stringify(socket.record.responses)}`);
  assert.ok(socket.closeEvents.some((c) => c.code === 1006), `close 1006 seen: ${JSON.stringify(socket.closeEvents)}`);
  assert.ok(socket.errorEvents.length >= 1);
});

T("auth: `sluice token --user 42` prints a token that connects as user 42", async (t) => {
  const r = runSluice(["token", "--user", "42", "--secret-key-base", SECRET]);
  assert.equal(r.code, 0, `sluice token failed: ${r.stderr}`);
  const tok = r.stdout.trim();
  assert.match(tok, /^SFMyNTY\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
  const socket = await phxSocket(t, srv, { user: null, params: { token: tok } });
  await joinOk(socket.channel("user:42"));
  const other = socket.channel("user:43");
  const refused = await join(other);
  other.leave();
  assert.equal(refused.status, "error");
});

describe("token flags (--token-salt, --token-max-age)", () => {
  let s2;
  before(async () => { s2 = await startServer({ args: ["--token-salt", "custom salt", "--token-max-age", "30s"] }); }, { timeout: 30000 });
  after(async () => { await s2?.stop(); }, { timeout: 15000 });

  test("custom salt is used; default salt is refused", withLogs(() => s2, async () => {
    const good = signToken({ secret: SECRET, data: 42, salt: "custom salt" });
    const wrong = signToken({ secret: SECRET, data: 42 });
    for (const [tok, expected] of [[good, 101], [wrong, 403]]) {
      const r = await tryUpgrade(`${s2.wsUrl}?token=${tok}&vsn=2.0.0`);
      r.ws?.close();
      assert.equal(r.status, expected);
    }
  }));

  test("--token-max-age 30s: 10 s old ok, 60 s old refused", withLogs(() => s2, async () => {
    const fresh = signToken({ secret: SECRET, data: 42, salt: "custom salt", signedAtMs: now() - 10_000 });
    const stale = signToken({ secret: SECRET, data: 42, salt: "custom salt", signedAtMs: now() - 60_000 });
    for (const [tok, expected] of [[fresh, 101], [stale, 403]]) {
      const r = await tryUpgrade(`${s2.wsUrl}?token=${tok}&vsn=2.0.0`);
      r.ws?.close();
      assert.equal(r.status, expected);
    }
  }));
});

describe("origin check (--check-origin //example.com,https://*.foo.com)", () => {
  let s3;
  before(async () => { s3 = await startServer({ args: ["--check-origin", "//example.com,https://*.foo.com"] }); }, { timeout: 30000 });
  after(async () => { await s3?.stop(); }, { timeout: 15000 });

  const cases = [
    [undefined, 101],                     // no Origin header → allowed
    ["http://example.com", 101],
    ["https://example.com:8443", 101],    // "//host" = any scheme and port
    ["https://a.foo.com", 101],
    ["https://deep.sub.foo.com", 101],
    ["https://foo.com", 101],             // "*.foo.com" also matches the bare domain (Phoenix)
    ["http://a.foo.com", 403],            // scheme must be https
    ["https://evil.com", 403],
    ["https://notfoo.com", 403],
    ["https://example.com.evil.com", 403],
    ["null", 403],
  ];
  for (const [origin, expected] of cases) {
    test(`origin ${origin ?? "(none)"} → ${expected}`, withLogs(() => s3, async () => {
      const r = await tryUpgrade(`${s3.wsUrl}?token=${s3.token(42)}&vsn=2.0.0`, origin ? { headers: { Origin: origin } } : {});
      r.ws?.close();
      assert.equal(r.status, expected);
    }));
  }

  test("phoenix.js with an allowed Origin works end to end", withLogs(() => s3, async (t) => {
    const socket = await phxSocket(t, s3, { transportOpts: { origin: "https://app.foo.com" } });
    const ch = socket.channel("echo:origin");
    await joinOk(ch);
    assert.deepEqual(await push(ch, "ping", { o: 1 }), { status: "ok", response: { o: 1 } });
  }));
});
