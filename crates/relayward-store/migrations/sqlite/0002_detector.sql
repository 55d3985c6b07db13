-- The abuse detector: restriction-state transitions with their evidence, per-sender restrictions,
-- per-tenant sender limits and the domains a tenant declared as forwarded.
-- Times ending in _ms are unix milliseconds taken from the detector's clock (simulated in tests).

-- When the tenant entered its current state (ms) and, in probation, until when. `state_since_ms`
-- is trusted only while `state_changed_at` (seconds) still matches it: an older writer that sets
-- only `state_changed_at` makes it stale, and the store then falls back to `state_changed_at`.
ALTER TABLE tenants ADD COLUMN state_since_ms BIGINT;
ALTER TABLE tenants ADD COLUMN probation_until_ms BIGINT;
-- JSON of the tenant's own per-sender limits; NULL: the configured defaults.
ALTER TABLE tenants ADD COLUMN sender_limits TEXT;

CREATE TABLE tenant_transitions (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id          BIGINT  NOT NULL REFERENCES tenants (id),
    at_ms              BIGINT  NOT NULL,
    from_state         TEXT    NOT NULL,
    to_state           TEXT    NOT NULL,
    actor              TEXT    NOT NULL,
    -- detector | tenant | operator
    cause              TEXT    NOT NULL,
    summary            TEXT    NOT NULL,
    probation_until_ms BIGINT,
    -- JSON: the rule, thresholds, observed values, series, top talkers, samples, connector changes
    evidence           TEXT    NOT NULL,
    -- JSON: what a tenant admin attested when asking for unblock
    attestation        TEXT
);
CREATE INDEX tenant_transitions_tenant ON tenant_transitions (tenant_id, id);

CREATE TABLE sender_restrictions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    BIGINT  NOT NULL REFERENCES tenants (id),
    -- lowercase local@domain
    sender       TEXT    NOT NULL,
    since_ms     BIGINT  NOT NULL,
    -- NULL: until an administrator lifts it
    until_ms     BIGINT,
    limit_name   TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    lifted_at_ms BIGINT,
    lifted_by    TEXT
);
CREATE INDEX sender_restrictions_sender ON sender_restrictions (sender, tenant_id);
CREATE INDEX sender_restrictions_tenant ON sender_restrictions (tenant_id, id);

CREATE TABLE forwarded_domains (
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id),
    domain      TEXT   NOT NULL,
    declared_at BIGINT NOT NULL,
    declared_by TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, domain)
);
