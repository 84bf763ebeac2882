// Hostile input against the real binary with auth on: a table of bad tokens,
// forged and expired signatures, wrong algorithms, forbidden channels,
// header injection, oversize and malformed frames, bad JSON and wrong types,
// invalid UTF-8, disallowed origins and CORS preflights, over HTTP, SSE,
// WebSocket and the JSON protocol. Each case expects its exact status or close
// code and error code, and after each one the server still serves: a new
// client gets /healthz, and two long-lived readers (SSE and WebSocket) receive
// a fresh message. Then the limits (connections per address, publish rate,
// subscriptions) and the timeouts (WebSocket handshake, WebSocket idle,
// keep-alive idle), each with its metric.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { rawRequest, sleep, sseConnect, startServer, waitFor } from './lib/server.mjs';
import { frame, rawWs } from './lib/rawws.mjs';

const SECRET = 'hostile-suite-secret-7c1e0f4b';
const API_KEY = 'hostile-suite-server-key';
const GOOD_ORIGIN = 'https://good.example';
const CORS_ORIGIN = 'https://app.example';
const PER_IP = 32;

// ---- tokens, made here with Node's HMAC exactly as a backend would ----
const b64u = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
function jwt(claims, { alg = 'HS256', secret = SECRET, header } = {}) {
  const h = b64u(header ?? { alg, typ: 'JWT' });
  const p = b64u(claims);
  const hmac = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }[alg];
  const sig = hmac ? crypto.createHmac(hmac, secret).update(`${h}.${p}`).digest('base64url') : '';
  return `${h}.${p}.${sig}`;
}
const now = () => Math.floor(Date.now() / 1000);
const hour = () => now() + 3600;
const T = {
  // May read chat and public:*, may not publish.
  reader: jwt({ sub: 'reader', exp: hour(), channels: ['chat', 'public:*'] }),
  // May read anything and publish to chat and public:*.
  writer: jwt({ sub: 'writer', exp: hour(), channels: ['*'], publish: ['chat', 'public:*'] }),
  expired: jwt({ sub: 'late', exp: now() - 60, channels: ['*'], publish: ['*'] }),
  none: jwt({ sub: 'mallory', exp: hour(), channels: ['*'], publish: ['*'] }, { alg: 'none' }),
  hs512: jwt({ sub: 'mallory', exp: hour(), channels: ['*'], publish: ['*'] }, { alg: 'HS512' }),
  forged: jwt({ sub: 'mallory', exp: hour(), channels: ['*'], publish: ['*'] }, { secret: 'guessed-secret' }),
  expString: jwt({ sub: 'odd', exp: 'tomorrow', channels: ['*'] }),
  chanString: jwt({ sub: 'odd', exp: hour(), channels: '*' }),
  huge: jwt({ sub: 'big', exp: hour(), channels: ['*'], pad: 'p'.repeat(9000) }),
};
// The reader's token with its payload swapped for one granting everything:
// the signature no longer matches.
T.tampered = (() => {
  const [h, , s] = T.reader.split('.');
  return `${h}.${b64u({ sub: 'reader', exp: hour(), channels: ['*'], publish: ['*'] })}.${s}`;
})();


// ---- raw HTTP ----
function httpReq(method, path, { headers = {}, body } = {}) {
  const b = body === undefined ? null : Buffer.isBuffer(body) ? body : Buffer.from(body);
  let h = `${method} ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n`;
  for (const [k, v] of Object.entries(headers)) h += `${k}: ${v}\r\n`;
  if (b) h += `Content-Length: ${b.length}\r\n`;
  return Buffer.concat([Buffer.from(`${h}\r\n`, 'latin1'), b ?? Buffer.alloc(0)]);
}
function parseResponse(raw) {
  const i = raw.indexOf('\r\n\r\n');
  const head = raw.slice(0, i);
  return { status: Number(head.slice(9, 12)), head, body: raw.slice(i + 4) };
}
const errCode = (body) => { try { return JSON.parse(body).error.code; } catch { return null; } };
const bearer = (t) => ({ Authorization: `Bearer ${t}` });
const json = { 'Content-Type': 'application/json' };
const pub = (ch, headers, body = '{"data":1}') => httpReq('POST', `/v1/channels/${ch}/messages`, { headers: { ...json, ...headers }, body });
const sse = (query, headers = {}) => httpReq('GET', `/v1/sse?${query}`, { headers });
// A WebSocket upgrade that is refused answers plain HTTP; the second
// Connection header makes the server close after its answer.
const upgrade = (path, headers = {}) => httpReq('GET', path, {
  headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version': '13', ...headers },
});

// ---- the table ----
// http: raw request -> status and error code (null: no JSON error body).
// frame: bytes on an authorized WebSocket -> close code.
// op: a text frame of the JSON protocol -> {"op":"error","code"} with its ref.
const big = (n) => 'a'.repeat(n);
const cases = [
  // HTTP publish: authentication and permissions
  { name: 'publish without credentials', http: pub('chat', {}), status: 401, code: 'unauthorized' },
  { name: 'publish with a garbage bearer', http: pub('chat', bearer('not-a-token')), status: 401, code: 'unauthorized' },
  { name: 'publish with Basic auth', http: pub('chat', { Authorization: `Basic ${b64u('a:b')}` }), status: 401, code: 'unauthorized' },
  { name: 'publish with a wrong API key', http: pub('chat', bearer(`${API_KEY}x`)), status: 401, code: 'unauthorized' },
  { name: 'publish with an expired token', http: pub('chat', bearer(T.expired)), status: 401, code: 'token_expired' },
  { name: 'publish with alg none', http: pub('chat', bearer(T.none)), status: 401, code: 'unauthorized' },
  { name: 'publish with alg HS512', http: pub('chat', bearer(T.hs512)), status: 401, code: 'unauthorized' },
  { name: 'publish with a forged signature', http: pub('chat', bearer(T.forged)), status: 401, code: 'unauthorized' },
  { name: 'publish with a tampered payload', http: pub('chat', bearer(T.tampered)), status: 401, code: 'unauthorized' },
  { name: 'publish with exp of the wrong type', http: pub('chat', bearer(T.expString)), status: 401, code: 'unauthorized' },
  { name: 'publish with channels of the wrong type', http: pub('chat', bearer(T.chanString)), status: 401, code: 'unauthorized' },
  { name: 'publish with a token over 8 KiB', http: pub('chat', bearer(T.huge)), status: 401, code: 'unauthorized' },
  { name: 'publish with a read-only token', http: pub('chat', bearer(T.reader)), status: 403, code: 'forbidden' },
  { name: 'publish outside the publish patterns', http: pub('private', bearer(T.writer)), status: 403, code: 'forbidden' },
  // HTTP publish: bad input from an authorized client
  { name: 'header injection in the channel name', http: pub('chat%0D%0ASet-Cookie:%20a=b', bearer(API_KEY)), status: 400, code: 'invalid_channel' },
  { name: 'channel name over 128 characters', http: pub(big(129), bearer(API_KEY)), status: 400, code: 'invalid_channel' },
  { name: 'header injection in ?event=', http: httpReq('POST', '/v1/channels/chat/messages?event=x%0D%0Adata:%20evil', { headers: bearer(API_KEY), body: 'x' }), status: 400, code: 'invalid_event' },
  { name: 'newline in the JSON event name', http: pub('chat', bearer(API_KEY), '{"event":"a\\nid: 9","data":1}'), status: 400, code: 'invalid_event' },
  { name: 'event of the wrong type', http: pub('chat', bearer(API_KEY), '{"event":5,"data":1}'), status: 400, code: 'invalid_body' },
  { name: 'JSON body that is an array', http: pub('chat', bearer(API_KEY), '[1,2]'), status: 400, code: 'invalid_body' },
  { name: 'truncated JSON body', http: pub('chat', bearer(API_KEY), '{"data":'), status: 400, code: 'invalid_json' },
  { name: 'bytes after the JSON value', http: pub('chat', bearer(API_KEY), '{"data":1} junk'), status: 400, code: 'invalid_json' },
  { name: 'a second JSON value', http: pub('chat', bearer(API_KEY), '{"data":1}{"data":2}'), status: 400, code: 'invalid_json' },
  { name: 'a number with a leading zero', http: pub('chat', bearer(API_KEY), '{"data":012}'), status: 400, code: 'invalid_json' },
  { name: 'a lone surrogate escape', http: pub('chat', bearer(API_KEY), '{"data":"\\ud800"}'), status: 400, code: 'invalid_json' },
  { name: 'JSON nested 513 deep', http: pub('chat', bearer(API_KEY), `{"data":${'['.repeat(512)}${']'.repeat(512)}}`), status: 400, code: 'invalid_json' },
  { name: 'an escaped NUL in the event name', http: pub('chat', bearer(API_KEY), '{"event":"a\\u0000b","data":1}'), status: 400, code: 'invalid_event' },
  { name: 'invalid UTF-8 inside a JSON string', http: pub('chat', bearer(API_KEY), Buffer.from([0x7b, 0x22, 0x64, 0x61, 0x74, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d])), status: 400, code: 'invalid_json' },
  { name: 'invalid UTF-8 text body', http: httpReq('POST', '/v1/channels/chat/messages', { headers: { ...bearer(API_KEY), 'Content-Type': 'text/plain' }, body: Buffer.from([0xed, 0xa0, 0x80]) }), status: 400, code: 'invalid_utf8' },
  { name: 'control character in Idempotency-Key', http: pub('chat', { ...bearer(API_KEY), 'Idempotency-Key': 'a\tb' }), status: 400, code: 'invalid_parameter' },
  { name: 'body over --max-body', http: pub('chat', bearer(API_KEY), `{"data":"${big(70000)}"}`), status: 413, code: 'body_too_large' },
  { name: 'header block over 16 KiB', http: httpReq('GET', '/healthz', { headers: { 'X-Pad': big(17000) } }), status: 431, code: 'headers_too_large' },
  // SSE
  { name: 'SSE without a token', http: sse('channel=chat'), status: 401, code: 'unauthorized' },
  { name: 'SSE with a forged token', http: sse(`channel=chat&token=${T.forged}`), status: 401, code: 'unauthorized' },
  { name: 'SSE with an expired token', http: sse(`channel=chat&token=${T.expired}`), status: 401, code: 'token_expired' },
  { name: 'SSE with alg none', http: sse(`channel=chat&token=${T.none}`), status: 401, code: 'unauthorized' },
  { name: 'SSE with a forged bearer header', http: sse('channel=chat', bearer(T.tampered)), status: 401, code: 'unauthorized' },
  { name: 'SSE on a channel the token does not name', http: sse(`channel=private&token=${T.reader}`), status: 403, code: 'forbidden' },
  { name: 'SSE where one of several channels is forbidden', http: sse(`channel=chat&channel=public:a&channel=admin&token=${T.reader}`), status: 403, code: 'forbidden' },
  { name: 'SSE from an origin not allowed', http: sse(`channel=chat&token=${T.reader}`, { Origin: 'https://evil.example' }), status: 403, code: 'origin_not_allowed' },
  { name: 'SSE with header injection in the channel', http: sse(`channel=chat%0D%0Aevent:%20x&token=${T.reader}`), status: 400, code: 'invalid_channel' },
  { name: 'SSE with a bad since', http: sse(`channel=chat&since=-1&token=${T.reader}`), status: 400, code: 'invalid_cursor' },
  { name: 'SSE over --max-subscriptions', http: sse(`channel=a&channel=b&channel=c&channel=d&channel=e&token=${T.writer}`), status: 429, code: 'too_many_subscriptions' },
  // CORS
  { name: 'CORS preflight from the allowed origin', http: httpReq('OPTIONS', '/v1/channels/chat/messages', { headers: { Origin: CORS_ORIGIN, 'Access-Control-Request-Method': 'POST' } }), status: 204, code: null,
    check: (h) => { assert.match(h, new RegExp(`Access-Control-Allow-Origin: ${CORS_ORIGIN}`)); assert.match(h, /Access-Control-Allow-Methods: .*POST/); assert.match(h, /Access-Control-Allow-Headers: .*Authorization/); } },
  { name: 'CORS preflight from another origin', http: httpReq('OPTIONS', '/v1/channels/chat/messages', { headers: { Origin: 'https://evil.example', 'Access-Control-Request-Method': 'POST' } }), status: 405, code: 'method_not_allowed',
    check: (h) => assert.doesNotMatch(h, /Access-Control-Allow-Origin/i) },
  { name: 'CORS headers are not echoed to another origin', http: httpReq('GET', '/v1/channels/chat', { headers: { Origin: 'https://evil.example' } }), status: 200, code: null,
    check: (h) => assert.doesNotMatch(h, /Access-Control-Allow-Origin/i) },
  // WebSocket upgrade
  { name: 'WebSocket without a token', http: upgrade('/v1/ws'), status: 401, code: 'unauthorized' },
  { name: 'WebSocket with a forged token', http: upgrade(`/v1/ws?token=${T.forged}`), status: 401, code: 'unauthorized' },
  { name: 'WebSocket with an expired bearer', http: upgrade('/v1/ws', bearer(T.expired)), status: 401, code: 'token_expired' },
  { name: 'WebSocket with alg HS512', http: upgrade(`/v1/ws?token=${T.hs512}`), status: 401, code: 'unauthorized' },
  { name: 'WebSocket from an origin not allowed (CSWSH)', http: upgrade(`/v1/ws?token=${T.writer}`, { Origin: 'https://evil.example' }), status: 403, code: 'origin_not_allowed' },
  { name: 'raw room the token does not name', http: upgrade(`/r?room=lobby&token=${T.reader}`), status: 403, code: 'forbidden' },
  { name: 'WebSocket version 8', http: upgrade(`/v1/ws?token=${T.writer}`, { 'Sec-WebSocket-Version': '8' }), status: 426, code: 'upgrade_required' },
  // WebSocket frames
  { name: 'unmasked client frame', frame: () => [frame(1, '{"op":"ping"}', { mask: false })], close: 1002 },
  { name: 'reserved bits set', frame: () => [frame(1, '{}', { rsv: 2 })], close: 1002 },
  { name: 'reserved opcode', frame: () => [frame(3, 'x')], close: 1002 },
  { name: 'continuation without a message', frame: () => [frame(0, 'x')], close: 1002 },
  { name: 'new message inside a fragmented one', frame: () => [frame(1, '{"op"', { fin: false }), frame(1, 'x')], close: 1002 },
  { name: 'fragmented ping', frame: () => [frame(9, 'x', { fin: false })], close: 1002 },
  { name: 'ping over 125 bytes', frame: () => [frame(9, big(126))], close: 1002 },
  { name: 'close frame with a 1-byte payload', frame: () => [frame(8, Buffer.from([3]))], close: 1002 },
  { name: 'close code 1005 on the wire', frame: () => [frame(8, Buffer.from([0x03, 0xed]))], close: 1002 },
  { name: 'invalid UTF-8 text', frame: () => [frame(1, Buffer.from([0x7b, 0xc0, 0xaf, 0x7d]))], close: 1007 },
  { name: 'UTF-8 surrogate split across fragments', frame: () => [frame(1, Buffer.from([0x22, 0xed]), { fin: false }), frame(0, Buffer.from([0xa0, 0x80, 0x22]))], close: 1007 },
  { name: 'message over --max-message', frame: () => [frame(1, Buffer.alloc(8), { lenOverride: 70 * 1024 })], close: 1009 },
  { name: 'fragments adding up over --max-message', frame: () => [frame(1, big(40000), { fin: false }), frame(0, big(40000))], close: 1009 },
  // The JSON protocol
  { name: 'truncated JSON', op: '{"op":"subscribe","channel":', code: 'invalid_json' },
  { name: 'JSON array instead of an object', op: '[{"op":"ping"}]', code: 'invalid_json' },
  { name: 'JSON string instead of an object', op: '"subscribe"', code: 'invalid_json' },
  { name: 'missing op', op: { channel: 'chat', ref: 7 }, code: 'unknown_op' },
  { name: 'op of the wrong type', op: { op: 42, ref: 7 }, code: 'unknown_op' },
  { name: 'unknown op', op: { op: 'shutdown', ref: 7 }, code: 'unknown_op' },
  { name: 'channel of the wrong type', op: { op: 'subscribe', channel: ['chat'], ref: 7 }, code: 'invalid_channel' },
  { name: 'header injection in a channel name', op: { op: 'subscribe', channel: 'chat\r\nX: y', ref: 7 }, code: 'invalid_channel' },
  { name: 'since that is not a cursor', op: { op: 'subscribe', channel: 'chat', since: 'yesterday', ref: 7 }, code: 'invalid_cursor' },
  { name: 'subscribe to a channel the token does not name', token: 'reader', op: { op: 'subscribe', channel: 'admin', ref: 7 }, code: 'forbidden' },
  { name: 'publish with a read-only token', token: 'reader', op: { op: 'publish', channel: 'chat', data: 1, ref: 7 }, code: 'forbidden' },
  { name: 'publish outside the publish patterns', op: { op: 'publish', channel: 'admin', data: 1, ref: 7 }, code: 'forbidden' },
  { name: 'newline in an event name', op: { op: 'publish', channel: 'chat', event: 'a\nevent: b', data: 1, ref: 7 }, code: 'invalid_event' },
  { name: 'event of the wrong type', op: { op: 'publish', channel: 'chat', event: { x: 1 }, data: 1, ref: 7 }, code: 'invalid_event' },
  { name: 'idempotency key of the wrong type', op: { op: 'publish', channel: 'chat', key: 5, data: 1, ref: 7 }, code: 'invalid_parameter' },
  { name: 'binary frame in the JSON protocol', op: Buffer.from('{"op":"ping"}'), binary: true, code: 'invalid_body' },
];

// ---- the server, and healthy clients that must see every case through ----
let srv, sseWatch, wsWatch, healthySeq = 0;
const wsInbox = [];
before(async () => {
  srv = await startServer(['--workers', '2', '--jwt-secret', SECRET, '--api-key', API_KEY,
    '--allowed-origins', GOOD_ORIGIN, '--cors-origins', CORS_ORIGIN, '--max-body', '64k',
    '--max-message', '64k', '--max-subscriptions', '4', '--publish-rate', '5',
    '--header-timeout', '1s', '--max-conns-per-ip', String(PER_IP)]);
  sseWatch = await sseConnect(srv.port, `/v1/sse?channel=chat&token=${T.reader}`).ready;
  assert.equal(sseWatch.status, 200);
  wsWatch = new WebSocket(`ws://127.0.0.1:${srv.port}/v1/ws?token=${T.reader}`, { headers: { Origin: GOOD_ORIGIN } });
  wsWatch.on('message', (d) => wsInbox.push(JSON.parse(d.toString())));
  await new Promise((r, j) => { wsWatch.once('open', r); wsWatch.once('error', j); });
  wsWatch.send(JSON.stringify({ op: 'subscribe', channel: 'chat', ref: 'w' }));
  await waitFor(() => wsInbox.some((m) => m.op === 'ok' && m.ref === 'w'), { what: 'healthy subscribe' });
});
after(async () => {
  sseWatch?.close();
  wsWatch?.terminate();
  const r = await srv.stop();
  assert.equal(r.code, 0, `server exits 0 on SIGTERM (no leak, no crash):\n${srv.log().slice(-3000)}`);
});

async function assertHealthy(what) {
  const h = await fetch(`${srv.base}/healthz`);
  assert.equal(h.status, 200, `after ${what}: a new client is served`);
  await h.text();
  const marker = `after-${++healthySeq}`;
  const r = await fetch(`${srv.base}/v1/channels/chat/messages`, { method: 'POST', headers: { ...json, ...bearer(API_KEY) }, body: JSON.stringify({ data: marker }) });
  assert.equal(r.status, 201, `after ${what}: the server key publishes`);
  await r.text();
  await waitFor(() => sseWatch.events.some((e) => e.data === marker), { what: `SSE reader to see ${marker} after ${what}` });
  await waitFor(() => wsInbox.some((m) => m.op === 'message' && m.data === marker), { what: `WebSocket reader to see ${marker} after ${what}` });
  assert.equal(sseWatch.closed, false);
  assert.equal(wsWatch.readyState, WebSocket.OPEN);
}

describe('hostile input table', () => {
  test('the table has at least 40 cases over every transport', () => {
    assert.ok(cases.length >= 40, `${cases.length} cases`);
    assert.ok(cases.some((c) => c.frame) && cases.some((c) => c.op) && cases.some((c) => c.http?.includes('/v1/sse')));
  });

  for (const c of cases) {
    const expect = c.close ? `close ${c.close}` : c.op ? c.code : `${c.status} ${c.code ?? ''}`;
    test(`${c.name} -> ${expect}`, async () => {
      if (c.http) {
        const raw = await rawRequest(srv.port, c.http);
        const r = parseResponse(raw);
        assert.equal(r.status, c.status, `${c.name}: ${raw.slice(0, 300)}`);
        assert.equal(errCode(r.body), c.code, `${c.name}: ${r.body.slice(0, 300)}`);
        if (c.code) assert.equal(typeof JSON.parse(r.body).error.message, 'string');
        c.check?.(r.head);
      } else {
        const ws = await rawWs(srv.port, `/v1/ws?token=${T[c.token ?? 'writer']}`);
        assert.equal(ws.status, 101, ws.head);
        if (c.frame) {
          for (const b of c.frame()) ws.send(b);
          const cf = await ws.closeFrame(5000);
          assert.equal(cf?.code, c.close, `${c.name}: close code`);
          await waitFor(() => ws.closed, { what: 'the server to close the TCP connection' });
        } else {
          const payload = typeof c.op === 'string' || Buffer.isBuffer(c.op) ? c.op : JSON.stringify(c.op);
          ws.send(frame(c.binary ? 2 : 1, payload));
          const m = await ws.nextJson((x) => x.op === 'error');
          assert.ok(m, `${c.name}: an error reply`);
          assert.equal(m.code, c.code, `${c.name}: ${JSON.stringify(m)}`);
          assert.equal(typeof m.message, 'string');
          if (typeof c.op === 'object' && !Buffer.isBuffer(c.op) && 'ref' in c.op) assert.equal(m.ref, c.op.ref, 'the ref is echoed');
          // The connection survives a bad op and keeps answering.
          ws.json({ op: 'ping', ref: 'after' });
          assert.deepEqual(await ws.nextJson((x) => x.op === 'pong'), { op: 'pong', ref: 'after' });
        }
        ws.end();
      }
      await assertHealthy(c.name);
    });
  }
});

// ---- limits ----
async function metric(name, label) {
  const text = await (await fetch(`${srv.base}/metrics`)).text();
  const re = new RegExp(`^${name}${label ? `\\{limit="${label}"\\}` : ''} (\\d+)$`, 'm');
  const m = text.match(re);
  assert.ok(m, `metric ${name} ${label ?? ''} is exported`);
  return Number(m[1]);
}

// Connects from a chosen loopback address (all of 127/8 reaches the server),
// so the per-address cap can be exercised without starving this process.
function connectFrom(localAddress) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port: srv.port, host: '127.0.0.1', localAddress });
    s.data = '';
    s.setEncoding('latin1');
    s.on('data', (d) => { s.data += d; });
    s.on('error', () => {});
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}
const closedP = (s) => new Promise((r) => { if (s.destroyed || s.readyState === 'closed') r(); else s.once('close', r); });

describe('limits', () => {
  test('connections per address: over --max-conns-per-ip is 429 too_many_connections, counted, logged; closes free the slots', async () => {
    const before0 = await metric('switchboard_limit_refusals_total', 'conns_per_ip');
    const held = [];
    // Keep-alive HTTP connections: each has been served once and sits idle.
    for (let i = 0; i < PER_IP; i++) {
      const s = await connectFrom('127.0.0.7');
      s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      held.push(s);
    }
    await waitFor(() => held.every((s) => s.data.startsWith('HTTP/1.1 200')), { what: 'every held connection served' });
    const over = await connectFrom('127.0.0.7');
    await closedP(over);
    const r = parseResponse(over.data);
    assert.equal(r.status, 429, over.data);
    assert.equal(errCode(r.body), 'too_many_connections');
    assert.match(r.head, /Retry-After: 1/);
    // A WebSocket upgrade from that address is refused the same way.
    const up = await connectFrom('127.0.0.7');
    up.write(upgrade(`/v1/ws?token=${T.writer}`));
    await closedP(up);
    assert.equal(parseResponse(up.data).status, 429);
    // Other addresses are not affected.
    const other = await rawRequest(srv.port, httpReq('GET', '/healthz'));
    assert.equal(parseResponse(other).status, 200);
    assert.equal(await metric('switchboard_limit_refusals_total', 'conns_per_ip') - before0, 2);
    assert.match(srv.log(), new RegExp(`msg="connection refused: too many from one address" peer=127\.0\.0\.7 open=${PER_IP} max=${PER_IP}`));
    for (const s of held) s.destroy();
    // Plain HTTP closes are released at once.
    await waitFor(async () => {
      const s = await connectFrom('127.0.0.7');
      s.write('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      await closedP(s);
      return s.data.startsWith('HTTP/1.1 200');
    }, { what: 'the address to be served again', timeout: 3000, interval: 50 });
    await assertHealthy('the per-address cap');
  });

  test('WebSocket and SSE connections from one address are counted and released when they close', async () => {
    const open = [];
    for (let i = 0; i < PER_IP / 2; i++) {
      const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/v1/ws?token=${T.writer}`, { localAddress: '127.0.0.8' });
      await new Promise((r, j) => { ws.once('open', r); ws.once('error', j); });
      open.push(ws);
    }
    for (let i = 0; i < PER_IP / 2; i++) {
      const s = await connectFrom('127.0.0.8');
      s.write(`GET /v1/sse?channel=chat&token=${T.reader} HTTP/1.1\r\nHost: x\r\n\r\n`);
      open.push(s);
    }
    await waitFor(() => open.slice(PER_IP / 2).every((s) => s.data.startsWith('HTTP/1.1 200')), { what: 'SSE streams open' });
    const refused = new WebSocket(`ws://127.0.0.1:${srv.port}/v1/ws?token=${T.writer}`, { localAddress: '127.0.0.8' });
    const status = await new Promise((r) => {
      refused.once('unexpected-response', (req, res) => r(res.statusCode));
      refused.once('open', () => r(101));
      refused.once('error', () => r(-1));
    });
    refused.terminate();
    assert.equal(status, 429, 'the upgrade over the cap is refused');
    for (const s of open) (s.terminate ?? s.destroy).call(s);
    // Taken-over connections are released by the per-loop sweep (one tick).
    await waitFor(async () => {
      const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/v1/ws?token=${T.writer}`, { localAddress: '127.0.0.8' });
      const ok = await new Promise((r) => { ws.once('open', () => r(true)); ws.once('error', () => r(false)); ws.once('unexpected-response', () => r(false)); });
      ws.terminate();
      return ok;
    }, { what: 'WebSocket slots to be released', timeout: 3000, interval: 100 });
    const after0 = await (await fetch(`${srv.base}/api/metrics`)).json();
    assert.equal(typeof after0.limitRefusals.connsPerIp, 'number');
    assert.ok(after0.limitRefusals.connsPerIp >= 3);
  });

  test('HTTP publish rate per connection: over --publish-rate is 429 rate_limited; the server key is exempt', async () => {
    const before0 = await metric('switchboard_limit_refusals_total', 'publish_rate');
    // Eight pipelined publishes on one keep-alive connection: the bucket holds
    // one second's worth (5), so the sixth is refused, and the connection's
    // next requests wait until its rate allows one again.
    const one = (last) => `POST /v1/channels/public:rate/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${T.writer}\r\nContent-Type: application/json\r\nContent-Length: 10\r\n${last ? 'Connection: close\r\n' : ''}\r\n{"data":1}`;
    const raw = await rawRequest(srv.port, Array.from({ length: 8 }, (_, i) => one(i === 7)).join(''));
    const statuses = [...raw.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
    assert.equal(statuses.length, 8, raw);
    assert.deepEqual(statuses.slice(0, 6), [201, 201, 201, 201, 201, 429], String(statuses));
    assert.match(raw, /"code":"rate_limited"/);
    assert.match(raw, /Retry-After: 1/);
    assert.ok(await metric('switchboard_limit_refusals_total', 'publish_rate') - before0 >= 1);
    const key = (last) => `POST /v1/channels/public:rate/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 10\r\n${last ? 'Connection: close\r\n' : ''}\r\n{"data":1}`;
    const raw2 = await rawRequest(srv.port, Array.from({ length: 12 }, (_, i) => key(i === 11)).join(''));
    assert.deepEqual([...raw2.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1])), Array(12).fill(201));
    await assertHealthy('publish flooding');
  });

  test('WebSocket publish rate and subscriptions per connection', async () => {
    const ws = await rawWs(srv.port, `/v1/ws?token=${T.writer}`);
    for (let i = 0; i < 10; i++) ws.json({ op: 'publish', channel: 'public:rate', data: i, ref: i });
    const limited = await ws.nextJson((m) => m.op === 'error' && m.code === 'rate_limited');
    assert.ok(limited, 'over the rate: rate_limited');
    for (const ch of ['s1', 's2', 's3', 's4']) {
      ws.json({ op: 'subscribe', channel: `public:${ch}`, ref: ch });
      assert.equal((await ws.nextJson((m) => m.ref === ch)).op, 'ok');
    }
    ws.json({ op: 'subscribe', channel: 'public:s5', ref: 's5' });
    assert.equal((await ws.nextJson((m) => m.ref === 's5')).code, 'too_many_subscriptions');
    ws.end();
    await assertHealthy('WebSocket limits');
  });
});

// ---- timeouts, on a server of their own (short ping and idle times) ----
describe('timeouts', () => {
  let t;
  before(async () => {
    t = await startServer(['--workers', '1', '--jwt-secret', SECRET, '--header-timeout', '1s',
      '--ws-ping', '1s', '--idle-timeout', '2s']);
  });
  after(async () => { assert.equal((await t.stop()).code, 0); });

  test('a WebSocket handshake that trickles in is cut at the header timeout with 408', async () => {
    const up = `GET /v1/ws?token=${T.writer} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n`;
    const start = Date.now();
    const raw = await rawRequest(t.port, null, { ms: 5000, chunks: up.match(/[\s\S]{1,12}/g), gapMs: 150 });
    assert.equal(parseResponse(raw).status, 408, raw);
    assert.equal(errCode(parseResponse(raw).body), 'request_timeout');
    assert.ok(Date.now() - start < 4000, 'cut near the 1 s header timeout, not at the end of the trickle');
  });

  test('a WebSocket peer that never answers pings is dropped after two ping intervals; one that answers stays', async () => {
    // The raw client never answers pings by itself.
    const start = Date.now();
    const silent = await rawWs(t.port, `/v1/ws?token=${T.writer}`);
    assert.equal(silent.status, 101);
    const live = new WebSocket(`ws://127.0.0.1:${t.port}/v1/ws?token=${T.writer}`); // answers pings itself
    await new Promise((r, j) => { live.once('open', r); live.once('error', j); });
    let liveClosed = false;
    live.on('close', () => { liveClosed = true; });
    await waitFor(() => silent.closed, { timeout: 6000, what: 'the silent peer to be dropped' });
    const took = Date.now() - start;
    assert.ok(took >= 1500, `not dropped before two intervals (${took} ms)`);
    assert.ok(silent.frames.some((f) => f.opcode === 9), 'the server pinged first');
    await sleep(1000);
    assert.equal(liveClosed, false, 'a peer that answers pings is kept');
    live.close();
  });

  test('an idle keep-alive connection is closed after --idle-timeout', async () => {
    const s = net.connect(t.port, '127.0.0.1');
    let data = '';
    s.on('data', (d) => { data += d; });
    await new Promise((r) => s.once('connect', r));
    s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => data.includes('\r\n\r\nok'), { what: 'the response' });
    const start = Date.now();
    await closedP(s);
    assert.ok(Date.now() - start >= 1500, 'kept for about the idle timeout');
  });

  test('timeouts are counted', async () => {
    const text = await (await fetch(`${t.base}/metrics`)).text();
    assert.match(text, /switchboard_limit_refusals_total\{limit="header_timeout"\} [1-9]/);
  });
});
