// Issue 5: 1,000 clients reconnecting after a server restart spread their
// attempts over time (the histogram of attempts per 100 ms is reported), and
// none retries faster than the base delay: no thundering herd.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Server, WebSocket, sdk, sleep, waitFor } from './lib/harness.mjs';

const N = 1000;
const BASE = 1000;
let srv, createClient;
before(async () => {
  ({ createClient } = await sdk());
  srv = await new Server(['--max-conns-per-ip', '0']).start();
});
after(async () => {
  await srv?.stop();
});

test(`${N} clients reconnecting after a restart spread out, none faster than the base`, { timeout: 120000 }, async (t) => {
  const clients = [];
  for (let i = 0; i < N; i++) {
    const attempts = [];
    class CountingWebSocket extends WebSocket {
      constructor(url) {
        attempts.push(Date.now());
        super(url);
      }
    }
    const got = [];
    const c = createClient({ url: srv.base, transports: 'ws', WebSocket: CountingWebSocket, heartbeatMs: 10000 });
    c.subscribe('herd', (m) => got.push(m.data));
    clients.push({ c, attempts, got });
    if (i % 100 === 99) await sleep(50);
  }
  await waitFor(() => clients.every((x) => x.c.status.status === 'open'), { timeout: 60000, what: 'all connected' });
  // Open is not subscribed: a live subscription whose ok never arrived has no
  // cursor, so it rightly comes back live and would miss what was published
  // before its new subscribe. Crash only once every client holds its cursor.
  await waitFor(() => clients.every((x) => x.c.cursor('herd') !== undefined), { timeout: 60000, what: 'all subscribed' });
  await sleep(500);
  const t0 = Date.now();
  await srv.kill();
  await sleep(2500);
  await srv.start();
  const up = Date.now() - t0;
  await waitFor(() => clients.every((x) => x.c.status.status === 'open'), { timeout: 60000, what: 'all reconnected' });
  const back = Date.now() - t0;

  const after0 = clients.map((x) => x.attempts.filter((a) => a >= t0).map((a) => a - t0));
  const all = after0.flat().sort((a, b) => a - b);
  const first = after0.map((a) => a[0]);
  const minFirst = Math.min(...first);
  let minGap = Infinity;
  for (const a of after0) for (let i = 1; i < a.length; i++) minGap = Math.min(minGap, a[i] - a[i - 1]);
  const buckets = new Map();
  for (const a of all) buckets.set(Math.floor(a / 100), (buckets.get(Math.floor(a / 100)) ?? 0) + 1);
  const maxBucket = Math.max(...buckets.values());
  const lines = [...buckets.keys()].sort((a, b) => a - b).map((b) => {
    const n = buckets.get(b);
    return `${String(b * 100).padStart(5)}-${String(b * 100 + 99).padStart(5)} ms ${String(n).padStart(4)} ${'#'.repeat(Math.ceil(n / 10))}`;
  });
  t.diagnostic(`server down at 0 ms, listening again at ${up} ms, all ${N} clients open at ${back} ms`);
  t.diagnostic(`${all.length} attempts; first attempt at ${minFirst} ms; smallest gap between two attempts of one client ${minGap} ms; busiest 100 ms: ${maxBucket}`);
  t.diagnostic('attempts per 100 ms after the crash:');
  for (const l of lines) t.diagnostic(l);

  assert.ok(minFirst >= BASE - 5, `no client retried before the base delay (${minFirst} ms)`);
  assert.ok(minGap >= BASE - 5, `no client retried faster than the base (${minGap} ms)`);
  assert.ok(maxBucket <= N * 0.5, `spread: at most half the clients in one 100 ms (${maxBucket})`);
  assert.ok(all.at(-1) - all[0] >= 1000, 'attempts span more than a second');

  await srv.publish('herd', 'after');
  try {
    await waitFor(() => clients.every((x) => x.got.includes('after')), { timeout: 20000, what: 'all resubscribed' });
  } catch (e) {
    const missing = clients.filter((x) => !x.got.includes('after'));
    t.diagnostic(`${missing.length} clients without the message; first: ` + JSON.stringify(missing.slice(0, 5).map((x) => ({
      status: x.c.status.status, cursor: x.c.cursor('herd'), got: x.got, attempts: x.attempts.length }))));
    t.diagnostic('channel: ' + JSON.stringify(await (await fetch(`${srv.base}/v1/channels/herd`)).json()));
    t.diagnostic('metrics: ' + JSON.stringify(await (await fetch(`${srv.base}/api/metrics`)).json()));
    throw e;
  }
  for (const x of clients) x.c.close();
});
