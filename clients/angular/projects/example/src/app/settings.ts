import { InjectionToken } from '@angular/core';

/** What the dashboard needs, from `#server=<ws url>&token=<jwt>&negocio=<id>[&tokenUrl=<url>]`. */
export interface DashboardSettings {
  /** The server's WebSocket URL (`ws://host:8080/ws`). */
  readonly server: string;
  readonly negocio: string;
  /** A token to start with. */
  readonly token?: string;
  /** Where fresh tokens come from (GET, the token as text or `{"token": ...}`). */
  readonly tokenUrl?: string;
}

export type SettingsReading =
  | { readonly ok: true; readonly settings: DashboardSettings }
  | { readonly ok: false; readonly problems: readonly string[] };

export const SETTINGS_READING = new InjectionToken<SettingsReading>('SETTINGS_READING');

/** Reads the settings from a URL fragment; says what is missing or wrong. */
export function readSettings(fragment: string): SettingsReading {
  const params = new URLSearchParams(fragment.replace(/^#/, ''));
  const value = (name: string) => params.get(name)?.trim() || undefined;
  const [server, negocio, token, tokenUrl] = [value('server'), value('negocio'), value('token'), value('tokenUrl')];
  const url = server ? websocketUrl(server) : undefined;
  const problems = [
    ...(server ? [] : ['server: missing (the WebSocket URL, ws://host:8080/ws)']),
    ...(server && !url ? [`server: "${server}" is not a ws://, wss://, http:// or https:// URL`] : []),
    ...(negocio ? [] : ['negocio: missing (the negocio id to watch)']),
    ...(token || tokenUrl ? [] : ['token: missing (a JWT, or tokenUrl to fetch one from)']),
  ];
  if (!url || !negocio || problems.length > 0) return { ok: false, problems };
  return { ok: true, settings: { server: url, negocio, token, tokenUrl } };
}

/** `ws(s)://host/ws` from what was given: http(s) becomes ws(s), a bare host gets `/ws`. */
export function websocketUrl(server: string): string | undefined {
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    return undefined;
  }
  const protocols: Record<string, string> = { 'ws:': 'ws:', 'wss:': 'wss:', 'http:': 'ws:', 'https:': 'wss:' };
  const protocol = protocols[url.protocol];
  if (!protocol) return undefined;
  url.protocol = protocol;
  if (url.pathname === '/' || url.pathname === '') url.pathname = '/ws';
  return url.toString();
}
