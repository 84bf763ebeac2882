// Starts the real switchboard binary on a free loopback port and hands tests
// a small API around it. Every test file uses this; nothing is mocked.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export function binaryPath() {
  const candidates = [process.env.SB_BIN, `${root}/build/test/switchboard`, `${root}/build/release/switchboard`];
  for (const c of candidates) if (c && existsSync(c)) return c;
  throw new Error('switchboard binary not found: set SB_BIN or build first');
}

export async function startServer(args = [], { env = {}, port = 0 } = {}) {
  const bin = binaryPath();
  const child = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, ...args], {
    env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const listening = new Promise((resolve, reject) => {
    const onData = (d) => {
      log += d.toString();
      const m = log.match(/msg="listening" addr=[^ ]*:(\d+)/);
      if (m) resolve(Number(m[1]));
    };
    child.stderr.on('data', onData);
    child.stdout.on('data', (d) => { log += d.toString(); });
    exited.then(({ code, signal }) => reject(new Error(`server exited early (${code ?? signal}):\n${log}`)));
  });
  const boundPort = await listening;
  const base = `http://127.0.0.1:${boundPort}`;
  return {
    port: boundPort,
    base,
    child,
    exited,
    log: () => log,
    // Graceful stop: SIGTERM, wait for exit, return the exit status and log.
    async stop(timeoutMs = 15000) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return exited;
    },
  };
}

export async function publish(base, channel, body, { event, headers = {}, json = true } = {}) {
  const url = `${base}/v1/channels/${encodeURIComponent(channel)}/messages${event ? `?event=${event}` : ''}`;
  const res = await fetch(url, {
    method: 'POST',
    headers: json ? { 'content-type': 'application/json', ...headers } : headers,
    body: json ? JSON.stringify(body) : body,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null, headers: res.headers };
}

// Sends raw bytes on a fresh TCP connection and collects the reply until the
// server closes or `ms` pass.
export function rawRequest(port, data, { ms = 2000, chunks = null, gapMs = 0 } = {}) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let out = Buffer.alloc(0);
    const done = () => { sock.destroy(); resolve(out.toString('latin1')); };
    const timer = setTimeout(done, ms);
    sock.on('data', (d) => { out = Buffer.concat([out, d]); });
    sock.on('close', () => { clearTimeout(timer); resolve(out.toString('latin1')); });
    sock.on('error', () => {});
    sock.on('connect', async () => {
      if (chunks) {
        for (const c of chunks) {
          sock.write(c);
          if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
        }
      } else {
        sock.write(data);
      }
    });
  });
}

// A lean SSE reader over a raw socket (for many-client tests where the
// eventsource package's per-event overhead would dominate).
export function sseConnect(port, pathAndQuery, { headers = {}, onEvent } = {}) {
  const sock = net.connect(port, '127.0.0.1');
  let buf = '';
  let headDone = false;
  const state = { sock, status: 0, events: [], lastId: null, closed: false, comments: 0, retry: null, head: '' };
  state.ready = new Promise((resolve, reject) => {
    sock.on('connect', () => {
      const h = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
      sock.write(`GET ${pathAndQuery} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n${h}\r\n`);
    });
    sock.setEncoding('utf8');
    let ev = { id: null, event: 'message', data: [] };
    sock.on('data', (d) => {
      buf += d;
      if (!headDone) {
        const i = buf.indexOf('\r\n\r\n');
        if (i < 0) return;
        state.head = buf.slice(0, i);
        state.status = Number(buf.slice(9, 12));
        buf = buf.slice(i + 4);
        headDone = true;
        resolve(state);
      }
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === '') {
          if (ev.data.length) {
            const e = { id: ev.id, event: ev.event, data: ev.data.join('\n') };
            if (ev.id !== null) state.lastId = ev.id;
            state.events.push(e);
            onEvent?.(e, state);
          } else if (ev.id !== null) state.lastId = ev.id;
          ev = { id: null, event: 'message', data: [] };
        } else if (line.startsWith(':')) state.comments++;
        else if (line.startsWith('id: ')) ev.id = line.slice(4);
        else if (line.startsWith('event: ')) ev.event = line.slice(7);
        else if (line.startsWith('data: ')) ev.data.push(line.slice(6));
        else if (line.startsWith('retry: ')) state.retry = Number(line.slice(7));
      }
    });
    sock.on('error', (e) => { if (!headDone) reject(e); });
    sock.on('close', () => { state.closed = true; });
  });
  state.close = () => sock.destroy();
  return state;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(pred, { timeout = 5000, interval = 10, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  while (Date.now() < end) {
    if (await pred()) return;
    await sleep(interval);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// Retries an assertion until it passes or the time is up, then throws its
// last failure (which says what was missing).
export async function eventually(check, { timeout = 5000, interval = 20 } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    try { return await check(); } catch (e) {
      if (Date.now() > end) throw e;
    }
    await sleep(interval);
  }
}
