// A redis-server of our own on a free loopback port, and one-shot RESP
// commands to it, for the cluster suites (nothing is mocked: the nodes talk
// to this real Redis).
import { spawn } from 'node:child_process';
import net from 'node:net';
import { waitFor } from './server.mjs';

export const REDIS_BIN = process.env.REDIS_SERVER ?? '/usr/bin/redis-server';

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// Starts redis-server on port (no persistence). Returns { child, exited, log() }.
export async function startRedis(port) {
  const child = spawn(REDIS_BIN, ['--save', '', '--appendonly', 'no', '--port', String(port), '--bind', '127.0.0.1'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  const r = { child, exited, log: () => log };
  await Promise.race([
    waitFor(() => /Ready to accept connections/.test(log), { timeout: 10000, what: 'redis-server ready' }),
    exited.then((e) => { throw new Error(`redis-server exited (${e.code ?? e.signal}):\n${log}`); }),
  ]);
  return r;
}

// One command over RESP on a fresh connection (key names may hold any byte,
// a newline included, so redis-cli's line output is not parsed). Arguments
// may be strings, numbers or Buffers (sent as they are).
export function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const what = args.map((a) => String(a).slice(0, 40)).join(' ');
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`redis ${what}: no reply in 5 s`)); }, 5000);
    // Returns [value, next offset] or null while incomplete.
    const parse = (i) => {
      const nl = buf.indexOf('\r\n', i);
      if (nl < 0) return null;
      const t = String.fromCharCode(buf[i]);
      const line = buf.subarray(i + 1, nl).toString('latin1');
      if (t === '+') return [line, nl + 2];
      if (t === '-') return [new Error(line), nl + 2];
      if (t === ':') return [Number(line), nl + 2];
      if (t === '$') {
        const n = Number(line);
        if (n < 0) return [null, nl + 2];
        if (buf.length < nl + 2 + n + 2) return null;
        return [buf.subarray(nl + 2, nl + 2 + n).toString('latin1'), nl + 2 + n + 2];
      }
      if (t === '*') {
        const n = Number(line);
        const out = [];
        let at = nl + 2;
        for (let k = 0; k < n; k++) {
          const r = parse(at);
          if (!r) return null;
          out.push(r[0]);
          at = r[1];
        }
        return [out, at];
      }
      return [new Error(`bad RESP type ${t}`), buf.length];
    };
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const r = parse(0);
      if (!r) return;
      clearTimeout(timer);
      sock.destroy();
      if (r[0] instanceof Error) reject(new Error(`redis ${what}: ${r[0].message}`));
      else resolve(r[0]);
    });
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
    const parts = [Buffer.from(`*${args.length}\r\n`)];
    for (const a of args) {
      const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
      parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
    }
    sock.write(Buffer.concat(parts));
  });
}
