// Exact wire behaviour checked with a raw `ws` client (things phoenix.js cannot send:
// chosen refs, pushes on unjoined topics, duplicate joins, stale join_refs), V1 framing
// without vsn, and the per-connection channel limit.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startServer, withLogs } from "./lib/server.mjs";
import { RawClient } from "./lib/raw.mjs";

let srv;
before(async () => { srv = await startServer(); }, { timeout: 30000 });
after(async () => { await srv?.stop(); }, { timeout: 15000 });
const T = (name, fn) => test(name, withLogs(() => srv, fn));

const v2 = (t, user = 42) => RawClient.connect(`${srv.wsUrl}?token=${srv.token(user)}&vsn=2.0.0`, { t });

T("raw v2: heartbeat before any join gets exactly the Phoenix reply frame", async (t) => {
  const c = await v2(t);
  c.sendJson([null, "1", "phoenix", "heartbeat", {}]);
  assert.deepEqual(await c.reply("1"), [null, "1", "phoenix", "phx_reply", { status: "ok", response: {} }]);
});

T("raw v2: join and echo reply frames are [join_ref, ref, topic, phx_reply, {status, response}]", async (t) => {
  const c = await v2(t);
  c.sendJson(["1", "1", "echo:raw", "phx_join", { some: "params" }]);
  const jr = await c.reply("1");
  assert.deepEqual(jr.slice(0, 4), ["1", "1", "echo:raw", "phx_reply"]);
  assert.equal(jr[4].status, "ok");
  assert.equal(typeof jr[4].response, "object");
  c.sendJson(["1", "2", "echo:raw", "ping", { a: 1, b: [true, null] }]);
  assert.deepEqual(await c.reply("2"), ["1", "2", "echo:raw", "phx_reply", { status: "ok", response: { a: 1, b: [true, null] } }]);
});

T("raw v2: push on a topic that is not joined → error unmatched topic (null join_ref)", async (t) => {
  const c = await v2(t);
  c.sendJson(["9", "3", "echo:notjoined", "ping", { x: 1 }]);
  assert.deepEqual(await c.reply("3"),
    [null, "3", "echo:notjoined", "phx_reply", { status: "error", response: { reason: "unmatched topic" } }]);
  assert.equal(c.isOpen, true);
});

T("raw v2: join of an unknown topic prefix → error unmatched topic (null join_ref)", async (t) => {
  const c = await v2(t);
  c.sendJson(["4", "4", "nope:1", "phx_join", {}]);
  assert.deepEqual(await c.reply("4"),
    [null, "4", "nope:1", "phx_reply", { status: "error", response: { reason: "unmatched topic" } }]);
});

T("raw v2: user:<other id> → error unauthorized with the join's refs; no phx_close", async (t) => {
  const c = await v2(t, 42);
  c.sendJson(["5", "5", "user:43", "phx_join", {}]);
  assert.deepEqual(await c.reply("5"), ["5", "5", "user:43", "phx_reply", { status: "error", response: { reason: "unauthorized" } }]);
  c.sendJson([null, "6", "phoenix", "heartbeat", {}]);
  await c.reply("6");
  assert.equal(c.texts.filter((d) => d[3] === "phx_close").length, 0);
  c.sendJson(["7", "7", "user:42", "phx_join", {}]);
  assert.equal((await c.reply("7"))[4].status, "ok");
});

T("raw v2: duplicate join → ok for the new join, then phx_close with the OLD join_ref", async (t) => {
  const c = await v2(t);
  c.sendJson(["1", "1", "echo:dup", "phx_join", {}]);
  assert.equal((await c.reply("1"))[4].status, "ok");
  c.sendJson(["5", "5", "echo:dup", "phx_join", {}]);
  const r5 = await c.reply("5");
  assert.deepEqual(r5.slice(0, 4), ["5", "5", "echo:dup", "phx_reply"]);
  assert.equal(r5[4].status, "ok");
  const close = await c.waitFrame((d) => Array.isArray(d) && d[2] === "echo:dup" && d[3] === "phx_close", 3000, "phx_close for the old join");
  assert.equal(close[0], "1", "phx_close carries the old join_ref");
  const idxReply = c.texts.findIndex((d) => d[1] === "5" && d[3] === "phx_reply");
  const idxClose = c.texts.findIndex((d) => d[3] === "phx_close");
  assert.ok(idxReply < idxClose, "reply for the new join precedes phx_close of the old one");

  // the new join is alive
  c.sendJson(["5", "6", "echo:dup", "ping", { alive: true }]);
  assert.deepEqual((await c.reply("6"))[4], { status: "ok", response: { alive: true } });
});

T("raw v2: messages with a stale join_ref are silently dropped", async (t) => {
  const c = await v2(t);
  c.sendJson(["1", "1", "echo:stale", "phx_join", {}]);
  await c.reply("1");
  c.sendJson(["2", "2", "echo:stale", "phx_join", {}]);
  await c.reply("2");
  c.sendJson(["1", "3", "echo:stale", "ping", { stale: true }]);  // old join_ref → dropped
  c.sendJson(["2", "4", "echo:stale", "ping", { fresh: true }]);  // current join_ref → answered
  assert.deepEqual((await c.reply("4"))[4], { status: "ok", response: { fresh: true } });
  c.sendJson([null, "5", "phoenix", "heartbeat", {}]);
  await c.reply("5");
  assert.equal(c.texts.filter((d) => d[1] === "3").length, 0, `no frame may answer the stale push: ${c.describeFrames()}`);
  // a stale leave gets no reply either, and does not close the current join
  c.sendJson(["1", "6", "echo:stale", "phx_leave", {}]);
  c.sendJson(["2", "7", "echo:stale", "ping", { still: "joined" }]);
  assert.deepEqual((await c.reply("7"))[4], { status: "ok", response: { still: "joined" } });
  assert.equal(c.texts.filter((d) => d[1] === "6").length, 0, "stale leave is dropped");
});

T("raw v2: leave → ok reply, then phx_close with the join_ref; topic is then unjoined", async (t) => {
  const c = await v2(t);
  c.sendJson(["8", "8", "echo:bye", "phx_join", {}]);
  await c.reply("8");
  c.sendJson(["8", "9", "echo:bye", "phx_leave", {}]);
  assert.deepEqual(await c.reply("9"), ["8", "9", "echo:bye", "phx_reply", { status: "ok", response: {} }]);
  const close = await c.waitFrame((d) => Array.isArray(d) && d[3] === "phx_close", 3000, "phx_close");
  assert.equal(close[0], "8");
  assert.equal(close[2], "echo:bye");
  assert.ok(c.texts.findIndex((d) => d[1] === "9") < c.texts.findIndex((d) => d[3] === "phx_close"));
  c.sendJson([null, "10", "echo:bye", "ping", {}]);
  assert.deepEqual((await c.reply("10"))[4], { status: "error", response: { reason: "unmatched topic" } });
});

T("raw v2: leave of a topic that is not joined → ok", async (t) => {
  const c = await v2(t);
  c.sendJson(["11", "11", "echo:nothere", "phx_leave", {}]);
  assert.deepEqual((await c.reply("11"))[4], { status: "ok", response: {} });
});

T("raw v2: room push → broadcast frame with null refs, and no reply to the pusher", async (t) => {
  const a = await v2(t, 1);
  const b = await v2(t, 2);
  a.sendJson(["1", "1", "room:raw", "phx_join", {}]);
  b.sendJson(["1", "1", "room:raw", "phx_join", {}]);
  await a.reply("1");
  await b.reply("1");
  a.sendJson(["1", "2", "room:raw", "shout", { body: "raw" }]);
  const isShout = (d) => Array.isArray(d) && d[3] === "shout";
  const fb = await b.waitFrame(isShout, 3000, "broadcast at b");
  const fa = await a.waitFrame(isShout, 3000, "broadcast at the sender");
  assert.deepEqual(fb, [null, null, "room:raw", "shout", { body: "raw" }]);
  assert.deepEqual(fa, [null, null, "room:raw", "shout", { body: "raw" }]);
  a.sendJson([null, "3", "phoenix", "heartbeat", {}]);
  await a.reply("3");
  assert.equal(a.texts.filter((d) => d[1] === "2").length, 0, "room pushes get no reply");
});

T("raw v1 (no vsn): object frames, no join_ref in server frames", async (t) => {
  const c = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(42)}`, { t });
  c.sendJson({ topic: "echo:v1raw", event: "phx_join", payload: {}, ref: "1" });
  const isRef = (r) => (d) => d && typeof d === "object" && !Array.isArray(d) && d.ref === r;
  const jr = await c.waitFrame(isRef("1"), 3000, "V1 join reply");
  assert.equal(jr.topic, "echo:v1raw");
  assert.equal(jr.event, "phx_reply");
  assert.equal(jr.payload.status, "ok");
  assert.ok(!("join_ref" in jr), `V1 never emits join_ref: ${JSON.stringify(jr)}`);
  // the join carried no join_ref, so pushes carry none either (a non-null one would be stale)
  c.sendJson({ topic: "echo:v1raw", event: "ping", payload: { v: 1 }, ref: "2" });
  const pr = await c.waitFrame(isRef("2"), 3000, "V1 echo reply");
  assert.deepEqual(pr, { topic: "echo:v1raw", event: "phx_reply", payload: { status: "ok", response: { v: 1 } }, ref: "2" });
  c.sendJson({ topic: "phoenix", event: "heartbeat", payload: {}, ref: "3" });
  assert.deepEqual(await c.waitFrame(isRef("3"), 3000, "V1 heartbeat reply"),
    { topic: "phoenix", event: "phx_reply", payload: { status: "ok", response: {} }, ref: "3" });
  c.sendJson({ topic: "user:43", event: "phx_join", payload: {}, ref: "4" });
  assert.deepEqual((await c.waitFrame(isRef("4"), 3000, "V1 refused join")).payload,
    { status: "error", response: { reason: "unauthorized" } });
});

T("raw v1 (vsn=1.0.0): null join_ref is accepted on pushes", async (t) => {
  const c = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(42)}&vsn=1.0.0`, { t });
  c.sendJson({ topic: "echo:v1null", event: "phx_join", payload: {}, ref: "1", join_ref: null });
  await c.waitFrame((d) => d?.ref === "1", 3000, "join reply");
  c.sendJson({ topic: "echo:v1null", event: "ping", payload: { n: 2 }, ref: "2", join_ref: null });
  const r = await c.waitFrame((d) => d?.ref === "2", 3000, "echo reply");
  assert.deepEqual(r.payload, { status: "ok", response: { n: 2 } });
});

describe("channel limit (--max-channels 3)", () => {
  let lim;
  before(async () => { lim = await startServer({ args: ["--max-channels", "3"] }); }, { timeout: 30000 });
  after(async () => { await lim?.stop(); }, { timeout: 15000 });

  test("4th join → error too many channels joined; leaving frees a slot", withLogs(() => lim, async (t) => {
    const c = await RawClient.connect(`${lim.wsUrl}?token=${lim.token(42)}&vsn=2.0.0`, { t });
    for (const i of [1, 2, 3]) {
      c.sendJson([`${i}`, `${i}`, `echo:lim${i}`, "phx_join", {}]);
      assert.equal((await c.reply(`${i}`))[4].status, "ok");
    }
    c.sendJson(["4", "4", "echo:lim4", "phx_join", {}]);
    assert.deepEqual((await c.reply("4"))[4], { status: "error", response: { reason: "too many channels joined" } });
    // rejoining an already joined topic is not a new channel
    c.sendJson(["5", "5", "echo:lim1", "phx_join", {}]);
    assert.equal((await c.reply("5"))[4].status, "ok");
    c.sendJson(["2", "6", "echo:lim2", "phx_leave", {}]);
    await c.reply("6");
    c.sendJson(["7", "7", "echo:lim4", "phx_join", {}]);
    assert.equal((await c.reply("7"))[4].status, "ok", "a slot is free after a leave");
    c.sendJson(["7", "8", "echo:lim4", "ping", { ok: 1 }]);
    assert.deepEqual((await c.reply("8"))[4], { status: "ok", response: { ok: 1 } });
  }));

  test("the limit is per connection", withLogs(() => lim, async (t) => {
    const a = await RawClient.connect(`${lim.wsUrl}?token=${lim.token(1)}&vsn=2.0.0`, { t });
    const b = await RawClient.connect(`${lim.wsUrl}?token=${lim.token(1)}&vsn=2.0.0`, { t });
    for (const c of [a, b]) {
      for (const i of [1, 2, 3]) {
        c.sendJson([`${i}`, `${i}`, `room:per${i}`, "phx_join", {}]);
        assert.equal((await c.reply(`${i}`))[4].status, "ok");
      }
    }
  }));
});
