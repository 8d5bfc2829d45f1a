/**
 * citas-realtime client: a typed, RxJS-shaped client for the citas-realtime WebSocket protocol.
 *
 * - `client.channel(negocioId)` is an Observable of that negocio's messages (events,
 *   statistics, resync). The first subscriber subscribes on the server, the last one leaving
 *   unsubscribes.
 * - `filterByType('cita_created')` narrows a stream to one message type, typed.
 * - The connection comes back by itself: exponential backoff with jitter, then every channel is
 *   subscribed again with `since` = the last seq it saw, so nothing is missed and nothing is
 *   seen twice.
 * - `getToken` is called for every (re)connection and, before the token expires, to send the
 *   server a fresh one on the open socket (`{"type":"auth"}`).
 *
 * Works in browsers and in Node.js 20+ (pass `WebSocket` from the `ws` package).
 */
import { BehaviorSubject, Observable, Subject, filter } from 'rxjs';
import type { OperatorFunction } from 'rxjs';

/** The four estados of a cita. */
export type Estado = 'pendiente' | 'confirmada' | 'completada' | 'cancelada';

/** What happened to a cita. */
export type CitaAction = 'created' | 'updated' | 'deleted' | 'status_changed';

export type CitaEventType = 'cita_created' | 'cita_updated' | 'cita_deleted' | 'cita_status_changed';

/** One change of one cita. */
export interface CitaEvent {
  type: CitaEventType;
  channel: string;
  data: {
    action: CitaAction;
    negocio_id: string;
    /** `null` for a change announced through `POST /notify/cita` without an id. */
    cita_id: string | null;
    estado: string | null;
    estado_anterior: string | null;
    /** Increases with every event; the resume cursor. */
    seq: number;
    /** When the change was written, UTC, ISO 8601. */
    timestamp: string;
    /** A text field was over 1 KiB and was cut. */
    fields_truncated?: true;
    /**
     * Present when the DBA chose record columns (`citas_realtime.set_record_columns`): those
     * columns after the change, as PostgreSQL's `to_jsonb` gives them (dates `"2026-12-03"`,
     * times `"10:00:00"`, numbers as numbers). `null` for `cita_deleted`, or when over 8 KiB.
     */
    record?: CitaRecord | null;
    /**
     * Present with `record`: the chosen columns before the change: all of them for
     * `cita_deleted`, those that changed for `cita_updated` / `cita_status_changed` (`{}` when
     * only other columns changed); `null` for `cita_created`, or when over 8 KiB.
     */
    old_record?: CitaRecord | null;
    /** A record was over 8 KiB and left out (`null`): read the cita from your API. */
    record_truncated?: true;
  };
}

/** The chosen columns of a cita, by column name (`fecha`, `hora_inicio`, ... as the DBA chose). */
export type CitaRecord = Record<string, unknown>;

/** The figures of `citas_realtime.estadisticas(negocio_id)`; the default function's shape. */
export interface Estadisticas {
  total?: number;
  por_estado?: Partial<Record<Estado, number>> & Record<string, number>;
  hoy?: { total: number; por_estado: Partial<Record<Estado, number>> & Record<string, number> };
  /** The newest event the figures include. */
  seq: number;
  [key: string]: unknown;
}

export interface EstadisticasMessage {
  type: 'estadisticas';
  channel: string;
  data: Estadisticas;
}

/** The events asked for are gone (retention, truncate): reload the negocio's data. */
export interface ResyncMessage {
  type: 'resync';
  channel: string;
}

export type ErrorCode =
  | 'bad_request'
  | 'bad_channel'
  | 'forbidden'
  | 'stats_unavailable'
  | 'unauthorized'
  | 'too_many_subscriptions'
  | 'unavailable';

export interface ErrorMessage {
  type: 'error';
  code: ErrorCode;
  message: string;
  channel?: string;
}

export interface SubscribedMessage {
  type: 'subscribed' | 'unsubscribed';
  channel: string;
}

export interface OtherMessage {
  type: 'pong' | 'authenticated';
}

/** Anything the server sends. */
export type ServerMessage =
  | CitaEvent
  | EstadisticasMessage
  | ResyncMessage
  | ErrorMessage
  | SubscribedMessage
  | OtherMessage;

/** What a channel's Observable emits. */
export type ChannelMessage = CitaEvent | EstadisticasMessage | ResyncMessage | ErrorMessage;

/** Narrows a stream of messages to one `type`, typed: `filterByType('cita_created')`. */
export function filterByType<T extends ServerMessage['type'], M extends { type: string } = ServerMessage>(
  type: T,
): OperatorFunction<M, Extract<M, { type: T }>> {
  return filter((message: M): message is Extract<M, { type: T }> => message.type === type);
}

/** Events only (`cita_*`), for dashboards that recompute on any change. */
export function citaEvents<M extends { type: string }>(): OperatorFunction<M, Extract<M, CitaEvent>> {
  return filter((message: M): message is Extract<M, CitaEvent> => message.type.startsWith('cita_'));
}

/** A channel ended by the server: its `code` says why (`forbidden`, `bad_channel`, ...). */
export class CitasRealtimeError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly channel?: string,
  ) {
    super(message);
    this.name = 'CitasRealtimeError';
  }
}

export type ConnectionStatus = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ConnectionState {
  status: ConnectionStatus;
  /** Reconnections so far (not counting the first connection). */
  reconnects: number;
  /** Failed attempts since the connection was last open. */
  attempt: number;
  /** How the last socket ended. */
  lastClose?: { code: number; reason: string };
  /** When the next attempt starts (epoch ms), while reconnecting. */
  nextAttemptAt?: number;
}

export interface BackoffOptions {
  /** First delay, ms. Default 500. */
  initialMs?: number;
  /** Largest delay, ms. Default 30000. */
  maxMs?: number;
  /** Growth per failed attempt. Default 2. */
  factor?: number;
  /** Share of the delay that is random, 0..1 ("equal jitter"). Default 0.5. */
  jitter?: number;
}

/** The minimal WebSocket the client needs: the browser's, or `ws`'s in Node.js. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** `ws://host:8080/ws` or `wss://...`. The token is added as `?token=`. */
  url: string;
  /** A fixed token (development), or use `getToken`. */
  token?: string;
  /**
   * Called for every (re)connection and, `refreshBeforeSeconds` before the current token
   * expires, for a fresh one that is sent on the open socket. Return the app's current access
   * token (Supabase: `(await supabase.auth.getSession()).data.session.access_token`).
   */
  getToken?: () => string | Promise<string>;
  /** Seconds before `exp` to refresh the token on the open socket. Default 60. */
  refreshBeforeSeconds?: number;
  /** Reconnection delays. */
  backoff?: BackoffOptions;
  /** Statistics snapshots on every channel unless a channel says otherwise. Default true. */
  stats?: boolean;
  /** The WebSocket implementation; default the global one. */
  WebSocket?: WebSocketConstructor;
}

export interface ChannelOptions {
  /** Resume after this seq the first time (e.g. the last seq the app stored). */
  since?: number;
  /** Statistics snapshots for this channel. Default: the client's `stats`. */
  stats?: boolean;
}

const CHANNEL_PREFIX = 'estadisticas:';
const OPEN = 1;

interface ChannelState {
  negocioId: string;
  subject: Subject<ChannelMessage>;
  refs: number;
  lastSeq?: number;
  since?: number;
  stats: boolean;
}

/**
 * One WebSocket to citas-realtime, shared by every channel. Create one per app (an Angular
 * service), call `close()` when done.
 */
export class CitasRealtimeClient {
  private readonly options: Required<Omit<ClientOptions, 'token' | 'getToken' | 'WebSocket' | 'backoff'>> & {
    backoff: Required<BackoffOptions>;
  };
  private readonly getToken: () => string | Promise<string>;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly channels = new Map<string, ChannelState>();
  private readonly stateSubject: BehaviorSubject<ConnectionState>;
  private readonly messageSubject = new Subject<ServerMessage>();
  private socket?: WebSocketLike;
  private closedByUser = false;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private refreshTimer?: ReturnType<typeof setTimeout>;
  private everOpened = false;

  /** Connection status changes, for an indicator. */
  readonly state$: Observable<ConnectionState>;
  /** Every message, before routing to channels. */
  readonly messages$: Observable<ServerMessage>;

  constructor(options: ClientOptions) {
    if (!options.token && !options.getToken) {
      throw new Error('citas-realtime: pass token or getToken');
    }
    const fixed = options.token;
    this.getToken = options.getToken ?? (() => fixed as string);
    const Impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Impl) {
      throw new Error('citas-realtime: no WebSocket implementation (in Node.js pass WebSocket from "ws")');
    }
    this.WebSocketImpl = Impl;
    this.options = {
      url: options.url,
      refreshBeforeSeconds: options.refreshBeforeSeconds ?? 60,
      stats: options.stats ?? true,
      backoff: {
        initialMs: options.backoff?.initialMs ?? 500,
        maxMs: options.backoff?.maxMs ?? 30_000,
        factor: options.backoff?.factor ?? 2,
        jitter: options.backoff?.jitter ?? 0.5,
      },
    };
    this.stateSubject = new BehaviorSubject<ConnectionState>({ status: 'connecting', reconnects: 0, attempt: 0 });
    this.state$ = this.stateSubject.asObservable();
    this.messages$ = this.messageSubject.asObservable();
    void this.connect();
  }

  /** The current connection state. */
  get state(): ConnectionState {
    return this.stateSubject.value;
  }

  /**
   * The messages of negocio `negocioId`'s channel: `cita_*` events, `estadisticas` snapshots,
   * `resync`, and non-fatal errors (`stats_unavailable`). A refusal (`forbidden`, `bad_channel`,
   * `too_many_subscriptions`, `unavailable`) ends the Observable with a `CitasRealtimeError`.
   */
  channel(negocioId: string, options: ChannelOptions = {}): Observable<ChannelMessage> {
    return new Observable<ChannelMessage>((subscriber) => {
      let state = this.channels.get(negocioId);
      if (!state) {
        state = {
          negocioId,
          subject: new Subject<ChannelMessage>(),
          refs: 0,
          since: options.since,
          stats: options.stats ?? this.options.stats,
        };
        this.channels.set(negocioId, state);
      }
      const current = state;
      const inner = current.subject.subscribe(subscriber);
      current.refs += 1;
      if (current.refs === 1) {
        this.sendSubscribe(current);
      }
      return () => {
        inner.unsubscribe();
        current.refs -= 1;
        if (current.refs === 0 && this.channels.get(negocioId) === current) {
          this.channels.delete(negocioId);
          this.send({ type: 'unsubscribe', channel: CHANNEL_PREFIX + negocioId });
        }
      };
    });
  }

  /** The last event seq seen on a channel (store it to resume after a page reload). */
  lastSeq(negocioId: string): number | undefined {
    return this.channels.get(negocioId)?.lastSeq;
  }

  /** Sends a fresh token now (normally done by the refresh timer). */
  async refreshToken(): Promise<void> {
    const token = await this.getToken();
    this.send({ type: 'auth', token });
    this.scheduleRefresh(token);
  }

  /** Closes the socket for good; channels complete. */
  close(): void {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.refreshTimer);
    this.socket?.close(1000, 'client closed');
    this.socket = undefined;
    for (const state of this.channels.values()) {
      state.subject.complete();
    }
    this.channels.clear();
    this.setState({ status: 'closed' });
    this.stateSubject.complete();
    this.messageSubject.complete();
  }

  private setState(patch: Partial<ConnectionState>): void {
    if (this.stateSubject.closed) return;
    this.stateSubject.next({ ...this.stateSubject.value, ...patch });
  }

  private async connect(): Promise<void> {
    if (this.closedByUser) return;
    let token: string;
    try {
      token = await this.getToken();
    } catch (error) {
      this.scheduleReconnect({ code: 4000, reason: `getToken failed: ${String(error)}` });
      return;
    }
    if (this.closedByUser) return;
    const separator = this.options.url.includes('?') ? '&' : '?';
    const socket = new this.WebSocketImpl(`${this.options.url}${separator}token=${encodeURIComponent(token)}`);
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      const reconnects = this.everOpened ? this.state.reconnects + 1 : 0;
      this.everOpened = true;
      this.setState({ status: 'open', attempt: 0, reconnects, nextAttemptAt: undefined });
      this.scheduleRefresh(token);
      for (const state of this.channels.values()) {
        this.sendSubscribe(state);
      }
    };
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      this.route(event.data);
    };
    socket.onerror = () => {
      // A close event follows; reconnecting is decided there.
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      clearTimeout(this.refreshTimer);
      if (this.closedByUser) return;
      this.scheduleReconnect({ code: event.code, reason: event.reason });
    };
  }

  private scheduleReconnect(lastClose: { code: number; reason: string }): void {
    const attempt = this.state.attempt;
    const { initialMs, maxMs, factor, jitter } = this.options.backoff;
    const ceiling = Math.min(maxMs, initialMs * Math.pow(factor, attempt));
    // Equal jitter: never sooner than (1 - jitter) of the ceiling, so a fleet of dashboards
    // that lost the server together comes back spread out, not in one wave.
    const delay = ceiling * (1 - jitter) + Math.random() * ceiling * jitter;
    this.setState({
      status: 'reconnecting',
      attempt: attempt + 1,
      lastClose,
      nextAttemptAt: Date.now() + delay,
    });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.connect(), delay);
  }

  private scheduleRefresh(token: string): void {
    clearTimeout(this.refreshTimer);
    const exp = tokenExpiry(token);
    if (exp === undefined) return;
    const inMs = Math.max(1000, (exp - this.options.refreshBeforeSeconds) * 1000 - Date.now());
    // setTimeout's limit is about 24.8 days.
    this.refreshTimer = setTimeout(() => {
      this.refreshToken().catch(() => {
        // The server closes the socket at expiry (1008); the reconnect asks getToken again.
      });
    }, Math.min(inMs, 2_000_000_000));
  }

  private sendSubscribe(state: ChannelState): void {
    const since = state.lastSeq ?? state.since;
    const message: Record<string, unknown> = { type: 'subscribe', channel: CHANNEL_PREFIX + state.negocioId };
    if (since !== undefined) message.since = since;
    if (!state.stats) message.stats = false;
    this.send(message);
  }

  private send(message: Record<string, unknown>): void {
    if (this.socket && this.socket.readyState === OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  private route(data: unknown): void {
    let message: ServerMessage;
    try {
      message = JSON.parse(typeof data === 'string' ? data : String(data)) as ServerMessage;
    } catch {
      return;
    }
    this.messageSubject.next(message);
    const channel = 'channel' in message ? message.channel : undefined;
    if (!channel || !channel.startsWith(CHANNEL_PREFIX)) return;
    const state = this.channels.get(channel.slice(CHANNEL_PREFIX.length));
    if (!state) return;
    switch (message.type) {
      case 'subscribed':
      case 'unsubscribed':
        return;
      case 'error':
        if (message.code === 'stats_unavailable') {
          state.subject.next(message);
        } else {
          this.channels.delete(state.negocioId);
          state.subject.error(new CitasRealtimeError(message.code, message.message, channel));
        }
        return;
      case 'cita_created':
      case 'cita_updated':
      case 'cita_deleted':
      case 'cita_status_changed':
        // A resume may overlap what was already seen: each seq once.
        if (state.lastSeq !== undefined && message.data.seq <= state.lastSeq) return;
        state.lastSeq = message.data.seq;
        state.subject.next(message);
        return;
      default:
        state.subject.next(message as ChannelMessage);
    }
  }
}

/** `exp` of a JWT (seconds since the epoch), without verifying it. */
export function tokenExpiry(token: string): number | undefined {
  const claims = tokenClaims(token);
  return typeof claims?.exp === 'number' ? claims.exp : undefined;
}

/** The claims of a JWT, unverified: for showing which negocios a token names. */
export function tokenClaims(token: string): Record<string, unknown> | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const binary = atob(padded);
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? (claims as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The negocios a token's claims name (`negocio_id`, `negocio_ids`, also in `app_metadata`). */
export function tokenNegocios(token: string): string[] {
  const claims = tokenClaims(token);
  if (!claims) return [];
  const found = new Set<string>();
  const scopes = [claims, claims.app_metadata].filter(
    (s): s is Record<string, unknown> => !!s && typeof s === 'object',
  );
  for (const scope of scopes) {
    const one = scope.negocio_id;
    if (typeof one === 'string' || typeof one === 'number') found.add(String(one));
    const many = scope.negocio_ids;
    if (Array.isArray(many)) {
      for (const id of many) if (typeof id === 'string' || typeof id === 'number') found.add(String(id));
    }
  }
  return [...found];
}
