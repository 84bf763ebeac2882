// Slowloris: 1,000 connections trickle a request head one small piece at a
// time and never finish it. Each is cut with 408 request_timeout at the
// header timeout (2 s, measured from its first byte; trickling does not extend
// it), while healthy clients keep being served during the attack: new HTTP
// requests, a publisher, and an SSE reader and a WebSocket client that see
// every message. The attackers come from ten loopback addresses, as a small
// botnet would, so --max-conns-per-ip (set as in production) does not stop
// them first: this suite is about the header timeout.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { sleep, sseConnect, startServer, waitFor } from './lib/server.mjs';

const ATTACKERS = 1000;
const ADDRESSES = 10;
const HEADER_TIMEOUT_MS = 2000;

let srv;
before(async () => {
  srv = await startServer(['--workers', '2', '--header-timeout', '2s', '--max-conns-per-ip', '128']);
});
after(async () => {
  const r = await srv.stop();
  assert.equal(r.code, 0, `server exits 0 on SIGTERM:\n${srv.log().slice(-2000)}`);
});

// The head an attacker sends, a few bytes per trickle step, never ending.
const HEAD = 'GET /healthz HTTP/1.1\r\nHost: x\r\n' + Array.from({ length: 400 }, (_, i) => `X-Slow-${i}: ${i}\r\n`).join('');

function openAttacker(i) {
  return new Promise((resolve) => {
    const a = { sock: null, connectedAt: 0, firstByteAt: 0, closedAt: 0, data: '', pos: 0 };
    a.sock = net.connect({ port: srv.port, host: '127.0.0.1', localAddress: `127.0.2.${1 + (i % ADDRESSES)}` });
    a.sock.setEncoding('latin1');
    a.sock.on('data', (d) => { a.data += d; });
    a.sock.on('error', () => {});
    a.sock.on('close', () => { a.closedAt = Date.now(); });
    a.sock.once('connect', () => {
      a.connectedAt = a.firstByteAt = Date.now();
      a.sock.write(HEAD.slice(0, 4));
      a.pos = 4;
      resolve(a);
    });
  });
}

test('1,000 trickling connections are cut at the header timeout while healthy clients are served', async () => {
  // Healthy clients first: an SSE reader and a WebSocket subscriber.
  const reader = await sseConnect(srv.port, '/v1/sse?channel=calm').ready;
  assert.equal(reader.status, 200);
  const wsInbox = [];
  const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/v1/ws`);
  ws.on('message', (d) => wsInbox.push(JSON.parse(d.toString())));
  await new Promise((r, j) => { ws.once('open', r); ws.once('error', j); });
  ws.send(JSON.stringify({ op: 'subscribe', channel: 'calm', ref: 1 }));
  await waitFor(() => wsInbox.some((m) => m.op === 'ok'), { what: 'WebSocket subscribed' });

  // Meanwhile, from before the attack until after it: new clients every
  // 50 ms (a health check and a publish each).
  const served = [];
  const failures = [];
  let published = 0;
  let attackOver = false;
  const healthy = (async () => {
    while (!attackOver) {
      const t0 = Date.now();
      try {
        const h = await fetch(`${srv.base}/healthz`);
        assert.equal(h.status, 200);
        await h.text();
        const p = await fetch(`${srv.base}/v1/channels/calm/messages`, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ data: `m${published}` }),
        });
        assert.equal(p.status, 201);
        await p.text();
        published++;
        served.push({ at: Date.now(), ms: Date.now() - t0 });
      } catch (e) {
        failures.push(String(e));
      }
      await sleep(50);
    }
  })();
  await waitFor(() => served.length >= 3, { what: 'healthy traffic before the attack' });

  // The attack: connect everyone at once (the listen backlog is 4096), then
  // one timer trickles a few bytes to every connection every 200 ms.
  const attackers = await Promise.all(Array.from({ length: ATTACKERS }, (_, i) => openAttacker(i)));
  const attackReady = Date.now();
  const trickle = setInterval(() => {
    for (const a of attackers) {
      if (a.closedAt || a.pos >= HEAD.length) continue;
      a.sock.write(HEAD.slice(a.pos, a.pos + 3));
      a.pos += 3;
    }
  }, 200);

  await waitFor(() => attackers.every((a) => a.closedAt), { timeout: 20000, interval: 100, what: 'every slow connection to be cut' });
  clearInterval(trickle);
  attackOver = true;
  await healthy;

  // Every attacker got 408 request_timeout, not before the timeout.
  const statuses = new Map();
  for (const a of attackers) {
    const s = a.data.slice(9, 12) || 'none';
    statuses.set(s, (statuses.get(s) ?? 0) + 1);
  }
  assert.deepEqual([...statuses], [['408', ATTACKERS]], 'every slow connection answered 408');
  assert.ok(attackers.every((a) => a.data.includes('"code":"request_timeout"')));
  const lifetimes = attackers.map((a) => a.closedAt - a.firstByteAt).sort((x, y) => x - y);
  assert.ok(lifetimes[0] >= HEADER_TIMEOUT_MS - 100, `none cut early (shortest ${lifetimes[0]} ms)`);
  // The trickle would take 400 header lines x 200 ms per 3 bytes to finish:
  // minutes. Cutting all of them within a few seconds is the header timeout
  // at work, not the trickle ending.
  assert.ok(lifetimes.at(-1) < 4 * HEADER_TIMEOUT_MS, `all cut near the timeout (longest ${lifetimes.at(-1)} ms)`);

  // Healthy clients were served while the slow connections were still open.
  const firstCut = Math.min(...attackers.map((a) => a.closedAt));
  assert.deepEqual(failures, []);
  const during = served.filter((s) => s.at >= attackReady && s.at < firstCut);
  assert.ok(during.length >= 3, `healthy requests were served while all 1,000 were held (${during.length} of ${served.length})`);
  await waitFor(() => reader.events.filter((e) => /^m\d+$/.test(e.data)).length === published, { what: 'the SSE reader to get every message' });
  await waitFor(() => wsInbox.filter((m) => m.op === 'message').length === published, { what: 'the WebSocket client to get every message' });
  assert.equal(reader.closed, false);
  assert.equal(ws.readyState, WebSocket.OPEN);

  const metrics = await (await fetch(`${srv.base}/metrics`)).text();
  const cut = Number(metrics.match(/switchboard_limit_refusals_total\{limit="header_timeout"\} (\d+)/)[1]);
  assert.ok(cut >= ATTACKERS, `the timeouts are counted (${cut})`);
  reader.close();
  ws.close();
});
