import { Component, inject, input, signal } from '@angular/core';
import { CitasRealtime, CitasRealtimeError } from 'citas-realtime-angular';
import type { CitaEvent } from 'citas-realtime-angular';

import { estadoText } from './etiquetas';

/** The most events the list keeps. */
const KEEP = 200;

/** The live list of changes, newest first. */
@Component({
  selector: 'app-eventos',
  template: `
    <section class="eventos" aria-label="Cambios">
      <h2>Cambios</h2>
      @if (error(); as message) {
        <p class="error" data-testid="error">{{ message }}</p>
      }
      @if (resyncs() > 0) {
        <p class="aviso" data-testid="resync">Resincronizado: las cifras se recargaron ({{ resyncs() }}).</p>
      }
      <ol>
        @for (evento of eventos(); track evento.data.seq) {
          <li
            data-testid="evento"
            [attr.data-type]="evento.type"
            [attr.data-seq]="evento.data.seq"
            [attr.data-cita]="evento.data.cita_id"
          >
            <span class="tipo">{{ evento.type }}</span>
            <code class="cita">{{ evento.data.cita_id }}</code>
            <span class="cambio">{{ estadoText(evento) }}</span>
            @if (cuando(evento); as cuando) {
              <span class="cuando" data-testid="cuando">{{ cuando }}</span>
            }
            <time [attr.datetime]="evento.data.timestamp">{{ hora(evento) }}</time>
          </li>
        } @empty {
          <li class="vacio">Esperando cambios…</li>
        }
      </ol>
    </section>
  `,
})
export class EventosComponent {
  readonly negocio = input.required<string>();
  private readonly realtime = inject(CitasRealtime);
  protected readonly eventos = signal<readonly CitaEvent[]>([]);
  protected readonly error = signal<string | undefined>(undefined);
  protected readonly resyncs = signal(0);
  protected readonly estadoText = estadoText;

  constructor() {
    // Released with the component: no unsubscribe to write.
    this.realtime.events(this.negocio).subscribe({
      next: (evento) => this.eventos.update((list) => [evento, ...list].slice(0, KEEP)),
      error: (error: unknown) => this.error.set(describeError(error)),
    });
    this.realtime.resync(this.negocio).subscribe(() => this.resyncs.update((n) => n + 1));
  }

  /** The cita's fecha and hora_inicio, when the DBA chose them as record columns. */
  protected cuando(evento: CitaEvent): string {
    const record = evento.data.record ?? evento.data.old_record;
    const fecha = typeof record?.['fecha'] === 'string' ? record['fecha'] : '';
    const hora = typeof record?.['hora_inicio'] === 'string' ? record['hora_inicio'].slice(0, 5) : '';
    return `${fecha} ${hora}`.trim();
  }

  protected hora(evento: CitaEvent): string {
    return new Date(evento.data.timestamp).toLocaleTimeString('es');
  }
}

function describeError(error: unknown): string {
  return error instanceof CitasRealtimeError ? `${error.code}: ${error.message}` : String(error);
}
