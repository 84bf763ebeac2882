import { createContext, useContext, useEffect, useState, type ReactNode } from 'react';
import { createClient, type ClientOptions, type SwitchboardClient } from '@switchboard/client';

const Ctx = createContext<SwitchboardClient | null>(null);

export interface SwitchboardProviderProps {
  /** A client you created (e.g. once at module level). The provider does not close it. */
  client?: SwitchboardClient;
  /** Or options: the provider creates the client after mount and closes it on unmount. */
  options?: ClientOptions;
  /** Shorthand for `options: { url }`. */
  url?: string;
  children?: ReactNode;
}

/**
 * Makes a Switchboard client available to the hooks below it. Pass `client`, or
 * `options`/`url` to have the provider own one. An owned client is created in an
 * effect (never during render), so server rendering and React's strict mode
 * double-mount do not open stray connections.
 */
export function SwitchboardProvider({ client, options, url, children }: SwitchboardProviderProps) {
  const [owned, setOwned] = useState<SwitchboardClient | null>(null);
  const opts = options ?? (url !== undefined ? { url } : undefined);
  const key = client ? null : JSON.stringify({ ...opts, WebSocket: undefined, fetch: undefined, getToken: undefined });
  useEffect(() => {
    if (client || !opts) return;
    const c = createClient(opts);
    setOwned(c);
    return () => {
      c.close();
      setOwned(null);
    };
    // The options object may be new on every render; its serializable part decides.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, key]);
  return <Ctx.Provider value={client ?? owned}>{children}</Ctx.Provider>;
}

/** The client of the nearest provider (null until an owned client is created). */
export function useSwitchboard(): SwitchboardClient | null {
  return useContext(Ctx);
}
