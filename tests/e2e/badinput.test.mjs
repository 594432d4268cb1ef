// Hostile / malformed input from raw `ws` clients: each bad frame closes only the offending
// socket with a proper close frame; other clients keep working. Oversized frames → 1009.
// A flood of joins above --max-channels is refused per join without killing the connection.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startServer, withLogs } from "./lib/server.mjs";
import { joinOk, phxSocket, push, waitFor } from "./lib/phx.mjs";
import { RawClient, binaryPush, decodeServerBinary } from "./lib/raw.mjs";

let srv;
let bystander;     // phoenix.js socket that must keep working throughout
let bystanderCh;
const observed = {}; // case → close code, printed at the end
before(async () => {
  srv = await startServer({ args: ["--max-frame-bytes", "64KiB"] });
  bystander = await phxSocket(null, srv, { user: 1000 });
  bystanderCh = bystander.channel("echo:bystander");
  await joinOk(bystanderCh);
}, { timeout: 30000 });
after(async () => {
  try { bystander?.disconnect(); } catch { /* ignore */ }
  console.log(`# close codes observed for bad input: ${JSON.stringify(observed)}`);
  await srv?.stop();
}, { timeout: 15000 });
const T = (name, fn) => test(name, withLogs(() => srv, fn));

async function bystanderStillWorks(tag) {
  const r = await push(bystanderCh, "ping", { after: tag });
  assert.deepEqual(r, { status: "ok", response: { after: tag } }, `bystander echo after ${tag}`);
  assert.equal(bystander.closeEvents.length, 0, `bystander was disconnected: ${JSON.stringify(bystander.closeEvents)}`);
}

async function joinedRaw(t, topic = "echo:bad") {
  const c = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(5)}&vsn=2.0.0`, { t });
  c.sendJson(["1", "1", topic, "phx_join", {}]);
  assert.equal((await c.reply("1"))[4].status, "ok");
  return c;
}

const badCases = [
  ["malformed JSON", (c) => c.sendJson('["1","2","echo:bad","ping",{')],
  ["JSON that is not an array (V2)", (c) => c.sendJson('{"topic":"echo:bad","event":"ping","payload":{},"ref":"2"}')],
  ["array of 3 elements", (c) => c.sendJson(["1", "2", "echo:bad"])],
  ["array of 4 elements", (c) => c.sendJson(["1", "2", "echo:bad", "ping"])],
  ["binary kind 1 (reply layout)", (c) => c.sendBinary(Buffer.concat([Buffer.from([1, 1, 1, 7, 2]), Buffer.from("12echo:badok"), Buffer.from([1, 2])]))],
  ["binary kind 2 (broadcast layout)", (c) => c.sendBinary(Buffer.concat([Buffer.from([2, 7, 2]), Buffer.from("echo:badev"), Buffer.from([1, 2])]))],
  ["binary kind 7", (c) => c.sendBinary(binaryPush({ kind: 7, joinRef: "1", ref: "2", topic: "echo:bad", event: "ping", payload: [1] }))],
  ["invalid UTF-8 in a text frame", (c) => c.sendTextBytes(Buffer.from([0x5b, 0x22, 0xff, 0xfe, 0x22, 0x5d]))],
];

for (const [name, send] of badCases) {
  T(`bad input: ${name} → server closes that socket with 1007/1003/1002; others unaffected`, async (t) => {
    const c = await joinedRaw(t);
    send(c);
    const { code, reason } = await c.waitClose(5000);
    observed[name] = code;
    t.diagnostic(`${name}: close code ${code} reason ${JSON.stringify(reason)}`);
    assert.notEqual(code, 1006, "abnormal closure (no close frame) — the server must send a close frame");
    assert.notEqual(code, 1000, "normal closure is wrong for a protocol violation");
    assert.ok([1007, 1003, 1002].includes(code), `close code ${code} not in {1007, 1003, 1002}`);
    await bystanderStillWorks(name);
  });
}

T("bad input: text frame over --max-frame-bytes (64 KiB) → close 1009", async (t) => {
  const c = await joinedRaw(t);
  c.sendJson(["1", "2", "echo:bad", "ping", { pad: "x".repeat(100 * 1024) }]);
  const { code } = await c.waitClose(5000);
  observed["text over max-frame-bytes"] = code;
  assert.equal(code, 1009);
  await bystanderStillWorks("oversized text");
});

T("bad input: binary frame over --max-frame-bytes (64 KiB) → close 1009", async (t) => {
  const c = await joinedRaw(t);
  c.sendBinary(binaryPush({ joinRef: "1", ref: "2", topic: "echo:bad", event: "up", payload: Buffer.alloc(100 * 1024, 7) }));
  const { code } = await c.waitClose(5000);
  observed["binary over max-frame-bytes"] = code;
  assert.equal(code, 1009);
  await bystanderStillWorks("oversized binary");
});

T("bad input: frames just under --max-frame-bytes are fine", async (t) => {
  const c = await joinedRaw(t);
  const pad = "y".repeat(60 * 1024);
  c.sendJson(["1", "2", "echo:bad", "ping", { pad }]);
  assert.deepEqual((await c.reply("2"))[4], { status: "ok", response: { pad } });
  c.sendBinary(binaryPush({ joinRef: "1", ref: "3", topic: "echo:bad", event: "up", payload: Buffer.alloc(60 * 1024, 9) }));
  const bin = await c.waitFrame((d, f) => f.type === "binary", 5000, "binary reply");
  const dec = decodeServerBinary(bin);
  assert.equal(dec.kind, 1);
  assert.equal(dec.status, "ok");
  assert.equal(dec.ref, "3");
  assert.ok(dec.payload.equals(Buffer.alloc(60 * 1024, 9)), "binary echo payload is byte-exact");
  assert.equal(c.isOpen, true);
});

T("bad input: phoenix.js socket whose push exceeds the limit is closed with 1009 and reconnects", async (t) => {
  const socket = await phxSocket(t, srv, { user: 6 });
  const ch = socket.channel("echo:bigjs");
  await joinOk(ch);
  ch.push("ping", { pad: "z".repeat(100 * 1024) });
  await waitFor(() => socket.closeEvents.length >= 1, 5000, "close after oversized push");
  assert.equal(socket.closeEvents[0].code, 1009);
  await waitFor(() => socket.opens >= 2 && ch.state === "joined", 5000, "reconnect + rejoin");
  assert.deepEqual(await push(ch, "ping", { small: 1 }), { status: "ok", response: { small: 1 } });
});

T("flood: 500 joins of distinct topics (max-channels 100) → 100 ok + 400 refusals, socket usable", async (t) => {
  const c = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(9)}&vsn=2.0.0`, { t });
  for (let i = 0; i < 500; i++) c.sendJson([`j${i}`, `j${i}`, `echo:flood${i}`, "phx_join", {}]);
  const replies = () => c.texts.filter((d) => Array.isArray(d) && d[3] === "phx_reply" && String(d[1]).startsWith("j"));
  await waitFor(() => replies().length >= 500, 20000, () => `500 join replies (have ${replies().length}, close=${JSON.stringify(c.closeInfo)})`);
  const rs = replies();
  const ok = rs.filter((d) => d[4].status === "ok");
  const refused = rs.filter((d) => d[4].status === "error");
  assert.equal(ok.length, 100);
  assert.equal(refused.length, 400);
  for (const d of refused) assert.deepEqual(d[4].response, { reason: "too many channels joined" });
  assert.equal(c.isOpen, true);
  c.sendJson([null, "hb", "phoenix", "heartbeat", {}]);
  assert.deepEqual((await c.reply("hb"))[4], { status: "ok", response: {} });
  const first = ok[0];
  c.sendJson([first[0], "p1", first[2], "ping", { still: "works" }]);
  assert.deepEqual((await c.reply("p1"))[4], { status: "ok", response: { still: "works" } });
  await bystanderStillWorks("join flood");
});
