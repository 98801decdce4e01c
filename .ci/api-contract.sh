#!/usr/bin/env bash
# The API against its own OpenAPI document: starts the adtrack binary with a
# fresh database and Redis prefix, runs schemathesis (every check but
# positive_data_acceptance, see docs/API.md "API contract"), then cleans up.
#
#   .ci/api-contract.sh [path/to/adtrack]    # default target/debug/adtrack
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-target/debug/adtrack}"
st_version="4.32.5"
tools="${HOME}/.cache/adtrack/tools"
base="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
if [ ! -x "$tools/bin/st" ] || ! "$tools/bin/pip" show schemathesis 2>/dev/null | grep -q "^Version: $st_version$"; then
  [ -x "$tools/bin/pip" ] || python3 -m venv "$tools"
  "$tools/bin/pip" install -q "schemathesis==$st_version"
fi

id="contract_$$_$RANDOM"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
spool=$(mktemp -d)
token="contract-admin-token-$RANDOM$RANDOM"
DATABASE_URL="$base/adtrack_$id" REDIS_PREFIX="$id" SPOOL_DIR="$spool" PORT="$port" HOST=127.0.0.1 \
  ADMIN_TOKEN="$token" RUST_LOG=warn "$bin" serve >"$spool.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  psql "$base/postgres" -qc "DROP DATABASE IF EXISTS \"adtrack_$id\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "{$id}*" | xargs -r redis-cli DEL >/dev/null 2>&1 || true
  rm -rf "$spool" "$spool.log"
}
trap cleanup EXIT
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.5
done

# /live is an endless event stream: it has no response to validate.
"$tools/bin/st" run "http://127.0.0.1:$port/openapi.json" \
  --checks all --exclude-checks positive_data_acceptance \
  --exclude-path /live \
  -H "Authorization: Bearer $token" \
  --max-examples "${CONTRACT_EXAMPLES:-50}" \
  --seed "${CONTRACT_SEED:-20261202}" \
  --no-color
if grep -qiE 'panicked|internal' "$spool.log"; then
  echo "the server logged a panic or an internal error:" >&2
  grep -iE 'panicked|internal' "$spool.log" >&2
  exit 1
fi
