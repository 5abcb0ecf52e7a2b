#!/usr/bin/env bash
# What `--metrics` costs: (1) /metrics scrape latency with 64 workers, measured by the client
# on loopback with a new connection per scrape (an upper bound of the primary's own time);
# (2) HTTP throughput of 2 hello-workers (wrk, new connection per request), alternating ROUNDS
# times: left alone (plain); the status asked 10 times a second over a control connection and
# /metrics scraped once a second by one Python process, as a monitoring client does (observed);
# `rcluster status --json` started 10 times a second and `curl` scraping once a second (cli);
# and /bin/true started 10 times a second (spawn), what starting a process costs here at all.
#
# Usage: bench/metrics.sh
# Environment: SCRAPES (300), MANY (64), DURATION (10s), CONNS (50), ROUNDS (3), SKIP_BUILD,
# MODES ("plain observed cli spawn").
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
scrapes=${SCRAPES:-300}
many=${MANY:-64}
duration=${DURATION:-10s}
conns=${CONNS:-50}
rounds=${ROUNDS:-3}
modes=${MODES:-plain observed cli spawn}

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
cleanup() {
    local p
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

# The primary's CPU time so far (user + system), in clock ticks.
primary_cpu() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat"; }
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

echo "== HTTP throughput, 2 workers, new connection per request, $duration x $rounds rounds"
start 2
for ((i = 0; i < rounds; i++)); do
    for mode in $modes; do
        helpers=()
        if [[ $mode == cli ]]; then
            (while :; do curl -s -o /dev/null "http://127.0.0.1:$metrics_port/metrics"; sleep 1; done) &
            helpers+=($!)
        fi
        case $mode in
            observed)
                # One process, as a monitoring client is: a status request 10 times a second
                # on a control connection it keeps, and a scrape of /metrics once a second.
                python3 - "$XDG_RUNTIME_DIR/rcluster/metricsbench.sock" "$metrics_port" <<'PY' &
import json, socket, sys, time
c = socket.socket(socket.AF_UNIX)
c.connect(sys.argv[1])
f = c.makefile("rwb")
f.readline()
end = time.monotonic() + 600  # bounded; killed when wrk is done
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
                helpers+=($!) ;;
            cli)
                (while :; do "$bin/rcluster" status metricsbench --json >/dev/null; sleep 0.1; done) &
                helpers+=($!) ;;
            spawn)
                (while :; do /bin/true; sleep 0.1; done) &
                helpers+=($!) ;;
        esac
        cpu0=$(primary_cpu)
        rps=$(wrk -t1 -c"$conns" -d"$duration" -H 'Connection: close' \
            "http://127.0.0.1:$app_port/" | awk '/Requests\/sec/ { print $2 }')
        cpu1=$(primary_cpu)
        for p in "${helpers[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
        echo "$mode $(((cpu1 - cpu0) * 1000 / ticks))" >>"$tmp/cpu"
        echo "round $i $mode $rps"
        echo "$mode $rps" >>"$tmp/rps"
    done
done
stop
for mode in $modes; do
    awk -v m="$mode" '$1 == m { print $2 }' "$tmp/rps" | sort -n | awk -v m="$mode" '
        { v[NR] = $1 } END { printf "%s median %.0f req/s\n", m, v[int((NR + 1) / 2)] }'
done | tee "$tmp/med"
awk '{ m[$1] = $3 } END {
    if (m["observed"]) printf "observed / plain = %.3f (target >= 0.99: status 10/s and /metrics 1/s from one client)\n", m["observed"] / m["plain"]
    if (m["cli"]) printf "cli / plain = %.3f (rcluster status --json and curl started 10/s and 1/s)\n", m["cli"] / m["plain"]
    if (m["spawn"]) printf "spawn / plain = %.3f (/bin/true started 10/s: what starting processes costs)\n", m["spawn"] / m["plain"] }' "$tmp/med"
for mode in $modes; do
    awk -v m="$mode" '$1 == m { print $2 }' "$tmp/cpu" | sort -n | awk -v m="$mode" '
        { v[NR] = $1 } END { printf "primary CPU per run, %s: median %d ms\n", m, v[int((NR + 1) / 2)] }'
done
