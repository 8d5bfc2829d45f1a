import { Component, Injectable, Injector, inject, input } from '@angular/core';
import { ComponentFixture, TestBed } from '@angular/core/testing';
import type { CitaEvent } from '@citas-realtime/client';

import { FakeSocket, citaEvent, snapshot } from '../testing/fake-socket';
import { CitasRealtime } from './citas-realtime.service';
import { CitasRealtimeConfig } from './config';
import { provideCitasRealtime } from './provide-citas-realtime';

/** A component as an app writes one: a negocio input, its events and its figures. */
@Component({ selector: 'test-viewer', template: '{{ stats()?.total }}' })
class Viewer {
  readonly negocio = input('n1');
  private readonly realtime = inject(CitasRealtime);
  readonly stats = this.realtime.estadisticas(this.negocio);
  readonly seen: CitaEvent[] = [];

  constructor() {
    this.realtime.events(this.negocio).subscribe((event) => this.seen.push(event));
  }
}

function configure(config: Partial<CitasRealtimeConfig> = {}): void {
  TestBed.configureTestingModule({
    providers: [
      provideCitasRealtime({ url: 'ws://realtime.test/ws', token: 'fixed', WebSocket: FakeSocket, ...config }),
    ],
  });
}

async function until(check: () => boolean, what: string): Promise<void> {
  await vi.waitFor(() => {
    if (!check()) throw new Error(`still waiting for ${what}`);
  });
}

async function viewer(negocio = 'n1'): Promise<ComponentFixture<Viewer>> {
  const fixture = TestBed.createComponent(Viewer);
  fixture.componentRef.setInput('negocio', negocio);
  await fixture.whenStable();
  return fixture;
}

/** The socket, once the client made it (the token may be async), opened. */
async function openSocket(): Promise<FakeSocket> {
  await until(() => FakeSocket.made.length > 0, 'a socket');
  FakeSocket.last.open();
  return FakeSocket.last;
}

describe('CitasRealtime', () => {
  beforeEach(() => FakeSocket.reset());

  it('shares one socket and one server subscription between components; the last one destroyed unsubscribes', async () => {
    configure();
    const first = await viewer('n1');
    const second = await viewer('n1');
    const socket = await openSocket();

    expect(FakeSocket.made.length).toBe(1);
    expect(socket.sentOf('subscribe')).toEqual([{ type: 'subscribe', channel: 'estadisticas:n1' }]);
    socket.receive(citaEvent('n1', 1));
    expect(first.componentInstance.seen.map((e) => e.data.seq)).toEqual([1]);
    expect(second.componentInstance.seen.map((e) => e.data.seq)).toEqual([1]);

    first.destroy();
    expect(socket.sentOf('unsubscribe')).toEqual([]);
    socket.receive(citaEvent('n1', 2));
    expect(second.componentInstance.seen.map((e) => e.data.seq)).toEqual([1, 2]);

    second.destroy();
    expect(socket.sentOf('unsubscribe')).toEqual([{ type: 'unsubscribe', channel: 'estadisticas:n1' }]);
  });

  it('gives a component that arrives later the latest snapshot at once', async () => {
    configure();
    const first = await viewer('n1');
    const socket = await openSocket();
    socket.receive(snapshot('n1', 7, 3));
    expect(first.componentInstance.stats()?.total).toBe(7);

    // The server sends no snapshot for a second viewer of a subscribed channel.
    const late = await viewer('n1');
    expect(late.componentInstance.stats()?.total).toBe(7);
    expect(socket.sentOf('subscribe').length).toBe(1);

    socket.receive(snapshot('n1', 8, 4));
    expect(late.componentInstance.stats()?.total).toBe(8);
    expect(first.componentInstance.stats()?.total).toBe(8);
  });

  it('follows a negocio input that changes: the old channel is released, the new one subscribed', async () => {
    configure();
    const fixture = await viewer('n1');
    const socket = await openSocket();
    socket.receive(snapshot('n1', 5, 1));
    expect(fixture.componentInstance.stats()?.total).toBe(5);

    fixture.componentRef.setInput('negocio', 'n2');
    await fixture.whenStable();
    expect(socket.sentOf('unsubscribe')).toEqual([{ type: 'unsubscribe', channel: 'estadisticas:n1' }]);
    expect(socket.sentOf('subscribe').at(-1)).toEqual({ type: 'subscribe', channel: 'estadisticas:n2' });
    expect(fixture.componentInstance.stats()).toBeUndefined();
    socket.receive(snapshot('n2', 2, 9));
    socket.receive(citaEvent('n2', 10));
    expect(fixture.componentInstance.stats()?.total).toBe(2);
    expect(fixture.componentInstance.seen.map((e) => e.data.negocio_id)).toEqual(['n2']);
  });

  it('tells the connection state: connecting, open, reconnecting with attempt and reason, closed with the app', async () => {
    configure({ backoff: { initialMs: 1, maxMs: 1 } });
    const realtime = TestBed.inject(CitasRealtime);
    expect(realtime.connection()).toEqual({ status: 'connecting' });

    const socket = await openSocket();
    expect(realtime.connection()).toEqual({ status: 'open', reconnects: 0 });

    socket.drop(1008, 'token expired');
    expect(realtime.connection()).toMatchObject({ status: 'reconnecting', attempt: 1, reason: '1008 token expired' });
    await until(() => FakeSocket.made.length === 2, 'the reconnect');
    FakeSocket.last.open();
    expect(realtime.connection()).toEqual({ status: 'open', reconnects: 1 });

    TestBed.resetTestingModule();
    expect(FakeSocket.last.closedByClient).toBe(true);
    expect(realtime.connection()).toEqual({ status: 'closed', reason: 'closed by the app' });
  });

  it('calls the token function in an injection context, for the first connection and each reconnect', async () => {
    @Injectable({ providedIn: 'root' })
    class Auth {
      issued = 0;
      async accessToken(): Promise<string> {
        this.issued += 1;
        return `token-${this.issued}`;
      }
    }
    configure({ token: () => inject(Auth).accessToken(), backoff: { initialMs: 1, maxMs: 1 } });
    TestBed.inject(CitasRealtime);
    const socket = await openSocket();
    expect(socket.token).toBe('token-1');

    socket.drop();
    await until(() => FakeSocket.made.length === 2, 'the reconnect');
    expect(FakeSocket.last.token).toBe('token-2');
  });

  it('needs an injection context or an injector, and says so', async () => {
    configure();
    const realtime = TestBed.inject(CitasRealtime);
    expect(() => realtime.events('n1')).toThrow(/injection context/);
    expect(() => realtime.estadisticas('n1')).toThrow(/injection context/);

    const seen: CitaEvent[] = [];
    realtime.events('n1', { injector: TestBed.inject(Injector) }).subscribe((event) => seen.push(event));
    const socket = await openSocket();
    socket.receive(citaEvent('n1', 1));
    expect(seen.length).toBe(1);
  });

  it('ends events() with the refusal and leaves the figures empty when the token does not grant the negocio', async () => {
    configure();
    const realtime = TestBed.inject(CitasRealtime);
    const injector = TestBed.inject(Injector);
    let refusal: unknown;
    realtime.events('ajeno', { injector }).subscribe({ error: (error: unknown) => (refusal = error) });
    const stats = realtime.estadisticas('ajeno', { injector });
    const socket = await openSocket();
    socket.receive({
      type: 'error',
      code: 'forbidden',
      message: 'this token does not grant that negocio',
      channel: 'estadisticas:ajeno',
    });
    expect(refusal).toMatchObject({ name: 'CitasRealtimeError', code: 'forbidden', channel: 'estadisticas:ajeno' });
    expect(stats()).toBeUndefined();
  });
});
