-- The imagen schema: jobs, images, job events and the durable canvas.

create schema if not exists imagen;

-- The database's own guard against image data at rest: no data: URL, no base64 image
-- signature, nothing over the field's size. Raises a message that names the field and the fix.
create function imagen.check_no_inline_image(value text, field text, max_chars integer)
returns boolean
language plpgsql immutable parallel safe
as $$
begin
  if value is null then
    return true;
  end if;
  if length(value) > max_chars then
    raise exception using
      errcode = 'check_violation',
      message = format('%s is %s characters long; the limit is %s', field, length(value), max_chars),
      hint = 'Keep large data out of this column: store images in storage and reference them by image id.';
  end if;
  if value ~* 'data:image/'
     or value ~ '(iVBORw0KGgo|/9j/4AAQ|R0lGODlh|R0lGODdh|UklGR[A-Za-z0-9+/]{2}AABXRUJQ)' then
    raise exception using
      errcode = 'check_violation',
      message = format('%s holds inline image data (a data: URL or base64 image bytes)', field),
      hint = 'Images are never stored in the database: upload the bytes to storage and pass the image id (for example spec.previous_image_id).';
  end if;
  return true;
end
$$;

-- The same test as a plain SQL expression, inlined into CHECK constraints on hot tables; the
-- raising function runs only when it fails, to say which field and why.
create function imagen.is_free_of_inline_image(value text, max_chars integer)
returns boolean
language sql immutable parallel safe
as $$
  select value is null
      or (length(value) <= max_chars
          and value !~* 'data:image/'
          and value !~ '(iVBORw0KGgo|/9j/4AAQ|R0lGODlh|R0lGODdh|UklGR[A-Za-z0-9+/]{2}AABXRUJQ)')
$$;

create table imagen.canvases (
  id              uuid primary key default gen_random_uuid(),
  owner_user_id   uuid not null,
  name            text not null default 'Untitled canvas'
                  check (length(name) between 1 and 200),
  viewport        jsonb not null default '{}'::jsonb
                  check (imagen.check_no_inline_image(viewport::text, 'imagen.canvases.viewport', 4096)),
  created_at      timestamptz not null default now(),
  updated_at      timestamptz not null default now(),
  unique (id, owner_user_id)
);
create index canvases_owner_recent_idx on imagen.canvases (owner_user_id, updated_at desc);

create table imagen.canvas_nodes (
  canvas_id       uuid not null,
  id              text not null check (length(id) between 1 and 200),
  owner_user_id   uuid not null,
  type            text not null check (type ~ '^[a-z][a-z0-9_-]{0,63}$'),
  position_x      double precision not null default 0,
  position_y      double precision not null default 0,
  data            jsonb not null default '{}'::jsonb
                  check (imagen.check_no_inline_image(data::text, 'imagen.canvas_nodes.data', 65536)),
  created_at      timestamptz not null default now(),
  updated_at      timestamptz not null default now(),
  primary key (canvas_id, id),
  foreign key (canvas_id, owner_user_id)
    references imagen.canvases (id, owner_user_id) on delete cascade
);

create table imagen.canvas_edges (
  canvas_id       uuid not null,
  id              text not null check (length(id) between 1 and 200),
  owner_user_id   uuid not null,
  source          text not null,
  target          text not null,
  source_handle   text,
  target_handle   text,
  created_at      timestamptz not null default now(),
  primary key (canvas_id, id),
  foreign key (canvas_id, owner_user_id)
    references imagen.canvases (id, owner_user_id) on delete cascade,
  foreign key (canvas_id, source) references imagen.canvas_nodes (canvas_id, id) on delete cascade,
  foreign key (canvas_id, target) references imagen.canvas_nodes (canvas_id, id) on delete cascade
);

create table imagen.jobs (
  id                uuid primary key default gen_random_uuid(),
  owner_user_id     uuid not null,
  canvas_id         uuid,
  node_id           text,
  provider          text not null default 'local' check (provider ~ '^[a-z][a-z0-9_-]{0,39}$'),
  model             text not null default 'local-v1' check (length(model) between 1 and 200),
  prompt            text not null check (length(btrim(prompt)) > 0),
  spec              jsonb not null default '{}'::jsonb check (jsonb_typeof(spec) = 'object'),
  status            text not null default 'pending'
                    check (status in ('pending', 'running', 'done', 'failed', 'cancelled')),
  priority          smallint not null default 0,
  attempts          integer not null default 0 check (attempts >= 0),
  max_attempts      integer not null default 3 check (max_attempts between 1 and 100),
  run_at            timestamptz not null default now(),
  locked_by         text,
  lease_expires_at  timestamptz,
  provider_job_id   text,
  idempotency_key   text check (length(idempotency_key) between 1 and 200),
  created_at        timestamptz not null default now(),
  started_at        timestamptz,
  completed_at      timestamptz,
  image_id          uuid,
  error             text,
  cost_usd          numeric(12, 6) check (cost_usd >= 0),
  foreign key (canvas_id, owner_user_id)
    references imagen.canvases (id, owner_user_id) on delete set null (canvas_id),
  constraint jobs_running_has_lease
    check (status <> 'running' or (locked_by is not null and lease_expires_at is not null))
);

create unique index jobs_idempotency_key_idx on imagen.jobs (owner_user_id, idempotency_key)
  where idempotency_key is not null;

-- The guard on the columns a caller writes. A trigger rather than CHECK constraints: Postgres
-- re-evaluates every CHECK on every UPDATE, and the queue updates each job several times without
-- touching these columns; `UPDATE OF` fires only when they are written.
create function imagen.jobs_guard_inline_images() returns trigger
language plpgsql
as $$
begin
  if tg_op = 'INSERT' or new.prompt is distinct from old.prompt then
    perform imagen.check_no_inline_image(new.prompt, 'imagen.jobs.prompt', 32000);
  end if;
  if tg_op = 'INSERT' or new.spec is distinct from old.spec then
    perform imagen.check_no_inline_image(new.spec::text, 'imagen.jobs.spec', 65536);
  end if;
  if new.error is not null and (tg_op = 'INSERT' or new.error is distinct from old.error) then
    perform imagen.check_no_inline_image(new.error, 'imagen.jobs.error', 4000);
  end if;
  return new;
end
$$;

create trigger jobs_guard_inline_images
  before insert or update of prompt, spec, error on imagen.jobs
  for each row execute function imagen.jobs_guard_inline_images();

-- The claim query's index: only pending rows, in claim order.
create index jobs_pending_idx on imagen.jobs (priority, run_at) where status = 'pending';
-- The reaper's index: running rows by lease expiry.
create index jobs_running_lease_idx on imagen.jobs (lease_expires_at) where status = 'running';
create index jobs_owner_recent_idx on imagen.jobs (owner_user_id, created_at desc);
-- Webhook deliveries name the provider's job id.
create index jobs_provider_job_idx on imagen.jobs (provider, provider_job_id) where provider_job_id is not null;

create table imagen.images (
  id              uuid primary key default gen_random_uuid(),
  owner_user_id   uuid not null,
  job_id          uuid unique,
  bucket          text not null check (length(bucket) between 1 and 100),
  path            text not null check (length(path) between 1 and 1024),
  thumb_path      text check (length(thumb_path) between 1 and 1024),
  content_type    text not null check (content_type ~ '^image/[a-z0-9.+-]+$'),
  width           integer not null check (width > 0),
  height          integer not null check (height > 0),
  bytes           bigint not null check (bytes > 0),
  sha256          text not null check (sha256 ~ '^[0-9a-f]{64}$'),
  provider        text,
  model           text,
  seed            bigint,
  created_at      timestamptz not null default now(),
  unique (bucket, path),
  unique (id, owner_user_id),
  -- A plain key, not (job_id, owner_user_id): a second unique index on jobs would be maintained on
  -- every status change. The worker takes an image's owner from its job row (claim_jobs).
  foreign key (job_id) references imagen.jobs (id) on delete set null
);
create index images_owner_recent_idx on imagen.images (owner_user_id, created_at desc);

alter table imagen.jobs
  add foreign key (image_id, owner_user_id)
    references imagen.images (id, owner_user_id) on delete set null (image_id);

create table imagen.job_events (
  id              bigserial primary key,
  job_id          uuid not null,
  owner_user_id   uuid not null,
  ts              timestamptz not null default now(),
  kind            text not null check (kind in ('state', 'progress', 'log', 'error', 'webhook')),
  payload         jsonb not null default '{}'::jsonb
                  check (jsonb_typeof(payload) = 'object')
                  check (imagen.is_free_of_inline_image(payload::text, 8192)
                         or imagen.check_no_inline_image(payload::text, 'imagen.job_events.payload', 8192)),
  delivery_id     text check (length(delivery_id) between 1 and 300),
  -- owner_user_id is copied from the job by whoever writes the row (the transition trigger, the
  -- insert_event query), never taken from a caller.
  foreign key (job_id) references imagen.jobs (id) on delete cascade
);
create index job_events_job_idx on imagen.job_events (job_id, id);
create index job_events_owner_idx on imagen.job_events (owner_user_id, id);
create unique index job_events_delivery_idx on imagen.job_events (delivery_id) where delivery_id is not null;

-- Where the database is a Supabase project, owners are its auth users.
do $$
begin
  if to_regclass('auth.users') is not null then
    alter table imagen.jobs add foreign key (owner_user_id) references auth.users (id) on delete cascade;
    alter table imagen.images add foreign key (owner_user_id) references auth.users (id) on delete cascade;
    alter table imagen.canvases add foreign key (owner_user_id) references auth.users (id) on delete cascade;
  end if;
end
$$;
