#!/usr/bin/env bash
# The GPU check: runs the bundle of scripts/gpu-bundle.sh (build/gpu-bundle, built on
# any machine with Rust) on a machine with an NVIDIA GPU, in at most 8 minutes, and
# prints a short report ending in "GPUCHECK PASS" or "GPUCHECK FAIL".
#
#   scripts/gpu-check.sh [--fake] [BUNDLE_DIR]
#
# Phases, each under its own `timeout` (a hang costs that phase, not the run):
#   env          GPU, driver, compute capability; the NVRTC, CUDA headers, NCCL and
#                libcuda found (the machine's CUDA install or Python wheels: PyTorch's)
#   gpu-serial   every test of tests/gpu.rs, one thread (an engine above 2^31
#                parameters included)
#   gpu-parallel the same with 8 test threads
#   issue11      the ordering, context, foreign-pointer and graph-capture tests (names
#                with order/context/foreign/capture/graph); none present is a failure
#   nccl         NCCL with one rank on device 0 (gpu_nccl_world_size_one)
#   probe-nccl   tests/cuda_probe.rs and tests/nccl_real.rs (the machine's nccl.h/libnccl)
#   c-tests      the C tests and the demo (GACC_DEVICE_AUTO: device 0)
#   bench        bench/gpu.rs: GB/s of every kernel against a d2d copy, launches and
#                host syncs per micro-batch and per step
#   memcheck, racecheck, synccheck, initcheck
#                compute-sanitizer over GPU tests (the case matrix and the C-API test)
# On a real GPU any "skipped" printed by a test is a failure. Without a GPU the check
# fails, unless --fake: then the fake driver (fake/libcuda.so in the bundle, preloaded)
# stands in for libcuda and the phases that need real hardware (issue11 if absent,
# nccl, the sanitizers) are reported "not run", which is not a failure; "skipped"
# lines are allowed there (e.g. the 2^31 test on the fake's 2 GiB).
#
# Environment: GACC_NVRTC_LIB, GACC_CUDA_INCLUDE, GACC_NCCL_LIB override the search;
# GPUCHECK_LOG_DIR (default build/gpu-check) receives every phase's full log and
# report.txt; GPUCHECK_BUDGET_S (default 480; with --fake 5 times that, like each
# phase's limit: GPUCHECK_FAKE_SCALE) is the wall-time budget; GPUCHECK_STRICT=1 fails
# "skipped" lines on the fake too.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fake=0
bundle=""
for a in "$@"; do
    case "$a" in
    --fake) fake=1 ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) bundle="$a" ;;
    esac
done
bundle="$(cd "${bundle:-$root/build/gpu-bundle}" 2>/dev/null && pwd)" || {
    echo "gpu-check: no bundle at ${bundle:-$root/build/gpu-bundle} (build it with make gpu-bundle)"
    echo "GPUCHECK FAIL"
    exit 1
}
logs="${GPUCHECK_LOG_DIR:-$root/build/gpu-check}"
rm -rf "$logs"
mkdir -p "$logs"
report="$logs/report.txt"
# On the fake the kernels run on host threads of a possibly loaded CPU machine: every
# limit is GPUCHECK_FAKE_SCALE (default 5) times longer there.
scale=1
[ "$fake" -eq 1 ] && scale=${GPUCHECK_FAKE_SCALE:-5}
budget=${GPUCHECK_BUDGET_S:-$((480 * scale))}
# Whether a "skipped" fails a phase: always on a real GPU; GPUCHECK_STRICT=1 makes the
# fake strict too (to see that path work without a GPU).
strict=${GPUCHECK_STRICT:-$((1 - fake))}
t_start=$SECONDS
export GACC_CACHE_DIR="$logs/kernel-cache"
export GACC_SOURCE_DIR="$root"
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=1

say() { echo "$*" | tee -a "$report"; }

# ---- what the machine has ------------------------------------------------------------

site_dirs() {
    for py in python3 python; do
        command -v "$py" >/dev/null 2>&1 || continue
        "$py" -c 'import site, sys
for d in site.getsitepackages() + [site.getusersitepackages()] + sys.path:
    print(d)' 2>/dev/null
    done | sort -u
}
SITE_DIRS=$(site_dirs)

# Candidate files matching a glob under the usual CUDA folders and the Python wheels.
find_lib() {
    local pattern=$1
    {
        for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda/targets/*/lib \
            /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 "$root/.deps/pypi/nvidia/cu13/lib"; do
            ls -1 "$d"/$pattern 2>/dev/null
        done
        for s in $SITE_DIRS; do
            ls -1 "$s"/nvidia/*/lib/$pattern "$s"/torch/lib/$pattern 2>/dev/null
        done
    } | grep -v -e builtins -e '\.alt\.' | awk '!seen[$0]++'
}

gpu_line=""
driver_cuda=""
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu_line=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total \
        --format=csv,noheader 2>/dev/null | head -n 1)
    driver_cuda=$(timeout 20 nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\..*/\1/p' | head -n 1)
fi
if [ -z "$gpu_line" ] && [ "$fake" -eq 0 ]; then
    # No nvidia-smi (some containers): ask PyTorch.
    gpu_line=$(timeout 60 python3 -c 'import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}, driver ?, {p.major}.{p.minor}, {p.total_memory >> 20} MiB (from PyTorch {torch.__version__})")' \
        2>/dev/null | head -n 1)
fi
have_gpu=0
[ -n "$gpu_line" ] && have_gpu=1

if [ -z "${GACC_NVRTC_LIB:-}" ] || [ ! -f "$GACC_NVRTC_LIB" ]; then
    # Prefer the NVRTC of the driver's CUDA major version (a cubin of a newer CUDA does
    # not load on an older driver).
    cands=$(find_lib 'libnvrtc.so*')
    pick=""
    [ -n "$driver_cuda" ] && pick=$(echo "$cands" | grep -E "libnvrtc\.so\.$driver_cuda(\.|$)" | head -n 1)
    [ -z "$pick" ] && pick=$(echo "$cands" | grep -E 'libnvrtc\.so\.[0-9]+$' |
        awk -F'libnvrtc[.]so[.]' '{print $NF, $0}' | sort -n -r | head -n 1 | cut -d' ' -f2-)
    [ -z "$pick" ] && pick=$(echo "$cands" | head -n 1)
    [ -n "$pick" ] && export GACC_NVRTC_LIB="$pick"
fi
if [ -z "${GACC_CUDA_INCLUDE:-}" ] || [ ! -f "$GACC_CUDA_INCLUDE/cuda_fp16.h" ]; then
    unset GACC_CUDA_INCLUDE
    for d in "$(dirname "${GACC_NVRTC_LIB:-/nonexistent}")/../include" /usr/local/cuda/include \
        $(for s in $SITE_DIRS; do echo "$s/nvidia/cuda_runtime/include $s/nvidia/cu13/include"; done); do
        if [ -f "$d/cuda_fp16.h" ] && [ -f "$d/cuda_bf16.h" ]; then
            GACC_CUDA_INCLUDE="$(cd "$d" && pwd)"
            export GACC_CUDA_INCLUDE
            break
        fi
    done
fi
if [ "$fake" -eq 1 ]; then
    # The fake driver cannot carry a real NCCL: the NCCL phases are not run.
    unset GACC_NCCL_LIB
elif [ -z "${GACC_NCCL_LIB:-}" ] || [ ! -f "$GACC_NCCL_LIB" ]; then
    pick=$( (ldconfig -p 2>/dev/null | awk '/libnccl\.so\.2 /{print $NF}'; find_lib 'libnccl.so.2') | head -n 1)
    [ -n "$pick" ] && export GACC_NCCL_LIB="$pick"
fi
# tests/nccl_real.rs wants the folder holding include/nccl.h and lib/libnccl.so.2.
if [ -z "${GACC_TEST_NCCL_DIR:-}" ] && [ -n "${GACC_NCCL_LIB:-}" ]; then
    d="$(cd "$(dirname "$GACC_NCCL_LIB")/.." && pwd)"
    [ -f "$d/include/nccl.h" ] && [ -f "$d/lib/libnccl.so.2" ] && export GACC_TEST_NCCL_DIR="$d"
fi
libcuda=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF}'; find_lib 'libcuda.so.1') | head -n 1)
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)

preload=""
if [ "$fake" -eq 1 ]; then
    if [ ! -f "$bundle/fake/libcuda.so" ]; then
        say "gpu-check: --fake but the bundle has no fake/libcuda.so"
        say "GPUCHECK FAIL"
        exit 1
    fi
    preload="$bundle/fake/libcuda.so"
fi

say "gacc GPU check: bundle $bundle ($(sed -n 's/^commit: //p' "$bundle/MANIFEST" 2>/dev/null))"
say "  host:          $(uname -srm), $(nproc) cores"
if [ "$have_gpu" -eq 1 ]; then
    say "  GPU:           $gpu_line (name, driver, compute capability, memory); driver CUDA $driver_cuda"
elif [ "$fake" -eq 1 ]; then
    say "  GPU:           none: the fake driver $preload stands in (--fake)"
else
    say "  GPU:           none found (nvidia-smi)"
fi
say "  libcuda:       ${libcuda:-not found}"
say "  NVRTC:         ${GACC_NVRTC_LIB:-not found}"
say "  CUDA headers:  ${GACC_CUDA_INCLUDE:-not found}"
if [ "$fake" -eq 1 ]; then
    say "  NCCL:          not used on the fake driver${GACC_TEST_NCCL_DIR:+; tests/nccl_real.rs: $GACC_TEST_NCCL_DIR}"
else
    say "  NCCL:          ${GACC_NCCL_LIB:-not found}${GACC_TEST_NCCL_DIR:+ (nccl.h in $GACC_TEST_NCCL_DIR/include)}"
fi
say "  sanitizer:     ${sanitizer:-not found}"

# ---- phases --------------------------------------------------------------------------

results=()
failed=0
n_phase=0

# run_phase NAME LIMIT_S KIND COMMAND...   KIND: gpu (real GPU or the fake) or hw (a
# real GPU only). The command runs from a scratch folder; its output goes to the log.
run_phase() {
    local name=$1 limit=$2 kind=$3
    shift 3
    n_phase=$((n_phase + 1))
    local log
    log="$logs/$(printf '%02d' "$n_phase")-$name.log"
    if [ "$have_gpu" -eq 0 ] && { [ "$fake" -eq 0 ] || [ "$kind" = hw ]; }; then
        local why="no GPU"
        [ "$fake" -eq 1 ] && why="needs a real GPU"
        results+=("$(printf '%-13s NOT RUN  (%s)' "$name" "$why")")
        [ "$fake" -eq 0 ] && failed=1
        return
    fi
    limit=$((limit * scale))
    local left=$((budget - (SECONDS - t_start) - 5))
    if [ "$left" -lt 10 ]; then
        results+=("$(printf '%-13s NOT RUN  (the %ss budget is spent)' "$name" "$budget")")
        failed=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS rc
    mkdir -p "$logs/scratch-$name"
    # bash -c: the command may be one of the functions below (exported).
    (cd "$logs/scratch-$name" && LD_PRELOAD="$preload${LD_PRELOAD:+:$LD_PRELOAD}" \
        timeout --kill-after=10 "$limit" bash -c '"$@"' gpu-check "$@") >"$log" 2>&1
    rc=$?
    local secs=$((SECONDS - t0)) status detail=""
    detail=$(grep -E '^test result:' "$log" |
        awk '{p += $4; f += $6} END {if (NR) printf "%d passed, %d failed", p, f}')
    local skips
    skips=$(grep -ci 'skipped' "$log")
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="TIMEOUT"
        detail="over ${limit}s"
    elif [ "$rc" -ne 0 ]; then
        status="FAIL"
        detail="exit $rc${detail:+; $detail}"
    elif [ "$skips" -gt 0 ] && [ "$strict" -eq 1 ]; then
        status="FAIL"
        detail="$skips 'skipped' line(s): a failure on a real GPU${detail:+; $detail}"
    else
        status="PASS"
        [ "$skips" -gt 0 ] && detail="${detail:+$detail; }$skips 'skipped' line(s), allowed on the fake"
    fi
    results+=("$(printf '%-13s %-8s %4ss  %s' "$name" "$status" "$secs" "$detail")")
    if [ "$status" != PASS ]; then
        failed=1
        {
            echo "---- $name: $status ($log), last lines:"
            grep -i 'skipped' "$log" | head -n 10
            tail -n 25 "$log"
        } | tee -a "$report"
    fi
}

# A phase that is absent from this build (a real GPU: a failure; --fake: not run).
missing_phase() {
    n_phase=$((n_phase + 1))
    if [ "$fake" -eq 1 ] || [ "$have_gpu" -eq 0 ]; then
        results+=("$(printf '%-13s NOT RUN  (%s)' "$1" "$2")")
        [ "$have_gpu" -eq 0 ] && [ "$fake" -eq 0 ] && failed=1
    else
        results+=("$(printf '%-13s MISSING  (%s)' "$1" "$2")")
        failed=1
    fi
}

gpu="$bundle/tests/gpu"
light=()
if [ "$fake" -eq 1 ]; then
    # The fake runs kernels on host threads: the two case matrices and the 400
    # loss-scale replays take minutes to an hour there (tests/fake_driver.rs runs
    # smaller versions in the suite); the plumbing is what --fake checks.
    light=(--skip gpu_matches_cpu_on_every_case --skip gpu_matches_cpu_with_numerics_options
        --skip gpu_loss_scale_policies_match_deepspeed_and_gradscaler)
fi
# --nocapture: the "skipped" lines of passing tests must reach the log.
run_phase gpu-serial 75 gpu "$gpu" --test-threads=1 --nocapture "${light[@]}"
run_phase gpu-parallel 45 gpu "$gpu" --test-threads=8 --nocapture "${light[@]}"

issue11=$("$gpu" --list 2>/dev/null | sed -n 's/: test$//p' |
    grep -E 'order|context|foreign|capture|graph' | tr '\n' ' ')
if [ -n "$issue11" ]; then
    # shellcheck disable=SC2086
    run_phase issue11 30 gpu "$gpu" --test-threads=1 --nocapture $issue11
else
    missing_phase issue11 "no ordering/context/foreign-pointer/graph-capture test in tests/gpu.rs"
fi

NCCL_DEBUG=${NCCL_DEBUG:-WARN} run_phase nccl 25 hw "$gpu" --exact gpu_nccl_world_size_one --nocapture

probe_nccl() {
    "$bundle/tests/cuda_probe" --nocapture || return 1
    if [ -n "${GACC_TEST_NCCL_DIR:-}" ]; then
        "$bundle/tests/nccl_real" --test-threads=1 --nocapture || return 1
    else
        # Not a "skipped": the machine's NCCL may come without its header.
        echo "note: tests/nccl_real.rs not run: no include/nccl.h next to lib/libnccl.so.2 here"
    fi
}
export -f probe_nccl
export bundle
if [ "$fake" -eq 1 ]; then
    # No preload: the probe sees this machine as it is; NCCL from the CI's .deps.
    saved=$preload
    preload=""
    run_phase probe-nccl 30 gpu probe_nccl
    preload=$saved
else
    run_phase probe-nccl 30 gpu probe_nccl
fi

c_tests() {
    local ok=1 p
    for p in "$bundle"/c/test_* "$bundle/c/demo"; do
        if "$p" >"$(basename "$p").out" 2>&1; then
            echo "PASS $(basename "$p"): $(tail -n 1 "$(basename "$p").out")"
        else
            ok=0
            echo "FAIL $(basename "$p"):"
            sed 's/^/    /' "$(basename "$p").out"
        fi
    done
    # They must have run on the device, not fallen back to the CPU.
    grep -q 'CUDA device 0 is usable here' test_device.out || { echo "test_device did not see device 0"; ok=0; }
    grep -q '^device: cuda:0' demo.out || { echo "the demo did not run on cuda:0"; ok=0; }
    [ "$ok" -eq 1 ]
}
export -f c_tests
run_phase c-tests 40 gpu c_tests

if [ "$fake" -eq 1 ]; then
    # On the fake the kernels run on the host: a small size, figures meaningless.
    GACC_BENCH_NUMEL=${GACC_BENCH_NUMEL:-4099} GACC_BENCH_ITERS=${GACC_BENCH_ITERS:-2} \
        run_phase bench 45 gpu "$bundle/bench/gpu"
else
    run_phase bench 45 gpu "$bundle/bench/gpu"
fi
bench_log=$(ls "$logs"/*-bench.log 2>/dev/null | head -n 1)

san_filter=(gpu_matches_cpu_on_every_case gpu_c_api_stream_loss_scale_ptr_and_pointer_kinds)
for tool in memcheck racecheck synccheck initcheck; do
    if [ -z "$sanitizer" ] && [ "$have_gpu" -eq 1 ]; then
        missing_phase "$tool" "compute-sanitizer not found"
        continue
    fi
    run_phase "$tool" 40 hw "${sanitizer:-compute-sanitizer}" --tool "$tool" --error-exitcode 1 \
        "$gpu" --test-threads=1 --nocapture "${san_filter[@]}"
done

# ---- report ----------------------------------------------------------------------------

say ""
say "phase         result   time  detail"
for r in "${results[@]}"; do say "$r"; done
# Each GPU test's result, from the serial run (its output sits between "test X ..." and
# the verdict).
serial_log=$(ls "$logs"/*-gpu-serial.log 2>/dev/null | head -n 1)
if [ -n "$serial_log" ]; then
    say ""
    say "GPU tests (serial run):"
    awk '
        function verdict(v) { printf "  %-58s %s%s\n", name, v, (skip != "" ? " (" skip ")" : ""); name = ""; skip = "" }
        /^test [^ ]+ \.\.\. / { name = $2; skip = "" }
        name != "" && /skipped/ { skip = "skipped" }
        name != "" && / ok$|^ok$/ { verdict("ok"); next }
        name != "" && /FAILED$/ { verdict("FAILED"); next }
    ' "$serial_log" | tee -a "$report"
fi
if [ -n "$bench_log" ] && [ -s "$bench_log" ]; then
    say ""
    say "benchmark$([ "$fake" -eq 1 ] && echo ' (fake driver: the figures mean nothing)'):"
    while IFS= read -r l; do say "  $l"; done <"$bench_log"
fi
say ""
say "logs: $logs; total $((SECONDS - t_start))s"
if [ "$failed" -eq 0 ]; then
    say "GPUCHECK PASS"
    exit 0
fi
say "GPUCHECK FAIL"
exit 1
