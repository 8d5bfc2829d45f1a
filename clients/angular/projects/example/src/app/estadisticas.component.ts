import { Component, computed, inject, input } from '@angular/core';
import { CitasRealtime } from 'citas-realtime-angular';

import { ESTADOS, ETIQUETA_ESTADO } from './etiquetas';

/** Citas per estado, in all and today: the server's live figures for the negocio. */
@Component({
  selector: 'app-estadisticas',
  template: `
    <section class="estadisticas" [attr.data-seq]="stats()?.seq ?? null" aria-label="Citas por estado">
      <h2>Citas: <span data-testid="total">{{ stats()?.total ?? '–' }}</span></h2>
      @for (estado of estados; track estado) {
        <div class="estado" [attr.data-estado]="estado">
          <span class="etiqueta">{{ etiquetas[estado] }}</span>
          <span class="barra" [style.width.%]="share(estado)"></span>
          <strong [attr.data-testid]="'estado-' + estado">{{ count(estado) }}</strong>
        </div>
      }
      <h2>Hoy: <span data-testid="hoy-total">{{ stats()?.hoy?.total ?? '–' }}</span></h2>
      <div class="hoy">
        @for (estado of estados; track estado) {
          <span class="hoy-estado">
            {{ etiquetas[estado] }}: <strong [attr.data-testid]="'hoy-' + estado">{{ countToday(estado) }}</strong>
          </span>
        }
      </div>
    </section>
  `,
})
export class EstadisticasComponent {
  readonly negocio = input.required<string>();
  protected readonly estados = ESTADOS;
  protected readonly etiquetas = ETIQUETA_ESTADO;
  protected readonly stats = inject(CitasRealtime).estadisticas(this.negocio);
  private readonly largest = computed(() => Math.max(1, ...ESTADOS.map((e) => this.stats()?.por_estado?.[e] ?? 0)));

  /** The count, or a dash before the first snapshot. */
  protected count(estado: string): number | string {
    return this.stats()?.por_estado?.[estado] ?? '–';
  }

  protected countToday(estado: string): number | string {
    return this.stats()?.hoy?.por_estado[estado] ?? '–';
  }

  protected share(estado: string): number {
    return (100 * (this.stats()?.por_estado?.[estado] ?? 0)) / this.largest();
  }
}
