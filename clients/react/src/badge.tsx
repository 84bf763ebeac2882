import type { ConnectionState } from './hooks.js';
import { useConnectionStatus } from './hooks.js';

const statusConfig = {
  connecting: { label: 'Reconnecting...', color: 'bg-amber-500', pulse: true },
  open: { label: 'Connected', color: 'bg-emerald-500', pulse: false },
  closed: { label: 'Offline', color: 'bg-red-500', pulse: false },
} as const;

export interface ConnectionBadgeProps {
  /** The state to show; default: the provider's connection status. */
  status?: ConnectionState;
  /** Replace the labels (e.g. for another language). */
  labels?: Partial<Record<ConnectionState, string>>;
  className?: string;
}

/** Seed pattern #6's badge: same markup and classes, fed by the live status unless given one. */
export function ConnectionBadge({ status, labels, className }: ConnectionBadgeProps) {
  const live = useConnectionStatus().status;
  const s = status ?? live;
  const config = statusConfig[s];
  return (
    <div
      className={`flex items-center gap-2 text-xs${className ? ` ${className}` : ''}`}
      role="status"
      aria-live="polite"
      data-status={s}
    >
      <span className={`h-2 w-2 rounded-full ${config.color} ${config.pulse ? 'animate-pulse' : ''}`} />
      {labels?.[s] ?? config.label}
    </div>
  );
}
