-- Users with login roles of their own (docs/adr/0008-hub-isolation.md): under JupyterHub each user's
-- server logs in as its own role, and row-level security for those roles is keyed on the session's
-- role (session_user, fixed at login), never on a setting the session could change.

create table imagen.users (
  owner_user_id     uuid primary key,
  hub_name          text not null unique check (length(hub_name) between 1 and 200),
  db_role           text not null unique check (db_role ~ '^imagen_u_[a-z0-9_]{1,40}$'),
  -- The user's Supabase auth.users id, where the database is a Supabase project's.
  auth_user_id      uuid unique,
  max_pending       integer check (max_pending >= 1),
  max_cost_per_day  numeric(12, 6) check (max_cost_per_day >= 0),
  created_at        timestamptz not null default now()
);
alter table imagen.users enable row level security;
grant all on imagen.users to service_role;

-- Group roles: what a user's server may do, and what a user's own worker (layout (a)) adds.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'imagen_user') then
    create role imagen_user nologin;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'imagen_user_worker') then
    create role imagen_user_worker nologin;
  end if;
end
$$;

-- The owner of the session: the imagen.users row whose role logged in. Security definer, so users
-- need no access to imagen.users (and cannot read other users' rows of it).
create function imagen.current_owner() returns uuid
language sql stable security definer set search_path = ''
as $$
  select u.owner_user_id from imagen.users u where u.db_role = session_user
$$;
revoke all on function imagen.current_owner() from public;
grant execute on function imagen.current_owner() to imagen_user, imagen_user_worker, authenticated, service_role;

-- Whose request this is, for the functions users call: the login role's owner when the session is
-- a user's own login (claims are then ignored: the session could set them to anyone), else the
-- signed-in user of the claims (a service connection acting for a user, Supabase's API).
create function imagen.caller_owner() returns uuid
language sql stable security definer set search_path = ''
as $$
  select coalesce(imagen.current_owner(), auth.uid())
$$;
revoke all on function imagen.caller_owner() from public;
grant execute on function imagen.caller_owner() to imagen_user, imagen_user_worker, authenticated, service_role;

grant usage on schema imagen to imagen_user, imagen_user_worker;
-- A user's server checks that the schema is up to date (and migrates nothing).
grant select on imagen.schema_migrations to imagen_user, imagen_user_worker;
grant select, insert on imagen.jobs to imagen_user;
grant select on imagen.images, imagen.job_events, imagen.workers to imagen_user;
grant select, insert, update, delete on imagen.canvases, imagen.canvas_nodes, imagen.canvas_edges to imagen_user;
grant update on imagen.jobs to imagen_user_worker;
grant insert on imagen.images, imagen.job_events to imagen_user_worker;
grant insert, update, delete on imagen.workers to imagen_user_worker;
grant usage on sequence imagen.job_events_id_seq to imagen_user_worker;
-- A user's own worker reads the provider limits and, with RLS on and no policy for it, sees none:
-- the shared pool's limits do not bind calls made with the user's own keys (ADR 0008).
grant select on imagen.provider_limits to imagen_user_worker;

create policy jobs_user_select on imagen.jobs
  for select to imagen_user, imagen_user_worker
  using (owner_user_id = (select imagen.current_owner()));

create policy jobs_user_insert on imagen.jobs
  for insert to imagen_user
  with check (
    owner_user_id = (select imagen.current_owner())
    and status = 'pending' and attempts = 0
    and locked_by is null and lease_expires_at is null
    and started_at is null and completed_at is null
    and image_id is null and error is null and cost_usd is null and provider_job_id is null
  );

-- A user's own worker (layout (a)) runs the queue's statements on the user's own jobs only.
create policy jobs_user_worker_update on imagen.jobs
  for update to imagen_user_worker
  using (owner_user_id = (select imagen.current_owner()))
  with check (owner_user_id = (select imagen.current_owner()));

create policy images_user_select on imagen.images
  for select to imagen_user, imagen_user_worker
  using (owner_user_id = (select imagen.current_owner()));

create policy images_user_worker_insert on imagen.images
  for insert to imagen_user_worker
  with check (owner_user_id = (select imagen.current_owner()));

create policy job_events_user_select on imagen.job_events
  for select to imagen_user, imagen_user_worker
  using (owner_user_id = (select imagen.current_owner()));

create policy job_events_user_worker_insert on imagen.job_events
  for insert to imagen_user_worker
  with check (owner_user_id = (select imagen.current_owner()));

create policy canvases_user_all on imagen.canvases
  for all to imagen_user
  using (owner_user_id = (select imagen.current_owner()))
  with check (owner_user_id = (select imagen.current_owner()));

create policy canvas_nodes_user_all on imagen.canvas_nodes
  for all to imagen_user
  using (owner_user_id = (select imagen.current_owner()))
  with check (owner_user_id = (select imagen.current_owner()));

create policy canvas_edges_user_all on imagen.canvas_edges
  for all to imagen_user
  using (owner_user_id = (select imagen.current_owner()))
  with check (owner_user_id = (select imagen.current_owner()));

create policy workers_user_select on imagen.workers
  for select to imagen_user, imagen_user_worker
  using (scope = 'all' or owner_user_id = (select imagen.current_owner()));

create policy workers_user_worker_write on imagen.workers
  for all to imagen_user_worker
  using (scope = 'owner' and owner_user_id = (select imagen.current_owner()))
  with check (scope = 'owner' and owner_user_id = (select imagen.current_owner()));

-- cancel_job and report_waiting take the caller's owner from the login role where there is one.
create or replace function imagen.cancel_job(p_job_id uuid) returns text
language plpgsql security definer set search_path = ''
as $$
declare
  v_uid uuid := imagen.caller_owner();
  v_caller text := coalesce(nullif(current_setting('role'), 'none'), session_user);
  v_owner uuid;
  v_status text;
begin
  if v_uid is null and not exists (
    select 1 from pg_catalog.pg_roles
    where rolname = v_caller and (rolsuper or rolbypassrls)
  ) then
    raise exception using
      errcode = 'insufficient_privilege',
      message = 'cancel_job needs a signed-in user',
      hint = 'Call it as a user''s own login, with request.jwt.claims carrying the owner''s sub, or from a service connection.';
  end if;

  select owner_user_id, status into v_owner, v_status
  from imagen.jobs where id = p_job_id
  for update;

  if not found or (v_uid is not null and v_owner <> v_uid) then
    raise exception using
      errcode = 'no_data_found',
      message = format('job %s not found', p_job_id),
      hint = 'Check the job id; a user can cancel only their own jobs.';
  end if;

  if v_status in ('pending', 'running') then
    update imagen.jobs
       set status = 'cancelled',
           completed_at = now(),
           lease_expires_at = null,
           error = 'cancelled'
     where id = p_job_id;
    return 'cancelled';
  end if;
  return v_status;
end
$$;
grant execute on function imagen.cancel_job(uuid) to imagen_user;

create or replace function imagen.report_waiting(p_job_id uuid, p_message text) returns bigint
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
     and (j.owner_user_id = imagen.caller_owner()
          or exists (select 1 from pg_catalog.pg_roles r
                      where r.rolname = coalesce(nullif(current_setting('role'), 'none'), session_user)
                        and (r.rolsuper or r.rolbypassrls)))
  returning id into v_id;
  return v_id;
end
$$;
grant execute on function imagen.report_waiting(uuid, text) to imagen_user;

-- Quotas, held whoever inserts: a user's pending jobs and the cost of a day's jobs. SQLSTATE 53400
-- (configuration_limit_exceeded) tells the service to answer 429.
create function imagen.jobs_enforce_quota() returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  v_user imagen.users;
  v_pending integer;
  v_cost numeric;
begin
  select * into v_user from imagen.users u where u.owner_user_id = new.owner_user_id;
  if not found then
    return new;
  end if;
  if v_user.max_pending is not null then
    select count(*) into v_pending
      from (select 1 from imagen.jobs j
             where j.owner_user_id = new.owner_user_id and j.status = 'pending'
             limit v_user.max_pending) p;
    if v_pending >= v_user.max_pending then
      raise exception using
        errcode = '53400',
        message = format('quota: %s pending jobs is the most %s may have', v_user.max_pending, v_user.hub_name),
        hint = 'Wait for some jobs to finish (or cancel them), then retry.';
    end if;
  end if;
  if v_user.max_cost_per_day is not null then
    select coalesce(sum(j.cost_usd), 0) into v_cost
      from imagen.jobs j
     where j.owner_user_id = new.owner_user_id
       and j.created_at >= date_trunc('day', now() at time zone 'utc') at time zone 'utc';
    if v_cost >= v_user.max_cost_per_day then
      raise exception using
        errcode = '53400',
        message = format('quota: today''s jobs of %s cost $%s, the most allowed a day is $%s',
                         v_user.hub_name, round(v_cost, 4), v_user.max_cost_per_day),
        hint = 'The quota resets at midnight UTC.';
    end if;
  end if;
  return new;
end
$$;

-- Owners without a row in imagen.users (single-user installs, plain SQL clients) cost one primary-key
-- lookup per inserted job.
create trigger jobs_enforce_quota
  before insert on imagen.jobs
  for each row execute function imagen.jobs_enforce_quota();

-- Administration (`imagen users add|remove`, the JupyterHub pre-spawn hook), run by an admin role
-- that may create roles; idempotent. Not granted to anyone: only their owner and superusers run them.
create function imagen.add_user(p_hub_name text, p_owner uuid, p_role text, p_worker boolean,
                                p_max_pending integer, p_max_cost numeric, p_auth_user_id uuid)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = p_role) then
    execute format('create role %I login', p_role);
  end if;
  -- Inherit the group's grants; never anything that bypasses row-level security.
  execute format('alter role %I login inherit nosuperuser nocreatedb nocreaterole nobypassrls connection limit 40', p_role);
  execute format('grant imagen_user to %I', p_role);
  if p_worker then
    execute format('grant imagen_user_worker to %I', p_role);
  else
    execute format('revoke imagen_user_worker from %I', p_role);
  end if;
  insert into imagen.users (owner_user_id, hub_name, db_role, auth_user_id, max_pending, max_cost_per_day)
  values (p_owner, p_hub_name, p_role, p_auth_user_id, p_max_pending, p_max_cost)
  on conflict (hub_name) do update
     set db_role = excluded.db_role, auth_user_id = excluded.auth_user_id,
         max_pending = excluded.max_pending, max_cost_per_day = excluded.max_cost_per_day;
end
$$;

-- A fresh password for a user's role (each spawn gets its own; the previous one stops working).
create function imagen.set_user_password(p_role text, p_password text) returns void
language plpgsql
set search_path = ''
as $$
begin
  if not exists (select 1 from imagen.users u where u.db_role = p_role) then
    raise exception using errcode = 'no_data_found', message = format('%s is not an imagen user role', p_role),
      hint = 'Add the user first: imagen users add NAME';
  end if;
  execute format('alter role %I password %L', p_role, p_password);
end
$$;

-- The user can no longer log in; their jobs, images and canvases stay (an owner id, not a role).
create function imagen.remove_user(p_hub_name text) returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_role text;
begin
  delete from imagen.users u where u.hub_name = p_hub_name returning u.db_role into v_role;
  if v_role is null then
    return false;
  end if;
  if exists (select 1 from pg_catalog.pg_roles where rolname = v_role) then
    execute format('drop owned by %I', v_role);
    execute format('drop role %I', v_role);
  end if;
  return true;
end
$$;
revoke all on function imagen.add_user(text, uuid, text, boolean, integer, numeric, uuid) from public;
revoke all on function imagen.set_user_password(text, text) from public;
revoke all on function imagen.remove_user(text) from public;
