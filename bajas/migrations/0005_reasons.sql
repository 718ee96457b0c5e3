-- Contract section 8: why a customer leaves, and when the deletion is to start.
-- `reason` (free text, at most 500 characters from the request) exists since 0002.
alter table bajas.cancellation_requests
    add column if not exists reason_code text,
    add column if not exists effective text not null default 'now';
-- `bajas report --since DATE` reads the requests of a period.
create index if not exists cancellation_requests_requested_idx
    on bajas.cancellation_requests (requested_at);
