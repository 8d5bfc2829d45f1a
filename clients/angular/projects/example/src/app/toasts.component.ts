import { Component, DestroyRef, inject, input, signal } from '@angular/core';
import { CitasRealtime } from 'citas-realtime-angular';
import type { CitaEvent } from 'citas-realtime-angular';

import { toastText } from './etiquetas';

/** How long a toast stays, ms. */
const SHOWN_MS = 5000;

interface Toast {
  readonly seq: number;
  readonly type: CitaEvent['type'];
  readonly text: string;
}

/** One toast per change, as the old dashboard showed with toastr. */
@Component({
  selector: 'app-toasts',
  template: `
    <div class="toasts" aria-live="polite">
      @for (toast of toasts(); track toast.seq) {
        <div class="toast" data-testid="toast" [attr.data-type]="toast.type">{{ toast.text }}</div>
      }
    </div>
  `,
})
export class ToastsComponent {
  readonly negocio = input.required<string>();
  protected readonly toasts = signal<readonly Toast[]>([]);
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();

  constructor() {
    inject(CitasRealtime)
      .events(this.negocio)
      // A refused channel is shown by EventosComponent.
      .subscribe({ next: (event) => this.show(event), error: () => undefined });
    inject(DestroyRef).onDestroy(() => this.timers.forEach(clearTimeout));
  }

  private show(event: CitaEvent): void {
    const toast: Toast = { seq: event.data.seq, type: event.type, text: toastText(event) };
    this.toasts.update((list) => [...list, toast]);
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      this.toasts.update((list) => list.filter((t) => t !== toast));
    }, SHOWN_MS);
    this.timers.add(timer);
  }
}
