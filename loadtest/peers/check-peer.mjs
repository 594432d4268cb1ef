// check-peer.mjs: checks that a server speaks the peers' raw protocol (see
// README.md). Exit 0 when it does; otherwise a message on stderr and exit 1
// (2 for bad usage). Bounded: it gives up after 10 s in all.
//
//   node check-peer.mjs ws://127.0.0.1:PORT [PID]
//
// Checks, in order:
//   * GET /health answers 200 "ok"; GET /nope answers 404, and so does a
//     WebSocket upgrade to /nope;
//   * /echo sends back a 16 KiB text message as text and a 16 KiB binary
//     message as binary, unchanged;
//   * with two /sub sockets open, a /pub socket sends a 16 KiB binary message
//     then a short text message: each subscriber gets exactly those two, in
//     order and with their opcodes, and the publisher gets nothing;
//   * given PID (the server's process), SIGTERM makes it exit and close its
//     port within the time left.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { WebSocket } from "ws";

const TOTAL_MS = 10_000;
const QUIET_MS = 300; // how long "gets nothing more" is watched for

const [base, pidArg] = process.argv.slice(2);
if (!base || !/^ws:\/\/[^/]+$/.test(base) || (pidArg !== undefined && !/^\d+$/.test(pidArg))) {
  console.error("usage: node check-peer.mjs ws://HOST:PORT [PID]");
  process.exit(2);
}
const httpBase = base.replace(/^ws:/, "http:");

let step = "start";
const deadline = setTimeout(() => fail(`timed out after ${TOTAL_MS / 1000} s`), TOTAL_MS);
const sockets = new Set();

function fail(why) {
  for (const ws of sockets) ws.done = true;
  console.error(`check-peer ${base}: FAIL at ${step}: ${why}`);
  for (const ws of sockets) ws.terminate();
  process.exit(1);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Opens a WebSocket; resolves once open. Records every message it gets. */
function open(path) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(base + path, { perMessageDeflate: false });
    sockets.add(ws);
    ws.received = [];
    ws.waiters = [];
    ws.on("message", (data, isBinary) => {
      ws.received.push({ data, isBinary });
      ws.waiters = ws.waiters.filter((w) => !w());
    });
    ws.once("open", () => {
      ws.opened = true;
      resolve(ws);
    });
    ws.once("unexpected-response", (_req, res) => reject(new Error(`${path}: HTTP ${res.statusCode}`)));
    ws.on("error", (e) => {
      ws.lastError = e.message;
      reject(new Error(`${path}: ${e.message}`));
    });
    ws.on("close", (code) => {
      sockets.delete(ws);
      if (ws.opened && !ws.done) fail(`${path} closed unexpectedly (code ${code}${ws.lastError ? `: ${ws.lastError}` : ""})`);
    });
  });
}

/** Closes the sockets it was given; closing them is then no failure. */
function closeAll(...list) {
  for (const ws of list) {
    ws.done = true;
    ws.close();
  }
}

/** Resolves once `ws` has received `n` messages. */
function receivedAtLeast(ws, n) {
  return new Promise((resolve) => {
    const check = () => ws.received.length >= n && (resolve(), true);
    if (!check()) ws.waiters.push(check);
  });
}

function same(got, want, what) {
  const { data, isBinary } = got;
  if (isBinary !== want.isBinary) {
    fail(`${what}: got a ${isBinary ? "binary" : "text"} message, want ${want.isBinary ? "binary" : "text"}`);
  }
  if (!Buffer.from(want.data).equals(data)) {
    fail(`${what}: payload differs (${data.length} bytes, want ${Buffer.byteLength(want.data)})`);
  }
}

async function get(path, wantStatus, wantBody) {
  const res = await fetch(httpBase + path, { signal: AbortSignal.timeout(TOTAL_MS) });
  const body = await res.text();
  if (res.status !== wantStatus) fail(`GET ${path}: status ${res.status}, want ${wantStatus}`);
  if (wantBody !== undefined && body.trim() !== wantBody) fail(`GET ${path}: body ${JSON.stringify(body)}, want ${JSON.stringify(wantBody)}`);
}

/** Whether something accepts connections at the server's address. */
async function listening() {
  try {
    await fetch(httpBase + "/health", { signal: AbortSignal.timeout(1000) });
    return true;
  } catch {
    return false;
  }
}

/** Whether process `pid` still runs (an unreaped zombie has exited). */
function alive(pid) {
  try {
    // The state follows the command name, which is in parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

async function main() {
  step = "GET /health";
  await get("/health", 200, "ok");
  step = "GET /nope";
  await get("/nope", 404);
  step = "upgrade /nope";
  await open("/nope").then(
    () => fail("a WebSocket upgrade to /nope succeeded"),
    (e) => e.message.includes("HTTP 404") || fail(`want HTTP 404, got ${e.message}`),
  );

  step = "echo";
  const text = { data: "sluice ".repeat(2341).slice(0, 16 * 1024), isBinary: false };
  const binary = { data: randomBytes(16 * 1024), isBinary: true };
  const echo = await open("/echo");
  echo.send(text.data, { binary: false });
  echo.send(binary.data, { binary: true });
  await receivedAtLeast(echo, 2);
  same(echo.received[0], text, "echo text");
  same(echo.received[1], binary, "echo binary");
  closeAll(echo);

  step = "pub/sub";
  const subs = [await open("/sub"), await open("/sub")];
  const pub = await open("/pub");
  const published = [
    { data: randomBytes(16 * 1024), isBinary: true },
    { data: "hello, room", isBinary: false },
  ];
  for (const m of published) pub.send(m.data, { binary: m.isBinary });
  await Promise.all(subs.map((s) => receivedAtLeast(s, published.length)));
  await sleep(QUIET_MS);
  subs.forEach((s, i) => {
    if (s.received.length !== published.length) {
      fail(`subscriber ${i + 1} got ${s.received.length} messages, want ${published.length}`);
    }
    published.forEach((m, j) => same(s.received[j], m, `subscriber ${i + 1} message ${j + 1}`));
  });
  if (pub.received.length !== 0) fail(`the publisher got ${pub.received.length} messages back`);
  closeAll(...subs, pub);

  if (pidArg !== undefined) {
    step = "SIGTERM";
    const pid = Number(pidArg);
    try {
      process.kill(pid, "SIGTERM");
    } catch (e) {
      fail(`cannot signal ${pid}: ${e.message}`);
    }
    while (alive(pid) || (await listening())) await sleep(50);
  }

  clearTimeout(deadline);
  console.error(`check-peer ${base}: ok`);
  process.exit(0);
}

main().catch((e) => fail(e.message));
