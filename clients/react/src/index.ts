/**
 * @switchboard/react: React hooks over @switchboard/client, shaped like the
 * seed article's hooks so they drop into existing components.
 */
export { SwitchboardProvider, useSwitchboard } from './context.js';
export type { SwitchboardProviderProps } from './context.js';
export { useAIStream, useChannel, useConnectionStatus, useEventStream, usePresence } from './hooks.js';
export type {
  ConnectionState,
  Cursor,
  PresenceUser,
  ServerEvent,
  UseAIStreamResult,
  UseChannelOptions,
  UseEventStreamOptions,
  UsePresenceOptions,
} from './hooks.js';
export { ConnectionBadge } from './badge.js';
export type { ConnectionBadgeProps } from './badge.js';
