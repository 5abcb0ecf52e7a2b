#!/usr/bin/env bash
# Control socket benchmark: `rcluster status --json` round trip at 2 and 64 workers (as a
# command, and the socket round trip alone), and the primary's RSS with control on and 16
# workers; anchors in the same run: `pm2 jlist` and the PM2 daemon's RSS (PM2 7 from npm, in
# a temporary folder, with its own PM2_HOME). Everything runs on loopback / Unix sockets and
# is stopped at the end. Counts: CALLS (default 200), PM2_CALLS (default 20).
# Usage: bench/control.sh        (set RCLUSTER=path to use a built binary; NO_PM2=1 skips PM2)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
calls=${CALLS:-200}
pm2_calls=${PM2_CALLS:-20}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do timeout 15 tail --pid="$p" -f /dev/null 2>/dev/null || true; done
    if [[ -x $work/pm2/node_modules/.bin/pm2 ]]; then
        PM2_HOME=$work/pm2home timeout 30 "$work/pm2/node_modules/.bin/pm2" kill >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [[ -z ${RCLUSTER:-} ]]; then
    (cd "$repo" && timeout 900 cargo build --quiet --release -p rcluster)
    RCLUSTER=${CARGO_TARGET_DIR:-$repo/target}/release/rcluster
fi
export XDG_RUNTIME_DIR=$work/run
mkdir -p "$XDG_RUNTIME_DIR"

echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# p10/p50/p90 in milliseconds of each measurement, taken in turns (one of each, CALLS
# times), so that the load of a shared machine weighs on all of them alike. A measurement is
# a command (run to its end) or "sock:PATH" (connect, hello, status, reply: the round trip
# alone, in this process).
measure() { # measure LABEL=CMD ... (CMD split on spaces)
    python3 - "$calls" "$@" <<'PY'
import json, signal, socket, subprocess, sys, time
n, items = int(sys.argv[1]), [a.split("=", 1) for a in sys.argv[2:]]
def sock(path):
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    f = c.makefile("rwb")
    f.readline()
    f.write(b'{"cmd":"status"}\n'); f.flush()
    st = json.loads(f.readline())
    c.close()
    assert st["ok"], st
t = {label: [] for label, _ in items}
for _ in range(n):
    for label, what in items:
        s = time.perf_counter()
        if what.startswith("sock:"):
            sock(what[5:])
        else:
            # Bounded by an alarm, not by run(timeout=): with a timeout, Python waits for the
            # child by polling with sleeps of 0.5, 1, 2 ms ..., which rounded every figure up
            # to the next step (a 0.6 ms /bin/true measured 1.3 ms).
            signal.alarm(30)
            subprocess.run(what.split(" "), stdout=subprocess.DEVNULL, check=True)
            signal.alarm(0)
        t[label].append((time.perf_counter() - s) * 1000)
for label, v in t.items():
    v.sort()
    p = lambda q: v[min(len(v) - 1, int(len(v) * q))]
    print(f"{label}: p10 {p(0.1):.2f} ms, p50 {p(0.5):.2f} ms, p90 {p(0.9):.2f} ms ({n} runs)")
PY
}

wait_ready() { # wait_ready NAME N
    for _ in $(seq 1 300); do
        if "$RCLUSTER" status "$1" --json 2>/dev/null |
            python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(sum(w["state"]=="ready" for w in s["workers"]) != int(sys.argv[1]))' "$2" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "cluster $1 did not get $2 workers ready" >&2
    return 1
}

for w in 2 64; do
    "$RCLUSTER" run --name "bench$w" -w "$w" -- sleep 300 2>/dev/null &
    pids+=($!)
    wait_ready "bench$w" "$w"
done
sockets=$XDG_RUNTIME_DIR/rcluster
measure "floor: /bin/true=/bin/true" "floor: rcluster --version=$RCLUSTER --version" \
    "rcluster status --json, 2 workers=$RCLUSTER status bench2 --json" \
    "rcluster status --json, 64 workers=$RCLUSTER status bench64 --json" \
    "socket round trip alone, 2 workers=sock:$sockets/bench2.sock" \
    "socket round trip alone, 64 workers=sock:$sockets/bench64.sock"

"$RCLUSTER" run --name bench16 -w 16 -- sleep 300 2>/dev/null &
p16=$!
pids+=($p16)
wait_ready bench16 16
sleep 0.5
echo "rcluster primary RSS, control on, 16 workers: $(awk '/VmRSS/ {print $2, $3}' /proc/$p16/status)"

if [[ -n ${NO_PM2:-} ]]; then exit 0; fi
mkdir -p "$work/pm2"
(cd "$work/pm2" && timeout 300 npm install --silent --no-audit --no-fund pm2@7 >/dev/null 2>&1) ||
    (cd "$work/pm2" && timeout 300 npm install --silent --no-audit --no-fund pm2 >/dev/null)
pm2=$work/pm2/node_modules/.bin/pm2
export PM2_HOME=$work/pm2home
echo "anchor: pm2 $("$pm2" --version 2>/dev/null | tail -1)"
echo 'setInterval(() => {}, 1 << 30);' >"$work/idle.js"
for w in 2 16; do
    timeout 60 "$pm2" start "$work/idle.js" -i "$w" --name "idle$w" >/dev/null
    sleep 2
    calls=$pm2_calls measure "pm2 jlist, $w processes=$pm2 jlist"
    daemon=$(cat "$PM2_HOME/pm2.pid")
    echo "PM2 daemon RSS, $w processes: $(awk '/VmRSS/ {print $2, $3}' /proc/$daemon/status)"
    timeout 60 "$pm2" delete "idle$w" >/dev/null
done
