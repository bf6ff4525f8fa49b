-- Users with login roles of their own (imagen_worker.users; migrations 0009, 0011).

-- name: add_user
select imagen.add_user($1, $2, $3, $4, $5, $6, $7)

-- name: get_user
select owner_user_id, hub_name, db_role, auth_user_id, max_pending, max_cost_per_day
  from imagen.users where hub_name = $1

-- name: list_users
select owner_user_id, hub_name, db_role, auth_user_id, max_pending, max_cost_per_day
  from imagen.users order by hub_name

-- name: remove_user
select imagen.remove_user($1)

-- name: set_user_password
select imagen.set_user_password($1, $2)

-- name: current_owner
select imagen.current_owner()

-- name: hub_name_of
select hub_name from imagen.users where owner_user_id = $1

-- name: clear_quotas
update imagen.users set max_pending = null, max_cost_per_day = null where hub_name = $1

-- name: current_hub_name
select imagen.current_hub_name()

-- name: set_pool_login
select imagen.set_pool_login($1)
