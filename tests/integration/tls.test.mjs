// TLS: https:// SSE and wss:// from Node with a certificate made in the test.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { startServer } from './lib/server.mjs';

let srv, dir, ca;
before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'sbtls-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-days', '1',
    '-keyout', `${dir}/key.pem`, '-out', `${dir}/cert.pem`], { stdio: 'ignore' });
  ca = readFileSync(`${dir}/cert.pem`);
  srv = await startServer(['--tls-cert', `${dir}/cert.pem`, '--tls-key', `${dir}/key.pem`, '--heartbeat', '1s']);
});
after(async () => {
  assert.equal((await srv.stop()).code, 0);
  rmSync(dir, { recursive: true, force: true });
});

function request(method, p, body) {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: srv.port, method, path: p, ca, headers: body ? { 'content-type': 'application/json' } : {} }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, body: data }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

test('https: publish and read history; keep-alive requests', async () => {
  const r = await request('POST', '/v1/channels/secure/messages', JSON.stringify({ data: 'over tls' }));
  assert.equal(r.status, 201);
  const h = JSON.parse((await request('GET', '/v1/channels/secure/messages')).body);
  assert.equal(h.messages[0].data, 'over tls');
  const big = 'x'.repeat(200000);
  const r2 = await request('POST', '/v1/channels/secure/messages', JSON.stringify({ data: big }));
  assert.equal(r2.status, 201, 'a large body spans many TLS records');
  const h2 = JSON.parse((await request('GET', '/v1/channels/secure/messages?limit=1000')).body);
  assert.equal(h2.messages.at(-1).data.length, big.length);
});

test('https SSE stream receives events and heartbeats', async () => {
  const events = [];
  let hb = 0;
  const req = https.get({ host: '127.0.0.1', port: srv.port, path: '/v1/sse?channel=secure-sse', ca }, (res) => {
    assert.equal(res.statusCode, 200);
    res.setEncoding('utf8');
    res.on('data', (d) => {
      for (const m of d.matchAll(/^data: (.*)$/gm)) events.push(m[1]);
      hb += (d.match(/^: hb$/gm) || []).length;
    });
  });
  await new Promise((r) => setTimeout(r, 300));
  for (let i = 0; i < 5; i++) await request('POST', '/v1/channels/secure-sse/messages', JSON.stringify({ data: i }));
  await new Promise((r) => setTimeout(r, 1500));
  req.destroy();
  assert.deepEqual(events, ['0', '1', '2', '3', '4']);
  assert.ok(hb >= 1, 'heartbeat over TLS');
});

test('wss:// JSON protocol with and without compression', async () => {
  for (const perMessageDeflate of [false, true]) {
    const ws = new WebSocket(`wss://127.0.0.1:${srv.port}/v1/ws`, { ca, perMessageDeflate });
    const inbox = [];
    ws.on('message', (d) => inbox.push(JSON.parse(d)));
    await new Promise((r, j) => { ws.once('open', r); ws.once('error', j); });
    ws.send(JSON.stringify({ op: 'subscribe', channel: 'wss', ref: 1 }));
    ws.send(JSON.stringify({ op: 'publish', channel: 'wss', data: { pad: 'p'.repeat(5000) }, ref: 2 }));
    const until = Date.now() + 3000;
    while (!inbox.some((m) => m.op === 'message') && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    assert.equal(inbox.find((m) => m.op === 'message').data.pad.length, 5000);
    ws.close();
  }
});

test('a plaintext client on the TLS port is refused without hurting others', async () => {
  const r = await fetch(`http://127.0.0.1:${srv.port}/healthz`).catch((e) => e);
  assert.ok(r instanceof Error || r.status >= 400);
  assert.equal((await request('GET', '/healthz')).status, 200);
});
