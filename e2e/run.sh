#!/usr/bin/env bash
# Browser end-to-end tests: the web UI (ui.test.mjs), adtrack's VAST
# documents read by @dailymotion/vast-client (vast.test.mjs) and the browser
# SDK used from pages on other origins (sdk.test.mjs).
#
# With ADTRACK_URL set, tests the server found there. Otherwise starts a fresh
# adtrack (target/debug/adtrack, or ADTRACK_BIN) on a free port with its own
# database, Redis prefix, spool directory and admin token, tests it, then
# stops it and removes what it created. For the SDK's not-listed-origin
# check it also starts a second instance (--role api, same database and
# prefix) with CORS_ORIGINS naming only the test's publisher page origin. Needs Postgres and Redis running
# (DATABASE_URL's server, REDIS_URL).
#
#   bash e2e/run.sh
#   ADTRACK_URL=http://127.0.0.1:8080 bash e2e/run.sh
set -euo pipefail
cd "$(dirname "$0")"
E2E_DIR=$(pwd)
ROOT=$(cd .. && pwd)

say() { printf '[e2e] %s\n' "$*"; }

apt_install() {
  say "installing $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium}
export CHROMIUM_PATH
[ -x "$CHROMIUM_PATH" ] || apt_install chromium
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
[ -d node_modules/playwright-core ] && [ -d node_modules/@dailymotion/vast-client ] ||
  npm ci --no-audit --no-fund --loglevel=error

if [ -n "${ADTRACK_URL:-}" ]; then
  status=0
  node "$E2E_DIR/ui.test.mjs" || status=1
  node "$E2E_DIR/vast.test.mjs" || status=1
  node "$E2E_DIR/sdk.test.mjs" || status=1
  exit "$status"
fi

BIN=${ADTRACK_BIN:-$ROOT/target/debug/adtrack}
if [ ! -x "$BIN" ]; then
  say "building $BIN"
  (cd "$ROOT" && cargo build --locked --bin adtrack)
fi

PG_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/adtrack}
PG_BASE=${PG_URL%/*}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
RUN_ID=$(date +%s)-$$
DB_NAME="adtrack_e2e_${RUN_ID//-/_}"
PREFIX="adtrack-e2e-$RUN_ID"
SPOOL=$(mktemp -d -t adtrack-e2e-spool.XXXXXX)
LOG=$(mktemp -t adtrack-e2e-server.XXXXXX.log)
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
PORT=$(free_port)
STRICT_PORT=$(free_port)
SDK_PAGE_PORT=$(free_port)
STRICT_LOG=$(mktemp -t adtrack-e2e-strict.XXXXXX.log)
STRICT_SPOOL=$(mktemp -d -t adtrack-e2e-strict-spool.XXXXXX) # one process per SPOOL_DIR
ADMIN_TOKEN=${ADMIN_TOKEN:-e2e-$RUN_ID-$RANDOM$RANDOM}
export ADMIN_TOKEN

SERVER_PID=
STRICT_PID=
cleanup() {
  if [ -n "$STRICT_PID" ] && kill -0 "$STRICT_PID" 2>/dev/null; then
    kill -TERM "$STRICT_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$STRICT_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$STRICT_PID" 2>/dev/null || true
  fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  if command -v psql >/dev/null; then
    psql "$PG_BASE/postgres" -qc "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  if command -v redis-cli >/dev/null; then
    redis-cli -u "$REDIS_URL" --scan --pattern "{$PREFIX}:*" 2>/dev/null |
      xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  fi
  rm -rf "$SPOOL"
  rm -f "$STRICT_LOG"
  rm -rf "$STRICT_SPOOL"
}
trap cleanup EXIT

say "starting $BIN on port $PORT (database $DB_NAME, Redis prefix $PREFIX)"
HOST=127.0.0.1 PORT=$PORT DATABASE_URL="$PG_BASE/$DB_NAME" REDIS_URL="$REDIS_URL" \
  REDIS_PREFIX="$PREFIX" SPOOL_DIR="$SPOOL" ADMIN_TOKEN="$ADMIN_TOKEN" \
  "$BIN" serve >"$LOG" 2>&1 &
SERVER_PID=$!

ready=
for _ in $(seq 1 120); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
  if node -e 'fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' \
    "http://127.0.0.1:$PORT/ready" 2>/dev/null; then ready=1; break; fi
  sleep 0.5
done
if [ -z "$ready" ]; then
  say "the server did not become ready; its log:"
  tail -n 50 "$LOG"
  echo "0 passed, 1 failed"
  exit 1
fi

say "starting a second instance on port $STRICT_PORT, CORS_ORIGINS=http://127.0.0.1:$SDK_PAGE_PORT"
HOST=127.0.0.1 PORT=$STRICT_PORT DATABASE_URL="$PG_BASE/$DB_NAME" REDIS_URL="$REDIS_URL" \
  REDIS_PREFIX="$PREFIX" SPOOL_DIR="$STRICT_SPOOL" CORS_ORIGINS="http://127.0.0.1:$SDK_PAGE_PORT" \
  "$BIN" serve --role api >"$STRICT_LOG" 2>&1 &
STRICT_PID=$!
ready=
for _ in $(seq 1 120); do
  if ! kill -0 "$STRICT_PID" 2>/dev/null; then break; fi
  if node -e 'fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' \
    "http://127.0.0.1:$STRICT_PORT/ready" 2>/dev/null; then ready=1; break; fi
  sleep 0.5
done
if [ -z "$ready" ]; then
  say "the second instance did not become ready; its log:"
  tail -n 50 "$STRICT_LOG"
  echo "0 passed, 1 failed"
  exit 1
fi

OUT=$(mktemp -t adtrack-e2e-out.XXXXXX)
status=0
for test in ui vast sdk; do
  set +e
  ADTRACK_URL="http://127.0.0.1:$PORT" ADTRACK_STRICT_URL="http://127.0.0.1:$STRICT_PORT" \
    SDK_PAGE_PORT="$SDK_PAGE_PORT" node "$E2E_DIR/$test.test.mjs" | tee "$OUT"
  one=${PIPESTATUS[0]}
  set -e
  if [ "$one" -ne 0 ]; then
    status=$one
    say "server log (last 40 lines):"
    tail -n 40 "$LOG"
    [ "$test" = sdk ] && { say "second instance's log (last 20 lines):"; tail -n 20 "$STRICT_LOG"; }
    tail -n 1 "$OUT" # the summary line again, last
  fi
done
rm -f "$LOG" "$OUT"
exit "$status"
