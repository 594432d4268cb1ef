// Memory bound of file streaming (docs/FILES.md "Memory bound"): 20 sockets download a
// 256 MiB file but read it slowly (TCP reads paused, resumed in 20 ms trickles every
// 500 ms) for ~15 s. The server's anonymous memory must stay bounded by
//   connections × (512 KiB batch + --outbound-queue-bytes) + 32 MiB slack
// above the baseline measured after startup, joins and the first (digest-computing)
// request — independent of the file size. The mapped file shows in RssFile (page cache).
// Meanwhile a control socket's echo and heartbeat round-trips answer within 2 s.
// The figures are printed (console.log and test diagnostics) for docs/FILES.md.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { withLogs } from "./lib/server.mjs";
import { joinOk, phxSocket, push } from "./lib/phx.mjs";
import { KiB, MiB, fmtMiB, loadFilesModule, procMemory, startFilesServer, tempTree, writeLargeFile } from "./lib/files.mjs";

const { joinFilesChannel } = await loadFilesModule();

const FILE_SIZE = 256 * MiB;
const SOCKETS = 20;
const CHUNK = 256 * KiB;
const OUTBOUND_QUEUE = 1 * MiB;     // --outbound-queue-bytes
const BATCH = 512 * KiB;            // MAX_BATCH_BULK_BYTES
const SLACK = 32 * MiB;
const BOUND = SOCKETS * (BATCH + OUTBOUND_QUEUE) + SLACK;
const SLOW_READ_MS = 15000;
const TRICKLE_EVERY_MS = 500;
const TRICKLE_MS = 20;
const SAMPLE_MS = 100;
const CONTROL_RTT_MAX_MS = 2000;

let srv, tree, file;
before(async () => {
  tree = tempTree("sluice-files-mem-");
  const t0 = Date.now();
  file = writeLargeFile(path.join(tree.files, "big256.bin"), FILE_SIZE);
  console.log(`# wrote ${fmtMiB(FILE_SIZE)} in ${Date.now() - t0} ms`);
  srv = await startFilesServer(tree, ["--outbound-queue-bytes", "1MiB", "--chunk-bytes", "256KiB"]);
}, { timeout: 60000 });
after(async () => {
  await srv?.stop();
  tree?.cleanup(); // deletes the 256 MiB file
}, { timeout: 20000 });

test("memory: 20 slow readers of a 256 MiB file keep RssAnon bounded; the control lane answers", { timeout: 180000 }, withLogs(() => srv, async (t) => {
  const pid = srv.proc.pid;
  const socketOpts = { heartbeatIntervalMs: 120000, timeout: 60000 };

  // control socket: echo + heartbeats, read normally
  const control = await phxSocket(t, srv, { user: 1, socketOpts: { timeout: 10000 } });
  const echo = control.channel("echo:mem");
  await joinOk(echo);

  // warm-up: the first request of a file computes its sha256 (positioned reads) and maps it.
  // Its own socket with a long heartbeat: while the digest is computed (seconds for
  // 256 MiB in a debug build) the server does not read that socket's heartbeats.
  const warmSocket = await phxSocket(t, srv, { user: 2, socketOpts });
  const warm = await joinFilesChannel(warmSocket);
  let warmChunks = 0;
  let warmCompletes = 0;
  warm.on("new chunk", () => { warmChunks++; });
  warm.on("image complete", () => { warmCompletes++; });
  const tw = Date.now();
  const w = await push(warm, "download", { file: "big256.bin", chunk_size: CHUNK }, 120000);
  assert.equal(w.status, "ok", JSON.stringify(w));
  const warmMs = Date.now() - tw;
  assert.equal(w.response.sha256, file.sha256, "the server's digest of the file");
  const wc = await push(warm, "cancel", {}, 10000);
  t.diagnostic(`warm-up: reply after ${warmMs} ms, cancel → ${JSON.stringify(wc)} after ${Date.now() - tw - warmMs} ms, ${warmChunks} chunks, ${warmCompletes} complete`);
  assert.equal(wc.status, "ok", JSON.stringify(wc));
  warmSocket.disconnect();

  const sockets = [];
  const channels = [];
  for (let i = 0; i < SOCKETS; i++) {
    const s = await phxSocket(t, srv, { user: 100 + i, socketOpts });
    sockets.push(s);
    channels.push(await joinFilesChannel(s));
  }
  await new Promise((r) => setTimeout(r, 500));
  const base = procMemory(pid);

  const peak = { ...base };
  const samples = [];
  const sample = () => {
    let m;
    try { m = procMemory(pid); } catch { return; }
    samples.push({ at: Date.now(), ...m });
    for (const k of Object.keys(m)) if (m[k] !== null && m[k] > (peak[k] ?? 0)) peak[k] = m[k];
  };
  const sampler = setInterval(sample, SAMPLE_MS);
  t.after(() => clearInterval(sampler));

  // start the 20 downloads; each socket stops reading as soon as its reply arrived
  const counts = new Array(SOCKETS).fill(0);
  const completes = new Array(SOCKETS).fill(0);
  const tcp = sockets.map((s) => s.conn._socket);
  channels.forEach((ch, i) => {
    ch.on("new chunk", () => { counts[i]++; });
    ch.on("image complete", () => { completes[i]++; });
  });
  const replies = await Promise.all(channels.map((ch, i) => new Promise((resolve) => {
    ch.push("download", { file: "big256.bin", chunk_size: CHUNK }, 60000)
      .receive("ok", (r) => { tcp[i].pause(); resolve({ status: "ok", response: r }); })
      .receive("error", (r) => resolve({ status: "error", response: r }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  })));
  replies.forEach((r, i) => assert.equal(r.status, "ok", `download ${i}: ${JSON.stringify(r)}`));
  const countsAtStart = [...counts];

  // slow reading: every 500 ms each socket reads for 20 ms
  const trickle = setInterval(() => {
    for (const sock of tcp) {
      sock.resume();
      setTimeout(() => sock.pause(), TRICKLE_MS);
    }
  }, TRICKLE_EVERY_MS);
  t.after(() => clearInterval(trickle));

  // control lane: echo and heartbeat round-trips while the 20 are stalled
  const rtts = [];
  const hbs = [];
  const deadline = Date.now() + SLOW_READ_MS;
  while (Date.now() < deadline) {
    const t0 = Date.now();
    const r = await push(echo, "ping", { at: t0 }, 10000);
    assert.equal(r.status, "ok", `echo during the slow downloads: ${JSON.stringify(r)}`);
    rtts.push(Date.now() - t0);
    hbs.push(await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(Infinity), 10000);
      control.ping((latency) => { clearTimeout(timer); resolve(latency); });
    }));
    await new Promise((r) => setTimeout(r, 1000));
  }
  clearInterval(trickle);
  clearInterval(sampler);
  sample();

  const grownAnon = peak.RssAnon - base.RssAnon;
  const received = counts.map((c, i) => c - countsAtStart[i]);
  const report = [
    `file ${fmtMiB(FILE_SIZE)}, ${SOCKETS} sockets, chunk ${CHUNK / KiB} KiB, --outbound-queue-bytes ${fmtMiB(OUTBOUND_QUEUE)}, ` +
      `slow reading ${SLOW_READ_MS / 1000} s (${TRICKLE_MS} ms every ${TRICKLE_EVERY_MS} ms), ${samples.length} samples every ${SAMPLE_MS} ms`,
    `warm-up (first request: digest + map): ${warmMs} ms`,
    `baseline: VmRSS ${fmtMiB(base.VmRSS)}, RssAnon ${fmtMiB(base.RssAnon)}, RssFile ${fmtMiB(base.RssFile)}, RssShmem ${fmtMiB(base.RssShmem)}`,
    `peak:     VmRSS ${fmtMiB(peak.VmRSS)}, RssAnon ${fmtMiB(peak.RssAnon)}, RssFile ${fmtMiB(peak.RssFile)}, RssShmem ${fmtMiB(peak.RssShmem)}, VmHWM ${fmtMiB(peak.VmHWM)}`,
    `RssAnon growth ${fmtMiB(grownAnon)} (bound ${SOCKETS} × (512 KiB + ${fmtMiB(OUTBOUND_QUEUE)}) + 32 MiB = ${fmtMiB(BOUND)})`,
    `chunks per socket during the slow phase: min ${Math.min(...received)}, max ${Math.max(...received)}, total ${fmtMiB(received.reduce((a, b) => a + b, 0) * CHUNK)} ` +
      `(before it: ${countsAtStart.reduce((a, b) => a + b, 0)}); finished downloads: ${completes.filter((c) => c > 0).length}`,
    `control lane: echo RTT max ${Math.max(...rtts)} ms (n=${rtts.length}), heartbeat max ${Math.max(...hbs)} ms`,
  ];
  for (const line of report) { console.log(`# ${line}`); t.diagnostic(line); }

  assert.ok(base.RssAnon !== null, "RssAnon readable from /proc");
  assert.ok(grownAnon <= BOUND, `RssAnon grew by ${fmtMiB(grownAnon)}, more than ${fmtMiB(BOUND)}`);
  received.forEach((n, i) => assert.ok(counts[i] > 0 && n >= 0, `socket ${i} received chunks (${counts[i]})`));
  assert.ok(received.every((n) => n > 0), `every socket progressed during the slow phase: ${received.join(",")}`);
  assert.ok(Math.max(...rtts) < CONTROL_RTT_MAX_MS, `echo round-trips within ${CONTROL_RTT_MAX_MS} ms: ${rtts.join(",")}`);
  assert.ok(Math.max(...hbs) < CONTROL_RTT_MAX_MS, `heartbeats within ${CONTROL_RTT_MAX_MS} ms: ${hbs.join(",")}`);

  // the server is still healthy and every stream is still there (nobody was dropped)
  assert.ok(sockets.every((s) => s.closeEvents.length === 0), `no socket was closed: ${JSON.stringify(sockets.map((s) => s.closeEvents))}`);
  // paused sockets could not complete a closing handshake: cut them
  for (const s of sockets) { const conn = s.conn; s.disconnect(); try { conn?.terminate(); } catch { /* gone */ } }
}));
