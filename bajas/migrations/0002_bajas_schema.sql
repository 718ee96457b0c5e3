-- bajas' own tables, in a schema of their own.

-- One row per workflow run: what the panel asked and where it stands.
create table if not exists bajas.cancellation_requests (
    run_id text primary key,
    workflow_id text not null,
    service_id bigint not null,
    customer_id bigint not null,
    requested_by text not null,
    reason text,
    state text not null,
    billing_outcome text,
    requested_at timestamptz not null default now(),
    confirmed_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz not null default now()
);
create index if not exists cancellation_requests_service_idx
    on bajas.cancellation_requests (service_id, requested_at desc);
-- A service is carried out once, whatever the retention of closed workflows.
create unique index if not exists cancellation_requests_once_idx
    on bajas.cancellation_requests (service_id) where state = 'cancelled';

-- Confirmation codes, only as an HMAC under a key that is not in this database.
create table if not exists bajas.confirmation_codes (
    run_id text not null,
    generation int not null,
    code_hmac bytea not null,
    issued_at timestamptz not null default now(),
    expires_at timestamptz not null,
    sent_at timestamptz,
    used_at timestamptz,
    primary key (run_id, generation)
);

-- Append-only audit trail: who, when, from which state to which, and what was deleted.
create table if not exists bajas.audit_trail (
    id bigserial primary key,
    run_id text not null,
    workflow_id text not null,
    event text not null,
    service_id bigint not null,
    customer_id bigint not null,
    actor text not null,
    from_state text,
    to_state text,
    billing_outcome text,
    details jsonb not null default '{}'::jsonb,
    at timestamptz not null default now(),
    unique (run_id, event)
);
create index if not exists audit_trail_service_idx on bajas.audit_trail (service_id, at);

create or replace function bajas.audit_trail_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'bajas.audit_trail is append-only';
end $$;

drop trigger if exists audit_trail_append_only on bajas.audit_trail;
create trigger audit_trail_append_only
    before update or delete on bajas.audit_trail
    for each row execute function bajas.audit_trail_append_only();

-- Mails that must leave once per run (the "dado de baja" notice, the SLA alert).
create table if not exists bajas.sent_mails (
    run_id text not null,
    kind text not null,
    sent_at timestamptz not null default now(),
    primary key (run_id, kind)
);
