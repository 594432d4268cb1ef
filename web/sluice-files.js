// sluice-files.js: client side of Sluice's file transfers (docs/FILES.md), on top of
// the official `phoenix` JavaScript client.
//
// A plain ES module: no build step, no imports, no dependencies. It receives phoenix
// objects (a joined Channel, or a Socket for `joinFilesChannel`) and uses only globals
// that browsers and Node >= 20 both have: `crypto.subtle`, `crypto.getRandomValues`,
// `Blob`, `ArrayBuffer`, `DataView`, `Uint8Array`.
//
// # Contract
//
// * The socket must speak the V2 serializer (phoenix.js's default, `vsn=2.0.0`): on a V1
//   socket every call fails with reason `binary_unsupported`.
// * The channel must be joined to a topic routed to the `files` kind (`files:*`,
//   `image:*` by default) with a socket that carries a valid token.
// * One transfer per channel at a time. `new chunk` frames do not name their file, so two
//   downloads on one channel cannot be told apart, and binary `chunk` pushes go to the
//   channel's current upload. For concurrent transfers open one channel each
//   (`joinFilesChannel(socket)` joins a fresh `files:<random>` topic).
// * `downloadFile(channel, name, opts)` pushes `download` and resolves
//   `{data, size, sha256, etag, chunkSize, chunks, firstChunk, reply}` once `image complete`
//   arrived and the SHA-256 of `data` equals the digest announced in the reply.
//   `data` is a Uint8Array of exactly `size` bytes, allocated once; chunks are written at
//   their absolute position (`index * chunk_size`). It rejects with a `SluiceFilesError`:
//   `reason` is the server's reason (`not_found`, `invalid_name`, `escapes_root`,
//   `not_a_file`, `bad_offset`, `too_many_streams`, `binary_unsupported`, `io_error` from a
//   `download error` push mid-stream, ...) or one of
//   `interrupted` (the channel errored: socket closed, heartbeat timeout, channel crash),
//   `not_joined` (the channel cannot push right now, e.g. while it rejoins),
//   `closed` (the channel was left), `timeout` (no reply to the push), `aborted`
//   (`signal` fired; a `cancel` is pushed), `incomplete` (`image complete` before every
//   chunk), `bad_chunk` (a chunk of the wrong length), `bad_reply`, `digest_mismatch`.
//   `error.resume` is `{file, offset, etag, size, data}`: pass it back as `resumeFrom`
//   (on the same channel after it rejoined, or on another one) to continue from
//   `offset` (the bytes received without a gap). The server rounds the offset down to a
//   chunk boundary; chunks before `first_chunk` are kept from `resumeFrom.data`. If the
//   file changed in between (its `etag` differs) nothing is mixed: the download restarts
//   from 0.
// * `uploadFile(channel, file, opts)` sends `upload:start {name, size, sha256}`, then binary
//   `chunk` pushes from the offset the server returns, keeping at most `window` bytes
//   unacknowledged (each chunk's `ok {offset}` reply gives its bytes back), then
//   `upload:finish {upload_id}`. It resolves the finish reply plus
//   `{upload_id, resumedFrom}`. It rejects with a `SluiceFilesError` whose `reason` is the
//   server's (`invalid_name`, `too_large`, `past_end`, `incomplete`, `digest_mismatch`,
//   `storage`, ...) or `interrupted`, `not_joined`, `closed`, `timeout`, `aborted`,
//   `bad_reply`.
// * No push is ever left to phoenix.js's buffer of a channel that is not joined (it would
//   be replayed after the rejoin): calls fail with `not_joined` / `interrupted` instead;
//   wait for the rejoin (`channel.state === "joined"`) before resuming.
//   `error.resume` is `{upload_id, name, size, sha256, offset}`: calling `uploadFile` again
//   with the same bytes and name (optionally `sha256: error.resume.sha256` to skip hashing
//   again) resumes, because the server answers `upload:start` with the offset of the
//   partial it kept. `abortUpload(channel, uploadId)` discards that partial instead.
// * Every handler a call registers with `channel.on` is removed with `channel.off` when
//   the call settles, whatever the outcome.
// * `onProgress` is called synchronously from phoenix's message dispatch; if it throws,
//   the transfer stops and the promise rejects with that exception.

/** @typedef {import("phoenix").Channel} Channel */
/** @typedef {import("phoenix").Socket} Socket */

/**
 * @typedef {object} DownloadReply  The `ok` reply of `download` (docs/FILES.md).
 * @property {string} file
 * @property {number} size
 * @property {number} chunk_size
 * @property {number} chunks
 * @property {number} first_chunk
 * @property {number} offset
 * @property {string} sha256
 * @property {string} etag
 */

/**
 * @typedef {object} DownloadResume  What an interrupted download already has.
 * @property {string} [file]
 * @property {number} offset  bytes `[0, offset)` of `data` are good
 * @property {string|null} etag  version of the file they belong to
 * @property {number} [size]
 * @property {Uint8Array|null} data
 */

/**
 * @typedef {object} DownloadResult
 * @property {Uint8Array} data  the whole file
 * @property {number} size
 * @property {string} sha256  lowercase hex, verified
 * @property {string} etag
 * @property {number} chunkSize
 * @property {number} chunks
 * @property {number} firstChunk  first chunk this call received (> 0 when it resumed)
 * @property {DownloadReply} reply  the server's reply to `download`
 */

/**
 * @typedef {object} UploadResume
 * @property {string} upload_id
 * @property {string} name
 * @property {number} size
 * @property {string} sha256
 * @property {number} offset  bytes the server acknowledged
 */

/**
 * @typedef {object} UploadResult
 * @property {string} name
 * @property {number} size
 * @property {string} sha256
 * @property {string} upload_id
 * @property {number} resumedFrom  offset `upload:start` returned (0: a fresh upload)
 */

export const DEFAULT_UPLOAD_CHUNK_BYTES = 1024 * 1024;

/** Error of a failed transfer: `reason`, the server's `response`, `resume` information. */
export class SluiceFilesError extends Error {
  /**
   * @param {string} reason
   * @param {object} [o]
   * @param {any} [o.response]  the server's error payload, if any
   * @param {any} [o.cause]
   * @param {string} [o.message]
   */
  constructor(reason, { response, cause, message } = {}) {
    super(message ?? `sluice files: ${reason}`);
    this.name = reason === "aborted" ? "AbortError" : "SluiceFilesError";
    /** @type {string} */
    this.reason = reason;
    /** @type {any} */
    this.response = response;
    if (cause !== undefined) this.cause = cause;
    /** @type {DownloadResume|UploadResume|null} */
    this.resume = null;
  }
}

const isArrayBuffer = (v) => v instanceof ArrayBuffer || Object.prototype.toString.call(v) === "[object ArrayBuffer]";

function hex(buffer) {
  const b = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < b.length; i++) s += b[i].toString(16).padStart(2, "0");
  return s;
}

/**
 * Lowercase hex SHA-256 of bytes (WebCrypto).
 * @param {ArrayBuffer|ArrayBufferView} bytes
 * @returns {Promise<string>}
 */
export async function sha256Hex(bytes) {
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

/**
 * Whether a push would be sent now. phoenix.js buffers pushes on a channel that is not
 * joined and sends them after the next (re)join: a buffered `chunk` would then land in
 * the channel's implicit upload, a buffered `download` would start a stream nobody
 * listens to. This module never lets phoenix buffer a push.
 * @param {Channel} channel
 */
function canPush(channel) {
  if (typeof channel.canPush === "function") return channel.canPush();
  return channel.socket.isConnected() && channel.state === "joined";
}

function errorFromReply(response, fallback) {
  const reason = response && typeof response.reason === "string" ? response.reason : fallback;
  return new SluiceFilesError(reason, { response });
}

/**
 * Joins a fresh `files:<random>` channel (or `topic`) and resolves it once joined.
 * @param {Socket} socket
 * @param {object} [o]
 * @param {string} [o.topic]
 * @param {object} [o.params]  join params
 * @param {number} [o.timeout]  join timeout (ms)
 * @returns {Promise<Channel>}
 */
export function joinFilesChannel(socket, { topic, params = {}, timeout } = {}) {
  if (!topic) {
    const r = new Uint8Array(8);
    crypto.getRandomValues(r);
    topic = `files:${hex(r)}`;
  }
  const channel = socket.channel(topic, params);
  return new Promise((resolve, reject) => {
    const push = timeout ? channel.join(timeout) : channel.join();
    push
      .receive("ok", () => resolve(channel))
      .receive("error", (resp) => { channel.leave(); reject(errorFromReply(resp, "join_refused")); })
      .receive("timeout", () => { channel.leave(); reject(new SluiceFilesError("timeout")); });
  });
}

/**
 * Downloads file `name` with the `download` event (docs/FILES.md "Native download").
 *
 * @param {Channel} channel  a joined files channel, used by no other transfer meanwhile
 * @param {string} name  file name relative to the server's files root
 * @param {object} [o]
 * @param {(p: {received: number, size: number, index: number}) => void} [o.onProgress]
 *   after each chunk: `received` counts the bytes held (resumed prefix included)
 * @param {DownloadResume|null} [o.resumeFrom]  `error.resume` of an earlier attempt
 * @param {number} [o.chunkSize]  requested chunk size (the server clamps it)
 * @param {AbortSignal} [o.signal]  aborts: pushes `cancel {file}` and rejects (`aborted`)
 * @param {number} [o.timeout]  ms to wait for the reply to `download` (default: the channel's)
 * @returns {Promise<DownloadResult>}
 */
export function downloadFile(channel, name, { onProgress, resumeFrom = null, chunkSize, signal, timeout } = {}) {
  return new Promise((resolve, reject) => {
    /** "requesting" until the current request's ok reply, "streaming", then "done" */
    let state = "requesting";
    let generation = 0;
    /** @type {DownloadReply|null} */
    let meta = null;
    /** @type {Uint8Array|null} */
    let data = null;
    /** @type {Uint8Array|null} one flag per chunk */
    let have = null;
    let received = 0;
    let contiguous = 0; // index of the first chunk not held
    /** @type {DownloadResume|null} the resume state in use for the current request */
    let resuming = resumeFrom && resumeFrom.offset > 0 && resumeFrom.data ? resumeFrom : null;
    /** @type {Array<[string, number]>} */
    const refs = [];

    const resumeInfo = () => {
      if (!meta || !data) {
        return resumeFrom ? { ...resumeFrom } : { file: name, offset: 0, etag: null, size: undefined, data: null };
      }
      return { file: name, offset: Math.min(contiguous * meta.chunk_size, meta.size), etag: meta.etag, size: meta.size, data };
    };

    const cleanup = () => {
      for (const [event, ref] of refs) channel.off(event, ref);
      refs.length = 0;
      if (signal) signal.removeEventListener("abort", onAbort);
    };

    /** @param {any} err */
    const fail = (err, resume = resumeInfo()) => {
      if (state === "done") return;
      state = "done";
      cleanup();
      if (err instanceof SluiceFilesError || (err && typeof err === "object")) {
        try { err.resume = resume; } catch { /* frozen */ }
      }
      reject(err);
    };

    const cancel = () => {
      try { if (canPush(channel)) channel.push("cancel", { file: name }); } catch { /* channel gone */ }
    };

    const onAbort = () => {
      if (state === "done") return;
      cancel();
      fail(new SluiceFilesError("aborted", { cause: signal && signal.reason }));
    };

    const progress = (index) => {
      if (!onProgress) return true;
      try {
        onProgress({ received, size: meta ? meta.size : 0, index });
        return true;
      } catch (err) {
        if (state !== "done") cancel();
        fail(err);
        return false;
      }
    };

    const request = (offset) => {
      const gen = ++generation;
      state = "requesting";
      /** @type {{file: string, offset?: number, chunk_size?: number}} */
      const payload = { file: name };
      if (offset > 0) payload.offset = offset;
      if (chunkSize) payload.chunk_size = chunkSize;
      if (!canPush(channel)) {
        fail(new SluiceFilesError("not_joined"));
        return;
      }
      let push;
      try {
        push = timeout ? channel.push("download", payload, timeout) : channel.push("download", payload);
      } catch (err) {
        fail(err);
        return;
      }
      push
        .receive("ok", (reply) => { if (gen === generation && state !== "done") onReply(reply); })
        .receive("error", (resp) => { if (gen === generation) fail(errorFromReply(resp, "error")); })
        .receive("timeout", () => { if (gen === generation) fail(new SluiceFilesError("timeout")); });
    };

    /** @param {DownloadReply} reply */
    const onReply = (reply) => {
      const ints = ["size", "chunk_size", "chunks", "first_chunk"];
      if (!reply || typeof reply !== "object" || ints.some((k) => !Number.isSafeInteger(reply[k]) || reply[k] < 0) ||
          reply.chunk_size === 0 || typeof reply.sha256 !== "string" || reply.first_chunk > reply.chunks) {
        fail(new SluiceFilesError("bad_reply", { response: reply }));
        return;
      }
      const { size, chunk_size: cs, chunks, first_chunk: first } = reply;
      const start = Math.min(first * cs, size);
      if (resuming) {
        const r = resuming;
        resuming = null;
        const usable = r.etag === reply.etag && (r.size === undefined || r.size === size) &&
          start <= r.offset && r.data.length >= start && r.data.length <= size;
        if (!usable) { meta = null; request(0); return; } // another version (or unusable data): restart
        if (r.data.length === size) {
          data = r.data;
        } else {
          data = new Uint8Array(size);
          data.set(r.data.subarray(0, start));
        }
      } else {
        if (first !== 0) { fail(new SluiceFilesError("bad_reply", { response: reply })); return; }
        data = new Uint8Array(size);
      }
      meta = reply;
      have = new Uint8Array(chunks);
      have.fill(1, 0, first);
      contiguous = first;
      received = start;
      state = "streaming";
    };

    const onChunk = (payload) => {
      if (state !== "streaming" || !meta || !data || !have) return; // frames of an earlier stream
      if (!isArrayBuffer(payload) || payload.byteLength < 4) {
        fail(new SluiceFilesError("bad_chunk"));
        return;
      }
      const index = new DataView(payload).getUint32(0);
      const start = index * meta.chunk_size;
      const len = Math.min(meta.chunk_size, meta.size - start);
      if (index >= meta.chunks || payload.byteLength - 4 !== len) {
        fail(new SluiceFilesError("bad_chunk", { message: `sluice files: unexpected chunk ${index} of ${payload.byteLength - 4} bytes` }));
        return;
      }
      data.set(new Uint8Array(payload, 4, len), start);
      if (!have[index]) { have[index] = 1; received += len; }
      while (contiguous < meta.chunks && have[contiguous]) contiguous++;
      progress(index);
    };

    const onComplete = (payload) => {
      if (state !== "streaming" || !meta || !data) return;
      if (payload && typeof payload.file === "string" && payload.file !== name) return;
      if (contiguous < meta.chunks) {
        fail(new SluiceFilesError("incomplete", { response: payload }));
        return;
      }
      state = "verifying";
      cleanup();
      const m = meta;
      const d = data;
      sha256Hex(d).then((digest) => {
        if (digest !== m.sha256.toLowerCase()) {
          state = "done";
          const err = new SluiceFilesError("digest_mismatch", { response: { expected: m.sha256, actual: digest } });
          err.resume = { file: name, offset: 0, etag: null, size: m.size, data: null };
          reject(err);
          return;
        }
        state = "done";
        resolve({ data: d, size: m.size, sha256: digest, etag: m.etag, chunkSize: m.chunk_size, chunks: m.chunks, firstChunk: m.first_chunk, reply: m });
      }, (err) => { state = "streaming"; fail(err); });
    };

    // The server could not read the file any more mid-stream (docs/FILES.md).
    const onStreamError = (payload) => {
      if (state !== "streaming") return;
      if (payload && typeof payload.file === "string" && payload.file !== name) return;
      fail(new SluiceFilesError((payload && payload.reason) || "io_error", { response: payload }));
    };

    if (signal && signal.aborted) {
      fail(new SluiceFilesError("aborted", { cause: signal.reason }));
      return;
    }
    refs.push(["new chunk", channel.on("new chunk", onChunk)]);
    refs.push(["image complete", channel.on("image complete", onComplete)]);
    refs.push(["download error", channel.on("download error", onStreamError)]);
    refs.push(["phx_error", channel.on("phx_error", (reason) => fail(new SluiceFilesError("interrupted", { cause: reason })))]);
    refs.push(["phx_close", channel.on("phx_close", () => fail(new SluiceFilesError("closed")))]);
    if (signal) signal.addEventListener("abort", onAbort);
    request(resuming ? resuming.offset : 0);
  });
}

/**
 * Reads a Blob / ArrayBuffer / typed array as a source of ArrayBuffer slices.
 * @param {Blob|ArrayBuffer|ArrayBufferView} file
 */
function sourceOf(file) {
  if (typeof Blob !== "undefined" && file instanceof Blob) {
    return {
      size: file.size,
      slice: (a, b) => file.slice(a, b).arrayBuffer(),
      all: () => file.arrayBuffer(),
    };
  }
  /** @type {Uint8Array} */
  let u8;
  if (isArrayBuffer(file)) u8 = new Uint8Array(/** @type {ArrayBuffer} */ (file));
  else if (ArrayBuffer.isView(file)) u8 = new Uint8Array(file.buffer, file.byteOffset, file.byteLength);
  else throw new TypeError("uploadFile: file must be a Blob, an ArrayBuffer or a typed array");
  return {
    size: u8.byteLength,
    // phoenix.js sends a payload as binary only when it is exactly an ArrayBuffer
    slice: async (a, b) => u8.buffer.slice(u8.byteOffset + a, u8.byteOffset + b),
    all: async () => u8,
  };
}

/**
 * Pushes and resolves the ok reply; rejects a SluiceFilesError on error/timeout.
 * @param {Channel} channel
 */
function pushAsync(channel, event, payload, timeout) {
  return new Promise((resolve, reject) => {
    if (!canPush(channel)) {
      reject(new SluiceFilesError("not_joined"));
      return;
    }
    const push = timeout ? channel.push(event, payload, timeout) : channel.push(event, payload);
    push
      .receive("ok", resolve)
      .receive("error", (resp) => reject(errorFromReply(resp, "error")))
      .receive("timeout", () => reject(new SluiceFilesError("timeout")));
  });
}

/**
 * Uploads bytes with the resumable, verified, windowed protocol (docs/FILES.md "Uploads").
 *
 * @param {Channel} channel  a joined files channel, used by no other transfer meanwhile
 * @param {Blob|ArrayBuffer|ArrayBufferView} file  a File/Blob, ArrayBuffer or Uint8Array
 * @param {object} [o]
 * @param {(p: {sent: number, acked: number, size: number}) => void} [o.onProgress]
 *   after each chunk sent and each acknowledgement
 * @param {string} [o.name]  one path component (default: `file.name`)
 * @param {number} [o.chunkSize]  bytes per `chunk` push (default 1 MiB; at most the window)
 * @param {AbortSignal} [o.signal]  stops sending and rejects (`aborted`); the server keeps
 *   the partial for a later resume (see `abortUpload` to discard it)
 * @param {string} [o.sha256]  hex digest if already known (skips hashing)
 * @param {number} [o.timeout]  ms to wait for each reply (default: the channel's)
 * @returns {Promise<UploadResult>}
 */
export async function uploadFile(channel, file, { onProgress, name, chunkSize = DEFAULT_UPLOAD_CHUNK_BYTES, signal, sha256, timeout } = {}) {
  const source = sourceOf(file);
  name = name ?? /** @type {any} */ (file).name;
  if (typeof name !== "string" || name === "") throw new TypeError("uploadFile: a name is required");
  if (!(chunkSize > 0)) throw new TypeError("uploadFile: chunkSize must be positive");
  const size = source.size;
  const digest = (sha256 ?? await sha256Hex(await source.all())).toLowerCase();
  /** @type {UploadResume} */
  const resume = { upload_id: "", name, size, sha256: digest, offset: 0 };
  const withResume = (err) => {
    if (err && typeof err === "object") { try { err.resume = { ...resume }; } catch { /* frozen */ } }
    return err;
  };
  if (signal && signal.aborted) throw withResume(new SluiceFilesError("aborted", { cause: signal.reason }));

  let start;
  try {
    start = await pushAsync(channel, "upload:start", { name, size, sha256: digest }, timeout);
  } catch (err) {
    throw withResume(err);
  }
  if (!start || typeof start.upload_id !== "string" && typeof start.upload_id !== "number" ||
      !Number.isSafeInteger(start.offset) || start.offset < 0 || start.offset > size) {
    throw withResume(new SluiceFilesError("bad_reply", { response: start }));
  }
  const uploadId = start.upload_id;
  const window = Number.isSafeInteger(start.window) && start.window > 0 ? start.window : chunkSize;
  const cs = Math.min(chunkSize, window);
  resume.upload_id = String(uploadId);
  resume.offset = start.offset;

  return new Promise((resolve, reject) => {
    let sent = start.offset;
    let acked = start.offset;
    let done = false;
    let pumping = false;
    let finishing = false;
    /** @type {Array<[string, number]>} */
    const refs = [];
    const cleanup = () => {
      for (const [event, ref] of refs) channel.off(event, ref);
      refs.length = 0;
      if (signal) signal.removeEventListener("abort", onAbort);
    };
    const fail = (err) => {
      if (done) return;
      done = true;
      cleanup();
      resume.offset = acked;
      reject(withResume(err));
    };
    const progress = () => {
      if (!onProgress) return;
      try { onProgress({ sent, acked, size }); } catch (err) { fail(err); }
    };
    const onAbort = () => fail(new SluiceFilesError("aborted", { cause: signal && signal.reason }));

    const finish = () => {
      if (finishing || done) return;
      finishing = true;
      pushAsync(channel, "upload:finish", { upload_id: uploadId }, timeout).then((reply) => {
        if (done) return;
        if (!reply || typeof reply !== "object" || (typeof reply.sha256 === "string" && reply.sha256.toLowerCase() !== digest) ||
            (reply.size !== undefined && reply.size !== size)) {
          fail(new SluiceFilesError("bad_reply", { response: reply }));
          return;
        }
        done = true;
        cleanup();
        resolve({ ...reply, name: reply.name ?? name, size, sha256: digest, upload_id: uploadId, resumedFrom: start.offset });
      }, fail);
    };

    const onAck = (reply, end) => {
      if (done) return;
      if (!reply || reply.offset !== end) {
        fail(new SluiceFilesError("bad_reply", { response: reply, message: `sluice files: chunk ending at ${end} acknowledged as ${JSON.stringify(reply)}` }));
        return;
      }
      acked = Math.max(acked, end);
      resume.offset = acked;
      progress();
      if (done) return;
      if (acked >= size) finish(); else pump();
    };

    const pump = async () => {
      if (pumping) return;
      pumping = true;
      try {
        while (!done && sent < size) {
          const end = Math.min(sent + cs, size);
          const inflight = sent - acked;
          if (inflight > 0 && inflight + (end - sent) > window) break; // wait for credit
          const buf = await source.slice(sent, end);
          if (done) return;
          if (!canPush(channel)) {
            fail(new SluiceFilesError("interrupted"));
            return;
          }
          sent = end;
          channel.push("chunk", buf, ...(timeout ? [timeout] : []))
            .receive("ok", (reply) => onAck(reply, end))
            .receive("error", (resp) => fail(errorFromReply(resp, "error")))
            .receive("timeout", () => fail(new SluiceFilesError("timeout")));
          progress();
        }
      } catch (err) {
        fail(err);
      } finally {
        pumping = false;
      }
    };

    refs.push(["phx_error", channel.on("phx_error", (reason) => fail(new SluiceFilesError("interrupted", { cause: reason })))]);
    refs.push(["phx_close", channel.on("phx_close", () => fail(new SluiceFilesError("closed")))]);
    if (signal) signal.addEventListener("abort", onAbort);
    progress();
    if (acked >= size) finish(); else pump();
  });
}

/**
 * Discards the partial of an upload (`upload:abort`); resolves the ok reply.
 * @param {Channel} channel
 * @param {string} uploadId
 * @param {number} [timeout]
 */
export function abortUpload(channel, uploadId, timeout) {
  return pushAsync(channel, "upload:abort", { upload_id: uploadId }, timeout);
}
