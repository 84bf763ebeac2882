// Integration harness: the real server binary (started, killed, restarted on the
// same port), a TCP proxy that cuts, delays and black-holes traffic, and the
// test-only packages (ws, playwright-core) from tests/node_modules.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
const testsRequire = createRequire(path.join(root, 'tests/package.json'));
const jsRequire = createRequire(path.join(root, 'clients/js/package.json'));

/** `ws` (Node 20 has no global WebSocket). */
export const WebSocket = (() => {
  try {
    return jsRequire('ws');
  } catch {
    return testsRequire('ws');
  }
})();

/** playwright-core, installed for the browser suites in tests/. */
export function playwright() {
  return testsRequire('playwright-core');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(pred, { timeout = 10000, interval = 10, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  while (Date.now() < end) {
    if (await pred()) return;
    await sleep(interval);
  }
  throw new Error(`timed out waiting for ${what}`);
}

export function binaryPath() {
  for (const c of [process.env.SB_BIN, `${root}/build/test/switchboard`, `${root}/build/release/switchboard`])
    if (c && existsSync(c)) return c;
  throw new Error('switchboard binary not found: set SB_BIN or build first');
}

/** A free loopback port (bound, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * The server on one port across restarts. `args` are extra flags; `durable`
 * gives it a data directory so history survives a kill.
 */
export class Server {
  constructor(args = [], { durable = false } = {}) {
    this.args = args;
    this.dir = durable ? mkdtempSync(path.join(os.tmpdir(), 'sb-sdk-')) : null;
    this.child = null;
    this.port = 0;
    this.log = '';
  }
  get base() {
    return `http://127.0.0.1:${this.port}`;
  }
  async start() {
    if (!this.port) this.port = await freePort();
    const args = ['serve', '--listen', `127.0.0.1:${this.port}`, ...this.args];
    if (this.dir) args.push('--data-dir', this.dir);
    for (let tries = 0; ; tries++) {
      try {
        await this.spawn(args);
        return this;
      } catch (err) {
        // The port of a killed server can take a moment to be free again.
        if (tries >= 40) throw err;
        await sleep(100);
      }
    }
  }
  spawn(args) {
    const child = spawn(binaryPath(), args, {
      env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    let log = '';
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    return new Promise((resolve, reject) => {
      const on = (d) => {
        log += d;
        this.log += d;
        if (/msg="listening"/.test(log)) resolve();
      };
      child.stderr.on('data', on);
      child.stdout.on('data', on);
      this.exited.then(({ code, signal }) => reject(new Error(`server exited (${code ?? signal}): ${log.slice(-2000)}`)));
    });
  }
  /** SIGKILL: no goodbye to anyone, as a crash. */
  async kill() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
  /** SIGTERM and wait. */
  async stop() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 15000);
      await this.exited;
      clearTimeout(t);
    }
  }
  async restart({ downMs = 0 } = {}) {
    await this.kill();
    if (downMs) await sleep(downMs);
    await this.start();
  }
  cleanup() {
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
  /** A publish over plain HTTP, outside the SDK. */
  async publish(channel, data, { event, key } = {}) {
    const headers = { 'content-type': 'application/json' };
    if (key) headers['idempotency-key'] = key;
    const res = await fetch(`${this.base}/v1/channels/${encodeURIComponent(channel)}/messages`, {
      method: 'POST',
      headers,
      body: JSON.stringify(event ? { event, data } : { data }),
    });
    if (res.status !== 201) throw new Error(`publish: ${res.status} ${await res.text()}`);
    return res.json();
  }
  async history(channel, since = '0') {
    const res = await fetch(`${this.base}/v1/channels/${encodeURIComponent(channel)}/messages?since=${since}&limit=1000`);
    return res.json();
  }
}

/**
 * A TCP proxy between clients and the server. Modes:
 * - pass: forward both ways, after `delayMs` if set;
 * - blackhole: keep every connection open but forward nothing, and accept new
 *   ones without connecting them (a dead network path: no RST, no FIN);
 * - refuse: close every new connection at once (the network is down);
 * cut() destroys every current connection at once (RST-like for both sides).
 * `filter(firstChunk)` may refuse a connection (e.g. WebSocket upgrades).
 */
export class Proxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.mode = 'pass';
    this.delayMs = 0;
    this.pairs = new Set();
    this.accepts = [];
    this.filter = null;
    this.onClientData = null;
    this.onServerData = null;
    this.server = net.createServer((c) => this.accept(c));
  }
  get base() {
    return `http://127.0.0.1:${this.port}`;
  }
  listen() {
    return new Promise((resolve) => {
      this.server.listen(0, '127.0.0.1', () => {
        this.port = this.server.address().port;
        resolve(this);
      });
    });
  }
  accept(c) {
    this.accepts.push(Date.now());
    c.setNoDelay(true);
    const pair = { c, s: null, dead: false };
    this.pairs.add(pair);
    const kill = () => {
      if (pair.dead) return;
      pair.dead = true;
      this.pairs.delete(pair);
      c.destroy();
      pair.s?.destroy();
    };
    pair.kill = kill;
    c.on('error', kill);
    c.on('close', kill);
    if (this.mode === 'blackhole') {
      c.on('data', () => {});
      return;
    }
    if (this.mode === 'refuse') {
      kill();
      return;
    }
    const s = net.connect(this.targetPort, '127.0.0.1');
    pair.s = s;
    s.setNoDelay(true);
    s.on('error', kill);
    s.on('close', kill);
    let first = true;
    // A delayed chunk is queued per direction and written in order: a chunk
    // that comes after the delay is lifted still waits for the ones before it,
    // as on a real slow path (TCP never reorders a stream).
    const delayed = (to) => {
      const q = [];
      let timer = null;
      const pump = () => {
        timer = null;
        const now = Date.now();
        while (q.length && q[0].at <= now) {
          const { d } = q.shift();
          if (!pair.dead) to.write(d);
        }
        if (q.length) timer = setTimeout(pump, q[0].at - now);
      };
      return (d, ms) => {
        if (!ms && !q.length) return to.write(d);
        q.push({ d, at: Date.now() + ms });
        if (!timer) timer = setTimeout(pump, Math.max(0, q[0].at - Date.now()));
      };
    };
    const forward = (from, to, isClient) => {
      const send = delayed(to);
      return (d) => {
        if (pair.dead || this.mode === 'blackhole') return;
        if (isClient && first) {
          first = false;
          if (this.filter && !this.filter(d.toString('latin1'), c)) {
            kill();
            return;
          }
        }
        if (isClient && this.onClientData && this.onClientData(d, pair) === false) return;
        if (!isClient && this.onServerData && this.onServerData(d, pair) === false) return;
        send(d, this.delayMs);
      };
    };
    c.on('data', forward(c, s, true));
    s.on('data', forward(s, c, false));
  }
  /** Destroys every current connection. */
  cut() {
    for (const p of [...this.pairs]) p.kill();
  }
  blackhole() {
    this.mode = 'blackhole';
  }
  refuse() {
    this.mode = 'refuse';
    this.cut();
  }
  restore() {
    this.mode = 'pass';
  }
  close() {
    this.cut();
    return new Promise((r) => this.server.close(() => r()));
  }
}

/** Loads the built SDK (dist/), so the tests exercise what users import. */
export async function sdk() {
  return import(path.join(root, 'clients/js/dist/index.js'));
}

/** Counts messages per channel per client and checks exactly-once, in order. */
export function assertExactlyOnce(assert, got, expected, what) {
  assert.equal(got.length, expected.length, `${what}: ${got.length} messages, expected ${expected.length}`);
  assert.deepEqual(got, expected, `${what}: every message once, in order`);
}
