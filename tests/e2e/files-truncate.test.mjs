// Another process truncates a file while it is being streamed (docs/FILES.md, mmap safety
// policy). A mapped file: user space never touches the map, the kernel's copy in writev
// fails (EFAULT) instead of the process taking SIGBUS, so that one connection ends and the
// server goes on serving. A young (copied) file: the next positioned read fails and the
// stream ends with a `download error` push. The client's socket is paused right after the
// reply so the stream is still in progress when the file is cut.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { truncateSync } from "node:fs";
import path from "node:path";
import { withLogs } from "./lib/server.mjs";
import { joinOk, phxSocket, waitFor, within } from "./lib/phx.mjs";
import { MiB, fmtMiB, startFilesServer, tempTree, writeRandomFile } from "./lib/files.mjs";

let srv, tree;
before(async () => {
  tree = tempTree("sluice-truncate-");
  writeRandomFile(path.join(tree.files, "mapped.bin"), 64 * MiB);            // aged: mapped
  writeRandomFile(path.join(tree.files, "young.bin"), 64 * MiB, { settle: false }); // copied
  writeRandomFile(path.join(tree.files, "other.bin"), 1 * MiB);
  srv = await startFilesServer(tree, ["--file-settle", "1h"]);
}, { timeout: 30000 });
after(async () => {
  await srv?.stop();
  tree?.cleanup();
}, { timeout: 15000 });

/** Starts a download, pauses the TCP socket after the reply, truncates, resumes. */
async function cutWhileStreaming(t, file) {
  const socket = await phxSocket(t, srv, { user: 9, socketOpts: { heartbeatIntervalMs: 30000 } });
  const ch = socket.channel(`files:${file}`);
  await joinOk(ch);
  const seen = { chunks: 0, bytes: 0, complete: null, error: null, closed: false };
  ch.on("new chunk", (p) => { seen.chunks++; seen.bytes += p.byteLength - 4; });
  ch.on("image complete", (p) => { seen.complete = p; });
  ch.on("download error", (p) => { seen.error = p; });
  socket.onClose(() => { seen.closed = true; });
  const tcp = () => socket.conn._socket;
  const reply = await within(new Promise((resolve) => {
    ch.push("download", { file, chunk_size: 256 * 1024 }, 20000)
      .receive("ok", (r) => { tcp().pause(); resolve(r); })
      .receive("error", resolve);
  }), 20000, "download reply");
  assert.equal(reply.size, 64 * MiB, JSON.stringify(reply));
  truncateSync(path.join(tree.files, file), 0);
  tcp().resume();
  await waitFor(() => seen.complete || seen.error || seen.closed, 15000, "the stream to end");
  t.diagnostic(`${file}: ${seen.chunks} chunks (${fmtMiB(seen.bytes)}) before the end; ` +
    `complete=${!!seen.complete} error=${JSON.stringify(seen.error)} socket closed=${seen.closed}`);
  return { socket, ch, seen };
}

test("truncate: a mapped file cut mid-stream ends that connection, not the server", { timeout: 40000 },
  withLogs(() => srv, async (t) => {
    const { seen } = await cutWhileStreaming(t, "mapped.bin");
    assert.equal(seen.complete, null, "never presented as complete");
    assert.ok(seen.bytes < 64 * MiB, "the stream stopped short");
    assert.equal(srv.proc.exitCode, null, "the server is alive (no SIGBUS)");
    assert.equal(srv.proc.signalCode, null);
    // Another client is served as usual.
    const socket = await phxSocket(t, srv, { user: 10 });
    const ch = socket.channel("files:other");
    await joinOk(ch);
    const r = await within(new Promise((resolve) => {
      ch.push("fetch", { file: "other.bin" }, 10000).receive("ok", resolve).receive("error", resolve);
    }), 10000, "fetch");
    assert.ok(r instanceof ArrayBuffer && r.byteLength === MiB, "fetch after the truncation works");
  }));

test("truncate: a copied (young) file cut mid-stream ends with `download error`", { timeout: 40000 },
  withLogs(() => srv, async (t) => {
    const { seen } = await cutWhileStreaming(t, "young.bin");
    assert.equal(seen.complete, null, "never presented as complete");
    assert.deepEqual(seen.error, { file: "young.bin", reason: "io_error" });
    assert.equal(seen.closed, false, "only the stream ends, the socket stays");
  }));
