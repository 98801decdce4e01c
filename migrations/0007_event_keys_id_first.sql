-- The idempotency key leads with the eventId. Every stored event inserts
-- one entry into this index and first probes it for a conflict; with the
-- fixed-width uuid first, almost every comparison is decided by it alone,
-- where the tenant text first meant a collation-aware text comparison and
-- a slow attribute lookup for the uuid behind it on every step.
ALTER TABLE event_keys DROP CONSTRAINT event_keys_pkey, ADD PRIMARY KEY (event_id, tenant_id);
