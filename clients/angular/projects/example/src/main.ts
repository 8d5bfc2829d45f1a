import { bootstrapApplication } from '@angular/platform-browser';

import { App } from './app/app';
import { appConfig } from './app/app.config';
import { readSettings } from './app/settings';

// The settings come from the URL fragment (it never reaches a server), read once at start: a new
// fragment starts the app again.
window.addEventListener('hashchange', () => window.location.reload());

bootstrapApplication(App, appConfig(readSettings(window.location.hash))).catch((error: unknown) =>
  console.error(error),
);
