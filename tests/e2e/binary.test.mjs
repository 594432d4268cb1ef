// V2 binary frames with the official client: ArrayBuffer pushes, binary replies and
// binary broadcasts (notes §3).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startServer, withLogs } from "./lib/server.mjs";
import { ab, bytesOf, joinOk, nextEvent, phxSocket, push } from "./lib/phx.mjs";
import { RawClient, binaryPush, decodeServerBinary } from "./lib/raw.mjs";

let srv;
before(async () => { srv = await startServer(); }, { timeout: 30000 });
after(async () => { await srv?.stop(); }, { timeout: 15000 });
const T = (name, fn) => test(name, withLogs(() => srv, fn));

const allBytes = Array.from({ length: 256 }, (_, i) => i);

T("binary: ArrayBuffer push on echo:* gets an ArrayBuffer ok reply with the same bytes", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:bin");
  await joinOk(ch);
  for (const bytes of [[1, 2, 3, 255], allBytes, [0], []]) {
    const r = await push(ch, "up", ab(bytes));
    assert.equal(r.status, "ok", JSON.stringify(r));
    assert.ok(r.response instanceof ArrayBuffer, `reply is an ArrayBuffer, got ${Object.prototype.toString.call(r.response)}`);
    assert.deepEqual(bytesOf(r.response), bytes);
  }
});

T("binary: 256 KiB ArrayBuffer round-trips byte-exact", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:big");
  await joinOk(ch);
  const bytes = Array.from({ length: 256 * 1024 }, (_, i) => (i * 31 + 7) & 0xff);
  const r = await push(ch, "up", ab(bytes));
  assert.equal(r.status, "ok");
  assert.deepEqual(bytesOf(r.response), bytes);
});

T("binary: non-ASCII topic and event round-trip (UTF-8 byte lengths)", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:café☃");
  await joinOk(ch);
  const r = await push(ch, "ünï", ab([9, 8, 7]));
  assert.equal(r.status, "ok");
  assert.deepEqual(bytesOf(r.response), [9, 8, 7]);
});

T("binary: 255-byte topic works in binary frames", async (t) => {
  const socket = await phxSocket(t, srv);
  const topic = "echo:" + "t".repeat(250);
  assert.equal(Buffer.byteLength(topic), 255);
  const ch = socket.channel(topic);
  await joinOk(ch);
  const r = await push(ch, "up", ab([1]));
  assert.equal(r.status, "ok");
  assert.deepEqual(bytesOf(r.response), [1]);
});

T("binary: interleaved text and binary pushes on one connection keep their replies straight", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:mixed");
  await joinOk(ch);
  const pending = [];
  for (let i = 0; i < 20; i++) {
    pending.push(i % 2 ? push(ch, "j", { i }) : push(ch, "b", ab([i, i + 1])));
  }
  const res = await Promise.all(pending);
  res.forEach((r, i) => {
    assert.equal(r.status, "ok");
    if (i % 2) assert.deepEqual(r.response, { i });
    else assert.deepEqual(bytesOf(r.response), [i, i + 1]);
  });
});

T("binary: ArrayBuffer push on room:* reaches every subscriber as an ArrayBuffer", async (t) => {
  const a = await phxSocket(t, srv, { user: 1 });
  const b = await phxSocket(t, srv, { user: 2 });
  const ca = a.channel("room:bin");
  const cb = b.channel("room:bin");
  await Promise.all([joinOk(ca), joinOk(cb)]);
  const gotA = nextEvent(ca, "frame", 3000);
  const gotB = nextEvent(cb, "frame", 3000);
  ca.push("frame", ab(allBytes));
  const [pa, pb] = await Promise.all([gotA, gotB]);
  assert.deepEqual(bytesOf(pa), allBytes);
  assert.deepEqual(bytesOf(pb), allBytes);
});

T("binary: wire layout of the reply (kind 1) and broadcast (kind 2) frames", async (t) => {
  const c = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(7)}&vsn=2.0.0`, { t });
  c.sendJson(["1", "1", "echo:layout", "phx_join", {}]);
  assert.equal((await c.reply("1"))[4].status, "ok");
  c.sendBinary(binaryPush({ joinRef: "1", ref: "2", topic: "echo:layout", event: "up", payload: [0xde, 0xad] }));
  const reply = await c.waitFrame((d, f) => f.type === "binary", 3000, "binary reply");
  assert.deepEqual({ ...decodeServerBinary(reply), payload: [...decodeServerBinary(reply).payload] },
    { kind: 1, joinRef: "1", ref: "2", topic: "echo:layout", status: "ok", payload: [0xde, 0xad] });

  c.sendJson(["3", "3", "room:layout", "phx_join", {}]);
  assert.equal((await c.reply("3"))[4].status, "ok");
  const n = c.frames.length;
  c.sendBinary(binaryPush({ joinRef: "3", ref: "4", topic: "room:layout", event: "ev", payload: [1, 2, 3] }));
  const bc = await c.waitFrame((d, f) => f.type === "binary", 3000, "binary broadcast", n);
  const dec = decodeServerBinary(bc);
  assert.equal(dec.kind, 2, "room broadcast of a binary push is sent as kind 2 (fastlane broadcast)");
  assert.equal(dec.topic, "room:layout");
  assert.equal(dec.event, "ev");
  assert.deepEqual([...dec.payload], [1, 2, 3]);
});

T("binary: Uint8Array payload is sent as JSON by phoenix.js (documented client behaviour)", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:u8");
  await joinOk(ch);
  const r = await push(ch, "up", new Uint8Array([1, 2]));
  assert.equal(r.status, "ok");
  assert.deepEqual(r.response, { 0: 1, 1: 2 });
});
