// Seed pattern #4 (polling): a job worker publishes status changes; a poller
// reads the channel's last message and stops when the job is done. Long-poll
// (wait=) answers as soon as something changes instead of every 2 s.
const base = process.env.SB_URL ?? 'http://127.0.0.1:8080';
const job = `job-${Date.now()}`;

async function worker() {
  for (const status of ['queued', 'running', 'running', 'completed']) {
    await new Promise((r) => setTimeout(r, 700));
    await fetch(`${base}/v1/channels/${job}/messages`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ event: 'status', data: { status, at: Date.now() } }),
    });
  }
}

async function poller() {
  let since = '0';
  for (;;) {
    const r = await fetch(`${base}/v1/channels/${job}/messages?since=${since}&wait=10`);
    const { messages, next } = await r.json();
    since = next;
    for (const m of messages) {
      console.log(`${job}: ${m.data.status}`);
      if (m.data.status === 'completed') return;
    }
  }
}

await Promise.all([worker(), poller()]);
const info = await (await fetch(`${base}/v1/channels/${job}`)).json();
console.log('last message:', info.last.data);
