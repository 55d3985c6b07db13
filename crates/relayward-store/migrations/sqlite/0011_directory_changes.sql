-- Which tenant each directory version changed (NULL: not a single tenant's change), so that a
-- running relay applies only the tenants that changed instead of reloading the whole directory.
-- Rows older than the last 100,000 versions are pruned; a relay further behind reloads it all.
CREATE TABLE directory_changes (
    version   BIGINT PRIMARY KEY,
    tenant_id BIGINT
);
