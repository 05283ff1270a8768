#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while on the stable toolchain, then merges into the committed
# seed corpus only the inputs that add coverage (named seeds are kept as they are).
#
#   scripts/fuzz.sh TARGET SECONDS      e.g. scripts/fuzz.sh frame_parser 60
#
# Targets are in fuzz/fuzz_targets/. A crash leaves its input in fuzz/artifacts/TARGET/ and
# fails the script; replay it with `cargo fuzz run TARGET --sanitizer none ARTIFACT` from fuzz/.
# No sanitizer: the crates forbid unsafe code, and ASan needs a nightly toolchain.
set -euo pipefail

usage="usage: scripts/fuzz.sh TARGET SECONDS"
target=${1:?$usage}
seconds=${2:?$usage}

cd "$(dirname "$0")/../fuzz"
if [ ! -f "fuzz_targets/$target.rs" ]; then
    echo "no fuzz target '$target' (have: $(ls fuzz_targets | sed 's/\.rs$//' | tr '\n' ' '))" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seeds="corpus/$target"
found="target/new-corpus/$target"
mkdir -p "$seeds" "$found"

# New inputs go to the first directory (ignored by git); the seeds are read as well.
cargo fuzz run "$target" --sanitizer none "$found" "$seeds" -- -max_total_time="$seconds"

before=$(find "$seeds" -type f | wc -l)
cargo fuzz run "$target" --sanitizer none "$seeds" "$found" -- -merge=1 2>&1 | grep -E '^MERGE-OUTER: [0-9]+ new files' || true
after=$(find "$seeds" -type f | wc -l)
echo "fuzz.sh: $target ran ${seconds}s; corpus $before -> $after files"
