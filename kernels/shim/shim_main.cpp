// shim_main.cpp: the host-shim library. Compiles every kernel in kernels/*.cu for
// the host (through cuda_shim.h) and exports one C entry point that runs a kernel by
// name with a cuLaunchKernel-style argument array. The Rust ShimRuntime
// (src/backend/cuda/shim.rs) dlopens this library.
//
// Build: g++ -std=c++20 -O1 -pthread -fPIC -shared -ffp-contract=off
//            -I kernels kernels/shim/shim_main.cpp -o libgacc_shim.so
#include "../accumulate.cu"
#include "../norm.cu"
#include "../scaler.cu"
#include "../update.cu"
#include "../convert.cu"
#include "../dp.cu"

#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace gacc_shim {
thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
thread_local std::barrier<>* block_barrier;
}  // namespace gacc_shim

namespace {

using Invoker = void (*)(void** args);

template <typename... A, std::size_t... I>
void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <auto K, typename... A>
void invoke(void** args, void (*)(A...)) {
    call_with(K, args, std::index_sequence_for<A...>{});
}

// Up to 32 parameters: size in bytes and whether it is a pointer (what a driver
// reads from a cubin's parameter table; the fake driver copies and checks them).
struct ParamInfo {
    unsigned size[32];
    bool pointer[32];
};

struct Entry {
    const char* name;
    Invoker invoker;
    unsigned n_args;
    ParamInfo params;
};

template <typename... A>
constexpr unsigned arity(void (*)(A...)) {
    return sizeof...(A);
}

template <typename... A>
constexpr ParamInfo param_info(void (*)(A...)) {
    static_assert(sizeof...(A) <= 32);
    ParamInfo p{};
    unsigned i = 0;
    ((p.size[i] = sizeof(A), p.pointer[i] = std::is_pointer_v<A>, ++i), ...);
    return p;
}

#define GACC_SHIM_KERNEL(k) \
    Entry { #k, [](void** args) { invoke<k>(args, k); }, arity(k), param_info(k) }

const Entry kKernels[] = {
    GACC_SHIM_KERNEL(gacc_accumulate_f32), GACC_SHIM_KERNEL(gacc_accumulate_f16),
    GACC_SHIM_KERNEL(gacc_accumulate_bf16), GACC_SHIM_KERNEL(gacc_norm_partials),
    GACC_SHIM_KERNEL(gacc_finalize),       GACC_SHIM_KERNEL(gacc_update_adamw),
    GACC_SHIM_KERNEL(gacc_update_sgd_momentum), GACC_SHIM_KERNEL(gacc_update_sgd),
    GACC_SHIM_KERNEL(gacc_write_working),  GACC_SHIM_KERNEL(gacc_check_finite),
    GACC_SHIM_KERNEL(gacc_dp_pack_totals), GACC_SHIM_KERNEL(gacc_dp_unpack_totals),
    GACC_SHIM_KERNEL(gacc_dp_fold),        GACC_SHIM_KERNEL(gacc_store_lr),
    GACC_SHIM_KERNEL(gacc_accumulate_tensors), GACC_SHIM_KERNEL(gacc_check_finite_tensors),
    GACC_SHIM_KERNEL(gacc_materialize_zero),
};

std::mutex launch_lock;

void set_error(char* err, size_t len, const std::string& msg) {
    if (err && len) std::snprintf(err, len, "%s", msg.c_str());
}

}  // namespace

extern "C" {

/// Runs kernel `name` on a grid of `grid` blocks of `block` threads. `args` holds
/// one pointer per kernel parameter (cuLaunchKernel's kernelParams); `n_args` is
/// checked against the kernel's arity. Returns 0, or -1 with a message in `err`.
int gacc_shim_launch(const char* name, unsigned grid, unsigned block, unsigned shared_bytes, void** args,
                     unsigned n_args, char* err, size_t err_len) {
    const Entry* entry = nullptr;
    for (const Entry& e : kKernels) {
        if (std::strcmp(e.name, name) == 0) entry = &e;
    }
    if (!entry) {
        set_error(err, err_len, std::string("no kernel named ") + name);
        return -1;
    }
    if (n_args != entry->n_args) {
        set_error(err, err_len, std::string(name) + ": " + std::to_string(n_args) + " arguments given, kernel takes " +
                                    std::to_string(entry->n_args));
        return -1;
    }
    if (grid == 0 || block == 0 || block > 1024 || shared_bytes != 0) {
        set_error(err, err_len, std::string(name) + ": invalid launch configuration");
        return -1;
    }
    std::lock_guard<std::mutex> lock(launch_lock);
    for (unsigned b = 0; b < grid; ++b) {
        std::barrier<> barrier(block);
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned t = 0; t < block; ++t) {
            threads.emplace_back([=, &barrier] {
                gacc_shim::thread_idx = dim3{t, 0, 0};
                gacc_shim::block_idx = dim3{b, 0, 0};
                gacc_shim::block_dim = dim3{block, 1, 1};
                gacc_shim::grid_dim = dim3{grid, 1, 1};
                gacc_shim::block_barrier = &barrier;
                entry->invoker(args);
            });
        }
        for (auto& th : threads) th.join();
    }
    return 0;
}

/// Number of parameters of kernel `name`, or -1 when there is no such kernel.
int gacc_shim_arity(const char* name) {
    for (const Entry& e : kKernels) {
        if (std::strcmp(e.name, name) == 0) return (int)e.n_args;
    }
    return -1;
}

/// Size in bytes of parameter `i` of kernel `name` and whether it is a pointer
/// (`*pointer`); 0 when there is no such kernel or parameter.
unsigned gacc_shim_param(const char* name, unsigned i, int* pointer) {
    for (const Entry& e : kKernels) {
        if (std::strcmp(e.name, name) == 0 && i < e.n_args) {
            *pointer = e.params.pointer[i] ? 1 : 0;
            return e.params.size[i];
        }
    }
    return 0;
}

/// sizeof of the structs shared with Rust ("gacc_state", "gacc_hyper", "gacc_tensor_entry"); 0 if unknown.
size_t gacc_shim_sizeof(const char* name) {
    if (std::strcmp(name, "gacc_state") == 0) return sizeof(gacc_state);
    if (std::strcmp(name, "gacc_hyper") == 0) return sizeof(gacc_hyper);
    if (std::strcmp(name, "gacc_tensor_entry") == 0) return sizeof(gacc_tensor_entry);
    return 0;
}
}
