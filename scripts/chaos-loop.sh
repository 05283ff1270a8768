#!/usr/bin/env bash
# Runs the chaos test (crates/cli/tests/chaos.rs, debug build, the bounded CI schedule) again
# and again with seeds from the clock, from a copy of the binaries (so the tree can be rebuilt
# meanwhile), and keeps the log of every failing run:
#
#   scripts/chaos-loop.sh RUNS [SECONDS] [LOG_DIR]     (default 75 s each, logs in target/chaos-loop)
#
# Prints one line per run (seed, pass or fail) and a count at the end. Run as root for partitions.
set -euo pipefail
RUNS=${1:?usage: $0 RUNS [SECONDS] [LOG_DIR]}
SECS=${2:-75}
cd "$(dirname "$0")/.."
LOGS=${3:-target/chaos-loop}
mkdir -p "$LOGS"
cargo build -q -p oxmem --bins --tests
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
cp target/debug/oxmem "$BIN/oxmem"
TEST=$(ls -t target/debug/deps/chaos-* | grep -v '\.d$' | head -1)
cp "$TEST" "$BIN/chaos"
passed=0
for i in $(seq 1 "$RUNS"); do
    seed=$(date +%s%N)
    log="$LOGS/$seed.log"
    if OXMEM_TEST_BIN="$BIN/oxmem" OXMEM_CHAOS_SECS=$SECS OXMEM_CHAOS_SEED=$seed \
        OXMEM_TEST_ECHO_STDERR=1 timeout $((SECS + 240)) "$BIN/chaos" --include-ignored \
        --nocapture >"$log" 2>&1 && grep -q '^bytes verified' "$log"; then
        passed=$((passed + 1))
        echo "run $i seed $seed: passed ($(grep -o 'bytes verified [0-9]*' "$log"))"
        rm -f "$log"
    else
        echo "run $i seed $seed: FAILED, log $log"
    fi
done
echo "$passed of $RUNS runs passed"
