-- Optional multi-tenancy (TENANTS=on). Every row carries its tenant; the
-- tenant '' is the single tenant of TENANTS=off, so nothing changes there.

CREATE TABLE tenants (
    id         text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- API keys are stored as SHA-256 digests; the key itself is shown once.
CREATE TABLE api_keys (
    key_hash   bytea PRIMARY KEY,
    tenant_id  text NOT NULL REFERENCES tenants (id),
    prefix     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

ALTER TABLE events ADD COLUMN tenant_id text NOT NULL DEFAULT '';

-- The idempotency key is per tenant: the same eventId from two tenants is
-- two events.
ALTER TABLE event_keys ADD COLUMN tenant_id text NOT NULL DEFAULT '';
ALTER TABLE event_keys DROP CONSTRAINT event_keys_pkey;
ALTER TABLE event_keys ADD PRIMARY KEY (tenant_id, event_id);

ALTER TABLE rollup_minute ADD COLUMN tenant_id text NOT NULL DEFAULT '';
ALTER TABLE rollup_minute DROP CONSTRAINT rollup_minute_pkey;
ALTER TABLE rollup_minute ADD PRIMARY KEY (tenant_id, bucket, kind, ad_id, campaign_id, screen_id);
DROP INDEX rollup_minute_ad_idx;
DROP INDEX rollup_minute_campaign_idx;
CREATE INDEX rollup_minute_ad_idx ON rollup_minute (tenant_id, ad_id, bucket)
    INCLUDE (kind, events, amount) WHERE ad_id <> '';
CREATE INDEX rollup_minute_campaign_idx ON rollup_minute (tenant_id, campaign_id, bucket)
    INCLUDE (kind, events, amount) WHERE campaign_id <> '';

DROP INDEX events_ad_time_idx;
CREATE INDEX events_ad_time_idx ON events (tenant_id, ad_id, event_time DESC, event_id DESC)
    WHERE ad_id IS NOT NULL;
DROP INDEX events_experiment_idx;
CREATE INDEX events_experiment_idx ON events (tenant_id, experiment_id, variant)
    WHERE experiment_id IS NOT NULL;

-- Which tenant each eventId of an outbox batch belongs to (same order).
ALTER TABLE counter_outbox ADD COLUMN tenant_ids text[];
