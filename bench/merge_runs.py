"""One-off merge used for the committed docs/benchmarks.jsonl: takes run A (a full
bench/compare.py run), drops its 64M rows and 64M STREAM runs (and its per-call rows
when C is given), and adds run B's 64M rows and STREAM runs and run C's per-call rows.

    python3 bench/merge_runs.py A.jsonl B.jsonl C.jsonl|- OUT.jsonl "note shown in the report"
    python3 bench/compare.py --report-only --out DIR_OF_OUT
"""
import json, sys
a, b, c, out, note = sys.argv[1:6]
def load(p):
    L = [json.loads(l) for l in open(p)]
    return L
A = load(a); B = load(b); C = load(c) if c != "-" else []
N64 = 64 << 20
machine = A[0]; run = A[1]
keep = []
for o in A[2:]:
    if o["kind"] == "row" and (o["n"] == N64 or o["row"].startswith("tiny_")) and (o["n"] == N64 or C):
        continue
    if o["kind"] == "stream" and o.get("size") == N64:
        continue
    keep.append(o)
nidx = 1 + max(o.get("index", 0) for o in keep if o["kind"] == "stream")
base = None
for o in B[2:]:
    if o["kind"] == "stream":
        if base is None: base = o["index"]
        o["index"] = nidx + o["index"] - base
        o["tag"] = "second pass: " + o["tag"]
        o["size"] = N64
        keep.append(o)
    elif o["kind"] == "row" and o["n"] == N64:
        keep.append(o)
for o in C[2:]:
    if o["kind"] == "row" and o["row"].startswith("tiny_"):
        keep.append(o)
run["note"] = note
with open(out, "w") as f:
    f.write(json.dumps(machine) + "\n"); f.write(json.dumps(run) + "\n")
    for o in keep: f.write(json.dumps(o) + "\n")
