// Headless Chromium (Debian's, never a downloaded one) and what the tests read from the page.
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export async function launchChromium() {
  try {
    return await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
  } catch (error) {
    throw new Error(`cannot start Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH): ${error.message}`);
  }
}

/**
 * Runs in the page before the app: counts the WebSockets the page opens, keeps what it sends on
 * them and how they closed (window.__sockets), so a test can tell one shared socket from several
 * and see a close the page's badge has already moved past.
 */
export function recordSockets() {
  const Native = window.WebSocket;
  const record = { made: 0, sent: [], closes: [] };
  window.__sockets = record;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      record.made += 1;
      this.addEventListener('close', (e) => record.closes.push({ code: e.code, reason: e.reason }));
    }
    send(data) {
      record.sent.push(JSON.parse(data));
      super.send(data);
    }
  };
}

/** What recordSockets() saw: { made, sent, closes }. */
export function socketsOf(page) {
  return page.evaluate(() => window.__sockets);
}

export const ESTADOS = ['pendiente', 'confirmada', 'completada', 'cancelada'];

/** The figures the page shows: { total, por_estado, hoy: { total, por_estado } } (numbers, or '–'). */
export function shownCounts(page) {
  return page.evaluate((estados) => {
    const read = (id) => {
      const text = document.querySelector(`[data-testid="${id}"]`)?.textContent?.trim();
      if (text === undefined) throw new Error(`no [data-testid="${id}"] on the page`);
      return /^\d+$/.test(text) ? Number(text) : text;
    };
    const byEstado = (prefix) => Object.fromEntries(estados.map((e) => [e, read(`${prefix}${e}`)]));
    return {
      total: read('total'),
      por_estado: byEstado('estado-'),
      hoy: { total: read('hoy-total'), por_estado: byEstado('hoy-') },
    };
  }, ESTADOS);
}

/** The change list as shown, newest first: [{ type, seq, cita, text }]. */
export function shownEvents(page) {
  return page.$$eval('[data-testid="evento"]', (items) =>
    items.map((li) => ({
      type: li.getAttribute('data-type'),
      seq: Number(li.getAttribute('data-seq')),
      cita: li.getAttribute('data-cita'),
      text: li.textContent ?? '',
    })),
  );
}
