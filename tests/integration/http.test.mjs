// The HTTP API against the real binary: publish, history, long-poll, channel
// info, idempotency, pipelining, and every malformed input answered with its
// status and JSON error while other clients keep being served.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { publish, rawRequest, sleep, sseConnect, startServer, waitFor } from './lib/server.mjs';

let srv;
before(async () => { srv = await startServer(['--max-body', '64k', '--header-timeout', '1s', '--workers', '2']); });
after(async () => {
  const r = await srv.stop();
  assert.equal(r.code, 0, `server exits 0 on SIGTERM:\n${srv.log().slice(-2000)}`);
});

function parseResponse(raw) {
  const i = raw.indexOf('\r\n\r\n');
  const head = raw.slice(0, i);
  return { status: Number(head.slice(9, 12)), head, body: raw.slice(i + 4) };
}

describe('publish and read', () => {
  test('JSON publish returns 201 with id and channel; history returns it', async () => {
    const r = await publish(srv.base, 'news', { event: 'notification', data: { text: 'hi' } });
    assert.equal(r.status, 201);
    assert.equal(r.body.channel, 'news');
    assert.match(r.body.id, /^\d+$/);
    const h = await (await fetch(`${srv.base}/v1/channels/news/messages`)).json();
    const m = h.messages.find((x) => x.id === r.body.id);
    assert.deepEqual({ event: m.event, data: m.data, channel: m.channel }, { event: 'notification', data: { text: 'hi' }, channel: 'news' });
    assert.equal(typeof m.time, 'number');
    assert.equal(h.reset, false);
  });

  test('a pretty JSON body: data keeps its numbers and escapes, loses only the whitespace', async () => {
    const body = '{\n  "data" : {\n    "big" : 12345678901234567890 ,\n    "s" : "a \\"b\\" \\u00e9\\n" ,\n    "x" : [ 1.50 , -0 , 1E3 ]\n  } ,\n  "event" : "n\\u0061me"\n}\n';
    const r = await fetch(`${srv.base}/v1/channels/pretty/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    assert.equal(r.status, 201);
    const id = (await r.json()).id;
    const text = await (await fetch(`${srv.base}/v1/channels/pretty/messages?since=0`)).text();
    // The raw history text shows the data exactly as stored.
    assert.ok(text.includes('"data":{"big":12345678901234567890,"s":"a \\"b\\" \\u00e9\\n","x":[1.50,-0,1E3]}'), text);
    const m = JSON.parse(text).messages.find((x) => x.id === id);
    assert.equal(m.event, 'name');
    assert.equal(m.data.s, 'a "b" \u00e9\n');
  });

  test('raw body becomes a string with ?event=', async () => {
    const r = await publish(srv.base, 'raw', 'line1\nline2', { event: 'note', json: false, headers: { 'content-type': 'text/plain' } });
    assert.equal(r.status, 201);
    const h = await (await fetch(`${srv.base}/v1/channels/raw/messages?since=0`)).json();
    assert.equal(h.messages.at(-1).data, 'line1\nline2');
    assert.equal(h.messages.at(-1).event, 'note');
  });

  test('ids increase strictly and since/limit page through history', async () => {
    const ids = [];
    for (let i = 0; i < 10; i++) ids.push((await publish(srv.base, 'pages', { data: i })).body.id);
    for (let i = 1; i < ids.length; i++) assert.ok(BigInt(ids[i]) > BigInt(ids[i - 1]));
    const p1 = await (await fetch(`${srv.base}/v1/channels/pages/messages?since=0&limit=4`)).json();
    assert.deepEqual(p1.messages.map((m) => m.data), [0, 1, 2, 3]);
    const p2 = await (await fetch(`${srv.base}/v1/channels/pages/messages?since=${p1.next}&limit=4`)).json();
    assert.deepEqual(p2.messages.map((m) => m.data), [4, 5, 6, 7]);
    const p3 = await (await fetch(`${srv.base}/v1/channels/pages/messages?since=${p2.next}`)).json();
    assert.deepEqual(p3.messages.map((m) => m.data), [8, 9]);
    const p4 = await (await fetch(`${srv.base}/v1/channels/pages/messages?since=${p3.next}`)).json();
    assert.deepEqual(p4.messages, []);
    assert.equal(p4.next, p3.next, 'next stays put when nothing is new');
  });

  test('channel info carries the last message (the job-status poller)', async () => {
    await publish(srv.base, 'job-42', { event: 'status', data: { status: 'running' } });
    await publish(srv.base, 'job-42', { event: 'status', data: { status: 'completed' } });
    const info = await (await fetch(`${srv.base}/v1/channels/job-42`)).json();
    assert.equal(info.channel, 'job-42');
    assert.deepEqual(info.last.data, { status: 'completed' });
    assert.equal(info.subscribers, 0);
    const none = await (await fetch(`${srv.base}/v1/channels/never-used`)).json();
    assert.equal(none.last, null);
  });

  test('idempotent publish: same key returns the same id and stores one message', async () => {
    const key = `k-${Date.now()}`;
    const a = await publish(srv.base, 'idem', { data: 'once' }, { headers: { 'idempotency-key': key } });
    const b = await publish(srv.base, 'idem', { data: 'once' }, { headers: { 'idempotency-key': key } });
    assert.equal(a.status, 201);
    assert.equal(b.status, 201);
    assert.equal(a.body.id, b.body.id);
    const h = await (await fetch(`${srv.base}/v1/channels/idem/messages?since=0`)).json();
    assert.equal(h.messages.filter((m) => m.data === 'once').length, 1);
    const c = await publish(srv.base, 'idem', { data: 'once' }, { headers: { 'idempotency-key': key + 'x' } });
    assert.notEqual(c.body.id, a.body.id, 'a different key publishes again');
  });

  test('long-poll returns within 50 ms of a publish', async () => {
    const first = await publish(srv.base, 'lp', { data: 'before' });
    const t0 = performance.now();
    const waiting = fetch(`${srv.base}/v1/channels/lp/messages?since=${first.body.id}&wait=10`).then(async (r) => ({ t: performance.now(), body: await r.json() }));
    await sleep(300);
    const tp = performance.now();
    await publish(srv.base, 'lp', { data: 'after' });
    const got = await waiting;
    assert.deepEqual(got.body.messages.map((m) => m.data), ['after']);
    assert.ok(got.t - tp < 50 + 20, `long-poll answered ${Math.round(got.t - tp)} ms after the publish`);
    assert.ok(got.t - t0 >= 250, 'it really waited');
  });

  test('long-poll without since waits for the next message; times out empty', async () => {
    const t0 = Date.now();
    const r = await (await fetch(`${srv.base}/v1/channels/lp-empty/messages?wait=1`)).json();
    assert.deepEqual(r.messages, []);
    assert.ok(Date.now() - t0 >= 900, 'waited about a second');
    const waiting = fetch(`${srv.base}/v1/channels/lp2/messages?wait=5`).then((x) => x.json());
    await sleep(100);
    await publish(srv.base, 'lp2', { data: 'next' });
    assert.deepEqual((await waiting).messages.map((m) => m.data), ['next']);
  });

  test('pipelined requests are answered in order on one connection', async () => {
    const body = JSON.stringify({ data: 1 });
    const req = (p) => `POST /v1/channels/pipe/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${p.length}\r\n\r\n${p}`;
    const raw = await rawRequest(srv.port, req(body) + 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n' + req(body) + 'GET /v1/channels/pipe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    const statuses = [...raw.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
    assert.deepEqual(statuses, [201, 200, 201, 200]);
  });

  test('chunked request bodies are decoded', async () => {
    const payload = JSON.stringify({ event: 'chunky', data: 'abcdefghij' });
    const chunked = `${payload.slice(0, 5).length.toString(16)}\r\n${payload.slice(0, 5)}\r\n${(payload.length - 5).toString(16)};ext=1\r\n${payload.slice(5)}\r\n0\r\n\r\n`;
    const raw = await rawRequest(srv.port, `POST /v1/channels/chunk/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunked}`);
    assert.equal(parseResponse(raw).status, 201, raw);
    const h = await (await fetch(`${srv.base}/v1/channels/chunk/messages`)).json();
    assert.equal(h.messages[0].data, 'abcdefghij');
  });

  test('Prometheus and dashboard metrics have the documented shape', async () => {
    const j = await (await fetch(`${srv.base}/api/metrics`)).json();
    for (const k of ['activeUsers', 'requestsPerSecond', 'errorRate', 'p99Latency']) assert.equal(typeof j[k], 'number', k);
    const text = await (await fetch(`${srv.base}/metrics`)).text();
    assert.match(text, /^switchboard_messages_published_total \d+$/m);
    assert.match(text, /switchboard_delivery_latency_seconds\{quantile="0.99"\}/);
  });
});

// Table of hostile inputs: raw bytes, expected status and error code. After
// each, a healthy client must still be served.
const bad = [
  ['malformed request line', 'GARBAGE\r\n\r\n', 400, 'bad_request_line'],
  ['bad version', 'GET / HTTP/2.0\r\nHost: x\r\n\r\n', 505, 'http_version_not_supported'],
  ['header without colon', 'GET /healthz HTTP/1.1\r\nHost x\r\n\r\n', 400, 'bad_header'],
  ['bad chunked encoding', 'POST /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n', 400, 'bad_chunked'],
  ['oversize headers', `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`, 431, 'headers_too_large'],
  ['oversize body', `POST /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: ${128 * 1024}\r\n\r\n`, 413, 'body_too_large'],
  ['oversize chunked body', `POST /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${(70000).toString(16)}\r\n${'a'.repeat(70000)}\r\n0\r\n\r\n`, 413, 'body_too_large'],
  ['uri too long', `GET /${'a'.repeat(9000)} HTTP/1.1\r\nHost: x\r\n\r\n`, 414, 'uri_too_long'],
  ['no length on POST', 'POST /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\n\r\n', 411, 'length_required'],
  ['CL and TE together (smuggling)', 'POST /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, 'bad_content_length'],
  ['invalid channel name', 'GET /v1/channels/bad%20name/messages HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'invalid_channel'],
  ['channel name too long', `GET /v1/channels/${'c'.repeat(129)} HTTP/1.1\r\nHost: x\r\n\r\n`, 400, 'invalid_channel'],
  ['invalid JSON', 'POST /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"data"', 400, 'invalid_json'],
  ['JSON without data', 'POST /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{"text":1}', 400, 'invalid_body'],
  ['event name injection', 'POST /v1/channels/a/messages?event=x%0D%0Adata:%20evil HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx', 400, 'invalid_event'],
  ['invalid UTF-8 raw body', Buffer.concat([Buffer.from('POST /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n'), Buffer.from([0xc3, 0x28])]), 400, 'invalid_utf8'],
  ['binary content type', 'POST /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1\r\n\r\nx', 415, 'unsupported_media_type'],
  ['unknown endpoint', 'GET /nope HTTP/1.1\r\nHost: x\r\n\r\n', 404, 'not_found'],
  ['wrong method', 'DELETE /v1/channels/a/messages HTTP/1.1\r\nHost: x\r\n\r\n', 405, 'method_not_allowed'],
  ['bad cursor', 'GET /v1/channels/a/messages?since=abc HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'invalid_cursor'],
  ['bad limit', 'GET /v1/channels/a/messages?limit=0 HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'invalid_parameter'],
  ['wait over the cap', 'GET /v1/channels/a/messages?wait=999 HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'invalid_parameter'],
  ['SSE without channel', 'GET /v1/sse HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'invalid_channel'],
  ['SSE bad Last-Event-ID', 'GET /v1/sse?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: nope\r\n\r\n', 400, 'invalid_cursor'],
];

describe('hostile input', () => {
  // A healthy SSE reader stays connected through all of it.
  let watcher;
  before(async () => { watcher = await sseConnect(srv.port, '/v1/sse?channel=healthy').ready; });
  after(() => watcher.close());

  for (const [name, req, status, code] of bad) {
    test(`${name} -> ${status} ${code}`, async () => {
      // Connection: close so the reply ends with the connection (errors that
      // keep the connection usable would otherwise hold it open).
      const closing = Buffer.from(Buffer.from(req).toString('latin1').replace('\r\nHost: x\r\n', '\r\nHost: x\r\nConnection: close\r\n'), 'latin1');
      const raw = await rawRequest(srv.port, closing);
      const r = parseResponse(raw);
      assert.equal(r.status, status, `${name}: ${raw.slice(0, 300)}`);
      assert.equal(JSON.parse(r.body).error.code, code);
      assert.equal(typeof JSON.parse(r.body).error.message, 'string');
      const ok = await fetch(`${srv.base}/healthz`);
      assert.equal(ok.status, 200, 'a healthy client is still served');
    });
  }

  test('slow header trickle (slowloris) is cut with 408 at the header timeout', async () => {
    const t0 = Date.now();
    const raw = await rawRequest(srv.port, null, { ms: 4000, chunks: ['GET /healthz HTTP/1.1\r\n', 'Host: x\r\n', 'X-A: 1\r\n', 'X-B: 2\r\n', 'X-C: 3\r\n', 'X-D: 4\r\n'], gapMs: 400 });
    assert.equal(parseResponse(raw).status, 408);
    assert.ok(Date.now() - t0 < 3500, 'cut near the 1 s header timeout');
  });

  test('the healthy SSE reader got every message published meanwhile', async () => {
    const r = await publish(srv.base, 'healthy', { data: 'still here' });
    await waitFor(() => watcher.events.some((e) => e.id === r.body.id), { what: 'event on the healthy stream' });
    assert.equal(watcher.closed, false);
  });
});
