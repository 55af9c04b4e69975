// accumulate.cu: acc += mul * grad, converting the gradient to fp32 on the fly.
//
// Math: acc[i] = acc[i] + mul * (float)grad[i], two roundings (no FMA: the library
// compiles with --fmad=false), exactly as the CPU backend's `*a += mul * g`.
// mul is the micro-batch weight (GACC_GRADS_MEAN) or 1 (GACC_GRADS_SUM).
// Compensated (comp != NULL, compensated_accumulation): Kahan's update, as
// backend/cpu/accumulate.rs kahan_add:  y = mul*g - c; t = acc + y; c = (t - acc) - y;
// acc = t.
//
// Lazy zeroing (issue 14): after a step or gacc_zero the accumulator is "stale",
// logically zero whatever it holds (state->acc_stale, set on the device by
// gacc_finalize and by gacc_zero's memset). The first kept micro-batch of the window
// then writes acc = 0.0f + mul * g without reading acc, and clears the flag. Not with
// compensated accumulation or once the host took gacc_accumulator_ptr
// (state->eager_zero: the steps zero acc as before, acc_stale is never set).
//
// Norm partials (partials != NULL, flat path, never with comp): the kernel also writes
// gacc_norm_partials' per-block sums of squares of the new acc * factor (factor from
// the window total after this micro-batch and the current loss scale), with the norm
// pass's grid and thread -> element mapping, so the step can skip that pass.
//
// Memory traffic per parameter: read grad (4 B f32, 2 B f16/bf16), read and write
// acc (8 B): 12 B (f32) or 10 B (f16/bf16); the first micro-batch of a window only
// writes acc: 8 B (f32) or 6 B (f16/bf16); +8 B (comp read and written) when
// compensated. One pass, one launch per micro-batch; + 8 B per block of partials.
//
// The window's total weight is summed on the device (in f64, in call order: the same
// sum as the CPU backend's), so a step reads it from device memory and a replayed CUDA
// graph needs no host value. Every thread reads window_total, acc_stale and bad_seq
// first; the last block to finish (last-block-done: __threadfence + atomicAdd on
// state->blocks_done) then adds `weight` to window_total, clears acc_stale and
// bad_seq, so no block reads a field another one already changed.
// Drop mode (seq != 0, drop_nonfinite_microbatches): gacc_check_finite ran just
// before on the same stream and stored `seq` into state->bad_seq if the gradient
// holds inf/NaN. Every thread reads that flag; the last block books the micro-batch
// (window_total += weight, or window_dropped += 1) and resets bad_seq, and a flagged
// gradient is not added. `seq` is the micro-batch's number within its window (1, 2,
// ...: the same in every replay of a captured window); since the flag is reset by the
// very micro-batch that read it, a captured single micro-batch replayed K times
// flags only its own bad replays. No host sync: the host never learns which happened
// until it asks.
//
// Vectorised path (vec = 1): 16-byte float4 loads/stores of acc, and 16-byte (f32)
// or 8-byte (f16/bf16, four halves) loads of grad, chosen by the launcher only when
// the gradient pointer is aligned for them (acc always is: it is a device allocation).
// The last n % 4 elements (or all of them when vec = 0) take the scalar path; with
// partials, acc is always taken as float4 groups and an unaligned gradient is read
// element by element within each group.
// Grid-stride loops: any grid size is correct; the launcher sizes it from the
// multiprocessor count (the norm grid when producing partials).
#include "common.cuh"

// One Kahan step (backend/cpu/accumulate.rs kahan_add).
GACC_INLINE void gacc_kahan_add(float& acc, float& comp, float v) {
    const float y = v - comp;
    const float t = acc + y;
    comp = (t - acc) - y;
    acc = t;
}

// Books the micro-batch on the device (thread 0 only) and says whether it was
// dropped (drop mode, seq != 0: flagged by gacc_check_finite). The per-tensor kernel's
// booking, at the start (it never reads window_total or acc_stale).
GACC_INLINE bool gacc_book(gacc_state* state, unsigned seq, double weight) {
    const bool bad = seq != 0u && state->bad_seq == seq;
    if (gacc_thread_index() == 0) {
        if (bad) {
            state->window_dropped = state->window_dropped + 1u;
        } else {
            state->window_total = state->window_total + weight;
        }
    }
    return bad;
}

// acc[lo, hi) += mul * grad[lo, hi) (lo a multiple of 4), each of `stride` threads
// taking every stride-th element (or float4) from `tid`: the whole grid for one flat
// gradient (gacc_accumulate_*), one block for a chunk of a tensor (multi-tensor).
// stale: acc is logically zero, so it is written (acc = 0.0f + mul * g), not read;
// the `0.0f +` keeps the result bit-identical to adding into a zeroed acc (-0 -> +0).
template <typename Load>
GACC_INLINE void gacc_accumulate_range(float* __restrict__ acc, float* __restrict__ comp, const void* grad,
                                       gacc_u64 lo, gacc_u64 hi, float mul, unsigned vec, Load load,
                                       gacc_u64 tid, gacc_u64 stride, bool stale) {
    gacc_u64 scalar_start = lo;
    if (vec) {
        float4* acc4 = reinterpret_cast<float4*>(acc);
        float4* comp4 = reinterpret_cast<float4*>(comp);
        const gacc_u64 hi4 = hi / 4;
        for (gacc_u64 i = lo / 4 + tid; i < hi4; i += stride) {
            float g[4];
            load.vec4(grad, i, g);
            float4 a = stale ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : acc4[i];
            if (comp) {
                float4 c = comp4[i];
                gacc_kahan_add(a.x, c.x, mul * g[0]);
                gacc_kahan_add(a.y, c.y, mul * g[1]);
                gacc_kahan_add(a.z, c.z, mul * g[2]);
                gacc_kahan_add(a.w, c.w, mul * g[3]);
                comp4[i] = c;
            } else {
                a.x = a.x + mul * g[0];
                a.y = a.y + mul * g[1];
                a.z = a.z + mul * g[2];
                a.w = a.w + mul * g[3];
            }
            acc4[i] = a;
        }
        scalar_start = hi4 * 4 > lo ? hi4 * 4 : lo;
    }
    for (gacc_u64 i = scalar_start + tid; i < hi; i += stride) {
        if (comp) {
            float a = acc[i], c = comp[i];
            gacc_kahan_add(a, c, mul * load.one(grad, i));
            acc[i] = a;
            comp[i] = c;
        } else {
            acc[i] = (stale ? 0.0f : acc[i]) + mul * load.one(grad, i);
        }
    }
}

// The flat accumulation that also produces the norm pass's partials (partials !=
// NULL, never with comp): exactly gacc_norm_partials' thread -> element mapping (each
// thread takes float4 groups tid, tid + stride, ... of acc, then the scalar tail
// n4 * 4 + tid, ...), grid (the launcher uses the norm grid) and per-element term, on
// the new acc and with the factor of the window total after this micro-batch, so
// partials[blockIdx.x] is bit for bit what gacc_norm_partials would write before the
// step. A dropped micro-batch (bad) leaves acc alone but still writes the partials of
// the unchanged acc (zeros when stale), so they always describe the current window.
template <typename Load>
GACC_INLINE void gacc_accumulate_norm(float* __restrict__ acc, const void* grad, gacc_u64 n, float mul, int vec,
                                      Load load, bool stale, bool bad, float factor, double* __restrict__ partials) {
    __shared__ double shared_sum[GACC_BLOCK];
    const gacc_u64 tid = gacc_thread_index();
    const gacc_u64 stride = gacc_thread_count();
    const gacc_u64 n4 = n / 4;
    float4* acc4 = reinterpret_cast<float4*>(acc);
    double sum = 0.0;
    for (gacc_u64 i = tid; i < n4; i += stride) {
        float4 a = stale ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : acc4[i];
        if (!bad) {
            float g[4];
            if (vec) {
                load.vec4(grad, i, g);
            } else {
                for (int k = 0; k < 4; ++k) g[k] = load.one(grad, 4 * i + k);
            }
            a.x = a.x + mul * g[0];
            a.y = a.y + mul * g[1];
            a.z = a.z + mul * g[2];
            a.w = a.w + mul * g[3];
            acc4[i] = a;
        }
        sum = gacc_add_square(sum, a.x, factor);
        sum = gacc_add_square(sum, a.y, factor);
        sum = gacc_add_square(sum, a.z, factor);
        sum = gacc_add_square(sum, a.w, factor);
    }
    for (gacc_u64 i = n4 * 4 + tid; i < n; i += stride) {
        float a = stale ? 0.0f : acc[i];
        if (!bad) {
            a = a + mul * load.one(grad, i);
            acc[i] = a;
        }
        sum = gacc_add_square(sum, a, factor);
    }
    const double block_sum = gacc_block_sum(sum, shared_sum);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = block_sum;
    }
}

// Every thread reads the flags and the window total first; the last block to finish
// (gacc_block_is_last) books the micro-batch, clears acc_stale and drop mode's flag
// word, so no block can read a value another block already changed.
template <typename Load>
GACC_INLINE void gacc_accumulate_body(float* __restrict__ acc, float* __restrict__ comp, gacc_u64 n, float mul,
                                      int vec, Load load, const void* grad, gacc_state* state, unsigned seq,
                                      double weight, double* __restrict__ partials) {
    const bool bad = seq != 0u && state->bad_seq == seq;
    const bool stale = state->acc_stale != 0u;
    if (partials) {
        // The window total after this micro-batch (the booking below adds the same).
        const double total = bad ? state->window_total : state->window_total + weight;
        const float factor = gacc_unscale_factor(total, state->loss_scale);
        gacc_accumulate_norm(acc, grad, n, mul, vec, load, stale, bad, factor, partials);
    } else if (!bad) {
        gacc_accumulate_range(acc, comp, grad, 0, n, mul, vec, load, gacc_thread_index(), gacc_thread_count(), stale);
    }
    if (gacc_block_is_last(&state->blocks_done)) {
        if (bad) {
            state->window_dropped = state->window_dropped + 1u;
        } else {
            state->window_total = state->window_total + weight;
            state->acc_stale = 0u;
        }
        // Every block has compared the flag: a later check may set it again (so a
        // captured micro-batch replayed K times flags only its own replay).
        state->bad_seq = 0u;
    }
}

struct gacc_load_f32 {
    GACC_INLINE float one(const void* p, gacc_u64 i) const { return static_cast<const float*>(p)[i]; }
    GACC_INLINE void vec4(const void* p, gacc_u64 i, float* g) const {
        float4 v = static_cast<const float4*>(p)[i];
        g[0] = v.x; g[1] = v.y; g[2] = v.z; g[3] = v.w;
    }
};

struct gacc_load_f16 {
    GACC_INLINE float one(const void* p, gacc_u64 i) const {
        return gacc_f16_to_f32(static_cast<const unsigned short*>(p)[i]);
    }
    GACC_INLINE void vec4(const void* p, gacc_u64 i, float* g) const {
        uint2 v = static_cast<const uint2*>(p)[i];
        g[0] = gacc_f16_to_f32((unsigned short)(v.x & 0xFFFFu));
        g[1] = gacc_f16_to_f32((unsigned short)(v.x >> 16));
        g[2] = gacc_f16_to_f32((unsigned short)(v.y & 0xFFFFu));
        g[3] = gacc_f16_to_f32((unsigned short)(v.y >> 16));
    }
};

struct gacc_load_bf16 {
    GACC_INLINE float one(const void* p, gacc_u64 i) const {
        return gacc_bf16_to_f32(static_cast<const unsigned short*>(p)[i]);
    }
    GACC_INLINE void vec4(const void* p, gacc_u64 i, float* g) const {
        uint2 v = static_cast<const uint2*>(p)[i];
        g[0] = gacc_bf16_to_f32((unsigned short)(v.x & 0xFFFFu));
        g[1] = gacc_bf16_to_f32((unsigned short)(v.x >> 16));
        g[2] = gacc_bf16_to_f32((unsigned short)(v.y & 0xFFFFu));
        g[3] = gacc_bf16_to_f32((unsigned short)(v.y >> 16));
    }
};

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_accumulate_f32(float* __restrict__ acc, float* __restrict__ comp, const float* __restrict__ grad, gacc_u64 n,
                    float mul, int vec, gacc_state* state, unsigned seq, double weight, double* partials) {
    gacc_accumulate_body(acc, comp, n, mul, vec, gacc_load_f32(), grad, state, seq, weight, partials);
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_accumulate_f16(float* __restrict__ acc, float* __restrict__ comp, const unsigned short* __restrict__ grad,
                    gacc_u64 n, float mul, int vec, gacc_state* state, unsigned seq, double weight,
                    double* partials) {
    gacc_accumulate_body(acc, comp, n, mul, vec, gacc_load_f16(), grad, state, seq, weight, partials);
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_accumulate_bf16(float* __restrict__ acc, float* __restrict__ comp, const unsigned short* __restrict__ grad,
                     gacc_u64 n, float mul, int vec, gacc_state* state, unsigned seq, double weight,
                     double* partials) {
    gacc_accumulate_body(acc, comp, n, mul, vec, gacc_load_bf16(), grad, state, seq, weight, partials);
}

// Drop mode's check pass: stores `seq` into state->bad_seq when any element of the
// gradient is inf or NaN (all-ones exponent, tested on the bits). Every thread that
// finds one stores the same value, with atomicExch (concurrent plain stores would be
// a data race under the CUDA memory model, even of one value); no reduction. The flag
// is compared with `seq` (the micro-batch's number in its window) and reset when the
// window ends. Traffic: the gradient read once.
extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_check_finite(const void* __restrict__ grad, int dtype, gacc_u64 n, gacc_state* state, unsigned seq) {
    const gacc_u64 tid = gacc_thread_index();
    const gacc_u64 stride = gacc_thread_count();
    bool bad = false;
    if (dtype == 0) {
        const unsigned* g = static_cast<const unsigned*>(grad);
        for (gacc_u64 i = tid; i < n; i += stride) bad |= (g[i] & 0x7F800000u) == 0x7F800000u;
    } else {
        const unsigned short* g = static_cast<const unsigned short*>(grad);
        const unsigned short mask = dtype == 1 ? (unsigned short)0x7C00u : (unsigned short)0x7F80u;
        for (gacc_u64 i = tid; i < n; i += stride) bad |= (g[i] & mask) == mask;
    }
    if (bad) {
        atomicExch(&state->bad_seq, seq);
    }
}

// Materialises a stale accumulator (issue 14's lazy zeroing): if state->acc_stale,
// acc = 0 (every element, grid-stride), then the flag is cleared by the last block;
// nothing is written when acc is not stale. make_eager = 1 also sets
// state->eager_zero (gacc_accumulator_ptr: from then on steps zero acc eagerly, as
// in-place hosts need). Launched before what needs real zeros in memory: an in-place
// booking and a device all-reduce (the per-tensor kernel zeroes its gaps itself).
// Traffic: 4 B written per parameter when stale, nothing otherwise.
extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_materialize_zero(float* __restrict__ acc, gacc_u64 n, gacc_state* state, unsigned make_eager) {
    if (state->acc_stale != 0u) {
        const gacc_u64 tid = gacc_thread_index();
        const gacc_u64 stride = gacc_thread_count();
        const gacc_u64 n4 = n / 4;
        float4* acc4 = reinterpret_cast<float4*>(acc);
        for (gacc_u64 i = tid; i < n4; i += stride) acc4[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (gacc_u64 i = n4 * 4 + tid; i < n; i += stride) acc[i] = 0.0f;
    }
    if (gacc_block_is_last(&state->blocks_done)) {
        state->acc_stale = 0u;
        if (make_eager) state->eager_zero = 1u;
    }
}

// ---- Multi-tensor accumulation (gacc_microbatch_tensors) --------------------------
//
// One launch for a micro-batch given tensor by tensor, in the manner of PyTorch's
// multi_tensor_apply: a device-side table holds one entry per listed tensor (its
// gradient pointer, dtype, numel, offset in the flat acc/comp), and every tensor is
// cut into chunks of GACC_TENSOR_CHUNK elements, numbered across tensors
// (first_chunk). Blocks take chunks in a grid-stride loop and find the chunk's tensor
// by binary search on first_chunk; the block's threads then stride over the chunk.
// Per element the arithmetic is exactly gacc_accumulate_*'s (acc + mul * g, or the
// Kahan update), so the result equals gacc_microbatch on the concatenation bit for
// bit. Each tensor takes the vector path when its entry says so (gradient aligned for
// the vector loads and acc + offset 16-byte aligned, i.e. offset % 4 == 0).
// Traffic: the same bytes per element as gacc_accumulate_*; unlisted tensors (NULL
// entries) are not read or written. The table (40 B per tensor) is read once per
// chunk and block (log2(n) entries of the binary search).

// Elements per chunk: a multiple of 4 (chunks start on float4 boundaries).
#define GACC_TENSOR_CHUNK 16384

// Mirrored by TensorEntry in src/backend/cuda/tensors.rs (a test checks the size).
struct gacc_tensor_entry {
    gacc_u64 grad;         // device address of the gradient (a staged copy for host memory);
                           // 0: a gap, elements no listed tensor covers (zeroed when stale)
    gacc_u64 offset;       // element offset of the tensor in acc and comp
    gacc_u64 numel;
    gacc_u64 first_chunk;  // number of the tensor's first chunk among all listed tensors
    unsigned dtype;        // 0 f32, 1 f16, 2 bf16
    unsigned vec;          // 1: take the vector path
};

// The entry whose chunks include `chunk`: the last one with first_chunk <= chunk.
GACC_INLINE unsigned gacc_find_tensor(const gacc_tensor_entry* table, unsigned n, gacc_u64 chunk) {
    unsigned lo = 0, hi = n;
    while (hi - lo > 1) {
        const unsigned mid = lo + (hi - lo) / 2;
        if (table[mid].first_chunk <= chunk) lo = mid; else hi = mid;
    }
    return lo;
}

// Calls f(entry, lo, hi) for every chunk this block takes.
template <typename F>
GACC_INLINE void gacc_for_each_chunk(const gacc_tensor_entry* table, unsigned n_tensors, gacc_u64 n_chunks, F f) {
    for (gacc_u64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const gacc_tensor_entry& t = table[gacc_find_tensor(table, n_tensors, c)];
        const gacc_u64 lo = (c - t.first_chunk) * GACC_TENSOR_CHUNK;
        const gacc_u64 end = lo + GACC_TENSOR_CHUNK;
        f(t, lo, end < t.numel ? end : t.numel);
    }
}

// acc += mul * grad for every tensor of the table. Thread 0 of block 0 books the
// micro-batch at the start (window_total += weight, which no other thread of this
// kernel reads; drop mode, seq != 0: gacc_check_finite_tensors ran before, and a
// flagged micro-batch is counted as dropped and not added). With n_chunks 0 (every
// tensor NULL, or an in-place micro-batch: gacc_microbatch_inplace) the launch only
// books.
// Lazy zeroing: when the table lists at least one tensor, the backend appends "gap"
// entries (grad 0) covering every element no listed tensor covers, so the chunks
// cover the whole accumulator. A stale accumulator (state->acc_stale) then gets
// acc = 0.0f + mul * g in listed tensors (not read) and 0 in the gaps, and the last
// block clears the flag; otherwise the gaps are skipped. Gap chunks cost a block a
// table search and nothing else when acc is not stale.
extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_accumulate_tensors(float* __restrict__ acc, float* __restrict__ comp, const gacc_tensor_entry* table,
                        unsigned n_tensors, gacc_u64 n_chunks, float mul, gacc_state* state, unsigned seq,
                        double weight) {
    const bool bad = gacc_book(state, seq, weight);
    const bool stale = state->acc_stale != 0u;
    if (!bad) {
        gacc_for_each_chunk(table, n_tensors, n_chunks, [&](const gacc_tensor_entry& t, gacc_u64 lo, gacc_u64 hi) {
            float* a = acc + t.offset;
            if (t.grad == 0ull) {
                if (stale) {
                    for (gacc_u64 i = lo + threadIdx.x; i < hi; i += blockDim.x) a[i] = 0.0f;
                }
                return;
            }
            float* c = comp ? comp + t.offset : nullptr;
            const void* g = reinterpret_cast<const void*>(t.grad);
            if (t.dtype == 0) {
                gacc_accumulate_range(a, c, g, lo, hi, mul, t.vec, gacc_load_f32(), threadIdx.x, blockDim.x, stale);
            } else if (t.dtype == 1) {
                gacc_accumulate_range(a, c, g, lo, hi, mul, t.vec, gacc_load_f16(), threadIdx.x, blockDim.x, stale);
            } else {
                gacc_accumulate_range(a, c, g, lo, hi, mul, t.vec, gacc_load_bf16(), threadIdx.x, blockDim.x, stale);
            }
        });
    }
    // The chunks covered every element (listed tensors and gaps) once every block is
    // done; an empty table (a booking) leaves a stale accumulator stale.
    if (gacc_block_is_last(&state->blocks_done) && !bad && n_chunks > 0) {
        state->acc_stale = 0u;
    }
}

// Drop mode's check pass over every tensor of the table (as gacc_check_finite).
extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_check_finite_tensors(const gacc_tensor_entry* table, unsigned n_tensors, gacc_u64 n_chunks, gacc_state* state,
                          unsigned seq) {
    bool bad = false;
    gacc_for_each_chunk(table, n_tensors, n_chunks, [&](const gacc_tensor_entry& t, gacc_u64 lo, gacc_u64 hi) {
        if (t.grad == 0ull) {
            return;  // a gap (lazy zeroing): no gradient there
        }
        if (t.dtype == 0) {
            const unsigned* g = reinterpret_cast<const unsigned*>(t.grad);
            for (gacc_u64 i = lo + threadIdx.x; i < hi; i += blockDim.x) bad |= (g[i] & 0x7F800000u) == 0x7F800000u;
        } else {
            const unsigned short* g = reinterpret_cast<const unsigned short*>(t.grad);
            const unsigned short mask = t.dtype == 1 ? (unsigned short)0x7C00u : (unsigned short)0x7F80u;
            for (gacc_u64 i = lo + threadIdx.x; i < hi; i += blockDim.x) bad |= (g[i] & mask) == mask;
        }
    });
    if (bad) {
        atomicExch(&state->bad_seq, seq);  // many threads may store it (as gacc_check_finite)
    }
}
