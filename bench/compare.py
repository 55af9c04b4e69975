#!/usr/bin/env python3
"""gacc against what users would pick instead, measured side by side in one run.

    bash bench/install-peers.sh          # once: numpy, jax[cpu], optax, matplotlib, torch
    python3 bench/compare.py             # all sizes, all peers: docs/benchmarks.{md,png,jsonl}

Options: --sizes 1M,16M,64M  --repeats 7  --k 4  --peers numpy,jax,jax-multisteps,torch-foreach,torch-fused
         --out docs  --no-build  --quick (1M only, 3 repeats, for a smoke test)

    python3 bench/compare.py --tensors [--tensor-sizes 16M,64M] [--tensor-counts 64,512]

runs only the per-tensor comparison (gacc_microbatch_tensors, copy + gacc_microbatch,
gacc_microbatch on the same bytes, in place; against PyTorch's own accumulation when
torch is installed, skipped otherwise: the first backward's buffers assigned to p.grad,
then p.grad.add_ per parameter and torch._foreach_add_ for later micro-batches) on
transformer-like tensors (bench/model_shapes.rs), prints the table and writes the
raw rows to build/bench-tensors.jsonl (not to docs/: take the figures on a quiet
machine).

What it does, in one process tree on one machine:
1. builds libgacc (cargo build --release) and bench/gacc_bench.c against include/gacc.h;
2. STREAM copy/add/triad (2 OpenMP threads, 3 x 256 MiB arrays): the bandwidth floor;
3. per size: gacc through the C ABI, then each peer alone in its own subprocess
   (bench/peers.py), all doing the same window: K micro-batches accumulated (the first
   of each window timed as its own row), one step; and the whole window timed at once
   (gacc and torch). Every row carries its bytes per parameter (what it moves; gacc:
   today's passes) and issue 14's minimum (bench/report.py's byte model);
4. per-call overhead on a 1k-parameter model (gacc from C, the peers from Python);
5. peak RSS of each contender at each size (its own process, VmHWM);
6. writes the raw JSON lines (docs/benchmarks.jsonl), then bench/report.py turns them
   into the table (markdown) and the plot (PNG).

This file measures; bench/report.py reports. `--report-only` rewrites the markdown and
the plot from an existing benchmarks.jsonl (the same as `python3 bench/report.py`).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BUILD = os.path.join(ROOT, "build")
DEPS = [os.path.join(ROOT, ".deps", "bench"), os.path.join(ROOT, ".deps", "bench-torch")]

import report  # noqa: E402 (bench/, the script's folder, is on sys.path)
from report import ALL_PEERS, PEER_LABEL, log, med, parse_size, size_label  # noqa: E402


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


# --------------------------------------------------------------------------- main ---




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
            # Neither side spins between calls: the host's parallel copy/add threads
            # (OpenMP, passive) and gacc's workers (GACC_CPU_SPIN_US=0) would otherwise
            # take the cores the other needs next. This costs gacc a wake-up per call.
            # Several processes per configuration, their samples pooled per row: the rows
            # are interleaved inside each process, but one process's ratios still move by
            # about 10% from run to run on this VM.
            pooled = {}
            for _ in range(max(a.rounds, 3)):
                got, err, _ = run_json([exe, "tensors", "--n", str(n), "--t", str(t), "--repeats", str(a.repeats)],
                                       env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE", GACC_CPU_SPIN_US="0"))
                if err:
                    log(f"  gacc: {err}")
                for r in got:
                    if r.get("kind") != "row":
                        continue
                    if r["row"] in pooled:
                        pooled[r["row"]]["samples_s"] += r["samples_s"]
                    else:
                        pooled[r["row"]] = dict(r, size=n, tensors=t)
            rows += list(pooled.values())
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
    print("\n".join(report.tensors_table(rows, have_torch)))


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
        report.report(a.out, *report.load(os.path.join(a.out, "benchmarks.jsonl")))
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
    report.report(a.out, info, run, raw)
    log(f"done in {elapsed / 60:.1f} min: {a.out}/benchmarks.md")


if __name__ == "__main__":
    main()
