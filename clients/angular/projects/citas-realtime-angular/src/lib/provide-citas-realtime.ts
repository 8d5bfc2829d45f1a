import { EnvironmentProviders, makeEnvironmentProviders } from '@angular/core';

import { CITAS_REALTIME_CONFIG, CitasRealtimeConfig } from './config';
import { CitasRealtime } from './citas-realtime.service';

/**
 * Provides `CitasRealtime` for the app (in `bootstrapApplication`'s providers, or a route's):
 * one socket to `url`, authenticated with `token`.
 *
 * ```ts
 * provideCitasRealtime({
 *   url: 'wss://realtime.example.com/ws',
 *   token: () => inject(AuthService).accessToken(),
 * })
 * ```
 */
export function provideCitasRealtime(config: CitasRealtimeConfig): EnvironmentProviders {
  return makeEnvironmentProviders([{ provide: CITAS_REALTIME_CONFIG, useValue: config }, CitasRealtime]);
}
