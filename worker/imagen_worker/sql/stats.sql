-- The usage report of `imagen jobs --stats` (imagen_worker.pricing.usage_report).
-- Every query takes $1 since (jobs created at or after it; null: all jobs) and $2 owner (null: all owners).
-- Run time is started_at → completed_at of done jobs; queue wait is created_at → started_at of jobs a
-- worker has claimed (started_at is the latest attempt's start, so a retried job's wait includes its
-- earlier attempts and backoff).

-- name: status_counts
select status, count(*) as jobs
  from imagen.jobs
 where ($1::timestamptz is null or created_at >= $1::timestamptz)
   and ($2::uuid is null or owner_user_id = $2::uuid)
 group by status

-- name: durations
select percentile_cont(0.5) within group (order by extract(epoch from completed_at - started_at))
         filter (where status = 'done' and completed_at is not null and started_at is not null) as run_p50,
       percentile_cont(0.95) within group (order by extract(epoch from completed_at - started_at))
         filter (where status = 'done' and completed_at is not null and started_at is not null) as run_p95,
       count(*) filter (where status = 'done' and completed_at is not null and started_at is not null) as run_n,
       percentile_cont(0.5) within group (order by extract(epoch from started_at - created_at))
         filter (where started_at is not null) as wait_p50,
       percentile_cont(0.95) within group (order by extract(epoch from started_at - created_at))
         filter (where started_at is not null) as wait_p95,
       count(*) filter (where started_at is not null) as wait_n
  from imagen.jobs
 where ($1::timestamptz is null or created_at >= $1::timestamptz)
   and ($2::uuid is null or owner_user_id = $2::uuid)

-- name: by_model
-- Cost is what the jobs recorded (imagen.jobs.cost_usd); unpriced_done counts done jobs without one.
select provider,
       model,
       count(*) as jobs,
       count(*) filter (where status = 'done') as done,
       count(*) filter (where status = 'failed') as failed,
       percentile_cont(0.5) within group (order by extract(epoch from completed_at - started_at))
         filter (where status = 'done' and completed_at is not null and started_at is not null) as run_p50,
       percentile_cont(0.95) within group (order by extract(epoch from completed_at - started_at))
         filter (where status = 'done' and completed_at is not null and started_at is not null) as run_p95,
       coalesce(sum(cost_usd), 0) as cost_usd,
       count(*) filter (where status = 'done' and cost_usd is null) as unpriced_done
  from imagen.jobs
 where ($1::timestamptz is null or created_at >= $1::timestamptz)
   and ($2::uuid is null or owner_user_id = $2::uuid)
 group by provider, model
 order by coalesce(sum(cost_usd), 0) desc, provider, model
