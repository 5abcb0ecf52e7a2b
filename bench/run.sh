#!/usr/bin/env bash
# Runs the rcluster benchmarks beside the anchors (in the same run, because this machine's
# figures drift from run to run) and prints one summary table with the ratios.
#
# Usage: bench/run.sh            (from anywhere; needs ../shared/anchors beside the repository)
# Environment: STREAM_MSGS (2000000), RTT_COUNT (50000), RESTARTS (200), WORKERS (16);
# for the HTTP dispatch section (bench/http.sh): DURATION (5s), CONNS (50), MANY (64), ROUNDS (3).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
anchors="$repo/../shared/anchors"
if [[ ! -f "$anchors/uds_limit.c" || ! -f "$anchors/node_ipc.js" ]]; then
    echo "run.sh: the anchors are missing: expected $anchors/uds_limit.c and node_ipc.js" >&2
    echo "run.sh: shared/ must sit beside the repository (../shared)" >&2
    exit 1
fi

stream_msgs=${STREAM_MSGS:-2000000}
rtt_count=${RTT_COUNT:-50000}
restarts=${RESTARTS:-200}
workers=${WORKERS:-16}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== machine: $(nproc) CPUs, kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== build"
cli_built=yes
if ! (cd "$repo" && cargo build --release -p rcluster-bench -p rcluster); then
    # The benchmarks of the core do not need the command line; build them alone and say so.
    echo "run.sh: building the rcluster command line failed; its memory figure will be missing" >&2
    cli_built=no
    (cd "$repo" && cargo build --release -p rcluster-bench)
fi
gcc -O2 -o "$tmp/uds_limit" "$anchors/uds_limit.c"
bin="$repo/target/release"

# Every step is bounded: a hang is reported as a missing figure, not a stuck run.
run() {
    local name=$1
    shift
    echo "== $name: $*"
    if ! timeout 300 "$@" | tee "$tmp/$name.out"; then
        echo "run.sh: $name failed or timed out" >&2
    fi
}

run uds_limit "$tmp/uds_limit" 1024000 50000
run ipc "$bin/ipc" "$stream_msgs" "$rtt_count" 3
if command -v node >/dev/null; then
    (cd "$anchors" && run node_ipc node node_ipc.js 200000 20000)
else
    echo "== node_ipc: skipped (node is not installed)"
    : >"$tmp/node_ipc.out"
fi
run restart "$bin/restart" "$restarts"
if [[ $cli_built == yes ]]; then
    run rss "$bin/rss" "$bin/rcluster" "$workers"
else
    echo "rss: unavailable: the command line did not build" >"$tmp/rss.out"
fi

# C API overhead: the stream of (a) sent through librcluster (bench/c/ipc_stream.c, the same
# bench_worker), compared with the Rust API's figure from this same run. It runs here, before
# the HTTP section, so that the two streams are measured minutes apart on the same quiet
# machine (after the 64-worker clusters it measured a third lower).
echo "== C API: bench/c/ipc_stream.c"
if (cd "$repo" && cargo build --release -p rcluster-ffi) &&
    gcc -O2 -Wall -Wextra -Werror -I"$repo/include" -o "$tmp/ipc_stream_c" "$repo/bench/c/ipc_stream.c" \
        "$bin/librcluster.a" -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc; then
    run ipc_c "$tmp/ipc_stream_c" "$bin/bench_worker" "$stream_msgs" 3
else
    echo "run.sh: building the C benchmark failed" >&2
    : >"$tmp/ipc_c.out"
fi

# HTTP dispatch through the primary against shared sockets and Node's cluster (bench/http.sh
# starts its own servers, needs wrk and installs it when missing, and stops everything it
# started). It takes a few minutes, hence its own, longer bound.
if [[ $cli_built == yes ]]; then
    echo "== http: bench/http.sh"
    if ! timeout 900 "$repo/bench/http.sh" | tee "$tmp/http.out"; then
        echo "run.sh: http failed or timed out" >&2
    fi
else
    echo "http: unavailable: the command line did not build" >"$tmp/http.out"
fi

# field FILE PATTERN N...: the Nth fields of the first line matching PATTERN, separated by
# "|" ("" if none); several are read with `IFS='|' read -r A B ...`.
field() {
    local file=$1 pattern=$2
    shift 2
    awk -v ns="$*" "/$pattern/ { k = split(ns, n, \" \"); for (i = 1; i <= k; i++) printf \"%s%s\", \$n[i], (i < k ? \"|\" : \"\n\"); exit }" \
        "$tmp/$file.out" 2>/dev/null || true
}
raw_rate=$(field uds_limit '^stream:' 11)
IFS='|' read -r raw_p50 raw_p99 <<<"$(field uds_limit '^rtt:' 3 6)"
node_rate=$(field node_ipc '^stream:' 8)
IFS='|' read -r node_p50 node_p99 <<<"$(field node_ipc '^rtt:' 3 6)"
rc_rate=$(field ipc '^stream median:' 3)
IFS='|' read -r rc_p50 rc_p90 rc_p99 <<<"$(field ipc '^rtt:' 3 6 9)"
# after FILE PATTERN KEY: the word after KEY on the first line matching PATTERN ("" if none).
after() { awk -v k="$3" "/$2/ { for (i = 1; i < NF; i++) if (\$i == k) { print \$(i + 1); exit } }" "$tmp/$1.out" 2>/dev/null || true; }
rc_p999=$(after ipc '^rtt:' p99.9)
# The raw socketpair measured inside ipc, interleaved with rcluster's round trips: the same
# moments of the machine, and a p99.9 (the anchor uds_limit reports p50 and p99 only).
raw_i_p50=$(after ipc '^rtt-diag: raw socketpair' p50)
raw_i_p99=$(after ipc '^rtt-diag: raw socketpair' p99)
raw_i_p999=$(after ipc '^rtt-diag: raw socketpair' p99.9)
IFS='|' read -r rs_p50 rs_p90 rs_p99 <<<"$(field restart '^restart:' 3 6 9)"
rss_kb=$(field rss '^rss: primary VmRSS' 4)

# calc EXPR with the variables a and b; "-" when an input is missing.
calc() {
    local expr=$1 a=${2:-} b=${3:-}
    if [[ -z $a || ( $expr == *b* && -z $b ) ]]; then echo "-"; return; fi
    awk -v a="$a" -v b="$b" "BEGIN { printf \"%.3f\", $expr }"
}
verdict() { # verdict VALUE OP LIMIT
    [[ $1 == - || -z $1 ]] && { echo "n/a"; return; }
    awk -v v="$1" -v l="$3" "BEGIN { print ((v $2 l) ? \"met\" : \"MISSED\") }"
}

rate_ratio=$(calc 'a/b' "$rc_rate" "$node_rate")
p50_ratio=$(calc 'a/b' "$rc_p50" "$raw_p50")
p99_ratio=$(calc 'a/b' "$rc_p99" "$raw_p99")
rss_mb=$(calc 'a/1024' "$rss_kb")

echo
echo "== summary (one run; anchors from this same run)"
printf '%-34s %14s %14s %s\n' "figure" "value" "target" "verdict"
printf '%-34s %14s %14s %s\n' "a) stream msg/s, rcluster" "${rc_rate:--}" ">= 2000000" "$(verdict "${rc_rate:--}" '>=' 2000000)"
printf '%-34s %14s\n' "   stream msg/s, Node IPC" "${node_rate:--}"
printf '%-34s %14s\n' "   stream frames/s, raw socketpair" "${raw_rate:--}"
printf '%-34s %14s\n' "   rcluster / Node" "${rate_ratio}x"
printf '%-34s %14s\n' "b) RTT p50 us, rcluster" "${rc_p50:--}"
printf '%-34s %14s\n' "   RTT p50 us, raw socketpair" "${raw_p50:--}"
printf '%-34s %14s %14s %s\n' "   rcluster p50 / raw p50" "${p50_ratio}x" "<= 1.3x" "$(verdict "$p50_ratio" '<=' 1.3)"
printf '%-34s %14s\n' "   RTT p90 us, rcluster" "${rc_p90:--}"
printf '%-34s %14s\n' "   RTT p99 us, rcluster" "${rc_p99:--}"
printf '%-34s %14s\n' "   RTT p99 us, raw socketpair" "${raw_p99:--}"
printf '%-34s %14s\n' "   rcluster p99 / raw p99" "${p99_ratio}x"
printf '%-34s %14s\n' "   RTT p99.9 us, rcluster" "${rc_p999:--}"
printf '%-34s %14s\n' "   raw interleaved p50/p99/p99.9" "${raw_i_p50:--}/${raw_i_p99:--}/${raw_i_p999:--}"
printf '%-34s %14s %14s %s\n' "   rcluster p99 / interleaved raw" "$(calc 'a/b' "$rc_p99" "$raw_i_p99")x" "<= 1.5x" "$(verdict "$(calc 'a/b' "$rc_p99" "$raw_i_p99")" '<=' 1.5)"
printf '%-34s %14s\n' "   RTT p50 / p99 us, Node IPC" "${node_p50:--} / ${node_p99:--}"
printf '%-34s %14s %14s %s\n' "c) restart p50 ms" "${rs_p50:--}" "<= 5" "$(verdict "${rs_p50:--}" '<=' 5)"
printf '%-34s %14s\n' "   restart p90 / p99 ms" "${rs_p90:--} / ${rs_p99:--}"
printf '%-34s %14s %14s %s\n' "d) primary RSS MB, $workers workers" "$rss_mb" "<= 10" "$(verdict "$rss_mb" '<=' 10)"
if [[ -z $rss_kb ]]; then
    echo "   (rss: $(sed -n 's/^rss: unavailable: //p' "$tmp/rss.out" | head -1))"
fi
echo
if grep -q '^== http summary' "$tmp/http.out"; then
    sed -n '/^== http summary/,$p' "$tmp/http.out"
else
    echo "== http summary: missing ($(head -1 "$tmp/http.out" 2>/dev/null))"
fi

c_rate=$(field ipc_c '^stream median:' 3)
c_ratio=$(calc 'a/b' "$c_rate" "$rc_rate")
printf '%-34s %14s\n' "stream msg/s, C API" "${c_rate:--}"
printf '%-34s %14s\n' "stream msg/s, Rust API" "${rc_rate:--}"
printf '%-34s %14s %14s %s\n' "C API / Rust API" "${c_ratio}x" ">= 0.9x" "$(verdict "$c_ratio" '>=' 0.9)"

# ---------------------------------------------------------------------------------------
# Python binding (bench/python): the IPC stream against Node's process.send, run again here
# beside it, the round trip beside multiprocessing.Pipe's, and the asyncio HTTP worker, round-robin against shared. Builds the package
# from source into bindings/python/.venv (as bindings/python/test.sh does) when needed.
echo
echo "== python: building the binding"
pyenv_dir="$repo/bindings/python/.venv"
py_ok=yes
if [[ ! -x $pyenv_dir/bin/python ]]; then
    python3 -m venv "$pyenv_dir" || py_ok=no
fi
if [[ $py_ok == yes ]]; then
    "$pyenv_dir/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" </dev/null \
        && "$pyenv_dir/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall \
            --no-deps "$repo/bindings/python" </dev/null || py_ok=no
fi
if [[ $py_ok == yes ]]; then
    run python_ipc "$pyenv_dir/bin/python" "$repo/bench/python/ipc_stream.py" 1000000 3
    if command -v node >/dev/null; then
        (cd "$anchors" && run node_ipc_py node node_ipc.js 200000 20000)
    else
        : >"$tmp/node_ipc_py.out"
    fi
    command -v wrk >/dev/null || apt-get install -y wrk >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; } || true
    run python_http "$pyenv_dir/bin/python" "$repo/bench/python/http.py"
    py_bytes=$(field python_ipc '^python-stream bytes:' 7)
    py_json=$(field python_ipc '^python-stream json:' 7)
    node_py=$(field node_ipc_py '^stream:' 8)
    py_rr=$(field python_http '^python-http median rr:' 4)
    py_shared=$(field python_http '^python-http median shared:' 4)
    py_bytes_ratio=$(calc 'a/b' "$py_bytes" "$node_py")
    py_json_ratio=$(calc 'a/b' "$py_json" "$node_py")
    py_http_ratio=$(calc 'a/b' "$py_rr" "$py_shared")
    IFS='|' read -r py_rtt_p50 py_rtt_p99 py_rtt_p999 \
        <<<"$(field python_ipc '^python-rtt median rcluster:' 5 9 11)"
    IFS='|' read -r pipe_rtt_p50 pipe_rtt_p99 pipe_rtt_p999 \
        <<<"$(field python_ipc '^python-rtt median pipe:' 5 9 11)"
    py_rtt_ratio=$(calc 'a/b' "$py_rtt_p99" "$pipe_rtt_p99")
    echo
    echo "== python summary (anchors from this same run)"
    printf '%-34s %14s %14s %s\n' "stream msg/s, Python, bytes" "${py_bytes:--}"
    printf '%-34s %14s %14s %s\n' "stream msg/s, Python, send_json" "${py_json:--}"
    printf '%-34s %14s\n' "stream msg/s, Node IPC" "${node_py:--}"
    printf '%-34s %14s %14s %s\n' "Python bytes / Node" "${py_bytes_ratio}x" ">= 3x" "$(verdict "$py_bytes_ratio" '>=' 3)"
    printf '%-34s %14s %14s %s\n' "Python send_json / Node" "${py_json_ratio}x" "" "reported"
    printf '%-34s %14s\n' "RTT us p50/p99/p99.9, Python" "${py_rtt_p50:--}/${py_rtt_p99:--}/${py_rtt_p999:--}"
    printf '%-34s %14s\n' "   multiprocessing.Pipe" "${pipe_rtt_p50:--}/${pipe_rtt_p99:--}/${pipe_rtt_p999:--}"
    printf '%-34s %14s %14s %s\n' "Python RTT p99 / Pipe p99" "${py_rtt_ratio}x" "" "reported"
    printf '%-34s %14s\n' "asyncio HTTP rr req/s, 2 workers" "${py_rr:--}"
    printf '%-34s %14s\n' "asyncio HTTP shared req/s" "${py_shared:--}"
    printf '%-34s %14s %14s %s\n' "rr / shared, new connection" "${py_http_ratio}x" ">= 0.95x" "$(verdict "$py_http_ratio" '>=' 0.95)"
else
    echo "python: unavailable: the binding did not build"
fi

# Node binding: the Node anchors run under `cluster` and, unchanged, under rcluster, in the
# same run (bench/node/run.sh builds the addon, needs wrk and installs it when missing; with
# its tail section it takes about 12 minutes at ROUNDS=5, hence its bound).
if command -v node >/dev/null; then
    echo "== node: bench/node/run.sh"
    timeout 1800 "$repo/bench/node/run.sh" || echo "run.sh: node benchmarks failed or timed out" >&2
else
    echo "== node: skipped (node is not installed)"
fi
