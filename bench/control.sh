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

echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"

# p50/p90 of running a command CALLS times, and of the socket round trip alone (connect,
# hello, status, reply), in milliseconds.
time_cmd() { # time_cmd LABEL N CMD...
    python3 - "$@" <<'PY'
import subprocess, sys, time
label, n, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
t = []
for _ in range(n):
    s = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, timeout=30)
    t.append((time.perf_counter() - s) * 1000)
t.sort()
print(f"{label}: p50 {t[len(t)//2]:.2f} ms, p90 {t[len(t)*9//10]:.2f} ms ({n} runs)")
PY
}

time_socket() { # time_socket LABEL N SOCKET
    python3 - "$@" <<'PY'
import json, socket, sys, time
label, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = []
for _ in range(n):
    s = time.perf_counter()
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    f = c.makefile("rwb")
    f.readline()
    f.write(b'{"cmd":"status"}\n'); f.flush()
    st = json.loads(f.readline())
    c.close()
    t.append((time.perf_counter() - s) * 1000)
assert st["ok"], st
t.sort()
print(f"{label}: p50 {t[len(t)//2]:.3f} ms, p90 {t[len(t)*9//10]:.3f} ms ({n} runs, {len(json.dumps(st))} B reply)")
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

# The floor of any command measured this way: starting a process that does nothing.
time_cmd "floor: /bin/true (command)" "$calls" /bin/true
time_cmd "floor: rcluster --version (command)" "$calls" "$RCLUSTER" --version
for w in 2 64; do
    "$RCLUSTER" run --name "bench$w" -w "$w" -- sleep 300 2>/dev/null &
    pids+=($!)
    wait_ready "bench$w" "$w"
    time_cmd "rcluster status --json, $w workers (command)" "$calls" "$RCLUSTER" status "bench$w" --json
    time_socket "status over the socket, $w workers (round trip alone)" "$calls" "$XDG_RUNTIME_DIR/rcluster/bench$w.sock"
done

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
    time_cmd "pm2 jlist, $w processes (command)" "$pm2_calls" "$pm2" jlist
    daemon=$(cat "$PM2_HOME/pm2.pid")
    echo "PM2 daemon RSS, $w processes: $(awk '/VmRSS/ {print $2, $3}' /proc/$daemon/status)"
    timeout 60 "$pm2" delete "idle$w" >/dev/null
done
