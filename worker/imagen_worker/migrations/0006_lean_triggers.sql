-- Leaner triggers on the queue's hot path (docs/adr/0005-pickup-latency.md).
--
-- 1. A new job is announced on imagen_jobs (the id alone) and writes no job_events row: creation
--    is not a transition (the lifecycle starts at pending; jobs.created_at records it), as the
--    design says ("AFTER INSERT on jobs -> pg_notify('imagen_jobs', id)"). A row-level trigger,
--    so a single INSERT captures no transition table.
-- 2. The inline-image guard runs its plpgsql function only when the inlinable test fails (a WHEN
--    clause), so a clean row costs an expression, not a function call; the message is unchanged.
-- 3. The transition trigger writes the state events and sends their notifications in one
--    statement, instead of a second statement-level trigger on job_events. Other events
--    (progress, log, error, webhook: one row per INSERT) are announced by a row-level trigger.
-- 4. A new channel, imagen_job_signals, carries only what a worker holding a job must act on: the
--    job's cancellation and webhook deliveries for it (same payload as imagen_job_events). Workers
--    listen there instead of on imagen_job_events, so they no longer receive every event of every
--    job, their own claims' included; UIs and the server extension keep imagen_job_events.

drop trigger jobs_after_insert on imagen.jobs;
drop function imagen.jobs_after_insert();

create function imagen.jobs_announce_new() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  perform pg_notify('imagen_jobs', new.id::text);
  return null;
end
$$;

create trigger jobs_announce_new
  after insert on imagen.jobs
  for each row when (new.status = 'pending')
  execute function imagen.jobs_announce_new();

drop trigger jobs_guard_inline_images on imagen.jobs;

create trigger jobs_guard_inline_images_insert
  before insert on imagen.jobs
  for each row when (not (imagen.is_free_of_inline_image(new.prompt, 32000)
                          and imagen.is_free_of_inline_image(new.spec::text, 65536)
                          and imagen.is_free_of_inline_image(new.error, 4000)))
  execute function imagen.jobs_guard_inline_images();

create trigger jobs_guard_inline_images_update
  before update of prompt, spec, error on imagen.jobs
  for each row when (not (imagen.is_free_of_inline_image(new.prompt, 32000)
                          and imagen.is_free_of_inline_image(new.spec::text, 65536)
                          and imagen.is_free_of_inline_image(new.error, 4000)))
  execute function imagen.jobs_guard_inline_images();

drop trigger job_events_after_insert on imagen.job_events;
drop function imagen.job_events_after_insert();

create or replace function imagen.jobs_after_update() returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  announced integer;
begin
  -- One statement writes this statement's state events and sends every notification they call for:
  --   imagen_job_events   all of them, in chunks of 40 (under Postgres's 8000-byte payload limit),
  --                       so a batch claim of n jobs costs one notification, not n;
  --   imagen_job_signals  a running job cancelled: its worker must abort the handler;
  --   imagen_jobs         a job back in the queue (retry, released or expired lease), like a new one.
  with ev as (
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
    where n.status is distinct from o.status
    returning id, job_id, owner_user_id, payload ->> 'status' as status,
              payload ->> 'previous_status' as previous_status
  ),
  c as (
    select e.id, e.job_id, e.status, e.previous_status,
           (row_number() over (order by e.id) - 1) / 40 as chunk,
           json_build_object('event_id', e.id, 'job_id', e.job_id, 'owner_user_id', e.owner_user_id,
                             'kind', 'state', 'status', e.status)::text as event
    from ev e
  )
  select count(*) into announced
  from (
    (select pg_notify('imagen_job_events', '[' || string_agg(c.event, ',' order by c.id) || ']')
       from c
      group by c.chunk
      order by c.chunk)  -- chunks in event order (pg_notify runs after the sort)
    union all
    (select pg_notify('imagen_job_signals', '[' || string_agg(c.event, ',' order by c.id) || ']')
       from c
      where c.status = 'cancelled' and c.previous_status = 'running'
      group by c.chunk)
    union all
    (select pg_notify('imagen_jobs', c.job_id::text)
       from c
      where c.status = 'pending')
  ) sent;
  return null;
end
$$;

create function imagen.job_events_announce() returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  note text := '[' || json_strip_nulls(json_build_object(
    'event_id', new.id,
    'job_id', new.job_id,
    'owner_user_id', new.owner_user_id,
    'kind', new.kind,
    'status', new.payload ->> 'status'))::text || ']';
begin
  perform pg_notify('imagen_job_events', note);
  -- A verified webhook delivery wakes the worker waiting for it (ctx.wait_for_event).
  if new.kind = 'webhook' then
    perform pg_notify('imagen_job_signals', note);
  end if;
  return null;
end
$$;

-- State events are announced by the transition trigger that writes them.
create trigger job_events_announce
  after insert on imagen.job_events
  for each row when (new.kind <> 'state')
  execute function imagen.job_events_announce();
