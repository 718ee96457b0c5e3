-- The panel's own tables (contract section 2). Created only when missing:
-- on an existing panel database this changes nothing.
create table if not exists customers (
    id bigint primary key,
    number text unique not null,
    email text not null,
    name text not null,
    password_hash text
);

create table if not exists services (
    id bigint primary key,
    customer_id bigint not null references customers,
    domain text not null,
    plan text not null,
    status text not null,
    expires_on date not null,
    payment_method text not null,
    auto_renew boolean not null default true,
    document_root text,
    cancelled_at timestamptz
);

create table if not exists mailboxes (
    id bigint primary key,
    service_id bigint not null references services,
    address text unique not null,
    maildir text not null,
    deleted_at timestamptz
);

create table if not exists invoices (
    id bigint primary key,
    service_id bigint not null references services,
    period_start date not null,
    period_end date not null,
    amount_cents bigint not null,
    status text not null
);

create table if not exists debit_mandates (
    id bigint primary key,
    service_id bigint not null references services,
    status text not null,
    revoked_at timestamptz
);

create index if not exists services_customer_idx on services (customer_id);
create index if not exists mailboxes_service_idx on mailboxes (service_id);
create index if not exists invoices_service_idx on invoices (service_id);
create index if not exists debit_mandates_service_idx on debit_mandates (service_id);
