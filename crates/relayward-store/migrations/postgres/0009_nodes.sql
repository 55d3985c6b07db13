-- Cluster mode: every relay node upserts its own row by name at each heartbeat (see
-- migrations/sqlite/0009_nodes.sql).
CREATE TABLE nodes (
    name        TEXT    COLLATE "C" PRIMARY KEY,
    version     TEXT    NOT NULL,
    started_at  BIGINT  NOT NULL,
    last_seen   BIGINT  NOT NULL,
    queue_depth BIGINT  NOT NULL,
    smtp_addr   TEXT,
    api_addr    TEXT
);
CREATE INDEX nodes_last_seen ON nodes (last_seen);
