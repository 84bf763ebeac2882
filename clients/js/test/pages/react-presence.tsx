// A page with the seed's presence (pattern #5) and AI streaming (pattern #2)
// components on @switchboard/react, plus the badge (pattern #6).
import { useEffect } from 'react';
import { createRoot } from 'react-dom/client';
import { ConnectionBadge, SwitchboardProvider, useAIStream, usePresence, type Cursor } from '@switchboard/react';

declare global {
  interface Window {
    __SB_OPTS__?: Record<string, unknown>;
    __USER__: { id: string; name: string; color: string };
    move?: (c: Cursor | null) => void;
    ask?: (q: string) => void;
  }
}

function Cursors() {
  const { others, updateCursor, status } = usePresence('canvas', window.__USER__);
  useEffect(() => {
    window.move = updateCursor;
  }, [updateCursor]);
  return (
    <div id="others" data-status={status}>
      {JSON.stringify(others.map((u) => ({ id: u.id, name: u.name, cursor: u.cursor })))}
    </div>
  );
}

function Chat() {
  const { response, isStreaming, error, send } = useAIStream();
  useEffect(() => {
    window.ask = (q) => void send(q);
  }, [send]);
  return (
    <div id="ai" aria-live="polite" aria-busy={isStreaming} data-error={error?.message ?? ''}>
      {response}
    </div>
  );
}

createRoot(document.getElementById('root')!).render(
  <SwitchboardProvider options={{ url: location.origin, ...(window.__SB_OPTS__ ?? {}) }}>
    <ConnectionBadge />
    <Cursors />
    <Chat />
  </SwitchboardProvider>,
);
