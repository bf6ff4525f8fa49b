-- Every job transition leaves a job_events row in the same transaction, and every event is
-- announced on imagen_job_events; new and re-queued jobs are announced on imagen_jobs (the id alone).
-- Notification payloads carry ids and a status, never data. imagen_job_events payloads are a JSON
-- array of events, one notification per statement (chunked under Postgres's 8000-byte limit):
-- a batch claim of n jobs costs one notification, not n.
-- The triggers are statement-level with transition tables, so a batch claim of n jobs costs
-- one INSERT into job_events rather than n trigger calls.

create function imagen.jobs_after_insert() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  insert into imagen.job_events (job_id, owner_user_id, kind, payload)
  select n.id, n.owner_user_id, 'state',
         jsonb_build_object('status', n.status, 'attempts', n.attempts)
  from new_jobs n
  order by n.created_at, n.id;
  perform pg_notify('imagen_jobs', n.id::text)
  from new_jobs n
  where n.status = 'pending';
  return null;
end
$$;

create trigger jobs_after_insert
  after insert on imagen.jobs
  referencing new table as new_jobs
  for each statement execute function imagen.jobs_after_insert();

create function imagen.jobs_after_update() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  insert into imagen.job_events (job_id, owner_user_id, kind, payload)
  select n.id, n.owner_user_id, 'state',
         jsonb_strip_nulls(jsonb_build_object(
           'status', n.status,
           'previous_status', o.status,
           'attempts', n.attempts,
           'locked_by', n.locked_by,
           'run_at', case when n.status = 'pending' then n.run_at end,
           'image_id', n.image_id,
           'error', n.error))
  from new_jobs n
  join old_jobs o on o.id = n.id
  where n.status is distinct from o.status;
  -- A job back in the queue (retry, released lease) is announced like a new one.
  perform pg_notify('imagen_jobs', n.id::text)
  from new_jobs n
  join old_jobs o on o.id = n.id
  where n.status = 'pending' and o.status <> 'pending';
  return null;
end
$$;

create trigger jobs_after_update
  after update on imagen.jobs
  referencing old table as old_jobs new table as new_jobs
  for each statement execute function imagen.jobs_after_update();

create function imagen.job_events_after_insert() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  perform pg_notify('imagen_job_events', '[' || string_agg(c.event, ',' order by c.id) || ']')
  from (
    select e.id,
           (row_number() over (order by e.id) - 1) / 40 as chunk,
           json_strip_nulls(json_build_object(
             'event_id', e.id,
             'job_id', e.job_id,
             'owner_user_id', e.owner_user_id,
             'kind', e.kind,
             'status', e.payload ->> 'status'))::text as event
    from new_events e
  ) c
  group by c.chunk
  order by c.chunk;
  return null;
end
$$;

create trigger job_events_after_insert
  after insert on imagen.job_events
  referencing new table as new_events
  for each statement execute function imagen.job_events_after_insert();
