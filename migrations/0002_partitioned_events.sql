-- Raw events partitioned by event time, one partition per UTC day, so old
-- days can be dropped whole (EVENT_RETENTION) while rollups stay.
--
-- A partitioned table's unique keys must contain the partition key, so the
-- idempotency key moves to its own table: `event_keys` holds one row per
-- eventId ever stored (until retention purges its day). The batch insert
-- claims keys there first and writes raw rows and rollups only for the keys
-- it claimed.

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER INDEX events_time_idx RENAME TO events_unpartitioned_time_idx;

CREATE TABLE events (
    event_id      uuid NOT NULL,
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
) PARTITION BY RANGE (event_time);

CREATE INDEX events_time_idx ON events (event_time DESC, event_id DESC);
CREATE INDEX events_id_idx ON events (event_id);

CREATE TABLE event_keys (
    event_id   uuid PRIMARY KEY,
    event_time timestamptz NOT NULL
);
-- Retention purges keys by day.
CREATE INDEX event_keys_time_idx ON event_keys (event_time);

-- Creates the missing day partitions of `events` for `days` (UTC dates) and
-- returns how many it created. Partitions are created detached and then
-- attached, which locks the parent less than CREATE TABLE ... PARTITION OF;
-- an advisory lock serialises concurrent creators.
CREATE FUNCTION ensure_event_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d       date;
    part    text;
    created integer := 0;
BEGIN
    FOREACH d IN ARRAY days LOOP
        part := 'events_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        PERFORM pg_advisory_xact_lock(hashtext('adtrack.event_partitions'));
        -- Another creator may have committed this partition while we waited
        -- for the lock; the catalogue cache may not show it yet, so the
        -- CREATE itself tells.
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXCEPTION WHEN duplicate_table THEN
            CONTINUE;
        END;
        EXECUTE format(
            'ALTER TABLE %I ADD CONSTRAINT %I CHECK (event_time >= %L AND event_time < %L)',
            part, part || '_range',
            (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
        EXECUTE format(
            'ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            part, (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Move what the unpartitioned table held.
SELECT ensure_event_partitions(coalesce(array_agg(DISTINCT (event_time AT TIME ZONE 'UTC')::date), '{}'))
FROM events_unpartitioned;
SELECT ensure_event_partitions(ARRAY[(now() AT TIME ZONE 'UTC')::date,
                                     (now() AT TIME ZONE 'UTC')::date + 1]);
INSERT INTO events SELECT * FROM events_unpartitioned;
INSERT INTO event_keys (event_id, event_time) SELECT event_id, event_time FROM events_unpartitioned;
DROP TABLE events_unpartitioned;
