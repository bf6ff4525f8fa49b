-- The service layer's statements (imagen_worker.service). Each runs on behalf of one owner, inside a
-- transaction that has set role `authenticated` and that owner's claims, so row-level security
-- (migration 0004) confines it to the owner's rows even where a filter below were wrong; the owner
-- filters are there for the indexes.

-- name: create_job
-- Queue one job unless the owner is at the pending cap; with an idempotency key, a repeat returns
-- the first job instead. $1 owner, $2 provider, $3 model, $4 prompt, $5 spec, $6 priority,
-- $7 max_attempts, $8 canvas_id, $9 node_id, $10 idempotency key, $11 group_id, $12 the pending cap,
-- $13 seconds after which a silent worker is no longer live.
-- Returns one row: `job` (the new or existing row as jsonb; null when capped), `pending` (the
-- owner's pending jobs before this one, counted up to the cap), `live_workers` (live workers that
-- can run the provider for this owner), `created` (false for an idempotent repeat).
with existing as (
  select j.*
    from imagen.jobs j
   where $10::text is not null
     and j.owner_user_id = $1
     and j.idempotency_key = $10::text
),
pending as (
  select count(*) as n
    from (select 1 from imagen.jobs p
           where p.owner_user_id = $1 and p.status = 'pending'
           limit $12) p
),
ins as (
  insert into imagen.jobs (owner_user_id, provider, model, prompt, spec, priority, max_attempts,
                           canvas_id, node_id, idempotency_key, group_id)
  select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11
   where not exists (select 1 from existing)
     and (select n from pending) < $12
  on conflict (owner_user_id, idempotency_key) where idempotency_key is not null do nothing
  returning *
),
live as (
  select count(*) as n
    from imagen.workers w
   where w.last_seen_at >= now() - make_interval(secs => $13)
     and $2 = any(w.providers)
     and (w.scope = 'all' or w.owner_user_id = $1)
)
select coalesce((select to_jsonb(i) from ins i), (select to_jsonb(e) from existing e)) as job,
       (select n from pending) as pending,
       (select n from live) as live_workers,
       exists (select 1 from ins) as created

-- name: announce_pending
-- A `pending` state event for each of these jobs just queued (migration 0012; the caller's own only).
-- $1 job ids, in the order asked. Returns the number of events written.
select imagen.announce_pending($1::uuid[])

-- name: report_waiting
select imagen.report_waiting($1, $2)

-- name: jobs_page
-- One page of the owner's jobs, newest first, with each done job's image and each running job's
-- latest progress. $1 owner, $2 status, $3 canvas_id, $4 node_id, $5 provider, $6 group_id,
-- $7/$8 the keyset cursor (created_at, id of the last row of the previous page; null: first page),
-- $9 limit, $10 job id (null: any).
select to_jsonb(j) as job,
       to_jsonb(i) as image,
       (select (pe.payload ->> 'progress')::float8
          from imagen.job_events pe
         where j.status = 'running' and pe.job_id = j.id and pe.kind = 'progress'
         order by pe.id desc
         limit 1) as progress
  from imagen.jobs j
  left join imagen.images i on i.id = j.image_id
 where j.owner_user_id = $1
   and ($10::uuid is null or j.id = $10::uuid)
   and ($2::text is null or j.status = $2::text)
   and ($3::uuid is null or j.canvas_id = $3::uuid)
   and ($4::text is null or j.node_id = $4::text)
   and ($5::text is null or j.provider = $5::text)
   and ($6::uuid is null or j.group_id = $6::uuid)
   and ($7::timestamptz is null or (j.created_at, j.id) < ($7::timestamptz, $8::uuid))
 order by j.created_at desc, j.id desc
 limit $9

-- name: cancel_job
select imagen.cancel_job($1)

-- name: job_events
-- A job's whole trail, oldest first (the owner's jobs only, by RLS).
select e.id, e.job_id, e.kind, e.payload, e.ts, j.canvas_id, j.node_id
  from imagen.job_events e
  join imagen.jobs j on j.id = e.job_id
 where e.job_id = $1
 order by e.id

-- name: image
select to_jsonb(i) as image from imagen.images i where i.id = $1

-- name: visible_image
select 1 from imagen.images where id = $1

-- name: live_workers
select id, host, pid, scope, owner_user_id, providers, concurrency, started_at, last_seen_at
  from imagen.workers
 where last_seen_at >= now() - make_interval(secs => $1)
 order by started_at, id

-- name: canvases
select c.id, c.name, c.version, c.created_at, c.updated_at,
       (select count(*) from imagen.canvas_nodes n where n.canvas_id = c.id) as node_count
  from imagen.canvases c
 where c.owner_user_id = $1
 order by c.updated_at desc, c.id
 limit $2

-- name: canvas
select to_jsonb(c) as canvas,
       coalesce((select jsonb_agg(jsonb_build_object('id', n.id, 'type', n.type, 'position_x', n.position_x,
                                                     'position_y', n.position_y, 'data', n.data)
                                  order by n.created_at, n.id)
                   from imagen.canvas_nodes n where n.canvas_id = c.id), '[]'::jsonb) as nodes,
       coalesce((select jsonb_agg(jsonb_build_object('id', e.id, 'source', e.source, 'target', e.target,
                                                     'source_handle', e.source_handle,
                                                     'target_handle', e.target_handle)
                                  order by e.created_at, e.id)
                   from imagen.canvas_edges e where e.canvas_id = c.id), '[]'::jsonb) as edges
  from imagen.canvases c
 where c.id = $1

-- name: lock_canvas
select version from imagen.canvases where id = $1 for update

-- name: insert_canvas
-- $1 id, $2 owner, $3 name, $4 viewport. A canvas someone else created meanwhile wins: null.
insert into imagen.canvases (id, owner_user_id, name, viewport)
values ($1, $2, coalesce($3, 'Untitled canvas'), coalesce($4, '{}'::jsonb))
on conflict (id) do nothing
returning version, created_at, updated_at

-- name: update_canvas
-- $1 id, $2 name (null: keep), $3 viewport (null: keep).
update imagen.canvases
   set name = coalesce($2, name),
       viewport = coalesce($3, viewport),
       version = version + 1,
       updated_at = now()
 where id = $1
returning version, name, viewport, created_at, updated_at

-- name: replace_canvas_graph
-- The canvas's nodes and edges become exactly these (one statement: edges dropped, nodes upserted
-- or deleted, edges inserted). $1 canvas, $2 owner, $3 nodes jsonb array, $4 edges jsonb array.
with drop_edges as (
  delete from imagen.canvas_edges where canvas_id = $1
),
wanted as (
  select n.id, n.type, n.position_x, n.position_y, coalesce(n.data, '{}'::jsonb) as data
    from jsonb_to_recordset($3::jsonb) as n(id text, type text, position_x float8, position_y float8, data jsonb)
),
upserted as (
  insert into imagen.canvas_nodes (canvas_id, id, owner_user_id, type, position_x, position_y, data)
  select $1, w.id, $2, w.type, w.position_x, w.position_y, w.data from wanted w
  on conflict (canvas_id, id) do update
     set type = excluded.type, position_x = excluded.position_x, position_y = excluded.position_y,
         data = excluded.data, updated_at = now()
   where (canvas_nodes.type, canvas_nodes.position_x, canvas_nodes.position_y, canvas_nodes.data)
         is distinct from (excluded.type, excluded.position_x, excluded.position_y, excluded.data)
  returning 1
),
removed as (
  delete from imagen.canvas_nodes n
   where n.canvas_id = $1 and not exists (select 1 from wanted w where w.id = n.id)
  returning 1
)
select (select count(*) from upserted) as upserted, (select count(*) from removed) as removed

-- name: insert_canvas_edges
insert into imagen.canvas_edges (canvas_id, id, owner_user_id, source, target, source_handle, target_handle)
select $1, e.id, $2, e.source, e.target, e.source_handle, e.target_handle
  from jsonb_to_recordset($3::jsonb) as e(id text, source text, target text, source_handle text, target_handle text)

-- name: delete_canvas
delete from imagen.canvases where id = $1 returning id

-- name: events_after
-- The stream of the owner's events after a cursor (docs/adr/0006-event-stream.md): every event
-- visible now that the cursor has not seen, in id order, and the snapshot taken by this statement.
-- A cursor has seen every event visible in snapshot $1, and, for each pair of $2 (snapshots) and
-- $3 (ids), the events visible in that snapshot up to that id. $4 owners (null: every owner visible
-- to the caller), $5 the most rows to return, $6 the snapshot the result must be visible in (null:
-- now; a resume stops where the live stream it joins starts).
with ev as (
  select e.id, e.job_id, e.owner_user_id, e.kind, e.payload, e.ts, j.canvas_id, j.node_id
    from imagen.job_events e
    join imagen.jobs j on j.id = e.job_id
   where e.xid >= pg_snapshot_xmin($1::text::pg_snapshot)
     and not pg_visible_in_snapshot(e.xid, $1::text::pg_snapshot)
     and not exists (select 1
                       from unnest($2::text[], $3::bigint[]) as c(snap, last_id)
                      where e.id <= c.last_id and pg_visible_in_snapshot(e.xid, c.snap::pg_snapshot))
     and ($6::text is null or pg_visible_in_snapshot(e.xid, $6::text::pg_snapshot))
     and e.kind in ('state', 'progress', 'waiting')
     and ($4::uuid[] is null or e.owner_user_id = any($4::uuid[]))
   order by e.id
   limit $5
)
select pg_current_snapshot()::text as snapshot,
       coalesce((select jsonb_agg(to_jsonb(ev) order by ev.id) from ev), '[]'::jsonb) as events

-- name: current_snapshot
select pg_current_snapshot()::text

-- name: create_jobs
-- Queue many jobs at once unless they would take the owner past the pending cap (then none).
-- $1 owner, $2 jsonb array of job rows (id, provider, model, prompt, spec, priority, max_attempts,
-- canvas_id, node_id, group_id, idempotency_key), $3 the pending cap, $4 the live-worker staleness.
-- A row whose idempotency key the owner already used is not inserted (the caller reads that job).
-- Returns one row: `jobs` (the new rows), `capped` (none inserted: the cap), `pending`,
-- `live_providers` (the providers some live worker can run for this owner).
with pending as (
  select count(*) as n
    from (select 1 from imagen.jobs p
           where p.owner_user_id = $1 and p.status = 'pending'
           limit $3) p
),
wanted as (
  select r.id, r.provider, r.model, r.prompt, r.spec, r.priority, r.max_attempts, r.canvas_id, r.node_id, r.group_id,
         r.idempotency_key
    from jsonb_to_recordset($2::jsonb)
         as r(id uuid, provider text, model text, prompt text, spec jsonb, priority smallint, max_attempts integer,
              canvas_id uuid, node_id text, group_id uuid, idempotency_key text)
),
capped as (
  select (select n from pending) + (select count(*) from wanted) > $3 as yes
),
ins as (
  insert into imagen.jobs (id, owner_user_id, provider, model, prompt, spec, priority, max_attempts,
                           canvas_id, node_id, group_id, idempotency_key)
  select w.id, $1, w.provider, w.model, w.prompt, w.spec, w.priority, w.max_attempts, w.canvas_id, w.node_id,
         w.group_id, w.idempotency_key
    from wanted w
   where not (select yes from capped)
  on conflict (owner_user_id, idempotency_key) where idempotency_key is not null do nothing
  returning *
)
select coalesce((select jsonb_agg(to_jsonb(i)) from ins i), '[]'::jsonb) as jobs,
       (select yes from capped) as capped,
       (select n from pending) as pending,
       (select coalesce(array_agg(distinct p), '{}')
          from imagen.workers w, unnest(w.providers) p
         where w.last_seen_at >= now() - make_interval(secs => $4)
           and (w.scope = 'all' or w.owner_user_id = $1)) as live_providers

-- name: jobs_by_keys
-- The owner's jobs holding these idempotency keys: `idempotency_key`, `job` (jsonb).
select j.idempotency_key, to_jsonb(j) as job
  from imagen.jobs j
 where j.owner_user_id = $1 and j.idempotency_key = any($2::text[])

-- name: visible_canvas
select 1 from imagen.canvases where id = $1

-- name: refined_image
-- The job an image node shows, for a node that refines from it: its prompt, spec and image (null while
-- not done). The owner's only, by RLS, the image included.
select j.prompt, j.spec, i.id as image_id
  from imagen.jobs j
  left join imagen.images i on i.id = j.image_id
 where j.id = $1

-- name: report_waiting_many
select imagen.report_waiting(id, $2) from unnest($1::uuid[]) as id

-- name: cancel_jobs
-- Cancel the owner's jobs among $1 that are still pending or running; the ids cancelled.
select j.id
  from imagen.jobs j
 where j.id = any($1::uuid[])
   and j.status in ('pending', 'running')
   and imagen.cancel_job(j.id) = 'cancelled'
