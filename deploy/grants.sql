-- What the worker and the API may do in the panel database, and nothing more
-- (docs/DEPLOY.md, "The panel database's roles"). Run by bajas_migrate after every
-- `bajas migrate` (it is idempotent):
--   psql "$MIGRATE_DATABASE_URL" -f deploy/grants.sql
-- tests/test_grants.py runs the worker and the API on these grants alone.

grant usage on schema bajas to bajas_worker, bajas_api;
-- `bajas check` tells whether the migrations are current, whichever role it runs as
grant select on bajas.schema_migrations to bajas_worker, bajas_api;

-- ---- bajas_worker: reads the panel, closes billing, marks what it deleted ----------
-- Not the clave hashes: the worker reads who to mail, nothing else of a customer.
grant select (id, number, email, name) on customers to bajas_worker;
grant select on services, mailboxes, invoices, debit_mandates, service_resources
    to bajas_worker;
grant update (status, auto_renew, cancelled_at) on services to bajas_worker;
grant update (status) on invoices to bajas_worker;
grant update (status, revoked_at) on debit_mandates to bajas_worker;
grant update (deleted_at) on mailboxes, service_resources to bajas_worker;
grant select, insert, update
    on bajas.cancellation_requests, bajas.confirmation_codes, bajas.sent_mails
    to bajas_worker;
-- the audit trail is append-only for everyone but its owner
grant select, insert on bajas.audit_trail to bajas_worker;
grant usage on sequence bajas.audit_trail_id_seq to bajas_worker;

-- ---- bajas_api: reads the panel and the cancellations, keeps panel sessions --------
grant select on customers, services, mailboxes, invoices, debit_mandates, service_resources
    to bajas_api;
grant select on bajas.cancellation_requests, bajas.audit_trail to bajas_api;
grant select, insert, update, delete on bajas.panel_sessions, bajas.sign_in_failures
    to bajas_api;
