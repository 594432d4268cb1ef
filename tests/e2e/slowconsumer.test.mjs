// Backpressure: a subscriber that stops reading must not hold up others. With
// --slow-consumer disconnect it is disconnected; with drop it loses messages but stays
// connected. The close code 1013 (try again later) is the one `sluice serve --help` documents.
import { test } from "node:test";
import assert from "node:assert/strict";
import { apiBroadcast, startServer, withLogs } from "./lib/server.mjs";
import { collect, joinOk, phxSocket, waitFor } from "./lib/phx.mjs";
import { RawClient } from "./lib/raw.mjs";

const N = 400;                      // messages
const PAD = "p".repeat(64 * 1024);  // ~64 KiB each → ~25 MiB in total, well above loopback socket buffers

async function scenario(t, mode) {
  const srv = await startServer({ args: ["--outbound-queue-bytes", "1MiB", "--slow-consumer", mode] });
  t.after(() => srv.stop());
  return withLogs(() => srv, async () => {
    const fast = await phxSocket(t, srv, { user: 1, socketOpts: { heartbeatIntervalMs: 30000 } });
    const fch = fast.channel("room:slow");
    await joinOk(fch);
    const got = collect(fch, "bulk");

    const slow = await RawClient.connect(`${srv.wsUrl}?token=${srv.token(2)}&vsn=2.0.0`, { t });
    slow.sendJson(["1", "1", "room:slow", "phx_join", {}]);
    await slow.reply("1");
    slow.ws._socket.pause(); // stop reading: the server's outbound queue for this socket fills up

    for (let i = 0; i < N; i++) {
      const r = await apiBroadcast(srv, { topic: "room:slow", event: "bulk", payload: { i, pad: PAD } });
      assert.ok(r.status < 300, `broadcast ${i}: ${r.status}`);
    }
    await waitFor(() => got.length >= N, 30000, () => `fast subscriber got all ${N} (has ${got.length})`);
    assert.deepEqual(got.map((p) => p.i), Array.from({ length: N }, (_, i) => i), "fast subscriber: all messages in order");

    slow.ws._socket.resume();
    return { srv, slow };
  })(t);
}

test("slow consumer (disconnect): a stalled subscriber is disconnected, the fast one gets everything", async (t) => {
  const { slow } = await scenario(t, "disconnect");
  const closeInfo = await slow.waitClose(15000);
  const bulk = slow.texts.filter((d) => Array.isArray(d) && d[3] === "bulk").length;
  t.diagnostic(`slow consumer closed with ${JSON.stringify(closeInfo)} after receiving ${bulk}/${N}`);
  assert.ok(bulk < N, `the stalled subscriber cannot have received everything (${bulk}/${N})`);
  assert.equal(closeInfo.code, 1013, "slow-consumer disconnect closes with 1013");
});

test("slow consumer (drop): a stalled subscriber loses messages but stays connected", async (t) => {
  const { slow } = await scenario(t, "drop");
  await slow.settle(500, 20000); // let what the server still queued drain first
  slow.sendJson([null, "hb", "phoenix", "heartbeat", {}]);
  await slow.reply("hb", 15000);
  const bulk = slow.texts.filter((d) => Array.isArray(d) && d[3] === "bulk");
  t.diagnostic(`drop mode: stalled subscriber received ${bulk.length}/${N}`);
  assert.equal(slow.isOpen, true, `closed: ${JSON.stringify(slow.closeInfo)}`);
  assert.ok(bulk.length < N, `some messages must have been dropped (${bulk.length}/${N})`);
  const idx = bulk.map((d) => d[4].i);
  assert.deepEqual(idx, [...idx].sort((a, b) => a - b), "what arrives is still in order");
});
