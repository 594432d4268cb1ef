// bun-server.js: the peers' raw protocol (see README.md) on Bun.serve, whose
// WebSockets and pub/sub are uWebSockets underneath.
//
//   node_modules/.bin/bun bun-server.js [PORT]     (else $PORT, else 4701)
//
// /echo sends every message back; /sub sockets subscribe to the topic "room";
// /pub sockets publish every message to it with server.publish (uWebSockets'
// built-in fan-out; the publisher is not subscribed, so gets nothing back).
// Strings stay text, buffers stay binary. Options are Bun's defaults except
// idleTimeout, written out to say what they are.

const port = Number(process.argv[2] ?? process.env.PORT ?? 4701);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`bun-server: bad port ${process.argv[2] ?? process.env.PORT}`);
  process.exit(64);
}

const ROOM = "room";
const ROUTES = new Set(["/echo", "/sub", "/pub"]);

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(req, server) {
    const { pathname } = new URL(req.url);
    if (req.method !== "GET") return new Response("not found\n", { status: 404 });
    if (pathname === "/health") return new Response("ok");
    if (!ROUTES.has(pathname)) return new Response("not found\n", { status: 404 });
    if (server.upgrade(req, { data: { route: pathname } })) return undefined;
    return new Response("websocket only\n", { status: 426 });
  },
  websocket: {
    // The load generator sends nothing while idle: no idle timeout (and so
    // no server pings), like the other peers.
    idleTimeout: 0,
    // Bun's defaults, written out: 16 MiB messages; no compression; past
    // 16 MiB queued for a socket, send() and publish() drop the message for
    // that socket (returning 0) instead of closing it.
    maxPayloadLength: 16 * 1024 * 1024,
    perMessageDeflate: false,
    backpressureLimit: 16 * 1024 * 1024,
    closeOnBackpressureLimit: false,
    open(ws) {
      if (ws.data.route === "/sub") ws.subscribe(ROOM);
    },
    message(ws, message) {
      switch (ws.data.route) {
        case "/echo":
          ws.send(message);
          break;
        case "/pub":
          server.publish(ROOM, message);
          break;
        // "/sub" only receives.
      }
    },
  },
});

console.error(`bun-server listening on ${server.hostname}:${server.port}`);

function stop() {
  server.stop(true);
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
