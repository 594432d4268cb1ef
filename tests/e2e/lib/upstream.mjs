// Test upstreams for the price relay (`prices:*`, issue 4):
//
// * `startMock()` spawns `sluice mock-upstream` (the built-in coincap-style feed, standalone) on
//   a free port and waits for its "mock upstream listening" log line; `/stats` and
//   `/control/*` are wrapped.
// * `startWsUpstream()` is an independent upstream written with node `ws` (optionally over
//   `https` for wss://): coincap format `{"bitcoin":"91234.12"}`, counting connections per
//   asset from the `assets` query.
// * `makeTestCA()` makes a CA and a server certificate for localhost/127.0.0.1 with the
//   `openssl` CLI.
//
// Spawned processes are registered like lib/server.mjs does: SIGKILLed when this node process
// exits, whatever the reason.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { WebSocketServer } from "ws";
import { SLUICE_BIN, binaryExists, freePort, sleep } from "./server.mjs";

const live = new Set();
process.on("exit", () => {
  for (const p of live) { try { p.kill("SIGKILL"); } catch { /* already gone */ } }
});

// eslint-disable-next-line no-control-regex
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, "");

/** The `--upstream` template for an upstream on `port` (`{assets}` is left for sluice). */
export function upstreamTemplate(port, { scheme = "ws", host = "127.0.0.1" } = {}) {
  return `${scheme}://${host}:${port}/prices?assets={assets}`;
}

/** GET `<base>/stats` (the mock's counters) as JSON. */
export async function fetchStats(base) {
  const res = await fetch(`${base}/stats`, { signal: AbortSignal.timeout(3000) });
  if (res.status !== 200) throw new Error(`GET ${base}/stats answered ${res.status}`);
  return res.json();
}

/** A running `sluice mock-upstream`. */
export class MockUpstream {
  constructor({ port, args, proc }) {
    this.port = port;
    this.args = args;
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
  get template() { return upstreamTemplate(this.port); }

  logs() { return stripAnsi(Buffer.concat(this.logChunks).toString("utf8")); }
  logTail(n = 60) { return this.logs().split("\n").slice(-n).join("\n"); }

  /** `{connections, connections_total, messages_sent, subscriptions}`. */
  stats() { return fetchStats(this.httpUrl); }

  /** POST /control/<verb> (silent, live, refuse, accept, drop, inject); expects 204. */
  async control(verb, body) {
    const res = await fetch(`${this.httpUrl}/control/${verb}`, {
      method: "POST", body: body ?? "", signal: AbortSignal.timeout(3000),
    });
    const text = await res.text();
    if (res.status !== 204) throw new Error(`POST /control/${verb} answered ${res.status}: ${text}`);
  }

  inject(text) { return this.control("inject", text); }

  /** SIGKILL (no close frames: the sockets just die). */
  kill() { try { this.proc.kill("SIGKILL"); } catch { /* gone */ } return this.exited; }

  /** SIGTERM, SIGKILL after `graceMs`. */
  async stop({ graceMs = 5000 } = {}) {
    if (this.exitInfo) return this.exitInfo;
    try { this.proc.kill("SIGTERM"); } catch { /* gone */ }
    const timer = setTimeout(() => { try { this.proc.kill("SIGKILL"); } catch { /* gone */ } }, graceMs);
    const info = await this.exited;
    clearTimeout(timer);
    return info;
  }
}

/**
 * Spawns `sluice mock-upstream --listen 127.0.0.1:PORT --rate HZ [--assets ..] [--seed N]` and
 * waits for "mock upstream listening". A busy port (e.g. right after a kill) is retried until
 * `readyTimeoutMs`.
 * @param {object} [o]
 * @param {number} [o.port] default: a free one
 * @param {number} [o.rate] ticks per second (default 10)
 * @param {string[]} [o.assets] catalogue
 * @param {number} [o.seed] default 1
 * @param {string[]} [o.args] extra flags
 */
export async function startMock({ port, rate = 10, assets, seed = 1, args = [], readyTimeoutMs = 10000 } = {}) {
  if (!binaryExists()) throw new Error(`sluice binary not found at ${SLUICE_BIN} (build it: cargo build)`);
  port = port ?? await freePort();
  const fullArgs = ["mock-upstream", "--listen", `127.0.0.1:${port}`, "--rate", String(rate), "--seed", String(seed),
    ...(assets ? ["--assets", assets.join(",")] : []), ...args];
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    const proc = spawn(SLUICE_BIN, fullArgs, { env: { ...process.env, NO_COLOR: "1" }, stdio: ["ignore", "pipe", "pipe"] });
    live.add(proc);
    const mock = new MockUpstream({ port, args: fullArgs, proc });
    const outcome = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - Date.now()));
      const check = () => { if (mock.logs().includes("mock upstream listening")) { clearTimeout(timer); resolve("ready"); } };
      proc.stdout.on("data", check);
      proc.stderr.on("data", check);
      proc.once("error", (e) => { clearTimeout(timer); resolve(e); });
      mock.exited.then(() => { clearTimeout(timer); resolve("exited"); });
    });
    if (outcome === "ready") return mock;
    if (outcome instanceof Error) throw new Error(`could not spawn ${SLUICE_BIN}: ${outcome.message}`);
    if (outcome === "timeout") {
      await mock.kill();
      throw new Error(`mock upstream did not start within ${readyTimeoutMs} ms on ${port}\n${mock.logTail()}`);
    }
    // exited: a port still in use after a kill is retried; anything else is fatal
    if (!/in use|AddrInUse/i.test(mock.logs()) || Date.now() > deadline) {
      throw new Error(`mock upstream exited early (${JSON.stringify(mock.exitInfo)}) args=${fullArgs.join(" ")}\n${mock.logTail()}`);
    }
    await sleep(100);
  }
}

/**
 * An independent upstream: node `ws` on `http` (or `https` with `tls: {cert, key}`), serving
 * `GET /prices?assets=a,b` in coincap format, `rate` ticks per second. Counts what it sees.
 * @param {object} [o]
 * @param {number} [o.rate]
 * @param {{cert: string|Buffer, key: string|Buffer}} [o.tls]
 */
export async function startWsUpstream({ rate = 20, tls } = {}) {
  const server = tls ? https.createServer({ cert: tls.cert, key: tls.key }) : http.createServer();
  server.on("request", (req, res) => { res.writeHead(404); res.end("not found\n"); });
  const tlsErrors = [];
  server.on("tlsClientError", (e) => tlsErrors.push(e.message));
  const wss = new WebSocketServer({ noServer: true });
  const up = {
    connections: 0,
    connectionsTotal: 0,
    subscriptions: {},   // asset -> open connections including it
    requests: [],        // request URLs of upgrades
    pings: 0,
    messagesSent: 0,
    sent: new Set(),     // every price text sent
    tlsErrors,
    sockets: new Set(),
  };
  server.on("upgrade", (req, socket, head) => {
    const url = new URL(req.url, "http://x");
    up.requests.push(req.url);
    const assets = [...new Set((url.searchParams.get("assets") ?? "").split(",").filter(Boolean))];
    if (url.pathname !== "/prices" || assets.length === 0) {
      socket.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      up.connections++;
      up.connectionsTotal++;
      for (const a of assets) up.subscriptions[a] = (up.subscriptions[a] ?? 0) + 1;
      ws.assets = assets;
      up.sockets.add(ws);
      ws.on("ping", () => { up.pings++; });
      ws.on("error", () => { /* counted on close */ });
      ws.on("close", () => {
        up.sockets.delete(ws);
        up.connections--;
        for (const a of assets) {
          up.subscriptions[a]--;
          if (up.subscriptions[a] === 0) delete up.subscriptions[a];
        }
      });
    });
  });
  const prices = new Map();
  const priceOf = (asset) => {
    const p = (prices.get(asset) ?? 1000 + 10 * asset.length) * (1 + (Math.random() - 0.5) * 0.002);
    prices.set(asset, p);
    return p.toFixed(2);
  };
  const timer = setInterval(() => {
    const texts = new Map();
    for (const ws of up.sockets) {
      if (ws.readyState !== ws.OPEN) continue;
      const msg = {};
      for (const a of ws.assets) {
        if (!texts.has(a)) texts.set(a, priceOf(a));
        msg[a] = texts.get(a);
        up.sent.add(texts.get(a));
      }
      ws.send(JSON.stringify(msg));
      up.messagesSent++;
    }
  }, 1000 / rate);
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  up.port = server.address().port;
  up.template = upstreamTemplate(up.port, tls ? { scheme: "wss", host: "localhost" } : {});
  up.stats = () => ({ connections: up.connections, connections_total: up.connectionsTotal, subscriptions: { ...up.subscriptions } });
  up.close = () => new Promise((resolve) => {
    clearInterval(timer);
    for (const ws of up.sockets) ws.terminate();
    wss.close();
    server.closeAllConnections?.();
    server.close(() => resolve());
  });
  return up;
}

/** `openssl version`, or null when the CLI is missing. */
export function opensslVersion() {
  const r = spawnSync("openssl", ["version"], { encoding: "utf8", timeout: 5000 });
  return r.status === 0 ? r.stdout.trim() : null;
}

/**
 * A throw-away CA and a server certificate for localhost / 127.0.0.1 signed by it (EC P-256),
 * in a temp dir. Returns {dir, caFile, certFile, keyFile, ca, cert, key, cleanup}.
 */
export function makeTestCA() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "sluice-e2e-ca-"));
  const f = (n) => path.join(dir, n);
  const run = (args) => {
    const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8", timeout: 20000 });
    if (r.status !== 0) throw new Error(`openssl ${args.join(" ")} failed (${r.status}): ${r.stderr}`);
  };
  run(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f("ca.key")]);
  run(["req", "-x509", "-new", "-key", f("ca.key"), "-sha256", "-days", "2", "-subj", "/CN=sluice e2e test CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    "-out", f("ca.pem")]);
  run(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f("server.key")]);
  run(["req", "-new", "-key", f("server.key"), "-subj", "/CN=localhost", "-out", f("server.csr")]);
  writeFileSync(f("server.ext"), [
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature",
    "extendedKeyUsage=serverAuth",
    "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "",
  ].join("\n"));
  run(["x509", "-req", "-in", f("server.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial",
    "-days", "2", "-sha256", "-extfile", f("server.ext"), "-out", f("server.pem")]);
  return {
    dir,
    caFile: f("ca.pem"),
    certFile: f("server.pem"),
    keyFile: f("server.key"),
    ca: readFileSync(f("ca.pem")),
    cert: readFileSync(f("server.pem")),
    key: readFileSync(f("server.key")),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
