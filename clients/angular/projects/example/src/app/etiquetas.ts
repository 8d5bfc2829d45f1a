import type { CitaEvent, CitaEventType, Estado } from 'citas-realtime-angular';

/** The four estados, in the order the dashboard shows them. */
export const ESTADOS: readonly Estado[] = ['pendiente', 'confirmada', 'completada', 'cancelada'];

export const ETIQUETA_ESTADO: Readonly<Record<Estado, string>> = {
  pendiente: 'Pendientes',
  confirmada: 'Confirmadas',
  completada: 'Completadas',
  cancelada: 'Canceladas',
};

/** The old EstadisticasComponent's toasts, one per kind of change. */
const TOAST: Readonly<Record<CitaEventType, string>> = {
  cita_created: 'Nueva cita creada en tiempo real',
  cita_updated: 'Cita actualizada',
  cita_deleted: 'Cita eliminada',
  cita_status_changed: 'Estado de cita actualizado',
};

export function toastText(event: CitaEvent): string {
  const { estado, estado_anterior } = event.data;
  const change = event.type === 'cita_status_changed' ? `: ${estado_anterior} → ${estado}` : '';
  return TOAST[event.type] + change;
}

/** What an event did to the cita's estado, in words. */
export function estadoText(event: CitaEvent): string {
  const { estado, estado_anterior } = event.data;
  return estado_anterior ? `${estado_anterior} → ${estado}` : (estado ?? '');
}
