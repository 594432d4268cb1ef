// POST /api/broadcast: JSON and binary bodies reach phoenix.js subscribers; auth → 401.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { API_KEY, apiBroadcast, apiBroadcastBinary, startServer, withLogs } from "./lib/server.mjs";
import { bytesOf, joinOk, nextEvent, phxSocket, push, v1Codec } from "./lib/phx.mjs";
import { RawClient, decodeServerBinary } from "./lib/raw.mjs";

let srv;
before(async () => { srv = await startServer(); }, { timeout: 30000 });
after(async () => { await srv?.stop(); }, { timeout: 15000 });
const T = (name, fn) => test(name, withLogs(() => srv, fn));

const is2xx = (r) => r.status >= 200 && r.status < 300;

T("api: JSON broadcast reaches every subscriber via channel.on(event)", async (t) => {
  const a = await phxSocket(t, srv, { user: 1 });
  const b = await phxSocket(t, srv, { user: 2 });
  const ca = a.channel("room:api");
  const cb = b.channel("room:api");
  await Promise.all([joinOk(ca), joinOk(cb)]);
  const payload = { body: "from api", n: [1, 2, 3], nested: { ok: true }, s: "é☃" };
  const ga = nextEvent(ca, "news", 3000);
  const gb = nextEvent(cb, "news", 3000);
  const r = await apiBroadcast(srv, { topic: "room:api", event: "news", payload });
  assert.ok(is2xx(r), `status ${r.status} ${r.text}`);
  assert.deepEqual(await ga, payload);
  assert.deepEqual(await gb, payload);
  const frame = a.record.frames.find((m) => m.event === "news");
  assert.equal(frame.join_ref, null);
  assert.equal(frame.ref, null);
});

T("api: JSON broadcast wire frame is [null,null,topic,event,payload]", async (t) => {
  const c = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(3)}&vsn=2.0.0`, { t });
  c.sendJson(["1", "1", "room:apiraw", "phx_join", {}]);
  await c.reply("1");
  const r = await apiBroadcast(srv, { topic: "room:apiraw", event: "evt", payload: { x: 1 } });
  assert.ok(is2xx(r), `status ${r.status}`);
  assert.deepEqual(await c.waitFrame((d) => Array.isArray(d) && d[3] === "evt", 3000, "broadcast frame"),
    [null, null, "room:apiraw", "evt", { x: 1 }]);
});

T("api: broadcast to echo:* and user:* topics also reaches their subscribers", async (t) => {
  const s = await phxSocket(t, srv, { user: 55 });
  const ce = s.channel("echo:apibc");
  const cu = s.channel("user:55");
  await Promise.all([joinOk(ce), joinOk(cu)]);
  const ge = nextEvent(ce, "note", 3000);
  const gu = nextEvent(cu, "note", 3000);
  assert.ok(is2xx(await apiBroadcast(srv, { topic: "echo:apibc", event: "note", payload: { to: "echo" } })));
  assert.ok(is2xx(await apiBroadcast(srv, { topic: "user:55", event: "note", payload: { to: "user" } })));
  assert.deepEqual(await ge, { to: "echo" });
  assert.deepEqual(await gu, { to: "user" });
});

T("api: binary body → subscribers get an ArrayBuffer (kind 2 frame)", async (t) => {
  const s = await phxSocket(t, srv, { user: 4 });
  const ch = s.channel("room:apibin");
  await joinOk(ch);
  const raw = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(5)}&vsn=2.0.0`, { t });
  raw.sendJson(["1", "1", "room:apibin", "phx_join", {}]);
  await raw.reply("1");
  const bytes = Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff);
  const got = nextEvent(ch, "blob", 3000);
  const r = await apiBroadcastBinary(srv, { topic: "room:apibin", event: "blob", bytes });
  assert.ok(is2xx(r), `status ${r.status} ${r.text}`);
  assert.deepEqual(bytesOf(await got), bytes);
  const f = decodeServerBinary(await raw.waitFrame((d, fr) => fr.type === "binary", 3000, "binary broadcast"));
  assert.equal(f.kind, 2);
  assert.equal(f.topic, "room:apibin");
  assert.equal(f.event, "blob");
  assert.deepEqual([...f.payload], bytes);
});

T("api: V1 subscribers receive JSON broadcasts as objects", async (t) => {
  const s = await phxSocket(t, srv, { socketOpts: { vsn: "1.0.0", ...v1Codec } });
  const ch = s.channel("room:apiv1");
  await joinOk(ch);
  const got = nextEvent(ch, "v1news", 3000);
  assert.ok(is2xx(await apiBroadcast(srv, { topic: "room:apiv1", event: "v1news", payload: { v: 1 } })));
  assert.deepEqual(await got, { v: 1 });
});

T("api: broadcasts go only to the named topic", async (t) => {
  const s = await phxSocket(t, srv);
  const c1 = s.channel("room:only1");
  const c2 = s.channel("room:only2");
  await Promise.all([joinOk(c1), joinOk(c2)]);
  const seen2 = [];
  c2.on("x", (p) => seen2.push(p));
  const g1 = nextEvent(c1, "x", 3000);
  assert.ok(is2xx(await apiBroadcast(srv, { topic: "room:only1", event: "x", payload: { a: 1 } })));
  await g1;
  const probe = s.channel("echo:probe2");
  await joinOk(probe);
  await push(probe, "ping", {});
  assert.deepEqual(seen2, []);
});

T("api: broadcast to a topic with no subscribers is still 2xx", async () => {
  const r = await apiBroadcast(srv, { topic: "room:nobody-here", event: "x", payload: {} });
  assert.ok(is2xx(r), `status ${r.status}`);
});

T("api: missing or wrong key → 401 and nothing is delivered", async (t) => {
  const s = await phxSocket(t, srv);
  const ch = s.channel("room:apiauth");
  await joinOk(ch);
  const seen = [];
  ch.on("sneaky", (p) => seen.push(p));
  const msg = { topic: "room:apiauth", event: "sneaky", payload: { no: 1 } };
  assert.equal((await apiBroadcast(srv, msg, { key: null })).status, 401, "no Authorization header");
  assert.equal((await apiBroadcast(srv, msg, { key: "wrong-key" })).status, 401, "wrong key");
  assert.equal((await apiBroadcast(srv, msg, { auth: `Basic ${API_KEY}` })).status, 401, "wrong scheme");
  assert.equal((await apiBroadcast(srv, msg, { auth: `Bearer ${API_KEY}x` })).status, 401, "key with a suffix");
  assert.equal((await apiBroadcastBinary(srv, { topic: "room:apiauth", event: "sneaky", bytes: [1] }, { key: null })).status, 401, "binary without key");
  // after a legit broadcast arrives, nothing from the refused ones may have arrived before it
  const g = nextEvent(ch, "legit", 3000);
  assert.ok(is2xx(await apiBroadcast(srv, { topic: "room:apiauth", event: "legit", payload: {} })));
  await g;
  assert.deepEqual(seen, []);
});
