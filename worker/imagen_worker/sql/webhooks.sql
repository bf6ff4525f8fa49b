-- Webhook deliveries and the asynchronous providers that wait for them (imagen_worker.webhooks).
-- Payloads are passed as JSON text and cast here, so these queries work on any asyncpg pool,
-- with or without the jsonb codec of imagen_worker.db.init_connection.

-- name: record_delivery
-- One round trip for a verified delivery: find the job the provider's own id belongs to, and log
-- the delivery as a `webhook` event (its insert NOTIFYs imagen_job_events, waking the worker).
-- $1 provider, $2 provider job id, $3 payload (JSON text), $4 delivery id,
-- $5 the job the delivery must belong to (null: any job of that provider job id).
-- job_id null: no such job. event_id null: the delivery id was recorded before (a duplicate).
with job as (
  select id, owner_user_id
    from imagen.jobs
   where provider = $1
     and provider_job_id = $2
     and ($5::uuid is null or id = $5::uuid)
   order by created_at desc
   limit 1
), ins as (
  insert into imagen.job_events (job_id, owner_user_id, kind, payload, delivery_id)
  select id, owner_user_id, 'webhook', $3::text::jsonb, $4
    from job
  on conflict (delivery_id) where delivery_id is not null do nothing
  returning id
)
select (select id from job) as job_id, (select id from ins) as event_id

-- name: latest_webhook
-- The newest webhook delivery recorded for one provider job of one job, as JSON text.
-- $1 job id, $2 provider job id.
select payload::text
  from imagen.job_events
 where job_id = $1
   and kind = 'webhook'
   and payload ->> 'provider_job_id' = $2
 order by id desc
 limit 1
