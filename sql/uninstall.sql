-- citas-realtime: uninstall.sql
--
-- Removes everything install.sql created: the three triggers on public.citas and the schema
-- citas_realtime (the event log, its functions). It never touches a row of public.citas.
-- Safe to run more than once, and when public.citas no longer exists.

begin;

do $drop$
begin
    perform pg_advisory_xact_lock(hashtext('citas_realtime.install'));
    if to_regclass('public.citas') is not null then
        drop trigger if exists citas_realtime_insert on public.citas;
        drop trigger if exists citas_realtime_update on public.citas;
        drop trigger if exists citas_realtime_delete on public.citas;
    end if;
end
$drop$;

drop schema if exists citas_realtime cascade;

commit;
