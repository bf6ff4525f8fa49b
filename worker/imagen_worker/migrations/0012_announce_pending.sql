-- A job queued through the service is announced as `pending` on the event stream in its queuing
-- transaction (docs/adr/0006-event-stream.md, amendment), whatever login the service uses: the
-- `authenticated` role and users' own logins may read job_events but not write them, so the write
-- goes through this owner-checked function, as cancel_job and report_waiting do. Jobs INSERTed by
-- plain SQL (the queue's pickup path, ADR 0005) still write no event.

-- A `state` event with status `pending` for each of the caller's own pending jobs among p_job_ids
-- that has no event yet (so a repeated call adds nothing), announced on imagen_job_events in chunks
-- of 40 like the transition trigger's events. Returns the number of events written.
create function imagen.announce_pending(p_job_ids uuid[]) returns integer
language plpgsql security definer set search_path = ''
as $$
declare
  v_owner uuid := imagen.caller_owner();
  v_written integer;
begin
  if v_owner is null then
    return 0;
  end if;
  with ev as (
    insert into imagen.job_events (job_id, owner_user_id, kind, payload)
    select j.id, j.owner_user_id, 'state', jsonb_build_object('status', 'pending')
      from unnest(p_job_ids) with ordinality as a(id, n)
      join imagen.jobs j on j.id = a.id
     where j.owner_user_id = v_owner
       and j.status = 'pending'
       and not exists (select 1 from imagen.job_events e where e.job_id = j.id)
     order by a.n
    returning id, job_id, owner_user_id
  ),
  c as (
    select e.id,
           (row_number() over (order by e.id) - 1) / 40 as chunk,
           json_build_object('event_id', e.id, 'job_id', e.job_id, 'owner_user_id', e.owner_user_id,
                             'kind', 'state', 'status', 'pending')::text as event
      from ev e
  )
  select coalesce(sum(sent.n), 0)::integer into v_written
    from (select count(*) as n,
                 pg_notify('imagen_job_events', '[' || string_agg(c.event, ',' order by c.id) || ']')
            from c
           group by c.chunk) sent;
  return v_written;
end
$$;
revoke all on function imagen.announce_pending(uuid[]) from public;
grant execute on function imagen.announce_pending(uuid[]) to authenticated, imagen_user, service_role;
