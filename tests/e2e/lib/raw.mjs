// A raw `ws` client for frames the official client cannot produce (malformed input,
// hand-picked refs, stale join_refs, ...). It records every received frame.
import WebSocket from "ws";
import { waitFor } from "./phx.mjs";

/**
 * Tries a WebSocket upgrade; resolves {status, protocol?, headers?, ws?}. A 101 leaves the
 * socket open in `ws` (caller closes it); other answers give {status: <http status>}.
 */
export function tryUpgrade(url, { protocols, headers = {}, origin, timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const opts = { headers, handshakeTimeout: timeoutMs };
    if (origin) opts.origin = origin;
    let ws;
    try {
      ws = new WebSocket(url, protocols, opts);
    } catch (e) {
      reject(e);
      return;
    }
    ws.on("unexpected-response", (req, res) => {
      const status = res.statusCode;
      const rheaders = res.headers;
      res.resume();
      req.destroy();
      resolve({ status, headers: rheaders });
    });
    ws.on("upgrade", (res) => { ws._upgradeHeaders = res.headers; });
    ws.on("open", () => resolve({ status: 101, protocol: ws.protocol, headers: ws._upgradeHeaders, ws }));
    ws.on("error", (e) => resolve({ status: 0, error: e.message }));
  });
}

/** Raw client: frames are recorded as {type: "text", data: parsed|string} or {type: "binary", data: Buffer}. */
export class RawClient {
  /**
   * @param {string} url full ws:// URL including query
   * @param {object} [o] ws options (protocols, headers)
   */
  static async connect(url, { protocols, headers = {}, timeoutMs = 5000, t } = {}) {
    const c = new RawClient(url, { protocols, headers });
    if (t) t.after(() => c.terminate());
    await c.opened(timeoutMs);
    return c;
  }

  constructor(url, { protocols, headers = {} } = {}) {
    this.url = url;
    this.frames = [];
    this.closeInfo = null;
    this.errors = [];
    this.ws = new WebSocket(url, protocols, { headers, handshakeTimeout: 5000, maxPayload: 256 * 1024 * 1024 });
    this.ws.on("message", (data, isBinary) => {
      if (isBinary) {
        this.frames.push({ type: "binary", data: Buffer.from(data) });
      } else {
        const text = data.toString("utf8");
        let parsed;
        try { parsed = JSON.parse(text); } catch { parsed = text; }
        this.frames.push({ type: "text", data: parsed, text });
      }
    });
    this.ws.on("error", (e) => this.errors.push(e.message));
    this.closed = new Promise((resolve) => {
      this.ws.on("close", (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
      });
    });
  }

  opened(timeoutMs = 5000) {
    return new Promise((resolve, reject) => {
      if (this.ws.readyState === WebSocket.OPEN) { resolve(); return; }
      const timer = setTimeout(() => reject(new Error(`raw ws open timeout: ${this.url} errors=${this.errors}`)), timeoutMs);
      this.ws.once("open", () => { clearTimeout(timer); resolve(); });
      this.ws.once("close", (code) => { clearTimeout(timer); reject(new Error(`raw ws closed before open (code ${code}); errors=${this.errors}`)); });
    });
  }

  get isOpen() { return this.ws.readyState === WebSocket.OPEN; }

  /** Sends a V2 array (JSON-encoded) or any string as a text frame. */
  sendJson(value) { this.ws.send(typeof value === "string" ? value : JSON.stringify(value)); }

  /** Sends raw bytes as a text frame (no UTF-8 validation on our side). */
  sendTextBytes(buf) { this.ws.send(buf, { binary: false }); }

  /** Sends a binary frame. */
  sendBinary(buf) { this.ws.send(buf, { binary: true }); }

  /** Text frames (parsed JSON) only. */
  get texts() { return this.frames.filter((f) => f.type === "text").map((f) => f.data); }

  /**
   * Waits for a frame (parsed) matching `pred`, searching frames received from index `from`.
   * Returns the frame data.
   */
  async waitFrame(pred, ms = 5000, label = "frame", from = 0) {
    const f = await waitFor(() => this.frames.slice(from).find((fr) => pred(fr.data, fr)), ms,
      () => `${label}; received so far: ${this.describeFrames()}; close=${JSON.stringify(this.closeInfo)}`);
    return f.data;
  }

  /** Waits for a V2 phx_reply with the given ref. */
  reply(ref, ms = 5000) {
    return this.waitFrame((d) => Array.isArray(d) && d[1] === ref && d[3] === "phx_reply", ms, `phx_reply ref=${ref}`);
  }

  /** Waits until no frame arrived for `quietMs` (bounded by `ms`). */
  async settle(quietMs = 500, ms = 15000) {
    let last = -1;
    let since = Date.now();
    await waitFor(() => {
      if (this.frames.length !== last) { last = this.frames.length; since = Date.now(); return false; }
      return Date.now() - since >= quietMs;
    }, ms, `frames to stop arriving (have ${this.frames.length})`);
  }

  /** Waits for the close event; resolves {code, reason}. */
  async waitClose(ms = 5000) {
    let timer;
    const r = await Promise.race([
      this.closed,
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`server did not close the socket within ${ms} ms; frames: ${this.describeFrames()}`)), ms); }),
    ]);
    clearTimeout(timer);
    return r;
  }

  describeFrames(max = 20) {
    const cut = (str) => (str.length > 200 ? `${str.slice(0, 200)}…(${str.length} chars)` : str);
    const fs = this.frames.slice(-max).map((f) => (f.type === "text" ? cut(f.text) : `<binary ${f.data.length} bytes ${f.data.toString("hex").slice(0, 80)}>`));
    return `[${fs.join(", ")}]${this.frames.length > max ? ` (+${this.frames.length - max} earlier)` : ""}`;
  }

  close(code = 1000) { try { this.ws.close(code); } catch { /* ignore */ } }
  terminate() { try { this.ws.terminate(); } catch { /* ignore */ } }
}

/**
 * Encodes a V2 binary frame. Kind 0 client push uses 4 length bytes (join_ref, ref, topic,
 * event); kinds 1/2 are server-only layouts and must be rejected by the server.
 */
export function binaryPush({ joinRef = "", ref = "", topic, event, payload = Buffer.alloc(0), kind = 0 }) {
  const jr = Buffer.from(joinRef, "utf8");
  const r = Buffer.from(ref, "utf8");
  const tp = Buffer.from(topic, "utf8");
  const ev = Buffer.from(event, "utf8");
  return Buffer.concat([Buffer.from([kind, jr.length, r.length, tp.length, ev.length]), jr, r, tp, ev, Buffer.from(payload)]);
}

/**
 * Decodes a server binary frame (kinds 0, 1, 2; notes §3.1).
 */
export function decodeServerBinary(buf) {
  const kind = buf[0];
  let off;
  const take = (n) => { const s = buf.subarray(off, off + n); off += n; return s; };
  if (kind === 0) {
    const [jl, tl, el] = [buf[1], buf[2], buf[3]]; off = 4;
    return { kind, joinRef: take(jl).toString(), topic: take(tl).toString(), event: take(el).toString(), payload: buf.subarray(off) };
  }
  if (kind === 1) {
    const [jl, rl, tl, sl] = [buf[1], buf[2], buf[3], buf[4]]; off = 5;
    return { kind, joinRef: take(jl).toString(), ref: take(rl).toString(), topic: take(tl).toString(), status: take(sl).toString(), payload: buf.subarray(off) };
  }
  if (kind === 2) {
    const [tl, el] = [buf[1], buf[2]]; off = 3;
    return { kind, topic: take(tl).toString(), event: take(el).toString(), payload: buf.subarray(off) };
  }
  return { kind, raw: buf };
}
