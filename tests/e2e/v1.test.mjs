// phoenix.js speaking V1 (vsn "1.0.0") with object encode/decode options (notes §2.2).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startServer, withLogs } from "./lib/server.mjs";
import { join, joinOk, nextEvent, phxSocket, push, v1Codec, waitFor } from "./lib/phx.mjs";

let srv;
before(async () => { srv = await startServer(); }, { timeout: 30000 });
after(async () => { await srv?.stop(); }, { timeout: 15000 });
const T = (name, fn) => test(name, withLogs(() => srv, fn));

const v1Socket = (t, opts = {}) => phxSocket(t, srv, { ...opts, socketOpts: { vsn: "1.0.0", ...v1Codec, ...(opts.socketOpts ?? {}) } });

T("v1: phoenix.js with vsn 1.0.0 joins echo and gets echo replies", async (t) => {
  const socket = await v1Socket(t);
  assert.equal(new URL(socket.record.urls[0]).searchParams.get("vsn"), "1.0.0");
  const ch = socket.channel("echo:v1js");
  await joinOk(ch);
  assert.deepEqual(await push(ch, "ping", { v: 1, s: "ü" }), { status: "ok", response: { v: 1, s: "ü" } });
});

T("v1: heartbeat via socket.ping", async (t) => {
  const socket = await v1Socket(t, { socketOpts: { heartbeatIntervalMs: 200 } });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no V1 heartbeat reply")), 3000);
    socket.ping(() => { clearTimeout(timer); resolve(); });
  });
  assert.equal(socket.isConnected(), true);
});

T("v1: refused joins and unknown topics", async (t) => {
  const socket = await v1Socket(t, { user: 42 });
  const u = socket.channel("user:43");
  const r1 = await join(u);
  u.leave();
  assert.deepEqual(r1, { status: "error", response: { reason: "unauthorized" } });
  const n = socket.channel("nope:v1");
  const r2 = await join(n);
  n.leave();
  assert.deepEqual(r2, { status: "error", response: { reason: "unmatched topic" } });
});

T("v1 ↔ v2: a room push from a V1 client reaches V1 and V2 subscribers", async (t) => {
  const s1 = await v1Socket(t, { user: 1 });
  const s2 = await phxSocket(t, srv, { user: 2 });
  const c1 = s1.channel("room:mixed");
  const c2 = s2.channel("room:mixed");
  await Promise.all([joinOk(c1), joinOk(c2)]);
  const g1 = nextEvent(c1, "msg", 3000);
  const g2 = nextEvent(c2, "msg", 3000);
  c1.push("msg", { from: "v1" });
  assert.deepEqual(await g1, { from: "v1" });
  assert.deepEqual(await g2, { from: "v1" });
  const frame = s1.record.frames.find((m) => m.event === "msg");
  assert.equal(frame.ref, null);

  const h1 = nextEvent(c1, "msg", 3000);
  const h2 = nextEvent(c2, "msg", 3000);
  c2.push("msg", { from: "v2" });
  assert.deepEqual(await h1, { from: "v2" });
  assert.deepEqual(await h2, { from: "v2" });
});

T("v1: leave → ok and channel closes", async (t) => {
  const socket = await v1Socket(t);
  const ch = socket.channel("echo:v1leave");
  await joinOk(ch);
  const lp = ch.leave();
  const status = await new Promise((resolve) => {
    lp.receive("ok", () => resolve("ok"));
    lp.receive("timeout", () => resolve("timeout"));
  });
  assert.equal(status, "ok");
  assert.equal(ch.state, "closed");
  // leave() resolves locally in phoenix.js 1.8.16; check the server's own reply and phx_close
  const reply = await waitFor(() => socket.record.frames.find((m) => m.event === "phx_reply" && m.ref === lp.ref), 3000, "V1 leave reply");
  assert.deepEqual(reply.payload, { status: "ok", response: {} });
  await waitFor(() => socket.record.frames.find((m) => m.topic === "echo:v1leave" && m.event === "phx_close"), 3000, "V1 phx_close");
});
