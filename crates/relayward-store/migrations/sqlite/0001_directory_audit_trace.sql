-- relayward store schema, SQLite flavour.
-- Kept close to portable SQL so the PostgreSQL backend can mirror it: the only SQLite-specific
-- spelling is `INTEGER PRIMARY KEY [AUTOINCREMENT]` for ids (PostgreSQL: BIGINT GENERATED ... AS IDENTITY).
-- Timestamps are BIGINT unix seconds; trace_events.at_ms is unix milliseconds.

CREATE TABLE tenants (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL UNIQUE,
    state            TEXT    NOT NULL DEFAULT 'active',
    -- JSON text array of addresses
    admin_emails     TEXT    NOT NULL DEFAULT '[]',
    created_at       BIGINT  NOT NULL,
    created_by       TEXT    NOT NULL,
    state_changed_at BIGINT,
    state_changed_by TEXT,
    state_reason     TEXT
);

CREATE TABLE accepted_domains (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id          BIGINT  NOT NULL REFERENCES tenants (id),
    domain             TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    match_subdomains   BOOLEAN NOT NULL DEFAULT FALSE,
    verified           BOOLEAN NOT NULL DEFAULT FALSE,
    verification_token TEXT    NOT NULL,
    created_at         BIGINT  NOT NULL,
    created_by         TEXT    NOT NULL,
    verified_at        BIGINT,
    UNIQUE (tenant_id, domain)
);
-- A domain can be verified by one tenant only (the store also checks, for a clear message).
CREATE UNIQUE INDEX accepted_domains_verified_domain ON accepted_domains (domain) WHERE verified;
CREATE INDEX accepted_domains_domain ON accepted_domains (domain);

CREATE TABLE connectors (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id                BIGINT  NOT NULL REFERENCES tenants (id),
    name                     TEXT    NOT NULL,
    kind                     TEXT    NOT NULL,
    -- JSON text array of CIDR strings
    ip_ranges                TEXT    NOT NULL DEFAULT '[]',
    cert_name                TEXT,
    auth_user                TEXT,
    auth_password_hash       TEXT,
    require_tls              BOOLEAN NOT NULL DEFAULT FALSE,
    enabled                  BOOLEAN NOT NULL DEFAULT TRUE,
    allow_unregistered       BOOLEAN NOT NULL DEFAULT FALSE,
    restrict_domains_to_ips  BOOLEAN NOT NULL DEFAULT FALSE,
    restrict_domains_to_cert BOOLEAN NOT NULL DEFAULT FALSE,
    blocked                  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at               BIGINT  NOT NULL,
    created_by               TEXT    NOT NULL,
    updated_at               BIGINT  NOT NULL,
    updated_by               TEXT    NOT NULL,
    last_used_at             BIGINT,
    UNIQUE (tenant_id, name)
);
CREATE UNIQUE INDEX connectors_auth_user ON connectors (auth_user) WHERE auth_user IS NOT NULL;

CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    tenant_id BIGINT,
    object    TEXT   NOT NULL,
    detail    TEXT   NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);

CREATE TABLE trace_events (
    id           INTEGER PRIMARY KEY,
    at_ms        BIGINT NOT NULL,
    kind         TEXT   NOT NULL,
    queue_id     TEXT,
    message_id   TEXT,
    tenant_id    BIGINT,
    connector_id BIGINT,
    client_ip    TEXT,
    sender       TEXT,
    recipient    TEXT,
    sender_class TEXT,
    reply        TEXT,
    detail       TEXT
);
CREATE INDEX trace_events_at ON trace_events (at_ms);
CREATE INDEX trace_events_tenant_at ON trace_events (tenant_id, at_ms);
CREATE INDEX trace_events_queue_id ON trace_events (queue_id);
CREATE INDEX trace_events_message_id ON trace_events (message_id);
-- Searches by address are case-insensitive: the indexes are on LOWER(...).
CREATE INDEX trace_events_sender ON trace_events (LOWER(sender));
CREATE INDEX trace_events_recipient ON trace_events (LOWER(recipient));

-- Single-row counter, bumped by every directory change so relays can poll it cheaply.
CREATE TABLE directory_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 1);
