-- citas-realtime: install.sql
--
-- What a DBA runs (psql, the Supabase SQL editor, or `citas-realtime sql install`) to make
-- every change to public.citas reach the citas-realtime server, whoever writes it.
--
-- * Idempotent: a second run is clean; running a newer install.sql upgrades an older install in
--   place, in one transaction, so writers never see a half-installed state.
-- * Everything lives in schema citas_realtime, except the four triggers on public.citas.
-- * Works whatever the types of citas.id and citas.negocio_id are (uuid, text, bigint, ...):
--   the event log stores them as text.
-- * Nothing here can make a writer's change fail, whatever a row holds: no constraint on the
--   log that a row could violate, no cast that can fail (every value is cast to text), text cut
--   to a bounded length before it is logged (so no index entry can outgrow a btree page), no
--   dynamic SQL, and a NOTIFY payload that is bounded far below PostgreSQL's 8000-byte limit.
--
-- How an event travels: the statement-level triggers below write one row per changed cita to
-- citas_realtime.events (in the writer's own transaction, so a rollback leaves nothing) and send
-- ONE pg_notify per statement on channel 'citas_realtime'. The notification only wakes the
-- server up; the server then reads the new rows from the log by seq. The same read serves live
-- delivery, gap filling after a reconnect and clients that resume.
--
-- Access: nothing here is granted to PUBLIC or to Supabase's API roles (anon, authenticated).
-- install.sql creates the group role citas_realtime_reader with exactly what the server needs
-- (read the log, call prune(), version(), estadisticas() and notify_cita()); grant it to the
-- server's login role. Row-level security is enabled on our tables, with a read policy for that
-- role only.
--
-- Version: 6 (select citas_realtime.version()). Running this file over an older install (1 to
-- 5) upgrades it in place: one transaction, writers wait for its locks for a moment and never
-- fail, no event is lost. What each version changed is in docs/sql.md.
--
-- Requires PostgreSQL 14 or later (CREATE OR REPLACE TRIGGER, pg_current_snapshot()), and an
-- installing role that may create roles (Supabase's postgres may), unless
-- citas_realtime_reader already exists.

begin;

do $check$
declare
    missing text;
begin
    -- Two installs running at once would race on CREATE SCHEMA / CREATE TABLE: serialize them.
    perform pg_advisory_xact_lock(hashtext('citas_realtime.install'));
    if current_setting('server_version_num')::int < 140000 then
        raise exception 'citas-realtime: PostgreSQL 14 or later is required (this is %)',
            current_setting('server_version');
    end if;
    if to_regclass('public.citas') is null then
        raise exception 'citas-realtime: table public.citas does not exist'
            using hint = 'Create your citas table first (sql/example_schema.sql shows the expected shape), then run install.sql again.';
    end if;
    select string_agg(c, ', ') into missing
    from unnest(array['id', 'negocio_id', 'estado']) as c
    where not exists (
        select 1 from pg_catalog.pg_attribute a
        where a.attrelid = 'public.citas'::regclass and a.attname = c
          and a.attnum > 0 and not a.attisdropped);
    if missing is not null then
        raise exception 'citas-realtime: public.citas lacks required column(s): %', missing;
    end if;
    -- The UPDATE trigger marks each side of a pair with a column of this name.
    if exists (select 1 from pg_catalog.pg_attribute a
               where a.attrelid = 'public.citas'::regclass and a.attname = 'citas_realtime_present'
                 and a.attnum > 0 and not a.attisdropped) then
        raise exception 'citas-realtime: public.citas has a column named citas_realtime_present, a name the triggers use'
            using hint = 'Rename that column, then run install.sql again.';
    end if;
    -- The UPDATE trigger pairs old and new rows by id: its type must have "=" (json does not),
    -- or every UPDATE would fail. Refused here, at install, rather than in a writer's UPDATE.
    begin
        execute 'select 1 from public.citas a join public.citas b on a.id = b.id limit 0';
    exception when undefined_function then
        raise exception 'citas-realtime: public.citas.id is of type %, which has no "=" operator',
            (select pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a
              where a.attrelid = 'public.citas'::regclass and a.attname = 'id')
            using hint = 'Give citas an id of a comparable type (uuid, bigint, text, ...).';
    end;
    -- Lock citas first, in the order writers take locks (citas, then the log): writers wait
    -- here for the few milliseconds this install takes instead of deadlocking with it, so no
    -- write fails during an upgrade.
    lock table public.citas in share row exclusive mode;
end
$check$;

-- The role the server's login role is granted (see the README). A cluster-wide object, so it
-- may exist already (another database of the same cluster).
do $role$
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'citas_realtime_reader') then
        begin
            create role citas_realtime_reader nologin;
        exception when duplicate_object or unique_violation then
            null; -- created meanwhile by an install in another database of the cluster
        when insufficient_privilege then
            raise exception 'citas-realtime: cannot create role citas_realtime_reader'
                using hint = 'Ask a superuser to run: create role citas_realtime_reader nologin; then run install.sql again.';
        end;
    end if;
end
$role$;

create schema if not exists citas_realtime;
comment on schema citas_realtime is 'citas-realtime: change log and triggers for public.citas';
-- Nothing in this schema is for API roles (anon, authenticated): the server's own role gets
-- USAGE and SELECT explicitly, see the README.
revoke all on schema citas_realtime from public;

-- The event log. One row per change of one cita. Ids are text whatever the source column types
-- are. seq is the delivery order and the cursor clients resume from.
create table if not exists citas_realtime.events (
    seq             bigint generated always as identity primary key,
    negocio_id      text        not null,
    cita_id         text        not null,
    action          text        not null,   -- created | updated | deleted | status_changed
    estado          text,                   -- the cita's estado after the change (before, for deleted)
    estado_anterior text,                   -- status_changed only: the estado before
    created_at      timestamptz not null default clock_timestamp()
);
-- Records (see set_record_columns() below): the chosen columns after and before the change.
-- Null while records are off. Logged whole (the server sends none over 8 KiB: it flags them).
-- json, not jsonb: built and read as text, in the chosen column order, at a fraction of
-- jsonb's cost to writers.
alter table citas_realtime.events
    add column if not exists record     json,
    add column if not exists old_record json;
comment on table citas_realtime.events is
    'citas-realtime: one row per change of a cita, written by the triggers on public.citas';
revoke all on citas_realtime.events from public;

-- Resuming clients read one negocio's events after a seq (and the truncates: negocio '', action
-- 'truncated'). negocio_id is cut to 257 characters when logged, so its entries always fit.
create index if not exists events_negocio_seq_idx on citas_realtime.events (negocio_id, seq);
-- Retention deletes by age; created_at grows with seq, so a BRIN index is tiny and cheap to keep.
create index if not exists events_created_at_brin on citas_realtime.events using brin (created_at);

-- Retention bookkeeping: the highest seq ever pruned. A client resuming from a seq below it may
-- have missed pruned events and is told to reload (resync).
create table if not exists citas_realtime.retention (
    id          boolean primary key default true check (id),
    pruned_upto bigint  not null default 0
);
insert into citas_realtime.retention (id) values (true) on conflict do nothing;
revoke all on citas_realtime.retention from public;

-- Deletes events older than `keep`. Safe to call from several servers and from a DBA's
-- scheduler (pg_cron) at once: one caller at a time does the work, the others return at once
-- with 0. Returns the number of events deleted.
create or replace function citas_realtime.prune(keep interval default interval '24 hours')
    returns bigint
    language plpgsql
    security definer
    set search_path = pg_catalog, pg_temp
as $fn$
declare
    deleted bigint;
    upto    bigint;
begin
    if keep < interval '0' then
        raise exception 'citas_realtime.prune: keep must not be negative (got %)', keep;
    end if;
    if not pg_try_advisory_xact_lock(hashtext('citas_realtime.prune')) then
        return 0;
    end if;
    with gone as (
        delete from citas_realtime.events
        where created_at < now() - keep
        returning seq
    )
    select count(*), max(seq) into deleted, upto from gone;
    if upto is not null then
        update citas_realtime.retention set pruned_upto = greatest(pruned_upto, upto);
    end if;
    return deleted;
end
$fn$;
revoke all on function citas_realtime.prune(interval) from public;

-- The installed version, for `citas-realtime check` and for upgrades.
create or replace function citas_realtime.version() returns integer
    language sql immutable parallel safe
    as $$ select 6 $$;

-- capture() reads the log's identity sequence by name (currval): make sure it is that one.
do $seq$
declare
    found text := pg_catalog.pg_get_serial_sequence('citas_realtime.events', 'seq');
begin
    if found is distinct from 'citas_realtime.events_seq_seq' then
        raise exception 'citas_realtime.events.seq must be backed by citas_realtime.events_seq_seq (found %)',
            coalesce(found, 'no sequence');
    end if;
end
$seq$;

-- Records: the chosen columns of the changed cita, carried by its events (`record`,
-- `old_record`). Off by default; a DBA chooses the columns with set_record_columns() and every
-- subscriber of a negocio then receives them. The choice lives here and survives upgrades.
create table if not exists citas_realtime.settings (
    id             boolean primary key default true check (id),
    record_columns text[]  not null default '{}'
);
insert into citas_realtime.settings (id) values (true) on conflict do nothing;
revoke all on citas_realtime.settings from public;

-- The chosen columns ('{}' when records are off).
create or replace function citas_realtime.record_columns() returns text[]
    language sql stable
    security definer
    set search_path = pg_catalog, pg_temp
    as $$ select record_columns from citas_realtime.settings $$;

-- Writes capture(), the trigger function shared by the four statement triggers, for the chosen
-- record columns. With none, capture() is exactly the code below with every %N$s empty:
-- records cost writers nothing until chosen, and then one row_to_json of the chosen
-- columns per event (two for an UPDATE, and the old values that changed). No size check here:
-- the server sends no record over 8 KiB (it flags it), and the check would cost every writer.
-- Column names are validated by set_record_columns() and quoted here; no SQL is ever built from
-- row data.
--
-- capture() is SECURITY DEFINER: writers (an API role, a batch job's role) need no right on our
-- schema; it runs with the installer's rights. search_path is pinned and every name is
-- qualified, so a writer cannot make it run anything else.
create or replace function citas_realtime.build_capture(cols text[]) returns void
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $build$
declare
    on_     boolean := cardinality(cols) > 0;
    rec_r   text;  -- the chosen columns of the inserted or deleted row r, as a json object
    pair    text;  -- the chosen columns of both sides of an UPDATE, carried by the pairs
    rec_o   text;  -- the pair's old chosen columns as a json object
    rec_n   text;  -- the pair's new ones
    changed text;  -- the old values of those that changed
    attrs   text;  -- the record's row type: each chosen column with the type of its value
    rtype   text;
begin
    if on_ then
        -- Each value as to_json gives it; text cut one character past what any record can
        -- send (a longer value makes the record too large to send anyway), so no value, however
        -- long, bloats the log. Changes compare with "=" where the type has one, as
        -- text otherwise.
        with c as (
            select u.ord, u.col,
                   t.typcategory = 'S' as is_text,
                   pg_catalog.format_type(coalesce(nullif(t.typbasetype, 0), t.oid), null) = 'jsonb'
                       as is_jsonb,
                   pg_catalog.format_type(coalesce(nullif(t.typbasetype, 0), t.oid), null) = 'numeric'
                       as is_numeric,
                   exists (select 1 from pg_catalog.pg_operator op
                            where op.oprname = '=' and op.oprleft = a.atttypid
                              and op.oprright = a.atttypid) as has_eq,
                   pg_catalog.format_type(a.atttypid, a.atttypmod) as coltype
            from unnest(cols) with ordinality as u(col, ord)
            join pg_catalog.pg_attribute a
              on a.attrelid = 'public.citas'::regclass and a.attname = u.col
            join pg_catalog.pg_type t on t.oid = a.atttypid
        ),
        v as (
            select c.*, x.alias as side,
                   case when is_text then format('left(%s.%I::text, 8193)', x.alias, col)
                        -- Over 1 MB stored, a jsonb is far over 8 KiB as text: a stand-in
                        -- just as unsendable, rather than megabytes in the log.
                        when is_jsonb then format('case when pg_catalog.pg_column_size(%1$s.%2$I) > 1048576 '
                                                  'then to_jsonb(repeat(''x'', 8193)) else %1$s.%2$I end',
                                                  x.alias, col)
                        -- A numeric of 131,072 digits is a few bytes stored, 128 KiB as text.
                        when is_numeric then format('case when octet_length(%1$s.%2$I::text) > 8192 '
                                                    'then repeat(''9'', 8193)::numeric else %1$s.%2$I end',
                                                    x.alias, col)
                        else format('%s.%I', x.alias, col) end as val
            from c cross join (values ('r'), ('o'), ('n')) as x(alias)
        ),
        w as (
            select ord, col,
                   max(val) filter (where side = 'r') as val_r,
                   max(val) filter (where side = 'o') as val_o,
                   max(val) filter (where side = 'n') as val_n,
                   case when bool_and(has_eq) then format('p.o_%1$s is distinct from p.n_%1$s', ord)
                        else format('p.o_%1$s::text is distinct from p.n_%1$s::text', ord) end as differs,
                   format('%I %s', col, case when bool_or(is_text) then 'text'
                                             when bool_or(is_numeric) then 'numeric'
                                             when bool_or(is_jsonb) then 'jsonb'
                                             else max(coltype) end) as attr
            from v group by ord, col
        )
        -- Records are row_to_json of a row type made for the choice: json_build_object resolves
        -- each argument's type on every call, and costs writers about twice as much.
        select string_agg(attr, ', ' order by ord),
               string_agg(val_r, ', ' order by ord),
               string_agg(format(E',\n                   %s as o_%s, %s as n_%s', val_o, ord, val_n, ord),
                          '' order by ord),
               string_agg(format('p.o_%s', ord), ', ' order by ord),
               string_agg(format('p.n_%s', ord), ', ' order by ord),
               -- {"col":old, ...} of the changed ones, as text: the key is a constant.
               '(''{'' || concat_ws('','', ' || string_agg(
                   format('case when %s then %L || to_json(p.o_%s)::text end',
                          differs, to_json(col)::text || ':', ord), ', ' order by ord)
               || ') || ''}'')::json'
          into attrs, rec_r, pair, rec_o, rec_n, changed
          from w;
        -- One type per distinct choice, never dropped (a writer's plan may still name it): a
        -- handful of tiny catalog rows, gone with the schema.
        rtype := format('citas_realtime.%I', 'record_' || left(md5(attrs), 16));
        if to_regtype(rtype) is null then
            execute format('create type %s as (%s)', rtype, attrs);
        end if;
        rec_r := format('row_to_json(row(%s)::%s)', rec_r, rtype);
        rec_o := format('row_to_json(row(%s)::%s)', rec_o, rtype);
        rec_n := format('row_to_json(row(%s)::%s)', rec_n, rtype);
    end if;
    execute format($tpl$
create or replace function citas_realtime.capture() returns trigger
    language plpgsql
    security definer
    set search_path = pg_catalog, pg_temp
    -- The planner overestimates statements over transition tables and JIT-compiles them: about
    -- 0.6 s of a 100,000-row UPDATE went to JIT for expressions that run in microseconds.
    set jit = off
as $fn$
declare
    n_events bigint;
    kind     text;   -- the action of every event the statement wrote, when there is one
begin
    -- Each branch is ONE plain INSERT ... SELECT, counted with GET DIAGNOSTICS: no RETURNING
    -- and no aggregate over what was written. Most writers commit one row at a time, and for
    -- them the statement's fixed costs are the trigger's cost: a RETURNING and aggregates over
    -- it cost a fifth of a single-row commit's instructions (callgrind, BENCHMARKS.md).
    -- What a row puts in the log is bounded: negocio_id is cut to 257 characters (longer than
    -- any channel can name, 256 bytes, so a cut id reaches nobody and can never equal a real
    -- one), cita_id and the estados to 1025 characters (the server sends at most 1024 bytes of
    -- each and flags what it cut). No value can outgrow the negocio index or bloat the log.
    if tg_op = 'TRUNCATE' then
        -- Every negocio lost its citas at once: one event whose ACTION is 'truncated'. Only this
        -- branch writes that action (no row value can), and the server turns it into a resync
        -- for every subscribed channel. Its negocio '' is only where replays find it.
        insert into citas_realtime.events (negocio_id, cita_id, action)
        values ('', '', 'truncated');
        get diagnostics n_events = row_count;
        kind := 'truncated';
    elsif tg_op = 'INSERT' then
        insert into citas_realtime.events (negocio_id, cita_id, action, estado%1$s)
        select left(r.negocio_id::text, 257), coalesce(left(r.id::text, 1025), ''), 'created',
               left(r.estado::text, 1025)%2$s
        from citas_realtime_new r
        where r.negocio_id is not null;
        get diagnostics n_events = row_count;
        kind := 'created';
    elsif tg_op = 'DELETE' then
        insert into citas_realtime.events (negocio_id, cita_id, action, estado%3$s)
        select left(r.negocio_id::text, 257), coalesce(left(r.id::text, 1025), ''), 'deleted',
               left(r.estado::text, 1025)%4$s
        from citas_realtime_old r
        where r.negocio_id is not null;
        get diagnostics n_events = row_count;
        kind := 'deleted';
    else
        -- UPDATE: pair old and new rows by id. A row whose id changed, or is NULL, has no
        -- partner: it reads as deleted (old id) plus created (new id); has_old / has_new say
        -- which side a pair has (an id may be NULL, so the id cannot tell). A row moved to another negocio is
        -- deleted for the old negocio, then created for the new one. Whole rows compare as
        -- text, whatever the column types (json and point have no "=" operator, and to_jsonb()
        -- fails on some json values: a writer's change must not).
        -- Materialized: each pair's casts are computed once, not once per SELECT below.
        with pairs as materialized (
            select o.citas_realtime_present as has_old, n.citas_realtime_present as has_new,
                   o.id::text          as old_id,
                   n.id::text          as new_id,
                   o.negocio_id::text  as old_neg,
                   n.negocio_id::text  as new_neg,
                   o.estado::text      as old_estado,
                   n.estado::text      as new_estado,
                   -- Whole-row comparison only when estado and negocio did not change
                   -- (CASE evaluates lazily): the text of two rows is the costly part.
                   case when o.estado::text is distinct from n.estado::text
                          or o.negocio_id::text is distinct from n.negocio_id::text then true
                        else o::text is distinct from n::text end as changed%5$s
            -- The marker has the same (unlikely) name on both sides, so the whole-row comparison
            -- below still sees equal rows as equal.
            from (select true as citas_realtime_present, r.* from citas_realtime_old r) o
            full join (select true as citas_realtime_present, r.* from citas_realtime_new r) n
              on o.id = n.id
        )
        insert into citas_realtime.events (negocio_id, cita_id, action, estado, estado_anterior%6$s)
        select left(e.negocio_id, 257), coalesce(left(e.cita_id, 1025), ''), e.action,
               left(e.estado, 1025),
               left(e.estado_anterior, 1025)%7$s
        from (
            -- One SELECT per kind of event, not a LATERAL VALUES list: PostgreSQL builds a
            -- VALUES list's expressions anew for every outer row, a fifth of a bulk UPDATE's
            -- instructions (callgrind).
            select coalesce(p.new_id, p.old_id) as k, 1 as ord, p.old_neg as negocio_id,
                   p.old_id as cita_id, 'deleted' as action, p.old_estado as estado,
                   null::text as estado_anterior%8$s
            from pairs p
            where p.has_old and p.old_neg is not null
              and (p.has_new is null or p.old_neg is distinct from p.new_neg)
            union all
            select coalesce(p.new_id, p.old_id), 2, p.new_neg, p.new_id, 'created', p.new_estado,
                   null%9$s
            from pairs p
            where p.has_new and p.new_neg is not null
              and (p.has_old is null or p.old_neg is distinct from p.new_neg)
            union all
            -- A change in place: status_changed when estado changed, updated otherwise (changed
            -- is true whenever estado changed).
            select p.new_id, 3, p.new_neg, p.new_id,
                   case when p.old_estado is distinct from p.new_estado then 'status_changed'
                        else 'updated' end,
                   p.new_estado,
                   case when p.old_estado is distinct from p.new_estado then p.old_estado end%10$s
            from pairs p
            where p.has_old and p.has_new and p.old_neg = p.new_neg and p.changed
        ) as e
        order by e.k, e.ord;
        get diagnostics n_events = row_count;
        kind := null;  -- an UPDATE can write several kinds
    end if;

    if n_events > 0 then
        -- One notification per statement, of ids only, a few dozen bytes whatever the statement
        -- touched: {"last_seq":L,"count":N[,"action":A]}. L is this statement's last seq:
        -- currval() is this session's latest nextval(), which the INSERT above just drew (a
        -- statement's seqs are increasing, and, with concurrent writers, not always
        -- contiguous). Distinct payloads are never merged by PostgreSQL, so every statement
        -- wakes the server; the server reads the log by seq and trusts nothing else here.
        perform pg_catalog.pg_notify('citas_realtime',
            '{"last_seq":' || pg_catalog.currval('citas_realtime.events_seq_seq'::pg_catalog.regclass)
            || ',"count":' || n_events
            || coalesce(',"action":"' || kind || '"', '') || '}');
    end if;
    return null;
end
$fn$;
$tpl$,
        -- 1, 2: INSERT's extra column and value; 3, 4: DELETE's.
        case when on_ then ', record' else '' end,
        case when on_ then ', ' || rec_r else '' end,
        case when on_ then ', old_record' else '' end,
        case when on_ then ', ' || rec_r else '' end,
        -- 5: UPDATE's pairs carry both sides' chosen columns.
        case when on_ then pair else '' end,
        -- 6, 7: UPDATE's extra columns and values; 8, 9, 10: each kind's record and old_record.
        case when on_ then ', record, old_record' else '' end,
        case when on_ then ', e.rec, e.old_rec' else '' end,
        case when on_ then ', null::json as rec, ' || rec_o || ' as old_rec' else '' end,
        case when on_ then ', ' || rec_n || ', null::json' else '' end,
        case when on_ then ', ' || rec_n || ', ' || changed else '' end);
    execute 'revoke all on function citas_realtime.capture() from public';
end
$build$;
revoke all on function citas_realtime.build_capture(text[]) from public;

-- Chooses the record columns (array[]::text[] turns records off) and rewrites capture() at
-- once: each statement's events have the records of the choice it saw, never half. Each
-- column must exist in public.citas. A guard function refers to them, so that PostgreSQL
-- refuses to drop a chosen column (choose again first): capture() names them, and a missing
-- column would make writers' changes fail. Returns the columns chosen.
create or replace function citas_realtime.set_record_columns(cols text[]) returns text[]
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $fn$
declare
    unknown     text;
    unsupported text;
    guard       text;
begin
    -- No column of citas may be dropped or changed between this check and the commit: writers'
    -- changes would then fail on a column capture() names (ACCESS SHARE: writers go on).
    lock table public.citas in access share mode;
    if cols is null or array_position(cols, null) is not null then
        raise exception 'citas_realtime.set_record_columns: columns must not be null'
            using errcode = 'invalid_parameter_value',
                  hint = 'Pass array[]::text[] to turn records off.';
    end if;
    select string_agg(quote_ident(c), ', ') into unknown
    from unnest(cols) as c
    where not exists (
        select 1 from pg_catalog.pg_attribute a
        where a.attrelid = 'public.citas'::regclass and a.attname = c
          and a.attnum > 0 and not a.attisdropped);
    if unknown is not null then
        raise exception 'citas_realtime.set_record_columns: public.citas has no column %', unknown
            using errcode = 'undefined_column';
    end if;
    select string_agg(format('%I (%s)', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)), ', ')
      into unsupported
      from unnest(cols) as c
      join pg_catalog.pg_attribute a
        on a.attrelid = 'public.citas'::regclass and a.attname = c
      join pg_catalog.pg_type t on t.oid = a.atttypid
     where not (t.typlen > 0
                or t.typcategory in ('N', 'S', 'D', 'B', 'E', 'I', 'T')
                or pg_catalog.format_type(coalesce(nullif(t.typbasetype, 0), t.oid), null) = 'jsonb');
    if unsupported is not null then
        raise exception 'citas_realtime.set_record_columns: records cannot carry %', unsupported
            using errcode = 'feature_not_supported',
                  hint = 'Choose columns of scalar types: numbers, text, dates and times, booleans, uuid, enums, jsonb (json, arrays, composites and bytea are not carried).';
    end if;
    -- capture()'s body is dollar-quoted: a "$" in a name could end it.
    select string_agg(quote_ident(c), ', ') into unknown from unnest(cols) as c where c like '%$%';
    if unknown is not null then
        raise exception 'citas_realtime.set_record_columns: records cannot carry a column whose name has "$": %', unknown
            using errcode = 'invalid_parameter_value';
    end if;
    if cardinality(cols) <> (select count(distinct c) from unnest(cols) as c) then
        raise exception 'citas_realtime.set_record_columns: a column is named twice'
            using errcode = 'invalid_parameter_value';
    end if;
    if cardinality(cols) > 50 then
        raise exception 'citas_realtime.set_record_columns: at most 50 columns (got %)',
            cardinality(cols)
            using errcode = 'invalid_parameter_value';
    end if;
    -- Serialize choosers: the last one's choice is both stored and compiled.
    perform 1 from citas_realtime.settings for update;
    update citas_realtime.settings set record_columns = cols;
    perform citas_realtime.build_capture(cols);
    drop function if exists citas_realtime.record_columns_guard(public.citas);
    if cardinality(cols) > 0 then
        select string_agg(format('r.%I', c), ', ') into guard from unnest(cols) as c;
        execute format('create function citas_realtime.record_columns_guard(r public.citas) '
                       'returns text language sql immutable begin atomic select concat_ws('','', %s); end',
                       guard);
        execute 'revoke all on function citas_realtime.record_columns_guard(public.citas) from public';
        execute 'comment on function citas_realtime.record_columns_guard(public.citas) is '
                || quote_literal('citas-realtime: keeps the record columns (' || array_to_string(cols, ', ')
                || ') from being dropped; choose other columns with citas_realtime.set_record_columns() first');
    end if;
    return cols;
end
$fn$;
revoke all on function citas_realtime.set_record_columns(text[]) from public;

-- capture(), for the stored choice: an upgrade keeps the DBA's record columns.
select citas_realtime.set_record_columns(record_columns) from citas_realtime.settings;


-- An event announced by an application instead of a trigger: what the old design's REST API
-- posted to /notify/cita. The server's POST /notify/cita (service tokens only) calls it, so the
-- announcement is logged and delivered like any other event (every instance, resumes,
-- statistics). cita_id may be unknown ('' in the log, null on the wire). Returns its seq. Its
-- notification carries seqs and a count only, like the triggers': any role may LISTEN.
create or replace function citas_realtime.notify_cita(
        negocio_id text, action text, cita_id text default null, estado text default null)
    returns bigint
    language plpgsql
    security definer
    set search_path = pg_catalog, pg_temp
as $fn$
declare
    new_seq bigint;
begin
    if notify_cita.negocio_id is null or notify_cita.negocio_id = ''
       or octet_length(notify_cita.negocio_id) > 256 then
        raise exception 'citas_realtime.notify_cita: negocio_id must be 1 to 256 bytes'
            using errcode = 'invalid_parameter_value';
    end if;
    if notify_cita.action is null
       or notify_cita.action not in ('created', 'updated', 'deleted', 'status_changed') then
        raise exception 'citas_realtime.notify_cita: action must be created, updated, deleted or status_changed (got %)',
            notify_cita.action
            using errcode = 'invalid_parameter_value';
    end if;
    -- A transaction id before the seq is drawn (a trigger's writer has one already, having
    -- changed citas): the server relies on every writer of a seq being in the snapshots taken
    -- while the seq may still commit.
    perform pg_catalog.pg_current_xact_id();
    insert into citas_realtime.events (negocio_id, cita_id, action, estado)
    values (notify_cita.negocio_id, left(coalesce(notify_cita.cita_id, ''), 1025),
            notify_cita.action, left(notify_cita.estado, 1025))
    returning seq into new_seq;
    perform pg_catalog.pg_notify('citas_realtime',
        '{"last_seq":' || new_seq || ',"count":1,"action":"' || notify_cita.action || '"}');
    return new_seq;
end
$fn$;
revoke all on function citas_realtime.notify_cita(text, text, text, text) from public;

-- The dashboard's figures for one negocio: THE place a DBA changes what the dashboard shows.
-- The server calls it (coalesced, at most once per negocio per short window) after changes and
-- pushes the result to subscribers, so 30 staff watching one negocio cost one query, not 30.
-- install.sql creates it only when it does not exist, so a DBA's own version survives upgrades;
-- to get this default back, drop the function and run install.sql again. It may return any
-- JSON object; the server adds "seq" (the last event the figures include).
do $stats$
declare
    -- Without a fecha column there is no "today": hoy is left out.
    has_fecha boolean := exists (
        select 1 from pg_catalog.pg_attribute
        where attrelid = 'public.citas'::regclass and attname = 'fecha'
          and attnum > 0 and not attisdropped);
begin
    if to_regprocedure('citas_realtime.estadisticas(text)') is null then
        execute format($def$
        create function citas_realtime.estadisticas(negocio_id text) returns jsonb
            language sql stable
            security definer
            set search_path = pg_catalog, pg_temp
        as $fn$
            with c as (
                select c.estado::text as estado, %s as hoy
                from public.citas c
                where c.negocio_id::text = estadisticas.negocio_id
            ),
            estados(estado) as (
                values ('pendiente'), ('confirmada'), ('completada'), ('cancelada')
            )
            select jsonb_build_object(
                'total', (select count(*) from c),
                'por_estado', (select jsonb_object_agg(e.estado,
                                  (select count(*) from c where c.estado = e.estado))
                               from estados e)) %s
        $fn$ $def$,
        case when has_fecha then 'c.fecha = current_date' else 'false' end,
        case when has_fecha then $hoy$ || jsonb_build_object('hoy', jsonb_build_object(
                    'total', (select count(*) from c where c.hoy),
                    'por_estado', (select jsonb_object_agg(e.estado,
                                      (select count(*) from c where c.hoy and c.estado = e.estado))
                                   from estados e))) $hoy$ else '' end);
    end if;
end
$stats$;
revoke all on function citas_realtime.estadisticas(text) from public;

-- Transition tables need one trigger per event; all four share capture().
create or replace trigger citas_realtime_insert
    after insert on public.citas
    referencing new table as citas_realtime_new
    for each statement execute function citas_realtime.capture();

create or replace trigger citas_realtime_update
    after update on public.citas
    referencing old table as citas_realtime_old new table as citas_realtime_new
    for each statement execute function citas_realtime.capture();

create or replace trigger citas_realtime_delete
    after delete on public.citas
    referencing old table as citas_realtime_old
    for each statement execute function citas_realtime.capture();

create or replace trigger citas_realtime_truncate
    after truncate on public.citas
    for each statement execute function citas_realtime.capture();

-- Access. The owner (the installer) bypasses row-level security, so the triggers and prune()
-- (SECURITY DEFINER) are unaffected; everyone else reads only through the policy.
revoke all on function citas_realtime.version() from public;
grant usage on schema citas_realtime to citas_realtime_reader;
grant select on citas_realtime.events, citas_realtime.retention to citas_realtime_reader;
grant execute on function citas_realtime.version(), citas_realtime.prune(interval),
    citas_realtime.record_columns(),
    citas_realtime.estadisticas(text), citas_realtime.notify_cita(text, text, text, text)
    to citas_realtime_reader;

alter table citas_realtime.events enable row level security;
alter table citas_realtime.retention enable row level security;
alter table citas_realtime.settings enable row level security;
drop policy if exists citas_realtime_reader_read on citas_realtime.events;
create policy citas_realtime_reader_read on citas_realtime.events
    for select to citas_realtime_reader using (true);
drop policy if exists citas_realtime_reader_read on citas_realtime.retention;
create policy citas_realtime_reader_read on citas_realtime.retention
    for select to citas_realtime_reader using (true);

-- Supabase grants API roles rights on new objects through default privileges: take back any
-- that reached our schema.
do $api$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
            execute format('revoke all on all tables in schema citas_realtime from %I', r);
            execute format('revoke all on all sequences in schema citas_realtime from %I', r);
            execute format('revoke all on all functions in schema citas_realtime from %I', r);
            execute format('revoke all on schema citas_realtime from %I', r);
        end if;
    end loop;
end
$api$;

commit;
