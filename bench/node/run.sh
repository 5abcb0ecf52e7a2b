#!/usr/bin/env bash
# Node binding benchmarks beside Node's own cluster, in the same run: the anchors
# ../shared/anchors/node_cluster_hello.js and node_ipc.js run once under `cluster` and once
# unchanged under rcluster (bench/node/with_rcluster.js answers require('cluster')).
# rcluster's round-robin runs twice: turned by the kernel (the default where the primary may
# load the BPF program: root) and with the primary accepting (kernelRoundRobin: false).
# Environment: DURATION (5s), CONNS (50), ROUNDS (3).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
anchors="$repo/../shared/anchors"
wrap="$repo/bench/node/with_rcluster.js"
duration=${DURATION:-5s}
conns=${CONNS:-50}
rounds=${ROUNDS:-3}

command -v node >/dev/null || { echo "node/run.sh: node is not installed" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
(cd "$repo/bindings/node" && CI=true npm ci --no-audit --no-fund </dev/null >/dev/null)

tmp=$(mktemp -d)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

echo "== node: machine: $(nproc) CPUs, kernel $(uname -r), node $(node --version), $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"

# serve NAME PORT POLICY [wrapper]: starts the anchor HTTP cluster (2 workers), waits for READY.
declare -A port_of
serve() {
    local name=$1 port=$2 policy=$3 i
    shift 3
    (cd "$anchors" && exec setsid node "$@" node_cluster_hello.js "$port" 2 "$policy") >"$tmp/$name.log" 2>&1 &
    pids+=($!)
    port_of[$name]=$port
    for ((i = 0; i < 300; i++)); do
        grep -q READY "$tmp/$name.log" && return 0
        sleep 0.1
    done
    echo "node/run.sh: $name did not start: $(tail -5 "$tmp/$name.log")" >&2
    exit 1
}
# One cluster runs at a time: each round starts every cluster in turn (every other round in
# reverse order), warms it up, measures it and stops it. They do not run side by side: on a
# 2-CPU machine a cluster that had sat idle beside another one under load measured slower
# for a while, an effect of the clusters together rather than of either (bench/RESULTS.md).
port=$((21000 + RANDOM % 5000))
names=(node_rr node_none rcluster_rr rcluster_rr_primary rcluster_shared)
# start_one NAME: serves the anchor as NAME on a port of its own.
start_one() {
    local k
    for k in "${!names[@]}"; do [[ ${names[k]} == "$1" ]] && break; done
    case $1 in
        node_rr) serve "$1" $((port + k)) rr ;;
        node_none) serve "$1" $((port + k)) none ;;
        rcluster_rr) serve "$1" $((port + k)) rr "$wrap" ;;
        rcluster_rr_primary) RCLUSTER_KERNEL_RR=0 serve "$1" $((port + k)) rr "$wrap" ;;
        rcluster_shared) serve "$1" $((port + k)) none "$wrap" ;;
    esac
}
stop_one() {
    local p=${pids[-1]} i
    kill -TERM -- "-$p" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset 'pids[-1]'
}
declare -A all_rates rate_of
for ((r = 1; r <= rounds; r++)); do
    order=("${names[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("${names[i]}"); done
    fi
    for n in "${order[@]}"; do
        start_one "$n"
        timeout 30 wrk -t1 -c"$conns" -d1s -H 'Connection: close' "http://127.0.0.1:${port_of[$n]}/" >/dev/null 2>&1 || true
        for mode in close keep; do
            hdr=()
            [[ $mode == close ]] && hdr=(-H 'Connection: close')
            out=$(timeout 60 wrk -t1 -c"$conns" -d"$duration" "${hdr[@]}" "http://127.0.0.1:${port_of[$n]}/" 2>&1 || true)
            rate=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
            errs=$(awk '/Socket errors:|Non-2xx/ { print }' <<<"$out")
            printf '   round %d %-19s %-6s %8s req/s %s\n' "$r" "$n" "$mode" "${rate:-0}" "$errs"
            all_rates[$n.$mode]+="${rate:-0} "
        done
        stop_one
    done
done

# The IPC anchor runs ROUNDS times each, alternating; the summary takes the median run of
# each figure (one run on this machine can be off by a third either way).
echo "== node: IPC (node_ipc.js 200000 20000), $rounds runs each, alternating"
declare -a n_rates r_rates n_p50s r_p50s
field() { awk -v k="$2" '{ for (i = 1; i <= NF; i++) if ($i == k) { print $(i + 1); exit } }' <<<"$1"; }
for ((r = 1; r <= rounds; r++)); do
    ipc_node=$(cd "$anchors" && timeout 120 node node_ipc.js 200000 20000 || true)
    ipc_rc=$(cd "$anchors" && timeout 120 node "$wrap" node_ipc.js 200000 20000 || true)
    echo "   run $r cluster:  $(tr '\n' ' ' <<<"$ipc_node")"
    echo "   run $r rcluster: $(tr '\n' ' ' <<<"$ipc_rc")"
    n_rates+=("$(grep -o '= [0-9]* msg/s' <<<"$ipc_node" | awk '{ print $2 }')")
    r_rates+=("$(grep -o '= [0-9]* msg/s' <<<"$ipc_rc" | awk '{ print $2 }')")
    n_p50s+=("$(field "$(grep rtt <<<"$ipc_node")" p50)")
    r_p50s+=("$(field "$(grep rtt <<<"$ipc_rc")" p50)")
done
median() { printf '%s\n' "$@" | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
# HTTP throughput: the median round of each cluster and mode, as for the IPC figures.
for k in "${!all_rates[@]}"; do read -r -a v <<<"${all_rates[$k]}"; rate_of[$k]=$(median "${v[@]}"); done
echo "== node: memory of the primary (bench/node/rss.js)"
rss_node=$(timeout 30 node "$repo/bench/node/rss.js" cluster || true)
rss_rc=$(timeout 30 node "$repo/bench/node/rss.js" rcluster || true)
echo "   $rss_node"
echo "   $rss_rc"

ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "-" }'; }
verdict() { [[ $1 == - ]] && { echo n/a; return; }; awk -v v="$1" -v l="$3" "BEGIN { print ((v $2 l) ? \"met\" : \"MISSED\") }"; }
n_rate=$(median "${n_rates[@]}")
r_rate=$(median "${r_rates[@]}")
n_p50=$(median "${n_p50s[@]}")
r_p50=$(median "${r_p50s[@]}")
rr_rr=$(ratio "${rate_of[rcluster_rr.close]:-}" "${rate_of[node_rr.close]:-}")
rr_none=$(ratio "${rate_of[rcluster_rr.close]:-}" "${rate_of[node_none.close]:-}")
keep=$(ratio "${rate_of[rcluster_rr.keep]:-}" "${rate_of[node_rr.keep]:-}")
ipc=$(ratio "$r_rate" "$n_rate")
p50=$(ratio "$r_p50" "$n_p50")

echo
echo "== node summary (2 workers, median of $rounds rounds, anchors from this same run)"
row() { printf '%-46s %12s %10s %s\n' "$@"; }
row figure value target verdict
row "new conn req/s: Node rr / Node none" "${rate_of[node_rr.close]:-} / ${rate_of[node_none.close]:-}"
row "rcluster rr is turned by" "$([[ $(id -u) == 0 ]] && echo 'the kernel (root)' || echo 'the primary (not root)')"
row "new conn req/s: rcluster rr / shared" "${rate_of[rcluster_rr.close]:-} / ${rate_of[rcluster_shared.close]:-}"
row "   rcluster rr / Node rr, new conn" "${rr_rr}x" ">= 1.8x" "$(verdict "$rr_rr" '>=' 1.8)"
row "   rcluster rr / Node none, new conn" "${rr_none}x" ">= 0.95x" "$(verdict "$rr_none" '>=' 0.95)"
row "new conn req/s: rcluster rr, primary accepting" "${rate_of[rcluster_rr_primary.close]:-}"
row "   / Node rr, / Node none" "$(ratio "${rate_of[rcluster_rr_primary.close]:-}" "${rate_of[node_rr.close]:-}")x, $(ratio "${rate_of[rcluster_rr_primary.close]:-}" "${rate_of[node_none.close]:-}")x" "(reported)"
row "keep-alive req/s: Node rr / rcluster rr" "${rate_of[node_rr.keep]:-} / ${rate_of[rcluster_rr.keep]:-}"
row "   rcluster rr / Node rr, keep-alive" "${keep}x" ">= 1.0x" "$(verdict "$keep" '>=' 1.0)"
row "IPC stream msg/s (median run): Node / rcluster" "$n_rate / $r_rate"
row "   rcluster / Node, stream" "${ipc}x" ">= 5x" "$(verdict "$ipc" '>=' 5)"
row "IPC RTT p50 us (median run): Node / rcluster" "$n_p50 / $r_p50"
row "   rcluster / Node, RTT p50" "${p50}x" "<= 1.0x" "$(verdict "$p50" '<=' 1.0)"
