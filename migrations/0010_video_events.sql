-- Video-ad tracking (VAST): the player's events become kinds of their own,
-- an error event keeps its VAST error code, errors are rolled up by code,
-- and catalogue ads describe their video file for the VAST document.

-- Widen the kind check. Its name depends on the history of the table
-- (0002 made `events` while the old table still held `events_kind_check`),
-- so drop whatever check on `events` names kind, then add one by name.
-- Adding it reads every partition once to validate it.
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'events'::regclass AND contype = 'c'
               AND pg_get_constraintdef(oid) LIKE '%kind%'
    LOOP
        EXECUTE format('ALTER TABLE events DROP CONSTRAINT %I', c.conname);
    END LOOP;
END $$;
ALTER TABLE events ADD CONSTRAINT events_kind_check CHECK (kind IN (
    'impression', 'click', 'play', 'conversion', 'start', 'firstQuartile', 'midpoint',
    'thirdQuartile', 'complete', 'skip', 'error'));

-- The VAST error code of an error event (100-999), NULL when the player did
-- not give one. Nullable and without a default: no rewrite of old rows.
ALTER TABLE events ADD COLUMN error_code smallint
    CONSTRAINT events_error_code_check CHECK (error_code BETWEEN 100 AND 999);

-- Error events per ad, minute and code (0: no code given), written by the
-- worker's batch statement with the other rollups and, like them, counting
-- only the rows that statement inserted. /ads/analytics reads errorsByCode
-- here. Kept when EVENT_RETENTION drops raw events.
CREATE TABLE rollup_error_minute (
    tenant_id  text NOT NULL DEFAULT '',
    ad_id      text NOT NULL,
    bucket     timestamptz NOT NULL,
    error_code smallint NOT NULL,
    events     bigint NOT NULL,
    PRIMARY KEY (tenant_id, ad_id, bucket, error_code)
);

-- What the VAST document says about an ad's video. The defaults describe the
-- demo clips (6 s, 480x270 H.264 MP4).
ALTER TABLE ads
    ADD COLUMN duration_ms integer NOT NULL DEFAULT 6000 CHECK (duration_ms > 0),
    ADD COLUMN width integer NOT NULL DEFAULT 480 CHECK (width > 0),
    ADD COLUMN height integer NOT NULL DEFAULT 270 CHECK (height > 0),
    ADD COLUMN mime_type text NOT NULL DEFAULT 'video/mp4';
