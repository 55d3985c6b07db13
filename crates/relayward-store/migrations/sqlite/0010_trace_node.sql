-- Cluster mode: which relay node recorded each trace event (NULL before this migration, and
-- on a node without a name).
ALTER TABLE trace_events ADD COLUMN node TEXT;
