-- citas-realtime: uninstall.sql
--
-- Removes everything install.sql created: the triggers on public.citas, the schema
-- citas_realtime (the event log, its functions, policies and grants) and the role
-- citas_realtime_reader (unless it still holds rights in another database of the cluster).
-- It never touches a row of public.citas. Safe to run more than once, and when public.citas no
-- longer exists.

begin;

do $drop$
begin
    perform pg_advisory_xact_lock(hashtext('citas_realtime.install'));
    if to_regclass('public.citas') is not null then
        -- Writers lock citas, then the log: take the same order (see install.sql).
        lock table public.citas in share row exclusive mode;
        drop trigger if exists citas_realtime_insert on public.citas;
        drop trigger if exists citas_realtime_update on public.citas;
        drop trigger if exists citas_realtime_delete on public.citas;
        drop trigger if exists citas_realtime_truncate on public.citas;
    end if;
end
$drop$;

drop schema if exists citas_realtime cascade;

do $role$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'citas_realtime_reader') then
        begin
            drop role citas_realtime_reader;
        exception when dependent_objects_still_exist or insufficient_privilege then
            raise notice 'citas-realtime: role citas_realtime_reader kept (%)', sqlerrm;
        end;
    end if;
end
$role$;

commit;
