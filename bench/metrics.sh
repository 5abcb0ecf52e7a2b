#!/usr/bin/env bash
# What `--metrics` costs: (1) /metrics scrape latency with 64 workers, measured by the client
# on loopback with a new connection per scrape (an upper bound of the primary's own time);
# (2) HTTP throughput of 2 hello-workers (wrk, new connection per request) left alone, against
# the same with: the status asked 10 times a second over a control connection and /metrics
# scraped once a second by one Python process, as a monitoring client does (observed);
# `rcluster status --json` started 10 times a second and `curl` scraping once a second (cli);
# /bin/true started 10 times a second (spawn), what starting a process costs here at all. Each
# mode is PAIRS pairs of short runs, alone and with it, back to back; the figure is the median
# of the pairs' ratios, beside the CPU time the primary and the helper spent.
#
# Usage: bench/metrics.sh
# Environment: SCRAPES (300), MANY (64), PAIR_DURATION (2s), PAIRS (20), CONNS (50), SKIP_BUILD,
# MODES ("observed cli spawn").
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
scrapes=${SCRAPES:-300}
many=${MANY:-64}
pair_duration=${PAIR_DURATION:-2s}
pairs=${PAIRS:-20}
conns=${CONNS:-50}
modes=${MODES:-observed cli spawn}

for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "metrics.sh: needs $tool" >&2; exit 1; }
done
if [[ -z ${SKIP_BUILD:-} ]]; then
    (cd "$repo" && cargo build --release -p rcluster -p rcluster-examples)
fi

tmp=$(mktemp -d)
# The clusters' control sockets live in the temporary folder, under a name of their own.
export XDG_RUNTIME_DIR=$tmp/run
mkdir -p "$XDG_RUNTIME_DIR"
pids=()
helper_pids=()
cleanup() {
    local p
    for p in "${helper_pids[@]}"; do kill -KILL -- "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
        timeout 20 tail --pid="$p" -f /dev/null 2>/dev/null || kill -KILL -- "-$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}

# start WORKERS: an rcluster of hello-workers with --metrics; sets $app_port $metrics_port $pid.
start() {
    local i
    app_port=$(free_port)
    metrics_port=$(free_port)
    : >"$tmp/log"
    setsid "$bin/rcluster" run --name metricsbench -w "$1" --ready explicit --listen "127.0.0.1:$app_port" \
        --metrics "127.0.0.1:$metrics_port" -- "$bin/hello-worker" >"$tmp/log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for ((i = 0; i < 600; i++)); do
        (($(grep -c ': ready$' "$tmp/log" || true) >= $1)) && return 0
        sleep 0.1
    done
    echo "metrics.sh: not ready; log:" >&2
    tail "$tmp/log" >&2
    exit 1
}

# The primary's CPU time so far, all its threads, in microseconds (the scheduler's own count,
# to the nanosecond: clock ticks are too coarse for a few milliseconds a second).
primary_cpu() { cat /proc/"$pid"/task/*/schedstat 2>/dev/null | awk '{ t += $1 } END { printf "%d", t / 1000 }'; }
ticks=$(getconf CLK_TCK)

stop() {
    kill -TERM "$pid"
    timeout 30 tail --pid="$pid" -f /dev/null
}

echo "== /metrics scrape latency, $many workers, $scrapes scrapes (curl time_total, then the loop's own time)"
start "$many"
for ((i = 0; i < 20; i++)); do curl -s -o /dev/null "http://127.0.0.1:$metrics_port/metrics"; done
for ((i = 0; i < scrapes; i++)); do
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$metrics_port/metrics"
done | sort -n >"$tmp/lat"
awk -v n="$scrapes" '{ v[NR] = $1 * 1000 } END {
    printf "client (curl time_total): p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms\n", v[int(n*0.5)], v[int(n*0.9)], v[int(n*0.99)], v[n] }' "$tmp/lat"
for ((i = 0; i < scrapes; i++)); do
    curl -s "http://127.0.0.1:$metrics_port/metrics" | awk '/^rcluster_scrape_duration_seconds / { print $2 }'
done | sort -g >"$tmp/own"
curl -s "http://127.0.0.1:$metrics_port/metrics" >"$tmp/body"
awk -v n="$scrapes" '{ v[NR] = $1 * 1000 } END {
    printf "in the primary (rcluster_scrape_duration_seconds): p50 %.3f ms  p90 %.3f ms  p99 %.3f ms\n", v[int(n*0.5)], v[int(n*0.9)], v[int(n*0.99)] }' "$tmp/own"
echo "body: $(wc -c <"$tmp/body") bytes, $(grep -vc '^#' "$tmp/body") samples"
stop

echo "== HTTP throughput, 2 workers, new connection per request: $pairs pairs of ${pair_duration} runs per mode"
# Each mode's helper runs for the whole section and is stopped (SIGSTOP) outside its own runs,
# so that starting it (Python's start-up is tens of milliseconds of CPU) is in no run. Each
# pair is a run left alone and a run with the helper going, back to back (which goes first
# alternates): the machine's drift (other tenants of the host) moves both alike, and the
# median of the pairs' ratios is far steadier than a ratio of medians of long runs.
start 2
# helper MODE: starts the helper of MODE, stopped; sets $helper.
helper() {
    case $1 in
        observed)
            # One process, as a monitoring client is: a status request 10 times a second on
            # a control connection it keeps, and a scrape of /metrics once a second.
            python3 - "$XDG_RUNTIME_DIR/rcluster/metricsbench.sock" "$metrics_port" <<'PY' &
import json, socket, sys, time
c = socket.socket(socket.AF_UNIX)
c.connect(sys.argv[1])
f = c.makefile("rwb")
f.readline()
end = time.monotonic() + 3600  # bounded; killed when the section ends
n = 0
while time.monotonic() < end:
    f.write(b'{"cmd":"status"}\n')
    f.flush()
    assert json.loads(f.readline())["ok"]
    if n % 10 == 0:
        h = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
        h.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = b""
        while chunk := h.recv(65536):
            body += chunk
        assert body.startswith(b"HTTP/1.1 200"), body[:40]
        h.close()
    n += 1
    time.sleep(0.1)
PY
            ;;
        cli)
            (n=0; while :; do
                "$bin/rcluster" status metricsbench --json >/dev/null
                ((++n % 10 == 0)) && curl -s -o /dev/null "http://127.0.0.1:$metrics_port/metrics"
                sleep 0.1
            done) &
            ;;
        spawn) (while :; do /bin/true; sleep 0.1; done) & ;;
    esac
    helper=$!
    helper_pids+=("$helper")
    sleep 0.5 # started, and its first requests answered, before it is stopped
    kill -STOP -- "$helper"
}
# The CPU time of a process and its children so far, in clock ticks.
cpu_of() { awk '{ sub(/.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# run: one wrk run; prints req/s.
run() {
    wrk -t1 -c"$conns" -d"$pair_duration" -H 'Connection: close' "http://127.0.0.1:$app_port/" |
        awk '/Requests\/sec/ { print $2 }'
}
wrk -t1 -c"$conns" -d2s -H 'Connection: close' "http://127.0.0.1:$app_port/" >/dev/null # warm-up
for mode in $modes; do
    [[ $mode == plain ]] && continue
    helper "$mode"
    : >"$tmp/pairs"
    for ((i = 0; i < pairs; i++)); do
        order=(plain "$mode")
        ((i % 2)) && order=("$mode" plain)
        for m in "${order[@]}"; do
            [[ $m != plain ]] && kill -CONT -- "$helper"
            p0=$(primary_cpu)
            h0=$(cpu_of "$helper")
            rps=$(run)
            p1=$(primary_cpu)
            h1=$(cpu_of "$helper")
            [[ $m != plain ]] && kill -STOP -- "$helper"
            echo "$m $rps $((p1 - p0)) $((h1 - h0))" >>"$tmp/pairs"
        done
    done
    { kill -KILL -- "$helper" && wait "$helper"; } 2>/dev/null || true
    paste <(awk '$1 == "plain" { print $2 }' "$tmp/pairs") <(awk '$1 != "plain" { print $2 }' "$tmp/pairs") |
        awk '{ print $2 / $1 }' | sort -g >"$tmp/ratios"
    awk -v mode="$mode" '{ r[NR] = $1 } END {
        printf "%s / plain, median of %d pairs: %.3f (quartiles %.3f .. %.3f)\n", mode, NR, r[int((NR + 1) / 2)], r[int((NR + 3) / 4)], r[int((3 * NR + 1) / 4)] }' "$tmp/ratios"
    awk -v mode="$mode" -v ticks="$ticks" -v d="${pair_duration%s}" '
        $1 == "plain" { np++; prps += $2; pcpu += $3 }
        $1 != "plain" { nm++; mrps += $2; mcpu += $3; hcpu += $4 }
        END {
            printf "   mean req/s %.0f alone, %.0f with %s; primary CPU %.2f ms/s alone, %.2f ms/s with it; the helper itself %.1f ms/s\n",
                prps / np, mrps / nm, mode, pcpu / 1000 / (np * d), mcpu / 1000 / (nm * d), hcpu * 1000 / ticks / (nm * d)
        }' "$tmp/pairs"
done
stop
