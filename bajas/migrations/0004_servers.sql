-- Contract section 8: the hosting server that holds a service's files and mailboxes.
-- Null means the central workers reach them, as before.
alter table services add column if not exists server text;
