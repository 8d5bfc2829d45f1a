import { Observable, defer, finalize, map, share, startWith, tap } from 'rxjs';
import { filterByType } from '@citas-realtime/client';
import type { ChannelMessage, Estadisticas } from '@citas-realtime/client';

/**
 * One negocio's channel as the service shares it: a single subscription to the client's channel
 * for every component that shows the negocio, and the latest statistics snapshot, so that a
 * component that arrives after the server sent it still starts from it (the server sends a
 * snapshot when the channel is subscribed and after changes, not when a second viewer appears).
 */
export class NegocioChannel {
  private latest?: Estadisticas;

  /** The channel's messages; subscribed on the server while anyone listens. */
  readonly messages: Observable<ChannelMessage>;

  /** The latest snapshot at once (when there is one), then each new one. */
  readonly snapshots: Observable<Estadisticas> = defer(() => {
    const current = this.latest;
    const next = this.messages.pipe(
      filterByType<'estadisticas', ChannelMessage>('estadisticas'),
      map((message) => message.data),
    );
    return current ? next.pipe(startWith(current)) : next;
  });

  /** `onIdle` runs when the last listener leaves (or the server refused the channel). */
  constructor(source: Observable<ChannelMessage>, onIdle: () => void) {
    this.messages = source.pipe(
      tap((message) => this.remember(message)),
      finalize(() => {
        this.latest = undefined;
        onIdle();
      }),
      share(),
    );
  }

  private remember(message: ChannelMessage): void {
    if (message.type === 'estadisticas') this.latest = message.data;
  }
}
