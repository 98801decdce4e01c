-- Reports that read a bounded amount whatever clients send (SPEC invariant
-- 8). Before this, /events?campaignId=<unknown> read every raw event, and an
-- experiment summary read every raw event of the experiment, on every call.

-- /events filtered by campaign, newest first, like events_ad_time_idx for
-- ads: a campaign no event carries costs a few index pages per partition.
-- Built over every existing partition while the migration holds its lock.
CREATE INDEX events_campaign_time_idx
    ON events (tenant_id, campaign_id, event_time DESC, event_id DESC)
    WHERE campaign_id IS NOT NULL;

-- Experiment summaries read these two rollups, written by the worker's batch
-- statement together with the raw rows and counting only the rows that
-- statement inserted, like rollup_minute. Like the other rollups they are
-- kept when EVENT_RETENTION drops raw events.
--
-- One row per experiment and variant ('' when absent): events of every
-- type, conversion events, distinct users, and distinct users with a
-- conversion. The summary reads one row per variant.
CREATE TABLE rollup_experiment (
    tenant_id       text NOT NULL DEFAULT '',
    experiment_id   text NOT NULL,
    variant         text NOT NULL DEFAULT '',
    events          bigint NOT NULL DEFAULT 0,
    conversions     bigint NOT NULL DEFAULT 0,
    users           bigint NOT NULL DEFAULT 0,
    converted_users bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, experiment_id, variant)
) WITH (fillfactor = 80);

-- One row per user (userId, else the client IP) of an experiment's variant,
-- so the distinct counts above stay exact: a user is counted in `users` when
-- its row is inserted, and in `converted_users` when its row is inserted
-- converted or turns converted, each at most once. `batch_id` is the batch
-- that inserted the row, which tells the batch statement an insert from an
-- update (nil for rows filled in below).
CREATE TABLE experiment_users (
    tenant_id     text NOT NULL DEFAULT '',
    experiment_id text NOT NULL,
    variant       text NOT NULL DEFAULT '',
    user_key      text NOT NULL,
    converted     boolean NOT NULL,
    batch_id      uuid NOT NULL,
    PRIMARY KEY (tenant_id, experiment_id, variant, user_key)
);

-- Fill both from the raw events stored so far (what retention kept).
INSERT INTO experiment_users (tenant_id, experiment_id, variant, user_key, converted, batch_id)
SELECT tenant_id, experiment_id, coalesce(variant, ''), coalesce(user_id, host(ip)),
       bool_or(kind = 'conversion'), '00000000-0000-0000-0000-000000000000'
FROM events
WHERE experiment_id IS NOT NULL AND coalesce(user_id, host(ip)) IS NOT NULL
GROUP BY 1, 2, 3, 4;

INSERT INTO rollup_experiment (tenant_id, experiment_id, variant, events, conversions)
SELECT tenant_id, experiment_id, coalesce(variant, ''), count(*),
       count(*) FILTER (WHERE kind = 'conversion')
FROM events
WHERE experiment_id IS NOT NULL
GROUP BY 1, 2, 3;

UPDATE rollup_experiment r
SET users = u.users, converted_users = u.converted_users
FROM (SELECT tenant_id, experiment_id, variant, count(*) AS users,
             count(*) FILTER (WHERE converted) AS converted_users
      FROM experiment_users GROUP BY 1, 2, 3) u
WHERE (r.tenant_id, r.experiment_id, r.variant) = (u.tenant_id, u.experiment_id, u.variant);

-- The summary read the raw events through this index. Nothing reads it now,
-- and every stored event of an experiment paid an entry in it.
DROP INDEX events_experiment_idx;
