// A page built from the seed's patterns on @switchboard/react: the connection
// badge (pattern #6) and a live list from useEventStream (pattern #1).
import { createRoot } from 'react-dom/client';
import { ConnectionBadge, SwitchboardProvider, useEventStream } from '@switchboard/react';

declare global {
  interface Window {
    __SB_OPTS__?: Record<string, unknown>;
    badgeLog: string[];
  }
}

function Feed() {
  const { events, status } = useEventStream<{ n: number }>('feed', { limit: 1000 });
  return (
    <div>
      <ConnectionBadge />
      <p id="status">{status}</p>
      <ul id="list">
        {events.map((e) => (
          <li key={e.id}>{e.payload.n}</li>
        ))}
      </ul>
    </div>
  );
}

window.badgeLog = [];
const rootEl = document.getElementById('root')!;
new MutationObserver(() => {
  const t = document.querySelector('[role="status"]')?.textContent ?? '';
  if (t && window.badgeLog[window.badgeLog.length - 1] !== t) window.badgeLog.push(t);
}).observe(rootEl, { subtree: true, childList: true, characterData: true });

createRoot(rootEl).render(
  <SwitchboardProvider options={{ url: location.origin, ...(window.__SB_OPTS__ ?? {}) }}>
    <Feed />
  </SwitchboardProvider>,
);
