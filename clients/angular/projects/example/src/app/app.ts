import { Component, inject } from '@angular/core';

import { DashboardComponent } from './dashboard.component';
import { SETTINGS_READING } from './settings';

/** The dashboard, or what the URL fragment is missing. */
@Component({
  selector: 'app-root',
  imports: [DashboardComponent],
  template: `
    @if (reading.ok) {
      <app-dashboard [negocio]="reading.settings.negocio" />
    } @else {
      <section class="ajustes" data-testid="ajustes">
        <h1>Citas en vivo</h1>
        <p>Open this page with the settings in the URL fragment:</p>
        <pre>#server=ws://127.0.0.1:8080/ws&amp;token=&lt;jwt&gt;&amp;negocio=negocio_123</pre>
        <ul>
          @for (problem of reading.problems; track problem) {
            <li>{{ problem }}</li>
          }
        </ul>
      </section>
    }
  `,
})
export class App {
  protected readonly reading = inject(SETTINGS_READING);
}
