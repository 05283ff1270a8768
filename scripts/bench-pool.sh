#!/usr/bin/env bash
# What striping gives: `oxmem bench-pool` reads a 64 MiB region striped (1 MiB stripes) over
# three memory nodes and a 64 MiB region on one node, in the same run, twice:
#
#   1. loopback: `oxmem up --nodes 3` (coordinator and three nodes on 127.0.0.1, sharing the
#      machine's cores and its loopback device);
#   2. namespaces: each node in its own network namespace oxp1..oxp3 behind its own veth pair,
#      rate-limited in both directions with tbf, so that every node has a link of its own, like
#      separate machines; coordinator and client in the root namespace.
#
#   sudo scripts/bench-pool.sh [SECONDS]        (seconds of reads per region, default 5)
#
# Environment: OXMEM_POOL_RATE (tbf rate of every link, both directions, default 500mbit),
# OXMEM_POOL_MTU (veth MTU, default 1500), OXMEM_BENCH_OUT (results, default target/bench),
# OXMEM_POOL_ONLY (loopback or veth: run only that part).
#
# Writes $OUT/pool-loopback.json and $OUT/pool-veth.json and prints both results and the
# striped/single-node ratios. Every process runs under timeout(1); a trap kills them, deletes
# the namespaces and the root-side addresses on any exit.
set -euo pipefail

SECS=${1:-5}
[[ $SECS =~ ^[0-9]+$ && $SECS -ge 1 && $SECS -le 120 ]] ||
    { echo "usage: $0 [SECONDS] (1..120)" >&2; exit 2; }
RATE=${OXMEM_POOL_RATE:-500mbit}
MTU=${OXMEM_POOL_MTU:-1500}
ONLY=${OXMEM_POOL_ONLY:-}
[[ -z $ONLY || $ONLY == loopback || $ONLY == veth ]] ||
    { echo "$0: OXMEM_POOL_ONLY is loopback or veth" >&2; exit 2; }
cd "$(dirname "$0")/.."
OUT=${OXMEM_BENCH_OUT:-target/bench}
NODES=3
HUB=10.89.0.1                 # coordinator, mover and client, on the root namespace's lo
COORD_PORT=7500
LOOP_PORT=7590                # coordinator of the loopback run (127.0.0.1)
ADMIN_TOKEN=oxmem-bench-admin
NODE_TOKEN=oxmem-bench-node
# tbf: RATE, a 256 KiB bucket and at most 50 ms of queue (latency) on each direction.
TBF=(burst 256kb latency 50ms)

[[ $(id -u) -eq 0 ]] || { echo "$0: needs root (network namespaces, tc)" >&2; exit 1; }
for tool in ip tc timeout curl jq; do
    command -v $tool >/dev/null || { echo "$0: needs $tool" >&2; exit 1; }
done

nice -n 19 cargo build --release -p oxmem
OXMEM=$PWD/target/release/oxmem
mkdir -p "$OUT"
LOGS=$(mktemp -d)

# Each bench-pool run: fill and check both regions, SECS of reads each, allocation and setup.
BENCH_FOR=$((2 * SECS + 90))
RUN_FOR=$((2 * BENCH_FOR + 60))     # everything else, both runs

PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
teardown_net() {
    for n in $(seq $NODES); do
        ip netns del oxp$n 2>/dev/null || true
        ip link del oxp${n}r 2>/dev/null || true      # gone with the namespace; just in case
    done
    ip addr del $HUB/32 dev lo 2>/dev/null || true
}
# Whether the links were the bottleneck: bytes sent, drops and overlimits of each tbf.
tbf_counters() {
    local n s
    ip link show oxp1r >/dev/null 2>&1 || return 0
    echo "tbf counters (oxpNr: client -> node N; oxpNn: node N -> client):"
    for n in $(seq $NODES); do
        s=$(tc -s qdisc show dev oxp${n}r 2>/dev/null | grep -o 'Sent .*overlimits [0-9]*' |
            tr -d '(' || true)
        echo "  oxp${n}r: $s"
        s=$(ip netns exec oxp$n tc -s qdisc show dev oxp${n}n 2>/dev/null |
            grep -o 'Sent .*overlimits [0-9]*' | tr -d '(' || true)
        echo "  oxp${n}n: $s"
    done
}
cleanup() {
    local rc=$?
    set +e          # tear everything down, whatever fails on the way
    ((rc == 0)) || tbf_counters
    stop_all
    teardown_net
    if ((rc != 0)); then
        for f in "$LOGS"/*.log; do
            [[ -e $f ]] || continue
            echo "--- $(basename "$f") (last lines)"; tail -n 5 "$f"
        done
    fi
    rm -rf "$LOGS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command in the background and waits for it, so that INT/TERM reach the trap at once
# (bash runs traps only between foreground commands) and the cleanup stops it too.
run() {
    "$@" &
    local pid=$!
    PIDS+=($pid)
    wait $pid
}

# Until the coordinator at $1 lists $2 healthy nodes (at most 30 s).
wait_nodes() {
    local up
    for _ in $(seq 150); do
        up=$(curl -fsS -m 2 -H "Authorization: Bearer $ADMIN_TOKEN" "$1/v1/nodes" 2>/dev/null |
            jq '[.[] | select(.health == "up")] | length' 2>/dev/null || echo 0)
        ((up >= $2)) && return 0
        sleep 0.2
    done
    echo "$0: only ${up:-0} of $2 nodes up at $1" >&2
    return 1
}

# ---------------------------------------------------------------------------------------------
# 1. Loopback
if [[ $ONLY != veth ]]; then
echo "== loopback: oxmem up --nodes $NODES, oxmem bench-pool --label loopback"
timeout $RUN_FOR "$OXMEM" up --nodes $NODES --capacity 256MiB --data-dir "$LOGS/coord-loopback" \
    --listen 127.0.0.1:$LOOP_PORT --admin-token $ADMIN_TOKEN --run-for ${RUN_FOR}s \
    >"$LOGS/up.log" 2>&1 &
PIDS+=($!)
TOKEN=
for _ in $(seq 150); do
    TOKEN=$(sed -n 's/^oxmem up: tenant token \([0-9a-f]*\).*/\1/p' "$LOGS/up.log")
    [[ -n $TOKEN ]] && break
    sleep 0.2
done
[[ -n $TOKEN ]] || { echo "$0: oxmem up printed no tenant token" >&2; exit 1; }
wait_nodes http://127.0.0.1:$LOOP_PORT $NODES
run timeout $BENCH_FOR "$OXMEM" bench-pool --coordinator http://127.0.0.1:$LOOP_PORT \
    --token "$TOKEN" --size 64MiB --stripe 1MiB --duration ${SECS}s --label loopback \
    --json "$OUT/pool-loopback.json"
stop_all
fi

# ---------------------------------------------------------------------------------------------
# 2. One namespace per node, each behind its own rate-limited veth
if [[ $ONLY != loopback ]]; then
teardown_net
ip addr add $HUB/32 dev lo
for n in $(seq $NODES); do
    ns=oxp$n
    ip netns add $ns
    ip link add oxp${n}r type veth peer name oxp${n}n netns $ns
    ip addr add 10.89.$n.1/24 dev oxp${n}r
    ip link set oxp${n}r mtu "$MTU" up
    ip -n $ns addr add 10.89.$n.2/24 dev oxp${n}n
    ip -n $ns link set lo up
    ip -n $ns link set oxp${n}n mtu "$MTU" up
    ip -n $ns route add $HUB/32 via 10.89.$n.1
    # Both directions: root -> node on the root end, node -> root on the node end.
    tc qdisc add dev oxp${n}r root tbf rate "$RATE" "${TBF[@]}"
    ip netns exec $ns tc qdisc add dev oxp${n}n root tbf rate "$RATE" "${TBF[@]}"
done
echo "veth: $NODES links of $RATE each way (tbf ${TBF[*]}), MTU $MTU; coordinator and client at $HUB"

timeout $RUN_FOR "$OXMEM" coord --listen $HUB:$COORD_PORT --data-dir "$LOGS/coord-veth" \
    --admin-token $ADMIN_TOKEN --node-token $NODE_TOKEN --mover-ip $HUB \
    >"$LOGS/coord.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
    curl -fsS -m 1 -o /dev/null -H "Authorization: Bearer $ADMIN_TOKEN" \
        http://$HUB:$COORD_PORT/v1/status 2>/dev/null && break
    sleep 0.2
done
for n in $(seq $NODES); do
    ip netns exec oxp$n timeout $RUN_FOR "$OXMEM" node --listen udp://10.89.$n.2:7447 \
        --capacity 256MiB --admin 10.89.$n.2:7547 --coordinator http://$HUB:$COORD_PORT \
        --node-token $NODE_TOKEN --name node$n --advertise 10.89.$n.2 --stats-every 1s --run-for ${RUN_FOR}s \
        >"$LOGS/node$n.log" 2>&1 &
    PIDS+=($!)
done
wait_nodes http://$HUB:$COORD_PORT $NODES
TOKEN=$(curl -fsS -m 5 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' -d '{"name":"bench","quota_bytes":1073741824}' \
    http://$HUB:$COORD_PORT/v1/tenants | jq -r .token)
echo "== veth-tbf-$RATE: oxmem bench-pool --coordinator http://$HUB:$COORD_PORT"
run timeout $BENCH_FOR "$OXMEM" bench-pool --coordinator http://$HUB:$COORD_PORT --token "$TOKEN" \
    --size 64MiB --stripe 1MiB --duration ${SECS}s --label "veth-tbf-$RATE" \
    --json "$OUT/pool-veth.json"
tbf_counters
stop_all
teardown_net
fi

# ---------------------------------------------------------------------------------------------
echo
printf '%-22s %9s %9s %9s %14s\n' run 'striped' 'one node' ratio 'reads (s / 1)'
for f in "$OUT/pool-loopback.json" "$OUT/pool-veth.json"; do
    [[ -e $f ]] || continue
    jq -r '[.label, (.striped.gbytes_per_s * 1000 | round / 1000),
            (.single_node.gbytes_per_s * 1000 | round / 1000), (.ratio * 100 | round / 100),
            "\(.striped.reads) / \(.single_node.reads)"] | @tsv' "$f" |
        awk -F'\t' '{ printf "%-22s %7.3f GB/s %5.3f GB/s %7.2fx %14s\n", $1, $2, $3, $4, $5 }'
done
echo "results in $OUT/: pool-loopback.json pool-veth.json"
