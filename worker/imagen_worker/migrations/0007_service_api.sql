-- What the service layer and the server extension need (docs/api.md, docs/adr/0006-event-stream.md):
--
-- 1. imagen.workers: live workers register and beat, so the API can say when no live worker can run
--    a job. A worker is live while last_seen_at is recent; a crashed one ages out.
-- 2. job_events.xid: the writing transaction's id, so an event stream can resume from a snapshot
--    (event ids are taken before commit and so are not in commit order; a snapshot is).
-- 3. The `waiting` event kind: a job queued while no live worker could run it.
-- 4. canvases.version: optimistic concurrency for saves; every save is announced on
--    imagen_canvas_events (ids and the version, never data).
-- 5. jobs.group_id: jobs submitted together (a node's variants, a sweep).
-- 6. Indexes: an owner's pending jobs (the pending cap; fair share), a canvas node's history.

create table imagen.workers (
  id              text primary key check (length(id) between 1 and 300),
  host            text not null check (length(host) between 1 and 255),
  pid             integer not null,
  scope           text not null check (scope in ('all', 'owner')),
  owner_user_id   uuid,
  providers       text[] not null default '{}',
  concurrency     integer not null check (concurrency >= 1),
  started_at      timestamptz not null default now(),
  last_seen_at    timestamptz not null default now(),
  check (scope = 'all' or owner_user_id is not null)
);
create index workers_seen_idx on imagen.workers (last_seen_at);

alter table imagen.workers enable row level security;
grant all on imagen.workers to service_role;
grant select on imagen.workers to authenticated;
-- A user sees the shared pool and their own workers, not other users' servers.
create policy workers_visible on imagen.workers
  for select to authenticated
  using (scope = 'all' or owner_user_id = (select auth.uid()));

create function imagen.workers_announce() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  perform pg_notify('imagen_workers', coalesce(new.id, old.id));
  return null;
end
$$;

create trigger workers_announce
  after insert or delete on imagen.workers
  for each row execute function imagen.workers_announce();

-- Resumable event streams. pg_current_xact_id() is the inserting transaction's id (the
-- transition trigger and insert_event run in the transaction that makes the change).
alter table imagen.job_events add column xid xid8 not null default pg_current_xact_id();
create index job_events_xid_idx on imagen.job_events (xid);

alter table imagen.job_events drop constraint job_events_kind_check;
alter table imagen.job_events add constraint job_events_kind_check
  check (kind in ('state', 'progress', 'log', 'error', 'webhook', 'waiting'));

-- A `waiting` event for one of the caller's own pending jobs: users cannot write job_events
-- directly, so this function (owner-checked) is the one way in. Returns the event id, or null
-- when the job is not the caller's or no longer pending.
create function imagen.report_waiting(p_job_id uuid, p_message text) returns bigint
language plpgsql security definer set search_path = ''
as $$
declare
  v_id bigint;
begin
  insert into imagen.job_events (job_id, owner_user_id, kind, payload)
  select j.id, j.owner_user_id, 'waiting', jsonb_build_object('status', 'pending', 'message', left(p_message, 500))
    from imagen.jobs j
   where j.id = p_job_id
     and j.status = 'pending'
     and (j.owner_user_id = auth.uid()
          or exists (select 1 from pg_catalog.pg_roles r
                      where r.rolname = coalesce(nullif(current_setting('role'), 'none'), session_user)
                        and (r.rolsuper or r.rolbypassrls)))
  returning id into v_id;
  return v_id;
end
$$;
revoke all on function imagen.report_waiting(uuid, text) from public;
grant execute on function imagen.report_waiting(uuid, text) to authenticated, service_role;

-- Canvas versions and save announcements.
alter table imagen.canvases add column version bigint not null default 1 check (version >= 1);

create function imagen.canvases_announce() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  perform pg_notify('imagen_canvas_events', json_build_object(
    'canvas_id', coalesce(new.id, old.id),
    'owner_user_id', coalesce(new.owner_user_id, old.owner_user_id),
    'version', case when tg_op = 'DELETE' then null else new.version end)::text);
  return null;
end
$$;

create trigger canvases_announce
  after insert or update of version or delete on imagen.canvases
  for each row execute function imagen.canvases_announce();

alter table imagen.jobs add column group_id uuid;

create index jobs_owner_pending_idx on imagen.jobs (owner_user_id, priority, run_at) where status = 'pending';
create index jobs_canvas_node_idx on imagen.jobs (canvas_id, node_id, created_at desc) where canvas_id is not null;
