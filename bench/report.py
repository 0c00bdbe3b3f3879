#!/usr/bin/env python3
"""Turn the raw output of bench/proxy.sh into one markdown table (stdlib only).

Reads RESULTS_DIR written by proxy.sh:
  meta.txt                       key=value: date, machine, tool versions, run length, rounds
  round<N>/<path>/oha_<rate>.json  oha --json at a constant rate (latency-corrected)
  round<N>/<path>/perf_<rate>.txt  perf stat -x, of the path's processes during that oha run
  round<N>/<path>/proc.txt       key=value: hops, CPU ticks and wall time around each oha run,
                                 VmRSS idle / at 1k rps, VmHWM (summed over the path's processes)
  pooled/<path>_<N>.txt          the pooled latency phase, cycle N: one line per answer of the
                                 path's slice, "status latency_µs" (all paths up at once, oha
                                 switching between them; the headline latency rows)
  throughput/<path>_<N>.txt      wrk, closed loop, throughput round N (all paths up at once,
                                 wrk switching between them)
  phases/<path>_<N>.txt          perf script -F tid,time,event,trace of the path's processes at
                                 1k rps, run N (runs interleaved across paths): epoll returns,
                                 reads and writes, and user-cycle samples when the machine has
                                 counters (the phase profile; optional)
  footprint/<path>_<N>.txt       valgrind cachegrind totals (I refs, I1 and D1 misses) of the
                                 proxy serving N requests after a warm-up, N = 0 and one N > 0;
                                 per request = difference / N (optional)
for <path> in direct, weft1, weft2, nginx, haproxy (weft* may be missing). A results dir without
round<N>/ subdirectories is read as a single round.

The latency rows at 1k rps come from the pooled phase when it ran: each path's answers over all
cycles pooled, less direct's at the same percentile; weft's difference to each peer gets a 95%
interval from resampling whole cycles. Each round's values are computed against the same
round's direct baseline; the table shows the median over rounds, and the spread of the headline
rows follows it. Max rps is the median over
the throughput rounds, and its ratios are the medians of the per-round ratios (paths measured
seconds apart, so a change in the machine's speed cancels out).
Prints the table to stdout; with --record FILE also appends it, with date and machine, to FILE.
It only reads and formats: it never starts or measures anything.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

RATES = (1000, 10000)
PCTS = (("p50", "p50"), ("p99", "p99"), ("p99.9", "p99.9"))
# a constant-rate run counts as stable when it reached this share of the target rate
# with every response a 200 and no transport error
STABLE_SHARE = 0.95

COLUMNS = (
    ("direct", "direct (absolute)"),
    ("weft1", "weft 1 hop"),
    ("weft2", "weft 2 hops (per hop)"),
    ("nginx", "nginx"),
    ("haproxy", "HAProxy"),
)

NA = "—"


def read_kv(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def num(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def parse_oha(path: Path, rate: int) -> dict | None:
    """Latency percentiles (seconds), achieved rate and health of one oha run."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    summary = data.get("summary") or {}
    pcts = data.get("latencyPercentiles") or {}
    codes = data.get("statusCodeDistribution") or {}
    errors = data.get("errorDistribution") or {}
    ok = sum(int(v) for k, v in codes.items() if str(k) == "200")
    total = sum(int(v) for v in codes.values()) + sum(int(v) for v in errors.values())
    rps = num(summary.get("requestsPerSec"))
    # oha counts requests cut by the end of the run (-z) as "aborted due to deadline":
    # they are not failures
    bad = total - ok - sum(int(v) for k, v in errors.items() if "deadline" in str(k).lower())
    return {
        "p50": num(pcts.get("p50")),
        "p99": num(pcts.get("p99")),
        "p99.9": num(pcts.get("p99.9")),
        "rps": rps,
        "bad": bad,
        "errors": {str(k): int(v) for k, v in errors.items()},
        "stable": rps is not None and rps >= STABLE_SHARE * rate and bad == 0,
    }


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk_duration(text: str) -> float | None:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(path: Path) -> dict | None:
    """Requests/sec, latency distribution (seconds) and error counts of one wrk run."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    if not m:
        return None
    out: dict = {"rps": float(m.group(1)), "bad": 0}
    for pct, dur in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M):
        out["p" + pct] = wrk_duration(dur)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["bad"] += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["bad"] += int(m.group(1))
    return out


def parse_perf(path: Path) -> dict[str, float]:
    """Counter totals from `perf stat -x,` (event name -> count); empty when unsupported."""
    out: dict[str, float] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        f = line.split(",")
        if len(f) >= 3 and (v := num(f[0])) is not None:
            out[f[2].strip()] = v
    return out


def load_round(d: Path) -> dict[str, dict]:
    paths: dict[str, dict] = {}
    for key, _ in COLUMNS:
        p = d / key
        if not p.is_dir():
            continue
        proc = read_kv(p / "proc.txt")
        paths[key] = {
            "proc": proc,
            "hops": int(num(proc.get("hops")) or 0),
            "oha": {r: parse_oha(p / f"oha_{r}.json", r) for r in RATES},
            "perf": {r: parse_perf(p / f"perf_{r}.txt") for r in RATES},
        }
    return paths


def load_throughput(d: Path) -> dict[str, list[dict | None]]:
    """Per path, its wrk result in each throughput round (None where a run gave nothing)."""
    found: dict[str, dict[int, dict | None]] = {}
    for f in d.glob("*_*.txt"):
        path, _, n = f.stem.rpartition("_")
        if n.isdigit():
            found.setdefault(path, {})[int(n)] = parse_wrk(f)
    n_rounds = max((max(v) for v in found.values()), default=0)
    return {path: [v.get(i) for i in range(1, n_rounds + 1)] for path, v in found.items()}


WAKES = ("syscalls:sys_exit_epoll_wait", "syscalls:sys_exit_epoll_pwait")
READS = ("syscalls:sys_exit_recvfrom", "syscalls:sys_exit_read")
WRITES = ("syscalls:sys_enter_sendto", "syscalls:sys_enter_writev", "syscalls:sys_enter_write")
BEFORE_WRITE = "user cycles spent before the write @ 1k rps"
HELD = "time in the proxy per request @ 1k rps (wake-up → write, p50)"
# A read this large was the upstream's response (1 KiB body); a smaller one, a request.
RESPONSE_BYTES = 600


def parse_phases(path: Path) -> tuple[dict[str, list[float]], dict[str, int]]:
    """From one phase-profile run (perf script -F tid,time,event,trace): per thread, the time
    from each wake-up (epoll returning events) to the first write after it, split by the size of
    the read in between into the request's way up and the response's way down (seconds); and
    the user-cycle samples that fell before and after the write, when there are any."""
    legs: dict[str, list[float]] = {"request": [], "response": []}
    samples = {"before": 0, "after": 0}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return legs, samples
    woke: dict[str, float | None] = {}
    read: dict[str, int] = {}
    after: dict[str, bool] = {}
    for line in lines:
        fields = line.split(None, 3)
        if len(fields) < 3:
            continue
        tid, event = fields[0], fields[2].rstrip(":")
        try:
            t = float(fields[1].rstrip(":"))
        except ValueError:
            continue
        ret = fields[3].strip() if len(fields) > 3 else ""
        if event in WAKES:
            woke[tid] = t if ret not in ("", "0x0") else None
            read[tid] = 0
            after[tid] = False
        elif event in READS:
            try:
                n = int(ret, 16)
            except ValueError:
                continue
            if 0 < n < 1 << 62:  # errors are large unsigned values
                read[tid] = n
        elif event in WRITES:
            start = woke.get(tid)
            if start is not None:
                leg = "response" if read.get(tid, 0) >= RESPONSE_BYTES else "request"
                legs[leg].append(t - start)
                woke[tid] = None
            after[tid] = True
        elif event.startswith("cycles") and tid in after:
            samples["after" if after[tid] else "before"] += 1
    return legs, samples


def load_phases(d: Path) -> dict[str, dict]:
    """Per path, over its runs (<path>_<N>.txt, interleaved with the other paths'): the median
    time from wake-up to write on each way, pooled over the runs, and the share of user-cycle
    samples before the write."""
    pooled: dict[str, tuple[dict[str, list[float]], dict[str, int]]] = {}
    for f in sorted(d.glob("*.txt")):
        stem, _, n = f.stem.rpartition("_")
        path = stem if n.isdigit() else f.stem
        legs, samples = parse_phases(f)
        into = pooled.setdefault(path, ({"request": [], "response": []}, {"before": 0, "after": 0}))
        for k, v in legs.items():
            into[0][k].extend(v)
        for k, v in samples.items():
            into[1][k] += v
    out: dict[str, dict] = {}
    for path, (legs, samples) in pooled.items():
        v: dict = {}
        if all(legs.values()):
            v["legs"] = {k: statistics.median(x) for k, x in legs.items()}
        if samples["before"] + samples["after"]:
            v["share"] = samples["before"] / (samples["before"] + samples["after"])
        if v:
            out[path] = v
    return out


FOOTPRINT_ROWS = (
    ("instructions per request, user (cachegrind)", "I refs"),
    ("L1i misses per request (cachegrind)", "I1 misses"),
    ("L1d misses per request (cachegrind)", "D1 misses"),
)


def parse_cachegrind(path: Path) -> dict[str, float]:
    """Totals summed over the processes in one cachegrind log excerpt ("I refs" -> count)."""
    totals: dict[str, float] = {}
    for m in re.finditer(r"\b(I|I1|D1) +(refs|misses): +([\d,]+)", path.read_text()):
        key = f"{m.group(1)} {m.group(2)}"
        totals[key] = totals.get(key, 0.0) + float(m.group(3).replace(",", ""))
    return totals


def oha_ok(path: Path) -> int | None:
    """Responses with status 200 in one oha --output-format json run; None when unreadable."""
    try:
        codes = json.loads(path.read_text()).get("statusCodeDistribution") or {}
    except (OSError, ValueError):
        return None
    return sum(int(v) for k, v in codes.items() if str(k) == "200")


def load_footprint(d: Path, warmup: int) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Per path, per counter: (run with N requests - run with none) / N; and what kept a path
    out. A path whose runs did not all answer every request with a 200 is left out: its
    difference would not be N requests' worth of work."""
    out: dict[str, dict[str, float]] = {}
    problems: list[str] = []
    for f in sorted(d.glob("*_*.txt")):
        path, _, n = f.stem.rpartition("_")
        if not n.isdigit() or int(n) == 0:
            continue
        reqs, base = int(n), d / f"{path}_0.txt"
        busy = parse_cachegrind(f)
        idle = parse_cachegrind(base) if base.exists() else {}
        if not busy or not idle:
            problems.append(f"footprint {path}: no cachegrind totals in its valgrind log")
            continue
        answered = {
            f"{path}_0.warm.json": (oha_ok(d / f"{path}_0.warm.json"), warmup),
            f"{path}_{n}.warm.json": (oha_ok(d / f"{path}_{n}.warm.json"), warmup),
            f"{path}_{n}.oha.json": (oha_ok(d / f"{path}_{n}.oha.json"), reqs),
        }
        short = [f"{k}: {ok}/{want}" for k, (ok, want) in answered.items() if ok != want]
        if short:
            problems.append(f"footprint {path}: not every request got a 200 ({'; '.join(short)})")
            continue
        out[path] = {k: (busy[k] - idle[k]) / reqs for k in busy if k in idle}
    return out, problems


def load_pooled(d: Path, meta: dict[str, str]) -> tuple[dict[str, list[list[int]]], list[str]]:
    """Per path, per cycle (in order): the latencies in µs of the answers with status 200; and
    the slices that were not clean (an answer other than 200, or fewer answers than the rate
    asks for — oha's CSV leaves transport errors out)."""
    found: dict[str, dict[int, list[int]]] = {}
    problems: list[str] = []
    rate = num(meta.get("lat_rate")) or 1000.0
    span = (num(meta.get("lat_slice_s")) or 0.0) - (num(meta.get("lat_skip_s")) or 0.0)
    for f in sorted(d.glob("*_*.txt")):
        path, _, n = f.stem.rpartition("_")
        if not n.isdigit():
            continue
        ok: list[int] = []
        other = 0
        for line in f.read_text(errors="replace").splitlines():
            status, _, us = line.partition(" ")
            if status == "200" and us.isdigit():
                ok.append(int(us))
            else:
                other += 1
        found.setdefault(path, {})[int(n)] = ok
        if other or len(ok) < STABLE_SHARE * rate * span:
            problems.append(
                f"latency cycle {n} {path}: {len(ok)} answers with a 200"
                + (f", {other} other" if other else "")
            )
    cycles = max((max(v) for v in found.values()), default=0)
    return {path: [v.get(i, []) for i in range(1, cycles + 1)] for path, v in found.items()}, problems


POOLED_PCTS = ((0.5, "p50"), (0.99, "p99"), (0.999, "p99.9"))
HOPS = {"direct": 0, "weft1": 1, "weft2": 2, "nginx": 1, "haproxy": 1}


def pct(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list (µs)."""
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def pooled_added(pool: dict[str, list[list[int]]], cycles: list[int] | None = None):
    """{(q, path): added µs per hop} over the given cycles (all by default), each path's
    answers pooled; direct gives its absolute value."""
    sel = range(len(next(iter(pool.values()), []))) if cycles is None else cycles
    ordered = {path: sorted(x for i in sel for x in runs[i]) for path, runs in pool.items()}
    out: dict[tuple[float, str], float] = {}
    base = ordered.get("direct")
    for q, _ in POOLED_PCTS:
        for path, xs in ordered.items():
            if not xs or not base:
                continue
            if path == "direct":
                out[(q, path)] = pct(xs, q)
            elif HOPS.get(path):
                out[(q, path)] = (pct(xs, q) - pct(base, q)) / HOPS[path]
    return out


def pooled_rows(pool: dict[str, list[list[int]]]):
    """The latency rows at 1k rps from the pooled phase, as combine() rows (seconds)."""
    added = pooled_added(pool)
    rows = []
    for q, name in POOLED_PCTS:
        vals = {path: v / 1e6 for (qq, path), v in added.items() if qq == q}
        rows.append((f"added {name} @ 1k rps", "latency", vals, {p: [v] for p, v in vals.items()}, None))
    return rows


def sign(v: float) -> str:
    """The sign of a difference, spelled out: +, − or ± (zero)."""
    return "+" if v > 0 else "−" if v < 0 else "±"


def signed(us: float) -> str:
    """A difference in whole µs with its sign (+3, −12, ±0)."""
    r = round(us)
    return f"{sign(r)}{abs(r)}"


# resamples of whole cycles for the interval of weft's difference to a peer
RESAMPLES = 400


def pooled_verdict(pool: dict[str, list[list[int]]]) -> str:
    """The latency target from the pooled phase: weft 1 hop's added latency less each peer's,
    pooled over all cycles, with a 95% interval from resampling whole cycles (the same cycles
    for both, so the machine's drift stays paired), and in how many cycles weft was lower."""
    import random

    if "weft1" not in pool or "direct" not in pool:
        return ""
    n = len(pool["direct"])
    rng = random.Random(1)
    draws = [pooled_added(pool, [rng.randrange(n) for _ in range(n)]) for _ in range(RESAMPLES)]
    whole = pooled_added(pool)
    lines = []
    for q, name in POOLED_PCTS[:2]:
        cells = []
        for peer in PEERS:
            if (q, peer) not in whole or (q, "weft1") not in whole:
                continue
            diff = whole[(q, "weft1")] - whole[(q, peer)]
            ds = sorted(d[(q, "weft1")] - d[(q, peer)] for d in draws if (q, peer) in d)
            lo, hi = ds[int(0.025 * len(ds))], ds[min(len(ds) - 1, int(0.975 * len(ds)))]
            lower = sum(
                pct(sorted(w), q) < pct(sorted(p), q)
                for w, p in zip(pool["weft1"], pool[peer])
                if w and p
            )
            verdict = "lower" if hi < 0 else "higher" if lo > 0 else "not told apart"
            cells.append(
                f"weft − {PEER_TITLES[peer]} {signed(diff)} µs (95% interval {signed(lo)} … "
                f"{signed(hi)}: {verdict}), weft lower in {lower} of {n} cycles"
            )
        if cells:
            lines.append(f"- added {name} @ 1k rps, pooled over {n} cycles: " + "; ".join(cells))
    return "\n".join(lines)


def load(results: Path):
    meta = read_kv(results / "meta.txt")
    dirs = sorted(
        (d for d in results.glob("round*") if d.is_dir() and d.name[5:].isdigit()),
        key=lambda d: int(d.name[5:]),
    )
    rounds = [load_round(d) for d in dirs] if dirs else [load_round(results)]
    return (
        meta,
        [r for r in rounds if r],
        load_pooled(results / "pooled", meta),
        load_throughput(results / "throughput"),
        load_phases(results / "phases"),
        *load_footprint(results / "footprint", int(num(meta.get("fp_warmup")) or 500)),
    )


def metrics(meta: dict[str, str], paths: dict[str, dict]) -> list[tuple[str, str, dict]]:
    """Rows of (label, kind, {path: value}); kind picks formatting and ratio sense."""
    rows: list[tuple[str, str, dict]] = []
    clk = num(meta.get("clk_tck")) or 100.0
    direct = paths.get("direct", {}).get("oha", {})

    for rate in RATES:
        base = direct.get(rate)
        for name, key in PCTS:
            vals: dict = {}
            for path, p in paths.items():
                run = p["oha"].get(rate)
                if run is None or run.get(key) is None:
                    continue
                if not run["stable"] or (base is not None and not base["stable"]):
                    vals[path] = "unstable"
                    continue
                if path == "direct":
                    vals[path] = run[key]
                elif base is not None and base.get(key) is not None and p["hops"]:
                    vals[path] = (run[key] - base[key]) / p["hops"]
            rows.append((f"added {name} @ {rate // 1000}k rps", "latency", vals))

    for rate in RATES:
        vals = {}
        for path, p in paths.items():
            proc, run = p["proc"], p["oha"].get(rate)
            ticks = num(proc.get(f"cpu_{rate}_ticks"))
            wall = num(proc.get(f"cpu_{rate}_wall"))
            if ticks is None or not wall or run is None or not run["rps"] or not p["hops"]:
                continue
            # vCPU = CPU-seconds per second, per 1,000 rps, per hop
            vals[path] = (ticks / clk) / wall / (run["rps"] / 1000.0) / p["hops"]
        rows.append((f"CPU per 1k rps @ {rate // 1000}k rps (vCPU)", "cpu", vals))

    for label, events in (
        ("instructions per request @ 10k rps, user", ("instructions:u",)),
        ("instructions per request @ 10k rps, kernel", ("instructions:k",)),
        ("cycles per request @ 10k rps, user+kernel", ("cycles:u", "cycles:k")),
    ):
        vals = {}
        for path, p in paths.items():
            counts, run = p["perf"].get(10000) or {}, p["oha"].get(10000)
            if not p["hops"] or run is None or not all(e in counts for e in events):
                continue
            reqs = (run["rps"] or 0.0) * (num(p["proc"].get("cpu_10000_wall")) or 0.0)
            if reqs > 0:
                vals[path] = sum(counts[e] for e in events) / reqs / p["hops"]
        if vals:
            rows.append((label, "count", vals))

    for label, key in (
        ("RSS idle (MiB, VmRSS)", "rss_idle_kb"),
        ("RSS at 1k rps (MiB, VmRSS)", "rss_load_kb"),
        ("RSS peak up to 10k rps (MiB, VmHWM)", "hwm_kb"),
    ):
        vals = {}
        for path, p in paths.items():
            kb = num(p["proc"].get(key))
            procs = num(p["proc"].get("processes")) or 1
            if kb is not None and p["hops"]:
                # a 2-hop path runs one process per hop: report one process
                vals[path] = kb / 1024.0 / (procs if p["hops"] > 1 else 1)
        rows.append((label, "mem", vals))

    rows.append(("other load on the machine (vCPU)", "other", {
        path: v for path, p in paths.items() if (v := other_load(p, clk)) is not None
    }))
    return rows


def other_load(p: dict, clk: float) -> float | None:
    """Average CPU used by processes outside the bench (and steal) while the path ran."""
    ticks = num(p["proc"].get("other_ticks"))
    wall = num(p["proc"].get("other_wall"))
    if ticks is None or not wall:
        return None
    return max(ticks, 0.0) / clk / wall


def fmt(kind: str, v: object) -> str:
    if v is None:
        return NA
    if isinstance(v, str):
        return v
    assert isinstance(v, float | int)
    if kind == "latency":
        return f"{v * 1e3:.2f} ms" if abs(v) >= 1e-3 else f"{v * 1e6:.0f} µs"
    if kind == "held":  # the proxy's own time: its differences are tenths of a microsecond
        return f"{v * 1e6:.1f} µs"
    if kind == "rps":
        return f"{v / 1000:.1f}k"
    if kind == "cpu":
        return f"{v:.3f}"
    if kind == "mem":
        return f"{v:.1f}"
    if kind == "other":
        return f"{v:.2f}"
    if kind == "count":
        return f"{v / 1000:.1f}k" if abs(v) >= 1000 else f"{v:.0f}"
    if kind == "share":
        return f"{v * 100:.0f}%"
    return str(v)


def ratio(a: object, b: object) -> str:
    if not isinstance(a, float | int) or not isinstance(b, float | int):
        return NA
    if b <= 0 or a < 0:
        return NA  # added latency at or below noise: a ratio would mean nothing
    return f"{a / b:.2f}×"


MAX_RPS = "max rps (wrk -c64)"
PEERS = ("nginx", "haproxy")


PEER_TITLES = {"nginx": "nginx", "haproxy": "HAProxy"}


def throughput_row(tp: dict[str, list[dict | None]]):
    """The max-rps row: median per path, and weft's ratio to each peer in every round (the
    table shows their median)."""
    series = {
        path: [r["rps"] if r is not None and not r["bad"] else None for r in runs]
        for path, runs in tp.items()
    }
    med: dict[str, object] = {}
    for path, vs in series.items():
        nums = [v for v in vs if v]
        med[path] = statistics.median(nums) if nums else None
    weft = series.get("weft1", [])
    paired = {
        peer: [w / p for w, p in zip(weft, series.get(peer, [])) if w and p] for peer in PEERS
    }
    return (MAX_RPS, "rps", med, series, paired)


def combine(
    meta: dict[str, str], rounds: list[dict[str, dict]], tp=None, ph=None, fp=None, pool=None
):
    """Per row: (label, kind, median per path, values per path over the rounds, and — for
    max rps only — weft's per-round ratios to each peer, else None). With the pooled phase's
    answers, its rows replace the rounds' latency rows at 1k rps."""
    per_round = [metrics(meta, paths) for paths in rounds]
    labels: list[tuple[str, str]] = []
    for rows in per_round:
        for label, kind, _ in rows:
            if (label, kind) not in labels:
                labels.append((label, kind))
    out = []
    for label, kind in labels:
        # one entry per round for every path (None where the round lacks it), so that the
        # paths' values of one round stay at the same index
        present = {p for rows in per_round for lab, _, vals in rows if lab == label for p in vals}
        series: dict[str, list] = {p: [] for p in sorted(present)}
        for rows in per_round:
            vals = next((v for lab, _, v in rows if lab == label), {})
            for path in series:
                series[path].append(vals.get(path))
        med: dict[str, object] = {}
        for path, vs in series.items():
            nums = [v for v in vs if isinstance(v, float | int)]
            med[path] = statistics.median(nums) if nums else "unstable"
        out.append((label, kind, med, series, None))
    if pool and "direct" in pool:
        at = next((i for i, row in enumerate(out) if row[0] in POOLED_LABELS), 0)
        out = [row for row in out if row[0] not in POOLED_LABELS]
        out[at:at] = pooled_rows(pool)
    if tp:
        # after the latency rows, like the old per-round wrk row
        at = next((i for i, row in enumerate(out) if not row[0].startswith("added")), len(out))
        out.insert(at, throughput_row(tp))
    # rows measured once after the rounds go after the per-request counts, before memory
    once: list[tuple[str, str, dict]] = []
    held = {p: sum(v["legs"].values()) for p, v in (ph or {}).items() if "legs" in v}
    if held:
        once.append((HELD, "held", held))
    share = {p: v["share"] for p, v in (ph or {}).items() if "share" in v}
    if share:
        once.append((BEFORE_WRITE, "share", share))
    for label, key in FOOTPRINT_ROWS:
        vals = {p: c[key] for p, c in (fp or {}).items() if key in c}
        if vals:
            once.append((label, "count", vals))
    at = next((i for i, row in enumerate(out) if row[0].startswith("RSS")), len(out))
    out[at:at] = [(lab, kind, v, {p: [x] for p, x in v.items()}, None) for lab, kind, v in once]
    return out


def table(combined) -> str:
    present = {path for _, _, med, _, _ in combined for path in med}
    cols = [(k, title) for k, title in COLUMNS if k in present]
    head = ["metric"] + [t for _, t in cols] + ["weft/nginx", "weft/HAProxy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, kind, vals, _, paired in combined:
        cells = [label] + [fmt(kind, vals.get(k)) for k, _ in cols]
        w = vals.get("weft1")
        if kind == "other":
            cells += [NA, NA]
        elif paired is not None:
            cells += [f"{statistics.median(rs):.2f}×" if rs else NA for rs in map(paired.get, PEERS)]
        else:
            cells += [ratio(w, vals.get("nginx")), ratio(w, vals.get("haproxy"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SPREAD_ROWS = ("added p50 @ 1k rps", "added p99 @ 1k rps", MAX_RPS)
POOLED_LABELS = tuple(f"added {name} @ 1k rps" for _, name in POOLED_PCTS)


def spread(combined, n: int, pool=None) -> str:
    """The headline rows round by round, so a reader sees how much runs vary; with the pooled
    phase, its comparison of weft with each peer instead of the rounds' latency rows."""
    out = []
    for label, kind, _, series, paired in combined:
        if label not in SPREAD_ROWS or (n < 2 and paired is None):
            continue
        if pool and paired is None:
            continue
        cells = []
        for key, title in COLUMNS:
            if key in series and key != "direct":
                cells.append(f"{title} " + " / ".join(fmt(kind, v) for v in series[key]))
        if paired is not None:
            for peer, rs in paired.items():
                if rs:
                    cells.append(f"weft/{PEER_TITLES[peer]} " + " / ".join(f"{r:.2f}" for r in rs))
            label += f" ({max(map(len, series.values()), default=0)} throughput rounds)"
        out.append(f"- {label}: " + "; ".join(cells))
    verdict = pooled_verdict(pool) if pool else paired_latency(combined)
    if not out and not verdict:
        return ""
    head = "Round by round, in order:" if pool else f"Round by round ({n} latency rounds, in order):"
    return "\n".join([head, *out, *([verdict] if verdict else [])])


TARGET_ROWS = ("added p50 @ 1k rps", "added p99 @ 1k rps")


def paired_latency(combined) -> str:
    """The latency target compared round by round: in how many rounds weft 1 hop added less
    than each peer, and the median of the per-round differences. Rounds run the paths minutes
    apart in rotating order, so a pairing cancels the machine's slower drifts; a target met in
    the medians but in few rounds is not met reliably."""
    lines = []
    for label, kind, _, series, paired in combined:
        if label not in TARGET_ROWS or paired is not None:
            continue
        weft = series.get("weft1", [])
        cells = []
        for peer in PEERS:
            diffs = [
                w - p
                for w, p in zip(weft, series.get(peer, []))
                if isinstance(w, float | int) and isinstance(p, float | int)
            ]
            if not diffs:
                continue
            lower = sum(d < 0 for d in diffs)
            med = statistics.median(diffs)
            cells.append(
                f"below {PEER_TITLES[peer]} in {lower} of {len(diffs)} rounds, "
                f"median difference {sign(med)}{fmt(kind, abs(med))}"
            )
        if cells:
            lines.append(f"- {label}, weft 1 hop paired with each peer: " + "; ".join(cells))
    return "\n".join(lines)


# other load above this (vCPU, of 2) while a path ran is worth a warning
OTHER_LOAD_WARN = 0.1


def health(paths: dict[str, dict], clk: float) -> list[str]:
    """One line per run that was not clean, so a reader can distrust the right cells."""
    out = []
    for path, p in paths.items():
        other = other_load(p, clk)
        if other is not None and other > OTHER_LOAD_WARN:
            out.append(f"{path}: other processes used {other:.2f} vCPU meanwhile")
        for rate, run in p["oha"].items():
            if run is None:
                out.append(f"{path} @ {rate} rps: no oha result")
            elif not run["stable"]:
                got = f"{run['rps']:.0f}" if run["rps"] is not None else "?"
                errs = ", ".join(f"{k}: {v}" for k, v in run["errors"].items())
                out.append(
                    f"{path} @ {rate} rps: achieved {got} rps, {run['bad']} failed"
                    + (f" ({errs})" if errs else "")
                )
    return out


def throughput_health(tp: dict[str, list[dict | None]]) -> list[str]:
    out = []
    for path, runs in tp.items():
        for i, r in enumerate(runs, 1):
            if r is None:
                out.append(f"throughput round {i} {path}: no wrk result")
            elif r["bad"]:
                out.append(f"throughput round {i} {path}: wrk saw {r['bad']} errors / non-2xx")
    return out


def render(
    meta: dict[str, str],
    rounds: list[dict[str, dict]],
    pooled=({}, []),
    tp=None,
    ph=None,
    fp=None,
    fp_bad=(),
) -> str:
    pool, pool_bad = pooled
    combined = combine(meta, rounds, tp, ph, fp, pool)
    parts = [table(combined), ""]
    if pool and "direct" in pool:
        parts.append(
            "Latency @ 1k rps: all paths up at once and oha (constant rate, latency-corrected, "
            "-c {c}) switching between them in {s} s slices, {n} cycles in rotating order, the "
            "first {k} s of each slice left out; each path's answers pooled over the cycles; "
            "'added' = path minus direct at the same percentile, divided by hops.".format(
                c=meta.get("connections", "?"),
                s=meta.get("lat_slice_s", "?"),
                n=len(pool["direct"]),
                k=meta.get("lat_skip_s", "?"),
            )
        )
    parts.append(
        "Median of {n} interleaved round(s). {what}: oha constant rate, latency-corrected, "
        "-c {c}, {d} s per run; 'added' = path minus direct at the same percentile in the same "
        "round, divided by hops. Max rps: wrk -c {c}, {td} s runs, all paths up at once and "
        "wrk switching between them, {tn} rounds in rotating order; its ratios are medians of "
        "the per-round ratios. Ratios: weft 1 hop / peer (below 1× is better, except max "
        "rps). Instructions and cycles: perf stat of the proxy processes during the 10k rps "
        "run, per request and hop. Proxies pinned to core 0, load generator and upstream "
        "(nginx, 1 KiB body) to core 1; 1 worker/thread each.".format(
            n=len(rounds),
            what="The other rows" if pool else "Latency",
            c=meta.get("connections", "?"),
            d=meta.get("duration_s", "?"),
            td=meta.get("tp_duration_s", "?"),
            tn=meta.get("tp_rounds", "?"),
        )
    )
    legs = {p: v["legs"] for p, v in (ph or {}).items() if "legs" in v}
    if legs:
        split = "; ".join(
            "{t} {a:.1f} + {b:.1f} µs".format(
                t=title, a=legs[k]["request"] * 1e6, b=legs[k]["response"] * 1e6
            )
            for k, title in COLUMNS
            if k in legs
        )
        parts.append(
            "Time in the proxy: separate runs at 1k rps after the rounds ({n} per proxy, "
            "interleaved), the proxy's syscalls traced (perf); per thread, from epoll returning "
            "to the write it leads to, the median on the request's way to the upstream plus the "
            "median on the response's way back ({split}). It is the part of a hop's added "
            "latency the proxy's own work "
            "makes; the rest is the kernel's and the idle vCPUs' wake-ups. Tracing adds the "
            "same few tracepoints per request to every proxy.".format(
                split=split, n=meta.get("phase_runs", "?")
            )
        )
    if any("share" in v for v in (ph or {}).values()):
        parts.append(
            "Before the write: perf samples of user cycles at 1k rps (the same runs) that fell "
            "between epoll returning and the next write in their thread, as a share of all; the "
            "rest ran after the write, which a request does not wait for."
        )
    if fp:
        parts.append(
            "cachegrind rows: the proxy alone under valgrind (simulated caches of this machine's "
            "geometry; the kernel is not counted), {n} requests at {r} rps over {c} connections "
            "after a warm-up, less a run without them, per request.".format(
                n=meta.get("fp_requests", "?"),
                r=meta.get("fp_rate", "?"),
                c=meta.get("connections", "?"),
            )
        )
    if not any("weft1" in r for r in rounds):
        parts.append("weft-proxy was not measured (did not build or did not proxy).")
    if meta.get("quick") == "1":
        parts.append("QUICK RUN (3 s per run): smoke test only, numbers are noisy.")
    sp = spread(combined, len(rounds), pool)
    if sp:
        parts += ["", sp, ""]
    clk = num(meta.get("clk_tck")) or 100.0
    problems = []
    for i, paths in enumerate(rounds, 1):
        problems += [f"round {i} {p}" for p in health(paths, clk)]
    problems += list(pool_bad)
    problems += throughput_health(tp or {})
    problems += list(fp_bad)
    if problems:
        parts.append("Runs that were not clean: " + "; ".join(problems) + ".")
    return "\n".join(parts)


def machine(meta: dict[str, str]) -> str:
    return (
        f"{meta.get('nproc', '?')} vCPU, {meta.get('cpu', '?')}, kernel {meta.get('kernel', '?')}"
        f"; load average before the run {meta.get('loadavg', '?')}; nginx {meta.get('nginx', '?')}"
        f", HAProxy {meta.get('haproxy', '?')}, oha {meta.get('oha', '?')}"
        f", wrk {meta.get('wrk', '?')}; weft rev {meta.get('weft_rev', '?')}"
        f", build {meta.get('weft_build', 'release')}"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="results dir written by bench/proxy.sh")
    ap.add_argument("--record", type=Path, help="append the table to this markdown file")
    args = ap.parse_args(argv)
    meta, rounds, pooled, tp, ph, fp, fp_bad = load(args.results)
    if not rounds or any("direct" not in r for r in rounds):
        print(f"report.py: no direct baseline in {args.results}", file=sys.stderr)
        return 1
    body = render(meta, rounds, pooled, tp, ph, fp, fp_bad)
    print(body)
    if args.record:
        entry = f"\n## {meta.get('date', '?')}\n\nMachine: {machine(meta)}.\n\n{body}\n"
        with args.record.open("a") as f:
            if f.tell() == 0:
                f.write("# Proxy benchmark results\n\nAppended by `bench/proxy.sh --record`.\n")
            f.write(entry)
        print(f"\nappended to {args.record}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
