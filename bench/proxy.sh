#!/usr/bin/env bash
# bench/proxy.sh — added latency, throughput, CPU and memory of weft-proxy against nginx and
# HAProxy, measured in one run on this machine. See bench/README.md for what is measured and
# how to read the table. All traffic goes to 127.0.0.1 only; every process started here is
# stopped on exit.
#
# Usage: bench/proxy.sh [--quick] [--rounds N] [--record] [--no-weft] [--no-build] [--keep]
#   --quick     one round of 3 s runs (smoke test; numbers are not worth recording)
#   --rounds N  measure every path's latency N times, interleaved, and report medians
#               (default 3)
#   --tp-rounds N  rounds of the max-throughput phase (default 10)
#   --lat-cycles N  cycles of the pooled latency phase at 1k rps (default 20)
#   --record    append the table, date and machine to bench/RESULTS.md
#   --no-weft   measure only direct, nginx and HAProxy (harness check)
#   --no-build  use the existing weft-proxy binary instead of building it
#   --no-pgo    measure the plain release build (target/release) instead of the one
#               scripts/build-release makes with profile-guided optimisation (target/pgo)
#   --keep      keep the temp dir (configs, logs, raw oha/wrk output) and print its path
#   --wait-quiet  before measuring, wait (up to 5 min) for 5 s in which other processes use
#               less than 0.25 vCPU: the machine is shared with compiles
#   --no-footprint  skip the footprint phase (instructions and L1 misses per request under
#               valgrind's cachegrind, about 3 minutes)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
TOOLS="$BENCH_DIR/.tools"
OHA="$TOOLS/bin/oha"
WEFT_BIN="$REPO/target/pgo/release/weft-proxy"

QUICK=0 RECORD=0 WEFT=1 BUILD=1 PGO=1 KEEP=0 WAIT_QUIET=0 FOOTPRINT=1 ROUNDS= TP_ROUNDS= LAT_CYCLES=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    arg=${args[i]}
    case "$arg" in
        --quick) QUICK=1 ;;
        --rounds)
            i=$((i + 1))
            ROUNDS=${args[i]:-}
            [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || {
                echo "proxy.sh: --rounds needs a positive number" >&2
                exit 2
            }
            ;;
        --lat-cycles)
            i=$((i + 1))
            LAT_CYCLES=${args[i]:-}
            [[ "$LAT_CYCLES" =~ ^[1-9][0-9]*$ ]] || {
                echo "proxy.sh: --lat-cycles needs a positive number" >&2
                exit 2
            }
            ;;
        --tp-rounds)
            i=$((i + 1))
            TP_ROUNDS=${args[i]:-}
            [[ "$TP_ROUNDS" =~ ^[1-9][0-9]*$ ]] || {
                echo "proxy.sh: --tp-rounds needs a positive number" >&2
                exit 2
            }
            ;;
        --record) RECORD=1 ;;
        --no-weft) WEFT=0 ;;
        --no-build) BUILD=0 ;;
        --no-pgo) PGO=0 ;;
        --keep) KEEP=1 ;;
        --wait-quiet) WAIT_QUIET=1 ;;
        --no-footprint) FOOTPRINT=0 ;;
        -h | --help)
            sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "proxy.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

DUR=8       # seconds per measured run
WARMUP=2    # seconds of closed-loop warm-up per path and round
CONNS=64    # connections for oha and wrk
RATES=(1000 10000)
TP_DUR=3    # seconds per wrk run in the max-throughput phase
LAT_RATE=1000 # the pooled latency phase: rate,
LAT_SLICE=2 # seconds per oha slice,
LAT_SKIP=0.25 # and the start of each slice left out (its connections being opened)
FP_REQS=3000 # requests per footprint run (cachegrind)
FP_RATE=300  # their rate: valgrind slows a proxy ~50x
FP_WARMUP=500 # requests before each footprint run, in both runs alike
PHASE_RUNS=5 # phase-profile runs per proxy, interleaved (DUR seconds each)
if ((QUICK)); then
    DUR=3 WARMUP=1 ROUNDS=${ROUNDS:-1} TP_DUR=2 TP_ROUNDS=${TP_ROUNDS:-2} FP_REQS=500
    LAT_CYCLES=${LAT_CYCLES:-2} PHASE_RUNS=1
fi
ROUNDS=${ROUNDS:-3}
LAT_CYCLES=${LAT_CYCLES:-20}
TP_ROUNDS=${TP_ROUNDS:-10}

PROXY_CORE=0 # proxies under test
LOAD_CORE=1  # load generator and upstream

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- setup (idempotent)
as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }

setup_tools() {
    local missing=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v pgrep >/dev/null || missing+=(procps)
    command -v python3 >/dev/null || missing+=(python3)
    command -v valgrind >/dev/null || missing+=(valgrind)
    if ((${#missing[@]})); then
        log "installing with apt-get: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [[ ! -x "$OHA" ]]; then
        log "installing oha into $TOOLS (one-time, several minutes)"
        cargo install oha --locked --root "$TOOLS" >&2
    fi
    PATH="$PATH:/usr/sbin"
    # hardware counters (linux-perf); some VMs have none, and the table then leaves them out
    # (perf stat succeeds without them, counting "<not supported>"; perf record would sample a
    # software clock instead of cycles, slowing the proxy tenfold)
    PERF=0
    if command -v perf >/dev/null &&
        perf stat -x, -e instructions:u true 2>&1 | grep -q '^[0-9]'; then
        PERF=1
    fi
    # syscall tracepoints (root or perf_event_paranoid -1), for the phase profile: its timeline
    # of wake-ups and writes, and, with hardware counters, where the user cycles fall in it
    PHASES=0
    if command -v perf >/dev/null &&
        perf record -q -o /dev/null -e syscalls:sys_exit_epoll_wait true >/dev/null 2>&1; then
        PHASES=1
    fi
    # the footprint phase (cachegrind); --no-footprint or no valgrind leaves it out
    command -v valgrind >/dev/null || FOOTPRINT=0
    NGINX=$(command -v nginx)
    HAPROXY=$(command -v haproxy)
}

build_weft() {
    ((WEFT)) || return 0
    # what is deployed is the PGO build (scripts/build-release), so that is what is measured
    ((PGO)) || WEFT_BIN="$REPO/target/release/weft-proxy"
    if ((BUILD)); then
        local ok=1
        if ((PGO)); then
            log "scripts/build-release (release build with profile-guided optimisation)"
            "$REPO/scripts/build-release" >&2 || ok=0
        else
            log "cargo build --release -p weft-proxy"
            (cd "$REPO" && cargo build --release -p weft-proxy >&2) || ok=0
        fi
        if ((!ok)); then
            log "WARNING: weft-proxy does not build; measuring peers only"
            WEFT=0
            return 0
        fi
    fi
    if [[ ! -x "$WEFT_BIN" ]]; then
        log "WARNING: $WEFT_BIN missing (build it with scripts/build-release, or pass --no-pgo); measuring peers only"
        WEFT=0
    fi
}

# ---------------------------------------------------------------- processes
RUN=$(mktemp -d /tmp/weft-bench.XXXXXX)
chmod 755 "$RUN" # nginx workers drop to 'nobody' when started as root
declare -A PID=()

cleanup() {
    local rc=$? p
    for p in "${PID[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for p in "${PID[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.2
    done
    for p in "${PID[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if ((KEEP)); then log "kept $RUN"; else rm -rf "$RUN"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# pin CORE CMD... — run CMD on one core; as root also at nice -10, so that a compile running
# alongside (the machine is shared) disturbs the measurement less. Same for every path.
NICE=()
if ((EUID == 0)); then NICE=(nice -n -10); fi
pin() {
    local core=$1
    shift
    "${NICE[@]}" taskset -c "$core" "$@"
}

# start NAME CORE CMD... — start a server pinned to CORE, output to $RUN/NAME.log; run under
# the command in WRAP when it is set (the footprint phase's valgrind)
WRAP=()
start() {
    local name=$1 core=$2
    shift 2
    "${NICE[@]}" taskset -c "$core" "${WRAP[@]}" "$@" >"$RUN/$name.log" 2>&1 &  # no function: $! is the server
    PID[$name]=$!
}

stop() {
    local name=$1 p=${PID[$1]:-}
    [[ -n "$p" ]] || return 0
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "PID[$name]"
}

free_ports() { # N -> N distinct free loopback ports, one per line
    "$REPO/scripts/free-ports" "$1"
}

# check_http NAME URL — wait up to 10 s for a 200 with a 1024-byte body; 0 if so
check_http() {
    local name=$1 url=$2 out
    for _ in $(seq 1 50); do
        if [[ -n "${PID[$name]:-}" ]] && ! kill -0 "${PID[$name]}" 2>/dev/null; then
            log "$name exited; its log:"
            tail -n 20 "$RUN/$name.log" >&2 || true
            return 1
        fi
        out=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 1 "$url" || true)
        [[ "$out" == "200 1024" ]] && return 0
        sleep 0.2
    done
    log "$name: no 200 with a 1 KiB body from $url (last: '${out:-none}'); its log:"
    tail -n 20 "$RUN/$name.log" >&2 || true
    return 1
}

# pids of a process and its children (nginx master + worker)
tree() {
    local p
    for p in "$@"; do
        echo "$p"
        pgrep -P "$p" || true
    done
}

cpu_ticks() { # PIDS... -> utime+stime summed, clock ticks
    local total=0 p s f
    for p in $(tree "$@"); do
        s=$(<"/proc/$p/stat") || continue
        s=${s##*) }
        read -ra f <<<"$s"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

status_kb() { # FIELD PIDS... -> FIELD from /proc/PID/status summed, kB
    local field=$1 total=0 p v
    shift
    for p in $(tree "$@"); do
        v=$(awk -v k="$field:" '$1 == k {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

now() { date +%s.%N; }

busy_ticks() { # CPU time spent by the whole machine (incl. steal), clock ticks
    awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat
}

# CHILD_TICKS := CPU time of this script's reaped children (oha, wrk, helpers), clock ticks.
# `times` must run in this shell, not in a $(...) subshell: call it directly.
CHILD_TICKS=0
child_ticks() {
    times >"$RUN/times"
    CHILD_TICKS=$(awk -v hz="$(getconf CLK_TCK)" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%d\n", t * hz
    }' "$RUN/times")
}

# ---------------------------------------------------------------- configs
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')

nginx_conf() { # DIR PORT [UPSTREAMPORT] — upstream (return 1 KiB) or proxy
    local dir=$1 port=$2 up=${3:-}
    mkdir -p "$dir"
    local location upstream=""
    if [[ -z "$up" ]]; then
        location="location / { default_type text/plain; return 200 \"$BODY\"; }"
    else
        upstream="upstream up { server 127.0.0.1:$up; keepalive 256; keepalive_requests 1000000; }"
        location="location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-Proto \$scheme;
        }"
    fi
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8000; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    $upstream
    server {
        listen 127.0.0.1:$port;
        $location
    }
}
EOF
}

haproxy_conf() { # FILE PORT UPSTREAMPORT
    cat >"$1" <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:$2
    http-request set-header X-Forwarded-Proto http
    default_backend upstream
backend upstream
    server up 127.0.0.1:$3
EOF
}

# weft's config does what the peers' configs do, as Envoy's own benchmarking advice has it
# ("What are best practices for benchmarking Envoy?"): no request id generated, no x-envoy-*
# headers of the router's own, no per-response cluster stats. weft (as Envoy) always sets
# X-Forwarded-Proto upstream, so the peers are told to set it too.
weft_conf() { # FILE PORT ADMINPORT UPSTREAMPORT — Envoy v3 bootstrap
    cat >"$1" <<EOF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $3}}}
static_resources:
  listeners:
  - name: bench
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: upstream}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
              dynamic_stats: false
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $4}}}}]}]
EOF
}

start_weft() { # NAME CONFIG
    start "$1" "$PROXY_CORE" "$WEFT_BIN" -c "$2" --concurrency 1 -l warn
}

# ---------------------------------------------------------------- measurement
R="$RUN/results"
mkdir -p "$R"

# measure PATHNAME URL HOPS PROCESSNAMES... (no process names: nothing to sample)
measure() {
    local path=$1 url=$2 hops=$3
    shift 3
    local pids=() n
    for n in "$@"; do pids+=("${PID[$n]}"); done
    local d="$R/round$ROUND/$path" rate t0 t1 w0 w1 perf_pid
    mkdir -p "$d"
    {
        echo "hops=$hops"
        echo "processes=$#"
        if ((${#pids[@]})); then
            echo "rss_idle_kb=$(status_kb VmRSS "${pids[@]}")"
        fi
    } >"$d/proc.txt"

    log "$path: warm-up ${WARMUP}s"
    pin "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null

    # CPU used on the machine by anything but this bench while the path is measured: the
    # machine is shared, and this says which columns a compile or a neighbour disturbed
    local b0 s0 c0 fw0
    child_ticks
    c0=$CHILD_TICKS s0=$(cpu_ticks "${PID[@]}") b0=$(busy_ticks) fw0=$(now)

    for rate in "${RATES[@]}"; do
        log "$path: oha at $rate rps for ${DUR}s"
        ((${#pids[@]})) && t0=$(cpu_ticks "${pids[@]}")
        perf_pid=""
        if ((PERF)) && ((${#pids[@]})); then
            # instructions and cycles the proxy processes spend, user and kernel, while oha
            # runs: per request, a measure of work that barely depends on the neighbours
            pin "$LOAD_CORE" perf stat -x, -e instructions:u,instructions:k,cycles:u,cycles:k \
                -p "$(tree "${pids[@]}" | paste -sd,)" -o "$d/perf_$rate.txt" -- sleep "$DUR" \
                2>/dev/null &
            perf_pid=$!
        fi
        w0=$(now)
        pin "$LOAD_CORE" "$OHA" -q "$rate" --latency-correction --no-tui -z "${DUR}s" \
            -c "$CONNS" --output-format json "$url" >"$d/oha_$rate.json" 2>"$d/oha_$rate.err" &
        local oha_pid=$!
        if ((rate == 1000)) && ((${#pids[@]})); then
            sleep "$(python3 -c "print($DUR / 2)")"
            echo "rss_load_kb=$(status_kb VmRSS "${pids[@]}")" >>"$d/proc.txt"
        fi
        wait "$oha_pid" || true
        w1=$(now)
        [[ -n "$perf_pid" ]] && { wait "$perf_pid" || true; }
        if ((${#pids[@]})); then
            t1=$(cpu_ticks "${pids[@]}")
            {
                echo "cpu_${rate}_ticks=$((t1 - t0))"
                echo "cpu_${rate}_wall=$(python3 -c "print($w1 - $w0)")"
            } >>"$d/proc.txt"
        fi
    done

    local b1 s1 c1 fw1
    b1=$(busy_ticks) s1=$(cpu_ticks "${PID[@]}") fw1=$(now)
    child_ticks
    c1=$CHILD_TICKS
    {
        echo "other_ticks=$(((b1 - b0) - (s1 - s0) - (c1 - c0)))"
        echo "other_wall=$(python3 -c "print($fw1 - $fw0)")"
        if ((${#pids[@]})); then
            echo "hwm_kb=$(status_kb VmHWM "${pids[@]}")"
        fi
    } >>"$d/proc.txt"
}

# ---------------------------------------------------------------- main
setup_tools
build_weft

mapfile -t P < <(free_ports 9)
UP=${P[0]} NGX=${P[1]} HAP=${P[2]} W1=${P[3]} W1A=${P[4]} W2A=${P[5]} W2AA=${P[6]} W2B=${P[7]} W2BA=${P[8]}

nginx_conf "$RUN/upstream" "$UP"
start upstream "$LOAD_CORE" "$NGINX" -p "$RUN/upstream" -e "$RUN/upstream/error.log" -c "$RUN/upstream/nginx.conf"
check_http upstream "http://127.0.0.1:$UP/" || die "upstream nginx did not start"

nginx_conf "$RUN/nginx" "$NGX" "$UP"
haproxy_conf "$RUN/haproxy.cfg" "$HAP" "$UP"
if ((WEFT)); then
    weft_conf "$RUN/weft1.yaml" "$W1" "$W1A" "$UP"
    weft_conf "$RUN/weft2b.yaml" "$W2B" "$W2BA" "$UP"
    weft_conf "$RUN/weft2a.yaml" "$W2A" "$W2AA" "$W2B"
fi

# Each path's proxies run only while that path is measured, started fresh for each round: a
# sidecar runs alone in its pod, and copies of one binary running side by side would count
# each other's shared code pages in their RSS.
up_path() { # PATH — start its proxies and wait until they answer; 1 if they do not
    case "$1" in
        direct) return 0 ;;
        weft1)
            start_weft weft1 "$RUN/weft1.yaml"
            check_http weft1 "http://127.0.0.1:$W1/"
            ;;
        weft2)
            start_weft weft2b "$RUN/weft2b.yaml"
            start_weft weft2a "$RUN/weft2a.yaml"
            check_http weft2b "http://127.0.0.1:$W2B/" && check_http weft2a "http://127.0.0.1:$W2A/"
            ;;
        nginx)
            start nginx "$PROXY_CORE" "$NGINX" -p "$RUN/nginx" -e "$RUN/nginx/error.log" -c "$RUN/nginx/nginx.conf"
            check_http nginx "http://127.0.0.1:$NGX/"
            ;;
        haproxy)
            start haproxy "$PROXY_CORE" "$HAPROXY" -f "$RUN/haproxy.cfg" -db
            check_http haproxy "http://127.0.0.1:$HAP/"
            ;;
    esac
}

down_path() { # PATH
    case "$1" in
        weft1) stop weft1 ;;
        weft2) stop weft2a && stop weft2b ;;
        nginx | haproxy) stop "$1" ;;
    esac
}

up_path nginx || die "nginx proxy did not start"
down_path nginx
up_path haproxy || die "HAProxy did not start"
down_path haproxy
if ((WEFT)); then
    if ! up_path weft1 || ! up_path weft2; then
        log "WARNING: weft-proxy does not proxy yet; measuring peers only"
        WEFT=0
    fi
    down_path weft1
    down_path weft2
fi

{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "clk_tck=$(getconf CLK_TCK)"
    echo "duration_s=$DUR"
    echo "connections=$CONNS"
    echo "quick=$QUICK"
    echo "rounds=$ROUNDS"
    echo "tp_rounds=$TP_ROUNDS"
    echo "tp_duration_s=$TP_DUR"
    echo "lat_rate=$LAT_RATE"
    echo "lat_cycles=$LAT_CYCLES"
    echo "lat_slice_s=$LAT_SLICE"
    echo "lat_skip_s=$LAT_SKIP"
    echo "fp_requests=$FP_REQS"
    echo "fp_rate=$FP_RATE"
    echo "fp_warmup=$FP_WARMUP"
    echo "phase_runs=$PHASE_RUNS"
    echo "nginx=$("$NGINX" -v 2>&1 | sed 's/.*version: //')"
    echo "haproxy=$("$HAPROXY" -v | awk 'NR == 1 {print $3}')"
    echo "oha=$("$OHA" --version | awk '{print $2}')"
    echo "wrk=$(wrk -v 2>&1 | awk 'NR == 1 {print $2}')"
    echo "weft_rev=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo none)"
    echo "weft_build=$( ((PGO)) && echo "release + PGO (scripts/build-release)" || echo "release")"
} >"$R/meta.txt"

# wait_quiet — up to 5 min for a 5 s window in which the machine, less this bench's idle
# servers, uses < 0.25 vCPU
wait_quiet() {
    local deadline=$((SECONDS + 300)) b0 b1 s0 s1 other hz
    hz=$(getconf CLK_TCK)
    while ((SECONDS < deadline)); do
        b0=$(busy_ticks) s0=$(cpu_ticks "${PID[@]}")
        sleep 5
        b1=$(busy_ticks) s1=$(cpu_ticks "${PID[@]}")
        other=$(((b1 - b0) - (s1 - s0)))
        if ((other * 4 < 5 * hz)); then
            log "machine quiet (other load $((other * 100 / (5 * hz)))% of a vCPU)"
            return 0
        fi
        log "waiting for a quiet machine (other load $((other * 100 / (5 * hz)))% of a vCPU)"
    done
    log "WARNING: machine still busy after 5 min; measuring anyway"
}
((WAIT_QUIET)) && wait_quiet

url_of() { # PATH — the URL the load generator sends to
    case "$1" in
        direct) echo "http://127.0.0.1:$UP/" ;;
        weft1) echo "http://127.0.0.1:$W1/" ;;
        weft2) echo "http://127.0.0.1:$W2A/" ;;
        nginx) echo "http://127.0.0.1:$NGX/" ;;
        haproxy) echo "http://127.0.0.1:$HAP/" ;;
    esac
}

# measure_path NAME — one path's latency, CPU and memory for one round, on freshly started
# proxies
measure_path() {
    up_path "$1" || die "$1 did not start in round $ROUND"
    case "$1" in
        direct) measure direct "$(url_of direct)" 0 ;;
        weft1) measure weft1 "$(url_of weft1)" 1 weft1 ;;
        weft2) measure weft2 "$(url_of weft2)" 2 weft2a weft2b ;;
        nginx) measure nginx "$(url_of nginx)" 1 nginx ;;
        haproxy) measure haproxy "$(url_of haproxy)" 1 haproxy ;;
    esac
    down_path "$1"
}

# throughput — max rps (wrk, closed loop) of every path. The VM this runs on changes speed by
# up to 2x from one ten-second stretch to the next, which a few long runs far apart in time
# cannot tell from a difference between proxies. So every path's proxies are up at once (an
# idle proxy takes no CPU) and wrk switches between the paths every few seconds, rotating their
# order each round: the report compares paths within a round (median of the per-round ratios).
throughput() {
    mkdir -p "$R/throughput"
    all_up throughput
    log "max throughput: ${#PATHS[@]} paths x $TP_ROUNDS rounds of ${TP_DUR}s"
    rotate "$TP_ROUNDS" throughput_run
    all_down
}

throughput_run() { # PATH ROUND
    pin "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${TP_DUR}s" "$(url_of "$1")" \
        >"$R/throughput/${1}_$2.txt" 2>&1 || true
}

# all_up PHASE — every path's proxies up at once, each warmed by a second of wrk
all_up() {
    local path
    for path in "${PATHS[@]}"; do
        up_path "$path" || die "$path did not start for the $1 phase"
    done
    for path in "${PATHS[@]}"; do
        pin "$LOAD_CORE" wrk -t1 -c"$CONNS" -d1s "$(url_of "$path")" >/dev/null
    done
}

all_down() {
    local path
    for path in "${PATHS[@]}"; do down_path "$path"; done
}

# rotate N FUNC — FUNC PATH CYCLE for every path, N cycles, each cycle starting one path later
rotate() {
    local c k n=${#PATHS[@]}
    for ((c = 1; c <= $1; c++)); do
        for ((k = 0; k < n; k++)); do
            "$2" "${PATHS[(k + c - 1) % n]}" "$c"
        done
    done
}

# pooled — the latency rows at 1k rps. A path measured for a few seconds minutes apart from
# another meets a different machine: on this VM the added latency of one proxy moves by tens of
# microseconds from one run to the next, more than the proxies differ. So every path's proxies
# are up at once (an idle proxy takes no CPU), oha switches between the paths every LAT_SLICE
# seconds at LAT_RATE rps, rotating their order each cycle, and report.py pools each path's
# answers over all cycles: every path sees the machine's slow and fast minutes alike, and a
# percentile rests on tens of thousands of requests. Each slice opens its connections anew;
# its first LAT_SKIP seconds are left out. Kept per answer: status and latency in µs
# (latency-corrected: from when the request was due, not when it was sent).
pooled() {
    mkdir -p "$R/pooled"
    all_up latency
    log "latency at $LAT_RATE rps: ${#PATHS[@]} paths x $LAT_CYCLES cycles of ${LAT_SLICE}s slices"
    rotate "$LAT_CYCLES" pooled_slice
    all_down
}

pooled_slice() { # PATH CYCLE
    # oha's CSV lists every answer (any status; transport errors are not in it, and show as
    # answers missing from the slice)
    pin "$LOAD_CORE" "$OHA" -q "$LAT_RATE" --latency-correction --no-tui -z "${LAT_SLICE}s" \
        -c "$CONNS" --output-format csv "$(url_of "$1")" 2>/dev/null |
        awk -F, -v skip="$LAT_SKIP" 'NR > 1 && $1 >= skip { printf "%s %d\n", $7, $5 * 1e6 + 0.5 }' \
            >"$R/pooled/${1}_$2.txt" || true
}

# phases — how long each proxy holds a request at 1k rps. perf records, per thread, the syscalls
# that bound the work a request waits for: epoll returning (a wake-up), the read that follows
# (its size tells a request from a response: 1 KiB body) and the write it leads to. report.py
# takes the time from wake-up to write, per direction: what the proxy itself adds to a
# request's latency, beside the wake-ups of the idle vCPUs that the latency rows also contain.
# With hardware counters it also samples user cycles and puts each in the phase it fell in
# (before or after the write). Its own runs, PHASE_RUNS per proxy interleaved like the rounds
# (the machine's speed drifts by more than the proxies differ): tracing slows every proxy alike,
# by the same tracepoints per request, so latency is not measured here.
phases() {
    local PATHS=("$@") # rotate's list, for this phase (bash locals are dynamically scoped)
    mkdir -p "$R/phases"
    PHASE_CYCLES=()
    ((PERF)) && PHASE_CYCLES=(-c 10007 -e cycles:u)
    rotate "$PHASE_RUNS" phase_run
}

phase_run() { # PATH RUN
    local path=$1 out="$R/phases/$1_$2" pids
    up_path "$path" || die "$path did not start for the phase profile"
    pids=$(tree "${PID[$path]}" | paste -sd,)
    pin "$LOAD_CORE" wrk -t1 -c"$CONNS" -d1s "$(url_of "$path")" >/dev/null
    log "$path: phase profile $2 at 1000 rps for ${DUR}s"
    perf record -q -o "$out.data" "${PHASE_CYCLES[@]}" \
        -e syscalls:sys_exit_epoll_wait,syscalls:sys_exit_epoll_pwait \
        -e syscalls:sys_exit_recvfrom,syscalls:sys_exit_read \
        -e syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_write \
        -p "$pids" -- sleep "$DUR" >/dev/null 2>&1 &
    local perf_pid=$!
    pin "$LOAD_CORE" "$OHA" -q 1000 --no-tui -z "${DUR}s" -c "$CONNS" "$(url_of "$path")" \
        >/dev/null 2>&1 || true
    wait "$perf_pid" || true
    perf script -i "$out.data" -F tid,time,event,trace --ns >"$out.txt" 2>/dev/null || true
    rm -f "$out.data"
    down_path "$path"
}

# footprint — per request, the work each proxy's own code does in user space, counted rather
# than timed: instructions retired and L1 instruction/data cache misses, from valgrind's
# cachegrind simulating this machine's cache geometry (the kernel and other processes are not
# in it, so a miss here is the proxy's own memory traffic: data that a request touches and that
# earlier requests pushed out). Two runs per proxy, each after the same warm-up: one with
# FP_REQS requests at FP_RATE rps and one with none; their difference over FP_REQS leaves start-up
# and shutdown out. On this VM wall-clock latency moves between runs by more than the proxies
# differ, and it may expose no hardware counters; these counts repeat to within ~1%.
footprint() {
    local d="$R/footprint" path n
    mkdir -p "$d"
    for path in "$@"; do
        for n in 0 "$FP_REQS"; do
            WRAP=(valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file=/dev/null)
            up_path "$path" || die "$path did not start under valgrind"
            WRAP=()
            log "$path: footprint, $n requests under cachegrind"
            # oha's answers are kept: report.py divides by the requests that got a 200, and
            # leaves the path out if any of them (warm-up included) did not
            pin "$LOAD_CORE" "$OHA" -q "$FP_RATE" -n "$FP_WARMUP" --no-tui -c "$CONNS" \
                --output-format json "$(url_of "$path")" >"$d/${path}_$n.warm.json" \
                2>/dev/null || true
            if ((n)); then
                pin "$LOAD_CORE" "$OHA" -q "$FP_RATE" -n "$n" --no-tui -c "$CONNS" \
                    --output-format json "$(url_of "$path")" >"$d/${path}_$n.oha.json" \
                    2>/dev/null || true
            fi
            down_path "$path"
            # every process of the proxy prints its totals (nginx: master and worker)
            grep -E '(I|I1|D1) +(refs|misses):' "$RUN/$path.log" >"$d/${path}_$n.txt" ||
                log "WARNING: $path printed no cachegrind totals ($RUN/$path.log; --keep keeps it)"
        done
    done
}

PATHS=(direct)
((WEFT)) && PATHS+=(weft1 weft2)
PATHS+=(nginx haproxy)
est=$((ROUNDS * ${#PATHS[@]} * (WARMUP + ${#RATES[@]} * DUR) + TP_ROUNDS * ${#PATHS[@]} * TP_DUR + LAT_CYCLES * ${#PATHS[@]} * LAT_SLICE))
log "measuring ${#PATHS[@]} paths x $ROUNDS rounds, about ${est}s"
pooled
# Rounds interleave the paths and rotate their order, so that a slow minute on this shared
# machine lands on every path alike instead of on whichever ran then; the report takes the
# median of the rounds.
round_path() { # PATH ROUND
    ROUND=$2
    measure_path "$1"
}
rotate "$ROUNDS" round_path
throughput
if ((FOOTPRINT)); then
    fp_paths=(nginx haproxy)
    ((WEFT)) && fp_paths=(weft1 "${fp_paths[@]}")
    footprint "${fp_paths[@]}"
fi
if ((PHASES)); then
    phase_paths=(nginx haproxy)
    ((WEFT)) && phase_paths=(weft1 "${phase_paths[@]}")
    phases "${phase_paths[@]}"
fi

report_args=("$R")
((RECORD)) && report_args+=(--record "$BENCH_DIR/RESULTS.md")
python3 "$BENCH_DIR/report.py" "${report_args[@]}"
