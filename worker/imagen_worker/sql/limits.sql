-- Per-provider concurrency and rate limits (migration 0005, imagen_worker.limits).

-- name: load_limits
-- What the limiter caches: providers with at least one limit.
select provider, max_concurrent, requests_per_minute, burst
  from imagen.provider_limits
 where max_concurrent is not null or requests_per_minute is not null

-- name: acquire_slot
-- $1 provider, $2 job id, $3 worker id (the job's locked_by).
select granted, holds_slot, wait_seconds from imagen.acquire_provider_slot($1, $2, $3)

-- name: release_slot
-- $1 provider, $2 job id, $3 worker id. A freed slot is announced on imagen_jobs (the provider's
-- name), so workers whose claims found the provider full claim again (ADR 0007).
with freed as (
  delete from imagen.provider_slots
   where provider = $1 and job_id = $2 and worker_id = $3
  returning provider
)
select pg_notify('imagen_jobs', provider) from freed

-- name: set_limit
-- $1 provider; $2 max_concurrent, $3 requests_per_minute, $4 burst: null leaves the stored value
-- (a new row: no limit, burst 1); $5 clear max_concurrent, $6 clear requests_per_minute.
-- The bucket starts full and never holds more than the burst.
insert into imagen.provider_limits as l (provider, max_concurrent, requests_per_minute, burst, tokens)
values ($1,
        case when $5::boolean then null else $2::integer end,
        case when $6::boolean then null else $3::float8 end,
        coalesce($4::integer, 1),
        coalesce($4::integer, 1))
on conflict (provider) do update
   set max_concurrent = case when $5::boolean then null else coalesce($2::integer, l.max_concurrent) end,
       requests_per_minute = case when $6::boolean then null else coalesce($3::float8, l.requests_per_minute) end,
       burst = coalesce($4::integer, l.burst),
       tokens = least(l.tokens, coalesce($4::integer, l.burst)),
       updated_at = now()
returning provider, max_concurrent, requests_per_minute, burst

-- name: delete_limit
delete from imagen.provider_limits where provider = $1 returning provider

-- name: list_limits
-- Each provider's limits with the slots alive now and the tokens the bucket holds now.
select l.provider,
       l.max_concurrent,
       l.requests_per_minute,
       l.burst,
       (select count(*)
          from imagen.provider_slots s
          join imagen.jobs j on j.id = s.job_id
         where s.provider = l.provider
           and j.status = 'running'
           and j.locked_by = s.worker_id
           and j.lease_expires_at > now()) as in_use,
       case when l.requests_per_minute is null then null
            else least(l.burst::float8,
                       l.tokens + greatest(0, extract(epoch from now() - l.refilled_at)) * l.requests_per_minute / 60.0)
       end as tokens,
       l.updated_at
  from imagen.provider_limits l
 order by l.provider
