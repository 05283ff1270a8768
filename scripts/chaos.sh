#!/usr/bin/env bash
# The chaos test (crates/cli/tests/chaos.rs) for a long run, in release mode:
#
#   scripts/chaos.sh [SECONDS] [SEED]      (default 600 s, a seed from the clock)
#
# Run as root to include network partitions (each node in its own namespace).
set -euo pipefail
SECS=${1:-600}
[[ $SECS =~ ^[0-9]+$ && $SECS -ge 1 ]] || { echo "usage: $0 [SECONDS] [SEED]" >&2; exit 2; }
cd "$(dirname "$0")/.."
export OXMEM_CHAOS_SECS=$SECS
[[ -n ${2:-} ]] && export OXMEM_CHAOS_SEED=$2
exec nice -n 10 cargo test --release -p oxmem --test chaos -- --nocapture
