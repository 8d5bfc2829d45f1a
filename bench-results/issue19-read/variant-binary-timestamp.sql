select null::bigint as seq, null::text as negocio_id, null::text as cita_id,
       null::text as action, null::text as estado, null::text as estado_anterior,
       null::timestamptz as created_at, null::text as record, null::text as old_record,
       pg_current_snapshot()::text as snapshot,
       age(((pg_snapshot_xmax(pg_current_snapshot())::text::bigint) % 4294967296)::text::xid) as ahead,
       pg_backend_pid() as pid, clock_timestamp() as now
union all
(select e.seq, e.negocio_id, e.cita_id, e.action, e.estado, e.estado_anterior, e.created_at,
     left(e.record::text, 8193) as record, left(e.old_record::text, 8193) as old_record,
        null, null, null, null
   from citas_realtime.events e
  where e.seq > $1
  order by e.seq
  limit $2)
