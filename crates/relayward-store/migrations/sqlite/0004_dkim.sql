-- DKIM signing keys: which selector signs for which domain. The private key itself is never in
-- the database: it lives in `<data_dir>/dkim/<domain>.<selector>.key` (mode 0600). One current
-- key per domain; a new selector replaces the row (rotation), and the old key file stays until
-- the operator removes it with the old DNS record. `tenant_id` is NULL for the relay's own SRS
-- domain.

CREATE TABLE dkim_keys (
    domain      TEXT    PRIMARY KEY,
    tenant_id   BIGINT  REFERENCES tenants (id),
    selector    TEXT    NOT NULL,
    algorithm   TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL
);
CREATE INDEX dkim_keys_tenant ON dkim_keys (tenant_id);
