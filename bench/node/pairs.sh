#!/usr/bin/env bash
# Alternated pairs of the tail workload (bench/node/run.sh's tail section): two Node clusters,
# one at a time (start, WARMUP of the same load, measure, stop), the order alternating by pair,
# so that the machine's drift falls on both alike. Each run prints req/s, p50 and p99 (ms), the spread
# over the workers (max/min) and the CPU time of the cluster's processes per request (µs);
# the end, the medians of the pairs' ratios B/A.
#
# Usage: bench/node/pairs.sh A B
#   A, B: none | node_rr (Node's cluster) | rr | shared | strict | primary (rcluster: the
#   default round-robin, SCHED_NONE, strictTurns, kernelRoundRobin: false), each optionally
#   MODE@CHECKOUT to run another checkout of rcluster (its addon built), e.g. rr@../old.
# Environment: PAIRS (8), CONNS (50), DURATION (3s), WARMUP (3s), WORK (20000 loop iterations
#   per request), GC (unset; 1: also each run's median young-collection pause (ms) and
#   survivors (KB), from node --trace-gc-nvp).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
anchors="$repo/../shared/anchors"
pairs=${PAIRS:-8}
conns=${CONNS:-50}
duration=${DURATION:-3s}
warmup=${WARMUP:-3s}
work=${WORK:-20000}
[[ $# -eq 2 ]] || { sed -n '2,14p' "$0" >&2; exit 2; }
[[ -f $anchors/node_cluster_hello.js ]] || { echo "pairs.sh: $anchors/node_cluster_hello.js is missing" >&2; exit 1; }
command -v wrk >/dev/null || { echo "pairs.sh: wrk is needed (apt-get install wrk)" >&2; exit 1; }

tmp=$(mktemp -d)
pid=""
cleanup() {
    if [[ -n $pid ]]; then
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# cpu_ticks PID: user + system clock ticks of PID and all its descendants.
cpu_ticks() {
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1]); kids = {}; ticks = {}
for p in os.listdir('/proc'):
    if not p.isdigit():
        continue
    try:
        stat = open(f'/proc/{p}/stat').read()
    except OSError:
        continue
    f = stat[stat.rfind(')') + 2:].split()
    ticks[int(p)] = int(f[11]) + int(f[12])
    kids.setdefault(int(f[1]), []).append(int(p))
total, todo = 0, [root]
while todo:
    p = todo.pop()
    total += ticks.get(p, 0)
    todo += kids.get(p, [])
print(total)
PY
}

# gc_medians LOG: "pause-ms survived-KB" medians of the young collections in a --trace-gc-nvp log.
gc_medians() {
    python3 - "$1" <<'PY'
import statistics, sys
rows = [dict(kv.split('=', 1) for kv in line.split() if '=' in kv)
        for line in open(sys.argv[1], errors='replace') if ' gc=s ' in line]
if rows:
    print('%.2f %.0f' % (statistics.median(float(r['pause']) for r in rows),
                         statistics.median(float(r['new_space_survived']) for r in rows) / 1024))
else:
    print('- -')
PY
}

# run MODE: one run; prints "MODE req/s p50 p99 spread cpu-us/req [pause-ms survived-KB]".
run() {
    local mode=${1%@*} checkout=$repo port=$((20000 + RANDOM % 8000)) policy=rr
    [[ $1 == *@* ]] && checkout=$(cd "${1#*@}" && pwd)
    local cmd=(node) env=()
    [[ -n ${GC:-} ]] && cmd+=(--trace-gc-nvp)
    case $mode in
        none) policy=none ;;
        node_rr) ;;
        rr) cmd+=("$checkout/bench/node/with_rcluster.js") ;;
        shared) policy=none; cmd+=("$checkout/bench/node/with_rcluster.js") ;;
        strict) env=(RCLUSTER_STRICT_TURNS=1); cmd+=("$checkout/bench/node/with_rcluster.js") ;;
        primary) env=(RCLUSTER_KERNEL_RR=0); cmd+=("$checkout/bench/node/with_rcluster.js") ;;
        *) echo "pairs.sh: unknown mode $mode (none, node_rr, rr, shared, strict, primary)" >&2; exit 2 ;;
    esac
    : >"$tmp/log"
    (cd "$anchors" && exec env "${env[@]}" setsid "${cmd[@]}" node_cluster_hello.js "$port" 2 "$policy" "$work") >"$tmp/log" 2>&1 &
    pid=$!
    local i
    for ((i = 0; i < 100; i++)); do grep -q READY "$tmp/log" && break; sleep 0.1; done
    grep -q READY "$tmp/log" || { echo "pairs.sh: $1 did not start: $(tail -3 "$tmp/log")" >&2; exit 1; }
    timeout 30 wrk -t1 -c"$conns" -d"$warmup" -H 'Connection: close' "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
    local lines t0 t1 out
    lines=$(wc -l <"$tmp/log")
    t0=$(cpu_ticks "$pid")
    out=$(timeout 60 wrk -t1 -c"$conns" -d"$duration" -s "$repo/bench/count.lua" -H 'Connection: close' "http://127.0.0.1:$port/" 2>&1 || true)
    t1=$(cpu_ticks "$pid")
    tail -n +"$((lines + 1))" "$tmp/log" >"$tmp/gc"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
    local rate lat spread reqs cpu gc=""
    rate=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    lat=$(awk '/^latency-us:/ { printf "%.2f %.2f", $3 / 1000, $5 / 1000 }' <<<"$out")
    spread=$(awk '/^spread:/ { sub(/,/, "", $5); print $5; exit }' <<<"$out")
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    cpu=$(awk -v t="$((t1 - t0))" -v n="${reqs:-0}" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-" }')
    [[ -n ${GC:-} ]] && gc=" $(gc_medians "$tmp/gc")"
    echo "$1 ${rate:-0} ${lat:-- -} ${spread:--} $cpu$gc $(grep -E 'Socket errors|Non-2xx' <<<"$out" | tr '\n' ' ')"
}

echo "== pairs: $1 against $2, $pairs pairs, wrk -t1 -c$conns -d$duration, $work iterations per request, new connection per request"
echo "   (each run: req/s, p50 and p99 ms, spread, cluster CPU µs per request${GC:+, young-collection pause ms and survivors KB})"
: >"$tmp/pairs"
for ((p = 1; p <= pairs; p++)); do
    if ((p % 2)); then a=$(run "$1"); b=$(run "$2"); else b=$(run "$2"); a=$(run "$1"); fi
    echo "   pair $p: $a | $b"
    read -r _ ra p50a p99a _ cpua _ <<<"$a"
    read -r _ rb p50b p99b _ cpub _ <<<"$b"
    echo "$ra $rb $p50a $p50b $p99a $p99b $cpua $cpub" >>"$tmp/pairs"
done
python3 - "$tmp/pairs" "$1" "$2" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(i):
    r = [float(x[i + 1]) / float(x[i]) for x in rows if '-' not in (x[i], x[i + 1]) and float(x[i]) > 0]
    return '%.3f' % statistics.median(r) if r else '-'
print('== %s / %s, medians of %d pairs: req/s %s, p50 %s, p99 %s, CPU per request %s'
      % (sys.argv[3], sys.argv[2], len(rows), med(0), med(2), med(4), med(6)))
PY
