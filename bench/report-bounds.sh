#!/usr/bin/env bash
# Reports against ingest (SPEC invariant 8): starts an adtrack binary on a
# scratch database holding 200,000 raw events of one experiment (two
# variants, 50,000 users), then measures
#   - one experiment summary;
#   - GET /ads alone, and while 32 clients ask for the summary for 15 s;
#   - GET /ads while 32 clients list a type no event has (`/events?type=play`,
#     which walks the time index until REPORT_TIMEOUT cuts it).
# Run it once per binary to compare two builds on the same machine:
#
#   bench/report-bounds.sh target/debug/adtrack
#   bench/report-bounds.sh /path/to/older/adtrack
#
# The events are written with SQL, not through the pipeline; the rollups the
# batch statement would have written for them are filled the way migration
# 0009 fills them (skipped on a build without that migration).
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug/adtrack}"
base="${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
id="adtrack_report_bounds_$$"
db="$base/$id"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
DATABASE_URL="$db" REDIS_PREFIX="$id" SPOOL_DIR="$work/spool" PORT="$port" HOST=127.0.0.1 \
  RUST_LOG=warn "$bin" serve >"$work/server.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  psql -qX "$base/postgres" -c "DROP DATABASE IF EXISTS \"$id\" WITH (FORCE)" >/dev/null
  redis-cli --scan --pattern "{$id}*" | xargs -r redis-cli DEL >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 1 100); do curl -sf "$url/health" >/dev/null && break; sleep 0.2; done

psql -qX "$db" -c "INSERT INTO events (event_id, kind, ad_id, user_id, variant, experiment_id, event_time, received_at)
  SELECT gen_random_uuid(), CASE WHEN i % 10 = 0 THEN 'conversion' ELSE 'impression' END, 'ad-x',
         'user-' || (i % 50000), CASE WHEN i % 2 = 0 THEN 'control' ELSE 'b' END, 'exp-bench',
         now() - (i % 3600) * interval '1 second', now()
  FROM generate_series(1, 200000) i" -c "ANALYZE events"
if psql -qXtA "$db" -c "SELECT to_regclass('rollup_experiment') IS NOT NULL" | grep -q t; then
  sed -n '/^-- Fill both/,/^-- The summary read/p' migrations/0009_bounded_reports.sql | psql -qX "$db"
fi

echo "== the summary"
curl -s "$url/experiments/exp-bench/summary" | head -c 200; echo
for _ in 1 2 3; do curl -s -o /dev/null -w "%{http_code} %{time_total}s\n" "$url/experiments/exp-bench/summary"; done
echo "== /ads alone"
hey -n 300 -c 1 "$url/ads" | grep -E "Average|99%"
for report in "experiments/exp-bench/summary" "events?type=play&limit=1000"; do
  echo "== /ads while 32 clients ask for /$report"
  hey -z 15s -c 32 "$url/$report" >"$work/reports.txt" &
  h=$!
  sleep 2
  hey -n 300 -c 1 "$url/ads" | grep -E "Average|99%"
  wait "$h"
  echo "   the reports:"
  grep -E "Requests/sec|Average|99% in|^ *\[[0-9]+\]" "$work/reports.txt"
done
