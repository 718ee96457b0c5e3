-- Abuse limits (docs/SECURITY.md): revocable panel sessions, the clave throttle, and the
-- indexes that count a customer's requests and codes per hour.

-- One row per panel sign-in. The cookie carries a random id; only its SHA-256 is kept, so
-- a copy of this table opens no session.
create table if not exists bajas.panel_sessions (
    id_hash bytea primary key,
    customer_id bigint not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    revoked_at timestamptz,
    revoked_because text
);
create index if not exists panel_sessions_customer_idx
    on bajas.panel_sessions (customer_id) where revoked_at is null;
create index if not exists panel_sessions_expires_idx on bajas.panel_sessions (expires_at);

-- Failed sign-ins per customer number and per client address, each kept as a SHA-256 of
-- what was typed or seen (a clave typed into the number field is not stored).
create table if not exists bajas.sign_in_failures (
    key_hash bytea primary key,
    failures int not null,
    last_failure_at timestamptz not null default now()
);
create index if not exists sign_in_failures_last_idx on bajas.sign_in_failures (last_failure_at);

create index if not exists cancellation_requests_customer_idx
    on bajas.cancellation_requests (customer_id, requested_at desc);
create index if not exists audit_trail_customer_idx on bajas.audit_trail (customer_id, at);
