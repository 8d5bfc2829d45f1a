// What the database says, through the harness's psql: the figures the page must show and the
// events it must list.
import { ESTADOS } from './browser.mjs';

const quote = (text) => `'${text.replace(/'/g, "''")}'`;

/** { total, por_estado, hoy: { total, por_estado } } of a negocio, counted in `citas`. */
export async function databaseCounts(server, negocio) {
  const rows = await server.sql(
    `select estado, count(*), count(*) filter (where fecha = current_date)
       from citas where negocio_id = ${quote(negocio)} group by estado`,
  );
  const counts = {
    total: 0,
    por_estado: Object.fromEntries(ESTADOS.map((e) => [e, 0])),
    hoy: { total: 0, por_estado: Object.fromEntries(ESTADOS.map((e) => [e, 0])) },
  };
  for (const row of rows.split('\n').filter(Boolean)) {
    const [estado, all, today] = row.split('|');
    counts.por_estado[estado] = Number(all);
    counts.total += Number(all);
    counts.hoy.por_estado[estado] = Number(today);
    counts.hoy.total += Number(today);
  }
  return counts;
}

/** The seqs of a negocio's events in the log, oldest first. */
export async function loggedSeqs(server, negocio) {
  const rows = await server.sql(
    `select seq from citas_realtime.events where negocio_id = ${quote(negocio)} order by seq`,
  );
  return rows.split('\n').filter(Boolean).map(Number);
}
