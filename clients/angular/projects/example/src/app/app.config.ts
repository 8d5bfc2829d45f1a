import {
  ApplicationConfig,
  EnvironmentProviders,
  Provider,
  inject,
  provideBrowserGlobalErrorListeners,
} from '@angular/core';
import { provideCitasRealtime } from 'citas-realtime-angular';

import { FragmentTokens } from './fragment-tokens';
import { DashboardSettings, SETTINGS_READING, SettingsReading } from './settings';

export function appConfig(reading: SettingsReading): ApplicationConfig {
  return {
    providers: [
      provideBrowserGlobalErrorListeners(),
      { provide: SETTINGS_READING, useValue: reading },
      ...(reading.ok ? realtimeProviders(reading.settings) : []),
    ],
  };
}

/** One socket for the whole app; its token function runs in an injection context. */
function realtimeProviders(settings: DashboardSettings): (Provider | EnvironmentProviders)[] {
  return [
    { provide: FragmentTokens, useValue: new FragmentTokens(settings) },
    provideCitasRealtime({
      url: settings.server,
      token: () => inject(FragmentTokens).next(),
    }),
  ];
}
