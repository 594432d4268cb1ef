// Server lifecycle: health endpoints, metrics, idle timeout, graceful drain (close 1012,
// readyz 503, exit 0) and phoenix.js reconnect + rejoin after a restart on the same port.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { apiBroadcast, httpGet, sleep, startServer, withLogs } from "./lib/server.mjs";
import { joinOk, nextEvent, phxSocket, push, waitFor } from "./lib/phx.mjs";
import { RawClient } from "./lib/raw.mjs";

/** Starts a server for one test and stops it at the end of the test, whatever happens. */
async function serverFor(t, opts) {
  const s = await startServer(opts);
  t.after(() => s.stop());
  return s;
}

test("lifecycle: /healthz 200, /readyz 200", async (t) => {
  const srv = await serverFor(t);
  await withLogs(() => srv, async () => {
    assert.equal((await httpGet(`${srv.httpUrl}/healthz`)).status, 200);
    assert.equal((await httpGet(`${srv.httpUrl}/readyz`)).status, 200);
  })(t);
});

test("lifecycle: /metrics exposes sluice_* families after traffic", async (t) => {
  const srv = await serverFor(t);
  await withLogs(() => srv, async () => {
    const socket = await phxSocket(t, srv);
    const ch = socket.channel("echo:metrics");
    await joinOk(ch);
    await push(ch, "ping", { m: 1 });
    const refused = socket.channel("nope:metrics");
    refused.join();
    await apiBroadcast(srv, { topic: "echo:metrics", event: "m", payload: {} });
    const r = await httpGet(`${srv.httpUrl}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type") ?? "", /text\/plain/);
    const names = new Set(r.text.split("\n")
      .filter((l) => l && !l.startsWith("#"))
      .map((l) => l.split(/[{\s]/)[0]));
    const sluice = [...names].filter((n) => n.startsWith("sluice_"));
    t.diagnostic(`sluice_* series: ${sluice.join(", ")}`);
    assert.ok(sluice.length >= 3, `at least 3 sluice_* series, got: ${sluice.join(", ")}`);
    assert.ok(sluice.some((n) => /conn/.test(n)), `a connections metric (sluice_*conn*): ${sluice.join(", ")}`);
    assert.ok(sluice.some((n) => /join/.test(n)), `a joins metric (sluice_*join*): ${sluice.join(", ")}`);
    assert.ok(/^# TYPE sluice_/m.test(r.text), "Prometheus # TYPE lines for sluice_ metrics");
    refused.leave();
  })(t);
});

describe("idle timeout (--idle-timeout 2s)", () => {
  test("a silent raw client is closed with 1001 after ~2 s", async (t) => {
    const srv = await serverFor(t, { args: ["--idle-timeout", "2s"] });
    await withLogs(() => srv, async () => {
      const started = Date.now();
      const c = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(1)}&vsn=2.0.0`, { t });
      const { code } = await c.waitClose(8000);
      const elapsed = Date.now() - started;
      assert.equal(code, 1001);
      assert.ok(elapsed >= 1500, `closed too early (${elapsed} ms)`);
    })(t);
  });

  test("a client that sends anything (phoenix.js heartbeats every 500 ms) stays connected", async (t) => {
    const srv = await serverFor(t, { args: ["--idle-timeout", "2s"] });
    await withLogs(() => srv, async () => {
      const socket = await phxSocket(t, srv, { socketOpts: { heartbeatIntervalMs: 500 } });
      const ch = socket.channel("echo:alive");
      await joinOk(ch);
      await sleep(5000); // > 2 × idle timeout; the assertion is that nothing happened meanwhile
      assert.deepEqual(socket.closeEvents, []);
      assert.equal(socket.opens, 1);
      assert.deepEqual(await push(ch, "ping", { still: 1 }), { status: "ok", response: { still: 1 } });
    })(t);
  });

});

test("drain: SIGTERM → readyz 503 while draining, sockets closed with 1012, exit 0", async (t) => {
  // batches of one socket, 1 s apart, so that the drain of two sockets lasts about a second
  const srv = await serverFor(t, { args: ["--drain-grace", "10s", "--drain-batch-size", "1", "--drain-batch-interval", "1s"] });
  await withLogs(() => srv, async () => {
    const clients = [];
    for (const u of [1, 2]) {
      const c = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(u)}&vsn=2.0.0`, { t });
      c.sendJson(["1", "1", "room:drain", "phx_join", {}]);
      await c.reply("1");
      clients.push(c);
    }
    assert.equal((await httpGet(`${srv.httpUrl}/readyz`)).status, 200);

    srv.proc.kill("SIGTERM");
    const statuses = [];
    let exited = false;
    srv.exited.then(() => { exited = true; });
    const deadline = Date.now() + 15000;
    while (!exited && Date.now() < deadline) {
      const r = await httpGet(`${srv.httpUrl}/readyz`, { timeoutMs: 500 });
      statuses.push(r.status ?? "refused");
      if (r.status === 503) break;
      await sleep(25);
    }
    t.diagnostic(`readyz after SIGTERM: ${JSON.stringify(statuses.slice(0, 10))}${statuses.length > 10 ? "…" : ""}`);
    assert.ok(statuses.includes(503), `readyz must answer 503 while draining, saw ${JSON.stringify(statuses)}`);

    for (const c of clients) {
      const { code } = await c.waitClose(15000);
      assert.equal(code, 1012, "drain closes sockets with 1012 (service restart)");
    }
    const info = await Promise.race([srv.exited, sleep(15000).then(() => null)]);
    assert.ok(info, "server exited within 15 s of SIGTERM");
    assert.deepEqual(info, { code: 0, signal: null });
  })(t);
});

test("restart: phoenix.js sees 1012, reconnects to the restarted server on the same port and rejoins", async (t) => {
  const first = await startServer();
  let second = null;
  t.after(async () => { await first.stop(); await second?.stop(); });
  await withLogs(() => [first, second], async () => {
    const port = first.port;
    const socket = await phxSocket(t, first, { socketOpts: { heartbeatIntervalMs: 500 } });
    const ch = socket.channel("room:restart");
    let joinOks = 0;
    ch.join().receive("ok", () => { joinOks++; });
    await waitFor(() => joinOks === 1 && ch.state === "joined", 5000, "first join");

    const before1 = nextEvent(ch, "ann", 3000);
    assert.ok((await apiBroadcast(first, { topic: "room:restart", event: "ann", payload: { n: 1 } })).status < 300);
    assert.deepEqual(await before1, { n: 1 });

    const info = await first.stop({ graceMs: 15000 });
    assert.deepEqual(info, { code: 0, signal: null }, "first server exits 0 after SIGTERM");
    await waitFor(() => socket.closeEvents.length >= 1, 5000, "client close event");
    assert.equal(socket.closeEvents[0].code, 1012, `close code on drain: ${JSON.stringify(socket.closeEvents)}`);

    second = await startServer({ port });
    await waitFor(() => socket.isConnected() && ch.state === "joined" && joinOks >= 2, 10000,
      () => `reconnect + rejoin (opens=${socket.opens} state=${ch.state} joinOks=${joinOks})`);
    assert.ok(socket.opens >= 2);

    const after1 = nextEvent(ch, "ann", 3000);
    assert.ok((await apiBroadcast(second, { topic: "room:restart", event: "ann", payload: { n: 2 } })).status < 300);
    assert.deepEqual(await after1, { n: 2 });
  })(t);
});
