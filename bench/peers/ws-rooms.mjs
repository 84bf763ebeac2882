// The seed's WebSocket room server (realtime-patterns-nextjs16, pattern #3), as users
// copy it: every message is re-sent to every other member of the room. The only
// changes: the port comes from the command line and it listens on loopback only.
// usage: node ws-rooms.mjs PORT
import { WebSocketServer, WebSocket } from 'ws';

const port = Number(process.argv[2] ?? process.env.PORT ?? 3001);
const wss = new WebSocketServer({ port, host: '127.0.0.1' });
const rooms = new Map();

wss.on('connection', (ws, req) => {
  const roomId = new URL(req.url, 'http://localhost').searchParams.get('room') ?? 'default';
  if (!rooms.has(roomId)) rooms.set(roomId, new Set());
  rooms.get(roomId).add(ws);

  ws.on('message', (raw) => {
    const message = raw.toString();
    // Broadcast to everyone else in the room
    for (const client of rooms.get(roomId)) {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(message);
      }
    }
  });

  ws.on('close', () => {
    rooms.get(roomId)?.delete(ws);
    if (rooms.get(roomId)?.size === 0) rooms.delete(roomId);
  });
});

wss.on('listening', () => console.log(`ws-rooms listening on ws://127.0.0.1:${port}`));
