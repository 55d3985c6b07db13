-- Audit entries about a connector carry its id, so that the detector's evidence names the
-- connector a change was made to without reading it back from the entry's text.
ALTER TABLE audit_log ADD COLUMN connector_id INTEGER;

-- Entries recorded before: the connector of that name, where it still exists.
UPDATE audit_log
   SET connector_id = (SELECT c.id FROM connectors c
                        WHERE c.tenant_id = audit_log.tenant_id
                          AND 'connector ' || c.name = audit_log.object)
 WHERE action LIKE 'connector.%';
