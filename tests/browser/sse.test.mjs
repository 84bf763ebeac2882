// A real browser's EventSource against the real binary: named events, and
// resume after the server drops the stream (max lifetime), with nothing lost.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { publish, sleep, startServer } from '../integration/lib/server.mjs';
import { launch } from './lib.mjs';

let srv, browser;
before(async () => {
  srv = await startServer(['--sse-max-lifetime', '1s', '--sse-retry', '200ms']);
  browser = await launch();
});
after(async () => {
  await browser?.close();
  assert.equal((await srv.stop()).code, 0);
});

test('Chromium EventSource receives named events and resumes after the server drops it', { timeout: 60000 }, async () => {
  const page = await browser.newPage();
  await page.goto(`${srv.base}/healthz`); // same origin as the stream
  await page.evaluate(() => {
    window.got = [];
    window.opens = 0;
    const es = new EventSource('/v1/sse?channel=browser');
    es.onopen = () => { window.opens++; };
    es.addEventListener('notification', (e) => window.got.push({ n: JSON.parse(e.data).n, id: e.lastEventId }));
    window.es = es;
  });
  await page.waitForFunction(() => window.opens >= 1);
  const ids = [];
  for (let n = 0; n < 25; n++) {
    ids.push((await publish(srv.base, 'browser', { event: 'notification', data: { n } })).body.id);
    await sleep(120);
  }
  await page.waitForFunction(() => window.got.length >= 25, null, { timeout: 10000 });
  await sleep(300);
  const got = await page.evaluate(() => window.got);
  const opens = await page.evaluate(() => window.opens);
  assert.ok(opens >= 2, `the stream was dropped and reopened (${opens} opens)`);
  assert.deepEqual(got.map((g) => g.n), [...Array(25).keys()], 'every event once, in order');
  assert.deepEqual(got.map((g) => g.id), ids, 'lastEventId is the message id');
  await page.close();
});
