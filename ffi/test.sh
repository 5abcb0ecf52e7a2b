#!/usr/bin/env bash
# The C tests: builds librcluster (.so and .a), checks that include/rcluster.h is fresh,
# compiles the C tests and examples with gcc -Wall -Wextra -Werror against the header and
# each library, runs them (a real cluster of the C example worker, a real HTTP client), and
# runs them again under valgrind memcheck, workers included. Installs what it lacks.
# Prints "C: N passed, M failed" last; exits non-zero on any failure.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

passed=0
failed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
step() { printf '\n== %s\n' "$*"; }
die() { echo "ffi/test.sh: $*" >&2; echo "C: $passed passed, $((failed + 1)) failed"; exit 1; }

need() { # need COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is missing
    command -v "$1" >/dev/null && return 0
    echo "installing $2"
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "$2" >/dev/null || die "cannot install $2"
}

step "tools"
need gcc gcc
need valgrind valgrind
need curl curl
need pkg-config pkg-config

step "build librcluster"
cargo build -p rcluster-ffi --quiet || die "cargo build -p rcluster-ffi failed"
lib="$repo/target/debug"
[[ -f $lib/librcluster.so && -f $lib/librcluster.a ]] || die "librcluster.so/.a missing in target/debug"

step "header"
if ffi/header.sh --check; then ok "include/rcluster.h is fresh"; else not_ok "include/rcluster.h is fresh"; fi

out="$repo/target/c-tests"
rm -rf "$out"
mkdir -p "$out/shared" "$out/static" "$out/pkgconfig" "$out/logs"
version=$(sed -n 's/^#define RCLUSTER_VERSION "\(.*\)"/\1/p' include/rcluster.h)
sed -e "s|@PREFIX@|$repo|; s|@INCLUDEDIR@|$repo/include|; s|@LIBDIR@|$lib|; s|@VERSION@|$version|" \
    ffi/librcluster.pc.in >"$out/pkgconfig/librcluster.pc"
export PKG_CONFIG_PATH="$out/pkgconfig"

step "compile (gcc -Wall -Wextra -Werror; shared via pkg-config, static via pkg-config --static)"
cflags=(-std=c11 -g -O1 -Wall -Wextra -Werror -Itests/c $(pkg-config --cflags librcluster))
shared_libs=($(pkg-config --libs librcluster) -Wl,-rpath,"$lib")
static_libs=("$lib/librcluster.a" $(pkg-config --static --libs-only-l librcluster | sed 's/-lrcluster//'))
programs=(examples/c/worker.c examples/c/primary.c examples/c/pool.c tests/c/test_cluster.c
    tests/c/test_bad_input.c tests/c/test_shared.c)
for kind in shared static; do
    for src in "${programs[@]}"; do
        name=$(basename "$src" .c)
        if [[ $kind == shared ]]; then libs=("${shared_libs[@]}"); else libs=("${static_libs[@]}"); fi
        if gcc "${cflags[@]}" -o "$out/$kind/$name" "$src" "${libs[@]}" -lpthread; then
            ok "$name compiles and links against librcluster ($kind)"
        else
            not_ok "$name compiles and links against librcluster ($kind)"
        fi
    done
done
if [[ $(ldd "$out/static/test_cluster" | grep -c librcluster) == 0 ]]; then
    ok "static build does not load librcluster.so"
else
    not_ok "static build does not load librcluster.so"
fi

# run_suite LABEL COMMAND...: runs a C test program, counting its "ok"/"not ok" lines.
run_suite() {
    local label=$1
    shift
    local log="$out/logs/$label.log"
    timeout 300 "$@" >"$log" 2>&1
    local rc=$?
    sed "s/^/[$label] /" "$log" | grep -E '^\[[^]]*\] (ok|not ok) ' || true
    local p f
    p=$(grep -c '^ok - ' "$log" 2>/dev/null)
    f=$(grep -c '^not ok - ' "$log" 2>/dev/null)
    p=${p:-0} f=${f:-0}
    passed=$((passed + p))
    failed=$((failed + f))
    if [[ $rc != 0 || $f != 0 || $p == 0 ]]; then
        echo "--- $label failed (exit $rc); its output:"
        cat "$log"
        [[ $f == 0 ]] && failed=$((failed + 1))
    fi
}

for kind in shared static; do
    step "C tests ($kind library)"
    run_suite "$kind-test_bad_input" "$out/$kind/test_bad_input"
    run_suite "$kind-test_cluster" "$out/$kind/test_cluster" -- "$out/$kind/worker"
    run_suite "$kind-test_shared" "$out/$kind/test_shared"
done

step "example primary + worker against curl"
example_test() {
    local log="$out/logs/example.log"
    "$out/shared/primary" -w 2 -l 127.0.0.1:0 -- "$out/shared/worker" >"$log" 2>&1 &
    local pid=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^listening on //p' "$log")
        [[ -n $addr ]] && [[ $(grep -c ': ready$' "$log") -ge 2 ]] && break
        sleep 0.1
    done
    local ids=""
    for _ in 1 2 3 4; do
        ids+="$(curl -s --max-time 10 "http://$addr/" | sed -n 's/^Hello from worker \([0-9]*\).*/\1/p')"
    done
    [[ $ids == 0101 || $ids == 1010 ]] || { echo "curl saw workers '$ids'"; kill -KILL $pid; cat "$log"; return 1; }
    kill -HUP $pid
    for _ in $(seq 150); do grep -q 'reload to generation 2 done' "$log" && break; sleep 0.1; done
    grep -q 'reload to generation 2 done' "$log" || { echo "no reload"; kill -KILL $pid; cat "$log"; return 1; }
    curl -s --max-time 10 "http://$addr/" | grep -q '^Hello from worker' || { echo "no answer after reload"; kill -KILL $pid; return 1; }
    kill -TERM $pid
    local status=0
    for _ in $(seq 150); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill -0 $pid 2>/dev/null && { echo "primary did not stop"; kill -KILL $pid; return 1; }
    wait $pid || status=$?
    [[ $status == 0 ]] && grep -q '^stopped$' "$log" || { echo "exit $status"; cat "$log"; return 1; }
}
if example_test; then
    ok "example primary serves curl round-robin, reloads on SIGHUP, stops on SIGTERM"
else
    not_ok "example primary serves curl round-robin, reloads on SIGHUP, stops on SIGTERM"
fi

# start_example LOG: starts the example primary with two example workers on a loopback port,
# logging to LOG; sets `pid` and `addr` (HOST:PORT) once both workers are ready.
start_example() {
    "$out/shared/primary" -w 2 -l 127.0.0.1:0 -- "$out/shared/worker" >"$1" 2>&1 &
    pid=$!
    addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^listening on //p' "$1")
        [[ -n $addr ]] && [[ $(grep -c ': ready$' "$1") -ge 2 ]] && break
        sleep 0.1
    done
    [[ -n $addr ]] || { echo "no listener"; kill -KILL $pid; cat "$1"; return 1; }
}

step "example primary + worker under keep-alive load across three reloads (wrk)"
# wrk keeps 50 connections alive, each with a request always in flight or about to be sent:
# every request must be answered (no socket error, no non-2xx) while three rolling reloads
# replace the workers, and no worker may die of the clients (SIGPIPE when wrk closes its
# connections at the end).
keepalive_test() {
    local log="$out/logs/keepalive.log" res="$out/logs/keepalive-wrk.log"
    local pid addr
    start_example "$log" || return 1
    timeout 30 wrk -t2 -c50 -d6s "http://$addr/" >"$res" 2>&1 &
    local load=$!
    for g in 2 3 4; do
        sleep 1.5
        kill -HUP $pid
        for _ in $(seq 100); do grep -q "reload to generation $g done" "$log" && break; sleep 0.05; done
    done
    wait $load
    sleep 0.5
    kill -TERM $pid
    for _ in $(seq 150); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill -0 $pid 2>/dev/null && { echo "primary did not stop"; kill -KILL $pid; return 1; }
    wait $pid
    cat "$res"
    local bad=0
    grep -q 'requests in' "$res" || { echo "wrk did not run"; bad=1; }
    grep -E 'Socket errors|Non-2xx' "$res" && bad=1
    [[ $(grep -c 'reload to generation [234] done' "$log") == 3 ]] || { echo "not three reloads"; bad=1; }
    grep -E 'exited .*crashed' "$log" && bad=1
    [[ $bad == 0 ]] || { cat "$log" | grep -v ': message ' ; return 1; }
}
need wrk wrk
if keepalive_test; then
    ok "example worker answers every keep-alive request across three reloads and survives its clients"
else
    not_ok "example worker answers every keep-alive request across three reloads and survives its clients"
fi

step "example primary + worker: SIGTERM under load fails no accepted connection"
# Clients that each send one request per connection, without pause; SIGTERM lands in the middle
# of that. Every connection the kernel accepted must get its full answer; new ones after the
# stop are refused (or time out connecting), never accepted and then reset.
sigterm_load_test() {
    local log="$out/logs/sigterm-load.log" res="$out/logs/sigterm-load.out"
    local pid addr
    start_example "$log" || return 1
    timeout 60 python3 "$repo/tests/python/close_load.py" "$addr" 4 32 >"$res" 2>&1 &
    local load=$!
    sleep 1.5
    kill -TERM $pid
    for _ in $(seq 150); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill -0 $pid 2>/dev/null && { echo "primary did not stop"; kill -KILL $pid; return 1; }
    local status=0
    wait $pid || status=$?
    wait $load
    cat "$res"
    [[ $status == 0 ]] || { echo "primary exited $status"; return 1; }
    grep -qE '^answered=[1-9][0-9]* ' "$res" || { echo "no request was answered"; return 1; }
    grep -q ' failed=0$' "$res" || return 1
}
if sigterm_load_test; then
    ok "example primary on SIGTERM under load: every accepted connection answered, new ones refused"
else
    not_ok "example primary on SIGTERM under load: every accepted connection answered, new ones refused"
fi

step "example pool: 1,000 tasks and one that crashes its worker"
# The example checks itself: every task but the crashing one succeeds, that one fails naming
# SIGABRT, and the pool carries on (exit 0). Built both ways, and with AddressSanitizer.
for kind in shared static; do
    if timeout 120 "$out/$kind/pool" 2 >"$out/logs/pool-$kind.log" 2>&1; then
        ok "example pool ($kind): exactly the crashing task fails, naming SIGABRT"
    else
        not_ok "example pool ($kind): exactly the crashing task fails, naming SIGABRT"
        cat "$out/logs/pool-$kind.log"
    fi
done
if gcc "${cflags[@]}" -fsanitize=address -fno-omit-frame-pointer -o "$out/asan-pool" examples/c/pool.c \
        "${shared_libs[@]}" -lpthread &&
    ASAN_OPTIONS=detect_leaks=1:exitcode=1 timeout 120 "$out/asan-pool" 2 >"$out/logs/pool-asan.log" 2>&1; then
    ok "example pool under AddressSanitizer (primary and workers)"
else
    not_ok "example pool under AddressSanitizer (primary and workers)"
    cat "$out/logs/pool-asan.log"
fi

step "memory checks: valgrind memcheck and AddressSanitizer"
# valgrind 3.19 does not know pidfd_open (syscall 434), without which a primary cannot watch
# its workers, so: workers run under valgrind (each with its own log; a worker exits 0 when
# asked to leave, and --error-exitcode turns a memcheck error into exit 1, which test_cluster
# checks); primaries run built with AddressSanitizer (LeakSanitizer included), and
# test_bad_input, which needs no worker, also runs under valgrind itself.
vg=(valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite
    --error-exitcode=1 --quiet)
asan=(-fsanitize=address -fno-omit-frame-pointer)
for src in tests/c/test_cluster.c tests/c/test_bad_input.c; do
    name=$(basename "$src" .c)
    if gcc "${cflags[@]}" "${asan[@]}" -o "$out/asan-$name" "$src" "${shared_libs[@]}" -lpthread; then
        ok "$name compiles with AddressSanitizer"
    else
        not_ok "$name compiles with AddressSanitizer"
    fi
done
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=1
run_suite "valgrind-test_bad_input" "${vg[@]}" --log-file="$out/logs/vg-bad-input.log" \
    "$out/shared/test_bad_input" --no-children
run_suite "asan-test_bad_input" "$out/asan-test_bad_input"
run_suite "asan+valgrind-test_cluster" "$out/asan-test_cluster" -- \
    "${vg[@]}" --log-file="$out/logs/vg-worker.%p.log" "$out/shared/worker"
# "Invalid read/write" and errors of any kind; the unhandled-syscall warning is not an error.
vg_bad=$(grep -l -E 'ERROR SUMMARY: [1-9]|definitely lost: [1-9]|Invalid (read|write)' \
    "$out"/logs/vg-*.log 2>/dev/null || true)
vg_workers=$(ls "$out"/logs/vg-worker.*.log 2>/dev/null | wc -l)
if [[ -z $vg_bad && $vg_workers -ge 3 ]]; then
    ok "valgrind logs show no errors and nothing definitely lost ($vg_workers worker processes)"
else
    not_ok "valgrind logs show no errors and nothing definitely lost ($vg_workers worker logs)"
    for f in $vg_bad; do echo "--- $f"; cat "$f"; done
fi

echo
echo "C: $passed passed, $failed failed"
[[ $failed == 0 ]]
