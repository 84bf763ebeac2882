// Issue 5, headless Chromium: eight tabs of one origin using SSE all receive
// every message over one shared connection, and keep receiving after the
// leader tab closes (the next tab takes over the connection).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Server, sleep, waitFor } from './lib/harness.mjs';
import { launch, openPage, sdkBundle } from './lib/browser.mjs';

let srv, browser, script;
before(async () => {
  srv = await new Server(['--heartbeat', '1s']).start();
  browser = await launch();
  script = await sdkBundle();
});
after(async () => {
  await browser?.close();
  await srv?.stop();
});

async function sseStreams() {
  const r = await fetch(`${srv.base}/api/metrics`);
  return (await r.json()).sseStreams;
}

test('eight tabs share one SSE connection, get every message once, and survive the leader closing', { timeout: 120000 }, async (t) => {
  const context = await browser.newContext();
  const pages = [];
  for (let i = 0; i < 8; i++) {
    const page = await openPage(context, srv.base, script);
    await page.evaluate(() => {
      window.got = [];
      window.client = SB.createClient({ url: location.origin, transports: 'sse', sseHeartbeatMs: 1000, requestTimeoutMs: 3000 });
      window.client.subscribe('tabs', (m) => window.got.push(m.data.n));
    });
    pages.push(page);
  }
  const state = () => Promise.all(pages.map((p) => p.evaluate(() => ({
    status: window.client.status.status,
    shared: window.client.status.shared,
    leader: window.client.isLeader,
    n: window.got.length,
  }))));
  await waitFor(async () => (await state()).every((s) => s.status === 'open'), { timeout: 20000, what: 'all tabs open' });
  await sleep(300);
  let s = await state();
  assert.equal(s.filter((x) => x.leader).length, 1, 'one leader tab');
  assert.equal(s.filter((x) => x.shared).length, 7, 'seven tabs use the leader connection');
  assert.equal(await sseStreams(), 1, 'one SSE connection for eight tabs');

  let n = 0;
  for (; n < 30; n++) await srv.publish('tabs', { n });
  // Every tab publishes too, through the leader.
  for (const p of pages) await p.evaluate((k) => window.client.publish('tabs', { n: k }), n++);
  for (; n < 50; n++) await srv.publish('tabs', { n });
  await waitFor(async () => (await state()).every((x) => x.n >= 50), { timeout: 20000, what: 'all tabs have 50' });
  for (const p of pages) assert.deepEqual(await p.evaluate(() => window.got), [...Array(50).keys()]);

  const li = s.findIndex((x) => x.leader);
  t.diagnostic(`leader was tab ${li}; closing it`);
  await pages[li].close();
  pages.splice(li, 1);
  // Published while the connection changes hands.
  for (; n < 80; n++) {
    await srv.publish('tabs', { n });
    await sleep(10);
  }
  await waitFor(async () => (await state()).filter((x) => x.leader).length === 1, { timeout: 20000, what: 'a new leader' });
  await waitFor(async () => (await state()).every((x) => x.n >= 80), { timeout: 30000, what: 'all tabs have 80' });
  for (; n < 100; n++) await srv.publish('tabs', { n });
  await waitFor(async () => (await state()).every((x) => x.n >= 100), { timeout: 20000, what: 'all tabs have 100' });
  await sleep(300);
  for (const p of pages) assert.deepEqual(await p.evaluate(() => window.got), [...Array(100).keys()], 'each once, in order');
  s = await state();
  assert.equal(s.filter((x) => x.leader).length, 1);
  await waitFor(async () => (await sseStreams()) === 1, { timeout: 5000, what: 'back to one SSE connection' });
  await context.close();
});
