-- The queue's statements. Each `-- name:` block is one query, loaded by imagen_worker.sql.q().
-- Job transitions write their job_events rows through the transition trigger (migrations 0003, 0006).

-- name: claim_jobs
-- One statement per cycle: write this worker's finished jobs as done (with their images rows),
-- then claim up to n pending jobs. Finished jobs ride on the next claim, so a busy worker commits
-- once per cycle rather than twice; the flusher sends n = 0 when no claim is coming.
-- $1 worker id, $2 how many to claim, $3 lease seconds, $4 owner (null: any owner),
-- $5 finished job ids, $6 their costs (null where unknown), $7 their image ids (null: none),
-- $8 jsonb images rows (one per job at most; owner taken from the job).
-- Finished jobs this worker no longer holds (cancelled, reaped) are skipped, and so are their
-- images. Claims pick pending jobs in (priority, vtime, run_at) order (fair share across owners, ADR 0007),
-- skipping rows others hold.
-- Returns the claimed jobs (claimed = true) and the ids written as done (claimed = false).
-- It commits with the session's synchronous_commit, so a written `done` is durable when the worker
-- learns of it; a cycle with nothing to write is claim_next, committed asynchronously (ADR 0005).
with done as (
  update imagen.jobs j
     set status = 'done',
         completed_at = now(),
         lease_expires_at = null,
         error = null,
         cost_usd = r.cost_usd,
         image_id = r.image_id
    from unnest($5::uuid[], $6::numeric[], $7::uuid[]) as r(id, cost_usd, image_id)
   where j.id = r.id
     and j.status = 'running'
     and j.locked_by = $1
  returning j.id, j.owner_user_id
),
-- The images of the jobs just written (the foreign key from jobs.image_id is checked at the end
-- of the statement, when these rows exist).
img as (
  insert into imagen.images (id, owner_user_id, job_id, bucket, path, thumb_path, content_type,
                             width, height, bytes, sha256, provider, model, seed)
  select i.id, d.owner_user_id, i.job_id, i.bucket, i.path, i.thumb_path, i.content_type,
         i.width, i.height, i.bytes, i.sha256, i.provider, i.model, i.seed
    from jsonb_to_recordset($8::jsonb) as i(id uuid, job_id uuid, bucket text, path text,
                                            thumb_path text, content_type text, width integer,
                                            height integer, bytes bigint, sha256 text,
                                            provider text, model text, seed bigint)
    join done d on d.id = i.job_id
),
claimed as (
  update imagen.jobs j
     set status = 'running',
         locked_by = $1,
         lease_expires_at = now() + make_interval(secs => $3),
         attempts = j.attempts + 1,
         started_at = now()
   where j.id in (
           select p.id
             from imagen.jobs p
            where p.status = 'pending'
              and p.run_at <= now()
              and ($4::uuid is null or p.owner_user_id = $4::uuid)
            order by p.priority, p.vtime, p.run_at
            for update skip locked
            limit $2)
  returning j.id, j.owner_user_id, j.canvas_id, j.node_id, j.provider, j.model, j.prompt, j.spec,
            j.priority, j.run_at, j.attempts, j.max_attempts, j.created_at, j.provider_job_id, j.vtime
)
-- UPDATE ... RETURNING has no order: sort, so a prefetching worker starts jobs in claim order.
select *
  from (select true as claimed, c.* from claimed c
        union all
        select false, d.id, null, null, null, null, null, null, null, null, null, null, null, null, null, null
          from done d) r
 order by r.claimed desc, r.priority, r.vtime, r.run_at

-- name: claim_next
-- A cycle with no finished job to carry: claim up to n pending jobs, committed asynchronously
-- (ADR 0005: a claim lost to a Postgres crash returns its job to pending, like an expired lease).
-- $1 worker id, $2 how many, $3 lease seconds, $4 owner (null: any owner), $5 only jobs of a
-- priority up to this (32767: any; a full worker's claim of one job ahead of those it prefetched,
-- ADR 0007). The same rows, in the same order, as claim_jobs' claimed rows: its `claimed` part, kept
-- in step with it by hand (a lean statement of its own saves ~0.1 ms on the pickup path, ADR 0005).
with claimed as (
  update imagen.jobs j
     set status = 'running',
         locked_by = $1,
         lease_expires_at = now() + make_interval(secs => $3),
         attempts = j.attempts + 1,
         started_at = now()
   where (select set_config('synchronous_commit', 'off', true)) is not null
     and j.id in (
           select p.id
             from imagen.jobs p
            where p.status = 'pending'
              and p.run_at <= now()
              and ($4::uuid is null or p.owner_user_id = $4::uuid)
              and p.priority <= $5::smallint
            order by p.priority, p.vtime, p.run_at
            for update skip locked
            limit $2)
  returning j.id, j.owner_user_id, j.canvas_id, j.node_id, j.provider, j.model, j.prompt, j.spec,
            j.priority, j.run_at, j.attempts, j.max_attempts, j.created_at, j.provider_job_id, j.vtime
)
select true as claimed, c.*
  from claimed c
 order by c.priority, c.vtime, c.run_at

-- name: next_run_at
-- When the earliest pending job becomes due (null: none pending). $1 owner or null, $2 providers to
-- leave out (limited ones without capacity now: their jobs wait for capacity, not for run_at).
select min(run_at)
  from imagen.jobs
 where status = 'pending'
   and ($1::uuid is null or owner_user_id = $1::uuid)
   and provider <> all($2::text[])

-- name: limits_exist
-- Whether any provider has a limit (the worker then claims through claim_within_limits, ADR 0007).
select exists (select 1 from imagen.provider_limits
                where max_concurrent is not null or requests_per_minute is not null)

-- name: claim_within_limits
-- A claim that takes a limited provider's job only with a free slot and a token, reserving them
-- (migration 0010). $1 worker id, $2 how many, $3 lease seconds, $4 owner or null. The claimed rows,
-- then one row (claimed = false) with the providers it could not start and their next token's time.
select * from imagen.claim_within_limits($1, $2, $3, $4)

-- name: renew_leases
-- Heartbeat: extend the leases this worker still holds; ids missing from the result were lost
-- (cancelled, or reaped after an expiry) and their handlers must stop.
update imagen.jobs
   set lease_expires_at = now() + make_interval(secs => $3)
 where id = any($2::uuid[])
   and status = 'running'
   and locked_by = $1
returning id

-- name: retake_jobs
-- Heartbeat, for the jobs renew_leases did not keep: take back those that are simply pending again
-- (a Postgres crash undid their asynchronous claim, ADR 0005; or a long outage let the reaper
-- return them) while this worker's handler is still at them. A job another worker holds, or one
-- cancelled, failed or done meanwhile, is not taken: its handler must stop.
-- $1 worker id, $2 job ids, $3 lease seconds.
update imagen.jobs j
   set status = 'running',
       locked_by = $1,
       lease_expires_at = now() + make_interval(secs => $3),
       attempts = j.attempts + 1,
       started_at = now()
 where j.id in (
         select p.id
           from imagen.jobs p
          where p.id = any($2::uuid[])
            and p.status = 'pending'
            for update skip locked)
returning j.id

-- name: reap_expired_leases
-- Any worker returns jobs whose lease expired to the queue (backoff in run_at), or fails them
-- when their attempts are spent. $1 batch size, $2 backoff base seconds, $3 backoff cap seconds.
with expired as (
  select id
    from imagen.jobs
   where status = 'running'
     and lease_expires_at < now()
   order by lease_expires_at
   for update skip locked
   limit $1
)
update imagen.jobs j
   set status = case when j.attempts >= j.max_attempts then 'failed' else 'pending' end,
       run_at = case when j.attempts >= j.max_attempts then j.run_at
                     else now() + make_interval(
                       secs => least($3::float8, $2::float8 * power(2, greatest(j.attempts - 1, 0)))
                               * (0.75 + random() * 0.5))
                end,
       completed_at = case when j.attempts >= j.max_attempts then now() end,
       error = format('worker %s stopped renewing its lease (attempt %s of %s)%s',
                      j.locked_by, j.attempts, j.max_attempts,
                      case when j.attempts >= j.max_attempts then '; no attempts left' else '; retrying' end),
       locked_by = case when j.attempts >= j.max_attempts then j.locked_by end,
       lease_expires_at = null
  from expired e
 where j.id = e.id
returning j.id, j.status, j.attempts, j.max_attempts

-- name: fail_job
-- A handler error: back to pending with run_at pushed out ($4 retryable, $5 delay seconds) while
-- attempts remain, else failed. $3 is the caller-facing message. Returns the new status.
update imagen.jobs
   set status = case when $4 and attempts < max_attempts then 'pending' else 'failed' end,
       run_at = case when $4 and attempts < max_attempts
                     then now() + make_interval(secs => $5) else run_at end,
       completed_at = case when $4 and attempts < max_attempts then null else now() end,
       locked_by = case when $4 and attempts < max_attempts then null else locked_by end,
       lease_expires_at = null,
       error = $3
 where id = $2
   and status = 'running'
   and locked_by = $1
returning status, attempts, max_attempts

-- name: release_jobs
-- Shutdown: hand unfinished jobs back to the queue at once. The interrupted attempt is not counted.
update imagen.jobs
   set status = 'pending',
       run_at = now(),
       attempts = greatest(attempts - 1, 0),
       locked_by = null,
       lease_expires_at = null
 where id = any($2::uuid[])
   and status = 'running'
   and locked_by = $1
returning id

-- name: insert_event
-- $1 job id, $2 kind, $3 payload, $4 delivery id (null, or a webhook's id: a repeat is ignored).
-- The owner is the job's. Returns the event id, or nothing for a repeated delivery.
insert into imagen.job_events (job_id, owner_user_id, kind, payload, delivery_id)
select j.id, j.owner_user_id, $2, $3, $4
  from imagen.jobs j
 where j.id = $1
on conflict (delivery_id) where delivery_id is not null do nothing
returning id

-- name: set_provider_job_id
update imagen.jobs
   set provider_job_id = $3
 where id = $2
   and status = 'running'
   and locked_by = $1
returning id

-- name: insert_job
insert into imagen.jobs (owner_user_id, provider, model, prompt, spec, priority, max_attempts,
                         run_at, canvas_id, node_id, idempotency_key)
values ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now()), $9, $10, $11)
on conflict (owner_user_id, idempotency_key) where idempotency_key is not null do nothing
returning id

-- name: job_by_idempotency_key
select id from imagen.jobs where owner_user_id = $1 and idempotency_key = $2

-- name: cancel_job
select imagen.cancel_job($1)

-- name: owned_image
select bucket, path, content_type from imagen.images where id = $1 and owner_user_id = $2
