#!/usr/bin/env bash
# bench/cp.sh — the control plane at mesh scale: 1,000 ServiceEntries (5,000 endpoints), 100
# DestinationRules, 100 VirtualServices and 200 simulated delta-ADS clients against one
# `weft up`. Measures the initial full push, config change → last ACK (p50/p99 over 20 runs),
# what an endpoint edit pushes, the re-push after a SIGKILL restart, and the control plane's
# RSS; prints one markdown table. See bench/cp-scale/README.md. Everything is on 127.0.0.1;
# the control plane is killed on exit.
#
# Usage: bench/cp.sh [--quick] [--record] [--no-build] [--keep] [--wait-quiet] [-- CP-SCALE ARGS]
#   --quick       100 services, 20 clients, 5 change runs (smoke test; not worth recording)
#   --record      append the table, date and machine to bench/RESULTS.md
#   --no-build    use the existing target/release/{weft,cp-scale}
#   --keep        keep the work dir (generated config, control-plane log, raw JSON)
#   --wait-quiet  before measuring, wait (up to 5 min) for 5 s in which the machine uses less
#                 than 0.25 vCPU: it is shared with compiles
#   -- ARGS       passed to cp-scale (e.g. -- --clients 400 --runs 50; see cp-scale --help)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
WEFT_BIN="$REPO/target/release/weft"
CP_SCALE="$REPO/target/release/cp-scale"

QUICK=0 RECORD=0 BUILD=1 KEEP=0 WAIT_QUIET=0
EXTRA=()
while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --record) RECORD=1 ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        --wait-quiet) WAIT_QUIET=1 ;;
        --)
            shift
            EXTRA=("$@")
            break
            ;;
        -h | --help)
            sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "cp.sh: unknown argument '$1' (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done

log() { printf '[cp.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

RUN=$(mktemp -d /tmp/weft-cp-bench.XXXXXX)
BENCH_PID=""
cleanup() {
    local rc=$?
    # cp-scale kills its control plane when it gets SIGTERM (or exits any other way).
    if [[ -n "$BENCH_PID" ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$BENCH_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BENCH_PID" 2>/dev/null || true
    fi
    if ((KEEP)); then log "kept $RUN"; else rm -rf "$RUN"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ((BUILD)); then
    log "cargo build --release -p weft-cli -p cp-scale"
    (cd "$REPO" && cargo build --release -p weft-cli -p cp-scale >&2) || die "build failed"
fi
[[ -x "$WEFT_BIN" ]] || die "$WEFT_BIN missing (run without --no-build)"
[[ -x "$CP_SCALE" ]] || die "$CP_SCALE missing (run without --no-build)"

busy_ticks() { # CPU time the whole machine spent (incl. steal), clock ticks
    awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat
}

wait_quiet() {
    local deadline=$((SECONDS + 300)) b0 b1 other hz
    hz=$(getconf CLK_TCK)
    while ((SECONDS < deadline)); do
        b0=$(busy_ticks)
        sleep 5
        b1=$(busy_ticks)
        other=$((b1 - b0))
        if ((other * 4 < 5 * hz)); then
            log "machine quiet ($((other * 100 / (5 * hz)))% of a vCPU)"
            return 0
        fi
        log "waiting for a quiet machine ($((other * 100 / (5 * hz)))% of a vCPU busy)"
    done
    log "WARNING: machine still busy after 5 min; measuring anyway"
}
((WAIT_QUIET)) && wait_quiet

# As root, the bench and the control plane it starts run at nice -10, so that a compile
# running alongside disturbs them less.
NICE=()
if ((EUID == 0)); then NICE=(nice -n -10); fi

args=(--weft "$WEFT_BIN" --work "$RUN/work" --clk-tck "$(getconf CLK_TCK)"
    --out "$RUN/table.md" --json "$RUN/raw.json")
((QUICK)) && args+=(--quick)
((KEEP)) && args+=(--keep)
args+=("${EXTRA[@]}")

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
b0=$(busy_ticks)
t0=$(date +%s.%N)
log "running cp-scale (the full run takes a few minutes)"
"${NICE[@]}" "$CP_SCALE" "${args[@]}" &
BENCH_PID=$!
rc=0
wait "$BENCH_PID" || rc=$?
BENCH_PID=""
((rc == 0)) || die "cp-scale failed (exit $rc)"
b1=$(busy_ticks)
t1=$(date +%s.%N)
machine_vcpu=$(python3 -c "print(f'{($b1 - $b0) / $(getconf CLK_TCK) / ($t1 - $t0):.2f}')" 2>/dev/null || echo "?")

if ((RECORD)); then
    {
        echo
        echo "## Control plane at scale (bench/cp.sh$( ((QUICK)) && echo ' --quick')) — $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "Machine: $(nproc) vCPU, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r); load average before the run $load_before; whole machine busy $machine_vcpu vCPU on average during the run (bench + control plane + anything else); weft rev $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo none)$(cd "$REPO" && git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')${EXTRA[*]:+; cp-scale args: ${EXTRA[*]}}."
        echo
        cat "$RUN/table.md"
    } >>"$BENCH_DIR/RESULTS.md"
    log "appended to bench/RESULTS.md"
fi
log "machine busy $machine_vcpu vCPU on average during the run"
