// A hand-written Node SSE fan-out server, the way the seed's pattern #1 would be grown
// into a pub/sub endpoint: GET /v1/sse?channel=c streams, POST /v1/channels/c/messages
// sends the raw body to every reader of c as one `data:` event.
// usage: node sse-server.mjs PORT
import http from 'node:http';

const port = Number(process.argv[2] ?? process.env.PORT ?? 3002);
const channels = new Map();
let nextId = 0;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (req.method === 'GET' && url.pathname === '/v1/sse') {
    const channel = url.searchParams.get('channel') ?? 'default';
    res.writeHead(200, {
      'Content-Type': 'text/event-stream',
      'Cache-Control': 'no-cache, no-transform',
      Connection: 'keep-alive',
    });
    res.write(': connected\n\n');
    if (!channels.has(channel)) channels.set(channel, new Set());
    channels.get(channel).add(res);
    req.on('close', () => {
      channels.get(channel)?.delete(res);
      if (channels.get(channel)?.size === 0) channels.delete(channel);
    });
    return;
  }
  const m = url.pathname.match(/^\/v1\/channels\/([^/]+)\/messages$/);
  if (req.method === 'POST' && m) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      const id = String(++nextId);
      const event = `id: ${id}\ndata: ${body.split('\n').join('\ndata: ')}\n\n`;
      for (const reader of channels.get(m[1]) ?? []) reader.write(event);
      const reply = JSON.stringify({ id, channel: m[1] });
      res.writeHead(201, {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(reply),
      });
      res.end(reply);
    });
    return;
  }
  res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
});

// SSE streams live for the whole run: no request or header timeout may end them.
server.requestTimeout = 0;
server.headersTimeout = 0;
server.keepAliveTimeout = 60_000;
server.listen(port, '127.0.0.1', () =>
  console.log(`sse-server listening on http://127.0.0.1:${port}`));
