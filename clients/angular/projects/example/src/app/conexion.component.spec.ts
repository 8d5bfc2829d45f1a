import { signal } from '@angular/core';
import { TestBed } from '@angular/core/testing';
import { CitasRealtime, Connection } from 'citas-realtime-angular';

import { ConexionComponent } from './conexion.component';

describe('ConexionComponent', () => {
  it('shows each state of the connection in words', async () => {
    const connection = signal<Connection>({ status: 'connecting' });
    TestBed.configureTestingModule({ providers: [{ provide: CitasRealtime, useValue: { connection } }] });
    const fixture = TestBed.createComponent(ConexionComponent);
    const badge = () => {
      const element = (fixture.nativeElement as HTMLElement).querySelector('[data-testid="conexion"]');
      return { text: element?.textContent?.trim(), status: element?.getAttribute('data-status'), title: element?.getAttribute('title') };
    };
    const shown = async (state: Connection) => {
      connection.set(state);
      await fixture.whenStable();
      return badge();
    };

    expect(await shown({ status: 'connecting' })).toEqual({ text: 'conectando…', status: 'connecting', title: null });
    expect(await shown({ status: 'open', reconnects: 0 })).toEqual({ text: 'conectado', status: 'open', title: null });
    expect(await shown({ status: 'reconnecting', attempt: 3, reconnects: 1, reason: '1006' })).toEqual({
      text: 'reconectando, intento 3',
      status: 'reconnecting',
      title: '1006',
    });
    expect((fixture.nativeElement as HTMLElement).querySelector('[data-testid="reconexiones"]')?.textContent).toBe('1');
    expect(await shown({ status: 'closed', reason: 'closed by the app' })).toEqual({
      text: 'sin conexión',
      status: 'closed',
      title: 'closed by the app',
    });
  });
});
