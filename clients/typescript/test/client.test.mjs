// The TypeScript client against a real citas-realtime server and PostgreSQL (node --test).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { CitasRealtimeClient, CitasRealtimeError, filterByType, citaEvents, tokenNegocios } from '../dist/index.js';
import { startProxy, startServer, waitFor } from './harness.mjs';

let server;
const clients = [];

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const client of clients) client.close();
  await server?.stop();
});

function newClient(options) {
  const client = new CitasRealtimeClient({ WebSocket, ...options });
  clients.push(client);
  return client;
}

/** Collects what an Observable emits (and how it ends). */
function collect(observable) {
  const seen = { values: [], error: undefined, complete: false };
  seen.subscription = observable.subscribe({
    next: (value) => seen.values.push(value),
    error: (error) => (seen.error = error),
    complete: () => (seen.complete = true),
  });
  return seen;
}

async function loggedSeqs(negocio) {
  const out = await server.sql(`select seq from citas_realtime.events where negocio_id = '${negocio}' order by seq`);
  return out ? out.split('\n').map(Number) : [];
}

test('a channel delivers typed events and statistics; filterByType narrows them', async () => {
  const client = newClient({ url: server.wsUrl, token: server.token({ negocio_id: 'ts_a' }) });
  const channel = client.channel('ts_a');
  const created = collect(channel.pipe(filterByType('cita_created')));
  const stats = collect(channel.pipe(filterByType('estadisticas')));
  const events = collect(channel.pipe(citaEvents()));
  await waitFor(() => client.state.status === 'open', 'the connection');
  await waitFor(() => stats.values.length >= 1, 'the first statistics snapshot');
  assert.equal(stats.values[0].data.total, 0);

  await server.sql("insert into citas (negocio_id) values ('ts_a')");
  await server.sql("update citas set estado = 'confirmada' where negocio_id = 'ts_a'");
  await waitFor(() => events.values.length === 2, 'two events');
  assert.deepEqual(events.values.map((e) => e.type), ['cita_created', 'cita_status_changed']);
  assert.equal(created.values.length, 1);
  const [event] = created.values;
  assert.equal(event.channel, 'estadisticas:ts_a');
  assert.equal(event.data.negocio_id, 'ts_a');
  assert.equal(event.data.estado, 'pendiente');
  assert.equal(events.values[1].data.estado_anterior, 'pendiente');
  assert.deepEqual(events.values.map((e) => e.data.seq), await loggedSeqs('ts_a'));
  assert.equal(client.lastSeq('ts_a'), events.values[1].data.seq);
  await waitFor(
    () => stats.values.some((s) => s.data.total === 1 && s.data.por_estado.confirmada === 1),
    'statistics that include both changes',
  );
});

test('a dropped connection comes back and resumes with since: nothing missed, nothing twice', async () => {
  const proxy = await startProxy(server.addr);
  try {
    const client = newClient({
      url: `ws://${proxy.addr}/ws`,
      token: server.token({ negocio_id: 'ts_b' }),
      backoff: { initialMs: 50, maxMs: 400 },
    });
    const states = collect(client.state$);
    const subscribed = collect(client.messages$.pipe(filterByType('subscribed')));
    const events = collect(client.channel('ts_b', { stats: false }).pipe(citaEvents()));
    // The server has the subscription before anything is written.
    await waitFor(() => subscribed.values.length >= 1, 'subscribed');
    await server.sql("insert into citas (negocio_id) values ('ts_b')");
    await waitFor(() => events.values.length === 1, 'the first event');

    await proxy.cut();
    await waitFor(() => client.state.status === 'reconnecting', 'the client to notice');
    // Written while the client is away.
    for (let i = 0; i < 3; i++) await server.sql("insert into citas (negocio_id) values ('ts_b')");
    await waitFor(() => client.state.attempt >= 2, 'a failed attempt while the proxy is down');
    await proxy.restore();

    await waitFor(() => events.values.length === 4, 'the three events written while away');
    await server.sql("insert into citas (negocio_id) values ('ts_b')");
    await waitFor(() => events.values.length === 5, 'live events after the resume');
    assert.deepEqual(events.values.map((e) => e.data.seq), await loggedSeqs('ts_b'));
    assert.equal(client.state.reconnects, 1);
    assert.ok(states.values.some((s) => s.status === 'reconnecting'), 'the state showed the reconnect');
  } finally {
    await proxy.close();
  }
});

test('reconnect delays grow with jitter and are capped', async () => {
  const proxy = await startProxy(server.addr);
  await proxy.cut();
  const client = newClient({
    url: `ws://${proxy.addr}/ws`,
    token: server.token({ negocio_id: 'ts_c' }),
    backoff: { initialMs: 40, maxMs: 160, factor: 2, jitter: 0.5 },
  });
  const delays = [];
  const sub = client.state$.subscribe((s) => {
    if (s.status === 'reconnecting') delays.push({ attempt: s.attempt, delay: s.nextAttemptAt - Date.now() });
  });
  await waitFor(() => delays.length >= 5, 'five reconnect attempts');
  sub.unsubscribe();
  client.close();
  await proxy.close();
  for (const { attempt, delay } of delays.slice(0, 5)) {
    const ceiling = Math.min(160, 40 * 2 ** (attempt - 1));
    assert.ok(delay <= ceiling + 1, `attempt ${attempt}: ${delay} ms over the ceiling ${ceiling}`);
    assert.ok(delay >= ceiling / 2 - 5, `attempt ${attempt}: ${delay} ms under half the ceiling ${ceiling}`);
  }
});

test('getToken refreshes the token on the open socket: it outlives its first token', async () => {
  let issued = 0;
  const getToken = () => {
    issued += 1;
    return server.token({ negocio_id: 'ts_d', n: issued }, 3);
  };
  const client = newClient({ url: server.wsUrl, getToken, refreshBeforeSeconds: 2 });
  const authenticated = collect(client.messages$.pipe(filterByType('authenticated')));
  const events = collect(client.channel('ts_d', { stats: false }).pipe(citaEvents()));
  await waitFor(() => client.state.status === 'open', 'the connection');
  const firstExpiry = Date.now() + 3000;
  await waitFor(() => authenticated.values.length >= 1, 'a token refresh answered "authenticated"');
  // Past the first token's expiry, the same socket still delivers.
  await waitFor(() => Date.now() > firstExpiry + 500, 'the first token to expire', 10_000);
  await server.sql("insert into citas (negocio_id) values ('ts_d')");
  await waitFor(() => events.values.length === 1, 'an event after the first token expired');
  assert.equal(client.state.reconnects, 0, 'no reconnect was needed');
  assert.ok(issued >= 2);
});

test('a refused channel ends with a CitasRealtimeError; others go on', async () => {
  const client = newClient({ url: server.wsUrl, token: server.token({ negocio_ids: ['ts_e'] }) });
  const refused = collect(client.channel('not_mine'));
  const mine = collect(client.channel('ts_e', { stats: false }));
  await waitFor(() => refused.error, 'the refusal');
  assert.ok(refused.error instanceof CitasRealtimeError);
  assert.equal(refused.error.code, 'forbidden');
  assert.equal(refused.error.channel, 'estadisticas:not_mine');
  await server.sql("insert into citas (negocio_id) values ('ts_e')");
  await waitFor(() => mine.values.length === 1, 'the granted channel still delivers');
});

test('tokenNegocios reads the claim forms', () => {
  const token = server.token({ negocio_id: 'a', negocio_ids: ['b', 3], app_metadata: { negocio_id: 'c' } });
  assert.deepEqual(tokenNegocios(token).sort(), ['3', 'a', 'b', 'c']);
  assert.deepEqual(tokenNegocios('garbage'), []);
});
