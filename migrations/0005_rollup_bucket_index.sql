-- /aggregates without an ad or campaign filter: an index-only scan over the
-- range's minutes instead of a heap scan of every rollup row in it.
CREATE INDEX rollup_minute_bucket_idx ON rollup_minute (tenant_id, bucket)
    INCLUDE (kind, events, amount);
