#!/usr/bin/env bash
# Loads ten million events (30 days, 200 ads, 20 campaigns) and their
# per-minute and per-hour rollups into a scratch database migrated by
# adtrack, then shows the plans and timings of one-day /aggregates queries
# (the query adtrack runs) and of an /events page.
#
#   bench/reporting-explain.sh            # EVENTS=10000000 by default
#   EVENTS=1000000 bench/reporting-explain.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-10000000}"
BASE="${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
DB="adtrack_explain_$$"
trap 'psql "$BASE/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null' EXIT

cargo build --release --locked --bin adtrack -q
DATABASE_URL="$BASE/$DB" ./target/release/adtrack migrate >/dev/null
q() { psql "$BASE/$DB" -v ON_ERROR_STOP=1 -q "$@"; }

echo "loading $EVENTS events over 30 days ..."
start=$(date +%s)
q <<SQL
-- A scratch database: skip the WAL flush per commit, give index builds room.
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';
SELECT ensure_event_partitions(ARRAY(
  SELECT (date_trunc('day', now() AT TIME ZONE 'UTC') - make_interval(days => d))::date
  FROM generate_series(0, 30) d));
-- ROLLUPS_ONLY=1 loads just the rollups those events produce (what
-- /aggregates reads), which is much faster; the /events plan is then empty.
INSERT INTO events (event_id, kind, ad_id, campaign_id, ip, event_time, received_at, amount)
SELECT gen_random_uuid(),
       (ARRAY['impression','impression','impression','click','play','conversion'])[1 + (i % 6)],
       'ad-' || (i % 200), 'camp-' || (i % 20),
       ('10.' || (i % 250) || '.' || (i / 250 % 250) || '.1')::inet,
       now() - make_interval(secs => (i::double precision / $EVENTS) * 30 * 86400),
       now(), i % 1000
FROM generate_series(1, $EVENTS) i WHERE '${ROLLUPS_ONLY:-0}' = '0';
-- Bulk load: build the rollup indexes after the rows are in (as a restore
-- would), with the same definitions as the migrations.
CREATE TEMP TABLE rollup_index_defs AS
  SELECT indexdef FROM pg_indexes WHERE tablename = 'rollup_minute' AND indexname <> 'rollup_minute_pkey';
DO \$\$ DECLARE r record; BEGIN
  FOR r IN SELECT indexname FROM pg_indexes WHERE tablename = 'rollup_minute' AND indexname <> 'rollup_minute_pkey' LOOP
    EXECUTE format('DROP INDEX %I', r.indexname);
  END LOOP;
END \$\$;
INSERT INTO rollup_minute (bucket, kind, ad_id, campaign_id, screen_id, events, amount)
SELECT date_trunc('minute', t), kind, ad_id, campaign_id, '', count(*), sum(amount)
FROM (SELECT now() - make_interval(secs => (i::double precision / $EVENTS) * 30 * 86400) AS t,
             (ARRAY['impression','impression','impression','click','play','conversion'])[1 + (i % 6)] AS kind,
             'ad-' || (i % 200) AS ad_id, 'camp-' || (i % 20) AS campaign_id, i % 1000 AS amount
      FROM generate_series(1, $EVENTS) i) g
GROUP BY 1, 2, 3, 4;
DO \$\$ DECLARE r record; BEGIN
  FOR r IN SELECT indexdef FROM rollup_index_defs LOOP EXECUTE r.indexdef; END LOOP;
END \$\$;
-- The hourly rollups those minutes sum to (the batch statement writes both).
INSERT INTO rollup_hour (tenant_id, bucket, kind, ad_id, campaign_id, events, amount)
SELECT tenant_id, date_trunc('hour', bucket, 'UTC'), kind, ad_id, campaign_id, sum(events), sum(amount)
FROM rollup_minute GROUP BY 1, 2, 3, 4, 5;
VACUUM ANALYZE events;
VACUUM ANALYZE rollup_minute;
VACUUM ANALYZE rollup_hour;
SQL
echo "loaded in $(( $(date +%s) - start )) s"
q -c "SELECT (SELECT count(*) FROM events) AS events, (SELECT count(*) FROM rollup_minute) AS minute_rows,
             (SELECT count(*) FROM rollup_hour) AS hour_rows"

day_from=$(q -Atc "SELECT to_char(date_trunc('day', now() AT TIME ZONE 'UTC') - interval '3 days', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
day_to=$(q -Atc "SELECT to_char(date_trunc('day', now() AT TIME ZONE 'UTC') - interval '2 days', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
# The query of src/store/reports.rs::aggregates: whole hours from
# rollup_hour, the partial hours at the ends from rollup_minute (none here:
# the day is aligned, so $hours_from = from and $hours_to = to).
# Plain timings, without EXPLAIN's per-row instrumentation: five runs of
# the query as the server sends it.
timed() {
  { echo '\timing on'; for _ in 1 2 3 4 5; do echo "$1;"; done; } | q -o /dev/null 2>&1 |
    grep -o 'Time: [0-9.]* ms' | tr '\n' ' '
  echo
}
agg() {
  local unit=$1 label=$2 filter=$3 hours_from=$day_from hours_to=$day_to
  if [ "$unit" = minute ]; then hours_from=$day_to; fi
  echo
  echo "== one day ($day_from .. $day_to) by $unit, $label"
  local sql="SELECT date_trunc('$unit', bucket, 'UTC') AS start, sum(events)::bigint, sum(amount)::bigint
        FROM (
            SELECT bucket, events, amount FROM rollup_minute
            WHERE tenant_id = ''
              AND ((bucket >= '$day_from' AND bucket < '$hours_from') OR (bucket >= '$hours_to' AND bucket < '$day_to'))
              $filter
            UNION ALL
            SELECT bucket, events, amount FROM rollup_hour
            WHERE tenant_id = '' AND bucket >= '$hours_from' AND bucket < '$hours_to' $filter
        ) r
        GROUP BY 1 ORDER BY 1"
  q -c "EXPLAIN (ANALYZE, BUFFERS) $sql"
  echo "timings without EXPLAIN: $(timed "$sql")"
}
agg hour "one ad" "AND ad_id = 'ad-7'"
agg hour "one campaign, clicks" "AND campaign_id = 'camp-3' AND kind = 'click'"
agg hour "everything" ""
agg day "everything" ""
agg minute "one ad" "AND ad_id = 'ad-7'"
echo
echo "== /events first page for one ad"
page="SELECT * FROM events WHERE tenant_id = '' AND ad_id = 'ad-7'
      ORDER BY event_time DESC, event_id DESC LIMIT 51"
q -c "EXPLAIN (ANALYZE, BUFFERS) $page"
echo "timings without EXPLAIN: $(timed "$page")"
