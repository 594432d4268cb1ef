// Helpers around the official phoenix.js client (npm `phoenix`) running in Node with the
// `ws` package as its WebSocket transport.
import { Socket } from "phoenix";
import WebSocket from "ws";

export { Socket, WebSocket };

/**
 * Polls `predicate` until it returns a truthy value (which is returned) or `ms` elapse.
 * @template T
 * @param {() => T|Promise<T>} predicate
 * @param {number} [ms]
 * @param {string|(() => string)} [label] description used in the timeout error
 * @returns {Promise<T>}
 */
export async function waitFor(predicate, ms = 5000, label = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${typeof label === "function" ? label() : label}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Resolves with the value of a promise, or rejects after `ms`.
 * @template T
 * @param {Promise<T>} promise
 */
export function within(promise, ms, label = "promise") {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${label}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * A `ws` WebSocket subclass usable as phoenix.js `transport`. phoenix.js calls
 * `new transport(url, protocols)`; we add ws options (e.g. an Origin header) and record
 * what happened during the handshake.
 * @param {object} [o]
 * @param {object} [o.headers] extra request headers
 * @param {string} [o.origin] Origin header
 * @param {object} [o.record] object that receives {urls: [], protocols: [], responses: [], closes: []}
 */
export function makeTransport({ headers = {}, origin, record } = {}) {
  const rec = record ?? {};
  rec.urls ??= []; rec.offered ??= []; rec.protocols ??= []; rec.responses ??= []; rec.closes ??= []; rec.errors ??= [];
  return class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      const opts = { headers: { ...headers }, handshakeTimeout: 5000 };
      if (origin) opts.origin = origin;
      super(url, protocols, opts);
      rec.urls.push(url);
      rec.offered.push(protocols);
      this.on("upgrade", (res) => rec.responses.push({ status: res.statusCode, headers: res.headers }));
      this.on("open", () => rec.protocols.push(this.protocol));
      this.on("close", (code, reason) => rec.closes.push({ code, reason: reason.toString() }));
      this.on("error", (e) => {
        rec.errors.push(e.message);
        // ws' default for a non-101 answer: error "Unexpected server response: 403", then close 1006
        const m = /Unexpected server response: (\d+)/.exec(e.message);
        if (m) rec.responses.push({ status: Number(m[1]) });
      });
    }
  };
}

/**
 * Creates a phoenix.js Socket for the given server, registers cleanup on the test, and
 * (unless `connect: false`) connects and waits for `open`.
 *
 * @param {import("node:test").TestContext|null} t test context (cleanup via t.after) or null
 * @param {import("./server.mjs").SluiceServer} server
 * @param {object} [o]
 * @param {number|string|null} [o.user] user id for a JS-minted token in `params.token` (default 42; null = no token)
 * @param {object} [o.params] extra/override params
 * @param {object} [o.socketOpts] extra phoenix Socket options
 * @param {object} [o.transportOpts] makeTransport options
 * @param {boolean} [o.connect] connect and await open (default true)
 * @param {number} [o.openTimeoutMs]
 */
export async function phxSocket(t, server, { user = 42, params = {}, socketOpts = {}, transportOpts = {}, connect = true, openTimeoutMs = 5000, url } = {}) {
  const record = { frames: [] };
  const p = { ...(user === null ? {} : { token: server.token(user) }), ...params };
  const socket = new Socket(url ?? server.socketUrl, {
    transport: makeTransport({ ...transportOpts, record }),
    params: p,
    timeout: 5000,
    heartbeatIntervalMs: 5000,
    reconnectAfterMs: () => 100,
    rejoinAfterMs: () => 100,
    ...socketOpts,
  });
  socket.record = record;
  socket.opens = 0;
  socket.closeEvents = [];
  socket.errorEvents = [];
  socket.onOpen(() => { socket.opens++; });
  socket.onClose((e) => { socket.closeEvents.push({ code: e?.code, reason: e?.reason?.toString?.() ?? e?.reason }); });
  socket.onError((e) => { socket.errorEvents.push(e?.message ?? String(e)); });
  socket.onMessage((m) => record.frames.push(m));
  if (t) t.after(() => { try { socket.disconnect(); } catch { /* ignore */ } });
  if (connect) {
    socket.connect();
    await waitFor(() => socket.isConnected(), openTimeoutMs,
      () => `socket open (responses=${JSON.stringify(record.responses)} errors=${JSON.stringify(record.errors)})`);
  }
  return socket;
}

/**
 * Resolves with {status, response} of a Push when it gets "ok", "error" or "timeout", or
 * any of `extraStatuses`.
 * @param {import("phoenix").Push} push
 */
export function pushResult(push, extraStatuses = []) {
  return new Promise((resolve) => {
    for (const status of ["ok", "error", "timeout", ...extraStatuses]) {
      push.receive(status, (response) => resolve({ status, response }));
    }
  });
}

/** Joins and resolves {status, response}. */
export function join(channel, timeoutMs) {
  return pushResult(timeoutMs ? channel.join(timeoutMs) : channel.join());
}

/** Joins and asserts ok, returns the response. */
export async function joinOk(channel, timeoutMs) {
  const r = await join(channel, timeoutMs);
  if (r.status !== "ok") throw new Error(`join ${channel.topic} expected ok, got ${JSON.stringify(r)}`);
  return r.response;
}

/** Pushes and resolves {status, response}. */
export function push(channel, event, payload, timeoutMs) {
  return pushResult(channel.push(event, payload, timeoutMs));
}

/**
 * Resolves with the payload of the next `event` on `channel` (optionally matching `filter`),
 * rejects after `ms`.
 */
export function nextEvent(channel, event, ms = 5000, filter = () => true) {
  return new Promise((resolve, reject) => {
    let ref;
    const timer = setTimeout(() => {
      channel.off(event, ref);
      reject(new Error(`timed out after ${ms} ms waiting for "${event}" on ${channel.topic}`));
    }, ms);
    ref = channel.on(event, (payload, r, jr) => {
      if (!filter(payload)) return;
      clearTimeout(timer);
      channel.off(event, ref);
      resolve(payload);
    });
  });
}

/** Collects every `event` payload on a channel into an array. */
export function collect(channel, event) {
  const out = [];
  channel.on(event, (payload) => out.push(payload));
  return out;
}

/** ArrayBuffer from bytes. */
export function ab(bytes) {
  const u = Uint8Array.from(bytes);
  return u.buffer.slice(u.byteOffset, u.byteOffset + u.byteLength);
}

/** Bytes of an ArrayBuffer as a plain array (for deepEqual). */
export function bytesOf(buf) {
  if (!(buf instanceof ArrayBuffer)) throw new Error(`expected an ArrayBuffer, got ${Object.prototype.toString.call(buf)} ${JSON.stringify(buf)}`);
  return [...new Uint8Array(buf)];
}

/** V1 (object) encode/decode for phoenix.js with vsn "1.0.0" (notes §2.2). */
export const v1Codec = {
  encode: (msg, callback) => callback(JSON.stringify({
    topic: msg.topic, event: msg.event, payload: msg.payload, ref: msg.ref, join_ref: msg.join_ref,
  })),
  decode: (raw, callback) => {
    const m = JSON.parse(raw);
    callback({ join_ref: m.join_ref ?? null, ref: m.ref ?? null, topic: m.topic, event: m.event, payload: m.payload });
  },
};
