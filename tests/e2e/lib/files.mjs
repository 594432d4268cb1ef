// Helpers for the files feature tests (docs/FILES.md): temp trees, test files, metrics
// parsing, /proc sampling. The client under test is web/sluice-files.js.
import { createHash, randomBytes } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync, utimesSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { REPO_ROOT, httpGet, startServer } from "./server.mjs";

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** Path of the browser module under test. */
export const FILES_JS_PATH = path.join(REPO_ROOT, "web", "sluice-files.js");

/**
 * Imports web/sluice-files.js. There is no package.json next to it (it is served as is to
 * browsers), so a Node 20 without ES module syntax detection (< 20.19) would load a `.js`
 * file as CommonJS; then the source is imported through a data: URL (it has no imports).
 * @returns {Promise<typeof import("../../../web/sluice-files.js")>}
 */
export async function loadFilesModule() {
  try {
    return await import(pathToFileURL(FILES_JS_PATH).href);
  } catch (err) {
    if (!(err instanceof SyntaxError)) throw err;
    const src = readFileSync(FILES_JS_PATH);
    return import(`data:text/javascript;base64,${src.toString("base64")}`);
  }
}

/** Lowercase hex sha256 of bytes (node:crypto, independent of the module under test). */
export const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

/** sha256 of a file on disk, streamed in 8 MiB reads. */
export function sha256File(file) {
  const h = createHash("sha256");
  const fd = openSync(file, "r");
  try {
    const buf = Buffer.allocUnsafe(8 * MiB);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally { closeSync(fd); }
  return h.digest("hex");
}

/**
 * A temp tree: {root, files, uploads, outside}. Removed by `cleanup()`.
 * @param {string} prefix
 */
export function tempTree(prefix = "sluice-files-") {
  const root = mkdtempSync(path.join(tmpdir(), prefix));
  const t = { root, files: path.join(root, "files"), uploads: path.join(root, "uploads"), outside: path.join(root, "outside") };
  for (const d of [t.files, t.uploads, t.outside]) mkdirSync(d, { recursive: true });
  t.cleanup = () => rmSync(root, { recursive: true, force: true });
  return t;
}

/**
 * Makes a file look "settled" (mtime an hour ago) so the server maps it instead of
 * serving it by copies (docs/FILES.md, mmap safety policy 2).
 */
export function age(file, seconds = 3600) {
  const t = new Date(Date.now() - seconds * 1000);
  utimesSync(file, t, t);
}

/** Writes `bytes` to `file`, ages it, returns {file, bytes, size, sha256}. */
export function writeTestFile(file, bytes, { settle = true } = {}) {
  mkdirSync(path.dirname(file), { recursive: true });
  const fd = openSync(file, "w");
  try {
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, Math.min(bytes.length - off, 16 * MiB));
  } finally { closeSync(fd); }
  if (settle) age(file);
  return { file, bytes, size: bytes.length, sha256: sha256(bytes) };
}

/** A random file of `size` bytes. */
export const writeRandomFile = (file, size, opts) => writeTestFile(file, randomBytes(size), opts);

/**
 * A large file generated fast without keeping it in memory: a random 1 MiB block repeated,
 * each copy stamped with its MiB counter in its first 8 bytes (so no two MiB are equal).
 * Returns {file, size, sha256}.
 */
export function writeLargeFile(file, size) {
  const block = randomBytes(MiB);
  const h = createHash("sha256");
  const fd = openSync(file, "w");
  try {
    for (let off = 0, i = 0; off < size; off += MiB, i++) {
      block.writeBigUInt64BE(BigInt(i), 0);
      const n = Math.min(MiB, size - off);
      const part = block.subarray(0, n);
      let w = 0;
      while (w < n) w += writeSync(fd, part, w, n - w);
      h.update(part);
    }
  } finally { closeSync(fd); }
  age(file);
  return { file, size, sha256: h.digest("hex") };
}

/** The etag docs/FILES.md specifies for a file on disk: `<size hex>-<mtime ns hex>-<inode hex>`. */
export function expectedEtag(file) {
  const st = statSync(file, { bigint: true });
  return `${st.size.toString(16)}-${st.mtimeNs.toString(16)}-${st.ino.toString(16)}`;
}

/** Entries of a directory, [] if it does not exist. */
export function lsOrEmpty(dir) {
  try { return readdirSync(dir); } catch (e) { if (e.code === "ENOENT") return []; throw e; }
}

/** Bytes of a file, or null if missing. */
export function readOrNull(file) {
  try { return readFileSync(file); } catch (e) { if (e.code === "ENOENT") return null; throw e; }
}

/**
 * Starts sluice with the files flags for a tree; `extra` flags are appended.
 * @param {{files: string, uploads: string}} tree
 * @param {string[]} [extra]
 */
export function startFilesServer(tree, extra = [], opts = {}) {
  return startServer({ args: ["--files-dir", tree.files, "--uploads-dir", tree.uploads, ...extra], ...opts });
}

/**
 * Parses a Prometheus text exposition into [{name, labels, value}].
 * @param {string} text
 */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const l of m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** Sum of the samples of `name` whose labels include `labels`; null if none. */
export function metricValue(samples, name, labels = {}) {
  const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return hits.length ? hits.reduce((a, s) => a + s.value, 0) : null;
}

/** GET /metrics and parse it. */
export async function scrape(server) {
  const r = await httpGet(`${server.httpUrl}/metrics`, { timeoutMs: 5000 });
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status ?? r.error}`);
  return { text: r.text, samples: parseMetrics(r.text) };
}

/** VmRSS, RssAnon, RssFile, RssShmem (bytes) of a pid from /proc/<pid>/status. */
export function procMemory(pid) {
  const text = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k) => {
    const m = new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(text);
    return m ? Number(m[1]) * 1024 : null;
  };
  return { VmRSS: kb("VmRSS"), RssAnon: kb("RssAnon"), RssFile: kb("RssFile"), RssShmem: kb("RssShmem"), VmHWM: kb("VmHWM") };
}

export const fmtMiB = (b) => (b === null || b === undefined ? "?" : `${(b / MiB).toFixed(1)} MiB`);

/**
 * Seed-style download (websockets-with-phoenix.md): handlers exactly like the seed's
 * client (DataView getInt32 index, `imageChunks[index] = payload.slice(4)`, Blob on
 * `image complete`). Returns {reply, complete, blob, totalChunks, indexes}. Removes its
 * handlers.
 */
export async function seedDownload(channel, payload, { timeoutMs = 30000 } = {}) {
  let imageChunks = [];
  let totalChunks = 0;
  const indexes = [];
  const chunkRef = channel.on("new chunk", (p) => {
    if (p instanceof ArrayBuffer) {
      const view = new DataView(p);
      const index = view.getInt32(0);
      const chunk = p.slice(4);
      imageChunks[index] = chunk;
      indexes.push(index);
      totalChunks++;
    }
  });
  let completeRef;
  let timer;
  const complete = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no "image complete" within ${timeoutMs} ms (got ${totalChunks} chunks)`)), timeoutMs);
    completeRef = channel.on("image complete", (p) => {
      imageChunks = imageChunks.filter((chunk) => chunk !== undefined);
      const blob = new Blob(imageChunks, { type: "image/jpeg" });
      resolve({ payload: p, blob });
    });
  });
  try {
    const reply = await new Promise((resolve) => {
      channel.push("request-image", payload, timeoutMs)
        .receive("ok", (r) => resolve({ status: "ok", response: r }))
        .receive("error", (r) => resolve({ status: "error", response: r }))
        .receive("timeout", () => resolve({ status: "timeout" }));
    });
    if (reply.status !== "ok") return { reply, complete: null, blob: null, totalChunks, indexes };
    const c = await complete;
    return { reply, complete: c.payload, blob: c.blob, totalChunks, indexes };
  } finally {
    clearTimeout(timer);
    channel.off("new chunk", chunkRef);
    channel.off("image complete", completeRef);
    complete.catch(() => {});
  }
}
