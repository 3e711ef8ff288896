#!/usr/bin/env bash
# Runs schemathesis (`pip install schemathesis`) against a live `model-runner api` on SQLite with
# auth configured: every check, bounded in time. Fails on any 5xx or schema mismatch.
#
#   cargo build -p model-runner && services/tests/schemathesis.sh [path/to/model-runner]
#
# Env: PORT (default 18181), MAX_EXAMPLES (50), MAX_TIME (240 s), SEED (1).
# Requests may take up to the server's own 30 s limit (it answers 503 `timeout` after that), so the
# client waits 35 s rather than schemathesis's default 10 s: a 100,000-run submission is a valid
# request that a debug build on a busy 2-core machine can take several seconds to store.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$here/../../target}/debug/model-runner}
port=${PORT:-18181}
dir=$(mktemp -d)
token="st-write-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"

MODEL_RUNNER_API_TOKENS="$token" MODEL_RUNNER_API_READ_TOKENS="st-read-token" \
  "$bin" --store "sqlite://$dir/runs.db" --queue memory:// --sink memory:// \
  api --api-addr "127.0.0.1:$port" >"$dir/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

deadline=$((SECONDS + 60))
until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    echo "the API did not come up:" >&2
    cat "$dir/server.log" >&2
    exit 1
  fi
  sleep 0.2
done

schemathesis --config-file "$here/schemathesis.toml" run "http://127.0.0.1:$port/openapi.json" \
  --checks all \
  -H "Authorization: Bearer $token" \
  --max-examples "${MAX_EXAMPLES:-50}" \
  --max-time "${MAX_TIME:-240}" \
  --request-timeout 35 \
  --seed "${SEED:-1}" \
  --no-color
