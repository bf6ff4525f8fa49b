-- Per-provider concurrency and rate limits that hold across every worker sharing this database
-- (docs/adr/0002-provider-limits.md). A provider without a row, or with both limits null, is unlimited.
--
-- Concurrency: a slot is a provider_slots row naming the job and the worker holding it. A slot is
-- alive only while its job is running under that worker with an unexpired lease, so a worker killed
-- with SIGKILL leaks nothing: its jobs' leases expire (or are reaped, cancelled, finished) and the
-- slots die with them. Dead rows are deleted by the next acquire.
-- Rate: a token bucket per provider (requests_per_minute refill, burst capacity) kept in the row.

create table imagen.provider_limits (
  provider             text primary key check (provider ~ '^[a-z][a-z0-9_-]{0,39}$'),
  max_concurrent       integer check (max_concurrent >= 1),
  requests_per_minute  double precision check (requests_per_minute > 0 and requests_per_minute <= 1000000),
  burst                integer not null default 1 check (burst between 1 and 100000),
  -- Token bucket state: tokens as of refilled_at (refilled lazily on each acquire).
  tokens               double precision not null default 1 check (tokens >= 0),
  refilled_at          timestamptz not null default now(),
  updated_at           timestamptz not null default now()
);

create table imagen.provider_slots (
  provider     text not null references imagen.provider_limits (provider) on delete cascade,
  job_id       uuid not null references imagen.jobs (id) on delete cascade,
  worker_id    text not null check (length(worker_id) between 1 and 300),
  acquired_at  timestamptz not null default now(),
  primary key (provider, job_id)
);
create index provider_slots_job_idx on imagen.provider_slots (job_id);

-- Take a slot and a token for p_job_id, held by p_worker_id (the job's locked_by), or say how long
-- to wait. granted: go ahead; holds_slot: a provider_slots row was written and must be released;
-- wait_seconds: when the next token is due (null while the provider is at max_concurrent: the caller
-- backs off). One call, one round trip; the provider_limits row lock serialises acquires of one
-- provider, and each statement below sees what the previous lock holder committed.
create function imagen.acquire_provider_slot(p_provider text, p_job_id uuid, p_worker_id text)
returns table (granted boolean, holds_slot boolean, wait_seconds double precision)
language plpgsql volatile
set search_path = ''
as $$
declare
  v_limit imagen.provider_limits;
  v_now timestamptz := clock_timestamp();
  v_live integer;
  v_rate double precision;
  v_tokens double precision;
begin
  select * into v_limit
    from imagen.provider_limits l
   where l.provider = p_provider
     for update;
  if not found or (v_limit.max_concurrent is null and v_limit.requests_per_minute is null) then
    return query select true, false, 0::double precision;
    return;
  end if;

  if v_limit.max_concurrent is not null then
    delete from imagen.provider_slots s
     where s.provider = p_provider
       and not exists (
             select 1 from imagen.jobs j
              where j.id = s.job_id
                and j.status = 'running'
                and j.locked_by = s.worker_id
                and j.lease_expires_at > v_now);
    select count(*) into v_live
      from imagen.provider_slots s
     where s.provider = p_provider
       and s.job_id <> p_job_id;
    if v_live >= v_limit.max_concurrent then
      return query select false, false, null::double precision;
      return;
    end if;
  end if;

  if v_limit.requests_per_minute is not null then
    v_rate := v_limit.requests_per_minute / 60.0;
    v_tokens := least(v_limit.burst::double precision,
                      v_limit.tokens + greatest(0, extract(epoch from v_now - v_limit.refilled_at)) * v_rate);
    if v_tokens < 1 then
      update imagen.provider_limits
         set tokens = v_tokens, refilled_at = v_now
       where provider = p_provider;
      return query select false, false, (1 - v_tokens) / v_rate;
      return;
    end if;
    update imagen.provider_limits
       set tokens = v_tokens - 1, refilled_at = v_now
     where provider = p_provider;
  end if;

  if v_limit.max_concurrent is not null then
    insert into imagen.provider_slots (provider, job_id, worker_id, acquired_at)
    values (p_provider, p_job_id, p_worker_id, v_now)
    on conflict (provider, job_id) do update
      set worker_id = excluded.worker_id, acquired_at = excluded.acquired_at;
    return query select true, true, 0::double precision;
    return;
  end if;
  return query select true, false, 0::double precision;
end
$$;

-- Worker-only tables: no policy for authenticated users, so RLS hides them; the worker and the
-- service connection (table owner, service_role) bypass it.
alter table imagen.provider_limits enable row level security;
alter table imagen.provider_slots enable row level security;
grant all on imagen.provider_limits, imagen.provider_slots to service_role;
revoke all on function imagen.acquire_provider_slot(text, uuid, text) from public;
grant execute on function imagen.acquire_provider_slot(text, uuid, text) to service_role;
