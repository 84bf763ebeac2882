// Connection-rate limits against reconnect storms and connection cycling:
// --conn-rate-per-ip refuses one address's connections over its rate with
// 429 connection_rate_limited at accept; --accept-rate paces the whole
// server's accepts, so a storm waits in the listen backlog and nobody is
// refused, while connections already open keep being served.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { sleep, startServer, waitFor } from './lib/server.mjs';

// One request on a new connection from localAddress; resolves with the status
// line's code, the whole response and when it arrived.
function request(port, localAddress, path = '/healthz') {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress });
    let data = '';
    s.setEncoding('latin1');
    s.on('connect', () => s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
    s.on('data', (d) => { data += d; });
    // A refusal at accept may end in a reset after the answer was written.
    s.on('error', (e) => { if (!data) reject(e); });
    s.on('close', () => resolve({ status: Number(data.slice(9, 12)), data, at: performance.now() }));
  });
}

async function metric(base, name, label) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = text.match(new RegExp(`^${name}${label ? `\\{limit="${label}"\\}` : ''} (\\d+)$`, 'm'));
  assert.ok(m, `metric ${name} ${label ?? ''} is exported`);
  return Number(m[1]);
}

describe('--conn-rate-per-ip', () => {
  let srv;
  before(async () => { srv = await startServer(['--workers', '2', '--conn-rate-per-ip', '3']); });
  after(async () => {
    const r = await srv.stop();
    assert.equal(r.code, 0, srv.log().slice(-2000));
  });

  test('an address over its rate gets 429 connection_rate_limited with Retry-After; others and later ones are served', async () => {
    const before0 = await metric(srv.base, 'switchboard_limit_refusals_total', 'conn_rate');
    const rs = await Promise.all(Array.from({ length: 10 }, () => request(srv.port, '127.0.6.1')));
    const ok = rs.filter((r) => r.status === 200), refused = rs.filter((r) => r.status === 429);
    // A burst of one second's worth (3), plus at most one token refilled while
    // the ten connected.
    assert.ok(ok.length >= 3 && ok.length <= 4, rs.map((r) => r.status).join(' '));
    assert.equal(ok.length + refused.length, 10, rs.map((r) => r.status).join(' '));
    for (const r of refused) {
      assert.match(r.data, /"code":"connection_rate_limited"/);
      assert.match(r.data, /\r\nRetry-After: 1\r\n/);
    }
    assert.equal(await metric(srv.base, 'switchboard_limit_refusals_total', 'conn_rate') - before0, refused.length);
    assert.match(srv.log(), /msg="connection refused: one address connecting too fast" peer=127\.0\.6\.1 rate=3/);
    const json = await (await fetch(`${srv.base}/api/metrics`)).json();
    assert.equal(json.limitRefusals.connRate - before0, refused.length);
    // Another address has its own bucket.
    assert.equal((await request(srv.port, '127.0.6.2')).status, 200);
    // Closing the connections gave nothing back: still refused right away...
    assert.equal((await request(srv.port, '127.0.6.1')).status, 429);
    // ...and served again once the bucket has refilled.
    await sleep(1100);
    assert.equal((await request(srv.port, '127.0.6.1')).status, 200);
  });
});

describe('--accept-rate', () => {
  let srv;
  const RATE = 40, STORM = 60;
  before(async () => { srv = await startServer(['--workers', '1', '--accept-rate', String(RATE)]); });
  after(async () => {
    const r = await srv.stop();
    assert.equal(r.code, 0, srv.log().slice(-2000));
  });

  test('a storm is accepted at the rate and none is refused; an open connection is served meanwhile', async () => {
    // A client connected before the storm, on keep-alive.
    const kept = net.connect({ port: srv.port, host: '127.0.0.1' });
    kept.setEncoding('latin1');
    let keptData = '';
    kept.on('data', (d) => { keptData += d; });
    await new Promise((r) => kept.once('connect', r));
    const pauses0 = await metric(srv.base, 'switchboard_accept_pauses_total');
    await sleep(200); // the bucket refills after the metric fetches

    const t0 = performance.now();
    const storm = Promise.all(Array.from({ length: STORM }, (_, i) => request(srv.port, `127.0.7.${1 + (i % 20)}`)));
    await sleep(300);
    // Mid-storm: the kept connection is answered without waiting for the backlog.
    const asked = performance.now();
    kept.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => keptData.includes('\r\n\r\n'), { what: 'the kept connection to be answered' });
    const keptMs = performance.now() - asked;
    const rs = await storm;
    const span = Math.max(...rs.map((r) => r.at)) - t0;
    assert.deepEqual(rs.map((r) => r.status), Array(STORM).fill(200), 'every storm connection served, none refused');
    // 60 at 40 a second, with a burst of 50 ms worth (2): at least ~1.45 s.
    assert.ok(span >= 1200, `the storm took ${span.toFixed(0)} ms`);
    assert.ok(keptMs < span / 2, `the kept connection waited ${keptMs.toFixed(0)} ms of a ${span.toFixed(0)} ms storm`);
    assert.ok(await metric(srv.base, 'switchboard_accept_pauses_total') > pauses0, 'pauses are counted');
    kept.destroy();
  });
});
