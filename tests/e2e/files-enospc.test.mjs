// A full disk during an upload (docs/FILES.md "Uploads"): the uploads directory is a 4 MiB
// tmpfs, the upload is 8 MiB. The chunk that hits ENOSPC is answered `storage`, every later
// chunk too, `upload:finish` says `incomplete`, and no file ever appears under its final name.
// Needs root (mount); CI runs as root. Skipped, with the reason, elsewhere.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { withLogs } from "./lib/server.mjs";
import { ab, joinOk, phxSocket, push } from "./lib/phx.mjs";
import { MiB, lsOrEmpty, metricValue, scrape, sha256, startFilesServer, tempTree } from "./lib/files.mjs";

let srv, tree, mounted = false, skip = "";
before(async () => {
  tree = tempTree("sluice-enospc-");
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  if (!isRoot) {
    skip = "needs root to mount a small tmpfs";
    return;
  }
  mkdirSync(tree.uploads, { recursive: true });
  const m = spawnSync("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", tree.uploads], { encoding: "utf8" });
  if (m.status !== 0) {
    skip = `mount failed: ${m.stderr.trim()}`;
    return;
  }
  mounted = true;
  srv = await startFilesServer(tree, ["--upload-window-bytes", "2MiB"]);
}, { timeout: 30000 });
after(async () => {
  await srv?.stop();
  if (mounted) spawnSync("umount", [tree.uploads]);
  tree?.cleanup();
}, { timeout: 15000 });

test("enospc: a full disk gives `storage` for the chunk that hit it and every later one; nothing is presented as complete", { timeout: 30000 },
  withLogs(() => srv, async (t) => {
    if (skip) {
      t.skip(skip);
      return;
    }
    const socket = await phxSocket(t, srv, { user: 55, socketOpts: { heartbeatIntervalMs: 30000 } });
    const ch = socket.channel("files:enospc");
    await joinOk(ch);
    const data = randomBytes(8 * MiB);
    const start = await push(ch, "upload:start", { name: "big.bin", size: data.length, sha256: sha256(data) }, 5000);
    assert.equal(start.status, "ok", JSON.stringify(start));
    assert.equal(start.response.offset, 0);
    // 1 MiB chunks, all sent at once: the window (2 MiB) throttles the server side.
    const replies = await Promise.all(Array.from({ length: 8 }, (_, i) =>
      push(ch, "chunk", ab(data.subarray(i * MiB, (i + 1) * MiB)), 20000)));
    t.diagnostic(`chunk replies: ${replies.map((r) => r.status === "ok" ? r.response.offset : r.response.reason).join(" ")}`);
    const firstBad = replies.findIndex((r) => r.status !== "ok");
    assert.ok(firstBad > 0 && firstBad < 8, `some chunks fit, then the disk is full: ${JSON.stringify(replies)}`);
    for (const r of replies.slice(0, firstBad)) assert.equal(r.status, "ok");
    for (const r of replies.slice(firstBad)) {
      assert.deepEqual(r, { status: "error", response: { reason: "storage" } }, "every chunk from the failing one on");
    }
    const fin = await push(ch, "upload:finish", { upload_id: start.response.upload_id }, 10000);
    assert.equal(fin.status, "error", JSON.stringify(fin));
    assert.equal(fin.response.reason, "incomplete");
    assert.ok(fin.response.offset < data.length);
    const userDir = path.join(tree.uploads, "55");
    assert.ok(!lsOrEmpty(userDir).includes("big.bin"), "never under its final name");
    const { samples } = await scrape(srv);
    assert.ok(metricValue(samples, "sluice_uploads_total", { result: "storage" }) >= 1, "counted");
  }));
