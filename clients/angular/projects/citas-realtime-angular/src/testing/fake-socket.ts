import type { WebSocketLike } from '@citas-realtime/client';

type Sent = { type: string; channel?: string; token?: string; since?: number };

/** A WebSocket the tests drive by hand: they open it, feed it server messages, drop it. */
export class FakeSocket implements WebSocketLike {
  /** Every socket made, oldest first. */
  static made: FakeSocket[] = [];

  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  readonly sent: Sent[] = [];
  closedByClient = false;

  constructor(readonly url: string) {
    FakeSocket.made.push(this);
  }

  static reset(): void {
    FakeSocket.made = [];
  }

  /** The newest socket. */
  static get last(): FakeSocket {
    const socket = FakeSocket.made.at(-1);
    if (!socket) throw new Error('no socket was made');
    return socket;
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Sent);
  }

  close(): void {
    this.closedByClient = true;
    this.readyState = 3;
  }

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(message: object): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  drop(code = 1006, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** What was sent of one type (`subscribe`, `unsubscribe`, `auth`). */
  sentOf(type: string): Sent[] {
    return this.sent.filter((message) => message.type === type);
  }

  /** The token the socket was opened with (`?token=`). */
  get token(): string | null {
    return new URL(this.url).searchParams.get('token');
  }
}

/** A `cita_*` event as the server sends it. */
export function citaEvent(negocio: string, seq: number, type = 'cita_created', estado = 'pendiente') {
  return {
    type,
    channel: `estadisticas:${negocio}`,
    data: {
      action: type.replace('cita_', ''),
      negocio_id: negocio,
      cita_id: `cita-${seq}`,
      estado,
      estado_anterior: null,
      seq,
      timestamp: new Date(0).toISOString(),
    },
  };
}

/** An `estadisticas` snapshot as the server sends it. */
export function snapshot(negocio: string, total: number, seq: number) {
  return {
    type: 'estadisticas',
    channel: `estadisticas:${negocio}`,
    data: { total, por_estado: { pendiente: total, confirmada: 0, completada: 0, cancelada: 0 }, seq },
  };
}
