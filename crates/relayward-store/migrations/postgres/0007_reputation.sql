-- Per-tenant delivery outcomes by hour (see migrations/sqlite/0007_reputation.sql).
CREATE TABLE reputation_hours (
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Hours since the Unix epoch.
    hour        BIGINT NOT NULL,
    delivered   BIGINT NOT NULL DEFAULT 0,
    bounces     BIGINT NOT NULL DEFAULT 0,
    complaints  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, hour)
);
CREATE INDEX reputation_hours_hour ON reputation_hours (hour);
