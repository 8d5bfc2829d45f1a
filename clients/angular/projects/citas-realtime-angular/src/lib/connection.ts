import type { ConnectionState } from '@citas-realtime/client';

/** The state of the one shared socket, for a connection badge. */
export type Connection =
  | { readonly status: 'connecting' }
  | { readonly status: 'open'; readonly reconnects: number }
  | {
      readonly status: 'reconnecting';
      /** Attempts since the socket was last open (1 while the first retry is pending). */
      readonly attempt: number;
      readonly reconnects: number;
      /** How the last socket ended: its close code and reason (`1008 token expired`). */
      readonly reason: string;
      /** When the next attempt starts (epoch ms). */
      readonly nextAttemptAt?: number;
    }
  | { readonly status: 'closed'; readonly reason: string };

/** The client's state in the shape the badge needs. */
export function toConnection(state: ConnectionState): Connection {
  switch (state.status) {
    case 'connecting':
      return { status: 'connecting' };
    case 'open':
      return { status: 'open', reconnects: state.reconnects };
    case 'reconnecting':
      return {
        status: 'reconnecting',
        attempt: state.attempt,
        reconnects: state.reconnects,
        reason: describeClose(state.lastClose),
        nextAttemptAt: state.nextAttemptAt,
      };
    case 'closed':
      return { status: 'closed', reason: 'closed by the app' };
  }
}

function describeClose(close: ConnectionState['lastClose']): string {
  if (!close) return 'unknown';
  return close.reason ? `${close.code} ${close.reason}` : String(close.code);
}
