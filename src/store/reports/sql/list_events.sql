SELECT event_id, kind, ad_id, campaign_id, screen_id, user_id, host(ip) AS ip_address,
       event_time AS timestamp, received_at, processed_at,
       playback_time AS video_playback_time, amount, error_code, variant, experiment_id, properties
FROM events
WHERE tenant_id = $7 AND ($1::text IS NULL OR kind = $1)
  AND ($2::text IS NULL OR ad_id = $2)
  AND ($3::text IS NULL OR campaign_id = $3)
  AND ($4::timestamptz IS NULL OR (event_time, event_id) < ($4, $5))
ORDER BY event_time DESC, event_id DESC
LIMIT $6
