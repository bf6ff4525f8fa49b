-- Scheduling a person can feel (docs/adr/0007-scheduling.md):
--
-- 1. Fair share across owners within a priority. Every pending job carries a virtual time, `vtime`,
--    given at insert: one past the owner's last pending job of that priority, and never behind the
--    queue's head (the earliest due pending job of that priority). Claims take jobs in
--    (priority, vtime, run_at) order, so owners with pending work take turns: a new owner's job lands at the
--    head and is claimed in the next round, whatever another owner's backlog; one owner alone keeps
--    FIFO order. The claim stays one walk of jobs_pending_idx; the cost moves to the insert (two
--    index probes).
-- 2. No head-of-line blocking behind a provider's limits. While any provider has limits, workers
--    claim through imagen.claim_within_limits(): it takes a job of a limited provider only with a
--    free slot and a token, reserves them in the same statement, and walks past the provider's
--    other jobs, which stay pending (no attempt spent, no event written) until capacity returns.
--    Releasing a slot announces it on imagen_jobs so waiting workers claim again.

alter table imagen.jobs add column vtime bigint not null default 0;

-- Pending jobs of today keep their order: by owner and priority, in run_at order, from the head.
update imagen.jobs j
   set vtime = r.n
  from (select id, row_number() over (partition by owner_user_id, priority order by run_at, created_at) as n
          from imagen.jobs
         where status = 'pending') r
 where j.id = r.id;

drop index imagen.jobs_pending_idx;
create index jobs_pending_idx on imagen.jobs (priority, vtime, run_at) where status = 'pending';
drop index imagen.jobs_owner_pending_idx;
create index jobs_owner_pending_idx on imagen.jobs (owner_user_id, priority, vtime) where status = 'pending';

-- Security definer: the head is read across owners (a user's session sees only its own rows under
-- RLS). It reveals nothing to the inserting user beyond its own row's vtime.
create function imagen.jobs_assign_vtime() returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  v_last bigint;
  v_head bigint;
begin
  -- The owner's newest pending job of this priority (earlier rows of the same INSERT included).
  select j.vtime into v_last
    from imagen.jobs j
   where j.owner_user_id = new.owner_user_id
     and j.priority = new.priority
     and j.status = 'pending'
   order by j.vtime desc
   limit 1;
  -- The head: the earliest due pending job of this priority, any owner.
  select j.vtime into v_head
    from imagen.jobs j
   where j.priority = new.priority
     and j.status = 'pending'
     and j.run_at <= now()
   order by j.vtime
   limit 1;
  new.vtime := greatest(coalesce(v_last + 1, v_head, 0), coalesce(v_head, 0));
  return new;
end
$$;

create trigger jobs_assign_vtime
  before insert on imagen.jobs
  for each row when (new.status = 'pending')
  execute function imagen.jobs_assign_vtime();

-- A claim that respects every provider's limits (ADR 0007). The worker calls it instead of the lean
-- claim while any provider has limits. $1 worker id, $2 how many, $3 lease seconds, $4 owner (null:
-- any owner). Returns the claimed jobs (claimed = true; slot_reserved: the call's token and slot are
-- already taken for it) and one last row (claimed = false) naming the limited providers this claim
-- could not start (`blocked`) and when the first of them gets its next token (`next_at`, null when
-- only a freed slot can unblock them).
create function imagen.claim_within_limits(p_worker text, p_n integer, p_lease double precision, p_owner uuid)
returns table (claimed boolean, id uuid, owner_user_id uuid, canvas_id uuid, node_id text, provider text,
               model text, prompt text, spec jsonb, priority smallint, run_at timestamptz,
               attempts integer, max_attempts integer, created_at timestamptz, provider_job_id text,
               vtime bigint, slot_reserved boolean, blocked text[], next_at timestamptz)
language plpgsql volatile
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_clock timestamptz := clock_timestamp();
  v_limit imagen.provider_limits;
  v_live integer;
  v_cap integer;
  v_rate double precision;
  v_tokens double precision;
  -- Limited providers this claim holds (their rows locked), with what each may still start.
  v_names text[] := '{}';
  v_caps integer[] := '{}';
  v_tok double precision[] := '{}';
  v_blocked text[] := '{}';
  v_next timestamptz;
  v_ids uuid[] := '{}';
  v_provs text[] := '{}';
  v_job record;
  v_i integer;
  v_taken integer;
  v_rescan boolean;
begin
  -- 1. Capacity now. A row another claim holds is skipped: that provider counts as blocked for this
  --    claim (the other is deciding it), so claims never wait on each other here.
  for v_limit in
    select l.*
      from imagen.provider_limits l
     where l.max_concurrent is not null or l.requests_per_minute is not null
     order by l.provider
       for update skip locked
  loop
    v_cap := p_n;
    if v_limit.max_concurrent is not null then
      delete from imagen.provider_slots s
       where s.provider = v_limit.provider
         and not exists (
               select 1 from imagen.jobs j
                where j.id = s.job_id
                  and j.status = 'running'
                  and j.locked_by = s.worker_id
                  and j.lease_expires_at > v_clock);
      select count(*) into v_live from imagen.provider_slots s where s.provider = v_limit.provider;
      v_cap := least(v_cap, greatest(v_limit.max_concurrent - v_live, 0));
    end if;
    v_tokens := null;
    if v_limit.requests_per_minute is not null then
      v_rate := v_limit.requests_per_minute / 60.0;
      v_tokens := least(v_limit.burst::double precision,
                        v_limit.tokens + greatest(0, extract(epoch from v_clock - v_limit.refilled_at)) * v_rate);
      v_cap := least(v_cap, floor(v_tokens)::integer);
      if v_tokens < 1 then
        v_next := least(v_next, v_clock + make_interval(secs => (1 - v_tokens) / v_rate));
      end if;
    end if;
    if v_cap > 0 then
      v_names := v_names || v_limit.provider;
      v_caps := v_caps || v_cap;
      v_tok := v_tok || v_tokens;
    else
      v_blocked := v_blocked || v_limit.provider;
    end if;
  end loop;
  select v_blocked || coalesce(array_agg(l.provider), '{}')
    into v_blocked
    from imagen.provider_limits l
   where (l.max_concurrent is not null or l.requests_per_minute is not null)
     and l.provider <> all(v_names)
     and l.provider <> all(v_blocked);
  if cardinality(v_blocked) > 0 and v_next is null then
    -- Held by another claim, or at max_concurrent: a freed slot announces itself on imagen_jobs;
    -- a short timer covers a claim that held a row and took nothing.
    v_next := v_clock + interval '100 milliseconds';
  end if;

  -- 2. The jobs, in claim order, past the blocked providers. A provider that runs out of capacity
  --    part-way joins them and the walk starts again, so its other jobs are neither taken nor locked.
  loop
    v_rescan := false;
    for v_job in
      select p.id, p.provider
        from imagen.jobs p
       where p.status = 'pending'
         and p.run_at <= now()
         and (p_owner is null or p.owner_user_id = p_owner)
         and p.provider <> all(v_blocked)
         and p.id <> all(v_ids)
       order by p.priority, p.vtime, p.run_at
         for update skip locked
       limit p_n - cardinality(v_ids)
    loop
      v_i := array_position(v_names, v_job.provider);
      if v_i is not null then
        if v_caps[v_i] = 0 then
          continue;
        end if;
        v_caps[v_i] := v_caps[v_i] - 1;
        if v_caps[v_i] = 0 then
          v_blocked := v_blocked || v_job.provider;
          v_rescan := true;
        end if;
      end if;
      v_ids := v_ids || v_job.id;
      v_provs := v_provs || v_job.provider;
    end loop;
    exit when not v_rescan or cardinality(v_ids) >= p_n;
  end loop;

  -- 3. Spend the tokens and take the slots of what was claimed.
  for v_i in 1 .. cardinality(v_names) loop
    select count(*) into v_taken from unnest(v_provs) x where x = v_names[v_i];
    continue when v_taken = 0;
    if v_tok[v_i] is not null then
      update imagen.provider_limits l
         set tokens = greatest(0, v_tok[v_i] - v_taken), refilled_at = v_clock
       where l.provider = v_names[v_i];
    end if;
    insert into imagen.provider_slots (provider, job_id, worker_id, acquired_at)
    select v_names[v_i], x.id, p_worker, v_clock
      from unnest(v_ids, v_provs) as x(id, provider)
     where x.provider = v_names[v_i]
       and exists (select 1 from imagen.provider_limits l
                    where l.provider = v_names[v_i] and l.max_concurrent is not null)
    on conflict on constraint provider_slots_pkey do update
      set worker_id = excluded.worker_id, acquired_at = excluded.acquired_at;
  end loop;

  return query
  with c as (
    update imagen.jobs j
       set status = 'running',
           locked_by = p_worker,
           lease_expires_at = now() + make_interval(secs => p_lease),
           attempts = j.attempts + 1,
           started_at = now()
     where j.id = any(v_ids)
    returning j.id, j.owner_user_id, j.canvas_id, j.node_id, j.provider, j.model, j.prompt, j.spec,
              j.priority, j.run_at, j.attempts, j.max_attempts, j.created_at, j.provider_job_id, j.vtime
  )
  select r.*
    from (select true as claimed, c.*, c.provider = any(v_names) as slot_reserved,
                 null::text[] as blocked, null::timestamptz as next_at
            from c
          union all
          select false, null, null, null, null, null, null, null, null, null, null, null, null, null,
                 null, null, null, v_blocked, v_next) r
   order by r.claimed desc, r.priority, r.vtime, r.run_at;
end
$$;
revoke all on function imagen.claim_within_limits(text, integer, double precision, uuid) from public;
grant execute on function imagen.claim_within_limits(text, integer, double precision, uuid) to service_role;

-- A user's own login (ADR 0008) queues within the documented priority classes, 0-199
-- (imagen_worker.scheduling): on a shared pool no user's job can go ahead of the interactive class.
alter policy jobs_user_insert on imagen.jobs
  with check (
    owner_user_id = (select imagen.current_owner())
    and status = 'pending' and attempts = 0
    and locked_by is null and lease_expires_at is null
    and started_at is null and completed_at is null
    and image_id is null and error is null and cost_usd is null and provider_job_id is null
    and priority between 0 and 199
  );
