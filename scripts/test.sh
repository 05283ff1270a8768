#!/usr/bin/env bash
# The one test command: what CI runs (.ci/run) and what the README tells you to run.
# On a fresh Debian machine it installs what is missing, then runs formatting, lints, the whole
# test suite (fuzz corpus replay included) and the doctests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

apt_updated=0
need_apt() { # need_apt COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return
    log "installing $2 (for $1)"
    if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# A C++ compiler builds libFuzzer for the fuzz crate.
need_apt g++ g++
# protoc builds etcd-client's gRPC code (oxmem-pool); etcd (3.4) is what the pool's etcd tests
# run against (crates/pool/tests/etcd.rs, which skip without it).
need_apt protoc protobuf-compiler
need_apt etcd etcd-server
# ip: the raw-Ethernet, namespace and fencing tests make veth pairs and network namespaces
# (they skip without it, or without root).
need_apt ip iproute2
# A font for the bench chart's test (it skips without one).
need_apt fc-list fontconfig
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt __dejavu__ fonts-dejavu-core
# The KV tier's Redis tests start a redis-server of their own (they skip without it).
need_apt redis-server redis-server

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
        log "installing $component"
        rustup component add "$component"
    fi
done

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
start=$(date +%s)

log "cargo fmt --check"
cargo fmt --all --check
(cd fuzz && cargo fmt --check)

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests (cargo nextest)"
cargo nextest run --workspace --all-targets --locked --no-fail-fast

log "doctests"
cargo test --workspace --doc --locked

log "fuzz crate builds (its corpus is replayed by crates/wire/tests/fuzz_corpus.rs above)"
cargo check --manifest-path fuzz/Cargo.toml --bins --locked

log "all passed in $(( $(date +%s) - start ))s"
