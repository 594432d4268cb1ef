// Spawning and stopping the sluice binary for the e2e suite.
//
// Every spawned process is registered; it is killed (SIGKILL) when this node process exits,
// whatever the reason, so no server outlives a test file. Tests stop servers normally with
// SIGTERM through `server.stop()`.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import os from "node:os";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { signToken } from "./token.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, "..", "..", "..");
export const SLUICE_BIN = process.env.SLUICE_BIN || path.join(REPO_ROOT, "target", "debug", "sluice");

export const SECRET = "e2e-secret-key-base-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGH";
export const API_KEY = "e2e-api-key-123";

/** Per-process scratch directory for servers' default files/uploads dirs; removed at exit. */
export const SCRATCH = path.join(os.tmpdir(), `sluice-e2e-${process.pid}`);

const live = new Set();
process.on("exit", () => {
  for (const p of live) { try { p.kill("SIGKILL"); } catch { /* already gone */ } }
  try { rmSync(SCRATCH, { recursive: true, force: true }); } catch { /* best effort */ }
});
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.once(sig, () => {
    for (const p of live) { try { p.kill("SIGKILL"); } catch { /* already gone */ } }
    process.exit(130);
  });
}

/** Whether the binary exists (the suite fails loudly if not; this is for messages). */
export function binaryExists() { return existsSync(SLUICE_BIN); }

/** A free TCP port on 127.0.0.1 (listen on 0, read it, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** HTTP GET with a timeout; resolves {status, headers, text} or {error}. */
export async function httpGet(url, { timeoutMs = 2000, headers = {} } = {}) {
  try {
    const res = await fetch(url, { headers, signal: AbortSignal.timeout(timeoutMs) });
    return { status: res.status, headers: res.headers, text: await res.text() };
  } catch (error) {
    return { error };
  }
}

/** Runs `sluice ARGS` to completion (bounded), returning {code, signal, stdout, stderr}. */
export function runSluice(args, { env = {}, timeoutMs = 15000 } = {}) {
  const r = spawnSync(SLUICE_BIN, args, {
    env: { ...process.env, ...env },
    timeout: timeoutMs,
    encoding: "utf8",
    killSignal: "SIGKILL",
  });
  if (r.error && r.error.code === "ENOENT") throw new Error(`sluice binary not found at ${SLUICE_BIN} (build it: cargo build)`);
  return { code: r.status, signal: r.signal, stdout: r.stdout ?? "", stderr: r.stderr ?? "", error: r.error };
}

/**
 * A running sluice server.
 */
export class SluiceServer {
  constructor({ port, args, env, proc }) {
    this.port = port;
    this.args = args;
    this.env = env;
    this.proc = proc;
    this.logChunks = [];
    this.exitInfo = null;
    this.exited = new Promise((resolve) => {
      proc.on("exit", (code, signal) => {
        live.delete(proc);
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
    });
    proc.stdout.on("data", (d) => this.logChunks.push(d));
    proc.stderr.on("data", (d) => this.logChunks.push(d));
  }

  get httpUrl() { return `http://127.0.0.1:${this.port}`; }
  get socketUrl() { return `ws://127.0.0.1:${this.port}/socket`; }           // phoenix.js endpoint (it appends /websocket)
  get wsUrl() { return `ws://127.0.0.1:${this.port}/socket/websocket`; }     // raw ws URL

  /** Everything the server printed so far (stdout + stderr interleaved). */
  logs() { return Buffer.concat(this.logChunks).toString("utf8"); }

  /** Last `n` lines of the log, for failure reports. */
  logTail(n = 120) {
    const lines = this.logs().split("\n");
    return lines.slice(-n).join("\n");
  }

  /** Token for a user id, minted in JS with the server's secret. */
  token(userId = 42, opts = {}) { return signToken({ secret: SECRET, data: userId, ...opts }); }

  /** SIGTERM, wait for exit (SIGKILL after `graceMs`). Resolves {code, signal}. */
  async stop({ graceMs = 10000 } = {}) {
    if (this.exitInfo) return this.exitInfo;
    try { this.proc.kill("SIGTERM"); } catch { /* gone */ }
    const timer = setTimeout(() => { try { this.proc.kill("SIGKILL"); } catch { /* gone */ } }, graceMs);
    const info = await this.exited;
    clearTimeout(timer);
    return info;
  }

  kill() { try { this.proc.kill("SIGKILL"); } catch { /* gone */ } return this.exited; }
}

/**
 * Starts `sluice serve` on 127.0.0.1 and waits until GET /healthz answers 200.
 * @param {object} [o]
 * @param {string[]} [o.args] extra flags
 * @param {object} [o.env] extra environment
 * @param {number} [o.port] port (default: a free one)
 * @param {boolean} [o.defaults] pass --listen/--secret-key-base/--api-key/--log-format (default true)
 * @param {number} [o.readyTimeoutMs]
 */
export async function startServer({ args = [], env = {}, port, defaults = true, readyTimeoutMs = 20000 } = {}) {
  if (!binaryExists()) throw new Error(`sluice binary not found at ${SLUICE_BIN} (build it: cargo build)`);
  port = port ?? await freePort();
  const fullArgs = defaults
    ? ["serve", "--listen", `127.0.0.1:${port}`, "--secret-key-base", SECRET, "--api-key", API_KEY,
      "--log-format", "json", ...args]
    : args;
  const proc = spawn(SLUICE_BIN, fullArgs, {
    // Files and uploads go to a per-process scratch directory unless a test names its own
    // (flags beat SLUICE_* variables), so no run writes into the repository.
    env: { RUST_BACKTRACE: "1", SLUICE_FILES_DIR: path.join(SCRATCH, "files"), SLUICE_UPLOADS_DIR: path.join(SCRATCH, "uploads"), ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  live.add(proc);
  const server = new SluiceServer({ port, args: fullArgs, env, proc });
  const spawnError = new Promise((resolve) => proc.once("error", resolve));

  const deadline = Date.now() + readyTimeoutMs;
  while (Date.now() < deadline) {
    const early = await Promise.race([server.exited.then((i) => ({ exit: i })), spawnError.then((e) => ({ err: e })), sleep(0).then(() => null)]);
    if (early?.exit) {
      throw new Error(`sluice exited early (${JSON.stringify(early.exit)}) args=${fullArgs.join(" ")}\n--- server output ---\n${server.logTail()}`);
    }
    if (early?.err) throw new Error(`could not spawn ${SLUICE_BIN}: ${early.err.message}`);
    const r = await httpGet(`${server.httpUrl}/healthz`, { timeoutMs: 1000 });
    if (r.status === 200) return server;
    await sleep(50);
  }
  await server.kill();
  throw new Error(`sluice did not become healthy within ${readyTimeoutMs} ms on port ${port}\n--- server output ---\n${server.logTail()}`);
}

/**
 * Wraps a test body so that, if it fails, the tail of the given servers' output is printed
 * (and attached to the error message).
 * @param {() => SluiceServer[]|SluiceServer} getServers
 * @param {(t: import("node:test").TestContext) => Promise<void>} fn
 */
export function withLogs(getServers, fn) {
  return async (t) => {
    try {
      return await fn(t);
    } catch (err) {
      let servers = [];
      try { servers = [getServers()].flat().filter(Boolean); } catch { /* none */ }
      const dump = servers.map((s) => `--- sluice :${s.port} output (tail) ---\n${s.logTail()}`).join("\n");
      if (dump) {
        console.error(`\n[test failed: ${t.name}]\n${dump}\n`);
        if (err && typeof err === "object" && typeof err.message === "string") {
          try { err.message += `\n${dump}`; } catch { /* read-only */ }
        }
      }
      throw err;
    }
  };
}

/**
 * POST /api/broadcast with a JSON body {topic, event, payload}. Resolves {status, text}.
 * @param {SluiceServer} server
 */
export async function apiBroadcast(server, { topic, event, payload }, { key = API_KEY, auth } = {}) {
  const headers = { "content-type": "application/json" };
  if (auth !== undefined) { if (auth !== null) headers.authorization = auth; } else if (key !== null) headers.authorization = `Bearer ${key}`;
  const res = await fetch(`${server.httpUrl}/api/broadcast`, {
    method: "POST", headers, body: JSON.stringify({ topic, event, payload }), signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, text: await res.text() };
}

/**
 * POST /api/broadcast?topic=..&event=.. with an application/octet-stream body.
 * @param {SluiceServer} server
 */
export async function apiBroadcastBinary(server, { topic, event, bytes }, { key = API_KEY } = {}) {
  const headers = { "content-type": "application/octet-stream" };
  if (key !== null) headers.authorization = `Bearer ${key}`;
  const qs = new URLSearchParams({ topic, event }).toString();
  const res = await fetch(`${server.httpUrl}/api/broadcast?${qs}`, {
    method: "POST", headers, body: Buffer.from(bytes), signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, text: await res.text() };
}
