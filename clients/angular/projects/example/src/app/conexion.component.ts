import { Component, computed, inject } from '@angular/core';
import { CitasRealtime, Connection } from 'citas-realtime-angular';

/** The connection badge: conectado, reconectando (intento N), ... */
@Component({
  selector: 'app-conexion',
  template: `
    <span
      class="conexion"
      data-testid="conexion"
      [attr.data-status]="connection().status"
      [attr.title]="detalle()"
      >{{ texto() }}</span
    >
    <span class="reconexiones">reconexiones: <span data-testid="reconexiones">{{ reconexiones() }}</span></span>
  `,
})
export class ConexionComponent {
  protected readonly connection = inject(CitasRealtime).connection;
  protected readonly texto = computed(() => describe(this.connection()));
  protected readonly detalle = computed(() => detail(this.connection()));
  protected readonly reconexiones = computed(() => {
    const connection = this.connection();
    return 'reconnects' in connection ? connection.reconnects : 0;
  });
}

function describe(connection: Connection): string {
  switch (connection.status) {
    case 'connecting':
      return 'conectando…';
    case 'open':
      return 'conectado';
    case 'reconnecting':
      return `reconectando, intento ${connection.attempt}`;
    case 'closed':
      return 'sin conexión';
  }
}

function detail(connection: Connection): string | null {
  return connection.status === 'reconnecting' || connection.status === 'closed' ? connection.reason : null;
}
