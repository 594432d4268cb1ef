// /metrics scraped by a real Prometheus server: the exposition parses, the
// target is up, and traffic shows in the sluice_* families with bounded labels.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { freePort, httpGet, sleep, startServer, withLogs } from "./lib/server.mjs";
import { joinOk, phxSocket, push } from "./lib/phx.mjs";

const haveProm = spawnSync("prometheus", ["--version"]).status === 0;
// CI installs Prometheus (.ci/run); a developer machine without it skips, CI never does.
const skip = !haveProm && !process.env.CI ? "prometheus not installed (CI installs it)" : false;

let srv, prom, dir, promPort, promLogs = [];

before(async () => {
  if (skip) return;
  srv = await startServer();
  promPort = await freePort();
  dir = mkdtempSync(path.join(tmpdir(), "sluice-prom-"));
  writeFileSync(path.join(dir, "prometheus.yml"), [
    "global:",
    "  scrape_interval: 1s",
    "  scrape_timeout: 900ms",
    "scrape_configs:",
    "  - job_name: sluice",
    "    static_configs:",
    `      - targets: ["127.0.0.1:${srv.port}"]`,
    "",
  ].join("\n"));
  prom = spawn("prometheus", [
    `--config.file=${path.join(dir, "prometheus.yml")}`,
    `--storage.tsdb.path=${path.join(dir, "data")}`,
    `--web.listen-address=127.0.0.1:${promPort}`,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  prom.stdout.on("data", (d) => promLogs.push(d));
  prom.stderr.on("data", (d) => promLogs.push(d));
}, { timeout: 30000 });

after(async () => {
  if (prom) {
    prom.kill("SIGTERM");
    await Promise.race([new Promise((r) => prom.on("exit", r)), sleep(5000)]);
    try { prom.kill("SIGKILL"); } catch { /* gone */ }
  }
  await srv?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
}, { timeout: 20000 });

async function query(q) {
  const r = await httpGet(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(q)}`, { timeoutMs: 2000 });
  if (r.status !== 200) return [];
  const body = JSON.parse(r.text);
  return body.status === "success" ? body.data.result : [];
}

async function eventually(q, pred, ms = 30000) {
  const deadline = Date.now() + ms;
  let last = [];
  while (Date.now() < deadline) {
    try { last = await query(q); } catch { last = []; }
    if (pred(last)) return last;
    await sleep(500);
  }
  throw new Error(`prometheus query ${q} never satisfied; last=${JSON.stringify(last)}\n${Buffer.concat(promLogs).toString().slice(-3000)}`);
}

test("prometheus scrapes /metrics: target up, sluice_* series with bounded labels", { skip }, withLogs(() => srv, async (t) => {
  assert.ok(haveProm, "CI must have prometheus installed");
  const socket = await phxSocket(t, srv, { user: 5 });
  const ch = socket.channel("echo:prom");
  await joinOk(ch);
  for (let i = 0; i < 5; i++) assert.equal((await push(ch, "ping", { i })).status, "ok");

  const up = await eventually('up{job="sluice"}', (r) => r.length === 1 && r[0].value[1] === "1");
  assert.equal(up[0].metric.instance, `127.0.0.1:${srv.port}`);
  // The scrape parsed and carries our families (health of the exposition format).
  const joins = await eventually('sluice_joins_total{result="ok"}', (r) => r.length === 1 && Number(r[0].value[1]) >= 1);
  assert.ok(Number(joins[0].value[1]) >= 1);
  const conns = await eventually('sluice_connections{transport="websocket"}', (r) => r.length === 1 && Number(r[0].value[1]) >= 1);
  assert.ok(Number(conns[0].value[1]) >= 1);
  const frames = await eventually('sluice_frames_in_total{transport="websocket",kind="text"}', (r) => r.length === 1 && Number(r[0].value[1]) >= 6);
  assert.ok(Number(frames[0].value[1]) >= 6);
  // No label carries a topic, user or path: every label value of every sluice series is from a small set.
  const all = await query('{__name__=~"sluice_.*"}');
  assert.ok(all.length >= 5, `expected several sluice series, got ${all.length}`);
  for (const s of all) {
    for (const [k, v] of Object.entries(s.metric)) {
      if (["__name__", "instance", "job", "quantile", "le"].includes(k)) continue;
      assert.ok(!/prom|echo:|room:|user:|\//.test(v), `label ${k}=${v} on ${s.metric.__name__} looks unbounded`);
    }
  }
}));
