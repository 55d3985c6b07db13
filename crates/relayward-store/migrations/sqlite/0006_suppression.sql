-- Suppression lists: recipients the relay refuses at RCPT (550 5.1.10) for one tenant's mail
-- (`tenant_id`), or for every tenant's on the operator's global list (`tenant_id` NULL). A hard
-- bounce or a complaint adds an entry for `suppression_days`; an administrator adds one for a
-- while or for good (`expires_at` NULL). One row per list and address: a new entry that lasts
-- longer replaces the row, and a removal marks it (`removed_at`) rather than deleting it, so
-- that relays can pick up removals as changes.
--
-- `version` is the value of `suppression_version` after the row's last change: a relay asks
-- for the rows changed after the version it holds. The directory version is not bumped, so a
-- stream of bounces does not reload the whole directory.
CREATE TABLE suppressions (
    id          INTEGER PRIMARY KEY,
    tenant_id   BIGINT  REFERENCES tenants (id) ON DELETE CASCADE,
    address     TEXT    NOT NULL,
    source      TEXT    NOT NULL CHECK (source IN ('hard_bounce', 'complaint', 'manual')),
    reason      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    expires_at  BIGINT,
    removed_at  BIGINT,
    removed_by  TEXT,
    version     BIGINT  NOT NULL
);
CREATE UNIQUE INDEX suppressions_key ON suppressions (COALESCE(tenant_id, 0), address);
CREATE INDEX suppressions_tenant ON suppressions (tenant_id, address);
CREATE INDEX suppressions_version ON suppressions (version);

CREATE TABLE suppression_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO suppression_version (id, version) VALUES (1, 0);
