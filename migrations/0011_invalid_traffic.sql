-- Invalid traffic (IVT_FILTER=flag): an event the edge flagged keeps its
-- reason here. Such events are stored like any other but left out of the
-- rollups; the counters rebuild their `invalid*` figures from these rows,
-- which the partial index finds without reading the valid ones.
ALTER TABLE events
    ADD COLUMN invalid_reason text
        CHECK (invalid_reason IN ('bot-user-agent', 'repeated-click'));

CREATE INDEX events_invalid_by_ad ON events (tenant_id, ad_id, kind)
    WHERE invalid_reason IS NOT NULL;
