// Files (docs/FILES.md): downloads (`request-image`, `download`, `fetch`, `cancel`),
// uploads (windowed/resumable and the seed's implicit `chunk`), the raw socket, path
// confinement, V1 refusal and metrics — with the official phoenix client and the
// browser module web/sluice-files.js.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync, symlinkSync } from "node:fs";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { sleep, withLogs } from "./lib/server.mjs";
import { ab, joinOk, phxSocket, push, v1Codec, waitFor, within } from "./lib/phx.mjs";
import { RawClient, tryUpgrade } from "./lib/raw.mjs";
import {
  KiB, MiB, expectedEtag, loadFilesModule, lsOrEmpty, metricValue, readOrNull, scrape, seedDownload,
  sha256, startFilesServer, tempTree, writeRandomFile, writeTestFile,
} from "./lib/files.mjs";

const { downloadFile, uploadFile, joinFilesChannel, abortUpload } = await loadFilesModule();

const BIG = 64 * MiB;
const CHUNK = 256 * KiB;           // --chunk-bytes
const MAX_FETCH = 1 * MiB;         // --max-fetch-bytes
const MAX_UPLOAD = 80 * MiB;       // --max-upload-bytes
const WINDOW = 8 * MiB;            // --upload-window-bytes
const MAX_FRAME = 4 * MiB;         // --max-frame-bytes
const BATCH = 512 * KiB;           // MAX_BATCH_BULK_BYTES (docs/FILES.md)

let srv, tree, f;
before(async () => {
  tree = tempTree("sluice-files-e2e-");
  const F = (n) => path.join(tree.files, n);
  f = {
    big: writeRandomFile(F("big.bin"), BIG),
    mid: writeRandomFile(F("mid.bin"), 3 * MiB + 1234),     // not a multiple of any chunk size
    small: writeRandomFile(F("small.bin"), 100 * KiB),
    png: writeRandomFile(F("channel.png"), 30 * KiB),       // the default `request-image` file
    fresh: writeRandomFile(F("fresh.bin"), 32 * MiB),       // its first digest is timed against an echo
    inner: writeRandomFile(F("sub/inner.bin"), 5000),
    empty: writeTestFile(F("empty.bin"), Buffer.alloc(0)),
    secret: writeRandomFile(path.join(tree.outside, "secret.bin"), 4096),
  };
  writeTestFile(F("big2.bin"), f.big.bytes); // same bytes, own inode, aged
  symlinkSync("../small.bin", F("sub/link-small.bin"));                  // inside the root: fine
  symlinkSync(path.join(tree.outside, "secret.bin"), F("escape.bin"));   // leaves the root
  symlinkSync(tree.outside, F("outdir"));                                // a directory outside
  spawnSync("mkfifo", [F("fifo")]);
  srv = await startFilesServer(tree, [
    "--max-fetch-bytes", "1MiB", "--max-upload-bytes", "80MiB", "--upload-window-bytes", "8MiB",
    "--chunk-bytes", "256KiB", "--max-frame-bytes", "4MiB",
  ]);
}, { timeout: 30000 });
after(async () => {
  await srv?.stop();
  tree?.cleanup();
}, { timeout: 15000 });

const T = (name, fn, timeout = 30000) => test(name, { timeout }, withLogs(() => srv, fn));

// phoenix.js's default heartbeat interval (30 s) rather than phxSocket's 5 s: a debug build
// on a busy 2-core machine can be slow to digest 64 MiB files and stream them to several
// clients; the heartbeat is not what these tests are about.
const HB = { heartbeatIntervalMs: 30000 };
const sock = (t, user, socketOpts = {}) => phxSocket(t, srv, { user, socketOpts: { ...HB, ...socketOpts } });
const filesChannel = async (t, user) => {
  const socket = await sock(t, user);
  const ch = await joinFilesChannel(socket);
  return { socket, ch };
};
const userDir = (user) => path.join(tree.uploads, String(user));

/** Event handlers on a channel, not counting phoenix's own per-push reply bindings. */
const handlers = (ch) => ch.bindings.filter((b) => !b.event.startsWith("chan_reply_")).length;

/** Leaves a channel and waits for the server's answer. */
const pushLeave = (ch) => new Promise((resolve) => ch.leave(5000).receive("ok", resolve).receive("timeout", resolve));

/** Asserts an error reply with `reason` (other fields of the reply are not compared). */
function assertError(r, reason, label = "") {
  assert.equal(r.status, "error", `${label} ${JSON.stringify(r)}`);
  assert.equal(r.response?.reason, reason, `${label} ${JSON.stringify(r)}`);
}

/** Counts `new chunk` / `image complete` events on a channel. */
function counters(ch) {
  const c = { chunks: 0, indexes: [], completes: [] };
  ch.on("new chunk", (p) => { c.chunks++; c.indexes.push(new DataView(p).getUint32(0)); });
  ch.on("image complete", (p) => c.completes.push(p));
  return c;
}

// ---------------------------------------------------------------------------------------
// downloads

T("download: 64 MiB with the `download` event via sluice-files.js; reply metadata", async (t) => {
  const { ch } = await filesChannel(t, 7);
  const bindings = handlers(ch);
  let calls = 0;
  let last;
  const r = await within(downloadFile(ch, "big.bin", { timeout: 20000, onProgress: (p) => { calls++; last = p; } }), 25000, "download big.bin");
  assert.equal(r.size, BIG);
  assert.equal(r.data.length, BIG);
  assert.equal(sha256(r.data), f.big.sha256, "bytes equal the file");
  assert.equal(r.sha256, f.big.sha256);
  const etag = expectedEtag(path.join(tree.files, "big.bin"));
  assert.deepEqual(
    { file: r.reply.file, size: r.reply.size, chunk_size: r.reply.chunk_size, chunks: r.reply.chunks, first_chunk: r.reply.first_chunk,
      offset: r.reply.offset, sha256: r.reply.sha256, etag: r.reply.etag },
    { file: "big.bin", size: BIG, chunk_size: CHUNK, chunks: BIG / CHUNK, first_chunk: 0, offset: 0, sha256: f.big.sha256, etag });
  assert.equal(calls, BIG / CHUNK, "onProgress once per chunk");
  assert.deepEqual(last, { received: BIG, size: BIG, index: BIG / CHUNK - 1 });
  assert.equal(handlers(ch), bindings, "the helper removed its channel handlers");
});

T("download: request-image {file} with the seed's client code; `image complete` payload", async (t) => {
  const socket = await sock(t, 8);
  const ch = socket.channel("image:1");
  await joinOk(ch);
  const r = await seedDownload(ch, { file: "big.bin" });
  assert.equal(r.reply.status, "ok", JSON.stringify(r.reply));
  const m = r.reply.response;
  assert.deepEqual({ size: m.size, chunks: m.chunks, chunk_size: m.chunk_size, sha256: m.sha256, etag: m.etag },
    { size: BIG, chunks: BIG / CHUNK, chunk_size: CHUNK, sha256: f.big.sha256, etag: expectedEtag(path.join(tree.files, "big.bin")) });
  assert.deepEqual(r.complete, { file: "big.bin", size: BIG, chunks: BIG / CHUNK, chunk_size: CHUNK, sha256: f.big.sha256 });
  assert.equal(r.totalChunks, BIG / CHUNK);
  assert.deepEqual(r.indexes, Array.from({ length: BIG / CHUNK }, (_, i) => i), "chunks in order, indexes from 0");
  const bytes = Buffer.from(await r.blob.arrayBuffer());
  assert.equal(bytes.length, BIG);
  assert.equal(sha256(bytes), f.big.sha256);
});

T("download: request-image {} sends the default file (channel.png); seed's handlers", async (t) => {
  const socket = await sock(t, 8);
  const ch = socket.channel("image:lobby");
  await joinOk(ch);
  const r = await seedDownload(ch, {});
  assert.equal(r.reply.status, "ok", JSON.stringify(r.reply));
  assert.equal(r.complete.file, "channel.png");
  assert.equal(r.complete.size, f.png.size);
  assert.equal(r.complete.sha256, f.png.sha256);
  assert.deepEqual(Buffer.from(await r.blob.arrayBuffer()), f.png.bytes);
});

T("download: interrupted by a dropped connection, resumed from the bytes held (sluice-files.js)", async (t) => {
  const { socket, ch } = await filesChannel(t, 9);
  const bindings = handlers(ch);
  let killedAt = 0;
  const err = await within(downloadFile(ch, "big.bin", {
    timeout: 20000,
    onProgress: (p) => { if (!killedAt && p.received >= 40 * CHUNK) { killedAt = p.received; socket.conn.terminate(); } },
  }).then(() => null, (e) => e), 25000, "interrupted download");
  assert.ok(err, "the download must fail when its connection drops");
  assert.equal(err.reason, "interrupted", String(err));
  assert.equal(handlers(ch), bindings, "handlers removed after a failure too");
  const res = err.resume;
  t.diagnostic(`killed at ${killedAt} bytes, resume offset ${res.offset}`);
  assert.ok(res.offset >= killedAt && res.offset < BIG, `resume offset ${res.offset} (killed at ${killedAt})`);
  assert.equal(res.offset % CHUNK, 0, "offset of whole chunks");
  assert.equal(res.etag, expectedEtag(path.join(tree.files, "big.bin")));
  assert.equal(res.data.length, BIG);

  await waitFor(() => socket.isConnected() && ch.state === "joined", 10000, "reconnect + rejoin");
  let chunksSecond = 0;
  const r = await within(downloadFile(ch, "big.bin", { timeout: 20000, resumeFrom: res, onProgress: () => { chunksSecond++; } }), 25000, "resumed download");
  assert.equal(r.firstChunk, res.offset / CHUNK, "first_chunk = offset / chunk_size");
  assert.equal(r.reply.offset, res.offset);
  assert.equal(chunksSecond, BIG / CHUNK - r.firstChunk, "only the missing chunks are sent again");
  assert.equal(sha256(r.data), f.big.sha256);
});

T("download: an offset not on a chunk boundary is rounded down; absolute indexes; short last chunk", async (t) => {
  const { ch } = await filesChannel(t, 10);
  const c = counters(ch);
  const cs = 64 * KiB;
  const size = f.mid.size;
  const chunks = Math.ceil(size / cs);
  const got = [];
  ch.on("new chunk", (p) => got.push(Buffer.from(p)));
  const done = waitFor(() => c.completes.length > 0, 15000, "image complete");
  const r = await push(ch, "download", { file: "mid.bin", offset: 5 * cs + 123, chunk_size: cs }, 10000);
  assert.equal(r.status, "ok", JSON.stringify(r));
  const m = r.response;
  assert.deepEqual({ file: m.file, size: m.size, chunk_size: m.chunk_size, chunks: m.chunks, first_chunk: m.first_chunk, offset: m.offset, sha256: m.sha256 }, {
    file: "mid.bin", size, chunk_size: cs, chunks, first_chunk: 5, offset: 5 * cs, sha256: f.mid.sha256,
  });
  await done;
  assert.deepEqual(c.indexes, Array.from({ length: chunks - 5 }, (_, i) => i + 5));
  for (const frame of got) {
    const i = frame.readUInt32BE(0);
    assert.ok(frame.subarray(4).equals(f.mid.bytes.subarray(i * cs, Math.min((i + 1) * cs, size))), `chunk ${i} bytes`);
  }
  assert.equal(got.at(-1).length - 4, size % cs, "the last chunk is short");

  // the helper with a resume offset off the boundary (data from an earlier attempt)
  const prefix = new Uint8Array(size);
  prefix.set(f.mid.bytes.subarray(0, 200 * KiB + 7));
  const h = await downloadFile(ch, "mid.bin", { chunkSize: cs, timeout: 10000, resumeFrom: { offset: 200 * KiB + 7, etag: r.response.etag, data: prefix } });
  assert.equal(h.firstChunk, 3, "200 KiB + 7 rounds down to chunk 3 of 64 KiB");
  assert.equal(sha256(h.data), f.mid.sha256);
});

T("download: a resume whose etag changed restarts from 0 (no mixing of versions)", async (t) => {
  const { ch } = await filesChannel(t, 11);
  const bogus = new Uint8Array(f.mid.size).fill(0xee);
  const r = await downloadFile(ch, "mid.bin", { timeout: 10000, resumeFrom: { offset: 2 * MiB, etag: "1-2-3", data: bogus } });
  assert.equal(r.firstChunk, 0);
  assert.equal(sha256(r.data), f.mid.sha256);
});

T("download: chunk_size is clamped to [4 KiB, 4 MiB]; offset past the end → bad_offset; empty file", async (t) => {
  const { ch } = await filesChannel(t, 12);
  const lo = await push(ch, "download", { file: "small.bin", chunk_size: 1 }, 10000);
  assert.equal(lo.status, "ok", JSON.stringify(lo));
  assert.equal(lo.response.chunk_size, 4 * KiB);
  assert.equal(lo.response.chunks, Math.ceil(f.small.size / (4 * KiB)));
  const hi = await push(ch, "download", { file: "small.bin", chunk_size: 64 * MiB }, 10000);
  assert.equal(hi.status, "ok", JSON.stringify(hi));
  assert.equal(hi.response.chunk_size, 4 * MiB);
  assert.equal(hi.response.chunks, 1);
  await push(ch, "cancel", {}, 5000);

  const past = await push(ch, "download", { file: "small.bin", offset: f.small.size + 1 }, 10000);
  assertError(past, "bad_offset");

  const { ch: ch2 } = await filesChannel(t, 12);
  const e = await downloadFile(ch2, "empty.bin", { timeout: 10000 });
  assert.equal(e.size, 0);
  assert.equal(e.data.length, 0);
  assert.equal(e.sha256, sha256(Buffer.alloc(0)));
});

T("fetch: a small file as one binary reply; in a subdirectory and through an inner symlink; over --max-fetch-bytes → too_large", async (t) => {
  const { ch } = await filesChannel(t, 13);
  for (const [name, file] of [["small.bin", f.small], ["channel.png", f.png], ["sub/inner.bin", f.inner], ["sub/link-small.bin", f.small], ["empty.bin", f.empty]]) {
    const r = await push(ch, "fetch", { file: name }, 10000);
    assert.equal(r.status, "ok", `${name}: ${JSON.stringify(r)}`);
    assert.ok(r.response instanceof ArrayBuffer, `${name}: binary reply`);
    assert.ok(Buffer.from(r.response).equals(file.bytes), `${name}: bytes equal`);
  }
  assert.ok(f.mid.size > MAX_FETCH);
  for (const [name, size] of [["mid.bin", f.mid.size], ["big.bin", BIG]]) {
    const r = await push(ch, "fetch", { file: name }, 10000);
    assertError(r, "too_large", name);
    assert.equal(r.response.size, size, `${name}: the reply names the size`);
  }
});

T("cancel {file} stops that stream: chunks stop, no `image complete`", async (t) => {
  const { ch } = await filesChannel(t, 14);
  const c = counters(ch);
  const cs = 4 * KiB;
  const r = await push(ch, "download", { file: "big.bin", chunk_size: cs }, 10000);
  assert.equal(r.status, "ok", JSON.stringify(r));
  const x = await push(ch, "cancel", { file: "big.bin" }, 5000);
  assert.deepEqual(x, { status: "ok", response: { cancelled: 1 } });
  const atCancel = c.chunks;
  await sleep(700);
  const afterCancel = c.chunks - atCancel;
  t.diagnostic(`chunks before the cancel reply: ${atCancel}; after: ${afterCancel}`);
  assert.ok(afterCancel * cs <= BATCH, `at most one batch after the cancel reply (${afterCancel} chunks)`);
  assert.ok(c.chunks < BIG / cs, "the stream did not finish");
  assert.equal(c.completes.length, 0, "a cancelled stream sends no image complete");
  assert.deepEqual(await push(ch, "cancel", { file: "big.bin" }, 5000), { status: "ok", response: { cancelled: 0 } });
});

T("cancel {} stops every stream of the channel; several files stream on one channel", async (t) => {
  const { ch } = await filesChannel(t, 15);
  const c = counters(ch);
  const cs = 4 * KiB;
  // big2.bin first: its digest is computed before the reply (seconds for 64 MiB in a debug
  // build); big.bin's is cached by now, so both streams are surely still running at the cancel.
  const b = await push(ch, "download", { file: "big2.bin", chunk_size: cs }, 20000);
  assert.equal(b.status, "ok", JSON.stringify(b));
  const a = await push(ch, "download", { file: "big.bin", chunk_size: cs }, 10000);
  assert.equal(a.status, "ok", JSON.stringify(a));
  assert.deepEqual(await push(ch, "cancel", {}, 5000), { status: "ok", response: { cancelled: 2 } });
  const atCancel = c.chunks;
  await sleep(700);
  assert.ok((c.chunks - atCancel) * cs <= BATCH, `chunks stopped (${c.chunks - atCancel} after the reply)`);
  assert.equal(c.completes.length, 0);
  assert.deepEqual(await push(ch, "cancel", {}, 5000), { status: "ok", response: { cancelled: 0 } });
});

// The first `download` of a file computes its sha256 before replying. The digest runs off
// the socket's session, so heartbeats and pushes on the socket's other channels are answered
// meanwhile (as in Phoenix, where each channel is its own process).
test("download: a file's first digest does not hold up the socket's other channels and heartbeats",
  { timeout: 30000 }, withLogs(() => srv, async (t) => {
    const socket = await sock(t, 17);
    const echo = socket.channel("echo:files-digest");
    await joinOk(echo);
    const ch = await joinFilesChannel(socket);
    const t0 = Date.now();
    const dl = push(ch, "download", { file: "fresh.bin" }, 25000).then((r) => ({ r, ms: Date.now() - t0 }));
    await sleep(20);
    const t1 = Date.now();
    const e = await push(echo, "ping", { x: 1 }, 25000);
    const echoMs = Date.now() - t1;
    const { r, ms } = await dl;
    await push(ch, "cancel", {}, 5000);
    t.diagnostic(`download reply after ${ms} ms; echo on the same socket meanwhile: ${echoMs} ms`);
    assert.equal(r.status, "ok", JSON.stringify(r));
    assert.equal(e.status, "ok");
    assert.ok(echoMs < ms / 2 + 50, `the echo (${echoMs} ms) waited for the digest (${ms} ms)`);
  }));

T("paths: traversal, absolute, malformed names, symlinks out of the root, directories, fifos, missing files", async (t) => {
  const { ch } = await filesChannel(t, 16);
  const cases = [
    ["../x", "invalid_name"],
    ["/etc/passwd", "invalid_name"],
    ["a/../../x", "invalid_name"],
    ["./big.bin", "invalid_name"],
    ["sub/./inner.bin", "invalid_name"],
    ["sub/..", "invalid_name"],
    ["", "invalid_name"],
    ["a\\b", "invalid_name"],
    ["..\\x", "invalid_name"],
    ["a\u0000b", "invalid_name"],
    ["x".repeat(256), "invalid_name"],
    ["escape.bin", "escapes_root"],
    ["outdir/secret.bin", "escapes_root"],
    ["sub", "not_a_file"],
    ["fifo", "not_a_file"],
    ["nope.bin", "not_found"],
    ["sub/nope.bin", "not_found"],
  ];
  const wrong = [];
  for (const [name, reason] of cases) {
    const r = await push(ch, "download", { file: name }, 5000);
    try { assertError(r, reason); } catch { wrong.push(`download ${JSON.stringify(name)}: want ${reason}, got ${JSON.stringify(r)}`); }
  }
  for (const [name, reason] of [["../x", "invalid_name"], ["escape.bin", "escapes_root"], ["sub", "not_a_file"], ["nope.bin", "not_found"]]) {
    for (const event of ["fetch", "request-image"]) {
      const r = await push(ch, event, { file: name }, 5000);
      try { assertError(r, reason); } catch { wrong.push(`${event} ${JSON.stringify(name)}: want ${reason}, got ${JSON.stringify(r)}`); }
    }
  }
  assert.deepEqual(wrong, []);
  assert.equal(readFileSync(path.join(tree.outside, "secret.bin")).length, 4096, "(the outside file is untouched)");
});

// ---------------------------------------------------------------------------------------
// uploads

T("upload: 64 MiB with the window protocol, interrupted at ~40 % and resumed on a new socket", async (t) => {
  const user = 501;
  const data = randomBytes(BIG);
  const digest = sha256(data);
  const s1 = await sock(t, user);
  const ch1 = await joinFilesChannel(s1);
  let killedAt = 0;
  let maxInflight = 0;
  const err = await within(uploadFile(ch1, data, {
    name: "up.bin", timeout: 20000,
    onProgress: (p) => {
      maxInflight = Math.max(maxInflight, p.sent - p.acked);
      if (!killedAt && p.acked >= 0.4 * BIG) { killedAt = p.acked; s1.conn.terminate(); }
    },
  }).then(() => null, (e) => e), 30000, "interrupted upload");
  s1.disconnect();
  assert.ok(err, "the upload must fail when its connection drops");
  assert.equal(err.reason, "interrupted", String(err));
  assert.ok(maxInflight <= WINDOW, `never more than the window unacknowledged (${maxInflight})`);
  assert.ok(err.resume.offset >= killedAt, JSON.stringify({ ...err.resume, killedAt }));
  assert.equal(err.resume.sha256, digest);
  assert.equal(readOrNull(path.join(userDir(user), "up.bin")), null, "not visible before upload:finish");

  const s2 = await sock(t, user);
  const ch2 = await joinFilesChannel(s2);
  let firstSent = null;
  const r = await within(uploadFile(ch2, data, { name: "up.bin", sha256: err.resume.sha256, timeout: 20000, onProgress: (p) => { firstSent ??= p.sent; } }), 30000, "resumed upload");
  t.diagnostic(`killed at ${killedAt} acked; upload:start resumed from ${r.resumedFrom}`);
  assert.ok(r.resumedFrom > 0, "upload:start returned offset > 0");
  assert.ok(r.resumedFrom >= killedAt && r.resumedFrom <= BIG, `resumed from ${r.resumedFrom}, had ${killedAt} acknowledged`);
  assert.equal(firstSent, r.resumedFrom);
  assert.equal(r.name, "up.bin");
  assert.equal(r.size, BIG);
  assert.equal(r.sha256, digest);
  const onDisk = readOrNull(path.join(userDir(user), "up.bin"));
  assert.ok(onDisk && onDisk.equals(data), "the final file is byte-identical");
  assert.deepEqual(lsOrEmpty(path.join(userDir(user), ".partial")), [], "no partial left");
}, 60000);

T("upload: digest mismatch → error, partial removed, no final file", async (t) => {
  const user = 502;
  const { ch } = await filesChannel(t, user);
  const data = randomBytes(300 * KiB);
  const err = await uploadFile(ch, data, { name: "bad.bin", sha256: "0".repeat(64), chunkSize: 64 * KiB, timeout: 10000 }).then(() => null, (e) => e);
  assert.ok(err, "must fail");
  assert.equal(err.reason, "digest_mismatch", String(err));
  assert.equal(err.response.sha256, sha256(data), "the reply carries the digest of what was received");
  assert.equal(readOrNull(path.join(userDir(user), "bad.bin")), null);
  assert.deepEqual(lsOrEmpty(path.join(userDir(user), ".partial")), []);
  // a second attempt starts from 0 (the wrong bytes are gone)
  const s = await push(ch, "upload:start", { name: "bad.bin", size: data.length }, 5000);
  assert.equal(s.status, "ok", JSON.stringify(s));
  assert.equal(s.response.offset, 0);
  await push(ch, "upload:abort", { upload_id: s.response.upload_id }, 5000);
});

T("upload: past_end, too_large, incomplete (partial kept, resumable), abort", async (t) => {
  const user = 503;
  const { ch } = await filesChannel(t, user);
  let s = await push(ch, "upload:start", { name: "pe.bin", size: 10 }, 5000);
  assert.equal(s.status, "ok", JSON.stringify(s));
  assert.deepEqual({ offset: s.response.offset, window: s.response.window }, { offset: 0, window: WINDOW });
  assert.ok(s.response.upload_id !== undefined && s.response.upload_id !== null && s.response.upload_id !== "");
  assert.deepEqual(await push(ch, "chunk", ab(new Array(16).fill(1)), 5000), { status: "error", response: { reason: "past_end", offset: 0 } });

  const { ch: ch2 } = await filesChannel(t, user);
  s = await push(ch2, "upload:start", { name: "pe2.bin", size: 10 }, 5000);
  assert.equal(s.status, "ok");
  assert.deepEqual(await push(ch2, "chunk", ab([1, 2, 3, 4, 5, 6]), 5000), { status: "ok", response: { offset: 6 } });
  assert.deepEqual(await push(ch2, "chunk", ab([7, 8, 9, 10, 11, 12]), 5000), { status: "error", response: { reason: "past_end", offset: 6 } });
  assert.equal(readOrNull(path.join(userDir(user), "pe.bin")), null);
  assert.equal(readOrNull(path.join(userDir(user), "pe2.bin")), null);

  const { ch: ch3 } = await filesChannel(t, user);
  assertError(await push(ch3, "upload:start", { name: "huge.bin", size: MAX_UPLOAD + 1 }, 5000), "too_large");
  assertError(await push(ch3, "upload:start", { name: "huge.bin", size: 100 * 1024 * MiB }, 5000), "too_large");

  s = await push(ch3, "upload:start", { name: "inc.bin", size: 1000 }, 5000);
  assert.equal(s.status, "ok");
  const id = s.response.upload_id;
  assert.deepEqual(await push(ch3, "chunk", ab(new Array(500).fill(7)), 5000), { status: "ok", response: { offset: 500 } });
  assert.deepEqual(await push(ch3, "upload:finish", { upload_id: id }, 5000), { status: "error", response: { reason: "incomplete", offset: 500 } });
  assert.equal(readOrNull(path.join(userDir(user), "inc.bin")), null);

  const { ch: ch4 } = await filesChannel(t, user);
  s = await push(ch4, "upload:start", { name: "inc.bin", size: 1000 }, 5000);
  assert.equal(s.status, "ok");
  assert.equal(s.response.offset, 500, "the partial was kept");
  const r = await abortUpload(ch4, s.response.upload_id, 5000);
  assert.ok(r && typeof r === "object");
  s = await push(ch4, "upload:start", { name: "inc.bin", size: 1000 }, 5000);
  assert.equal(s.response.offset, 0, "upload:abort removed the partial");
  // a different declared size does not resume the partial either
  assert.deepEqual(await push(ch4, "chunk", ab(new Array(1000).fill(3)), 5000), { status: "ok", response: { offset: 1000 } });
  const fin = await push(ch4, "upload:finish", { upload_id: s.response.upload_id }, 5000);
  assert.equal(fin.status, "ok", JSON.stringify(fin));
  assert.deepEqual(fin.response, { name: "inc.bin", size: 1000, sha256: sha256(Buffer.alloc(1000, 3)) });
  assert.ok(readFileSync(path.join(userDir(user), "inc.bin")).equals(Buffer.alloc(1000, 3)));
});

T("upload: bad names are refused with invalid_name", async (t) => {
  const { ch } = await filesChannel(t, 504);
  const wrong = [];
  for (const name of ["a/b", "..", ".", "", "x\\y", "/abs", "a\u0000b", "../up.bin", "n".repeat(256)]) {
    const r = await push(ch, "upload:start", { name, size: 10 }, 5000);
    try { assertError(r, "invalid_name"); } catch { wrong.push(`${JSON.stringify(name)} → ${JSON.stringify(r)}`); }
  }
  assert.deepEqual(wrong, []);
  assert.deepEqual(lsOrEmpty(tree.uploads).filter((n) => n !== "501" && n !== "502" && n !== "503" && n !== "504"), [], "nothing written elsewhere");
});

T("upload: the seed's implicit binary `chunk` on image:1 appends to <uploads>/<user>/image-1.bin; JSON chunk ignored", async (t) => {
  const user = 601;
  const socket = await sock(t, user);
  const ch = socket.channel("image:1");
  await joinOk(ch);
  const parts = [100 * KiB, 1 * MiB, 7, 512 * KiB + 3].map((n) => randomBytes(n));
  // fire-and-forget like the seed, collect replies afterwards
  const replies = parts.map((p) => push(ch, "chunk", ab(p), 10000));
  const json = push(ch, "chunk", {}, 10000);
  const rs = await Promise.all(replies);
  let total = 0;
  rs.forEach((r, i) => {
    total += parts[i].length;
    assert.deepEqual(r, { status: "ok", response: { offset: total } }, `chunk ${i}`);
  });
  assert.deepEqual(await json, { status: "ok", response: {} });
  const onDisk = readOrNull(path.join(userDir(user), "image-1.bin"));
  assert.ok(onDisk, "image-1.bin exists");
  assert.ok(onDisk.equals(Buffer.concat(parts)), `content is the concatenation (${onDisk.length} vs ${total} bytes)`);
});

T("sluice-files.js: a Blob upload; AbortSignal stops an upload (partial kept, resumable) and a download (cancel pushed)", async (t) => {
  const user = 505;
  const socket = await sock(t, user);
  const data = randomBytes(3 * MiB + 5);
  const blobUp = await joinFilesChannel(socket);
  const r0 = await uploadFile(blobUp, new Blob([data.subarray(0, 700 * KiB)]), { name: "blob.bin", chunkSize: 128 * KiB, timeout: 10000 });
  assert.equal(r0.resumedFrom, 0);
  assert.ok(readFileSync(path.join(userDir(user), "blob.bin")).equals(data.subarray(0, 700 * KiB)));

  const up = await joinFilesChannel(socket);
  const ac = new AbortController();
  let abortedAt = 0;
  const err = await uploadFile(up, data, {
    name: "abort.bin", chunkSize: 256 * KiB, timeout: 10000, signal: ac.signal,
    onProgress: (p) => { if (!abortedAt && p.acked >= MiB) { abortedAt = p.acked; ac.abort(); } },
  }).then(() => null, (e) => e);
  assert.ok(err, "aborted upload rejects");
  assert.equal(err.name, "AbortError");
  assert.equal(err.reason, "aborted");
  assert.ok(err.resume.offset >= abortedAt);
  await pushLeave(up);
  const again = await joinFilesChannel(socket);
  const r = await uploadFile(again, data, { name: "abort.bin", sha256: err.resume.sha256, timeout: 10000 });
  assert.ok(r.resumedFrom >= abortedAt && r.resumedFrom > 0, `resumed from ${r.resumedFrom} (aborted at ${abortedAt})`);
  assert.ok(readFileSync(path.join(userDir(user), "abort.bin")).equals(data));

  const down = await joinFilesChannel(socket);
  const c = counters(down);
  const bindings = handlers(down);
  const ac2 = new AbortController();
  const derr = await downloadFile(down, "big.bin", {
    chunkSize: 64 * KiB, timeout: 10000, signal: ac2.signal,
    onProgress: (p) => { if (p.received >= 10 * 64 * KiB) ac2.abort(); },
  }).then(() => null, (e) => e);
  assert.ok(derr, "aborted download rejects");
  assert.equal(derr.reason, "aborted");
  assert.equal(derr.resume.offset, 10 * 64 * KiB);
  assert.equal(handlers(down), bindings, "handlers removed");
  const cancelled = await push(down, "cancel", {}, 5000); // the helper's cancel went first
  assert.deepEqual(cancelled, { status: "ok", response: { cancelled: 0 } });
  const n = c.chunks;
  await sleep(300);
  assert.equal(c.chunks, n, "no chunks after the cancel");
  assert.ok(c.chunks < BIG / (64 * KiB));
  assert.equal(c.completes.length, 0);
});

// ---------------------------------------------------------------------------------------
// raw socket

T("raw socket: binary messages stored and acknowledged; text refused; a valid token required", async (t) => {
  const user = 701;
  const url = (token) => `ws://127.0.0.1:${srv.port}/rawsocket${token === undefined ? "" : `?token=${encodeURIComponent(token)}`}`;
  const c = await RawClient.connect(url(srv.token(user)), { t });
  const payloads = [randomBytes(500 * KiB), randomBytes(1)];
  const acks = [];
  for (const p of payloads) {
    const n = c.frames.length;
    c.sendBinary(p);
    acks.push(await c.waitFrame((d, fr) => fr.type === "text", 10000, "raw ack", n));
  }
  const names = new Set();
  acks.forEach((a, i) => {
    assert.equal(a.ok, true, JSON.stringify(a));
    assert.equal(a.size, payloads[i].length);
    assert.equal(a.sha256, sha256(payloads[i]));
    assert.match(a.name, /^raw-\d+-\d+\.bin$/);
    names.add(a.name);
    const onDisk = readOrNull(path.join(userDir(user), a.name));
    assert.ok(onDisk && onDisk.equals(payloads[i]), `${a.name} holds the message`);
  });
  assert.equal(names.size, payloads.length, "each message gets its own file");

  let n = c.frames.length;
  c.ws.send("hello", { binary: false });
  assert.deepEqual(await c.waitFrame((d, fr) => fr.type === "text", 5000, "text refusal", n), { ok: false, error: "binary_only" });

  for (const token of [undefined, "", "garbage", srv.token(user, { secret: "x".repeat(64) })]) {
    const r = await tryUpgrade(url(token));
    if (r.ws) r.ws.terminate();
    assert.equal(r.status, 403, `token ${JSON.stringify(token)}: ${JSON.stringify({ status: r.status, error: r.error })}`);
  }

  c.close();
});

T("raw socket: a message over --max-frame-bytes (64 KiB server) closes with 1009, nothing stored", async (t) => {
  const user = 702;
  const small = await startFilesServer(tree, ["--max-frame-bytes", "64KiB", "--upload-window-bytes", "1MiB"]);
  t.after(() => small.stop());
  await withLogs(() => small, async () => {
    const c = await RawClient.connect(`ws://127.0.0.1:${small.port}/rawsocket?token=${encodeURIComponent(small.token(user))}`, { t });
    c.sendBinary(randomBytes(60 * KiB));
    const ack = await c.waitFrame((d, fr) => fr.type === "text", 5000, "raw ack");
    assert.equal(ack.ok, true, JSON.stringify(ack));
    const n = c.frames.length;
    c.sendBinary(Buffer.alloc(100 * KiB, 1));
    const closeInfo = await c.waitClose(5000);
    assert.equal(closeInfo.code, 1009, JSON.stringify(closeInfo));
    assert.equal(c.frames.length, n, "no ack for the refused message");
    assert.deepEqual(lsOrEmpty(userDir(user)).filter((x) => x.startsWith("raw-")), [ack.name], "nothing stored for it");
  })(t);
});

// A multi-MiB message over the limit: the server sends close 1009 while the client is still
// sending. It keeps reading and discarding the rest (bounded), so the connection is not reset
// under the close frame and the client sees 1009, not 1006.
test("raw socket: a 4 MiB + 1 message over --max-frame-bytes 4 MiB closes with 1009 (5 tries)",
  { timeout: 30000 }, withLogs(() => srv, async (t) => {
    const codes = [];
    for (let i = 0; i < 5; i++) {
      const c = await RawClient.connect(`ws://127.0.0.1:${srv.port}/rawsocket?token=${encodeURIComponent(srv.token(703))}`, { t });
      c.sendBinary(Buffer.alloc(MAX_FRAME + 1, 1));
      codes.push((await c.waitClose(10000)).code);
    }
    t.diagnostic(`close codes: ${codes.join(" ")}`);
    assert.deepEqual(codes, [1009, 1009, 1009, 1009, 1009]);
    assert.deepEqual(lsOrEmpty(userDir(703)), [], "nothing stored");
  }));

// ---------------------------------------------------------------------------------------
// V1 and metrics

T("v1: binary events answer binary_unsupported on a V1 socket", async (t) => {
  const socket = await sock(t, 801, { vsn: "1.0.0", ...v1Codec });
  const ch = socket.channel("files:v1");
  await joinOk(ch);
  for (const [event, payload] of [["download", { file: "small.bin" }], ["request-image", { file: "small.bin" }], ["fetch", { file: "small.bin" }]]) {
    assertError(await push(ch, event, payload, 5000), "binary_unsupported", event);
  }
  const ch2 = socket.channel("image:v1");
  await joinOk(ch2);
  assertError(await push(ch2, "request-image", {}, 5000), "binary_unsupported");
});

T("metrics: stream, upload and path-rejection families after the tests above", async () => {
  let active;
  await waitFor(async () => (active = metricValue((await scrape(srv)).samples, "sluice_streams_active")) === 0, 5000)
    .catch(() => {});
  const { samples, text } = await scrape(srv);
  const v = (name, labels) => metricValue(samples, name, labels);
  const wrong = [];
  const check = (label, ok) => { if (!ok) wrong.push(label); };
  check(`sluice_streams_active back to 0 once every stream ended (got ${active})`, active === 0);
  check(`sluice_stream_bytes_total{mode="zero_copy"} > 0, at least the three full 64 MiB downloads (got ${v("sluice_stream_bytes_total", { mode: "zero_copy" })})`,
    v("sluice_stream_bytes_total", { mode: "zero_copy" }) >= 3 * BIG);
  for (const reason of ["invalid_name", "escapes_root", "not_found", "not_a_file"]) {
    check(`sluice_path_rejections_total{reason="${reason}"} > 0 (got ${v("sluice_path_rejections_total", { reason })})`,
      v("sluice_path_rejections_total", { reason }) > 0);
  }
  check(`sluice_upload_bytes_total >= 64 MiB (got ${v("sluice_upload_bytes_total")})`, v("sluice_upload_bytes_total") >= BIG);
  check(`sluice_uploads_total{result="ok"} > 0`, v("sluice_uploads_total", { result: "ok" }) > 0);
  check(`sluice_uploads_total{result="digest_mismatch"} > 0`, v("sluice_uploads_total", { result: "digest_mismatch" }) > 0);
  check(`sluice_uploads_total{result="past_end"} > 0`, v("sluice_uploads_total", { result: "past_end" }) > 0);
  check(`sluice_digest_failures_total > 0`, v("sluice_digest_failures_total") > 0);
  check(`sluice_stream_resumes_total > 0`, v("sluice_stream_resumes_total") > 0);
  check(`sluice_streams_total{end="complete"} > 0`, v("sluice_streams_total", { end: "complete" }) > 0);
  check(`sluice_streams_total{end="cancelled"} >= 3`, v("sluice_streams_total", { end: "cancelled" }) >= 3);
  check(`sluice_streams_total{end="closed"} > 0`, v("sluice_streams_total", { end: "closed" }) > 0);
  check(`sluice_upload_credit_stalls_total present`, v("sluice_upload_credit_stalls_total") !== null);
  assert.deepEqual(wrong, [], `metrics:\n${text.split("\n").filter((l) => /sluice_(stream|upload|path|digest)/.test(l)).join("\n")}`);
});
