-- The three PostgreSQL roles of bajas (docs/DEPLOY.md, "The panel database's roles").
-- Run once in the panel database by its owner or a superuser, before `bajas migrate`:
--   psql "$PANEL_ADMIN_URL" -f deploy/roles.sql
-- then give each role its password: ALTER ROLE bajas_worker PASSWORD '…';
do $$
begin
    -- bajas_migrate: `bajas migrate` and the operator commands that write
    -- (`unlock`, `set-password`); owns bajas' schema.
    if not exists (select from pg_roles where rolname = 'bajas_migrate') then
        create role bajas_migrate login;
    end if;
    -- bajas_worker: the central workers (and a node worker that is given DATABASE_URL).
    if not exists (select from pg_roles where rolname = 'bajas_worker') then
        create role bajas_worker login;
    end if;
    -- bajas_api: the HTTP API and the customer panel.
    if not exists (select from pg_roles where rolname = 'bajas_api') then
        create role bajas_api login;
    end if;
    execute format('grant connect on database %I to bajas_migrate, bajas_worker, bajas_api',
                   current_database());
    -- the schema `bajas`
    execute format('grant create on database %I to bajas_migrate', current_database());
end
$$;
-- The panel's tables, when `bajas migrate` creates them (a new panel database).
grant create on schema public to bajas_migrate;
-- On a panel database whose tables exist, `bajas migrate` adds `services.server` and
-- creates `service_resources`: make bajas_migrate a member of the tables' owner, e.g.
--   grant panel_owner to bajas_migrate;
