// The AI relay benchmark's reader: runs C concurrent streams either against
// the timing upstream directly (its OpenAI SSE) or through Switchboard's
// POST /v1/ai/chat (format sse, the same amount of parsing), and reports
// time to first token and per-token latency (token written by the upstream
// -> parsed here) as p50/p99 in microseconds, one JSON line. Connections are
// kept alive and warmed by one unmeasured round, as a browser's would be, so
// both paths are measured without connection setup.
//   node client.mjs --url http://127.0.0.1:P --mode direct|relay --streams 100 --rounds 3
import http from 'node:http';

const args = process.argv.slice(2);
const opt = (n, d) => {
  const i = args.indexOf(`--${n}`);
  return i >= 0 ? args[i + 1] : d;
};
const base = opt('url');
const mode = opt('mode', 'relay');
const streams = Number(opt('streams', 1));
const rounds = Number(opt('rounds', 1));
const now = () => process.hrtime.bigint() / 1000n;
const url = new URL(mode === 'direct' ? '/v1/chat/completions' : '/v1/ai/chat', base);
const body = JSON.stringify(mode === 'direct'
  ? { model: 'bench', stream: true, messages: [{ role: 'user', content: 'go' }] }
  : { model: 'bench', format: 'sse', messages: [{ role: 'user', content: 'go' }] });
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

let ttft = [];
let lat = [];
let failed = 0;

function one() {
  return new Promise((resolve) => {
    const t0 = now();
    let buf = '';
    let text = '';
    let firstSeen = false;
    const req = http.request(url, {
      method: 'POST', agent,
      headers: { 'content-type': 'application/json', authorization: 'Bearer bench', 'content-length': Buffer.byteLength(body) },
    }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (d) => {
        const t = now();
        buf += d;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const line = ev.split('\n').find((l) => l.startsWith('data: '));
          if (!line || line === 'data: [DONE]') continue;
          const j = JSON.parse(line.slice(6));
          const piece = mode === 'direct' ? j.choices?.[0]?.delta?.content : j.text;
          if (piece) text += piece;
        }
        let sp;
        while ((sp = text.indexOf(' ')) >= 0) {
          const stamp = BigInt(text.slice(0, sp));
          text = text.slice(sp + 1);
          if (!firstSeen) {
            firstSeen = true;
            ttft.push(Number(t - t0));
          }
          lat.push(Number(t - stamp));
        }
      });
      res.on('end', resolve);
      res.on('error', () => { failed++; resolve(); });
    });
    req.on('socket', (s) => s.setNoDelay(true));
    req.on('error', () => { failed++; resolve(); });
    req.end(body);
  });
}

const pct = (a, p) => {
  if (!a.length) return null;
  const s = Float64Array.from(a).sort();
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]);
};
await Promise.all(Array.from({ length: streams }, one)); // warm-up
ttft = [];
lat = [];
failed = 0;
const t0 = Date.now();
for (let r = 0; r < rounds; r++) await Promise.all(Array.from({ length: streams }, one));
agent.destroy();
console.log(JSON.stringify({
  mode, streams, rounds, failed, tokens: lat.length, seconds: (Date.now() - t0) / 1000,
  ttft_p50_us: pct(ttft, 50), ttft_p99_us: pct(ttft, 99), tok_p50_us: pct(lat, 50), tok_p99_us: pct(lat, 99),
}));
