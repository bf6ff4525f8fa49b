-- The live-worker registry (imagen.workers, migration 0007): workers register when they start, beat
-- while they run and deregister when they stop; a crashed worker ages out (last_seen_at too old).

-- name: register_worker
-- $1 id, $2 host, $3 pid, $4 scope, $5 owner (null for scope all), $6 providers it can run, $7 concurrency.
insert into imagen.workers (id, host, pid, scope, owner_user_id, providers, concurrency)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict (id) do update
   set providers = excluded.providers, concurrency = excluded.concurrency, last_seen_at = now()

-- name: beat_worker
-- Also re-creates the row if someone pruned it while the database was unreachable. Returns nothing.
insert into imagen.workers (id, host, pid, scope, owner_user_id, providers, concurrency)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict (id) do update set last_seen_at = now()

-- name: deregister_worker
delete from imagen.workers where id = $1

-- name: prune_workers
-- Rows of workers that stopped beating long ago ($1 seconds): a crash left them behind.
delete from imagen.workers where last_seen_at < now() - make_interval(secs => $1)
