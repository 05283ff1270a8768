#!/usr/bin/env bash
# Benchmarks oxmem between two network namespaces joined by a veth pair, over UDP and over raw
# Ethernet, with the baselines (UDP ping-pong, iperf3, Mooncake over TCP) on the same path.
#
#   sudo scripts/bench-netns.sh [SECONDS_PER_POINT]      (default 1)
#
# Environment: OXMEM_BENCH_OUT (results directory, default target/bench), OXMEM_BENCH_MTU
# (veth MTU, default 1500).
#
# Namespace oxbA (10.77.0.1, vethA) runs the node (udp://10.77.0.1:7447 and eth://vethA), the
# UDP echo (oxmem bench-echo, port 7448), `iperf3 -s -p 5201` and a Mooncake target when they
# are installed. Namespace oxbB (10.77.0.2, vethB) runs `oxmem bench --suite` twice:
# veth-udp and veth-eth. Writes JSON and PNG under the results directory and prints the ratio
# of raw-Ethernet to UDP bandwidth for 1 MiB reads (target: >= 0.8). Everything it starts is
# bounded with timeout(1) and torn down on exit.
set -euo pipefail

SECS=${1:-1}
[[ $SECS =~ ^[0-9]+$ && $SECS -ge 1 ]] || { echo "usage: $0 [SECONDS_PER_POINT]" >&2; exit 2; }
MTU=${OXMEM_BENCH_MTU:-1500}
cd "$(dirname "$0")/.."
OUT=${OXMEM_BENCH_OUT:-target/bench}
NSA=oxbA NSB=oxbB IPA=10.77.0.1 IPB=10.77.0.2

[[ $(id -u) -eq 0 ]] || { echo "$0: needs root (network namespaces)" >&2; exit 1; }
for tool in ip timeout; do
    command -v $tool >/dev/null || { echo "$0: needs $tool" >&2; exit 1; }
done

# The chart needs a TrueType font; iperf3 is a baseline. Best effort on Debian.
if command -v apt-get >/dev/null; then
    need=()
    [[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need+=(fonts-dejavu-core)
    command -v iperf3 >/dev/null || need+=(iperf3)
    if ((${#need[@]})); then
        echo "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null || true
    fi
fi

cargo build --release -p oxmem
OXMEM=$PWD/target/release/oxmem
mkdir -p "$OUT"
LOGS=$(mktemp -d)

# The suite has 24 points, each measured for SECS after a 0.2 s warm-up, then the baselines
# (ping-pong, iperf3, two Mooncake points: at least 2 s each, plus start-up). Twice.
PER_RUN=$((24 * (SECS + 1) + 4 * (SECS + 2) + 60))
RUN_FOR=$((2 * PER_RUN + 60))

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del $NSA 2>/dev/null || true
    ip netns del $NSB 2>/dev/null || true
    rm -rf "$LOGS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns del $NSA 2>/dev/null || true
ip netns del $NSB 2>/dev/null || true
ip netns add $NSA
ip netns add $NSB
ip link add vethA netns $NSA type veth peer name vethB netns $NSB
ip -n $NSA addr add $IPA/24 dev vethA
ip -n $NSB addr add $IPB/24 dev vethB
for ns in $NSA $NSB; do
    ip -n $ns link set lo up
done
ip -n $NSA link set vethA mtu "$MTU" up
ip -n $NSB link set vethB mtu "$MTU" up
MAC_A=$(ip -n $NSA -o link show vethA | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
echo "veth: $IPA ($MAC_A, vethA in $NSA) <-> $IPB (vethB in $NSB), MTU $MTU"

inA() { ip netns exec $NSA "$@"; }
inB() { ip netns exec $NSB "$@"; }

inA timeout $RUN_FOR "$OXMEM" node --listen udp://$IPA:7447 --listen eth://vethA \
    --capacity 256MiB --open-window 0:256MiB --max-datagram 65000 --run-for ${RUN_FOR}s \
    >"$LOGS/node.log" 2>&1 &
PIDS+=($!)
inA timeout $RUN_FOR "$OXMEM" bench-echo --listen $IPA:7448 --run-for ${RUN_FOR}s \
    >"$LOGS/echo.log" 2>&1 &
PIDS+=($!)
if command -v iperf3 >/dev/null; then
    inA timeout $RUN_FOR iperf3 -s -B $IPA -p 5201 >"$LOGS/iperf3.log" 2>&1 &
    PIDS+=($!)
fi

# Mooncake: the real executable inside the Python package (pip's bin/ entry is a wrapper).
MC_ARGS=()
MC_BENCH=${OXMEM_MOONCAKE_BENCH:-}
if [[ -z $MC_BENCH ]] && command -v python3 >/dev/null; then
    dir=$(python3 -c "import importlib.util as u, os; s = u.find_spec('mooncake'); print(os.path.dirname(s.origin) if s and s.origin else '')" 2>/dev/null || true)
    [[ -n $dir && -x $dir/transfer_engine_bench ]] && MC_BENCH=$dir/transfer_engine_bench
fi
if [[ -n $MC_BENCH ]]; then
    inA timeout $RUN_FOR "$MC_BENCH" --mode=target --protocol=tcp \
        --metadata_server=P2PHANDSHAKE --local_server_name=$IPA:17500 \
        --buffer_size=268435456 >"$LOGS/mooncake.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do
        seg=$(grep -o 'P2P handshake, listening on [0-9.]*:[0-9]*' "$LOGS/mooncake.log" 2>/dev/null | awk '{print $NF}' || true)
        [[ -n $seg ]] && break
        sleep 0.2
    done
    if [[ -n ${seg:-} ]]; then
        echo "Mooncake target segment: $seg"
        MC_ARGS=(--mooncake-segment "$seg")
    else
        echo "Mooncake target did not start:"; tail -n 3 "$LOGS/mooncake.log" || true
    fi
else
    echo "Mooncake transfer_engine_bench not found (pip install mooncake-transfer-engine-non-cuda)"
fi
sleep 1
inB ping -c 1 -W 2 $IPA >/dev/null 2>&1 || echo "warning: $IPA does not answer ping"

run_bench() { # LABEL TARGET
    echo "== $1: oxmem bench --suite --target $2"
    inB timeout $PER_RUN "$OXMEM" bench --suite --point ${SECS}s --target "$2" --label "$1" \
        --baseline-host $IPA "${MC_ARGS[@]}" --json "$OUT/$1.json" --plot "$OUT/$1.png"
}
run_bench veth-udp udp://$IPA:7447
run_bench veth-eth eth://vethB/$MAC_A

# Best 1 MiB read bandwidth of a (pretty-printed) report.
read_1mib() {
    awk -F': *' '
        /"op":/ { op = $2; gsub(/[",]/, "", op) }
        /"size":/ { size = $2 + 0 }
        /"gbytes_per_s":/ { v = $2 + 0; if (op == "read" && size == 1048576 && v > best) best = v }
        END { printf "%.4f", best }' "$1"
}
udp=$(read_1mib "$OUT/veth-udp.json")
eth=$(read_1mib "$OUT/veth-eth.json")
awk -v u="$udp" -v e="$eth" 'BEGIN {
    r = (u > 0) ? e / u : 0
    printf "1 MiB reads: raw Ethernet %.3f GB/s, UDP %.3f GB/s, ratio %.2f (target >= 0.8: %s)\n",
        e, u, r, (r >= 0.8) ? "met" : "MISSED"
}'
echo "results in $OUT/: veth-udp.json veth-udp.png veth-eth.json veth-eth.png"
