
select null::bigint as seq, null::text as negocio_id, null::text as cita_id,
       null::text as action, null::text as estado, null::text as estado_anterior,
       null::text as ts, null::text as record, null::text as old_record,
       null::float8 as age_secs,
       array(select x::text::bigint from pg_snapshot_xip(pg_current_snapshot()) as x) as running,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint as xmax,
       (select x + age((x % 4294967296)::text::xid)
          from (select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as x) as v) as next_xid,
       pg_backend_pid() as pid
union all
(select e.seq, e.negocio_id, e.cita_id, e.action, e.estado, e.estado_anterior, to_char(e.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as ts, left(e.record::text, 8193) as record, left(e.old_record::text, 8193) as old_record,
        extract(epoch from clock_timestamp() - e.created_at)::float8, null, null, null, null
   from citas_realtime.events e
  where e.seq > $1
  order by e.seq
  limit $2)
