// A timing upstream for the AI relay benchmark: an OpenAI-compatible
// streaming endpoint whose every token is the monotonic time (microseconds,
// CLOCK_MONOTONIC, shared by all processes on the machine) at which it was
// written, followed by a space. A reader anywhere on the machine computes
// each token's latency as (its own monotonic time - the token).
//   node upstream.mjs --port 0 --tokens 50 --interval 20 --first 0
// Prints "bench upstream listening on http://127.0.0.1:PORT".
import http from 'node:http';

const args = process.argv.slice(2);
const opt = (n, d) => {
  const i = args.indexOf(`--${n}`);
  return i >= 0 ? args[i + 1] : d;
};
const tokens = Number(opt('tokens', 50));
const interval = Number(opt('interval', 20));
const first = Number(opt('first', 0));
const now = () => process.hrtime.bigint() / 1000n;

const server = http.createServer({ noDelay: true }, (req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.flushHeaders();
    let k = 0;
    const chunk = (delta, finish = null) =>
      `data: ${JSON.stringify({ id: 'b', object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
    const tick = () => {
      if (res.destroyed) return;
      if (k++ < tokens) {
        res.write(chunk({ content: `${now()} ` }));
        setTimeout(tick, interval);
      } else {
        res.end(chunk({}, 'stop') + 'data: [DONE]\n\n');
      }
    };
    setTimeout(tick, first);
  });
});
server.listen(Number(opt('port', 0)), '127.0.0.1', () => {
  console.log(`bench upstream listening on http://127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
