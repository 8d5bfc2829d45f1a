// The dashboard page (GET /) in a real headless Chromium, against a real server and PostgreSQL:
// it connects with a pasted token, shows a cita inserted through SQL in its event stream and in
// its chart, and shows a dropped connection and the reconnect. Screenshots are kept in
// test-results/.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

import { startProxy, startServer, DEADLINE_MS } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const RESULTS = path.resolve(here, '../test-results');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let server;
let proxy;
let browser;

before(async () => {
  server = await startServer();
  // The page is loaded through a proxy, so its WebSocket (same origin) can be cut. Playwright
  // gives Chromium a fresh, empty profile of its own.
  proxy = await startProxy(server.addr);
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  } catch (error) {
    throw new Error(`cannot start Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH): ${error.message}`);
  }
  mkdirSync(RESULTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.stop();
});

test('the dashboard shows a cita inserted through SQL, live, and shows reconnects', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.setDefaultTimeout(DEADLINE_MS);
  const consoleErrors = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  page.on('pageerror', (e) => consoleErrors.push(e.message));

  await page.goto(`http://${proxy.addr}/`);
  await page.fill('#token', server.token({ sub: 'browser', negocio_ids: ['negocio_123', 'negocio_456'] }));
  // The negocio is picked from the token's claims.
  assert.equal(await page.inputValue('#negocio'), 'negocio_123');
  await page.click('#connect');
  await page.waitForSelector('#status[data-status="open"]');
  // The first snapshot: the demo's seeded citas.
  await page.waitForFunction(() => document.querySelector('#stats-seq').textContent !== '–');
  const before = Number(await page.getAttribute('.bar[data-estado="pendiente"]', 'data-count'));
  const totalBefore = Number(await page.textContent('#total'));
  assert.ok(totalBefore > 0, 'the seeded citas are counted');

  await server.sql("insert into citas (negocio_id, estado) values ('negocio_123', 'pendiente')");
  const created = await page.waitForSelector('#events li[data-type="cita_created"]');
  assert.match(await created.textContent(), /pendiente/);
  await page.waitForSelector(`.bar[data-estado="pendiente"][data-count="${before + 1}"]`);
  assert.equal(Number(await page.textContent('#total')), totalBefore + 1);
  await page.screenshot({ path: path.join(RESULTS, 'dashboard.png'), fullPage: true });

  // A dropped connection: the indicator says so, and the page comes back by itself with what
  // was written meanwhile.
  await proxy.cut();
  await page.waitForSelector('#status[data-status="reconnecting"]');
  await server.sql("update citas set estado = 'confirmada' where id = (select id from citas where negocio_id = 'negocio_123' and estado = 'pendiente' limit 1)");
  await page.screenshot({ path: path.join(RESULTS, 'dashboard-reconnecting.png'), fullPage: true });
  await proxy.restore();
  await page.waitForSelector('#status[data-status="open"]');
  assert.equal(await page.textContent('#reconnects'), '1');
  await page.waitForSelector('#events li[data-type="cita_status_changed"]');
  await page.waitForSelector(`.bar[data-estado="pendiente"][data-count="${before}"]`);
  assert.equal(await page.locator('#events li[data-type="cita_created"]').count(), 1, 'nothing twice');
  await page.screenshot({ path: path.join(RESULTS, 'dashboard-after-reconnect.png'), fullPage: true });

  assert.deepEqual(consoleErrors.filter((e) => !/WebSocket/.test(e)), []);
  await page.close();
});

test("with record columns chosen, each change shows the cita's fecha and hora", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.setDefaultTimeout(DEADLINE_MS);
  try {
    await server.sql("select citas_realtime.set_record_columns(array['fecha', 'hora_inicio'])");
    await page.goto(`http://${proxy.addr}/`);
    await page.fill('#token', server.token({ sub: 'records', negocio_ids: ['negocio_456'] }));
    await page.click('#connect');
    await page.waitForSelector('#status[data-status="open"]');
    await server.sql("insert into citas (negocio_id, fecha, hora_inicio) values ('negocio_456', '2026-12-03', '10:00')");
    const when = await page.waitForSelector('#events li[data-type="cita_created"] .when');
    assert.equal(await when.textContent(), '2026-12-03 10:00');
  } finally {
    await server.sql('select citas_realtime.set_record_columns(array[]::text[])');
    await page.close();
  }
});

test('a token that does not grant the negocio is told so', async () => {
  const page = await browser.newPage();
  page.setDefaultTimeout(DEADLINE_MS);
  await page.goto(`http://${server.addr}/`);
  await page.fill('#token', server.token({ negocio_id: 'negocio_456' }));
  await page.fill('#negocio', 'negocio_123');
  await page.click('#connect');
  const error = await page.waitForSelector('#error:not([hidden])');
  assert.match(await error.textContent(), /forbidden/);
  await page.close();
});

test("the page's CSP allows WebSockets to its own host only", async () => {
  const page = await browser.newPage();
  page.setDefaultTimeout(DEADLINE_MS);
  await page.goto(`http://${server.addr}/`);
  const port = Number(server.addr.slice(server.addr.lastIndexOf(':') + 1));
  // The same server under another origin (another port through the proxy): refused by the CSP
  // before any connection is made. Its own origin: allowed ('self' covers ws: of the same host).
  const outcome = (url) =>
    page.evaluate(
      (target) =>
        new Promise((resolve) => {
          const onViolation = (e) => {
            if (e.blockedURI.startsWith(target.slice(0, target.indexOf('/ws')))) resolve(`blocked:${e.violatedDirective}`);
          };
          document.addEventListener('securitypolicyviolation', onViolation);
          let socket;
          try {
            socket = new WebSocket(target);
          } catch (error) {
            resolve(`threw:${error.name}`);
            return;
          }
          socket.onopen = () => resolve('open');
          socket.onerror = () => setTimeout(() => resolve('error'), 500);
        }),
      url,
    );
  const other = await outcome(`ws://${proxy.addr}/ws?token=x`);
  assert.match(other, /^(blocked:connect-src|threw:SecurityError)$/, `another origin: ${other}`);
  const token = server.token({ negocio_id: 'negocio_123' });
  assert.equal(await outcome(`ws://127.0.0.1:${port}/ws?token=${token}`), 'open');
  await page.close();
});
