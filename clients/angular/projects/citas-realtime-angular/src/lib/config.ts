import { InjectionToken } from '@angular/core';
import type { ClientOptions } from '@citas-realtime/client';

/**
 * The token the server checks: a fixed one (development), or a function returning the current
 * one, sync or async. The function is called for every (re)connection and again before the
 * token expires (the fresh token goes to the open socket in an `auth` message). It runs in an
 * injection context, so it may `inject()` the app's auth service.
 */
export type TokenSource = string | (() => string | Promise<string>);

/** What `provideCitasRealtime()` takes: the client's options, with `token` for both forms. */
export interface CitasRealtimeConfig extends Omit<ClientOptions, 'token' | 'getToken'> {
  /** `ws://host:8080/ws` or `wss://...`. */
  url: string;
  token: TokenSource;
}

export const CITAS_REALTIME_CONFIG = new InjectionToken<CitasRealtimeConfig>('CITAS_REALTIME_CONFIG');
