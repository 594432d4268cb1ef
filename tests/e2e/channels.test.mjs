// The official phoenix.js client (V2 JSON, the default vsn 2.0.0) against the default
// channel routes: echo:*, room:*, user:<id>, unknown prefixes, leave, heartbeat.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startServer, withLogs } from "./lib/server.mjs";
import { join, joinOk, nextEvent, phxSocket, push, waitFor } from "./lib/phx.mjs";

let srv;
before(async () => { srv = await startServer(); }, { timeout: 30000 });
after(async () => { await srv?.stop(); }, { timeout: 15000 });
const T = (name, fn) => test(name, withLogs(() => srv, fn));

T("v2: phoenix.js connects with token + nested params and sends vsn=2.0.0", async (t) => {
  const socket = await phxSocket(t, srv, { params: { user: { id: 5, name: "x&y" }, tags: ["a", "b"] } });
  const url = new URL(socket.record.urls[0]);
  assert.equal(url.pathname, "/socket/websocket");
  assert.equal(url.searchParams.get("vsn"), "2.0.0");
  assert.equal(url.searchParams.get("user[id]"), "5");
  assert.equal(socket.record.responses[0].status, 101);
  assert.equal(socket.isConnected(), true);
});

T("v2: heartbeat (socket.ping) is answered before any join", async (t) => {
  const socket = await phxSocket(t, srv);
  const rtt = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no heartbeat reply within 3 s")), 3000);
    assert.equal(socket.ping((ms) => { clearTimeout(timer); resolve(ms); }), true);
  });
  assert.equal(typeof rtt, "number");
  const reply = socket.record.frames.find((m) => m.topic === "phoenix" && m.event === "phx_reply");
  assert.ok(reply, "heartbeat reply frame recorded");
  assert.equal(reply.join_ref, null);
  assert.deepEqual(reply.payload, { status: "ok", response: {} });
});

T("v2: phoenix.js own heartbeats keep being answered (short heartbeatIntervalMs)", async (t) => {
  const socket = await phxSocket(t, srv, { socketOpts: { heartbeatIntervalMs: 200 } });
  await waitFor(() => socket.record.frames.filter((m) => m.topic === "phoenix" && m.event === "phx_reply").length >= 3, 5000, "3 heartbeat replies");
  assert.equal(socket.isConnected(), true);
  assert.equal(socket.closeEvents.length, 0, `unexpected close: ${JSON.stringify(socket.closeEvents)}`);
});

T("v2: echo join ok, then every push is answered ok with the same payload", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:v2", { hello: "world" });
  const resp = await joinOk(ch);
  assert.equal(typeof resp, "object");
  assert.equal(ch.state, "joined");
  const payloads = [
    { n: 1 },
    {},
    { nested: { deep: [1, 2, { x: null, t: true, f: false }] }, float: 1.5, neg: -7 },
    { unicode: "héllo wörld ☃ 🎉 日本語", escapes: "quote\" backslash\\ newline\n tab\t nul\u0000" },
    { big: "x".repeat(10_000) },
  ];
  for (const p of payloads) {
    const r = await push(ch, "ping", p);
    assert.deepEqual(r, { status: "ok", response: p });
  }
});

T("v2: echo reply frame carries the push's join_ref and ref", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:refs");
  await joinOk(ch);
  const p = ch.push("ping", { k: "v" });
  const r = await new Promise((resolve) => p.receive("ok", resolve));
  assert.deepEqual(r, { k: "v" });
  const frame = socket.record.frames.find((m) => m.event === "phx_reply" && m.ref === p.ref);
  assert.ok(frame, "reply frame with the push ref");
  assert.equal(frame.join_ref, ch.joinRef());
  assert.equal(frame.topic, "echo:refs");
});

T("v2: echo of non-object JSON payloads (array, string, number)", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:scalars");
  await joinOk(ch);
  for (const p of [[1, "two", { three: 3 }], "just a string", 12345]) {
    const r = await push(ch, "ping", p);
    assert.deepEqual(r, { status: "ok", response: p });
  }
});

T("v2: pushes made before the join reply are buffered and answered after it", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:buffered");
  const joined = join(ch);
  const early = push(ch, "ping", { early: true });
  assert.equal((await joined).status, "ok");
  assert.deepEqual(await early, { status: "ok", response: { early: true } });
});

T("v2: many channels on one socket, each echoes independently", async (t) => {
  const socket = await phxSocket(t, srv);
  const chans = Array.from({ length: 10 }, (_, i) => socket.channel(`echo:multi${i}`));
  await Promise.all(chans.map((c) => joinOk(c)));
  const replies = await Promise.all(chans.map((c, i) => push(c, "ping", { i })));
  replies.forEach((r, i) => assert.deepEqual(r, { status: "ok", response: { i } }));
});

T("v2: room push is broadcast to all subscribers including the sender; sender gets no reply", async (t) => {
  const a = await phxSocket(t, srv, { user: 42 });
  const b = await phxSocket(t, srv, { user: 43 });
  const ca = a.channel("room:lobby");
  const cb = b.channel("room:lobby");
  await Promise.all([joinOk(ca), joinOk(cb)]);
  const gotA = nextEvent(ca, "shout", 3000);
  const gotB = nextEvent(cb, "shout", 3000);
  const p = ca.push("shout", { body: "hi", n: 1 }, 1500);
  const res = new Promise((resolve) => {
    p.receive("ok", (r) => resolve({ status: "ok", r }));
    p.receive("error", (r) => resolve({ status: "error", r }));
    p.receive("timeout", () => resolve({ status: "timeout" }));
  });
  assert.deepEqual(await gotA, { body: "hi", n: 1 });
  assert.deepEqual(await gotB, { body: "hi", n: 1 });
  assert.deepEqual(await res, { status: "timeout" }, "the pushing client must get no reply on room:*");
  assert.equal(a.record.frames.filter((m) => m.event === "phx_reply" && m.ref === p.ref).length, 0);
  const bcast = b.record.frames.find((m) => m.event === "shout");
  assert.equal(bcast.ref, null, "broadcast frames carry a null ref");
});

T("v2: room broadcasts do not leak to other topics", async (t) => {
  const a = await phxSocket(t, srv);
  const b = await phxSocket(t, srv);
  const ca = a.channel("room:one");
  const cb = b.channel("room:two");
  await Promise.all([joinOk(ca), joinOk(cb)]);
  const seenByB = [];
  cb.on("shout", (p) => seenByB.push(p));
  ca.push("shout", { only: "one" });
  await nextEvent(ca, "shout", 3000);
  // prove B's connection is live and ordered after the broadcast, then check nothing leaked
  const cb2 = b.channel("echo:probe");
  await joinOk(cb2);
  assert.deepEqual(await push(cb2, "ping", {}), { status: "ok", response: {} });
  assert.deepEqual(seenByB, []);
});

T("v2: user:<own id> joins; another user's topic is refused with unauthorized", async (t) => {
  const socket = await phxSocket(t, srv, { user: 42 });
  await joinOk(socket.channel("user:42"));
  const other = socket.channel("user:43");
  const r = await join(other);
  other.leave(); // stop phoenix.js from retrying the refused join
  assert.deepEqual(r, { status: "error", response: { reason: "unauthorized" } });
});

T("v2: unknown topic prefix is refused with unmatched topic (null join_ref)", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("nope:1");
  const r = await join(ch);
  const joinRef = ch.joinRef();
  ch.leave();
  assert.deepEqual(r, { status: "error", response: { reason: "unmatched topic" } });
  const frame = socket.record.frames.find((m) => m.topic === "nope:1" && m.event === "phx_reply" && m.ref === joinRef);
  assert.ok(frame);
  assert.equal(frame.join_ref, null, "Phoenix answers unmatched topic with a null join_ref (notes §4.3)");
});

T("v2: refused join is retried by phoenix.js and the server keeps answering", async (t) => {
  const socket = await phxSocket(t, srv, { user: 42 });
  const ch = socket.channel("user:999");
  let errors = 0;
  ch.join().receive("error", () => { errors++; });
  await waitFor(() => errors >= 3, 5000, "3 join error replies (rejoinAfterMs 100)");
  ch.leave();
  assert.equal(socket.isConnected(), true);
});

T("v2: leave gets an ok reply, then phx_close; channel closes", async (t) => {
  const socket = await phxSocket(t, srv);
  const ch = socket.channel("echo:leave");
  await joinOk(ch);
  const joinRef = ch.joinRef();
  let closes = 0;
  ch.onClose(() => { closes++; });
  const leave = ch.leave();
  const lr = await new Promise((resolve) => {
    leave.receive("ok", (r) => resolve({ status: "ok", r }));
    leave.receive("timeout", () => resolve({ status: "timeout" }));
  });
  assert.equal(lr.status, "ok");
  assert.equal(ch.state, "closed");
  // phoenix.js 1.8.16 resolves leave() locally at once (canPush() is false while leaving), so
  // the server's reply and phx_close are checked on the wire record.
  const idxReply = await waitFor(() => {
    const i = socket.record.frames.findIndex((m) => m.topic === "echo:leave" && m.event === "phx_reply" && m.ref === leave.ref);
    return i >= 0 ? i + 1 : 0;
  }, 3000, "server reply to the leave") - 1;
  assert.deepEqual(socket.record.frames[idxReply].payload, { status: "ok", response: {} });
  assert.equal(socket.record.frames[idxReply].join_ref, joinRef);
  const idxClose = await waitFor(() => {
    const i = socket.record.frames.findIndex((m) => m.topic === "echo:leave" && m.event === "phx_close");
    return i >= 0 ? i + 1 : 0;
  }, 3000, "phx_close after leave") - 1;
  assert.ok(idxClose > idxReply, "phx_close comes after the leave reply");
  assert.equal(socket.record.frames[idxClose].join_ref, joinRef);
  assert.equal(closes, 1);
});

T("v2: a second channel object on the same topic takes over (phoenix.js leaves the first)", async (t) => {
  const socket = await phxSocket(t, srv);
  const c1 = socket.channel("echo:dupjs");
  await joinOk(c1);
  const c2 = socket.channel("echo:dupjs");
  await joinOk(c2);
  assert.deepEqual(await push(c2, "ping", { via: 2 }), { status: "ok", response: { via: 2 } });
  await waitFor(() => c1.state === "closed", 3000, "first channel object closed");
});
