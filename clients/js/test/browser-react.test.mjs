// Issue 5, headless Chromium: a page using the React hooks shows the badge go
// Connected -> Reconnecting -> Connected across a server restart, and keeps its
// message list whole (messages published before the crash and while the page
// was reconnecting each appear once, in order).
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Server, sleep, waitFor } from './lib/harness.mjs';
import { launch, openPage, reactBundle } from './lib/browser.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
let srv, browser, script;
before(async () => {
  srv = await new Server(['--heartbeat', '1s'], { durable: true }).start();
  browser = await launch();
  script = await reactBundle(path.join(here, 'pages/react-app.tsx'));
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
