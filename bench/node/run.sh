#!/usr/bin/env bash
# Node binding benchmarks beside Node's own cluster, in the same run: the anchors
# ../shared/anchors/node_cluster_hello.js and node_ipc.js run once under `cluster` and once
# unchanged under rcluster (bench/node/with_rcluster.js answers require('cluster')).
# rcluster's round-robin runs twice: the default (one socket every worker accepts from, one
# connection a turn, shares kept level, an idle worker whose turn it is first) and with the
# primary accepting (kernelRoundRobin: false).
# Every HTTP figure has its latency beside it (p50, p99, p99.9 from wrk's own histogram), and
# the IPC round trip its p50 and p99 beside those of Node's own process.send.
# Then the tail section, the workload of the tail-latency targets: the anchor doing WORK loop
# iterations per request (node_cluster_hello.js's fourth argument), a new connection per
# request, at each of TAIL_CONNS connections: req/s, latency and the spread over the workers
# (max/min of the requests each answered, counted from the bodies), for Node none and rr and
# rcluster's rr (the default: as shared, and an idle worker whose turn it is takes the next
# connection first), shared (SCHED_NONE: one socket, one connection per turn, shares kept
# level), rr in strict turns (strictTurns: the kernel's turns as root) and rr with the
# primary accepting.
# Each cluster is measured after WARMUP of the same load: a Node worker serves 30-40 % fewer
# requests in its first second than from its third on (start-up work such as V8's compiling of
# the hot code), and how soon it gets there varies from start to start (bench/RESULTS.md).
# Environment: DURATION (5s), CONNS (50), ROUNDS (3), WORK (20000), TAIL_CONNS ("50 200"),
# WARMUP (3s), IPC_MSGS (1000000 messages in the IPC anchor's stream: at 200000 rcluster's
# run lasted 0.2 s and its start, slower than the rest, weighed on the figure), TAIL_ONLY
# (unset; 1: the tail section alone).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
anchors="$repo/../shared/anchors"
wrap="$repo/bench/node/with_rcluster.js"
duration=${DURATION:-5s}
conns=${CONNS:-50}
rounds=${ROUNDS:-3}
work=${WORK:-20000}
warmup=${WARMUP:-3s}
ipc_msgs=${IPC_MSGS:-1000000}
tail_conns=${TAIL_CONNS:-50 200}
tail_only=${TAIL_ONLY:-}

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

# wrk scripts. lat.lua prints the latency percentiles at the end (no per-request cost);
# count.lua (bench/count.lua) also counts the answers per worker (the pid in the anchor's
# body), a Lua call per response, so it is used only where the spread is reported (the tail
# section, for all alike).
cat >"$tmp/lat.lua" <<'LUA'
function done(summary, latency, requests)
  io.write(string.format("latency-us: p50 %d p99 %d p99.9 %d\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
LUA
# lat OUT: "p50 p99 p99.9" in ms from a wrk output with lat.lua's or count.lua's line.
lat() { awk '/^latency-us:/ { printf "%.2f %.2f %.2f", $3 / 1000, $5 / 1000, $7 / 1000 }' <<<"$1"; }
# conns_split PORT: the open connections to PORT per process, fewest first ("23/27"), from ss:
# how a keep-alive run's connections were spread over the workers (nothing per request).
conns_split() {
    ss -tnpH state established "( sport = :$1 )" 2>/dev/null | grep -o 'pid=[0-9]*' | sort | uniq -c \
        | awk '{ print $1 }' | sort -n | paste -sd/
}

# serve NAME PORT POLICY [wrapper]: starts the anchor HTTP cluster (2 workers), waits for READY.
# ITERS (environment, 0 unless set) is the anchor's loop iterations per request.
declare -A port_of
serve() {
    local name=$1 port=$2 policy=$3 i
    shift 3
    # Emptied first: the READY of this name's last run must not pass for this one's.
    : >"$tmp/$name.log"
    (cd "$anchors" && exec setsid node "$@" node_cluster_hello.js "$port" 2 "$policy" "${ITERS:-0}") >"$tmp/$name.log" 2>&1 &
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
names=(node_rr node_none rcluster_rr rcluster_rr_primary rcluster_shared rcluster_rr_strict)
# start_one NAME: serves the anchor as NAME on a port of its own.
start_one() {
    local k
    for k in "${!names[@]}"; do [[ ${names[k]} == "$1" ]] && break; done
    case $1 in
        node_rr) serve "$1" $((port + k)) rr ;;
        node_none) serve "$1" $((port + k)) none ;;
        rcluster_rr) serve "$1" $((port + k)) rr "$wrap" ;;
        rcluster_rr_primary) RCLUSTER_KERNEL_RR=0 serve "$1" $((port + k)) rr "$wrap" ;;
        rcluster_rr_strict) RCLUSTER_STRICT_TURNS=1 serve "$1" $((port + k)) rr "$wrap" ;;
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
declare -A all_rates rate_of all_lats all_splits
median() { printf '%s\n' "$@" | { grep -v '^$' || true; } | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
# med_lat KEY: the median of each latency figure over the rounds, "p50 p99 p99.9" (ms).
med_lat() {
    local col out=""
    for col in 1 2 3; do
        # shellcheck disable=SC2046
        out+="$(median $(awk -v c="$col" '{ for (i = c; i <= NF; i += 3) print $i }' <<<"${all_lats[$1]:-}")) "
    done
    echo "$out"
}
for ((r = 1; r <= rounds; r++)); do
    [[ -n $tail_only ]] && break
    order=("${names[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("${names[i]}"); done
    fi
    for n in "${order[@]}"; do
        [[ $n == rcluster_rr_strict ]] && continue # in the tail section only
        start_one "$n"
        timeout 30 wrk -t1 -c"$conns" -d"$warmup" -H 'Connection: close' "http://127.0.0.1:${port_of[$n]}/" >/dev/null 2>&1 || true
        for mode in close keep; do
            hdr=()
            [[ $mode == close ]] && hdr=(-H 'Connection: close')
            split=""
            [[ $mode == keep ]] && { (sleep 1; conns_split "${port_of[$n]}") >"$tmp/split" & splitter=$!; }
            out=$(timeout 60 wrk -t1 -c"$conns" -d"$duration" -s "$tmp/lat.lua" "${hdr[@]}" "http://127.0.0.1:${port_of[$n]}/" 2>&1 || true)
            if [[ $mode == keep ]]; then
                wait "$splitter" || true
                split=$(<"$tmp/split")
                all_splits[$n]+="$(awk -F/ 'NF == 2 && $1 > 0 { printf "%.3f", $2 / $1 }' <<<"$split") "
            fi
            rate=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
            errs=$(awk '/Socket errors:|Non-2xx/ { print }' <<<"$out")
            read -r p50 p99 p999 <<<"$(lat "$out")"
            printf '   round %d %-19s %-6s %8s req/s  p50 %6s p99 %6s p99.9 %6s ms %s%s\n' "$r" "$n" "$mode" "${rate:-0}" "${p50:--}" "${p99:--}" "${p999:--}" "${split:+connections per worker $split }" "$errs"
            all_rates[$n.$mode]+="${rate:-0} "
            all_lats[$n.$mode]+="${p50:-} ${p99:-} ${p999:-} "
        done
        stop_one
    done
done

# The tail section: the anchor with WORK iterations per request, new connection per request.
# Node none runs right between rcluster shared and rr (in either order), for their pair ratios
# below.
tail_names=(rcluster_shared node_none rcluster_rr node_rr rcluster_rr_strict rcluster_rr_primary)
declare -A spreads
echo "== node: tail: node_cluster_hello.js PORT 2 POLICY $work; wrk -t1 -c{$tail_conns} -d$duration, new connection per request; $rounds rounds"
for ((r = 1; r <= rounds; r++)); do
    order=("${tail_names[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#tail_names[@]} - 1; i >= 0; i--)); do order+=("${tail_names[i]}"); done
    fi
    for n in "${order[@]}"; do
        ITERS=$work start_one "$n"
        timeout 30 wrk -t1 -c50 -d"$warmup" -H 'Connection: close' "http://127.0.0.1:${port_of[$n]}/" >/dev/null 2>&1 || true
        for c in $tail_conns; do
            out=$(timeout 60 wrk -t1 -c"$c" -d"$duration" -s "$repo/bench/count.lua" -H 'Connection: close' "http://127.0.0.1:${port_of[$n]}/" 2>&1 || true)
            rate=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
            errs=$(awk '/Socket errors:|Non-2xx/ { print }' <<<"$out")
            read -r p50 p99 p999 <<<"$(lat "$out")"
            spread=$(awk '/^spread:/ { sub(/,/, "", $5); print $5; exit }' <<<"$out")
            printf '   round %d %-19s -c%-4s %8s req/s  p50 %6s p99 %6s p99.9 %6s ms  spread %s %s\n' "$r" "$n" "$c" "${rate:-0}" "${p50:--}" "${p99:--}" "${p999:--}" "${spread:--}" "$errs"
            all_rates[$n.tail$c]+="${rate:-0} "
            all_lats[$n.tail$c]+="${p50:-} ${p99:-} ${p999:-} "
            spreads[$n.tail$c]+="${spread:-} "
        done
        stop_one
    done
done

# The IPC anchor runs ROUNDS times each, alternating; the summary takes the median run of
# each figure (one run on this machine can be off by a third either way).
rounds_ipc=$rounds
[[ -n $tail_only ]] && rounds_ipc=0
echo "== node: IPC (node_ipc.js $ipc_msgs 20000), $rounds_ipc runs each, alternating"
declare -a n_rates r_rates n_p50s r_p50s n_p99s r_p99s
field() { awk -v k="$2" '{ for (i = 1; i <= NF; i++) if ($i == k) { print $(i + 1); exit } }' <<<"$1"; }
for ((r = 1; r <= rounds_ipc; r++)); do
    ipc_node=$(cd "$anchors" && timeout 120 node node_ipc.js "$ipc_msgs" 20000 || true)
    ipc_rc=$(cd "$anchors" && timeout 120 node "$wrap" node_ipc.js "$ipc_msgs" 20000 || true)
    echo "   run $r cluster:  $(tr '\n' ' ' <<<"$ipc_node")"
    echo "   run $r rcluster: $(tr '\n' ' ' <<<"$ipc_rc")"
    n_rates+=("$(grep -o '= [0-9]* msg/s' <<<"$ipc_node" | awk '{ print $2 }')")
    r_rates+=("$(grep -o '= [0-9]* msg/s' <<<"$ipc_rc" | awk '{ print $2 }')")
    n_p50s+=("$(field "$(grep rtt <<<"$ipc_node")" p50)")
    r_p50s+=("$(field "$(grep rtt <<<"$ipc_rc")" p50)")
    n_p99s+=("$(field "$(grep rtt <<<"$ipc_node")" p99)")
    r_p99s+=("$(field "$(grep rtt <<<"$ipc_rc")" p99)")
done
# HTTP throughput: the median round of each cluster and mode, as for the IPC figures.
for k in "${!all_rates[@]}"; do read -r -a v <<<"${all_rates[$k]}"; rate_of[$k]=$(median "${v[@]}"); done
echo "== node: memory of the primary (bench/node/rss.js)"
rss_node=""
rss_rc=""
if [[ -z $tail_only ]]; then
    rss_node=$(timeout 30 node "$repo/bench/node/rss.js" cluster || true)
    rss_rc=$(timeout 30 node "$repo/bench/node/rss.js" rcluster || true)
fi
echo "   $rss_node"
echo "   $rss_rc"

declare -A p99_of spread_of
# pairs_row LABEL NAME C: NAME's p99 and req/s against Node none's at -cC as the median of the
# rounds' own ratios. Each round runs the two one right after the other, so a slow phase of the
# machine moves these less than the ratio of the medians.
pairs_row() {
    local pp pt
    pp=$(pair_median "${all_lats[$2.tail$3]:-}" "${all_lats[node_none.tail$3]:-}" 2 3)
    pt=$(pair_median "${all_rates[$2.tail$3]:-}" "${all_rates[node_none.tail$3]:-}" 1 1)
    row "   -c$3 $1 / none, median of $rounds rounds' pairs" "p99 ${pp:--}x, req/s ${pt:--}x" "(info)"
}
# pair_median LIST_A LIST_B FIRST STEP: the median of the rounds' ratios a / b, the rounds'
# figures taken from column FIRST on, every STEP.
round_col() { awk -v c="$2" -v s="$3" '{ for (i = c; i <= NF; i += s) print $i }' <<<"$1"; }
pair_median() {
    # shellcheck disable=SC2046
    median $(paste -d' ' <(round_col "$1" "$3" "$4") <(round_col "$2" "$3" "$4") |
        awk '$1 != "-" && $2 != "-" && $2 > 0 { printf "%.3f\n", $1 / $2 }')
}
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "-" }'; }
verdict() { [[ $1 == - ]] && { echo n/a; return; }; awk -v v="$1" -v l="$3" "BEGIN { print ((v $2 l) ? \"met\" : \"MISSED\") }"; }
n_rate=$(median "${n_rates[@]}")
r_rate=$(median "${r_rates[@]}")
n_p50=$(median "${n_p50s[@]}")
r_p50=$(median "${r_p50s[@]}")
n_p99=$(median "${n_p99s[@]}")
r_p99=$(median "${r_p99s[@]}")
rr_rr=$(ratio "${rate_of[rcluster_rr.close]:-}" "${rate_of[node_rr.close]:-}")
rr_none=$(ratio "${rate_of[rcluster_rr.close]:-}" "${rate_of[node_none.close]:-}")
keep=$(ratio "${rate_of[rcluster_rr.keep]:-}" "${rate_of[node_rr.keep]:-}")
ipc=$(ratio "$r_rate" "$n_rate")
p50=$(ratio "$r_p50" "$n_p50")
p99=$(ratio "$r_p99" "$n_p99")

echo
echo "== node summary (2 workers, median of $rounds rounds, anchors from this same run)"
row() { printf '%-46s %12s %10s %s\n' "$@"; }
row figure value target verdict
latrow() { # latrow LABEL KEY: "p50 / p99 / p99.9" (ms) of KEY's median rounds
    local v
    read -r -a v <<<"$(med_lat "$2")"
    row "$1" "${v[0]:--} / ${v[1]:--} / ${v[2]:--}"
}
if [[ -z $tail_only ]]; then
for n in node_rr node_none rcluster_rr rcluster_rr_primary rcluster_shared; do
    latrow "$n ms p50/p99/p99.9, new conn" "$n.close"
    latrow "$n ms p50/p99/p99.9, keep-alive" "$n.keep"
done
row "new conn req/s: Node rr / Node none" "${rate_of[node_rr.close]:-} / ${rate_of[node_none.close]:-}"
row "rcluster rr, strictTurns, is turned by" "$([[ $(id -u) == 0 ]] && echo 'the kernel (root)' || echo 'the primary (not root)')"
row "new conn req/s: rcluster rr / shared" "${rate_of[rcluster_rr.close]:-} / ${rate_of[rcluster_shared.close]:-}"
row "   rcluster rr / Node rr, new conn" "${rr_rr}x" ">= 1.8x" "$(verdict "$rr_rr" '>=' 1.8)"
row "   rcluster rr / Node none, new conn" "${rr_none}x" ">= 0.95x" "$(verdict "$rr_none" '>=' 0.95)"
row "new conn req/s: rcluster rr, primary accepting" "${rate_of[rcluster_rr_primary.close]:-}"
row "   / Node rr, / Node none" "$(ratio "${rate_of[rcluster_rr_primary.close]:-}" "${rate_of[node_rr.close]:-}")x, $(ratio "${rate_of[rcluster_rr_primary.close]:-}" "${rate_of[node_none.close]:-}")x" "(reported)"
row "keep-alive req/s: Node rr / rcluster rr" "${rate_of[node_rr.keep]:-} / ${rate_of[rcluster_rr.keep]:-}"
row "   rcluster rr / Node rr, keep-alive" "${keep}x" ">= 1.0x" "$(verdict "$keep" '>=' 1.0)"
# shellcheck disable=SC2086 # one figure per round
row "   keep-alive connections per worker, max/min" "$(median ${all_splits[rcluster_rr]:-}), Node rr $(median ${all_splits[node_rr]:-})" "(reported)"
row "IPC stream msg/s (median run): Node / rcluster" "$n_rate / $r_rate"
row "   rcluster / Node, stream" "${ipc}x" ">= 5x" "$(verdict "$ipc" '>=' 5)"
row "IPC RTT p50 us (median run): Node / rcluster" "$n_p50 / $r_p50"
row "   rcluster / Node, RTT p50" "${p50}x" "<= 1.0x" "$(verdict "$p50" '<=' 1.0)"
row "IPC RTT p99 us (median run): Node / rcluster" "$n_p99 / $r_p99"
row "   rcluster / Node, RTT p99" "${p99}x" "<= 1.0x" "$(verdict "$p99" '<=' 1.0)"
fi
echo
echo "== node tail summary ($work iterations per request, new connection per request, median of $rounds rounds)"
row "server, connections" "req/s" "p50/p99/p99.9 ms" "spread max/min"
for c in $tail_conns; do
    for n in "${tail_names[@]}"; do
        k=$n.tail$c
        read -r -a v <<<"$(med_lat "$k")"
        read -r -a sp <<<"${spreads[$k]:-}"
        p99_of[$k]=${v[1]:-}
        spread_of[$k]=$(median "${sp[@]}")
        row "$n -c$c" "${rate_of[$k]:--}" "${v[0]:--}/${v[1]:--}/${v[2]:--}" "${spread_of[$k]:--}"
    done
    pr=$(ratio "${p99_of[rcluster_rr.tail$c]:-}" "${p99_of[node_none.tail$c]:-}")
    tput=$(ratio "${rate_of[rcluster_rr.tail$c]:-}" "${rate_of[node_none.tail$c]:-}")
    sp=${spread_of[rcluster_rr.tail$c]:--}
    row "   -c$c rcluster rr p99 / Node none p99" "${pr}x" "<= 1.0x" "$(verdict "$pr" '<=' 1.0)"
    row "   -c$c rcluster rr req/s / Node none" "${tput}x" ">= 1.0x" "$(verdict "$tput" '>=' 1.0)"
    row "   -c$c rcluster rr spread max/min" "$sp" "<= 1.05" "$(verdict "$sp" '<=' 1.05)"
    pairs_row rr rcluster_rr "$c"
    for m in rcluster_shared; do
        pr=$(ratio "${p99_of[$m.tail$c]:-}" "${p99_of[node_none.tail$c]:-}")
        tput=$(ratio "${rate_of[$m.tail$c]:-}" "${rate_of[node_none.tail$c]:-}")
        sp=${spread_of[$m.tail$c]:--}
        row "   -c$c rcluster shared p99 / Node none p99" "${pr}x" "<= 1.0x" "$(verdict "$pr" '<=' 1.0)"
        row "   -c$c rcluster shared req/s / Node none" "${tput}x" ">= 1.0x" "$(verdict "$tput" '>=' 1.0)"
        row "   -c$c rcluster shared spread max/min" "$sp" "<= 1.05" "$(verdict "$sp" '<=' 1.05)"
        pairs_row shared "$m" "$c"
    done
    row "   -c$c rr strict turns p99 / Node none" "$(ratio "${p99_of[rcluster_rr_strict.tail$c]:-}" "${p99_of[node_none.tail$c]:-}")x" "(reported)"
    row "   -c$c rr primary accepting p99 / Node none" "$(ratio "${p99_of[rcluster_rr_primary.tail$c]:-}" "${p99_of[node_none.tail$c]:-}")x" "(reported)"
done
