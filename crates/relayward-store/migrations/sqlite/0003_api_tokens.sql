-- Bearer tokens of the admin HTTP API. The plaintext token is `rw_<id>_<secret>`; only an argon2id
-- PHC string of the secret part is kept, looked up by id. An operator token has no tenant; a
-- tenant-admin token is scoped to exactly one tenant.

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    scope        TEXT    NOT NULL,
    tenant_id    BIGINT  REFERENCES tenants (id),
    label        TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    created_by   TEXT    NOT NULL,
    revoked_at   BIGINT,
    revoked_by   TEXT,
    last_used_at BIGINT,
    CHECK ((scope = 'operator' AND tenant_id IS NULL) OR (scope = 'tenant' AND tenant_id IS NOT NULL))
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id, id);

-- The connector audit flags count unregistered mail per connector of one tenant over a day.
CREATE INDEX trace_events_tenant_connector_at ON trace_events (tenant_id, connector_id, at_ms);
