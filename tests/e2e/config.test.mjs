// Configuration: invalid values exit 64 naming the key; precedence flags > env > config file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { API_KEY, SECRET, freePort, httpGet, runSluice, startServer, withLogs } from "./lib/server.mjs";

const base = ["--secret-key-base", SECRET, "--api-key", API_KEY, "--log-format", "json"];
const mentions = (r, re) => re.test(r.stderr + r.stdout);
const show = (r) => `code=${r.code} signal=${r.signal}\nstderr: ${r.stderr}\nstdout: ${r.stdout}`;

function tmpConfig(t, text) {
  const dir = mkdtempSync(path.join(tmpdir(), "sluice-e2e-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, "sluice.toml");
  writeFileSync(file, text);
  return file;
}

test("config: --max-frame-bytes banana → exit 64 naming the key", async () => {
  const port = await freePort();
  const r = runSluice(["serve", "--listen", `127.0.0.1:${port}`, ...base, "--max-frame-bytes", "banana"]);
  assert.equal(r.code, 64, show(r));
  assert.ok(mentions(r, /max[-_]frame[-_]bytes/i), `message names max-frame-bytes:\n${show(r)}`);
});

test("config: SLUICE_LISTEN=bad → exit 64 naming the key", async () => {
  const r = runSluice(["serve", ...base], { env: { SLUICE_LISTEN: "bad" } });
  assert.equal(r.code, 64, show(r));
  assert.ok(mentions(r, /listen/i), `message names listen:\n${show(r)}`);
});

test("config: SLUICE_MAX_FRAME_BYTES=banana (env) → exit 64", async () => {
  const port = await freePort();
  const r = runSluice(["serve", "--listen", `127.0.0.1:${port}`, ...base], { env: { SLUICE_MAX_FRAME_BYTES: "banana" } });
  assert.equal(r.code, 64, show(r));
  assert.ok(mentions(r, /max[-_]frame[-_]bytes/i), show(r));
});

test("config: other invalid values → exit 64 (--slow-consumer, --idle-timeout, --max-channels)", async () => {
  const port = await freePort();
  for (const [flag, value, re] of [
    ["--slow-consumer", "sometimes", /slow[-_]consumer/i],
    ["--idle-timeout", "soon", /idle[-_]timeout/i],
    ["--max-channels", "many", /max[-_]channels/i],
  ]) {
    const r = runSluice(["serve", "--listen", `127.0.0.1:${port}`, ...base, flag, value]);
    assert.equal(r.code, 64, `${flag} ${value}: ${show(r)}`);
    assert.ok(mentions(r, re), `${flag} ${value} message names the key:\n${show(r)}`);
  }
});

test("config: invalid value in the config file → exit 64 naming the key", async (t) => {
  const port = await freePort();
  const file = tmpConfig(t, `max_frame_bytes = "banana"\n`);
  const r = runSluice(["serve", "--listen", `127.0.0.1:${port}`, ...base, "--config", file]);
  assert.equal(r.code, 64, show(r));
  assert.ok(mentions(r, /max[-_]frame[-_]bytes/i), show(r));
});

test("config: flag beats env (--listen vs SLUICE_LISTEN)", async (t) => {
  const envPort = await freePort();
  const flagPort = await freePort();
  const srv = await startServer({ port: flagPort, env: { SLUICE_LISTEN: `127.0.0.1:${envPort}` } });
  t.after(() => srv.stop());
  await withLogs(() => srv, async () => {
    assert.equal((await httpGet(`http://127.0.0.1:${flagPort}/healthz`)).status, 200);
    assert.ok((await httpGet(`http://127.0.0.1:${envPort}/healthz`, { timeoutMs: 500 })).error, "env port must not be listening");
  })(t);
});

test("config: env beats config file, config file beats defaults (listen)", async (t) => {
  const filePort = await freePort();
  const envPort = await freePort();
  const file = tmpConfig(t, `listen = "127.0.0.1:${filePort}"\n`);

  // config file alone
  const a = await startServer({ defaults: false, port: filePort, args: ["serve", ...base, "--config", file] });
  try {
    assert.equal((await httpGet(`http://127.0.0.1:${filePort}/healthz`)).status, 200);
  } finally {
    await a.stop();
  }

  // env overrides the file
  const b = await startServer({ defaults: false, port: envPort, env: { SLUICE_LISTEN: `127.0.0.1:${envPort}` }, args: ["serve", ...base, "--config", file] });
  try {
    assert.equal((await httpGet(`http://127.0.0.1:${envPort}/healthz`)).status, 200);
    assert.ok((await httpGet(`http://127.0.0.1:${filePort}/healthz`, { timeoutMs: 500 })).error, "file port must not be listening");
  } finally {
    await b.stop();
  }
});

test("config: SIGTERM on an idle server → exit code 0", async (t) => {
  const srv = await startServer();
  t.after(() => srv.kill());
  const info = await srv.stop({ graceMs: 15000 });
  assert.deepEqual(info, { code: 0, signal: null }, srv.logTail());
});
