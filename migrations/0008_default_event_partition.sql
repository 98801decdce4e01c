-- Late events no longer make a partition per day. Creating day partitions
-- in the hot path let one client with old timestamps create thousands of
-- tables, block a worker while it did, and exhaust the server's lock table
-- for every database on it. From here on:
--
-- * an event whose day has no partition (older than the partitions
--   maintenance made ahead of time, or a day retention already dropped)
--   lands in one default partition, `events_default`;
-- * only maintenance creates day partitions, for today and the days ahead,
--   so the count grows by about one a day, never with the input.
--
-- Attaching a day partition checks the default partition for rows of that
-- day; the function now moves such rows into the new partition first, so
-- creating a day that already has rows in the default never fails.
CREATE TABLE events_default PARTITION OF events DEFAULT;

CREATE OR REPLACE FUNCTION ensure_event_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d       date;
    part    text;
    lo      timestamptz;
    hi      timestamptz;
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
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format(
            'ALTER TABLE %I ADD CONSTRAINT %I CHECK (event_time >= %L AND event_time < %L)',
            part, part || '_range', lo, hi);
        EXECUTE format(
            'WITH moved AS (DELETE FROM events_default WHERE event_time >= %L AND event_time < %L RETURNING *)
             INSERT INTO %I SELECT * FROM moved', lo, hi, part);
        EXECUTE format(
            'ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;
