#!/usr/bin/env python3
"""gacc against what users would pick instead, measured side by side in one run.

    bash bench/install-peers.sh          # once: numpy, jax[cpu], optax, matplotlib, torch
    python3 bench/compare.py             # all sizes, all peers: docs/benchmarks.{md,png,jsonl}

Options: --sizes 1M,16M,64M  --repeats 7  --k 4  --peers numpy,jax,jax-multisteps,torch-foreach,torch-fused
         --out docs  --no-build  --quick (1M only, 3 repeats, for a smoke test)

    python3 bench/compare.py --tensors [--tensor-sizes 16M,64M] [--tensor-counts 64,512]

runs only the per-tensor comparison (gacc_microbatch_tensors, copy + gacc_microbatch,
gacc_microbatch on the same bytes, in place; against PyTorch's p.grad.add_ per
parameter and torch._foreach_add_ when torch is installed, skipped otherwise) on
transformer-like tensors (bench/model_shapes.rs), prints the table and writes the
raw rows to build/bench-tensors.jsonl (not to docs/: take the figures on a quiet
machine).

What it does, in one process tree on one machine:
1. builds libgacc (cargo build --release) and bench/gacc_bench.c against include/gacc.h;
2. STREAM copy/add/triad (2 OpenMP threads, 3 x 256 MiB arrays): the bandwidth floor;
3. per size: gacc through the C ABI, then each peer alone in its own subprocess
   (bench/peers.py), all doing the same window: K micro-batches accumulated, one step;
4. per-call overhead on a 1k-parameter model (gacc from C, the peers from Python);
5. peak RSS of each contender at each size (its own process, VmHWM);
6. writes the table (markdown), the plot (PNG) and the raw JSON lines.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BUILD = os.path.join(ROOT, "build")
DEPS = [os.path.join(ROOT, ".deps", "bench"), os.path.join(ROOT, ".deps", "bench-torch")]
ALL_PEERS = ["torch-foreach", "torch-fused", "jax", "jax-multisteps", "numpy"]
PEER_LABEL = {
    "torch-foreach": "torch (foreach)",
    "torch-fused": "torch (fused)",
    "jax": "jax+optax (jit)",
    "jax-multisteps": "jax+optax (MultiSteps)",
    "numpy": "numpy",
}
PEER_KEY = {v: k for k, v in PEER_LABEL.items()}
ROW_ORDER = ["accumulate_f32", "accumulate_f16", "accumulate_bf16", "step_sgd_momentum", "step_adamw",
             "step_adamw_clip", "step_adamw_clip_fp16"]
ROW_LABEL = {
    "accumulate_f32": "accumulate f32 grad (per micro-batch)",
    "accumulate_f16": "accumulate f16 grad (per micro-batch)",
    "accumulate_bf16": "accumulate bf16 grad (per micro-batch)",
    "step_sgd_momentum": "step SGD momentum",
    "step_adamw": "step AdamW",
    "step_adamw_clip": "step AdamW + clip",
    "step_adamw_clip_fp16": "step AdamW + clip + FP16 scaling",
}
sys.path[:0] = [p for p in DEPS if os.path.isdir(p)]  # matplotlib for the plot
CONTENDER_ORDER = ["gacc", "gacc (native)", "gacc (rerun)", "torch", "torch (foreach)", "torch (fused)", "jax+optax (jit)",
                   "jax+optax (MultiSteps)", "numpy"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_size(s):
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def size_label(n):
    for unit, m in (("M", 1 << 20), ("k", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return str(n)


def peer_env():
    env = dict(os.environ)
    # These slow a current numpy/OpenBLAS (see the machine notes); unset for the peers only.
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    paths = [p for p in DEPS if os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("XLA_FLAGS", "")
    return env


def cpu_busy_seconds():
    """Busy CPU-seconds of the whole machine so far (all cores, from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def others_cpu(seconds=2.0):
    """CPUs kept busy by other processes over the next `seconds` (we are idle meanwhile)."""
    b0 = cpu_busy_seconds()
    time.sleep(seconds)
    return (cpu_busy_seconds() - b0) / seconds


def wait_quiet(max_wait, threshold=0.15):
    """Waits up to max_wait seconds for the machine to be idle (< threshold CPUs busy)."""
    t_end = time.time() + max_wait
    busy = others_cpu(1.0)
    while busy > threshold and time.time() < t_end:
        busy = others_cpu(2.0)
    return busy


WAIT_UNTIL = [float("inf")]  # after this time.time(), no more waiting or retrying


def run_job(cmd, env, quiet_wait, retries):
    """run_json, gated on a quiet machine; measures the CPU that other processes used
    during the run (busy CPU-seconds of the machine minus our child's, over wall time).
    A run disturbed by more than 0.25 CPUs of other work is retried (up to `retries`
    times) and the least disturbed run is kept."""
    best = None
    if time.time() > WAIT_UNTIL[0]:
        quiet_wait, retries = 0, 0
    for attempt in range(retries + 1):
        before = wait_quiet(quiet_wait) if quiet_wait > 0 else others_cpu(0.5)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        b0 = cpu_busy_seconds()
        out, err, secs = run_json(cmd, env=env)
        b1 = cpu_busy_seconds()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        child = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        others = max(0.0, (b1 - b0 - child) / max(secs, 1e-3))
        res = (out, err, secs, others, before)
        if best is None or (not err and others < best[3]):
            best = res
        if err or others <= 0.25:
            break
        log(f"  disturbed ({others:.2f} CPUs of other work): retrying")
    return best


def run_json(cmd, env=None, timeout=900):
    """Runs a command, returns (JSON objects from stdout, error text or None, seconds)."""
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout} s", time.time() - t0
    out = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    err = None
    if p.returncode != 0:
        tail = (p.stderr or "").strip().splitlines()[-3:]
        err = f"exit {p.returncode}: " + " | ".join(tail)
    return out, err, time.time() - t0


def build(no_build, native=False):
    """Builds libgacc and bench/gacc_bench.c against it. native: a second build with
    -C target-cpu=native in target/native (what a user who builds for this CPU gets)."""
    os.makedirs(BUILD, exist_ok=True)
    target = os.path.join(ROOT, "target", "native" if native else "")
    if not no_build:
        log("building libgacc (cargo build --release" + (", -C target-cpu=native)" if native else ")"))
        env = dict(os.environ)
        if native:
            env["CARGO_TARGET_DIR"] = target
            env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " -C target-cpu=native").strip()
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True, env=env)
    lib = os.path.join(target, "release")
    exe = os.path.join(BUILD, "gacc_bench_native" if native else "gacc_bench")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-I", os.path.join(ROOT, "include"),
                    os.path.join(BENCH, "gacc_bench.c"), "-L", lib, "-lgacc", f"-Wl,-rpath,{lib}",
                    "-o", exe], check=True)
    return exe


def machine_info():
    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "kernel": platform.release()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "L2 cache", "L3 cache", "CPU family", "Model"):
                info[k.strip()] = v.strip()
        flags = next((l for l in lscpu.splitlines() if l.startswith("Flags")), "")
        info["simd"] = " ".join(f for f in ("avx2", "avx512f", "avx512bw", "f16c", "avx512_bf16")
                                if f" {f} " in flags + " ")
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory"] = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    info["load_start"] = os.getloadavg()[0]
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip()
        info["rustc"] = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
        info["cc"] = subprocess.run([os.environ.get("CC", "cc"), "--version"], capture_output=True,
                                    text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        pass
    return info


# ---------------------------------------------------------------------- reporting ---

def med(xs):
    return statistics.median(xs)


def fmt_t(s):
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_range(xs):
    lo, hi = min(xs), max(xs)
    if hi < 1e-6:
        return f"{lo * 1e9:.0f}–{hi * 1e9:.0f} ns"
    if hi < 1e-3:
        return f"{lo * 1e6:.1f}–{hi * 1e6:.1f} µs"
    if hi < 1:
        return f"{lo * 1e3:.2f}–{hi * 1e3:.2f} ms"
    return f"{lo:.2f}–{hi:.2f} s"


def fmt_load(e):
    ld = e.get("others_cpu")
    return "?" if ld is None else f"{ld:.2f}"


def contender_key(c):
    return CONTENDER_ORDER.index(c) if c in CONTENDER_ORDER else len(CONTENDER_ORDER)


def write_report(out_dir, info, stream, rows, memory, errors, versions, sizes, k, repeats, elapsed, rounds=1,
                 note=None):
    add_bw = stream["add"]["median_gbs"]
    by = {}
    for r in rows:
        by.setdefault((r["n"], r["row"]), []).append(r)
    L = []
    L.append("# gacc against PyTorch, JAX/optax and numpy on the CPU")
    L.append("")
    L.append("Generated by `python3 bench/compare.py` "
             f"(sizes {', '.join(size_label(n) for n in sizes)}; K = {k} micro-batches per window; "
             f"{repeats} timed windows after one warm-up) on {info['date_utc']}. "
             + (f"Each size's contenders ran {rounds} times, interleaved (all of them, then all of them "
                f"again), and each row keeps its fastest round (`other round` shows the rest): the "
                f"memory bandwidth of this VM moves between regimes on a scale of tens of seconds "
                f"(see the STREAM table), and the best round is the one least slowed by that. "
                if rounds > 1 else "")
             + "Do not edit by hand: rerun the command.")
    if note:
        L.append("")
        L.append(note)
    L.append("")
    L.append("## Summary (for the README)")
    L.append("")
    L.append("<!-- summary:start -->")
    L.extend(summary_lines(info, stream, by, memory, sizes))
    L.append("<!-- summary:end -->")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append(f"- CPU: {info.get('Model name', '?')} (family {info.get('CPU family', '?')}, model "
             f"{info.get('Model', '?')}), {info.get('CPU(s)', '?')} vCPUs, L2 {info.get('L2 cache', '?')}, "
             f"L3 {info.get('L3 cache', '?')}; SIMD: {info.get('simd', '?')}; memory {info.get('memory', '?')}")
    L.append(f"- kernel {info.get('kernel')}, Python {info.get('python')}, {info.get('rustc', '')}, "
             f"{info.get('cc', '')}; gacc commit {info.get('git', '?')}, built with `cargo build --release` "
             "(default target: no `-C target-cpu=native`)")
    L.append(f"- 1-minute load average: {info['load_start']:.2f} at the start, {info.get('load_end', 0):.2f} "
             f"at the end" + (f"; the whole run took {elapsed / 60:.1f} min" if elapsed else ""))
    for name, v in versions.items():
        L.append(f"- {name}: " + ", ".join(f"{a} {b}" for a, b in v.items()))
    L.append("")
    L.append("## Memory bandwidth (STREAM, 2 threads, 3 × 256 MiB arrays of doubles)")
    L.append("")
    L.append("STREAM runs before the first size, between sizes and at the end, because this machine's "
             "bandwidth moves during a run (it is a VM; other guests share the host's memory "
             "controllers, which the `other work` column cannot see). Median GB/s of 10 repetitions "
             "each (bytes read + written as STREAM counts them):")
    L.append("")
    L.append("| when | copy (16 B) | add (24 B) | triad (24 B) | in-place add c += b (24 B, not STREAM) | "
             "other work |")
    L.append("|---|---|---|---|---|---|")
    for r in stream["runs"]:
        ops = r["ops"]
        cell = lambda op: f"{ops[op]['median_gbs']:.1f}" if op in ops else "—"
        L.append(f"| {r['tag']} | {cell('copy')} | {cell('add')} | {cell('triad')} | {cell('add_inplace')} | "
                 f"{r.get('others', '?')} |")
    L.append("")
    L.append("The floor of a row is its byte count divided by the best STREAM add bandwidth measured "
             "around that size (before each of its rounds and after it; the strictest floor, as the "
             "rows keep their best round too): "
             + ", ".join(f"{size_label(n)}: **{bw:.1f} GB/s**" for n, bw in sorted(stream["floor"].items()))
             + ". STREAM counts only the bytes the program asks for; its stores also read the "
             "destination line first (write-allocate), which an in-place update (an accumulator, an "
             "optimizer state) does not pay, so in-place passes can run above `add` (× floor below 1), "
             "up to the in-place column. At 1M parameters the buffers fit in the 32 MiB L3 and the "
             "DRAM floor does not bind at all.")
    L.append("")
    L.append("## Byte model (per parameter, what every contender must move at least once)")
    L.append("")
    L.append("| row | bytes | breakdown |")
    L.append("|---|---|---|")
    L.append("| accumulate f32 | 12 | read g 4, read + write acc 8 |")
    L.append("| accumulate f16 / bf16 | 10 | read g 2, read + write acc 8 |")
    L.append("| step SGD momentum | 28 | norm / finite pass reads acc 4; update reads acc, p, buf 12, "
             "writes p, buf, acc = 0 12 |")
    L.append("| step AdamW (with or without clip) | 36 | norm pass 4; update reads acc, p, m, v 16, "
             "writes p, m, v, acc = 0 16 |")
    L.append("| step AdamW + clip + FP16 | 38 | as AdamW, + 2 for the fp16 working copy |")
    L.append("")
    L.append("GB/s in the tables is this byte count over the measured time, for every contender (the "
             "useful bytes, not what a contender actually moved: a peer that makes more passes shows "
             "a lower GB/s). `× floor` = median time / floor time (1.00 is the bandwidth limit). "
             "`peer ÷ gacc` = the peer's median / gacc's median: above 1, gacc is faster. `other work` = CPUs "
             "that other processes kept busy while that contender's process ran (the machine's busy "
             "CPU-seconds minus the process's own, over its wall time; the machine has 2): above ~0.25 the "
             "row shared the cores with other work and is slower and noisier than it should be.")
    L.append("")
    L.append("## Results")
    for n in sizes:
        L.append("")
        L.append(f"### {size_label(n)} parameters ({n:,}; {n * 4 / 2**20:.0f} MiB per fp32 buffer)")
        L.append("")
        L.append("| row | contender | median | min–max | GB/s | × floor | peer ÷ gacc | other round | other work |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for row in ROW_ORDER:
            entries = sorted(by.get((n, row), []), key=lambda r: contender_key(r["contender"]))
            if not entries:
                continue
            g = next((e for e in entries if e["contender"] == "gacc"), None)
            for e in entries:
                m = e["median"]
                floor = n * e["bytes_per_param"] / (stream["floor"].get(n, add_bw) * 1e9)
                ratio = "—" if e is g or g is None else f"{m / g['median']:.2f}"
                name = f"**{e['contender']}**" if e is g else e["contender"]
                note = f" ¹" if e.get("note") and "MultiSteps" in e["contender"] else ""
                L.append(f"| {ROW_LABEL[row]} | {name}{note} | {fmt_t(m)} | {fmt_range(e['samples_s'])} | "
                         f"{e['gbs']:.1f} | {m / floor:.2f} | {ratio} | "
                         f"{', '.join(fmt_t(x) for x in e.get('other_rounds', [])) or '—'} | {fmt_load(e)} |")
    L.append("")
    L.append("¹ optax.MultiSteps has no separate accumulate call: its accumulate row is the median of "
             "the K−1 non-final `update` calls, its step row is the K-th call, which also folds in "
             "that micro-batch (and its accumulate calls also add a zero update to the parameters).")
    tiny = [r for r in rows if r["row"].startswith("tiny_")]
    if tiny:
        L.append("")
        L.append("### Per-call overhead on a tiny model (1,000 parameters)")
        L.append("")
        L.append("gacc is called from C (bench/gacc_bench.c, blocks of 100,000 calls); the peers from "
                 "Python (blocks of 2,000 calls), which is how their users call them. "
                 "`step` is AdamW + clip, measured as (micro-batch + step) − micro-batch.")
        L.append("")
        L.append("| call | contender | median per call | min–max | peer ÷ gacc | other work |")
        L.append("|---|---|---|---|---|---|")
        for row, label in (("tiny_microbatch", "micro-batch (accumulate)"), ("tiny_step", "step")):
            entries = sorted([r for r in tiny if r["row"] == row], key=lambda r: contender_key(r["contender"]))
            g = next((e for e in entries if e["contender"] == "gacc"), None)
            for e in entries:
                x = None if e is g or g is None else e["median"] / g["median"]
                ratio = "—" if x is None else (f"{x:.0f}" if x >= 10 else f"{x:.2f}")
                name = f"**{e['contender']}**" if e is g else e["contender"]
                L.append(f"| {label} | {name} | {fmt_t(e['median'])} | {fmt_range(e['samples_s'])} | {ratio} | {fmt_load(e)} |")
    if memory:
        L.append("")
        L.append("## Peak resident memory (AdamW + clip, fp32, K f32 gradients in memory)")
        L.append("")
        L.append("Each contender runs alone in its own process: K input gradients are made, RSS is read "
                 "(the baseline: interpreter, libraries and inputs), then three windows run and "
                 "VmHWM is read. `state` = peak − baseline, what the engine or optimizer itself "
                 "needed; gacc's own state is 16 B per parameter (master, acc, m, v).")
        L.append("")
        L.append("| size | contender | peak RSS | baseline | state (peak − baseline) | state B/param | "
                 "peer state ÷ gacc state |")
        L.append("|---|---|---|---|---|---|---|")
        for n in sizes:
            entries = sorted([m for m in memory if m["n"] == n], key=lambda r: contender_key(r["contender"]))
            g = next((e for e in entries if e["contender"] == "gacc"), None)
            for e in entries:
                state = e["peak_kb"] - e["baseline_kb"]
                ratio = "—" if e is g or g is None else f"{state / max(1, g['peak_kb'] - g['baseline_kb']):.2f}"
                name = f"**{e['contender']}**" if e is g else e["contender"]
                L.append(f"| {size_label(n)} | {name} | {e['peak_kb'] / 1024:.0f} MiB | "
                         f"{e['baseline_kb'] / 1024:.0f} MiB | {state / 1024:.0f} MiB | "
                         f"{state * 1024 / n:.1f} | {ratio} |")
    L.extend(targets_lines(stream, by, sizes))
    notes = os.path.join(ROOT, "docs", "benchmarks-notes.md")
    if os.path.exists(notes):
        L.append("")
        with open(notes) as f:
            L.append(f.read().rstrip())
    if errors:
        L.append("")
        L.append("## What did not run")
        L.append("")
        for e in errors:
            L.append(f"- {e}")
    L.append("")
    L.append("![gacc vs peers](benchmarks.png)")
    L.append("")
    return L


def targets_lines(stream, by, sizes):
    """The issue's targets, checked against this run's medians."""
    add_bw = stream["add"]["median_gbs"]
    L = ["", "## Targets, checked against this run", ""]
    L.append("| target | size | row | gacc | verdict |")
    L.append("|---|---|---|---|---|")
    for n in sizes:
        for row in ROW_ORDER:
            g = next((e for e in by.get((n, row), []) if e["contender"] == "gacc"), None)
            if not g:
                continue
            bw = stream["floor"].get(n, add_bw)
            if row.startswith("accumulate"):
                frac = g["gbs"] / bw
                L.append(f"| accumulate ≥ 0.8 × STREAM add | {size_label(n)} | {ROW_LABEL[row]} | "
                         f"{frac:.2f} × add | {'met' if frac >= 0.8 else '**missed**'} |")
            elif row.startswith("step_adamw"):
                x = g["median"] / (n * g["bytes_per_param"] / (bw * 1e9))
                L.append(f"| AdamW step ≤ 1.5 × floor | {size_label(n)} | {ROW_LABEL[row]} | {x:.2f} × floor | "
                         f"{'met' if x <= 1.5 else '**missed**'} |")
    lost = []
    for n in sizes:
        for row in ROW_ORDER:
            entries = by.get((n, row), [])
            g = next((e for e in entries if e["contender"] == "gacc"), None)
            if not g:
                continue
            for e in entries:
                if not e["contender"].startswith("gacc") and e["median"] < g["median"]:
                    lost.append(f"{size_label(n)} {ROW_LABEL[row]}: {e['contender']} {fmt_t(e['median'])} "
                                f"vs gacc {fmt_t(g['median'])} ({g['median'] / e['median']:.2f}× slower)")
    L.append("")
    if lost:
        L.append(f"**gacc faster than every peer on every row: missed on {len(lost)} of the row × peer pairs:**")
        L.append("")
        L.extend(f"- {x}" for x in lost)
    else:
        L.append("gacc faster than every peer on every row: **met**.")
    return L


def summary_lines(info, stream, by, memory, sizes):
    add_bw = stream["add"]["median_gbs"]
    big = max(sizes)
    L = []
    L.append(f"On {info.get('Model name', 'this CPU')} ({info.get('CPU(s)', '?')} vCPUs; STREAM add "
             f"{stream['floor'].get(big, add_bw):.1f} GB/s around these rows), at {size_label(big)} parameters, median of the run of "
             f"{info['date_utc']} (full table: docs/benchmarks.md):")
    L.append("")
    L.append("| row | gacc | GB/s | × floor | fastest peer | gacc speed-up over it |")
    L.append("|---|---|---|---|---|---|")
    for row in ROW_ORDER:
        entries = by.get((big, row), [])
        g = next((e for e in entries if e["contender"] == "gacc"), None)
        peers = [e for e in entries if not e["contender"].startswith("gacc")]
        if not g:
            continue
        floor = big * g["bytes_per_param"] / (stream["floor"].get(big, add_bw) * 1e9)
        if peers:
            best = min(peers, key=lambda e: e["median"])
            fp = f"{best['contender']} ({fmt_t(best['median'])})"
            sp = f"{best['median'] / g['median']:.2f}×"
        else:
            fp, sp = "—", "—"
        L.append(f"| {ROW_LABEL[row]} | {fmt_t(g['median'])} | {g['gbs']:.1f} | {g['median'] / floor:.2f} | "
                 f"{fp} | {sp} |")
    L.append("")
    L.append("`× floor`: time over the time the row's bytes take at STREAM-add bandwidth (1.00 = at the "
             "memory-bandwidth limit). The peers are PyTorch (`p.grad.add_`, `clip_grad_norm_`, AdamW "
             "foreach and fused, GradScaler's ops), JAX + optax (jit with donated buffers, and "
             "`optax.MultiSteps`) and numpy, each in its own process on the same machine in the same run. "
             "Reproduce with `bash bench/install-peers.sh && python3 bench/compare.py` (writes "
             "docs/benchmarks.md, .png and .jsonl).")
    return L


def plot(path, stream, rows, sizes):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    add_bw = stream["add"]["median_gbs"]
    contenders = sorted({r["contender"] for r in rows if not r["row"].startswith("tiny_")}, key=contender_key)
    colors = {"gacc": "#d62728", "gacc (native)": "#ff9896", "gacc (rerun)": "#8c564b", "torch": "#1f77b4", "torch (foreach)": "#9467bd", "torch (fused)": "#aec7e8",
              "jax+optax (jit)": "#2ca02c", "jax+optax (MultiSteps)": "#98df8a", "numpy": "#7f7f7f"}
    fig, axes = plt.subplots(len(sizes), 1, figsize=(13, 4.2 * len(sizes)), squeeze=False)
    for ax, n in zip(axes[:, 0], sizes):
        add_bw = stream["floor"].get(n, stream["add"]["median_gbs"])
        width = 0.8 / len(contenders)
        for i, c in enumerate(contenders):
            xs, ys = [], []
            for j, row in enumerate(ROW_ORDER):
                e = next((r for r in rows if r["n"] == n and r["row"] == row and r["contender"] == c), None)
                if e:
                    xs.append(j + (i - (len(contenders) - 1) / 2) * width)
                    ys.append(e["gbs"])
            ax.bar(xs, ys, width=width, label=c, color=colors.get(c))
        ax.axhline(add_bw, color="black", linestyle="--", linewidth=1)
        ax.text(len(ROW_ORDER) - 0.5, add_bw, f" STREAM add {add_bw:.1f} GB/s (floor)", va="bottom", ha="right",
                fontsize=9)
        ax.set_xticks(range(len(ROW_ORDER)))
        ax.set_xticklabels([ROW_LABEL[r].replace(" (per micro-batch)", "").replace(" + ", "\n+ ")
                            .replace("accumulate ", "accumulate\n").replace("step ", "step\n", 1)
                            for r in ROW_ORDER], fontsize=9)
        ax.set_ylabel("GB/s (useful bytes / time)")
        ax.set_title(f"{size_label(n)} parameters: higher is better")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(ncol=len(contenders), fontsize=9, loc="upper center", bbox_to_anchor=(0.5, 1.28))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- main ---

TENSOR_ROWS = [
    ("per_tensor", "gacc", "(a) gacc_microbatch_tensors"),
    ("copy_microbatch", "gacc", "(b) copy into one buffer + gacc_microbatch"),
    ("microbatch", "gacc", "(ref) gacc_microbatch, same bytes"),
    ("inplace_add", "gacc", "(c) host acc += W*g in place + gacc_microbatch_inplace"),
    ("inplace_call", "gacc", "(c) gacc_microbatch_inplace alone"),
    ("pgrad_add", "torch", "torch: p.grad.add_(g, alpha=W) per parameter"),
    ("foreach_add", "torch", "torch: torch._foreach_add_(grads, gs, alpha=W)"),
]


def tensors_main(a):
    """The per-tensor comparison only (see the module docstring)."""
    exe = build(a.no_build)
    env = peer_env()
    out, err, _ = run_json([sys.executable, os.path.join(BENCH, "peers.py"), "--peer", "torch-foreach",
                            "--mode", "version"], env=env, timeout=300)
    have_torch = bool(out) and not err
    if not have_torch:
        log("torch is not installed: its rows are skipped (bash bench/install-peers.sh installs it)")
    rows = []
    for n in [parse_size(x) for x in a.tensor_sizes.split(",")]:
        for t in [int(x) for x in a.tensor_counts.split(",")]:
            log(f"per-tensor rows: {size_label(n)}, {t} tensors")
            # Passive OpenMP waiting: the host's parallel copy/add threads must not spin
            # against gacc's rayon pool between calls.
            got, err, _ = run_json([exe, "tensors", "--n", str(n), "--t", str(t), "--repeats", str(a.repeats)],
                                   env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
            if err:
                log(f"  gacc: {err}")
            rows += [dict(r, size=n, tensors=t) for r in got if r.get("kind") == "row"]
            if have_torch:
                got, err, _ = run_json([sys.executable, os.path.join(BENCH, "peers.py"), "--peer", "torch-foreach",
                                        "--mode", "tensors", "--n", str(n), "--t", str(t), "--repeats",
                                        str(a.repeats)], env=env)
                if err:
                    log(f"  torch: {err}")
                rows += [dict(r, size=n, tensors=t) for r in got if r.get("kind") == "row"]
    os.makedirs(BUILD, exist_ok=True)
    with open(os.path.join(BUILD, "bench-tensors.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    by = {(r["row"], r["size"], r["tensors"]): r for r in rows}
    print("| params | tensors | row | median | GB/s | vs (ref) |")
    print("|---|---:|---|---:|---:|---:|")
    for n in [parse_size(x) for x in a.tensor_sizes.split(",")]:
        for t in [int(x) for x in a.tensor_counts.split(",")]:
            ref = by.get((f"microbatch_{t}", n, t))
            ref_t = med(ref["samples_s"]) if ref else None
            for key, who, label in TENSOR_ROWS:
                r = by.get((f"{key}_{t}", n, t))
                if r is None:
                    if who == "torch" and not have_torch:
                        print(f"| {size_label(n)} | {t} | {label} | skipped: torch not installed | | |")
                    continue
                m = med(r["samples_s"])
                gbs = r["n"] * r["bytes_per_param"] / m / 1e9 if r["bytes_per_param"] and m > 0 else 0.0
                ratio = f"{m / ref_t:.2f}" if ref_t else ""
                print(f"| {size_label(n)} ({r['n']}) | {t} | {label} | {fmt_t(m)} | {gbs:.1f} | {ratio} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tensors", action="store_true", help="run only the per-tensor comparison")
    ap.add_argument("--tensor-sizes", default="16M,64M")
    ap.add_argument("--tensor-counts", default="64,512")
    ap.add_argument("--sizes", default="1M,16M,64M")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--peers", default=",".join(ALL_PEERS))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-tiny", action="store_true", help="skip the 1k-parameter per-call rows")
    ap.add_argument("--no-native", action="store_true",
                    help="skip the second gacc build with -C target-cpu=native")
    ap.add_argument("--quiet-wait", type=float, default=30,
                    help="seconds to wait, before each contender, for the machine to go idle")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-runs of a contender whose run shared the CPUs with other work")
    ap.add_argument("--wait-budget-min", type=float, default=15,
                    help="minutes after the start past which the run stops waiting and retrying")
    ap.add_argument("--rounds", type=int, default=2,
                    help="times each size's contenders run, interleaved; each keeps its fastest round")
    ap.add_argument("--quick", action="store_true", help="1M only, 3 repeats")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite benchmarks.md/png from the benchmarks.jsonl in --out, measuring nothing")
    a = ap.parse_args()
    if a.tensors:
        tensors_main(a)
        return
    if a.report_only:
        report_only(a.out)
        return
    if a.quick:
        a.sizes, a.repeats = "1M", 3
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    peers = [p for p in a.peers.split(",") if p]
    t_start = time.time()
    WAIT_UNTIL[0] = t_start + 60 * a.wait_budget_min
    info = machine_info()
    log(f"machine: {info.get('Model name')} load {info['load_start']:.2f}")
    exe = build(a.no_build)
    exe_native = None if a.no_native else build(a.no_build, native=True)
    env = peer_env()
    raw = []
    errors = []
    versions = {}

    # Which peers import at all?
    ok_peers = []
    for p in peers:
        out, err, _ = run_json([sys.executable, os.path.join(BENCH, "peers.py"), "--peer", p, "--mode", "version"],
                               env=env, timeout=300)
        if err or not out:
            errors.append(f"{PEER_LABEL.get(p, p)}: could not be imported ({err}); "
                          "run `bash bench/install-peers.sh`")
            log(errors[-1])
            continue
        ok_peers.append(p)
        versions[out[0]["contender"]] = {k: (json.dumps(v) if not isinstance(v, (str, int, float)) else v)
                                         for k, v in out[0]["versions"].items()}

    stream_runs = [0]

    def measure_stream(tag, n=None):
        log(f"STREAM ({tag})")
        out, err, _, others, _ = run_job([exe, "stream", "--n", str(32 << 20), "--repeats", "10"], None,
                                         a.quiet_wait, a.retries)
        if err:
            raise SystemExit(f"STREAM failed: {err}")
        for o in out:
            o.update(tag=tag, index=stream_runs[0], others_cpu=round(others, 3), size=n)
        stream_runs[0] += 1
        raw.extend(out)
        log("  " + ", ".join(f"{o['op']} {o['bytes'] / med(o['samples_s']) / 1e9:.1f} GB/s" for o in out))

    measure_stream("start", sizes[0])
    rows = []
    memory = []
    for n in sizes:
        jobs = [("gacc", [exe, "run", "--n", str(n), "--k", str(a.k), "--repeats", str(a.repeats)], None)]
        if exe_native:
            jobs.append(("gacc-native", [exe_native, "run", "--n", str(n), "--k", str(a.k), "--repeats",
                                         str(a.repeats), "--label", "gacc (native)"], None))
        for p in ok_peers:
            jobs.append((p, [sys.executable, os.path.join(BENCH, "peers.py"), "--peer", p, "--mode", "run",
                             "--n", str(n), "--k", str(a.k), "--repeats", str(a.repeats)], env))
        if a.rounds == 1:
            # gacc once more after the peers: shows how far the machine drifted during the size.
            jobs.append(("gacc-rerun", [exe, "run", "--n", str(n), "--k", str(a.k), "--repeats", str(a.repeats),
                                        "--label", "gacc (rerun)"], None))
        for rnd, (name, cmd, e) in [(r, j) for r in range(a.rounds) for j in jobs]:
            if rnd > 0 and name == jobs[0][0]:
                measure_stream(f"{size_label(n)}, before round {rnd + 1}", n)
            log(f"{size_label(n)} round {rnd + 1}: {name}")
            out, err, secs, others, before = run_job(cmd, e, a.quiet_wait, a.retries)
            for o in out:
                o["others_cpu"] = round(others, 3)
                o["round"] = rnd + 1
            log(f"  {secs:.1f} s, other work {before:.2f} CPUs before, {others:.2f} during"
                + (f"  ERROR {err}" if err else ""))
            if err:
                errors.append(f"{PEER_LABEL.get(name, name)} at {size_label(n)}: {err}")
            for o in out:
                if o["kind"] == "error":
                    errors.append(f"{o['contender']} {o['row']} at {size_label(n)}: {o['error']}")
            raw.extend(out)
            rows.extend(o for o in out if o["kind"] == "row")
        if not a.no_memory:
            for name in ["gacc"] + ok_peers:
                if name == "gacc":
                    cmd, e = [exe, "mem", "--n", str(n), "--k", str(a.k)], None
                else:
                    cmd, e = [sys.executable, os.path.join(BENCH, "peers.py"), "--peer", name, "--mode", "mem",
                              "--n", str(n), "--k", str(a.k)], env
                log(f"{size_label(n)}: peak RSS of {name}")
                out, err, _ = run_json(cmd, env=e)
                if err:
                    errors.append(f"memory of {PEER_LABEL.get(name, name)} at {size_label(n)}: {err}")
                raw.extend(out)
                memory.extend(o for o in out if o["kind"] == "memory")
        measure_stream(f"after {size_label(n)}", n)

    log("tiny model")
    for e, label in ((exe, "gacc"), (exe_native, "gacc (native)")) if not a.no_tiny else ():
        if not e:
            continue
        out, err, _, others, _ = run_job([e, "tiny", "--n", "1000", "--iters", "100000", "--repeats", "9",
                                          "--label", label], None, a.quiet_wait, a.retries)
        for o in out:
            o["others_cpu"] = round(others, 3)
        if err:
            errors.append(f"{label} tiny: {err}")
        raw.extend(out)
        rows.extend(o for o in out if o["kind"] == "row")
    for p in ok_peers if not a.no_tiny else ():
        if p == "jax-multisteps":
            continue
        out, err, _, others, _ = run_job([sys.executable, os.path.join(BENCH, "peers.py"), "--peer", p, "--mode",
                                          "tiny", "--n", "1000", "--iters", "2000", "--repeats", "5"], env,
                                         a.quiet_wait, a.retries)
        for o in out:
            o["others_cpu"] = round(others, 3)
        if err:
            errors.append(f"{PEER_LABEL.get(p, p)} tiny: {err}")
        raw.extend(out)
        rows.extend(o for o in out if o["kind"] == "row" and not (p == "torch-fused" and o["row"] == "tiny_microbatch"))

    info["load_end"] = os.getloadavg()[0]
    elapsed = time.time() - t_start
    os.makedirs(a.out, exist_ok=True)
    run = {"kind": "run", "sizes": sizes, "k": a.k, "repeats": a.repeats, "rounds": a.rounds, "elapsed_s": elapsed,
           "errors": errors, "versions": versions}
    with open(os.path.join(a.out, "benchmarks.jsonl"), "w") as f:
        f.write(json.dumps({"kind": "machine", **info}) + "\n")
        f.write(json.dumps(run) + "\n")
        for o in raw:
            f.write(json.dumps(o) + "\n")
    report(a.out, info, run, raw)
    log(f"done in {elapsed / 60:.1f} min: {a.out}/benchmarks.md")


def stream_summary(raw, sizes):
    """STREAM runs in order; the floor of size i is the mean add bandwidth of runs i and i+1."""
    runs = []
    for o in raw:
        if o["kind"] != "stream":
            continue
        idx = o.get("index", 0)
        while len(runs) <= idx:
            runs.append({"tag": "", "ops": {}})
        runs[idx]["tag"] = o.get("tag", "start")
        runs[idx]["others"] = o.get("others_cpu", "?")
        runs[idx]["size"] = o.get("size")
        ts = o["samples_s"]
        runs[idx]["ops"][o["op"]] = {"median_gbs": o["bytes"] / med(ts) / 1e9, "best_gbs": o["bytes"] / min(ts) / 1e9}
    adds = [r["ops"]["add"]["median_gbs"] for r in runs if "add" in r["ops"]]
    floor = {}
    for i, n in enumerate(sizes):
        tagged = [r["ops"]["add"]["median_gbs"] for r in runs if r.get("size") == n and "add" in r["ops"]]
        if tagged:  # the best STREAM add measured around this size's rounds
            floor[n] = max(tagged)
            continue
        near = [runs[j]["ops"]["add"]["median_gbs"] for j in (i, i + 1) if j < len(runs) and "add" in runs[j]["ops"]]
        floor[n] = sum(near) / len(near) if near else med(adds)
    return {"runs": runs, "floor": floor, "add": {"median_gbs": med(adds)}}


def report(out_dir, info, run, raw):
    """Writes benchmarks.md and benchmarks.png from the raw JSON lines of a run."""
    stream = stream_summary(raw, run["sizes"])
    memory = [o for o in raw if o["kind"] == "memory"]
    best = {}
    for r in (o for o in raw if o["kind"] == "row"):
        r["median"] = med(r["samples_s"])
        r["gbs"] = r["n"] * r["bytes_per_param"] / r["median"] / 1e9
        key = (r["n"], r["row"], r["contender"])
        best.setdefault(key, []).append(r)
    rows = []
    for key, rs in best.items():
        rs.sort(key=lambda r: r["median"])
        rs[0]["other_rounds"] = [r["median"] for r in rs[1:]]
        rows.append(rs[0])
    md = write_report(out_dir, info, stream, rows, memory, run["errors"], run["versions"], run["sizes"],
                      run["k"], run["repeats"], run["elapsed_s"], run.get("rounds", 1), run.get("note"))
    with open(os.path.join(out_dir, "benchmarks.md"), "w") as f:
        f.write("\n".join(md))
    try:
        plot(os.path.join(out_dir, "benchmarks.png"), stream, rows, run["sizes"])
    except ImportError as e:
        log(f"no plot: {e}")


def report_only(out_dir):
    """Rebuilds the markdown and the plot from docs/benchmarks.jsonl (no measuring)."""
    info, run, raw = None, None, []
    with open(os.path.join(out_dir, "benchmarks.jsonl")) as f:
        for line in f:
            o = json.loads(line)
            if o["kind"] == "machine":
                info = o
            elif o["kind"] == "run":
                run = o
            else:
                raw.append(o)
    if run is None:  # written before the run line existed
        sizes = sorted({o["n"] for o in raw if o["kind"] == "row" and not o["row"].startswith("tiny")})
        reps = [len(o["samples_s"]) for o in raw if o["kind"] == "row" and o["row"] == "step_adamw"]
        versions = {}
        env = peer_env()
        for p in sorted({PEER_KEY[o["contender"]] for o in raw if o.get("contender") in PEER_KEY}):
            out, err, _ = run_json([sys.executable, os.path.join(BENCH, "peers.py"), "--peer", p, "--mode",
                                    "version"], env=env, timeout=300)
            if out:
                versions[out[0]["contender"]] = {k: (json.dumps(v) if not isinstance(v, (str, int, float)) else v)
                                                 for k, v in out[0]["versions"].items()}
        run = {"sizes": sizes, "k": 4, "repeats": reps[0] if reps else 0, "elapsed_s": info.get("elapsed_s", 0),
               "errors": [], "versions": versions}
    report(out_dir, info, run, raw)


if __name__ == "__main__":
    main()
