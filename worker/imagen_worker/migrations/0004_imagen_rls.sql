-- Row-level security: a signed-in user (role authenticated, request.jwt.claims) sees and
-- creates only rows whose owner_user_id is auth.uid(); anon sees nothing. The worker and the
-- server extension's service connection own the tables (or hold service_role) and bypass RLS.

alter table imagen.jobs enable row level security;
alter table imagen.images enable row level security;
alter table imagen.job_events enable row level security;
alter table imagen.canvases enable row level security;
alter table imagen.canvas_nodes enable row level security;
alter table imagen.canvas_edges enable row level security;

grant usage on schema imagen to authenticated, service_role;
grant all on all tables in schema imagen to service_role;
grant usage, select on all sequences in schema imagen to service_role;

grant select, insert on imagen.jobs to authenticated;
grant select on imagen.images, imagen.job_events to authenticated;
grant select, insert, update, delete on imagen.canvases, imagen.canvas_nodes, imagen.canvas_edges
  to authenticated;

create policy jobs_owner_select on imagen.jobs
  for select to authenticated
  using (owner_user_id = (select auth.uid()));

-- A user may only queue a fresh job under their own id; the queue columns are the worker's.
create policy jobs_owner_insert on imagen.jobs
  for insert to authenticated
  with check (
    owner_user_id = (select auth.uid())
    and status = 'pending' and attempts = 0
    and locked_by is null and lease_expires_at is null
    and started_at is null and completed_at is null
    and image_id is null and error is null and cost_usd is null and provider_job_id is null
  );

create policy images_owner_select on imagen.images
  for select to authenticated
  using (owner_user_id = (select auth.uid()));

create policy job_events_owner_select on imagen.job_events
  for select to authenticated
  using (owner_user_id = (select auth.uid()));

create policy canvases_owner_all on imagen.canvases
  for all to authenticated
  using (owner_user_id = (select auth.uid()))
  with check (owner_user_id = (select auth.uid()));

create policy canvas_nodes_owner_all on imagen.canvas_nodes
  for all to authenticated
  using (owner_user_id = (select auth.uid()))
  with check (owner_user_id = (select auth.uid()));

create policy canvas_edges_owner_all on imagen.canvas_edges
  for all to authenticated
  using (owner_user_id = (select auth.uid()))
  with check (owner_user_id = (select auth.uid()));

-- Cancel: the only write a user makes to a job after queueing it. A pending job is cancelled
-- at once; a running one is marked cancelled and its worker, told by the state event, aborts.
-- Returns the job's status after the call.
create function imagen.cancel_job(p_job_id uuid) returns text
language plpgsql security definer set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  -- The caller's role: SET ROLE's, else the login's (inside this function current_user is the owner).
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
      hint = 'Call it with request.jwt.claims carrying the owner''s sub, or from a service connection.';
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

revoke all on function imagen.cancel_job(uuid) from public;
grant execute on function imagen.cancel_job(uuid) to authenticated, service_role;
