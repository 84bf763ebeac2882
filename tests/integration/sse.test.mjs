// Server-Sent Events against the real binary with the `eventsource` npm client
// and raw sockets: named events, resume across channels, resets, heartbeats,
// lifetimes, slow readers, many readers, graceful drain.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventSource } from 'eventsource';
import { publish, sleep, sseConnect, startServer, waitFor } from './lib/server.mjs';

describe('SSE', () => {
  let srv;
  before(async () => { srv = await startServer(['--workers', '2', '--heartbeat', '1s', '--history-size', '5000']); });
  after(async () => { assert.equal((await srv.stop()).code, 0); });

  test('headers, first bytes, and named events through the eventsource client', async () => {
    const s = await sseConnect(srv.port, '/v1/sse?channel=hdr').ready;
    assert.equal(s.status, 200);
    assert.match(s.head, /content-type: text\/event-stream/i);
    assert.match(s.head, /cache-control: no-cache, no-transform/i);
    assert.match(s.head, /x-accel-buffering: no/i);
    assert.doesNotMatch(s.head, /content-encoding/i, 'never compressed');
    await waitFor(() => s.retry !== null && s.comments > 0, { what: 'retry and comment' });
    s.close();

    const es = new EventSource(`${srv.base}/v1/sse?channel=notify`);
    const got = [];
    es.addEventListener('notification', (e) => got.push({ data: JSON.parse(e.data), id: e.lastEventId }));
    const plain = [];
    es.onmessage = (e) => plain.push(e.data);
    await new Promise((r) => { es.onopen = r; });
    const a = await publish(srv.base, 'notify', { event: 'notification', data: { type: 'x', payload: 1 } });
    await publish(srv.base, 'notify', { data: 'plain text' });
    await publish(srv.base, 'notify', { data: 'multi\nline' });
    await waitFor(() => got.length === 1 && plain.length === 2, { what: 'events' });
    es.close();
    assert.deepEqual(got[0].data, { type: 'x', payload: 1 });
    assert.equal(got[0].id, a.body.id, 'the SSE id is the message id');
    assert.deepEqual(plain, ['plain text', 'multi\nline'], 'JSON strings arrive as bare text, lines joined back');
  });

  test('disconnect mid-stream and resume with Last-Event-ID on 3 channels: every message once, in order', async () => {
    const chans = ['r1', 'r2', 'r3'];
    const q = chans.map((c) => `channel=${c}`).join('&');
    const seen = [];
    let s = await sseConnect(srv.port, `/v1/sse?${q}&envelope=1`, { onEvent: (e) => seen.push(JSON.parse(e.data)) }).ready;
    const sent = [];
    let stop = false;
    const pub = (async () => {
      for (let i = 0; !stop && i < 600; i++) {
        const ch = chans[i % 3];
        const r = await publish(srv.base, ch, { data: { i, ch } });
        sent.push({ id: r.body.id, ch, i });
      }
    })();
    await waitFor(() => seen.length >= 100, { what: 'first hundred' });
    s.close();
    const lastId = s.lastId;
    await sleep(150); // messages keep flowing while disconnected
    s = await sseConnect(srv.port, `/v1/sse?${q}&envelope=1`, { headers: { 'Last-Event-ID': lastId }, onEvent: (e) => seen.push(JSON.parse(e.data)) }).ready;
    await pub;
    await waitFor(() => seen.length >= sent.length, { timeout: 10000, what: `all ${sent.length} messages (have ${seen.length})` });
    await sleep(100);
    s.close();
    const ids = seen.map((m) => m.id);
    assert.equal(new Set(ids).size, ids.length, 'no duplicates');
    assert.deepEqual(ids, sent.map((x) => x.id), 'exactly the published sequence, in order');
    assert.ok(seen.every((m, k) => m.data.i === sent[k].i && m.channel === sent[k].ch));
  });

  test('a stream without since still resumes everything published while it was away', async () => {
    const s1 = await sseConnect(srv.port, '/v1/sse?channel=fresh').ready;
    await waitFor(() => s1.lastId !== null, { what: 'initial id' });
    const start = s1.lastId;
    s1.close();
    const r = await publish(srv.base, 'fresh', { data: 'while away' });
    const s2 = await sseConnect(srv.port, '/v1/sse?channel=fresh', { headers: { 'Last-Event-ID': start } }).ready;
    await waitFor(() => s2.events.length === 1, { what: 'missed message' });
    assert.equal(s2.events[0].id, r.body.id);
    s2.close();
  });

  test('a resume point older than kept history gets event: reset, then the kept history', async () => {
    const small = await startServer(['--history-size', '3']);
    try {
      const first = await publish(small.base, 'gap', { data: 0 });
      for (let i = 1; i < 10; i++) await publish(small.base, 'gap', { data: i });
      const s = await sseConnect(small.port, `/v1/sse?channel=gap&since=${first.body.id}`).ready;
      await waitFor(() => s.events.length === 4, { what: 'reset + 3 kept' });
      assert.equal(s.events[0].event, 'reset');
      assert.deepEqual(JSON.parse(s.events[0].data), { channel: 'gap', reason: 'history_gap' });
      assert.deepEqual(s.events.slice(1).map((e) => e.data), ['7', '8', '9']);
      s.close();
      const h = await (await fetch(`${small.base}/v1/channels/gap/messages?since=${first.body.id}`)).json();
      assert.equal(h.reset, true, 'history says reset too');
    } finally {
      await small.stop();
    }
  });

  test('a cursor from before a restart (memory mode) gets a reset, not silence', async () => {
    const a = await startServer([]);
    const r = await publish(a.base, 'restart', { data: 'old' });
    await a.stop();
    const b = await startServer([]);
    try {
      await publish(b.base, 'restart', { data: 'new' });
      const s = await sseConnect(b.port, '/v1/sse?channel=restart', { headers: { 'Last-Event-ID': r.body.id } }).ready;
      await waitFor(() => s.events.length >= 2, { what: 'reset + new' });
      assert.equal(s.events[0].event, 'reset');
      assert.equal(s.events[1].data, 'new');
      s.close();
    } finally {
      await b.stop();
    }
  });

  test('heartbeat comments arrive on an idle stream', async () => {
    const s = await sseConnect(srv.port, '/v1/sse?channel=idle').ready;
    const c0 = s.comments;
    await sleep(2300);
    assert.ok(s.comments - c0 >= 1, `heartbeats seen: ${s.comments - c0}`);
    s.close();
  });

  test('a client closing is noticed at once and its subscription freed', async () => {
    const s = await sseConnect(srv.port, '/v1/sse?channel=gone').ready;
    await waitFor(async () => (await (await fetch(`${srv.base}/v1/channels/gone`)).json()).subscribers === 1, { what: 'subscribed' });
    s.close();
    await waitFor(async () => (await (await fetch(`${srv.base}/v1/channels/gone`)).json()).subscribers === 0, { timeout: 1000, what: 'freed' });
  });

  test('1,000 SSE clients on one channel each receive all 1,000 messages in order', { timeout: 120000 }, async () => {
    const N = 1000, M = 1000;
    const clients = [];
    const counts = new Array(N).fill(0);
    const bad = [];
    for (let i = 0; i < N; i++) {
      const k = i;
      clients.push(sseConnect(srv.port, '/v1/sse?channel=fan', {
        onEvent: (e) => { if (Number(e.data) !== counts[k]) bad.push([k, e.data, counts[k]]); counts[k]++; },
      }).ready);
      if (i % 100 === 99) await Promise.all(clients.slice(i - 99));
    }
    const all = await Promise.all(clients);
    await waitFor(async () => (await (await fetch(`${srv.base}/v1/channels/fan`)).json()).subscribers === N, { what: 'all subscribed' });
    for (let j = 0; j < M; j++) await publish(srv.base, 'fan', { data: j });
    await waitFor(() => counts.every((c) => c === M), { timeout: 60000, what: `all deliveries (min ${Math.min(...counts)})` });
    all.forEach((s) => s.close());
    assert.deepEqual(bad.slice(0, 5), [], 'every client saw 0..999 in order');
  });
});

describe('SSE limits and lifecycle', () => {
  test('--sse-max-lifetime ends streams cleanly and the eventsource client resumes with no loss', async () => {
    const srv = await startServer(['--sse-max-lifetime', '1s', '--sse-retry', '100ms']);
    try {
      const es = new EventSource(`${srv.base}/v1/sse?channel=life`);
      const got = [];
      es.onmessage = (e) => got.push(Number(e.data));
      await new Promise((r) => { es.onopen = r; });
      for (let i = 0; i < 30; i++) { await publish(srv.base, 'life', { data: i }); await sleep(100); }
      await waitFor(() => got.length === 30, { timeout: 5000, what: 'all 30' });
      es.close();
      assert.deepEqual(got, [...Array(30).keys()], 'nothing lost or doubled across the forced reconnects');
    } finally {
      await srv.stop();
    }
  });

  test('slow reader: disconnect policy cuts a reader that stops reading, and counts it', async () => {
    const srv = await startServer(['--max-output', '64k']);
    try {
      const s = await sseConnect(srv.port, '/v1/sse?channel=slow').ready;
      s.sock.pause(); // stop reading: the kernel buffers fill, then our queue
      // Loopback socket buffers hold several MB; publish well past them.
      const big = 'x'.repeat(60000);
      for (let i = 0; i < 800 && !s.closed; i++) await publish(srv.base, 'slow', { data: big });
      s.sock.resume();
      await waitFor(() => s.closed, { timeout: 5000, what: 'slow reader cut' });
      const m = await (await fetch(`${srv.base}/api/metrics`)).json();
      assert.ok(m.slowDisconnects >= 1);
      const prom = await (await fetch(`${srv.base}/metrics`)).text();
      assert.match(prom, /switchboard_channel_slow_total\{channel="slow",policy="disconnect"\} [1-9]/);
    } finally {
      await srv.stop();
    }
  });

  test('slow reader: conflate policy keeps only the newest pending message and the last one arrives', async () => {
    const srv = await startServer(['--max-output', '64k', '--slow-policy', 'cursor:*=conflate,*=disconnect']);
    try {
      const s = await sseConnect(srv.port, '/v1/sse?channel=cursor:doc1').ready;
      s.sock.pause();
      const pad = 'y'.repeat(40000);
      let last;
      for (let i = 0; i < 600; i++) last = (await publish(srv.base, 'cursor:doc1', { data: { i, pad } })).body.id;
      s.sock.resume();
      await waitFor(() => s.events.some((e) => e.id === last), { timeout: 5000, what: 'newest position' });
      assert.equal(s.closed, false, 'a conflating reader is never cut');
      assert.ok(s.events.length < 600, `conflated to ${s.events.length} messages`);
      const m = await (await fetch(`${srv.base}/api/metrics`)).json();
      assert.ok(m.slowConflated > 0);
      s.close();
    } finally {
      await srv.stop();
    }
  });

  test('SIGTERM drains: streams end with a jittered retry hint and the process exits 0', async () => {
    const srv = await startServer(['--drain-time', '1s']);
    const streams = await Promise.all(Array.from({ length: 40 }, () => sseConnect(srv.port, '/v1/sse?channel=drain').ready));
    const hints = [];
    for (const s of streams) s.sock.on('data', (d) => { const m = String(d).match(/retry: (\d+)/g); if (m) hints.push(...m); });
    const r = await srv.stop();
    assert.equal(r.code, 0);
    await waitFor(() => streams.every((s) => s.closed), { what: 'all streams closed' });
    const values = new Set(streams.map((s) => s.retry));
    assert.ok(values.size > 5, `retry hints are spread (${values.size} distinct values)`);
    assert.ok([...values].every((v) => v >= 1000 && v <= 10000));
  });
});
