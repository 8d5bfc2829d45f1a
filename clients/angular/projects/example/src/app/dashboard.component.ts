import { Component, input } from '@angular/core';

import { ConexionComponent } from './conexion.component';
import { EstadisticasComponent } from './estadisticas.component';
import { EventosComponent } from './eventos.component';
import { ToastsComponent } from './toasts.component';

/** The old EstadisticasComponent's page: figures, the live list, toasts, the connection. */
@Component({
  selector: 'app-dashboard',
  imports: [ConexionComponent, EstadisticasComponent, EventosComponent, ToastsComponent],
  template: `
    <header class="cabecera">
      <h1>Citas en vivo <span class="negocio" data-testid="negocio">{{ negocio() }}</span></h1>
      <app-conexion />
    </header>
    <main class="panel">
      <app-estadisticas [negocio]="negocio()" />
      <app-eventos [negocio]="negocio()" />
    </main>
    <app-toasts [negocio]="negocio()" />
  `,
})
export class DashboardComponent {
  readonly negocio = input.required<string>();
}
