-- Cluster mode: every relay node upserts its own row by name at each heartbeat, so that the
-- operator's tools show which nodes are alive, since when, and how full their spools are.
-- `started_at` and `last_seen` are unix seconds like the other times.
CREATE TABLE nodes (
    name        TEXT    PRIMARY KEY,
    version     TEXT    NOT NULL,
    started_at  BIGINT  NOT NULL,
    last_seen   BIGINT  NOT NULL,
    queue_depth BIGINT  NOT NULL,
    smtp_addr   TEXT,
    api_addr    TEXT
);
CREATE INDEX nodes_last_seen ON nodes (last_seen);
