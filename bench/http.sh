#!/usr/bin/env bash
# HTTP dispatch benchmark: the example worker (hello-worker) under `rcluster run --ready
# explicit`, round-robin dispatch against the same worker in `shared` mode, 2 against 64
# workers, with Node's cluster module (rr and none) as anchors in the same run.
#
# Usage: bench/http.sh          (from anywhere; uses ../shared/anchors beside the repository)
# Environment: DURATION (5s), CONNS (50), MID (16 workers), MANY (64 workers), ROUNDS (3),
# SKIP_BUILD (unset).
#
# One server runs at a time: each round starts every server in turn (every other round in
# reverse order) on a free loopback port, warms it up, measures it and stops it, ROUNDS times:
# on this noisy 2-core machine that keeps slow phases from landing on one server only, and no
# server is measured beside another that sat idle or just ran (which on 2 CPUs measured
# slower: see RESULTS.md). Throughput is the median round, primary CPU per connection the
# lowest (the least disturbed); every round is printed too. Every throughput figure has its
# latency beside it (p50, p99, p99.9 from wrk's histogram, printed by a done() callback that
# costs nothing per request; the median round of each). Body counting (spread) is a separate
# pass, so that the Lua callback per response does not slow the throughput runs.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
anchors="$repo/../shared/anchors"
bin="$repo/target/release"
duration=${DURATION:-5s}
conns=${CONNS:-50}
mid=${MID:-16}
many=${MANY:-64}
rounds=${ROUNDS:-3}
hz=$(getconf CLK_TCK)

if ! command -v wrk >/dev/null; then
    echo "http.sh: installing wrk"
    if ! apt-get install -y wrk >/dev/null 2>&1; then
        apt-get update >/dev/null && apt-get install -y wrk >/dev/null
    fi
fi
if [[ -z ${SKIP_BUILD:-} ]]; then
    (cd "$repo" && cargo build --release -p rcluster -p rcluster-examples)
fi

tmp=$(mktemp -d)
servers=() # pids; each server leads its own process group (setsid), so leftovers go too

stop_server() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    # A stopped child stays a zombie until waited for: check the state, not just existence.
    for ((i = 0; i < 100; i++)); do
        [[ $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) =~ ^(Z|)$ ]] && break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${servers[@]}"; do stop_server "$pid"; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nobody listens on, below the ephemeral range so that wrk's own client
# ports never collide with it.
used_ports=" "
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        [[ $used_ports == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            used_ports+="$p "
            echo "$p"
            return
        fi
    done
}

# utime+stime of one process (all its threads), in clock ticks.
ticks() {
    local s f
    { read -r s <"/proc/$1/stat"; } 2>/dev/null || { echo 0; return; }
    s=${s##*) } # the command name may hold spaces: fields start after the last ')'
    read -r -a f <<<"$s"
    echo $((f[11] + f[12]))
}

# The sum of ticks() over the children of a process (the workers).
child_ticks() {
    local f s a total=0
    for f in /proc/[0-9]*/stat; do
        { read -r s <"$f"; } 2>/dev/null || continue
        s=${s##*) }
        read -r -a a <<<"$s"
        ((a[1] == $1)) && total=$((total + a[11] + a[12]))
    done
    echo "$total"
}

# Context switches of all threads of a process: how often the primary went to sleep and woke.
switches() {
    awk '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }' /proc/"$1"/task/*/status 2>/dev/null || echo 0
}

# start NAME PORT READY_PATTERN READY_COUNT CMD...: starts a server, waits until its log has
# READY_COUNT lines matching READY_PATTERN (30 s at most).
declare -A port_of pid_of
start() {
    local name=$1 port=$2 pattern=$3 count=$4 i
    shift 4
    : >"$tmp/$name.log" # exists before the server writes to it, for the grep below
    setsid "$@" >"$tmp/$name.log" 2>&1 &
    servers+=($!)
    pid_of[$name]=$!
    port_of[$name]=$port
    for ((i = 0; i < 300; i++)); do
        if (($(grep -c -E "$pattern" "$tmp/$name.log" || true) >= count)); then
            return 0
        fi
        if ! kill -0 "${pid_of[$name]}" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "http.sh: $name did not become ready; its log:" >&2
    tail -20 "$tmp/$name.log" >&2
    exit 1
}

rc_start() { # rc_start NAME WORKERS DISPATCH
    local port
    port=$(free_port)
    start "$1" "$port" ': ready$' "$2" "$bin/rcluster" run -w "$2" --ready explicit \
        --dispatch "$3" --listen "127.0.0.1:$port" -- "$bin/hello-worker"
}

# Latency percentiles at the end of a run, in microseconds (no per-request cost).
cat >"$tmp/lat.lua" <<'EOF'
function done(summary, latency, requests)
  io.write(string.format("latency-us: p50 %d p99 %d p99.9 %d\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
EOF

# wrkrun NAME MODE TAG [extra wrk args]: one bounded wrk run; MODE is close or keep.
# Sets REQS, RATE, ERRS, PRIMARY / WORKERS (CPU ticks of the primary and of its children),
# SWITCHES (context switches of the primary) and LAT ("p50 p99 p99.9" in ms from the
# script's latency line; lat.lua's unless the extra args bring another, bench/count.lua).
wrkrun() {
    local name=$1 mode=$2 tag=$3 pid=${pid_of[$1]} out="$tmp/$1.$2.$3.wrk" p0 c0 s0
    shift 3
    local hdr=()
    [[ $mode == close ]] && hdr=(-H 'Connection: close')
    p0=$(ticks "$pid")
    c0=$(child_ticks "$pid")
    s0=$(switches "$pid")
    (($# == 0)) && set -- -s "$tmp/lat.lua"
    timeout 60 wrk -t1 -c"$conns" -d"$duration" "${hdr[@]}" "$@" \
        "http://127.0.0.1:${port_of[$name]}/" >"$out" 2>&1 || true
    SWITCHES=$(($(switches "$pid") - s0))
    PRIMARY=$(($(ticks "$pid") - p0))
    WORKERS=$(($(child_ticks "$pid") - c0))
    REQS=$(awk '/requests in/ { print $1; exit }' "$out")
    RATE=$(awk '/^Requests\/sec:/ { printf "%.0f", $2; exit }' "$out")
    ERRS=$(awk '/Socket errors:/ { sub(/.*errors: /, ""); print; exit }
        /Non-2xx/ { print "non-2xx " $NF; exit }' "$out")
    REQS=${REQS:-0}
    RATE=${RATE:-0}
    LAT=$(awk '/^latency-us:/ { printf "%.2f %.2f %.2f", $3 / 1000, $5 / 1000, $7 / 1000; exit }' "$out")
    LAT=${LAT:-- - -}
}

us_per() { # us_per TICKS REQUESTS: CPU microseconds per request
    awk -v t="$1" -v n="$2" -v hz="$hz" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-" }'
}

# Share of the CPUs busy over 2 s before anything of this benchmark runs: other people's work.
# (The load average is no guide once the servers run: their own threads count in it.)
busy_before() {
    local a b
    read -r -a a < <(grep '^cpu ' /proc/stat)
    sleep 2
    read -r -a b < <(grep '^cpu ' /proc/stat)
    awk -v i0=$((a[4] + a[5])) -v i1=$((b[4] + b[5])) \
        -v t0=$((a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7] + a[8])) \
        -v t1=$((b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + b[7] + b[8])) \
        'BEGIN { printf "%.0f%%", 100 * (1 - (i1 - i0) / (t1 - t0)) }'
}

echo "== http: machine: $(nproc) CPUs, kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg), CPU busy before start $(busy_before)"
echo "== http: wrk -t1 -c$conns -d$duration [-H 'Connection: close'], $rounds rounds, one server at a time"

names=(rr2 shared2 "rr$mid" "rr$many")
if command -v node >/dev/null && [[ -f $anchors/node_cluster_hello.js ]]; then
    names+=(node_rr node_none)
else
    echo "== http: Node anchors skipped (node or ../shared/anchors/node_cluster_hello.js missing)"
fi

# launch NAME: starts the server NAME and warms it up (first connections fault in pages and
# start threads in every process).
launch() {
    local port
    case $1 in
        rr2) rc_start rr2 2 rr ;;
        shared2) rc_start shared2 2 shared ;;
        "rr$mid") rc_start "rr$mid" "$mid" rr ;;
        "rr$many") rc_start "rr$many" "$many" rr ;;
        node_rr | node_none)
            port=$(free_port)
            start "$1" "$port" '^READY' 1 node "$anchors/node_cluster_hello.js" "$port" 2 "${1#node_}"
            ;;
    esac
    timeout 30 wrk -t1 -c"$conns" -d1s -H 'Connection: close' "http://127.0.0.1:${port_of[$1]}/" >/dev/null 2>&1 || true
}
# halt NAME: stops it and forgets it.
halt() {
    local pid=${pid_of[$1]} i
    stop_server "$pid"
    for i in "${!servers[@]}"; do [[ ${servers[i]} == "$pid" ]] && unset 'servers[i]'; done
}

declare -A rate_of all_rates cost_primary cost_workers all_costs all_lats
for ((r = 1; r <= rounds; r++)); do
    echo "== http: round $r (load $(cut -d' ' -f1 /proc/loadavg)); per request:"
    echo "   CPU us of the primary and of all its workers together, context switches of the primary"
    printf '   %-9s %-6s %9s %8s %11s %11s %9s  %-20s %s\n' server mode req/s requests "primary us" "workers us" "switches" "p50/p99/p99.9 ms" errors
    # Every other round goes backwards, so that no server always runs first or last, when
    # other work on the machine tends to arrive.
    order=("${names[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("${names[i]}"); done
    fi
    for n in "${order[@]}"; do
        launch "$n"
        for mode in close keep; do
            wrkrun "$n" "$mode" "r$r"
            cp=$(us_per "$PRIMARY" "$REQS")
            cw=$(us_per "$WORKERS" "$REQS")
            sw=$(awk -v s="$SWITCHES" -v n="$REQS" 'BEGIN { if (n > 0) printf "%.2f", s / n; else print "-" }')
            printf '   %-9s %-6s %9s %8s %11s %11s %9s  %-20s %s\n' "$n" "$mode" "$RATE" "$REQS" "$cp" "$cw" "$sw" "${LAT// //}" "${ERRS:-}"
            k="$n.$mode"
            all_lats[$k]+="$LAT "
            all_costs[$k]+="$cp "
            all_rates[$k]+="$RATE "
            if [[ $cp != - ]] && awk -v a="$cp" -v b="${cost_primary[$k]:-inf}" 'BEGIN { exit !(b == "inf" || a < b) }'; then
                cost_primary[$k]=$cp
                cost_workers[$k]=$cw
            fi
        done
        halt "$n"
    done
done

# Throughput of each server and mode: the median round (one round on this machine can be
# off by a fifth either way, and the best round picks the luckiest outlier).
median() { tr ' ' '\n' <<<"$1" | { grep -v '^$' || true; } | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
for k in "${!all_rates[@]}"; do rate_of[$k]=$(median "${all_rates[$k]}"); done
# The median round of each latency figure: "p50 p99 p99.9" (ms) per server and mode.
declare -A lat_of
for k in "${!all_lats[@]}"; do
    lat_of[$k]=""
    for col in 1 2 3; do
        lat_of[$k]+="$(median "$(awk -v c="$col" '{ for (i = c; i <= NF; i += 3) if ($i != "-") printf "%s ", $i }' <<<"${all_lats[$k]}")") "
    done
done
p99() { awk '{ print $2 }' <<<"${lat_of[$1]:-}"; }

echo "== http: spread pass (bodies counted with a Lua callback; throughput of this pass not used)"
declare -A spread
for n in "${names[@]}"; do
    launch "$n"
    for mode in close keep; do
        # Keep-alive spread is reported for the 2-worker round-robin only: connections are
        # dispatched once there, so it shows the workers' speed rather than the dispatcher.
        [[ $mode == keep && $n != rr2 ]] && continue
        wrkrun "$n" "$mode" spread -s "$repo/bench/count.lua"
        echo "   $n $mode: $(grep '^spread:' "$tmp/$n.$mode.spread.wrk" || echo 'spread: no output')"
        sed -n 's/^per-worker: /      /p' "$tmp/$n.$mode.spread.wrk" | cut -c1-400
        spread[$n.$mode]=$(awk '/^spread:/ { sub(/,/, "", $5); print $5; exit }' "$tmp/$n.$mode.spread.wrk")
    done
    halt "$n"
done

ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "-" }'; }
verdict() { # verdict VALUE OP LIMIT
    [[ -z $1 || $1 == - ]] && { echo "n/a"; return; }
    awk -v v="$1" -v l="$3" "BEGIN { print ((v $2 l) ? \"met\" : \"MISSED\") }"
}
row() { printf '%-44s %10s %10s %s\n' "$@"; }

rr_sh_close=$(ratio "${rate_of[rr2.close]:-}" "${rate_of[shared2.close]:-}")
rr_sh_keep=$(ratio "${rate_of[rr2.keep]:-}" "${rate_of[shared2.keep]:-}")
many_two=$(ratio "${rate_of[rr$many.close]:-}" "${rate_of[rr2.close]:-}")
cost_ratio=$(ratio "${cost_primary[rr$many.close]:-}" "${cost_primary[rr2.close]:-}")
mid_ratio=$(ratio "${cost_primary[rr$mid.close]:-}" "${cost_primary[rr2.close]:-}")
# How far the same 2-worker cluster's cost moves between rounds: the noise that a 64/2 ratio
# has to be read against on this machine.
noise=$(awk '{ lo = ""; hi = 0; for (i = 1; i <= NF; i++) if ($i != "-") { if (lo == "" || $i < lo) lo = $i; if ($i > hi) hi = $i }
    if (lo > 0) printf "%.2f", hi / lo; else print "-" }' <<<"${all_costs[rr2.close]:-}")
flat=$(awk -v r="$cost_ratio" -v n="$noise" 'BEGIN { if (r == "-" || n == "-") print "n/a"; else print ((r <= 1.0 || r <= n) ? "met (within the noise)" : "MISSED") }')

echo
echo "== http summary (2 workers unless said; median of $rounds rounds; anchors from this same run)"
row figure value target verdict
row "new conn req/s, rcluster rr" "${rate_of[rr2.close]:--}"
row "new conn req/s, rcluster shared" "${rate_of[shared2.close]:--}"
row "   rr / shared, new conn" "${rr_sh_close}x" ">= 0.9x" "$(verdict "$rr_sh_close" '>=' 0.9)"
row "keep-alive req/s, rcluster rr" "${rate_of[rr2.keep]:--}"
row "keep-alive req/s, rcluster shared" "${rate_of[shared2.keep]:--}"
row "   rr / shared, keep-alive" "${rr_sh_keep}x" ">= 0.9x" "$(verdict "$rr_sh_keep" '>=' 0.9)"
row "spread max/min, rr, new conn" "${spread[rr2.close]:--}" "<= 1.05" "$(verdict "${spread[rr2.close]:--}" '<=' 1.05)"
for k in rr2.close shared2.close rr2.keep shared2.keep "rr$many.close"; do
    read -r -a v <<<"${lat_of[$k]:-}"
    row "latency ms p50/p99/p99.9, ${k%.*} ${k#*.}" "${v[0]:--}/${v[1]:--}/${v[2]:--}"
done
rr_sh_p99=$(ratio "$(p99 rr2.close)" "$(p99 shared2.close)")
row "   rr p99 / shared p99, new conn" "${rr_sh_p99}x" "<= 1.0x" "$(verdict "$rr_sh_p99" '<=' 1.0)"
row "   (at rr / shared req/s, new conn)" "${rr_sh_close}x" ">= 0.95x" "$(verdict "$rr_sh_close" '>=' 0.95)"
# The same two in pairs: every round runs rr2 and shared2 one right after the other, so each
# round's ratio is taken and the median of those given (a slow phase of the machine then moves
# both sides of a ratio alike).
round_col() { awk -v c="$2" -v s="$3" '{ for (i = c; i <= NF; i += s) print $i }' <<<"$1"; }
pair_median() { # pair_median LIST_A LIST_B FIRST STEP: median of the rounds' ratios a / b
    median "$(paste -d' ' <(round_col "$1" "$3" "$4") <(round_col "$2" "$3" "$4") |
        awk '$1 != "-" && $2 != "-" && $2 > 0 { printf "%.3f ", $1 / $2 }')"
}
pair_p99=$(pair_median "${all_lats[rr2.close]:-}" "${all_lats[shared2.close]:-}" 2 3)
pair_rate=$(pair_median "${all_rates[rr2.close]:-}" "${all_rates[shared2.close]:-}" 1 1)
row "   rr / shared, median of $rounds rounds' pairs" "p99 ${pair_p99:--}x, req/s ${pair_rate:--}x" "(info)"
row "spread max/min, rr, keep-alive" "${spread[rr2.keep]:--}" "(info)"
row "spread max/min, rr, $many workers, new conn" "${spread[rr$many.close]:--}" "(info)"
row "spread max/min, shared, new conn" "${spread[shared2.close]:--}" "(info)"
row "primary CPU us/conn, rr, 2 workers" "${cost_primary[rr2.close]:--}"
row "primary CPU us/conn, rr, $mid workers" "${cost_primary[rr$mid.close]:--}"
row "primary CPU us/conn, rr, $many workers" "${cost_primary[rr$many.close]:--}"
row "   $mid / 2 workers, primary CPU per conn" "${mid_ratio}x"
row "   2 workers, round-to-round max/min" "${noise}x" "(noise)"
row "   $many / 2 workers, primary CPU per conn" "${cost_ratio}x" "no growth" "$flat"
row "workers CPU us/conn, rr / shared" "${cost_workers[rr2.close]:--} / ${cost_workers[shared2.close]:--}"
row "new conn req/s, rr, $many workers" "${rate_of[rr$many.close]:--}"
row "   $many / 2 workers, new conn req/s" "${many_two}x"
row "primary CPU us/req, rr, keep-alive" "${cost_primary[rr2.keep]:--}"
if [[ -n ${rate_of[node_rr.close]:-} ]]; then
    row "new conn req/s, Node rr / none" "${rate_of[node_rr.close]:--} / ${rate_of[node_none.close]:--}"
    row "keep-alive req/s, Node rr / none" "${rate_of[node_rr.keep]:--} / ${rate_of[node_none.keep]:--}"
    row "Node rr primary CPU us/conn" "${cost_primary[node_rr.close]:--}"
    row "spread max/min, Node rr / none, new conn" "${spread[node_rr.close]:--} / ${spread[node_none.close]:--}"
    for k in node_rr.close node_none.close node_rr.keep node_none.keep; do
        read -r -a v <<<"${lat_of[$k]:-}"
        row "latency ms p50/p99/p99.9, ${k%.*} ${k#*.}" "${v[0]:--}/${v[1]:--}/${v[2]:--}"
    done
    row "   rcluster rr p99 / Node none p99, new conn" "$(ratio "$(p99 rr2.close)" "$(p99 node_none.close)")x"
    row "   rcluster rr / Node rr, new conn" "$(ratio "${rate_of[rr2.close]:-}" "${rate_of[node_rr.close]:-}")x"
    row "   rcluster rr / Node none, new conn" "$(ratio "${rate_of[rr2.close]:-}" "${rate_of[node_none.close]:-}")x"
    row "   rcluster rr / Node rr, keep-alive" "$(ratio "${rate_of[rr2.keep]:-}" "${rate_of[node_rr.keep]:-}")x"
    row "   rcluster rr / Node none, keep-alive" "$(ratio "${rate_of[rr2.keep]:-}" "${rate_of[node_none.keep]:-}")x"
else
    row "Node anchors" "skipped"
fi
echo "== http: load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
