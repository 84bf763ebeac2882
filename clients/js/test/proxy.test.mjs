// Issue 5: a TCP proxy between client and server cuts connections, delays and
// black-holes traffic. A black hole sends no RST and no FIN: only the
// heartbeat can tell. The client must see the silent drop within two
// heartbeats and recover with nothing lost or doubled.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Proxy, Server, WebSocket, sdk, sleep, waitFor } from './lib/harness.mjs';

const HB = 1000; // the server's SSE heartbeat (--heartbeat 1s) and the client's WebSocket ping interval
let srv, createClient;
before(async () => {
  ({ createClient } = await sdk());
  srv = await new Server(['--heartbeat', '1s']).start();
});
after(async () => {
  await srv?.stop();
});

/** Publishes n, n+1, ... every `ms` straight to the server until stopped. */
function publisher(channel, ms = 40) {
  let n = 0;
  let stop = false;
  const done = (async () => {
    while (!stop) {
      await srv.publish(channel, { n: n++ });
      await sleep(ms);
    }
  })();
  return { stop: async () => { stop = true; await done; return n; } };
}

for (const tr of ['ws', 'sse']) {
  test(`${tr}: a black-holed connection is detected within 2 heartbeats and recovered with no loss`, { timeout: 60000 }, async (t) => {
    const proxy = await new Proxy(srv.port).listen();
    const channel = `bh-${tr}`;
    const c = createClient({
      url: proxy.base,
      transports: tr,
      WebSocket,
      heartbeatMs: HB,
      sseHeartbeatMs: HB,
      requestTimeoutMs: 1500,
      reconnect: { baseMs: 300 },
    });
    const got = [];
    const changes = [];
    c.onStatus((s) => changes.push({ at: Date.now(), status: s.status, reason: s.reason }));
    c.subscribe(channel, (m) => got.push(m.data.n));
    // Subscribed, not only open: the subscribe reply (or SSE's first id)
    // sets the cursor; publishing earlier races it on a loaded machine.
    await waitFor(() => c.status.status === 'open' && c.cursor(channel) !== undefined, { what: 'subscribed' });
    const pub = publisher(channel);
    await waitFor(() => got.length >= 10);
    const lastBefore = got.length;
    const holeAt = Date.now();
    proxy.blackhole();
    await waitFor(() => c.status.status !== 'open', { timeout: 4 * HB, what: 'drop detection' });
    const detect = changes.find((x) => x.at >= holeAt && x.status !== 'open');
    const ms = detect.at - holeAt;
    t.diagnostic(`${tr}: silent drop detected after ${ms} ms (${detect.reason}), heartbeat ${HB} ms`);
    assert.equal(detect.reason, 'heartbeat_timeout');
    assert.ok(ms <= 2 * HB + 300, `detected within 2 heartbeats, give or take timer scheduling (${ms} ms)`);
    assert.ok(got.length - lastBefore < 5, 'nothing came through the hole');
    await sleep(1000); // reconnect attempts into the hole time out
    proxy.restore();
    await waitFor(() => c.status.status === 'open', { timeout: 15000, what: 'reopen' });
    const total = await pub.stop();
    // On a timeout the comparison below says what is missing or doubled.
    await waitFor(() => got.length >= total, { timeout: 10000, what: 'all messages' }).catch(() => {});
    await sleep(200);
    assert.deepEqual(got, [...Array(total).keys()], `every message once, in order (status ${JSON.stringify(c.status)})`);
    c.close();
    await proxy.close();
  });

  test(`${tr}: cut connections and a 300 ms delay: reconnects at once, nothing lost, no false alarm`, { timeout: 60000 }, async (t) => {
    const proxy = await new Proxy(srv.port).listen();
    const channel = `cut-${tr}`;
    const c = createClient({
      url: proxy.base,
      transports: tr,
      WebSocket,
      heartbeatMs: HB,
      sseHeartbeatMs: HB,
      requestTimeoutMs: 3000,
    });
    const got = [];
    const reasons = [];
    c.onStatus((s) => s.status !== 'open' && s.reason && reasons.push(s.reason));
    c.subscribe(channel, (m) => got.push(m.data.n));
    // Subscribed, not only open: the subscribe reply (or SSE's first id)
    // sets the cursor; publishing earlier races it on a loaded machine.
    await waitFor(() => c.status.status === 'open' && c.cursor(channel) !== undefined, { what: 'subscribed' });
    const pub = publisher(channel, 25);
    for (let i = 0; i < 3; i++) {
      await waitFor(() => got.length >= (i + 1) * 15, { timeout: 15000, what: `messages before cut ${i}` });
      proxy.cut();
      await sleep(50);
      await waitFor(() => c.status.status === 'open', { timeout: 15000, what: `reopen after cut ${i}` });
    }
    // A slow but alive path is not a dead one.
    proxy.delayMs = 300;
    const before = reasons.length;
    await sleep(3 * HB);
    assert.equal(reasons.length, before, `no reconnect on a delayed path (${reasons.slice(before)})`);
    proxy.delayMs = 0;
    const total = await pub.stop();
    // On a timeout the comparison below says what is missing or doubled.
    await waitFor(() => got.length >= total, { timeout: 10000, what: 'all messages' }).catch(() => {});
    await sleep(200);
    assert.deepEqual(got, [...Array(total).keys()], `every message once, in order (status ${JSON.stringify(c.status)})`);
    t.diagnostic(`${tr}: ${total} messages over 3 cuts; drop reasons: ${[...new Set(reasons)].join(', ')}`);
    c.close();
    await proxy.close();
  });
}
