// Server-side publishing done right: an API key, an idempotency key per
// logical event, and retries with backoff. A retry after a timeout whose first
// attempt did land returns the first id and publishes nothing twice.
import { randomUUID } from 'node:crypto';

const base = process.env.SB_URL ?? 'http://127.0.0.1:8080';
const apiKey = process.env.SB_API_KEY; // set when the server runs with --api-key

export async function publish(channel, event, data, { attempts = 5 } = {}) {
  const key = randomUUID();
  for (let i = 0; ; i++) {
    try {
      const res = await fetch(`${base}/v1/channels/${encodeURIComponent(channel)}/messages`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'idempotency-key': key,
          ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}),
        },
        body: JSON.stringify({ event, data }),
        signal: AbortSignal.timeout(5000),
      });
      if (res.status === 201) return (await res.json()).id;
      if (res.status < 500 && res.status !== 429) throw new Error(`refused: ${res.status} ${await res.text()}`);
    } catch (e) {
      if (i + 1 >= attempts || String(e.message).startsWith('refused')) throw e;
    }
    await new Promise((r) => setTimeout(r, Math.min(200 * 2 ** i, 5000) * (0.75 + Math.random() / 2)));
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const id = await publish('news', 'notification', { title: 'Hello from the server' });
  console.log('published', id);
}
