-- The least a trigger design can cost that writes one log row per change of a cita in the
-- writer's transaction and sends a NOTIFY: a row-level plpgsql trigger inserting into a log with
-- only an identity primary key, and a statement-level trigger calling pg_notify. No SECURITY
-- DEFINER, no pinned search_path, no index for resuming clients or retention, no transition
-- tables, INSERT only. Not something to install: a yardstick for
-- `benches/sql_instructions.sh`, to tell what citas-realtime's own logic costs from what any
-- log-plus-NOTIFY design pays.

create schema if not exists floor_design;

create table floor_design.events (
    seq        bigint generated always as identity primary key,
    negocio_id text not null,
    cita_id    text not null,
    action     text not null,
    estado     text,
    created_at timestamptz not null default clock_timestamp()
);

create function floor_design.log_row() returns trigger language plpgsql as $$
begin
    insert into floor_design.events (negocio_id, cita_id, action, estado)
    values (new.negocio_id::text, new.id::text, 'created', new.estado::text);
    return null;
end
$$;

create function floor_design.announce() returns trigger language plpgsql as $$
begin
    perform pg_notify('citas_realtime', '{"count":1}');
    return null;
end
$$;

create trigger floor_design_log after insert on public.citas
    for each row execute function floor_design.log_row();
create trigger floor_design_announce after insert on public.citas
    for each statement execute function floor_design.announce();
