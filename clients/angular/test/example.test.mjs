// The built example app (dist/example/browser, served as static files) in headless Chromium,
// against a real citas-realtime server and PostgreSQL (the TypeScript client's harness: `demo` on
// a free port, writes through psql, a TCP proxy to cut). Everything is asserted on what the page
// shows. Screenshots go to test-results/.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { after, before, test } from 'node:test';

import { DEADLINE_MS, startProxy, startServer, waitFor } from '../../typescript/test/harness.mjs';
import { launchChromium, recordSockets, shownCounts, shownEvents, socketsOf } from './browser.mjs';
import { databaseCounts, loggedSeqs } from './database.mjs';
import { startStaticServer } from './static-server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const EXAMPLE = path.resolve(here, '../dist/example/browser');
const RESULTS = path.resolve(here, '../test-results');
/** What "live" means here: from the write starting to the change on the page. */
const LIVE_MS = 1000;

let server;
let site;
let browser;
const pages = [];

before(async () => {
  if (!existsSync(path.join(EXAMPLE, 'index.html'))) {
    throw new Error(`${EXAMPLE}/index.html is missing: run "npm run build" in clients/angular first`);
  }
  // Sockets close at their token's exp exactly (the server's default tolerates 30 s of clock
  // skew), so the short-lived tokens of the refresh test expire within the test.
  process.env.JWT_LEEWAY = '0';
  server = await startServer();
  site = await startStaticServer(EXAMPLE, server.token);
  browser = await launchChromium();
  mkdirSync(RESULTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await site?.close();
  await server?.stop();
});

/** Opens the example with `settings` in its URL fragment, recording its sockets and errors. */
async function openDashboard(settings) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(DEADLINE_MS);
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  page.on('console', (message) => message.type() === 'error' && errors.push(message.text()));
  await page.addInitScript(recordSockets);
  await page.goto(`${site.url}/#${new URLSearchParams(settings)}`);
  pages.push(page);
  return { page, errors };
}

async function closePages() {
  while (pages.length) await pages.pop().close();
}

/** A token for the test's own negocio. */
function tokenFor(negocio, ttlSeconds) {
  return server.token({ sub: `angular-${negocio}`, negocio_id: negocio }, ttlSeconds);
}

function badgeText(page) {
  return page.locator('[data-testid="conexion"]').textContent().then((text) => text?.trim());
}

async function waitConnected(page) {
  await page.waitForFunction(
    () => document.querySelector('[data-testid="conexion"]')?.textContent?.trim() === 'conectado',
  );
}

/** The page's counts become the database's (read once: nothing writes meanwhile). */
async function expectCountsOfDatabase(page, negocio) {
  const expected = await databaseCounts(server, negocio);
  let shown;
  try {
    await waitFor(async () => isDeepStrictEqual((shown = await shownCounts(page)), expected), `${negocio}'s counts`);
  } catch {
    assert.deepEqual(shown, expected, `the page shows the database's counts of ${negocio}`);
  }
}

/** Runs `write`, then waits for `selectorOf(result)`; asserts it took under LIVE_MS. */
async function expectLive(page, write, selectorOf) {
  const started = Date.now();
  const result = await write();
  const selector = selectorOf(result);
  await page.locator(selector).waitFor();
  const elapsed = Date.now() - started;
  assert.ok(elapsed < LIVE_MS, `${selector} appeared ${elapsed} ms after the write (limit ${LIVE_MS} ms)`);
  return result;
}

const evento = (type, cita) => `[data-testid="evento"][data-type="${type}"][data-cita="${cita}"]`;
const toast = (type) => `[data-testid="toast"][data-type="${type}"]`;
const withoutSocketNoise = (errors) => errors.filter((e) => !/WebSocket/.test(e));

test('the dashboard shows the database counts per estado, in all and today', async () => {
  try {
    const negocio = 'negocio_123';
    const { page, errors } = await openDashboard({ server: server.wsUrl, token: tokenFor(negocio), negocio });
    await waitConnected(page);
    await expectCountsOfDatabase(page, negocio);
    assert.ok((await shownCounts(page)).total > 0, 'the demo seeded citas for negocio_123');
    await page.screenshot({ path: path.join(RESULTS, 'example-counts.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await closePages();
  }
});

test('an INSERT, an estado change and a DELETE each appear in under a second, with a toast', async () => {
  try {
    const negocio = 'negocio_456';
    const { page, errors } = await openDashboard({ server: server.wsUrl, token: tokenFor(negocio), negocio });
    await waitConnected(page);
    await expectCountsOfDatabase(page, negocio);

    const id = await expectLive(
      page,
      () => server.sql(`insert into citas (negocio_id, estado, fecha) values ('${negocio}', 'pendiente', current_date) returning id`),
      (inserted) => evento('cita_created', inserted),
    );
    await page.locator(toast('cita_created')).waitFor();
    await expectLive(
      page,
      () => server.sql(`update citas set estado = 'confirmada' where id = '${id}'`),
      () => evento('cita_status_changed', id),
    );
    await page.locator(toast('cita_status_changed')).waitFor();
    await expectCountsOfDatabase(page, negocio);
    await page.screenshot({ path: path.join(RESULTS, 'example-live.png'), fullPage: true });
    await expectLive(
      page,
      () => server.sql(`delete from citas where id = '${id}'`),
      () => evento('cita_deleted', id),
    );
    await page.locator(toast('cita_deleted')).waitFor();

    const shown = await shownEvents(page);
    assert.deepEqual(
      shown.map((e) => e.type),
      ['cita_deleted', 'cita_status_changed', 'cita_created'],
      'one entry per change, newest first',
    );
    for (const entry of shown) {
      assert.ok(entry.text.includes(entry.type) && entry.text.includes(id), `"${entry.text}" names the type and the cita`);
    }
    await expectCountsOfDatabase(page, negocio);
    assert.deepEqual(errors, []);
  } finally {
    await closePages();
  }
});

test('with record columns chosen, each change shows the cita\'s fecha and hora', async () => {
  try {
    await server.sql(`select citas_realtime.set_record_columns(array['fecha', 'hora_inicio'])`);
    const negocio = 'negocio_456';
    const { page, errors } = await openDashboard({ server: server.wsUrl, token: tokenFor(negocio), negocio });
    await waitConnected(page);
    const id = await server.sql(
      `insert into citas (negocio_id, fecha, hora_inicio) values ('${negocio}', '2026-12-03', '10:00') returning id`,
    );
    const cuando = page.locator(`${evento('cita_created', id)} [data-testid="cuando"]`);
    await cuando.waitFor();
    assert.equal((await cuando.textContent())?.trim(), '2026-12-03 10:00');
    await server.sql(`delete from citas where id = '${id}'`);
    const gone = page.locator(`${evento('cita_deleted', id)} [data-testid="cuando"]`);
    await gone.waitFor();
    assert.equal((await gone.textContent())?.trim(), '2026-12-03 10:00', 'a delete shows the old record');
    assert.deepEqual(errors, []);
  } finally {
    await server.sql(`select citas_realtime.set_record_columns(array[]::text[])`);
    await closePages();
  }
});

test('a dropped connection reconnects and resumes: no change missed, none shown twice', async () => {
  const negocio = 'ng_reconnect';
  const proxy = await startProxy(server.addr);
  try {
    const insert = () => server.sql(`insert into citas (negocio_id, fecha) values ('${negocio}', current_date) returning id`);
    const { page, errors } = await openDashboard({ server: `ws://${proxy.addr}/ws`, token: tokenFor(negocio), negocio });
    await waitConnected(page);
    await expectLive(page, insert, (id) => evento('cita_created', id));

    await proxy.cut();
    await page.waitForSelector('[data-testid="conexion"][data-status="reconnecting"]');
    // Written while the page is away: every kind of change.
    const [first, second] = [await insert(), await insert()];
    await server.sql(`update citas set estado = 'cancelada' where id = '${first}'`);
    await server.sql(`update citas set hora_inicio = '11:00' where id = '${first}'`);
    await server.sql(`delete from citas where id = '${second}'`);
    await page.waitForFunction(() => /intento [2-9]/.test(document.querySelector('[data-testid="conexion"]')?.textContent ?? ''));
    assert.match(await badgeText(page), /^reconectando, intento \d+$/);
    await page.screenshot({ path: path.join(RESULTS, 'example-reconnecting.png'), fullPage: true });
    await proxy.restore();

    await waitConnected(page);
    assert.equal(await page.locator('[data-testid="reconexiones"]').textContent(), '1');
    await expectLive(page, insert, (id) => evento('cita_created', id));
    const logged = await loggedSeqs(server, negocio);
    assert.equal(logged.length, 7);
    const shown = await shownEvents(page);
    assert.deepEqual(
      shown.map((e) => e.seq).reverse(),
      logged,
      'every logged event is listed once, in order (the list is newest first)',
    );
    await expectCountsOfDatabase(page, negocio);
    await page.screenshot({ path: path.join(RESULTS, 'example-after-reconnect.png'), fullPage: true });
    assert.deepEqual(withoutSocketNoise(errors), []);
  } finally {
    await closePages();
    await proxy.close();
  }
});

test('a token refreshed through the provider keeps the socket open past the first token exp', async () => {
  const negocio = 'ng_token';
  const ttl = 3;
  try {
    const firstExpiry = (Math.floor(Date.now() / 1000) + ttl) * 1000;
    const tokenUrl = `${site.url}/token?negocio=${negocio}&ttl=4`;
    const refreshed = await openDashboard({ server: server.wsUrl, token: tokenFor(negocio, ttl), tokenUrl, negocio });
    // The same short token, and no way to get a fresh one: the server ends it at its exp.
    const stuck = await openDashboard({ server: server.wsUrl, token: tokenFor(negocio, ttl), negocio });
    await waitConnected(refreshed.page);
    await waitFor(
      async () => (await socketsOf(stuck.page)).closes.some((c) => c.code === 1008 && c.reason === 'token expired'),
      'the server to close the page without a token provider with 1008 token expired',
    );
    await waitFor(() => Date.now() > firstExpiry + 1000, 'the first token to expire', 2 * DEADLINE_MS);

    const { page } = refreshed;
    assert.equal(await badgeText(page), 'conectado');
    assert.equal(await page.locator('[data-testid="reconexiones"]').textContent(), '0');
    const sockets = await socketsOf(page);
    assert.equal(sockets.made, 1, 'one socket all along');
    assert.ok(sockets.sent.some((m) => m.type === 'auth'), 'a fresh token went to the open socket');
    assert.ok(site.tokenRequests() >= 1, 'the provider fetched a fresh token from tokenUrl');
    await expectLive(
      page,
      () => server.sql(`insert into citas (negocio_id) values ('${negocio}') returning id`),
      (id) => evento('cita_created', id),
    );
    assert.deepEqual(refreshed.errors, []);
  } finally {
    await closePages();
  }
});

test('the components of one page share one socket and one subscription', async () => {
  const negocio = 'ng_shared';
  try {
    const { page, errors } = await openDashboard({ server: server.wsUrl, token: tokenFor(negocio), negocio });
    await waitConnected(page);
    // Figures, list and toasts each show the change: three components on the negocio's channel.
    const id = await expectLive(
      page,
      () => server.sql(`insert into citas (negocio_id) values ('${negocio}') returning id`),
      (inserted) => evento('cita_created', inserted),
    );
    await page.locator(toast('cita_created')).waitFor();
    await expectCountsOfDatabase(page, negocio);
    assert.equal((await shownEvents(page))[0].cita, id);

    const sockets = await socketsOf(page);
    assert.equal(sockets.made, 1, 'the page opened one WebSocket');
    const subscribes = sockets.sent.filter((m) => m.type === 'subscribe');
    assert.deepEqual(subscribes, [{ type: 'subscribe', channel: `estadisticas:${negocio}` }]);
    // And the server sees one connection with one subscription (this page is the only one open).
    const metric = (text, name) => Number(text.match(new RegExp(`^${name} (\\d+)`, 'm'))?.[1]);
    let metrics = '';
    await waitFor(async () => {
      metrics = await (await fetch(`${server.httpUrl}/metrics`)).text();
      return metric(metrics, 'citas_realtime_connections') === 1;
    }, 'the server to count one connection');
    assert.equal(metric(metrics, 'citas_realtime_subscriptions'), 1);
    assert.deepEqual(errors, []);
  } finally {
    await closePages();
  }
});

test('a token that does not grant the negocio is told so', async () => {
  try {
    const { page } = await openDashboard({ server: server.wsUrl, token: tokenFor('negocio_456'), negocio: 'negocio_123' });
    const error = page.locator('[data-testid="error"]');
    await error.waitFor();
    assert.match(await error.textContent(), /forbidden/);
  } finally {
    await closePages();
  }
});

test('without settings in the fragment the page says what is missing', async () => {
  try {
    const { page, errors } = await openDashboard({});
    const help = page.locator('[data-testid="ajustes"]');
    await help.waitFor();
    const text = await help.textContent();
    for (const name of ['server', 'negocio', 'token']) assert.match(text, new RegExp(`${name}: missing`));
    assert.equal(await page.locator('[data-testid="conexion"]').count(), 0);
    assert.deepEqual(errors, []);
  } finally {
    await closePages();
  }
});
