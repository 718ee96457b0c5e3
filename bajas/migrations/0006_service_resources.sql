-- Contract section 9: everything else a service leaves on a server (databases, backups,
-- web site, PHP pool, certificate, cron jobs, DNS zone, system user). Owned by the panel;
-- created only when missing.
create table if not exists service_resources (
    id bigint primary key,
    service_id bigint not null references services,
    kind text not null,
    name text not null,
    server text,
    deleted_at timestamptz
);
create index if not exists service_resources_service on service_resources (service_id);
create index if not exists service_resources_kind_name on service_resources (kind, name);
