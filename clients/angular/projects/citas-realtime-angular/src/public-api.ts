/*
 * citas-realtime-angular: provideCitasRealtime() and the CitasRealtime service.
 */
export { provideCitasRealtime } from './lib/provide-citas-realtime';
export { CitasRealtime } from './lib/citas-realtime.service';
export { CITAS_REALTIME_CONFIG } from './lib/config';
export type { CitasRealtimeConfig, TokenSource } from './lib/config';
export type { Connection } from './lib/connection';
export type { InjectionOptions, NegocioRef } from './lib/injection';

// The client's types, so that an app imports from one place.
export { CitasRealtimeError } from '@citas-realtime/client';
export type {
  CitaAction,
  CitaEvent,
  CitaEventType,
  Estadisticas,
  Estado,
  ResyncMessage,
} from '@citas-realtime/client';
