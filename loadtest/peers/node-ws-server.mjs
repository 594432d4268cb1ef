// node-ws-server.mjs: the peers' raw protocol (see README.md) on Node's http
// server and the `ws` package, the most common Node WebSocket stack.
//
//   node node-ws-server.mjs [PORT]     (else $PORT, else 4702)
//
// /echo sends every message back; /pub sends every message to each open /sub
// socket (a Set, looped over per message); the publisher gets nothing back.
// Text stays text and binary stays binary. No compression, ws's other
// defaults (100 MiB max message; no limit on what is queued for a slow
// socket: it buffers in memory).

import http from "node:http";
import { WebSocketServer, WebSocket } from "ws";

const port = Number(process.argv[2] ?? process.env.PORT ?? 4702);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`node-ws-server: bad port ${process.argv[2] ?? process.env.PORT}`);
  process.exit(64);
}

const ROUTES = new Set(["/echo", "/sub", "/pub"]);
const subscribers = new Set();

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

wss.on("connection", (ws, path) => {
  ws.on("error", () => {}); // a peer that resets is the normal case
  switch (path) {
    case "/echo":
      ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
      break;
    case "/sub":
      subscribers.add(ws);
      ws.on("close", () => subscribers.delete(ws));
      break;
    case "/pub":
      ws.on("message", (data, isBinary) => {
        for (const client of subscribers) {
          if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
        }
      });
      break;
  }
});

// The path without its query string.
const pathOf = (req) => req.url.split("?", 1)[0];

const server = http.createServer((req, res) => {
  const path = pathOf(req);
  if (req.method !== "GET") {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
  } else if (path === "/health") {
    res.writeHead(200, { "content-type": "text/plain" }).end("ok");
  } else if (ROUTES.has(path)) {
    res.writeHead(426, { "content-type": "text/plain" }).end("websocket only\n");
  } else {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
  }
});

server.on("upgrade", (req, socket, head) => {
  const path = pathOf(req);
  if (!ROUTES.has(path)) {
    socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws, path));
});

server.listen(port, "127.0.0.1", () => {
  console.error(`node-ws-server listening on 127.0.0.1:${port}`);
});

function stop() {
  for (const ws of wss.clients) ws.terminate();
  server.close();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
