// AI streams in headless Chromium against the real binary and the local test
// upstream: the seed's manual reader (its React component as published, only
// the URL changed), useChat from @ai-sdk/react with resume, and a page that
// reloads mid-answer and finishes it from the stream's channel.
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { expectedText, startUpstream } from '../integration/fixtures/upstream.mjs';
import { startServer } from '../integration/lib/server.mjs';
import { launch } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const STORY = expectedText('story');

// The seed's "manual pattern for full control", verbatim but for its URL
// (/api/chat is the seed's route; ours is /v1/ai/chat).
const SEED_CHAT_STREAM = `'use client';
import { useState, useCallback } from 'react';
export function ChatStream() {
const [response, setResponse] = useState('');
const [isStreaming, setIsStreaming] = useState(false);
const send = useCallback(async (message: string) => {
setIsStreaming(true);
setResponse('');
const res = await fetch('/v1/ai/chat', {
method: 'POST',
headers: { 'Content-Type': 'application/json' },
body: JSON.stringify({
messages: [{ role: 'user', content: message }],
}),
});
const reader = res.body?.getReader();
const decoder = new TextDecoder();
if (!reader) return;
while (true) {
const { done, value } = await reader.read();
if (done) break;
const chunk = decoder.decode(value, { stream: true });
setResponse((prev) => prev + chunk);
}
setIsStreaming(false);
}, []);
return (
<div>
<div aria-live="polite" aria-busy={isStreaming}>
{response || 'Ask me anything...'}
</div>
<button onClick={() => send('Explain streaming in Next.js')}>
Send
</button>
</div>
);
}`;

const APP = `
import React from 'react';
import { createRoot } from 'react-dom/client';
import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport } from 'ai';
import { ChatStream } from './seed-chat-stream';

function UseChat({ id, resume }: { id: string; resume: boolean }) {
  const { messages, sendMessage, status, error } = useChat({
    id, resume, transport: new DefaultChatTransport({ api: '/v1/ai/chat' }),
  });
  const last = messages.at(-1);
  const text = last?.role === 'assistant'
    ? last.parts.filter((p: any) => p.type === 'text').map((p: any) => p.text).join('') : '';
  (window as any).sb = { sendMessage, status, text, count: messages.length, error: error?.message };
  return <div id="status">{status}</div>;
}

const cfg = (window as any).__SB__;
createRoot(document.getElementById('root')!).render(
  cfg.page === 'seed' ? <ChatStream /> : <UseChat id={cfg.id} resume={cfg.resume} />,
);
`;

async function bundleApp() {
  const esbuild = await import('esbuild');
  const r = await esbuild.build({
    stdin: { contents: APP, resolveDir: here, loader: 'tsx', sourcefile: 'ai-app.tsx' },
    bundle: true, write: false, format: 'iife', target: 'es2022', jsx: 'automatic',
    define: { 'process.env.NODE_ENV': '"production"' }, logLevel: 'silent',
    plugins: [{
      name: 'seed',
      setup(b) {
        b.onResolve({ filter: /^\.\/seed-chat-stream$/ }, () => ({ path: 'seed-chat-stream', namespace: 'seed' }));
        b.onLoad({ filter: /.*/, namespace: 'seed' }, () => ({ contents: SEED_CHAT_STREAM, loader: 'tsx', resolveDir: here }));
      },
    }],
  });
  return r.outputFiles[0].text;
}

let up, srv, browser, app;
before(async () => {
  up = await startUpstream({ port: 0, delay: [3, 8] });
  srv = await startServer(['--ai-upstream', `${up.url}/v1`, '--ai-key-env', 'SB_TEST_AI_KEY', '--ai-model', 'story'], {
    env: { SB_TEST_AI_KEY: 'sk-test-switchboard' },
  });
  browser = await launch();
  app = await bundleApp();
});
after(async () => {
  await browser?.close();
  assert.equal((await srv.stop()).code, 0);
  await up?.close();
});

// A page served at a path of the server's origin (so relative URLs reach it),
// whose HTML the test supplies; it survives reloads.
async function pageAt(route, html) {
  const page = await browser.newPage();
  await page.route(`${srv.base}${route}`, (r) => r.fulfill({ status: 200, contentType: 'text/html', body: html }));
  await page.goto(`${srv.base}${route}`);
  return page;
}

const appHtml = (cfg) => `<!doctype html><html><body><div id="root"></div><script>window.__SB__=${JSON.stringify(cfg)}</script><script>${app.replace(/<\/script/g, '<\\/script')}</script></body></html>`;

test('the seed manual reader (fetch + getReader + TextDecoder) shows the whole answer', { timeout: 60000 }, async () => {
  const page = await pageAt('/seed-chat', appHtml({ page: 'seed' }));
  await page.click('button');
  await page.waitForSelector('[aria-busy="true"]');
  await page.waitForSelector('[aria-busy="false"]', { timeout: 30000 });
  const shown = await page.$eval('[aria-live]', (el) => el.textContent);
  assert.equal(shown, STORY);
  await page.close();
});

test('useChat from @ai-sdk/react streams the answer, and a second tab resumes it', { timeout: 60000 }, async () => {
  const id = `browser-chat-${Date.now()}`;
  const a = await pageAt('/use-chat-a', appHtml({ page: 'chat', id, resume: false }));
  await a.waitForFunction(() => window.sb?.status === 'ready');
  await a.evaluate(() => window.sb.sendMessage({ text: 'Tell me a story.' }));
  await a.waitForFunction(() => window.sb.text.length > 100);
  // Another tab (or this one reloaded) with useChat({ resume: true }).
  const b = await pageAt('/use-chat-b', appHtml({ page: 'chat', id, resume: true }));
  await b.waitForFunction((n) => window.sb.text.length === n && window.sb.status === 'ready', STORY.length, { timeout: 30000 });
  await a.waitForFunction(() => window.sb.status === 'ready', null, { timeout: 30000 });
  assert.equal(await a.evaluate(() => window.sb.text), STORY);
  assert.equal(await b.evaluate(() => window.sb.text), STORY);
  assert.equal(await a.evaluate(() => window.sb.error), undefined);
  await a.close();
  await b.close();
});

test('a page reloaded mid-answer finishes it from channel ai:{id} with nothing lost or doubled', { timeout: 60000 }, async () => {
  const res = await fetch(`${srv.base}/v1/ai/chat`, {
    method: 'POST', body: JSON.stringify({ messages: [{ role: 'user', content: 'story' }] }),
  });
  const id = res.headers.get('x-stream-id');
  const body = res.text();
  // The page keeps what it has shown and its cursor in sessionStorage, as an
  // app would, and resumes from the cursor when it loads again.
  const html = `<!doctype html><html><body><pre id="out"></pre><script>
    const id = ${JSON.stringify(id)};
    const text = sessionStorage.getItem('text') || '';
    const cursor = sessionStorage.getItem('cursor') || '0';
    window.loads = Number(sessionStorage.getItem('loads') || 0) + 1;
    sessionStorage.setItem('loads', String(window.loads));
    window.state = { text, done: false, deltas: 0 };
    const es = new EventSource('/v1/sse?channel=ai:' + id + '&since=' + cursor);
    es.addEventListener('delta', (e) => {
      window.state.text += JSON.parse(e.data).text;
      window.state.deltas++;
      sessionStorage.setItem('text', window.state.text);
      sessionStorage.setItem('cursor', e.lastEventId);
      document.getElementById('out').textContent = window.state.text;
    });
    es.addEventListener('done', () => { window.state.done = true; es.close(); });
  </script></body></html>`;
  const page = await pageAt('/reload', html);
  await page.waitForFunction(() => window.state.deltas >= 40);
  assert.equal(await page.evaluate(() => window.state.done), false, 'still answering at the reload');
  await page.reload();
  await page.waitForFunction(() => window.state.done, null, { timeout: 30000 });
  assert.equal(await page.evaluate(() => window.loads), 2);
  assert.equal(await page.evaluate(() => window.state.text), STORY);
  assert.equal(await page.$eval('#out', (el) => el.textContent), STORY);
  assert.equal(await body, STORY);
  await page.close();
});

test('in the text format an upstream failure breaks the body, so the reader sees an error', async () => {
  const page = await pageAt('/text-error', '<!doctype html><html><body></body></html>');
  const r = await page.evaluate(async () => {
    const res = await fetch('/v1/ai/chat', {
      method: 'POST', body: JSON.stringify({ model: 'story@reset', messages: [{ role: 'user', content: 'x' }] }),
    });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return { ended: 'normally', text };
        text += decoder.decode(value, { stream: true });
      }
    } catch (e) {
      return { ended: 'with an error', text, name: e.name };
    }
  });
  assert.equal(r.ended, 'with an error');
  assert.ok(r.text.length > 0 && STORY.startsWith(r.text), 'what came before the failure is a prefix of the answer');
  await page.close();
});
