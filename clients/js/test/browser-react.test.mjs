// Issue 5, headless Chromium: a page using the React hooks shows the badge go
// Connected -> Reconnecting -> Connected across a server restart, and keeps its
// message list whole (messages published before the crash and while the page
// was reconnecting each appear once, in order). Also: usePresence between two
// browsers, useAIStream, and the badge across the browser going offline.
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Server, sleep, waitFor } from './lib/harness.mjs';
import { launch, openPage, reactBundle } from './lib/browser.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
let srv, browser, script, presenceScript;
before(async () => {
  srv = await new Server(['--heartbeat', '1s', '--ai-demo'], { durable: true }).start();
  browser = await launch();
  script = await reactBundle(path.join(here, 'pages/react-app.tsx'));
  presenceScript = await reactBundle(path.join(here, 'pages/react-presence.tsx'));
});
after(async () => {
  await browser?.close();
  await srv?.stop();
  srv?.cleanup();
});

for (const transport of ['auto', 'sse']) {
  test(`React badge and list across a server restart (${transport})`, { timeout: 90000 }, async (t) => {
    const channel = 'feed';
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (e) => console.error('pageerror:', e.message));
    await page.goto(`${srv.base}/healthz`);
    const opts = { sseHeartbeatMs: 1000, heartbeatMs: 1000, requestTimeoutMs: 3000 };
    if (transport !== 'auto') opts.transports = transport;
    await page.evaluate((o) => {
      document.documentElement.innerHTML = '<head></head><body><div id="root"></div></body>';
      window.__SB_OPTS__ = o;
    }, opts);
    await page.addScriptTag({ content: script });
    const badge = () => page.evaluate(() => document.querySelector('[role="status"]')?.textContent);
    const list = () => page.evaluate(() => [...document.querySelectorAll('#list li')].map((li) => Number(li.textContent)));
    await waitFor(async () => (await badge()) === 'Connected', { timeout: 20000, what: 'Connected' });
    await sleep(300);
    const base = (await srv.history(channel)).messages.length;
    let n = base;
    for (; n < base + 10; n++) await srv.publish(channel, { n });
    await waitFor(async () => (await list()).length === 10, { what: 'first 10' });
    await srv.kill();
    await waitFor(async () => (await badge()) === 'Reconnecting...', { timeout: 10000, what: 'Reconnecting...' });
    await sleep(500);
    await srv.start();
    // Published while the page is still reconnecting.
    for (; n < base + 20; n++) await srv.publish(channel, { n });
    await waitFor(async () => (await badge()) === 'Connected', { timeout: 20000, what: 'Connected again' });
    for (; n < base + 25; n++) await srv.publish(channel, { n });
    await waitFor(async () => (await list()).length >= 25, { timeout: 10000, what: 'whole list' });
    await sleep(300);
    const log = await page.evaluate(() => window.badgeLog);
    t.diagnostic(`badge: ${log.join(' -> ')}`);
    const i = log.indexOf('Connected');
    const j = log.indexOf('Reconnecting...', i);
    const k = log.indexOf('Connected', j);
    assert.ok(i >= 0 && j > i && k > j, `Connected -> Reconnecting... -> Connected (${log.join(' -> ')})`);
    assert.deepEqual(await list(), [...Array(25).keys()].map((x) => x + base), 'the list is whole: each message once, in order');
    assert.equal(await page.evaluate(() => document.getElementById('status').textContent), 'open');
    await context.close();
  });
}

async function presencePage(user) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('pageerror:', e.message));
  await page.goto(`${srv.base}/healthz`);
  await page.evaluate((u) => {
    document.documentElement.innerHTML = '<head></head><body><div id="root"></div></body>';
    window.__USER__ = u;
    window.__SB_OPTS__ = { heartbeatMs: 1000, requestTimeoutMs: 3000 };
  }, user);
  await page.addScriptTag({ content: presenceScript });
  return { context, page };
}

test('usePresence between two browsers, useAIStream, and the badge when the browser goes offline', { timeout: 90000 }, async () => {
  const a = await presencePage({ id: 'alice', name: 'Alice', color: '#3b82f6' });
  const b = await presencePage({ id: 'bob', name: 'Bob', color: '#ef4444' });
  const others = (p) => p.page.evaluate(() => JSON.parse(document.getElementById('others').textContent || '[]'));
  const badge = (p) => p.page.evaluate(() => document.querySelector('[role="status"]')?.textContent);
  await waitFor(async () => (await others(b)).length === 1 && (await others(a)).length === 1, { timeout: 20000, what: 'each sees the other' });
  assert.deepEqual((await others(b))[0], { id: 'alice', name: 'Alice', cursor: null });
  await a.page.waitForFunction(() => typeof window.move === 'function');
  for (let x = 0; x <= 40; x++) {
    await a.page.evaluate((v) => window.move({ x: v, y: 2 * v }), x);
  }
  await waitFor(async () => (await others(b))[0]?.cursor?.x === 40, { what: "Alice's last cursor at Bob" });
  assert.deepEqual((await others(b))[0].cursor, { x: 40, y: 80 });

  // AI answer streamed into the page.
  await b.page.waitForFunction(() => typeof window.ask === 'function');
  await b.page.evaluate(() => window.ask('Say something'));
  await waitFor(async () => b.page.evaluate(() => document.getElementById('ai').getAttribute('aria-busy') === 'true'), { what: 'streaming' });
  await waitFor(async () => b.page.evaluate(() => document.getElementById('ai').getAttribute('aria-busy') === 'false'), { timeout: 30000, what: 'answer complete' });
  const answer = await b.page.evaluate(() => document.getElementById('ai').textContent);
  assert.ok(answer.length > 100, 'an answer was shown');
  assert.equal(await b.page.evaluate(() => document.getElementById('ai').dataset.error), '');

  // The browser goes offline and back.
  await b.context.setOffline(true);
  await waitFor(async () => (await badge(b)) === 'Offline', { what: 'Offline' });
  await b.context.setOffline(false);
  await waitFor(async () => (await badge(b)) === 'Connected', { timeout: 10000, what: 'Connected after online' });

  // Alice closes her tab: she leaves Bob's list.
  await a.context.close();
  await waitFor(async () => (await others(b)).length === 0, { timeout: 15000, what: 'Alice gone' });
  await b.context.close();
});
