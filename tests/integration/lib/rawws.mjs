// A raw WebSocket client over a TCP socket: lets tests send exactly the
// frames they want (unmasked, reserved bits, bad UTF-8, odd fragmentation)
// and read every frame the server sends, including close codes.
import crypto from 'node:crypto';
import net from 'node:net';

export function frame(opcode, payload = Buffer.alloc(0), { fin = true, mask = true, rsv = 0, lenOverride } = {}) {
  payload = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const len = lenOverride ?? payload.length;
  let head;
  if (len < 126) head = Buffer.from([0, len]);
  else if (len < 65536) { head = Buffer.alloc(4); head[1] = 126; head.writeUInt16BE(len, 2); }
  else { head = Buffer.alloc(10); head[1] = 127; head.writeBigUInt64BE(BigInt(len), 2); }
  head[0] = (fin ? 0x80 : 0) | (rsv << 4) | opcode;
  if (!mask) return Buffer.concat([head, payload]);
  head[1] |= 0x80;
  const key = crypto.randomBytes(4);
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i] ^= key[i & 3];
  return Buffer.concat([head, key, masked]);
}

export async function rawWs(port, path = '/v1/ws', { headers = {}, key } = {}) {
  const sock = net.connect(port, '127.0.0.1');
  await new Promise((r, j) => { sock.once('connect', r); sock.once('error', j); });
  key ??= crypto.randomBytes(16).toString('base64');
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  sock.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`);
  let buf = Buffer.alloc(0);
  const frames = [];
  const waiters = [];
  let head = null;
  let closed = false;
  const st = { sock, frames, get closed() { return closed; } };
  const headP = new Promise((resolve) => {
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (head === null) {
        const i = buf.indexOf('\r\n\r\n');
        if (i < 0) return;
        head = buf.subarray(0, i).toString('latin1');
        buf = buf.subarray(i + 4);
        resolve(head);
      }
      for (;;) {
        if (buf.length < 2) break;
        let len = buf[1] & 0x7f, off = 2;
        if (len === 126) { if (buf.length < 4) break; len = buf.readUInt16BE(2); off = 4; }
        else if (len === 127) { if (buf.length < 10) break; len = Number(buf.readBigUInt64BE(2)); off = 10; }
        if (buf.length < off + len) break;
        const f = { fin: !!(buf[0] & 0x80), rsv: (buf[0] >> 4) & 7, opcode: buf[0] & 15, payload: buf.subarray(off, off + len) };
        if (f.opcode === 8) { f.code = len >= 2 ? f.payload.readUInt16BE(0) : 1005; f.reason = f.payload.subarray(2).toString(); }
        frames.push(f);
        buf = buf.subarray(off + len);
        waiters.splice(0).forEach((w) => w());
      }
    });
    sock.on('close', () => { closed = true; resolve(head ?? buf.toString('latin1')); waiters.splice(0).forEach((w) => w()); });
    sock.on('error', () => {});
  });
  st.head = await headP;
  st.status = Number(st.head.slice(9, 12));
  st.send = (b) => sock.write(b);
  st.json = (o) => sock.write(frame(1, JSON.stringify(o)));
  st.next = async (pred = () => true, ms = 3000) => {
    const end = Date.now() + ms;
    for (;;) {
      const i = frames.findIndex(pred);
      if (i >= 0) return frames.splice(i, 1)[0];
      if (closed || Date.now() > end) return null;
      await new Promise((r) => { waiters.push(r); setTimeout(r, 50); });
    }
  };
  st.nextJson = async (pred = () => true, ms) => {
    const f = await st.next((f) => f.opcode === 1 && pred(JSON.parse(f.payload.toString())), ms);
    return f ? JSON.parse(f.payload.toString()) : null;
  };
  st.closeFrame = (ms) => st.next((f) => f.opcode === 8, ms);
  st.end = () => sock.destroy();
  return st;
}
