-- Audit entries about a connector carry its id (see migrations/sqlite/0008_audit_connector.sql).
ALTER TABLE audit_log ADD COLUMN connector_id BIGINT;

UPDATE audit_log
   SET connector_id = (SELECT c.id FROM connectors c
                        WHERE c.tenant_id = audit_log.tenant_id
                          AND 'connector ' || c.name = audit_log.object)
 WHERE action LIKE 'connector.%';
