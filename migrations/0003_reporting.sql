-- Indexes for the Postgres-backed reports.

-- /aggregates filtered by ad or campaign reads only the index (events and
-- amount are included) over the range's minutes.
DROP INDEX rollup_minute_ad_idx;
DROP INDEX rollup_minute_campaign_idx;
CREATE INDEX rollup_minute_ad_idx ON rollup_minute (ad_id, bucket)
    INCLUDE (kind, events, amount) WHERE ad_id <> '';
CREATE INDEX rollup_minute_campaign_idx ON rollup_minute (campaign_id, bucket)
    INCLUDE (kind, events, amount) WHERE campaign_id <> '';
-- Unfiltered or type-filtered ranges use the primary key (bucket first).

-- /events filtered by ad, newest first.
CREATE INDEX events_ad_time_idx ON events (ad_id, event_time DESC, event_id DESC)
    WHERE ad_id IS NOT NULL;

-- /experiments/{id}/summary.
CREATE INDEX events_experiment_idx ON events (experiment_id, variant)
    WHERE experiment_id IS NOT NULL;
