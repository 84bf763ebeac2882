// Test pages built from the seeds' hooks. window.__SB__ chooses the page.
import React, { useCallback, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { useWebSocket } from './useWebSocket';
import { usePresence } from './usePresence';

declare global { interface Window { __SB__: any; sb: any } }

function Chat({ url }: { url: string }) {
  const [msgs, setMsgs] = useState<string[]>([]);
  const onMessage = useCallback((d: string) => setMsgs((m) => [...m, d]), []);
  const { send, status } = useWebSocket({ url, onMessage });
  window.sb = { send, msgs, status };
  return <div><span id="status">{status}</span><ul id="msgs">{msgs.map((m, i) => <li key={i}>{m}</li>)}</ul></div>;
}

const users: Record<string, { id: string; name: string; color: string }> = {};
function Cursors({ room, me }: { room: string; me: string }) {
  users[me] ??= { id: me, name: me.toUpperCase(), color: '#3b82f6' };
  const { others, updateCursor, status } = usePresence(room, users[me]);
  window.sb = { others, updateCursor, status };
  return <div id="others" data-status={status}>{others.map((u) => <span key={u.id} className="cursor">{u.id}:{u.cursor ? `${u.cursor.x},${u.cursor.y}` : '-'}</span>)}</div>;
}

const cfg = window.__SB__;
createRoot(document.getElementById('root')!).render(
  cfg.page === 'chat' ? <Chat url={cfg.url} /> : <Cursors room={cfg.room} me={cfg.me} />,
);
