-- Raw events: one row per eventId, the idempotency key. A duplicate insert
-- is skipped by ON CONFLICT (event_id) DO NOTHING, so it never reaches the
-- rollups below.
CREATE TABLE events (
    event_id      uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('impression', 'click', 'play', 'conversion')),
    ad_id         text,
    campaign_id   text,
    screen_id     text,
    user_id       text,
    ip            inet,
    event_time    timestamptz NOT NULL,
    received_at   timestamptz NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    playback_time double precision,
    amount        bigint CHECK (amount >= 0),
    variant       text,
    experiment_id text,
    properties    jsonb
);

-- Newest-first listings and event-time windows.
CREATE INDEX events_time_idx ON events (event_time DESC, event_id DESC);

-- Per-minute rollups, written in the same statement as the raw rows and
-- only for rows that statement inserted. Absent dimensions are '' so they
-- can be part of the key. Hours and days are sums of minutes.
CREATE TABLE rollup_minute (
    bucket      timestamptz NOT NULL,
    kind        text NOT NULL,
    ad_id       text NOT NULL DEFAULT '',
    campaign_id text NOT NULL DEFAULT '',
    screen_id   text NOT NULL DEFAULT '',
    events      bigint NOT NULL,
    amount      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, kind, ad_id, campaign_id, screen_id)
);
CREATE INDEX rollup_minute_ad_idx ON rollup_minute (ad_id, bucket) WHERE ad_id <> '';
CREATE INDEX rollup_minute_campaign_idx ON rollup_minute (campaign_id, bucket) WHERE campaign_id <> '';

-- Batches committed to Postgres whose Redis counter update has not been
-- confirmed yet. The worker deletes its row in the transaction that
-- applies the update; recovery applies and deletes rows left behind by a
-- crash or an outage, so counters are updated exactly once.
CREATE TABLE counter_outbox (
    batch_id   uuid PRIMARY KEY,
    event_ids  uuid[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The ad catalogue served by GET /ads and played by the web UI.
CREATE TABLE ads (
    id          text PRIMARY KEY,
    title       text NOT NULL,
    video_url   text NOT NULL,
    target_url  text NOT NULL,
    campaign_id text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
