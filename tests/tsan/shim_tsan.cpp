// shim_tsan.cpp: every gacc kernel through the host shim, for ThreadSanitizer.
//
// Built as one program with the shim (kernels/shim/shim_main.cpp, included below)
// under -fsanitize=thread by `make tsan-shim`. Each kernel runs through
// gacc_shim_launch (one OS thread per CUDA thread, as in the Rust tests) on grids of
// several blocks, on sizes that leave both a vector part and a scalar tail (n % 4
// != 0), with every option the kernels branch on (compensation, drop mode's gate
// with flagged and clean gradients, misaligned gradients taking the scalar path,
// applied and skipped steps, f16/bf16/no working copy, stochastic rounding, lazy
// zeroing with the fused norm partials and the last-block-done booking, the
// per-tensor kernel zeroing a stale accumulator's gaps). A few
// results are checked so that a wrong argument list cannot pass silently; the
// point is TSan's verdict: any report makes the program exit non-zero (TSan's
// exitcode).
//
// -DGACC_SHIM_PLAIN_ATOMICS injects a real race: the shim's atomicExch becomes
// plain loads and stores (what gacc_check_finite's flag store was before it used
// atomicExch), which TSan must report: `make tsan-shim` builds and runs that variant
// too and fails if it is NOT reported, so the check is known to be able to fail.
#include "shim/shim_main.cpp"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <vector>

namespace {

unsigned launches = 0;

template <class... T>
void launch(const char* name, unsigned grid, unsigned block, T... values) {
    std::tuple<T...> held(values...);
    std::array<void*, sizeof...(T)> args =
        std::apply([](auto&... v) { return std::array<void*, sizeof...(T)>{static_cast<void*>(&v)...}; }, held);
    char err[256] = {0};
    if (gacc_shim_launch(name, grid, block, 0, args.data(), sizeof...(T), err, sizeof err) != 0) {
        std::fprintf(stderr, "shim_tsan: launch of %s failed: %s\n", name, err);
        std::exit(2);
    }
    ++launches;
}

void expect(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "shim_tsan: check failed: %s\n", what);
        std::exit(3);
    }
}

gacc_state fresh_state() {
    gacc_state s;
    std::memset(&s, 0, sizeof s);
    s.loss_scale = 1024.0f;
    s.grad_norm = NAN;
    s.clip_coef = 1.0f;
    s.hysteresis_left = 2;
    s.lr = 0.01f;
    s.eager_zero = 1;  // the pre-issue-14 sequence first; run_size switches to lazy zeroing later
    return s;
}

gacc_hyper hyper(unsigned optimizer) {
    gacc_hyper h;
    std::memset(&h, 0, sizeof h);
    h.max_norm = 1.0f;
    h.beta1 = 0.9f;
    h.beta2 = 0.999f;
    h.eps = 1e-8f;
    h.weight_decay = 0.01f;
    h.momentum = 0.9f;
    h.optimizer = optimizer;
    h.scales_loss = 1;
    h.growth_factor = 2.0f;
    h.backoff_factor = 0.5f;
    h.growth_interval = 2;
    h.hysteresis = 2;
    return h;
}

const unsigned kBlock = GACC_BLOCK;
const unsigned kGrid = 3;

void run_size(gacc_u64 n) {
    // One extra element in front of each gradient buffer: +1 is misaligned for the
    // vector path (the scalar path), +4 (f32) / +4 halves (f16) aligned.
    std::vector<float> acc(n, 0.0f), comp(n, 0.0f), master(n), m(n, 0.0f), v(n, 0.0f), scratch(n);
    alignas(16) static float grad32_store[1 << 15];
    alignas(16) static unsigned short grad16_store[1 << 15];
    expect(n + 8 <= (1 << 15), "size fits the gradient stores");
    std::vector<unsigned short> working(n);
    for (gacc_u64 i = 0; i < n; ++i) {
        master[i] = 0.001f * (float)(i % 97) - 0.05f;
        grad32_store[i + 4] = 0.25f - 0.001f * (float)(i % 13);
        grad16_store[i + 4] = gacc_f32_to_f16(0.5f - 0.01f * (float)(i % 7));
    }
    float* g32 = grad32_store + 4;
    unsigned short* g16 = grad16_store + 4;
    gacc_state state = fresh_state();
    gacc_state* st = &state;
    std::vector<double> partials(kGrid, 0.0);
    const gacc_u64 run_ends[3] = {n / 3, n / 2, n};

    // Accumulate: every dtype, vector and scalar paths, with and without Kahan.
    for (int vec = 1; vec >= 0; --vec) {
        launch("gacc_accumulate_f32", kGrid, kBlock, acc.data(), (float*)nullptr, (const float*)g32, n, 2.0f, vec, st,
               0u, 1.0, (double*)nullptr);
        launch("gacc_accumulate_f16", kGrid, kBlock, acc.data(), comp.data(), (const unsigned short*)g16, n, 1.0f, vec,
               st, 0u, 1.0, (double*)nullptr);
        launch("gacc_accumulate_bf16", kGrid, kBlock, acc.data(), (float*)nullptr, (const unsigned short*)g16, n, 0.5f,
               vec, st, 0u, 1.0, (double*)nullptr);
    }
    launch("gacc_accumulate_f32", kGrid, kBlock, acc.data(), comp.data(), (const float*)(grad32_store + 1), n, 1.0f, 0,
           st, 0u, 2.0, (double*)nullptr);
    expect(state.window_total == 8.0, "window total summed on the device");

    // Drop mode: flagged (NaNs in several blocks' ranges: many threads set the flag
    // at once) and clean micro-batches.
    g32[1] = NAN;
    g32[n / 2] = INFINITY;
    g32[n - 1] = NAN;
    g16[n - 2] = 0x7C00;
    launch("gacc_check_finite", kGrid, kBlock, (const void*)g32, 0, n, st, 1u);
    expect(state.bad_seq == 1u, "check_finite flags a NaN");
    launch("gacc_accumulate_f32", kGrid, kBlock, acc.data(), comp.data(), (const float*)g32, n, 1.0f, 1, st, 1u, 1.0,
           (double*)nullptr);
    expect(state.window_dropped == 1u, "a flagged micro-batch is dropped");
    launch("gacc_check_finite", kGrid, kBlock, (const void*)g16, 1, n, st, 2u);
    launch("gacc_check_finite", kGrid, kBlock, (const void*)g16, 2, n, st, 3u);
    g32[1] = 0.0f;
    g32[n / 2] = 0.0f;
    g32[n - 1] = 0.0f;
    launch("gacc_check_finite", kGrid, kBlock, (const void*)g32, 0, n, st, 4u);
    launch("gacc_accumulate_f32", kGrid, kBlock, acc.data(), comp.data(), (const float*)g32, n, 1.0f, 1, st, 4u, 1.0,
           (double*)nullptr);

    // A step of each optimizer, applied; then a skipped one.
    launch("gacc_store_lr", 1, 32, st, 0.02f);
    expect(state.lr == 0.02f, "store_lr");
    const gacc_hyper adamw = hyper(1), sgd = hyper(0);
    for (int pass = 0; pass < 3; ++pass) {
        launch("gacc_norm_partials", kGrid, kBlock, (const float*)acc.data(), (const float*)comp.data(), n,
               (const gacc_state*)st, partials.data());
        launch("gacc_finalize", 1, 32, st, (const double*)partials.data(), kGrid, pass == 0 ? adamw : sgd);
        expect(state.applied == 1u, "the step applies");
        const int wdt = pass == 0 ? GACC_WORKING_F16 : pass == 1 ? GACC_WORKING_BF16 : GACC_WORKING_NONE;
        unsigned short* w = wdt == GACC_WORKING_NONE ? nullptr : working.data();
        const unsigned sr = pass == 1 ? 1u : 0u;
        if (pass == 0) {
            launch("gacc_update_adamw", kGrid, kBlock, acc.data(), comp.data(), master.data(), m.data(), v.data(), w,
                   wdt, n, (const gacc_state*)st, run_ends, 3u, 1u, sr, (gacc_u64)7);
        } else if (pass == 1) {
            launch("gacc_update_sgd_momentum", kGrid, kBlock, acc.data(), (float*)nullptr, master.data(), m.data(), w,
                   wdt, n, (const gacc_state*)st, run_ends, 3u, 0u, sr, (gacc_u64)7);
        } else {
            launch("gacc_update_sgd", kGrid, kBlock, acc.data(), comp.data(), master.data(), w, wdt, n,
                   (const gacc_state*)st, run_ends, 3u, 1u, sr, (gacc_u64)7);
        }
        launch("gacc_accumulate_f32", kGrid, kBlock, acc.data(), comp.data(), (const float*)g32, n, 1.0f, 1, st, 0u,
               1.0, (double*)nullptr);
    }
    expect(state.step == 3u, "three applied steps");
    acc[n - 1] = NAN;
    launch("gacc_norm_partials", kGrid, kBlock, (const float*)acc.data(), (const float*)nullptr, n,
           (const gacc_state*)st, partials.data());
    launch("gacc_finalize", 1, 32, st, (const double*)partials.data(), kGrid, hyper(1));
    expect(state.applied == 0u, "a non-finite window is skipped");
    launch("gacc_update_adamw", kGrid, kBlock, acc.data(), comp.data(), master.data(), m.data(), v.data(),
           working.data(), GACC_WORKING_F16, n, (const gacc_state*)st, run_ends, 3u, 1u, 0u, (gacc_u64)7);
    expect(acc[n - 1] == 0.0f, "a skipped step zeroes the accumulator");

    // Lazy zeroing (issue 14): a stale accumulator is written, not read, by the flat
    // accumulation producing the norm partials (every dtype, vector and scalar
    // paths, drop mode's flagged and clean micro-batches); the last block clears the
    // flag; finalize marks it stale again; materialize writes zeros.
    state.eager_zero = 0u;
    state.acc_stale = 1u;
    for (int vec = 1; vec >= 0; --vec) {
        const float* gf = vec ? g32 : grad32_store + 1;
        launch("gacc_accumulate_f32", kGrid, kBlock, acc.data(), (float*)nullptr, gf, n, 2.0f, vec, st, 0u, 1.0,
               partials.data());
        expect(state.acc_stale == 0u && state.blocks_done == 0u, "the last block clears the flag and the counter");
        launch("gacc_accumulate_f16", kGrid, kBlock, acc.data(), (float*)nullptr, (const unsigned short*)g16, n, 1.0f,
               vec, st, 0u, 1.0, partials.data());
        launch("gacc_accumulate_bf16", kGrid, kBlock, acc.data(), (float*)nullptr, (const unsigned short*)g16, n,
               0.5f, vec, st, 0u, 1.0, partials.data());
        state.acc_stale = 1u;
    }
    g32[n / 2] = NAN;
    launch("gacc_check_finite", kGrid, kBlock, (const void*)g32, 0, n, st, 1u);
    launch("gacc_accumulate_f32", kGrid, kBlock, acc.data(), (float*)nullptr, (const float*)g32, n, 1.0f, 1, st, 1u,
           1.0, partials.data());
    expect(state.acc_stale == 1u && state.bad_seq == 0u, "a dropped micro-batch keeps acc stale, clears the flag");
    g32[n / 2] = 0.0f;
    launch("gacc_check_finite", kGrid, kBlock, (const void*)g32, 0, n, st, 2u);
    launch("gacc_accumulate_f32", kGrid, kBlock, acc.data(), (float*)nullptr, (const float*)g32, n, 1.0f, 1, st, 2u,
           1.0, partials.data());
    expect(state.acc_stale == 0u, "a kept one clears it");
    launch("gacc_finalize", 1, 32, st, (const double*)partials.data(), kGrid, adamw);
    expect(state.acc_stale == 1u, "finalize marks acc stale");
    launch("gacc_update_adamw", kGrid, kBlock, acc.data(), (float*)nullptr, master.data(), m.data(), v.data(),
           working.data(), GACC_WORKING_BF16, n, (const gacc_state*)st, run_ends, 3u, 1u, 0u, (gacc_u64)7);
    launch("gacc_norm_partials", kGrid, kBlock, (const float*)acc.data(), (const float*)nullptr, n,
           (const gacc_state*)st, partials.data());
    launch("gacc_materialize_zero", kGrid, kBlock, acc.data(), n, st, 1u);
    expect(state.acc_stale == 0u && state.eager_zero == 1u && acc[0] == 0.0f && acc[n - 1] == 0.0f,
           "materialize writes zeros, clears the flag, switches to eager");
    launch("gacc_materialize_zero", kGrid, kBlock, acc.data(), n, st, 0u);

    // The per-tensor kernel over a stale accumulator: one listed tensor and a gap
    // entry (gradient 0) over the rest, fewer chunks than blocks (an idle block still
    // takes its ticket); then the same table when not stale, and its check pass.
    const gacc_u64 half = n / 2;
    gacc_tensor_entry table[2] = {
        {(gacc_u64)(uintptr_t)g32, 0, half, 0, 0u, 1u},
        {0, half, n - half, 1, 0u, 0u},
    };
    state.eager_zero = 0u;
    state.acc_stale = 1u;
    acc[n - 1] = NAN;
    for (int pass = 0; pass < 2; ++pass) {
        launch("gacc_check_finite_tensors", kGrid, kBlock, (const gacc_tensor_entry*)table, 2u, (gacc_u64)2, st, 5u);
        launch("gacc_accumulate_tensors", kGrid, kBlock, acc.data(), (float*)nullptr, (const gacc_tensor_entry*)table,
               2u, (gacc_u64)2, 1.0f, st, 5u, 1.0);
        expect(state.acc_stale == 0u && state.blocks_done == 0u && acc[n - 1] == 0.0f,
               "the per-tensor kernel zeroes the gap of a stale accumulator and clears the flag");
    }

    // Working copy rewrites and the data-parallel helpers.
    for (unsigned sr = 0; sr < 2; ++sr) {
        launch("gacc_write_working", kGrid, kBlock, (const float*)master.data(), working.data(), GACC_WORKING_F16, n,
               (const gacc_state*)st, sr, (gacc_u64)11);
        launch("gacc_write_working", kGrid, kBlock, (const float*)master.data(), working.data(), GACC_WORKING_BF16, n,
               (const gacc_state*)st, sr, (gacc_u64)11);
    }
    double totals[4] = {0, 0, 0, 0};
    launch("gacc_dp_pack_totals", 1, 32, totals, (const gacc_state*)st, 3.0);
    launch("gacc_dp_unpack_totals", 1, 32, (const double*)totals, st, 1u);
    launch("gacc_dp_unpack_totals", 1, 32, (const double*)totals, st, 0u);
    launch("gacc_dp_fold", kGrid, kBlock, scratch.data(), (const float*)acc.data(), (const float*)comp.data(), n);
}

}  // namespace

int main() {
    // Sizes: more than one sweep of a 3-block grid with a scalar tail of 3; a size
    // that leaves threads idle with a tail of 1; a size below one block.
    const gacc_u64 sizes[] = {2 * kGrid * kBlock * 4 + 7, 1001, 5};
    for (gacc_u64 n : sizes) run_size(n);
    std::printf("shim_tsan: %u launches of every kernel ran (sizes %llu, %llu, %llu)\n", launches,
                (unsigned long long)sizes[0], (unsigned long long)sizes[1], (unsigned long long)sizes[2]);
    return 0;
}
