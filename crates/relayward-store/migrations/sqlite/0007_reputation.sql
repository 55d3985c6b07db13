-- Per-tenant delivery outcomes by hour, for the rolling bounce and complaint rates (the
-- reputation module). Relays add their counts in batches (`delivered = delivered + ?`), so
-- several relays on one store add up and a restart starts from what was written.
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
