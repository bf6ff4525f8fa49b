-- JupyterHub isolation, hardened (docs/adr/0008-hub-isolation.md, "Threat model updates"):
--
-- 1. A user's own worker (imagen_user_worker) writes images and job events for its own jobs only.
--    The policies of 0009 checked the row's owner column alone, and foreign keys ignore row-level
--    security: B's login could insert an images row naming A's job id (images.job_id is unique, so
--    A's real result would then be refused) or A's storage path, and job events on A's jobs. A's job
--    ids reach B through NOTIFY payloads. Now the job must be the caller's own and an image's paths
--    must lie in the caller's own folder (`{owner}/...`).
-- 2. `imagen.add_user` (`imagen users add`, every spawn) keeps what is stored unless it is given:
--    a spawn no longer resets max_pending, max_cost_per_day and auth_user_id to configure()'s values.
--    On a Supabase database (owners reference auth.users) a new user needs their auth.users id, which
--    is then their owner id (imagen_worker.users.add_user passes it).
-- 3. Role names are cluster-wide: a user's login is marked as belonging to this database (a comment
--    on the role), and another database's imagen refuses to take it over. A user's login that reaches
--    another database of the cluster (CONNECT is granted to PUBLIC) acts as nobody there: for these
--    roles the caller is their own login's owner only, never the claims.
-- 4. Quotas hold under concurrency: one owner's inserts are serialised (a transaction-level advisory
--    lock on the owner) before counting, and a repeatable-read transaction, whose snapshot would not
--    see what committed meanwhile, may not insert jobs for an owner with a quota.
-- 5. The shared pool gets a login of its own with only what a worker needs (group role imagen_pool),
--    not the admin's (CREATEROLE, owner of the schema).

-- 1. Images and job events of a user's own worker: its own jobs, its own folder.
alter policy images_user_worker_insert on imagen.images
  with check (
    owner_user_id = (select imagen.current_owner())
    and (job_id is null
         or exists (select 1 from imagen.jobs j
                     where j.id = job_id and j.owner_user_id = (select imagen.current_owner())))
    and starts_with(path, (select imagen.current_owner())::text || '/')
    and path !~ '(^|/)\.\.(/|$)'
    and (thumb_path is null
         or (starts_with(thumb_path, (select imagen.current_owner())::text || '/')
             and thumb_path !~ '(^|/)\.\.(/|$)'))
  );

alter policy job_events_user_worker_insert on imagen.job_events
  with check (
    owner_user_id = (select imagen.current_owner())
    and exists (select 1 from imagen.jobs j
                 where j.id = job_id and j.owner_user_id = (select imagen.current_owner()))
  );

-- 3. The caller of cancel_job and report_waiting: for a user's own login, its owner alone (null in a
-- database where it is nobody), never the claims the session may set.
create or replace function imagen.caller_owner() returns uuid
language sql stable security definer set search_path = ''
as $$
  select case
           when exists (select 1
                          from pg_catalog.pg_auth_members m
                          join pg_catalog.pg_roles g on g.oid = m.roleid
                          join pg_catalog.pg_roles r on r.oid = m.member
                         where r.rolname = session_user
                           and g.rolname in ('imagen_user', 'imagen_user_worker'))
             then imagen.current_owner()
           else coalesce(imagen.current_owner(), auth.uid())
         end
$$;

-- The hub name of the session's own login: a user's server checks it is the JUPYTERHUB_USER it
-- serves (the owner id alone cannot say: on Supabase it is the user's auth.users id).
create function imagen.current_hub_name() returns text
language sql stable security definer set search_path = ''
as $$
  select u.hub_name from imagen.users u where u.db_role = session_user
$$;
revoke all on function imagen.current_hub_name() from public;
grant execute on function imagen.current_hub_name() to imagen_user, imagen_user_worker;

-- 2, 3. Adding a user: stored settings are kept unless given; the login is this database's alone.
create or replace function imagen.add_user(p_hub_name text, p_owner uuid, p_role text, p_worker boolean,
                                           p_max_pending integer, p_max_cost numeric, p_auth_user_id uuid)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_mark text := 'imagen user login of database ' || current_database();
  v_comment text;
  v_other text;
begin
  if p_auth_user_id is null
     and not exists (select 1 from imagen.users u where u.hub_name = p_hub_name)
     and exists (select 1 from pg_catalog.pg_constraint c
                  where c.conrelid = 'imagen.jobs'::regclass and c.contype = 'f'
                    and c.confrelid = to_regclass('auth.users')) then
    raise exception using
      errcode = 'invalid_parameter_value',
      message = format('%s needs an auth.users id: on this database job owners are Supabase auth users', p_hub_name),
      hint = format('Add the user with their Supabase user id first: imagen users add %s --auth-user-id <uuid>', p_hub_name);
  end if;

  select pg_catalog.shobj_description(r.oid, 'pg_authid') into v_comment
    from pg_catalog.pg_roles r where r.rolname = p_role;
  if not found then
    execute format('create role %I login', p_role);
  elsif v_comment is distinct from v_mark and v_comment like 'imagen user login of database %' then
    v_other := substr(v_comment, length('imagen user login of database ') + 1);
    if exists (select 1 from pg_catalog.pg_database d where d.datname = v_other) then
      raise exception using
        errcode = 'duplicate_object',
        message = format('role %s is already the login of a hub user of imagen database %s', p_role, v_other),
        hint = 'Role names are cluster-wide: give each imagen database that has hub users a cluster of its own.';
    end if;
  end if;
  -- Inherit the group's grants; never anything that bypasses row-level security.
  execute format('alter role %I login inherit nosuperuser nocreatedb nocreaterole nobypassrls connection limit 40', p_role);
  execute format('comment on role %I is %L', p_role, v_mark);
  execute format('grant imagen_user to %I', p_role);
  if p_worker then
    execute format('grant imagen_user_worker to %I', p_role);
  else
    execute format('revoke imagen_user_worker from %I', p_role);
  end if;
  insert into imagen.users as u (owner_user_id, hub_name, db_role, auth_user_id, max_pending, max_cost_per_day)
  values (p_owner, p_hub_name, p_role, p_auth_user_id, p_max_pending, p_max_cost)
  on conflict (hub_name) do update
     set db_role = excluded.db_role,
         auth_user_id = coalesce(excluded.auth_user_id, u.auth_user_id),
         max_pending = coalesce(excluded.max_pending, u.max_pending),
         max_cost_per_day = coalesce(excluded.max_cost_per_day, u.max_cost_per_day);
end
$$;
revoke all on function imagen.add_user(text, uuid, text, boolean, integer, numeric, uuid) from public;

-- 4. Quotas, serialised per owner.
create or replace function imagen.jobs_enforce_quota() returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  v_user imagen.users;
  v_pending integer;
  v_cost numeric;
begin
  select * into v_user from imagen.users u where u.owner_user_id = new.owner_user_id;
  if not found or (v_user.max_pending is null and v_user.max_cost_per_day is null) then
    return new;
  end if;
  if current_setting('transaction_isolation') = 'repeatable read' then
    raise exception using
      errcode = 'invalid_transaction_state',
      message = format('jobs of %s, who has a quota, are added in read committed (or serializable) transactions',
                       v_user.hub_name),
      hint = 'A repeatable-read snapshot cannot see jobs added meanwhile; insert in a read committed transaction.';
  end if;
  -- One owner's inserts one at a time, until each commits; the counts below then see every job of
  -- the owner that committed before (read committed: each statement here takes a fresh snapshot).
  perform pg_catalog.pg_advisory_xact_lock(1769366, pg_catalog.hashtext(new.owner_user_id::text));
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

-- 5. The shared pool's own login: every owner's jobs, images, events, the worker registry and the
-- provider limits, and the hub names of owners (to hand each owner's images to their Unix user).
-- Not: canvases, writing imagen.users, creating roles, owning or altering any table.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'imagen_pool') then
    create role imagen_pool nologin;
  end if;
exception when duplicate_object or unique_violation then
  null;  -- another database of the cluster made it at the same moment
end
$$;

grant usage on schema imagen to imagen_pool;
grant select on imagen.schema_migrations to imagen_pool;
grant select, insert, update, delete on imagen.jobs, imagen.images, imagen.job_events, imagen.workers,
  imagen.provider_limits, imagen.provider_slots to imagen_pool;
grant select on imagen.users to imagen_pool;
grant usage, select on all sequences in schema imagen to imagen_pool;
grant execute on function imagen.acquire_provider_slot(text, uuid, text) to imagen_pool;
grant execute on function imagen.claim_within_limits(text, integer, double precision, uuid) to imagen_pool;

create policy jobs_pool_all on imagen.jobs for all to imagen_pool using (true) with check (true);
create policy images_pool_all on imagen.images for all to imagen_pool using (true) with check (true);
create policy job_events_pool_all on imagen.job_events for all to imagen_pool using (true) with check (true);
create policy workers_pool_all on imagen.workers for all to imagen_pool using (true) with check (true);
create policy provider_limits_pool_all on imagen.provider_limits for all to imagen_pool using (true) with check (true);
create policy provider_slots_pool_all on imagen.provider_slots for all to imagen_pool using (true) with check (true);
create policy users_pool_select on imagen.users for select to imagen_pool using (true);

-- The pool's login of this database (its name is derived from the database's, so two imagen
-- databases on one cluster have two), with a fresh password; returns the role's name.
create function imagen.set_pool_login(p_password text) returns text
language plpgsql
set search_path = ''
as $$
declare
  v_role text := 'imagen_pool_' || left(md5(current_database()), 12);
begin
  if length(coalesce(p_password, '')) < 16 then
    raise exception using errcode = 'invalid_parameter_value', message = 'the pool''s password is too short';
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = v_role) then
    execute format('create role %I login', v_role);
  end if;
  execute format('alter role %I login inherit nosuperuser nocreatedb nocreaterole nobypassrls password %L',
                 v_role, p_password);
  execute format('comment on role %I is %L', v_role, 'imagen pool login of database ' || current_database());
  execute format('grant imagen_pool to %I', v_role);
  return v_role;
end
$$;
revoke all on function imagen.set_pool_login(text) from public;
