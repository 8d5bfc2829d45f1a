import {
  DestroyRef,
  EnvironmentInjector,
  Injectable,
  Injector,
  Signal,
  inject,
  runInInjectionContext,
  signal,
} from '@angular/core';
import { takeUntilDestroyed, toSignal } from '@angular/core/rxjs-interop';
import { Observable, catchError, of, startWith, switchMap } from 'rxjs';
import { CitasRealtimeClient, citaEvents, filterByType } from '@citas-realtime/client';
import type { ChannelMessage, CitaEvent, Estadisticas, ResyncMessage } from '@citas-realtime/client';

import { CITAS_REALTIME_CONFIG } from './config';
import { Connection, toConnection } from './connection';
import { InjectionOptions, NegocioRef, negocioIds, owningInjector } from './injection';
import { NegocioChannel } from './negocio-channel';

/**
 * citas-realtime for Angular: one WebSocket for the whole app (provided by
 * `provideCitasRealtime()`), shared by every component, with per-negocio events and statistics.
 *
 * `events()`, `estadisticas()` and `resync()` are called in an injection context (a component's
 * field initializer or constructor) or with `{ injector }`; what they subscribe is released when
 * that component (its `DestroyRef`) is destroyed. A negocio's channel is subscribed on the server
 * while at least one component shows it.
 */
@Injectable()
export class CitasRealtime {
  private readonly config = inject(CITAS_REALTIME_CONFIG);
  private readonly injector = inject(EnvironmentInjector);
  private readonly channels = new Map<string, NegocioChannel>();
  private readonly client = this.createClient();
  private readonly state = signal<Connection>(toConnection(this.client.state));

  /** The socket's state: connecting, open, reconnecting (with the attempt), closed (with why). */
  readonly connection: Signal<Connection> = this.state.asReadonly();

  constructor() {
    const states = this.client.state$.subscribe((state) => this.state.set(toConnection(state)));
    inject(DestroyRef).onDestroy(() => {
      states.unsubscribe();
      this.client.close();
      this.state.set(toConnection(this.client.state));
    });
  }

  /** Every change of the negocio's citas (`cita_created`, `cita_status_changed`, ...), typed. */
  events(negocio: NegocioRef, options?: InjectionOptions): Observable<CitaEvent> {
    const injector = owningInjector(this.events, options);
    return this.messages(negocio, injector).pipe(
      citaEvents(),
      takeUntilDestroyed(injector.get(DestroyRef)),
    );
  }

  /**
   * The negocio's latest statistics snapshot; `undefined` until the first one arrives, and for a
   * negocio the token does not grant (`events()` ends with the refusal).
   */
  estadisticas(negocio: NegocioRef, options?: InjectionOptions): Signal<Estadisticas | undefined> {
    const injector = owningInjector(this.estadisticas, options);
    const snapshots = negocioIds(negocio, injector).pipe(
      switchMap((id) =>
        this.channel(id).snapshots.pipe(
          startWith(undefined),
          catchError(() => of(undefined)),
        ),
      ),
    );
    return toSignal(snapshots, { initialValue: undefined, injector });
  }

  /** The server could not replay what was missed (retention, TRUNCATE): reload your data. */
  resync(negocio: NegocioRef, options?: InjectionOptions): Observable<ResyncMessage> {
    const injector = owningInjector(this.resync, options);
    return this.messages(negocio, injector).pipe(
      filterByType<'resync', ChannelMessage>('resync'),
      takeUntilDestroyed(injector.get(DestroyRef)),
    );
  }

  private messages(negocio: NegocioRef, injector: Injector): Observable<ChannelMessage> {
    return negocioIds(negocio, injector).pipe(switchMap((id) => this.channel(id).messages));
  }

  private channel(negocio: string): NegocioChannel {
    let channel = this.channels.get(negocio);
    if (!channel) {
      const created = new NegocioChannel(this.client.channel(negocio), () => {
        if (this.channels.get(negocio) === created) this.channels.delete(negocio);
      });
      this.channels.set(negocio, created);
      channel = created;
    }
    return channel;
  }

  private createClient(): CitasRealtimeClient {
    const { token, ...options } = this.config;
    const getToken = () => (typeof token === 'function' ? runInInjectionContext(this.injector, token) : token);
    return new CitasRealtimeClient({ ...options, getToken });
  }
}
