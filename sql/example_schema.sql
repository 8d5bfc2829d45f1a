-- citas-realtime: example schema.
--
-- Creates public.citas the way the REST API uses it, when it does not exist yet. The demo and
-- the tests use it; a production database already has its own table and does not need this
-- file. Safe to run more than once.

create extension if not exists pgcrypto; -- gen_random_uuid() on PostgreSQL < 13

create table if not exists public.citas (
    id          uuid primary key default gen_random_uuid(),
    negocio_id  text not null,
    cliente_id  text,
    servicio_id text,
    fecha       date,
    hora_inicio time,
    hora_fin    time,
    estado      text not null default 'pendiente'
                check (estado in ('pendiente', 'confirmada', 'completada', 'cancelada')),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

create index if not exists citas_negocio_id_idx on public.citas (negocio_id);
