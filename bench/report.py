#!/usr/bin/env python3
"""The report half of the peer comparison: benchmark JSON lines -> markdown and plot.

    python3 bench/report.py [--out docs]       # docs/benchmarks.jsonl -> docs/benchmarks.md, .png
    python3 bench/report.py --tensors [FILE]   # build/bench-tensors.jsonl -> the per-tensor table

bench/compare.py measures and writes the JSON lines, then calls this; it measures
nothing itself (`compare.py --report-only` is the same as the first command). The
plot needs matplotlib (bash bench/install-peers.sh); without it only the markdown is
written.
"""
import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
DEPS = [os.path.join(ROOT, ".deps", "bench"), os.path.join(ROOT, ".deps", "bench-torch")]
sys.path[:0] = [p for p in DEPS if os.path.isdir(p)]  # matplotlib for the plot
ALL_PEERS = ["torch-foreach", "torch-fused", "jax", "jax-multisteps", "numpy"]
PEER_LABEL = {
    "torch-foreach": "torch (foreach)",
    "torch-fused": "torch (fused)",
    "jax": "jax+optax (jit)",
    "jax-multisteps": "jax+optax (MultiSteps)",
    "numpy": "numpy",
}
PEER_KEY = {v: k for k, v in PEER_LABEL.items()}
ROW_ORDER = ["accumulate_f32_first", "accumulate_f32", "accumulate_f16_first", "accumulate_f16",
             "accumulate_bf16_first", "accumulate_bf16", "step_sgd_momentum", "step_adamw", "step_adamw_clip",
             "step_adamw_clip_fp16", "window_adamw_clip_bf16"]
ROW_LABEL = {
    "accumulate_f32_first": "accumulate f32 grad (first micro-batch of a window)",
    "accumulate_f32": "accumulate f32 grad (later micro-batch)",
    "accumulate_f16_first": "accumulate f16 grad (first micro-batch of a window)",
    "accumulate_f16": "accumulate f16 grad (later micro-batch)",
    "accumulate_bf16_first": "accumulate bf16 grad (first micro-batch of a window)",
    "accumulate_bf16": "accumulate bf16 grad (later micro-batch)",
    "step_sgd_momentum": "step SGD momentum",
    "step_adamw": "step AdamW",
    "step_adamw_clip": "step AdamW + clip",
    "step_adamw_clip_fp16": "step AdamW + clip + FP16 scaling",
    "window_adamw_clip_bf16": "whole window: K micro-batches + AdamW + clip + bf16 copy",
}
MODEL_LABEL = dict(ROW_LABEL)  # the byte model table's labels (old_run_rows relabels ROW_LABEL)
# gacc's byte model per parameter (each read and each write counted once), per row:
# (today's passes, issue 14's minimum, what today's passes move, what the minimum drops).
# The accumulate rows without "_first" are the later micro-batches of a window
# (bench/gacc_bench.c times the first one of each window as its own row; runs from
# before that split timed all K together: old_run_rows relabels them). The window row's
# counts depend on K: the benchmark writes them.
BYTE_MODEL = {
    "accumulate_f32_first": (12, 8, "read g 4, read + write acc 8",
                             "the window is empty: write acc = 0 + W·g, no read (-4)"),
    "accumulate_f32": (12, 12, "read g 4, read + write acc 8", "—"),
    "accumulate_f16_first": (10, 6, "read g 2, read + write acc 8", "write acc, no read (-4)"),
    "accumulate_f16": (10, 10, "read g 2, read + write acc 8", "—"),
    "accumulate_bf16_first": (10, 6, "read g 2, read + write acc 8", "write acc, no read (-4)"),
    "accumulate_bf16": (10, 10, "read g 2, read + write acc 8", "—"),
    "step_sgd_momentum": (28, 20, "norm / finite pass reads acc 4; update reads acc, p, buf 12, writes p, buf, "
                          "acc = 0 12", "no norm pass (-4), no acc = 0 (-4)"),
    "step_adamw": (36, 28, "norm pass 4; update reads acc, p, m, v 16, writes p, m, v, acc = 0 16",
                   "no norm pass (-4), no acc = 0 (-4)"),
    "step_adamw_clip": (36, 28, "as AdamW (the clip coefficient is a scalar)", "as AdamW"),
    "step_adamw_clip_fp16": (38, 30, "as AdamW, + 2 for the fp16 working copy", "as AdamW"),
}


def old_run_rows(rows, k):
    """A run from before the first/later split: its accumulate rows hold all K
    micro-batches of each window, so their minimum is the mean (first + (K-1) later) / K
    and their label says so. Changes ROW_LABEL for this report."""
    if any(r["row"].endswith("_first") for r in rows):
        return
    for key in ("accumulate_f32", "accumulate_f16", "accumulate_bf16"):
        ROW_LABEL[key] = ROW_LABEL[key].replace("(later micro-batch)", "(per micro-batch, all K)")
        for r in rows:
            if r["row"] == key and r.get("bytes_min") is None:
                r["bytes_min"] = (BYTE_MODEL[key + "_first"][1] + (k - 1) * BYTE_MODEL[key][1]) / k


def row_bytes(r):
    """(bytes this row moves, issue 14's minimum, source) of a benchmark row; rows of a
    run from before the byte model had both (bytes_per_param: the work's count)."""
    own = r["bytes_per_param"]
    bmin = r.get("bytes_min")
    if bmin is None:
        bmin = BYTE_MODEL.get(r["row"], (own, own))[1]
    return own, bmin, r.get("bytes_source", "ops" if r["contender"].startswith("gacc") else "work")
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
    L.extend(byte_model_lines(by, sizes, k))
    L.append("## Results")
    for n in sizes:
        L.append("")
        L.append(f"### {size_label(n)} parameters ({n:,}; {n * 4 / 2**20:.0f} MiB per fp32 buffer)")
        L.append("")
        L.append("| row | contender | median | min–max | B/param | GB/s | × floor | min B | × min floor | "
                 "peer ÷ gacc | other round | other work |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for row in ROW_ORDER:
            entries = sorted(by.get((n, row), []), key=lambda r: contender_key(r["contender"]))
            if not entries:
                continue
            g = next((e for e in entries if e["contender"] == "gacc"), None)
            for e in entries:
                m = e["median"]
                own, bmin, src = row_bytes(e)
                bw = stream["floor"].get(n, add_bw) * 1e9
                ratio = "—" if e is g or g is None else f"{m / g['median']:.2f}"
                name = f"**{e['contender']}**" if e is g else e["contender"]
                note = f" ¹" if e.get("note") and "MultiSteps" in e["contender"] else ""
                mark = " ²" if src == "work" and not e["contender"].startswith("gacc") else ""
                floor = f"{m / (n * own / bw):.2f}" if own else "—"
                min_floor = f"{m / (n * bmin / bw):.2f}" if bmin else "—"
                gbs = f"{e['gbs']:.1f}" if own else "—"
                L.append(f"| {ROW_LABEL[row]} | {name}{note} | {fmt_t(m)} | {fmt_range(e['samples_s'])} | "
                         f"{own:g}{mark} | {gbs} | {floor} | {bmin:g} | {min_floor} | {ratio} | "
                         f"{', '.join(fmt_t(x) for x in e.get('other_rounds', [])) or '—'} | {fmt_load(e)} |")
    L.append("")
    L.append("¹ optax.MultiSteps has no separate accumulate call: its accumulate row is the median of "
             "the K−1 non-final `update` calls, its step row is the K-th call, which also folds in "
             "that micro-batch (and its accumulate calls also add a zero update to the parameters).")
    L.append("")
    L.append("² not counted from this contender's own passes: the work's bytes with gacc's passes of "
             "today (XLA fuses JAX's passes; numpy makes temporaries), so its × floor is a lower bound "
             "of what it moves.")
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


def byte_model_lines(by, sizes, k):
    """The byte model: gacc's bytes per row today and with issue 14, the peers' own, and
    which of gacc's two models this run's measurement is nearer."""
    window_today, window_min = 12 * k + 38, 8 + 12 * (k - 1) + 30
    L = ["## Byte model (bytes per parameter, each read and each write counted once)", ""]
    L.append("Every row carries two counts. `B/param` is what that row moves: for gacc, the passes of "
             "the build measured here (bench/gacc_bench.c; since issue 14 landed they are the minimum, so "
             "gacc's `B/param` = `min B`; runs from before show the old passes); for PyTorch, counted from "
             "the ATen ops it runs (bench/peers.py `torch_step_bytes`); for JAX and numpy, marked ², the "
             "work's count with gacc's passes from before issue 14. `min B` is the minimum of issue 14's "
             "design: the first "
             "micro-batch of a window writes the accumulator instead "
             "of adding to it (nothing to read: the window is empty), the sum of squares and the finite "
             "check come from the accumulation pass that last wrote it, so the step needs no separate "
             "norm pass, and the step no longer writes acc = 0. Compensated (Kahan) accumulation, an "
             "accumulator the host writes in place (from the first `gacc_accumulator_ptr` on) and data "
             "parallelism keep the old passes, and the step keeps its norm pass unless the window's last "
             "micro-batch was a full-buffer `gacc_microbatch` or `gacc_microbatch_tensors` (not after an "
             "in-place micro-batch, a state import or an all-reduce): docs/cpu-performance.md.")
    L.append("")
    L.append("| row | gacc before issue 14 | gacc issue 14 minimum | the old passes | what the minimum drops |")
    L.append("|---|---|---|---|---|")
    for row, (today, bmin, what, drop) in BYTE_MODEL.items():
        L.append(f"| {MODEL_LABEL[row]} | {today} | {bmin} | {what} | {drop} |")
    L.append(f"| {ROW_LABEL['window_adamw_clip_bf16']} | 12·K + 38 = {window_today} | "
             f"8 + 12·(K−1) + 30 = {window_min} | K micro-batches 12 each; norm pass 4, update 28, "
             f"acc = 0 4, bf16 copy 2 | first micro-batch −4, norm pass −4, acc = 0 −4 |")
    L.append("")
    L.append("PyTorch's own counts (torch as it runs here, K = " + str(k) + "): `zero_grad()` sets `.grad` "
             "to None (its default), the first backward's gradient buffer becomes `.grad` (AccumulateGrad "
             "takes it: 0 B; the buffer is the backward's own output, made before the timer, as no "
             "contender's backward is timed), later micro-batches `add_` 12 (10 from f16/bf16). A step "
             "row: the mean `_foreach_mul_` 8 (GradScaler's unscale for FP16), `clip_grad_norm_` 12 "
             "(norm 4, multiply 8), fused AdamW 28 (reads p, g, m, v, writes p, m, v) or foreach AdamW 80 "
             "(8 separate passes), fused SGD 20 or foreach 32, fp16 copy 6. The whole window (no mean "
             f"pass: a torch user scales the loss): 0 + 12·(K−1) + 12 + 28 + 6 = {12 * (k - 1) + 46} "
             f"fused, {12 * (k - 1) + 98} foreach. gacc's counterpart of torch's 0-byte first micro-batch "
             "is `gacc_microbatch_inplace` (the host's backward writes the accumulator; `python3 "
             "bench/compare.py --tensors`).")
    L.append("")
    L.append("What these counts are not: they are the bytes the code asks for (STREAM's convention), "
             "not measured memory traffic (this VM has no hardware counters). Write-allocate reads of "
             "write-only streams (torch's fresh `sqrt(v)` temporaries, the fp16/bf16 copies) are not "
             "counted, and at 1M parameters the buffers stay in the L3, so a `× floor` below 1 there means "
             "cache, not fewer bytes. torch's counts come from reading the optimizer code of the installed "
             "torch (each ATen op reads its inputs and writes its output once), not from a measurement. "
             "The issue-14 minimum is what gacc's CPU backend now asks for; a run of an older build "
             "(docs/benchmarks.jsonl from before 2026-12-02) moved the old counts.")
    L.append("")
    # Which of gacc's models this run shows: the first micro-batch against a later one.
    seen = []
    for n in sizes:
        first = next((e for e in by.get((n, "accumulate_f32_first"), []) if e["contender"] == "gacc"), None)
        later = next((e for e in by.get((n, "accumulate_f32"), []) if e["contender"] == "gacc"), None)
        if first and later:
            seen.append((n, first["median"] / later["median"]))
    if seen:
        parts = []
        for n, x in seen:
            near = "issue 14's" if abs(x - 8 / 12) < abs(x - 1.0) else "the old passes'"
            parts.append(f"{size_label(n)}: {x:.2f} (nearer {near})")
        L.append("Which model this run's gacc shows, from its own medians: time of the first f32 micro-batch "
                 "of a window over a later one, "
                 + "; ".join(parts)
                 + " (the old passes: 1.00; issue 14's: 8/12 = 0.67; at 1M everything is in cache and the "
                 "ratio says little). `× floor` uses the row's own `B/param`; once gacc moves the minimum, "
                 "`× min floor` is its floor.")
    else:
        L.append("`× floor` uses the row's own `B/param`; once gacc moves the minimum, `× min floor` is its "
                 "floor (this run has no first-micro-batch rows to tell which model gacc's build shows).")
    L.append("")
    L.append("GB/s in the tables is the row's own `B/param` over the measured time. `× floor` = median "
             "time / floor time (the row's own bytes at the floor bandwidth; 1.00 is the bandwidth limit); "
             "`× min floor` the same with `min B`. `peer ÷ gacc` = the peer's median / gacc's median: "
             "above 1, gacc is faster. `other work` = CPUs that other processes kept busy while that "
             "contender's process ran (the machine's busy CPU-seconds minus the process's own, over its "
             "wall time; the machine has 2): above ~0.25 the row shared the cores with other work and is "
             "slower and noisier than it should be.")
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
                    why = " (torch moves no data there: `.grad` takes the backward's buffer)" if \
                        row_bytes(e)[0] == 0 else ""
                    lost.append(f"{size_label(n)} {ROW_LABEL[row]}: {e['contender']} {fmt_t(e['median'])} "
                                f"vs gacc {fmt_t(g['median'])} ({g['median'] / e['median']:.2f}× slower){why}")
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
    L.append("| row | gacc | B/param | GB/s | × floor | min B | × min floor | fastest peer | gacc speed-up over it |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for row in ROW_ORDER:
        entries = by.get((big, row), [])
        g = next((e for e in entries if e["contender"] == "gacc"), None)
        peers = [e for e in entries if not e["contender"].startswith("gacc")]
        if not g:
            continue
        own, bmin, _ = row_bytes(g)
        bw = stream["floor"].get(big, add_bw) * 1e9
        floor = big * own / bw
        if peers:
            best = min(peers, key=lambda e: e["median"])
            fp = f"{best['contender']} ({fmt_t(best['median'])})"
            sp = f"{best['median'] / g['median']:.2f}×"
        else:
            fp, sp = "—", "—"
        L.append(f"| {ROW_LABEL[row]} | {fmt_t(g['median'])} | {own:g} | {g['gbs']:.1f} | {g['median'] / floor:.2f} | "
                 f"{bmin:g} | {g['median'] / (big * bmin / bw):.2f} | {fp} | {sp} |")
    L.append("")
    L.append("`× floor`: time over the time the row's bytes (`B/param`: what the row moves) take at "
             "STREAM-add bandwidth (1.00 = at the memory-bandwidth limit); `× min floor` the same for issue "
             "14's minimum (`min B`; docs/benchmarks.md, byte model). The peers are PyTorch "
             "(`p.grad.add_`, `clip_grad_norm_`, AdamW "
             "foreach and fused, GradScaler's ops), JAX + optax (jit with donated buffers, and "
             "`optax.MultiSteps`) and numpy, each in its own process on the same machine in the same run. "
             "Reproduce with `bash bench/install-peers.sh && python3 bench/compare.py` (writes "
             "docs/benchmarks.md, .png and .jsonl).")
    return L


def plot_label(row):
    """A row's label, short enough for the plot's x axis."""
    label = (ROW_LABEL[row].replace(" (first micro-batch of a window)", ", first").replace(" (later micro-batch)", "")
             .replace(" (per micro-batch, all K)", "").replace("whole window: K micro-batches", "window: K mb"))
    return (label.replace(" + ", "\n+ ").replace("accumulate ", "accumulate\n").replace("step ", "step\n", 1)
            .replace("window: ", "window:\n"))


def plot(path, stream, rows, sizes):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    add_bw = stream["add"]["median_gbs"]
    contenders = sorted({r["contender"] for r in rows if not r["row"].startswith("tiny_")}, key=contender_key)
    colors = {"gacc": "#d62728", "gacc (native)": "#ff9896", "gacc (rerun)": "#8c564b", "torch": "#1f77b4", "torch (foreach)": "#9467bd", "torch (fused)": "#aec7e8",
              "jax+optax (jit)": "#2ca02c", "jax+optax (MultiSteps)": "#98df8a", "numpy": "#7f7f7f"}
    fig, axes = plt.subplots(len(sizes), 1, figsize=(16, 4.4 * len(sizes)), squeeze=False)
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
        ax.set_xticklabels([plot_label(r) for r in ROW_ORDER], fontsize=8)
        ax.set_ylabel("GB/s (the row's B/param / time)")
        ax.set_title(f"{size_label(n)} parameters: higher is better")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(ncol=len(contenders), fontsize=9, loc="upper center", bbox_to_anchor=(0.5, 1.28))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


TENSOR_ROWS = [
    ("per_tensor", "gacc", "(a) gacc_microbatch_tensors"),
    ("per_tensor_flat", "gacc", "(a') gacc_microbatch_tensors, the same tensors laid out in one buffer"),
    ("copy_microbatch", "gacc", "(b) copy into one buffer + gacc_microbatch"),
    ("microbatch", "gacc", "(ref) gacc_microbatch, same bytes"),
    ("inplace_add", "gacc", "(c) host acc += W*g in place + gacc_microbatch_inplace"),
    ("inplace_call", "gacc", "(c) gacc_microbatch_inplace alone"),
    ("pgrad_assign", "torch", "torch: first micro-batch, p.grad = the backward's buffer (AccumulateGrad)"),
    ("pgrad_add", "torch", "torch: later micro-batches, p.grad.add_(g) per parameter"),
    ("foreach_add", "torch", "torch: later micro-batches, torch._foreach_add_(grads, gs)"),
]


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
    old_run_rows(rows, run["k"])
    md = write_report(out_dir, info, stream, rows, memory, run["errors"], run["versions"], run["sizes"],
                      run["k"], run["repeats"], run["elapsed_s"], run.get("rounds", 1), run.get("note"))
    with open(os.path.join(out_dir, "benchmarks.md"), "w") as f:
        f.write("\n".join(md))
    try:
        plot(os.path.join(out_dir, "benchmarks.png"), stream, rows, run["sizes"])
    except ImportError as e:
        log(f"no plot: {e}")


def load(path):
    """(machine info, run line, the other objects) of a benchmarks.jsonl."""
    info, run, raw = None, None, []
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            if o["kind"] == "machine":
                info = o
            elif o["kind"] == "run":
                run = o
            else:
                raw.append(o)
    if info is None or run is None:
        raise SystemExit(f"{path}: no machine or run line (not written by bench/compare.py)")
    return info, run, raw


def tensors_table(rows, have_torch):
    """The per-tensor comparison's markdown table, from the rows of bench-tensors.jsonl."""
    by = {(r["row"], r["size"], r["tensors"]): r for r in rows}
    sizes = sorted({r["size"] for r in rows})
    counts = sorted({r["tensors"] for r in rows})
    L = ["| params | tensors | row | median | B/param | GB/s | vs (ref) |", "|---|---:|---|---:|---:|---:|---:|"]
    for n in sizes:
        for t in counts:
            ref = by.get((f"microbatch_{t}", n, t))
            ref_t = med(ref["samples_s"]) if ref else None
            for key, who, label in TENSOR_ROWS:
                r = by.get((f"{key}_{t}", n, t))
                if r is None:
                    if who == "torch" and not have_torch:
                        L.append(f"| {size_label(n)} | {t} | {label} | skipped: torch not installed | | | |")
                    continue
                m = med(r["samples_s"])
                gbs = r["n"] * r["bytes_per_param"] / m / 1e9 if r["bytes_per_param"] and m > 0 else 0.0
                ratio = f"{m / ref_t:.2f}" if ref_t else ""
                L.append(f"| {size_label(n)} ({r['n']}) | {t} | {label} | {fmt_t(m)} | {r['bytes_per_param']:g} | "
                         f"{gbs:.1f} | {ratio} |")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"),
                    help="folder with benchmarks.jsonl; benchmarks.md and .png are written there")
    ap.add_argument("--tensors", nargs="?", const=os.path.join(BUILD, "bench-tensors.jsonl"), metavar="FILE",
                    help="print the per-tensor table of FILE instead")
    a = ap.parse_args()
    if a.tensors:
        with open(a.tensors) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        have_torch = any(r["row"].startswith(("pgrad_assign", "pgrad_add", "foreach_add")) for r in rows)
        print("\n".join(tensors_table(rows, have_torch)))
        return
    info, run, raw = load(os.path.join(a.out, "benchmarks.jsonl"))
    report(a.out, info, run, raw)


if __name__ == "__main__":
    main()
