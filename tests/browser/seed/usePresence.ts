// The seed article's hook, pattern #5, as published (it connects to
// ws://localhost:3001?room=..., so the test runs the server on port 3001),
// with one change: onMessage is wrapped in useCallback. As published, the
// inline onMessage makes useWebSocket's `connect` a new function on every
// render, so every state change (including the socket opening) closes the
// socket and opens another: the published hook never stays connected, against
// any server. See docs/protocol.md "Seed compatibility".
'use client';
import { useState, useEffect, useCallback, useRef } from 'react';
import { useWebSocket } from './useWebSocket';
interface Cursor {
x: number;
y: number;
}
interface PresenceUser {
id: string;
name: string;
color: string;
cursor: Cursor | null;
lastSeen: number;
}
export function usePresence(roomId: string, user: { id: string; name: string; color: string }) {
const [others, setOthers] = useState<Map<string, PresenceUser>>(new Map());
const lastSent = useRef(0);
const onMessage = useCallback((raw: string) => {
const msg = JSON.parse(raw);
if (msg.type === 'presence') {
setOthers((prev) => {
const next = new Map(prev);
next.set(msg.user.id, { ...msg.user, lastSeen: Date.now() });
return next;
});
}
if (msg.type === 'leave') {
setOthers((prev) => {
const next = new Map(prev);
next.delete(msg.userId);
return next;
});
}
}, []);
const { send, status } = useWebSocket({
url: `ws://localhost:3001?room=${roomId}`,
onMessage,
});
const updateCursor = useCallback(
(cursor: Cursor) => {
const now = Date.now();
if (now - lastSent.current < 60) return; // throttle to ~16fps
lastSent.current = now;
send(JSON.stringify({
type: 'presence',
user: { ...user, cursor },
}));
},
[send, user]
);
// Clean up stale users every 5s
useEffect(() => {
const cleanup = setInterval(() => {
setOthers((prev) => {
const next = new Map(prev);
for (const [id, u] of next) {
if (Date.now() - u.lastSeen > 10_000) next.delete(id);
}
return next;
});
}, 5_000);
return () => clearInterval(cleanup);
}, []);
return { others: Array.from(others.values()), updateCursor, status };
}
