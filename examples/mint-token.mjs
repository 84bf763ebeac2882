// Mints an HS256 token for a server started with --jwt-secret "$SECRET".
//   SECRET=s node examples/mint-token.mjs alice 'chat:*' 'chat:*'
// args: user id, subscribe patterns (comma-separated), publish patterns.
import { createHmac } from 'node:crypto';

const [sub = 'alice', channels = '*', publish = ''] = process.argv.slice(2);
const secret = process.env.SECRET;
if (!secret) throw new Error('set SECRET to the server\'s --jwt-secret');
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const claims = {
  sub,
  exp: Math.floor(Date.now() / 1000) + 3600,
  channels: channels.split(',').filter(Boolean),
  ...(publish ? { publish: publish.split(',').filter(Boolean) } : {}),
  info: { name: sub },
};
const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
console.log(`${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`);
