#!/usr/bin/env bash
# Fuzzes the coordinator's HTTP API with schemathesis against crates/pool/openapi.yaml:
# starts `oxmem up` (2 nodes of 64 MiB) on a free loopback port with known tokens, runs
# schemathesis with every check (`--checks all`), once with the admin token and once with the
# tenant token `oxmem up` prints, SECONDS each (default 120), prints the summaries, and stops
# everything on exit. Not part of scripts/test.sh (it takes minutes).
#
#   scripts/fuzz-api.sh [SECONDS]
#
# Env: OXMEM (the binary; default target/release/oxmem, built if missing), SEED (schemathesis
# seed), WORKERS (schemathesis workers, default 1: parallel workers share the one tenant, so one
# worker's fuzzed `DELETE /v1/regions/7` frees another's freshly created region 7 and reads as
# "created resource not found"), KEEP=1 (keep the work directory: logs, NDJSON reports).
# Exit status: 0 when both runs pass, 1 when either found a failure.
set -euo pipefail

SECONDS_EACH=${1:-120}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

if ! command -v schemathesis >/dev/null 2>&1; then
    echo "fuzz-api: installing schemathesis" >&2
    python3 -m pip install --quiet schemathesis
fi
schemathesis --version

OXMEM=${OXMEM:-$ROOT/target/release/oxmem}
if [ ! -x "$OXMEM" ]; then
    nice -n 10 cargo build --release -p oxmem
fi

WORK=$(mktemp -d -t oxmem-fuzz-api.XXXXXX)
UP_PID=
cleanup() {
    if [ -n "$UP_PID" ] && kill -0 "$UP_PID" 2>/dev/null; then
        # `oxmem up` stops its nodes when it exits (they exit with their parent).
        kill "$UP_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$UP_PID" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "fuzz-api: logs and reports in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT INT TERM

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADMIN=fuzz-admin-$RANDOM$RANDOM
URL=http://127.0.0.1:$PORT

"$OXMEM" up --nodes 2 --capacity 64MiB --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
    --admin-token "$ADMIN" --run-for "$((2 * SECONDS_EACH + 300))s" >"$WORK/up.log" 2>&1 &
UP_PID=$!

TENANT=
for _ in $(seq 100); do
    TENANT=$(sed -n 's/^oxmem up: tenant token \([0-9a-f]*\)$/\1/p' "$WORK/up.log")
    [ -n "$TENANT" ] && break
    kill -0 "$UP_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$TENANT" ]; then
    echo "fuzz-api: oxmem up did not start:" >&2
    cat "$WORK/up.log" >&2
    exit 1
fi
echo "fuzz-api: coordinator $URL, $SECONDS_EACH s per token"

# Outcomes the API documents that schemathesis's defaults call failures:
# - POST /v1/regions: 507 out_of_capacity (e.g. 3 replicas on 2 nodes) is not a server fault,
#   and 400 is the answer to a size × replicas beyond the pool's capacity (known only at run
#   time, so the schema cannot bound it).
# - POST /v1/tenants: a taken name is 400 bad_request (the API has no conflict code).
# - /v1/regions/{id} and /v1/regions/{id}/attach: closing a session (or its lease running out:
#   schemathesis never heartbeats, and a session lives 10 s without one) frees its regions,
#   which schemathesis's "created resource not found" check does not know: session, alloc,
#   close session (or 10 s), then GET or DELETE of the region is 404 unknown_region, and an
#   attach with the expired session 404 unknown_session, as they should be.
cat >"$WORK/schemathesis.toml" <<'EOF'
[[operations]]
include-path = "/v1/regions"
include-method = "POST"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "507"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "507"]

[[operations]]
include-path = "/v1/tenants"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403"]

[[operations]]
include-path = "/v1/regions/{id}"
checks.ensure_resource_availability.enabled = false

[[operations]]
include-path = "/v1/regions/{id}/attach"
checks.ensure_resource_availability.enabled = false
EOF

status=0
for who in admin tenant; do
    token=$ADMIN
    [ "$who" = tenant ] && token=$TENANT
    echo
    echo "=== fuzz-api: $who token ==="
    args=(run "$ROOT/crates/pool/openapi.yaml" --url "$URL"
        -H "Authorization: Bearer $token" --checks all --max-time "$SECONDS_EACH"
        --workers "${WORKERS:-1}"
        --report ndjson --report-dir "$WORK/report-$who")
    [ -n "${SEED:-}" ] && args+=(--seed "$SEED")
    # --max-time bounds the phases; the timeout only catches a hang.
    if ! timeout "$((SECONDS_EACH + 120))" schemathesis --config-file "$WORK/schemathesis.toml" \
        "${args[@]}" >"$WORK/$who.txt" 2>&1; then
        status=1
    fi
    # The failures, if any, then the summary.
    sed -n '/^=* FAILURES =*$/,/^=* WARNINGS =*$/p' "$WORK/$who.txt" | sed '$d'
    sed -n '/^=* SUMMARY =*$/,$p' "$WORK/$who.txt"
done

if ! curl -sf -o /dev/null "$URL/metrics"; then
    echo "fuzz-api: the coordinator no longer answers" >&2
    status=1
fi
if ! kill -0 "$UP_PID" 2>/dev/null; then
    echo "fuzz-api: oxmem up died during the runs:" >&2
    tail -20 "$WORK/up.log" >&2
    status=1
fi
exit $status
