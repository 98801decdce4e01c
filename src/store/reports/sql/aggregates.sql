SELECT date_trunc($1, bucket, 'UTC') AS start,
       sum(events)::bigint AS "events!", sum(amount)::bigint AS "amount!"
FROM (
    SELECT bucket, events, amount FROM rollup_minute
    WHERE tenant_id = $7
      AND ((bucket >= $2 AND bucket < $8) OR (bucket >= $9 AND bucket < $3))
      AND ($4::text IS NULL OR campaign_id = $4)
      AND ($5::text IS NULL OR ad_id = $5)
      AND ($6::text IS NULL OR kind = $6)
    UNION ALL
    SELECT bucket, events, amount FROM rollup_hour
    WHERE tenant_id = $7 AND bucket >= $8 AND bucket < $9
      AND ($4::text IS NULL OR campaign_id = $4)
      AND ($5::text IS NULL OR ad_id = $5)
      AND ($6::text IS NULL OR kind = $6)
) r
GROUP BY 1 ORDER BY 1
