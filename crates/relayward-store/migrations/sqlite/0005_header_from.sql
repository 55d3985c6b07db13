-- Header From domains a tenant declared legitimate with its registered envelope senders (a
-- service sending for a partner, say): mail whose header From is one of these counts as
-- registered, not as a header From mismatch. `connector_id` NULL: through any connector.
CREATE TABLE header_from_allowed (
    id            INTEGER PRIMARY KEY,
    tenant_id     BIGINT  NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    domain        TEXT    NOT NULL,
    connector_id  BIGINT  REFERENCES connectors (id) ON DELETE CASCADE,
    declared_at   BIGINT  NOT NULL,
    declared_by   TEXT    NOT NULL
);
CREATE UNIQUE INDEX header_from_allowed_key
    ON header_from_allowed (tenant_id, domain, IFNULL(connector_id, 0));
