// Issue 5: kill the server during a steady publish stream and start it again:
// each subscriber, on each transport, ends with every message exactly once, in
// order. The server keeps durable history (--data-dir), so nothing published
// before the crash is gone; publishes made while it is down wait in the
// publisher's outbox.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Server, WebSocket, sdk, sleep, waitFor } from './lib/harness.mjs';

let srv, createClient;
before(async () => {
  ({ createClient } = await sdk());
  srv = await new Server(['--heartbeat', '1s'], { durable: true }).start();
});
after(async () => {
  await srv?.stop();
  srv?.cleanup();
});

const fast = { WebSocket, heartbeatMs: 500, sseHeartbeatMs: 1000, longPollWaitS: 2, requestTimeoutMs: 3000 };

test('SIGKILL and restart mid-stream: ws, sse and long-poll subscribers get every message once, in order', { timeout: 90000 }, async (t) => {
  const channel = 'steady';
  const subs = ['ws', 'sse', 'longpoll'].map((tr) => {
    const c = createClient({ url: srv.base, transports: tr, ...fast });
    const got = [];
    const statuses = [];
    c.onStatus((s) => statuses.push(s.status));
    c.subscribe(channel, (m) => got.push(m.data.n));
    return { tr, c, got, statuses };
  });
  await waitFor(() => subs.every((s) => s.c.status.status === 'open'), { what: 'subscribers open' });
  await sleep(300); // long-poll and SSE subscriptions are in place
  const pub = createClient({ url: srv.base, ...fast });
  const N = 150;
  const results = [];
  let killedAt = -1;
  for (let n = 0; n < N; n++) {
    results.push(pub.publish(channel, { n }));
    if (n === 50) {
      killedAt = n;
      await srv.kill();
      t.diagnostic('server killed after publish 50');
    }
    if (n === 80) {
      await srv.start();
      t.diagnostic('server restarted after publish 80');
    }
    await sleep(20);
  }
  const acks = await Promise.all(results);
  for (let i = 1; i < acks.length; i++)
    assert.ok(BigInt(acks[i].id) > BigInt(acks[i - 1].id), `publish ids increase (${acks[i - 1].id} -> ${acks[i].id})`);
  await waitFor(() => subs.every((s) => s.got.length >= N), { timeout: 30000, what: 'every subscriber has every message' });
  await sleep(300); // nothing extra trickles in
  for (const s of subs) {
    assert.deepEqual(s.got, [...Array(N).keys()], `${s.tr}: every message once, in order`);
    assert.ok(s.statuses.includes('connecting') && s.statuses.at(-1) === 'open', `${s.tr} went through a reconnect`);
  }
  assert.ok(killedAt > 0);
  const hist = await srv.history(channel);
  assert.deepEqual(hist.messages.map((m) => m.data.n), [...Array(N).keys()], 'the server stored each publish once');
  pub.close();
  for (const s of subs) s.c.close();
});

test('a subscriber that was away while the server restarted resumes from its cursor', { timeout: 60000 }, async () => {
  const channel = 'away';
  const c = createClient({ url: srv.base, transports: 'ws', ...fast });
  const got = [];
  c.subscribe(channel, (m) => got.push(m.data.n));
  // Open is not subscribed: publishing before the subscribe reply races it
  // (a live subscription misses what came first). The reply sets the cursor.
  await waitFor(() => c.status.status === 'open' && c.cursor(channel) !== undefined, { what: 'subscribed' });
  for (let n = 0; n < 10; n++) await srv.publish(channel, { n });
  await waitFor(() => got.length === 10);
  await srv.kill();
  await sleep(200);
  await srv.start();
  // Published after the restart, before the client is back.
  for (let n = 10; n < 20; n++) await srv.publish(channel, { n });
  await waitFor(() => got.length === 20, { timeout: 20000, what: 'resumed messages' });
  assert.deepEqual(got, [...Array(20).keys()]);
  c.close();
});
