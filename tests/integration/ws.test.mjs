// WebSocket transport against the real binary: RFC 6455 conformance with raw
// frames, permessage-deflate through the `ws` client, the JSON protocol, raw
// rooms (the seeds' ?room= server), and 2,000 clients in 500 rooms.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { publish, rawRequest, sleep, sseConnect, startServer, waitFor } from './lib/server.mjs';
import { frame, rawWs } from './lib/rawws.mjs';

let srv;
before(async () => { srv = await startServer(['--workers', '2', '--max-message', '128k', '--history-size', '2000']); });
after(async () => { assert.equal((await srv.stop()).code, 0); });

// Every opened socket buffers what it receives, so a test can wait for a
// message that arrived before it started waiting.
const open = (url, opts) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url, opts);
  ws.inbox = [];
  ws.on('message', (d, binary) => { if (!binary) { try { ws.inbox.push(JSON.parse(d.toString())); } catch { /* raw room text */ } } });
  ws.once('open', () => resolve(ws));
  ws.once('error', reject);
});
const nextMsg = async (ws, pred = () => true, ms = 3000) => {
  const end = Date.now() + ms;
  for (;;) {
    const i = ws.inbox.findIndex(pred);
    if (i >= 0) return ws.inbox.splice(i, 1)[0];
    if (Date.now() > end) throw new Error('no matching message');
    await sleep(5);
  }
};

describe('handshake', () => {
  const up = (extra) => `GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nConnection: close\r\n${extra}\r\n`;
  test('missing key -> 400', async () => {
    const r = await rawRequest(srv.port, up('Sec-WebSocket-Version: 13\r\n'));
    assert.match(r, /^HTTP\/1\.1 400/);
  });
  test('bad key -> 400', async () => {
    const r = await rawRequest(srv.port, up('Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n'));
    assert.match(r, /^HTTP\/1\.1 400/);
  });
  test('wrong version -> 426 with Sec-WebSocket-Version: 13', async () => {
    const r = await rawRequest(srv.port, up('Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n'));
    assert.match(r, /^HTTP\/1\.1 426/);
    assert.match(r, /Sec-WebSocket-Version: 13/i);
  });
  test('plain GET on /v1/ws -> 426', async () => {
    assert.equal((await fetch(`${srv.base}/v1/ws`)).status, 426);
  });
  test('accept key per RFC 6455', async () => {
    const c = await rawWs(srv.port, '/v1/ws', { key: 'dGhlIHNhbXBsZSBub25jZQ==' });
    assert.equal(c.status, 101);
    assert.ok(c.head.includes('Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo='), c.head);
    c.end();
  });
  test('no room and not /v1/ws -> 404', async () => {
    const c = await rawWs(srv.port, '/elsewhere');
    assert.equal(c.status, 404);
    c.end();
  });
});

describe('frames', () => {
  test('unmasked client frame -> close 1002', async () => {
    const c = await rawWs(srv.port);
    c.send(frame(1, '{"op":"ping"}', { mask: false }));
    assert.equal((await c.closeFrame()).code, 1002);
    c.end();
  });
  test('reserved bits and opcodes -> 1002', async () => {
    for (const f of [frame(1, 'x', { rsv: 2 }), frame(3, 'x'), frame(0xb, 'x'), frame(1, 'x', { rsv: 4 })]) {
      const c = await rawWs(srv.port);
      c.send(f);
      assert.equal((await c.closeFrame())?.code, 1002);
      c.end();
    }
  });
  test('invalid UTF-8 -> 1007, also when split across fragments', async () => {
    let c = await rawWs(srv.port);
    c.send(frame(1, Buffer.from([0x7b, 0xc3, 0x28, 0x7d])));
    assert.equal((await c.closeFrame()).code, 1007);
    c.end();
    c = await rawWs(srv.port);
    c.send(frame(1, Buffer.from([0x22, 0xf0, 0x9f]), { fin: false }));
    c.send(frame(0, Buffer.from([0x98, 0x22])));
    assert.equal(c.frames.filter((f) => f.opcode === 8).length, 0, 'a valid split code point is fine');
    c.send(frame(1, Buffer.from([0xed, 0xa0]), { fin: false }));
    c.send(frame(0, Buffer.from([0x80])));
    assert.equal((await c.closeFrame()).code, 1007, 'a surrogate split across frames');
    c.end();
  });
  test('oversize message -> 1009 (single frame and fragmented)', async () => {
    let c = await rawWs(srv.port);
    c.send(frame(2, Buffer.alloc(10), { lenOverride: 200 * 1024 }));
    assert.equal((await c.closeFrame()).code, 1009);
    c.end();
    c = await rawWs(srv.port);
    for (let i = 0; i < 3; i++) c.send(frame(i ? 0 : 1, Buffer.alloc(60 * 1024, 0x61), { fin: false }));
    assert.equal((await c.closeFrame()).code, 1009);
    c.end();
  });
  test('fragmentation with interleaved pings; every payload size boundary', async () => {
    const c = await rawWs(srv.port);
    const msg = JSON.stringify({ op: 'ping', ref: 'frag' });
    c.send(frame(1, msg.slice(0, 5), { fin: false }));
    c.send(frame(9, 'p1'));
    c.send(frame(0, msg.slice(5, 9), { fin: false }));
    c.send(frame(9, 'p2'));
    c.send(frame(0, msg.slice(9)));
    const pongs = [await c.next((f) => f.opcode === 10), await c.next((f) => f.opcode === 10)];
    assert.deepEqual(pongs.map((p) => p.payload.toString()), ['p1', 'p2'], 'pings answered with their payload');
    assert.deepEqual(await c.nextJson((m) => m.op === 'pong'), { op: 'pong', ref: 'frag' });
    for (const n of [0, 125, 126, 65535, 65536]) {
      const pad = 'x'.repeat(Math.max(0, n - 40));
      const body = JSON.stringify({ op: 'ping', ref: n, pad });
      c.send(frame(1, body));
      const r = await c.nextJson((m) => m.ref === n);
      assert.equal(r.op, 'pong');
    }
    // Payload sizes exactly at the boundaries, as binary frames in a room.
    c.end();
    const a = await rawWs(srv.port, '/r?room=sizes'), b = await rawWs(srv.port, '/r?room=sizes');
    for (const n of [0, 125, 126, 65535, 65536]) {
      a.send(frame(2, Buffer.alloc(n, n % 251)));
      const f = await b.next((x) => x.opcode === 2);
      assert.equal(f.payload.length, n, `binary payload of ${n} relayed intact`);
    }
    a.end(); b.end();
  });
  test('close codes and reasons echoed; invalid close codes -> 1002', async () => {
    let c = await rawWs(srv.port);
    const p = Buffer.alloc(2); p.writeUInt16BE(4000);
    c.send(frame(8, Buffer.concat([p, Buffer.from('bye')])));
    assert.equal((await c.closeFrame()).code, 4000);
    c.end();
    c = await rawWs(srv.port);
    c.send(frame(8));
    assert.equal((await c.closeFrame()).code, 1000, 'an empty close is answered with 1000');
    c.end();
    c = await rawWs(srv.port);
    p.writeUInt16BE(1005);
    c.send(frame(8, p));
    assert.equal((await c.closeFrame()).code, 1002);
    c.end();
  });
  test('a fragmented control frame and a stray continuation -> 1002', async () => {
    let c = await rawWs(srv.port);
    c.send(frame(9, 'x', { fin: false }));
    assert.equal((await c.closeFrame()).code, 1002);
    c.end();
    c = await rawWs(srv.port);
    c.send(frame(0, 'x'));
    assert.equal((await c.closeFrame()).code, 1002);
    c.end();
  });
});

describe('JSON protocol', () => {
  test('subscribe, publish with ack id, HTTP publish reaches WS and WS publish reaches SSE and history', async () => {
    const ws = await open(`ws://127.0.0.1:${srv.port}/v1/ws`);
    ws.send(JSON.stringify({ op: 'subscribe', channel: 'chat', ref: 1 }));
    const ok = await nextMsg(ws, (m) => m.ref === 1);
    assert.equal(ok.op, 'ok');
    assert.match(ok.last, /^\d+$/);
    const sse = await sseConnect(srv.port, '/v1/sse?channel=chat').ready;
    const h = await publish(srv.base, 'chat', { event: 'msg', data: { from: 'http' } });
    const m1 = await nextMsg(ws, (m) => m.op === 'message');
    assert.deepEqual({ ch: m1.channel, id: m1.id, ev: m1.event, data: m1.data }, { ch: 'chat', id: h.body.id, ev: 'msg', data: { from: 'http' } });
    ws.send(JSON.stringify({ op: 'publish', channel: 'chat', event: 'msg', data: { from: 'ws' }, ref: 2 }));
    const ack = await nextMsg(ws, (m) => m.ref === 2);
    assert.equal(ack.op, 'ok');
    assert.match(ack.id, /^\d+$/);
    const echo = await nextMsg(ws, (m) => m.op === 'message' && m.id === ack.id);
    assert.deepEqual(echo.data, { from: 'ws' });
    await waitFor(() => sse.events.some((e) => e.id === ack.id), { what: 'SSE got the WS publish' });
    const hist = await (await fetch(`${srv.base}/v1/channels/chat/messages`)).json();
    assert.ok(hist.messages.some((m) => m.id === ack.id));
    sse.close();
    ws.close();
  });

  test('echo=0 does not deliver a client its own publishes', async () => {
    const a = await open(`ws://127.0.0.1:${srv.port}/v1/ws?echo=0`);
    a.send(JSON.stringify({ op: 'subscribe', channel: 'noecho', ref: 1 }));
    await nextMsg(a, (m) => m.ref === 1);
    a.send(JSON.stringify({ op: 'publish', channel: 'noecho', data: 'mine', ref: 2 }));
    await nextMsg(a, (m) => m.ref === 2);
    await publish(srv.base, 'noecho', { data: 'theirs' });
    const m = await nextMsg(a, (x) => x.op === 'message');
    assert.equal(m.data, 'theirs');
    a.close();
  });

  test('idempotency key: a retried publish takes effect once', async () => {
    const a = await open(`ws://127.0.0.1:${srv.port}/v1/ws`);
    a.send(JSON.stringify({ op: 'publish', channel: 'idemws', data: 1, key: 'abc', ref: 1 }));
    a.send(JSON.stringify({ op: 'publish', channel: 'idemws', data: 1, key: 'abc', ref: 2 }));
    const r1 = await nextMsg(a, (m) => m.ref === 1), r2 = await nextMsg(a, (m) => m.ref === 2);
    assert.equal(r1.id, r2.id);
    const h = await (await fetch(`${srv.base}/v1/channels/idemws/messages`)).json();
    assert.equal(h.messages.length, 1);
    a.close();
  });

  test('errors: unknown op, bad JSON, invalid channel, bad cursor, unsubscribe stops delivery', async () => {
    const a = await open(`ws://127.0.0.1:${srv.port}/v1/ws`);
    a.send(JSON.stringify({ op: 'dance', ref: 9 }));
    assert.deepEqual(await nextMsg(a, (m) => m.ref === 9).then((m) => [m.op, m.code]), ['error', 'unknown_op']);
    a.send('{not json');
    assert.equal((await nextMsg(a, (m) => m.op === 'error')).code, 'invalid_json');
    a.send(JSON.stringify({ op: 'subscribe', channel: 'bad name', ref: 3 }));
    assert.equal((await nextMsg(a, (m) => m.ref === 3)).code, 'invalid_channel');
    a.send(JSON.stringify({ op: 'subscribe', channel: 'ok', since: 'zz', ref: 4 }));
    assert.equal((await nextMsg(a, (m) => m.ref === 4)).code, 'invalid_cursor');
    a.send(JSON.stringify({ op: 'subscribe', channel: 'unsub', ref: 5 }));
    await nextMsg(a, (m) => m.ref === 5);
    a.send(JSON.stringify({ op: 'unsubscribe', channel: 'unsub', ref: 6 }));
    await nextMsg(a, (m) => m.ref === 6);
    const got = [];
    a.on('message', (d) => { const m = JSON.parse(d); if (m.op === 'message') got.push(m); });
    await publish(srv.base, 'unsub', { data: 1 });
    await sleep(200);
    assert.equal(got.length, 0);
    assert.equal(a.readyState, WebSocket.OPEN, 'errors never close the connection');
    a.close();
  });

  test('resume: subscribe with since after missing 500 messages gets exactly those, then live', async () => {
    const first = await publish(srv.base, 'resume', { data: -1 });
    const ids = [];
    for (let i = 0; i < 500; i++) ids.push((await publish(srv.base, 'resume', { data: i })).body.id);
    const a = await open(`ws://127.0.0.1:${srv.port}/v1/ws`);
    const got = [];
    a.on('message', (d) => { const m = JSON.parse(d); if (m.op === 'message') got.push(m); });
    a.send(JSON.stringify({ op: 'subscribe', channel: 'resume', since: first.body.id, ref: 1 }));
    await waitFor(() => got.length === 500, { what: '500 backlog messages' });
    const live = await publish(srv.base, 'resume', { data: 'live' });
    await waitFor(() => got.length === 501, { what: 'live message' });
    assert.deepEqual(got.map((m) => m.id), [...ids, live.body.id], 'exactly the missed ones, in order, then live');
    a.close();
  });

  test('permessage-deflate on and off; compressed broadcast decodes for every receiver', async () => {
    const on = await open(`ws://127.0.0.1:${srv.port}/v1/ws`, { perMessageDeflate: true });
    const off = await open(`ws://127.0.0.1:${srv.port}/v1/ws`, { perMessageDeflate: false });
    assert.match(on.extensions, /permessage-deflate/);
    assert.equal(off.extensions, '');
    for (const w of [on, off]) { w.send(JSON.stringify({ op: 'subscribe', channel: 'zip', ref: 1 })); await nextMsg(w, (m) => m.ref === 1); }
    const big = { text: 'compress me '.repeat(500) };
    const pOn = nextMsg(on, (m) => m.op === 'message'), pOff = nextMsg(off, (m) => m.op === 'message');
    on.send(JSON.stringify({ op: 'publish', channel: 'zip', data: big, ref: 2 }));
    assert.deepEqual((await pOn).data, big);
    assert.deepEqual((await pOff).data, big);
    on.close(); off.close();
  });
});

describe('slow consumers', () => {
  test('a WebSocket reader that stops reading is closed with 1013 and counted', async () => {
    const small = await startServer(['--max-output', '256k']);
    try {
      const c = await rawWs(small.port);
      c.json({ op: 'subscribe', channel: 'firehose', ref: 1 });
      await c.nextJson((m) => m.ref === 1);
      c.sock.pause(); // stop reading: kernel buffers fill, then the server's queue
      const big = 'z'.repeat(60000);
      for (let i = 0; i < 600; i++) {
        const r = await publish(small.base, 'firehose', { data: big });
        assert.equal(r.status, 201, 'publishers are never slowed by a slow reader');
      }
      c.sock.resume();
      const close = await c.closeFrame(10000);
      assert.equal(close?.code, 1013);
      const m = await (await fetch(`${small.base}/api/metrics`)).json();
      assert.ok(m.slowDisconnects >= 1);
      c.end();
    } finally {
      await small.stop();
    }
  });
});

describe('rooms (the seeds\' ?room= server)', () => {
  test('frames go verbatim to the other members only; leave is announced', async () => {
    const url = `ws://127.0.0.1:${srv.port}/?room=demo`;
    const a = await open(url), b = await open(url), c = await open(`ws://127.0.0.1:${srv.port}/?room=other`);
    const got = { a: [], b: [], c: [] };
    a.on('message', (d) => got.a.push(d.toString()));
    b.on('message', (d) => got.b.push(d.toString()));
    c.on('message', (d) => got.c.push(d.toString()));
    const presence = JSON.stringify({ type: 'presence', user: { id: 'user-1', name: 'Alice', color: '#3b82f6', cursor: { x: 1, y: 2 } } });
    a.send(presence);
    a.send('plain text, not JSON');
    await waitFor(() => got.b.length === 2, { what: 'b got both' });
    assert.deepEqual(got.b, [presence, 'plain text, not JSON']);
    a.close();
    await waitFor(() => got.b.length === 3, { what: 'leave message' });
    assert.deepEqual(JSON.parse(got.b[2]), { type: 'leave', userId: 'user-1' });
    await sleep(100);
    assert.deepEqual(got.a, [], 'the sender never gets its own frames');
    assert.deepEqual(got.c, [], 'other rooms get nothing');
    b.close(); c.close();
  });

  test('room frames read back as channel room:R: JSON text as its value, other text as a string, binary as base64', async () => {
    const url = `ws://127.0.0.1:${srv.port}/?room=readback`;
    const sub = await open(`ws://127.0.0.1:${srv.port}/v1/ws`);
    sub.send(JSON.stringify({ op: 'subscribe', channel: 'room:readback', ref: 1 }));
    await nextMsg(sub, (m) => m.op === 'ok' && m.ref === 1);
    const sse = await sseConnect(srv.port, '/v1/sse?channel=room:readback').ready;
    const a = await open(url);
    const cursor = JSON.stringify({ type: 'cursor', x: 1, y: [2, 3] });
    a.send(cursor);
    a.send('plain text, not JSON');
    a.send(Buffer.from([0, 1, 2, 0xff, 0xfe]));
    a.send('');
    const want = [{ type: 'cursor', x: 1, y: [2, 3] }, 'plain text, not JSON', Buffer.from([0, 1, 2, 0xff, 0xfe]).toString('base64'), ''];
    const got = [];
    for (let i = 0; i < 4; i++) got.push((await nextMsg(sub, (m) => m.op === 'message')).data);
    assert.deepEqual(got, want, 'over /v1/ws');
    const res = await fetch(`http://127.0.0.1:${srv.port}/v1/channels/room:readback/messages?since=0`);
    assert.equal(res.status, 200);
    assert.deepEqual((await res.json()).messages.map((m) => m.data), want, 'in history');
    await waitFor(() => sse.events.length >= 4, { what: 'four SSE events' });
    assert.deepEqual(sse.events.slice(0, 4).map((e) => e.data), [cursor, 'plain text, not JSON', Buffer.from([0, 1, 2, 0xff, 0xfe]).toString('base64'), ''], 'over SSE: the frames as they were (binary as base64)');
    a.close(); sub.close(); sse.close();
  });

  test('a room the server cannot hold (channel limit) closes its member with 1013, never drops its frames silently', async () => {
    const small = await startServer(['--max-channels', '2']);
    try {
      for (const ch of ['one', 'two']) assert.equal((await publish(small.base, ch, { data: 1 })).status, 201);
      const a = await open(`ws://127.0.0.1:${small.port}/?room=third`);
      const closed = new Promise((resolve) => a.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
      a.send('{"type":"cursor"}');
      assert.deepEqual(await closed, { code: 1013, reason: 'channel limit' });
    } finally {
      assert.equal((await small.stop()).code, 0);
    }
  });

  test('over --publish-rate a room member is paced, never dropped: every frame arrives, in order', async () => {
    const paced = await startServer(['--workers', '1', '--publish-rate', '10']);
    try {
      const url = `ws://127.0.0.1:${paced.port}/?room=paced`;
      const a = await open(url), b = await open(url);
      const got = [];
      b.on('message', (d) => got.push(d.toString()));
      const t0 = Date.now();
      for (let i = 0; i < 30; i++) a.send(`m${i}`); // a burst of 10 fits the bucket, 20 more take ~2 s
      await waitFor(() => got.length === 30, { timeout: 10000, what: 'all 30 frames' });
      const took = Date.now() - t0;
      assert.deepEqual(got, Array.from({ length: 30 }, (_, i) => `m${i}`));
      assert.ok(took >= 1500, `paced to the rate (${took} ms for 30 frames at 10/s with a burst of 10)`);
      a.close(); b.close();
    } finally {
      assert.equal((await paced.stop()).code, 0);
    }
  });

  test('the leave message carries a client-given id as valid JSON (quotes, backslashes, numbers)', async () => {
    const url = `ws://127.0.0.1:${srv.port}/?room=leave-ids`;
    const watcher = await open(url);
    const got = [];
    watcher.on('message', (d) => got.push(d.toString()));
    for (const id of ['a"b\\c\n', 42]) {
      const m = await open(url);
      m.send(JSON.stringify({ type: 'presence', user: { id } }));
      await waitFor(() => got.length === 1, { what: 'the presence frame' });
      m.close();
      await waitFor(() => got.length === 2, { what: 'the leave message' });
      assert.deepEqual(JSON.parse(got[1]), { type: 'leave', userId: id });
      got.length = 0;
    }
    watcher.close();
  });

  test('2,000 clients in 500 rooms of 4: every message reaches the other 3 and nobody else', { timeout: 120000 }, async () => {
    const R = 500, M = 4, PER = 3;
    const rooms = [];
    for (let r = 0; r < R; r++) {
      const members = [];
      for (let k = 0; k < M; k++) members.push(open(`ws://127.0.0.1:${srv.port}/chat?room=load-${r}`));
      rooms.push(members);
      if (r % 50 === 49) await Promise.all(rooms.flat());
    }
    const socks = await Promise.all(rooms.map((m) => Promise.all(m)));
    const wrong = [];
    const counts = socks.map((ms) => ms.map(() => 0));
    socks.forEach((ms, r) => ms.forEach((w, k) => w.on('message', (d) => {
      const [rr, from] = d.toString().split(':').map(Number);
      if (rr !== r || from === k) wrong.push([r, k, d.toString()]);
      counts[r][k]++;
    })));
    await sleep(200);
    for (let i = 0; i < PER; i++) socks.forEach((ms, r) => ms.forEach((w, k) => w.send(`${r}:${k}:${i}`)));
    const want = PER * (M - 1);
    await waitFor(() => counts.every((rc) => rc.every((n) => n >= want)), { timeout: 60000, what: 'all room deliveries' });
    await sleep(200);
    assert.deepEqual(wrong, [], 'no cross-room or self deliveries');
    assert.ok(counts.every((rc) => rc.every((n) => n === want)), 'each member got exactly 3 x 3 messages');
    socks.flat().forEach((w) => w.terminate());
  });
});
