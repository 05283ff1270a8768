#!/usr/bin/env bash
# Sustained multi-client load: a coordinator and 3 memory node processes on loopback, 4
# concurrent `oxmem bench` clients (3 readers, one per node, and 1 writer) for SECONDS.
# Reports each client's throughput and p50/p99/p999 (from the bench JSON) and the resident
# memory (VmRSS) of every node process and of the coordinator at start and end.
#
#   scripts/load.sh [SECONDS]        (default 60; builds the release binary first)
set -euo pipefail
SECONDS_RUN=${1:-60}
cd "$(dirname "$0")/.."
nice -n 10 cargo build --release -q -p oxmem
BIN=target/release/oxmem
DIR=$(mktemp -d /tmp/oxmem-load.XXXXXX)
BASE=$((20000 + RANDOM % 20000))
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo gone; }

"$BIN" coord --listen "127.0.0.1:$BASE" --data-dir "$DIR/coord" >"$DIR/coord.log" 2>&1 &
COORD=$!; PIDS+=("$COORD")
NODES=()
for i in 0 1 2; do
  "$BIN" node --listen "udp://127.0.0.1:$((BASE + 1 + i))" --capacity 256MiB \
    --open-window 0:256MiB >"$DIR/node$i.log" 2>&1 &
  NODES+=($!); PIDS+=($!)
done
sleep 2
declare -A START
START[coord]=$(rss "$COORD")
for i in 0 1 2; do START[node$i]=$(rss "${NODES[$i]}"); done

CLIENTS=()
for i in 0 1 2; do
  "$BIN" bench --target "udp://127.0.0.1:$((BASE + 1 + i))" --op read --size 4KiB --depth 32 \
    --duration "${SECONDS_RUN}s" --json "$DIR/read$i.json" >"$DIR/read$i.log" 2>&1 &
  CLIENTS+=($!)
done
"$BIN" bench --target "udp://127.0.0.1:$((BASE + 1))" --op write --size 64KiB --depth 8 \
  --duration "${SECONDS_RUN}s" --json "$DIR/write0.json" >"$DIR/write0.log" 2>&1 &
CLIENTS+=($!)
FAIL=0
for c in "${CLIENTS[@]}"; do wait "$c" || FAIL=1; done

echo "load: ${SECONDS_RUN}s, 3 nodes + coordinator, 4 concurrent bench clients (logs in $DIR)"
for f in read0 read1 read2 write0; do
  python3 - "$DIR/$f.json" "$f" <<'PY' || { echo "$2: no JSON"; FAIL=1; }
import json, sys
d = json.load(open(sys.argv[1]))
for p in d["measurements"]:
    print(f"  {sys.argv[2]:7} {p['op']} {p['size']} B depth {p['depth']}: "
          f"{p['ops_per_s']:.0f} ops/s, {p['gbytes_per_s']:.3f} GB/s, p50 {p['p50_us']:.0f} us, "
          f"p99 {p['p99_us']:.0f} us, p999 {p['p999_us']:.0f} us, errors {p['errors']}")
PY
done
echo "  VmRSS (KiB)  start -> end"
echo "  coordinator  ${START[coord]} -> $(rss "$COORD")"
for i in 0 1 2; do echo "  node$i        ${START[node$i]} -> $(rss "${NODES[$i]}")"; done
exit $FAIL
