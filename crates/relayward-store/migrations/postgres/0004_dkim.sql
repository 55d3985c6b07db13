-- DKIM signing keys: which selector signs for which domain (see migrations/sqlite/0004_dkim.sql).

CREATE TABLE dkim_keys (
    domain      TEXT    COLLATE "C" PRIMARY KEY,
    tenant_id   BIGINT  REFERENCES tenants (id),
    selector    TEXT    NOT NULL,
    algorithm   TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL
);
CREATE INDEX dkim_keys_tenant ON dkim_keys (tenant_id);
