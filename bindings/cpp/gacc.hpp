// gacc.hpp: header-only C++ wrapper over gacc.h.
//
//   gacc::Engine       move-only RAII owner of a gacc_engine (destructor: gacc_destroy)
//   gacc::Error        std::runtime_error carrying the gacc_status and gacc_last_error()
//   gacc::Config       fluent builder over gacc_config, defaults from gacc_config_init
//   gacc::Tensor       a parameter tensor (name, numel or initial values, no_weight_decay)
//   gacc::half, gacc::bfloat16   16-bit storage types with round-to-nearest-even
//                      conversion from float, so fp16/bf16 gradients are typed
//   gacc::span<T>      std::span<T> under C++20, a minimal stand-in under C++17
//
// Requires C++17; std::span is used when the library provides it (C++20). Every
// failing call throws gacc::Error; nothing else is thrown except std::bad_alloc.
// Thread safety is that of the C API: an Engine may be used from any thread, one
// call at a time is serialised by the library.
#ifndef GACC_HPP
#define GACC_HPP

#include "gacc.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__has_include)
#if __has_include(<version>)
#include <version>
#endif
#endif
#if defined(__cpp_lib_span) && __cpp_lib_span >= 202002L
#include <span>
#define GACC_HPP_STD_SPAN 1
#else
#define GACC_HPP_STD_SPAN 0
#endif

namespace gacc {

// ---------------------------------------------------------------------------------
// span
#if GACC_HPP_STD_SPAN
template <class T>
using span = std::span<T>;
#else
/// C++17 stand-in for std::span<T> (dynamic extent): pointer and size, built from
/// a pointer and a count, a C array, or any contiguous container with data()/size().
template <class T>
class span {
public:
    using element_type = T;
    using value_type = std::remove_cv_t<T>;
    using size_type = std::size_t;
    using pointer = T*;
    using iterator = T*;

    constexpr span() noexcept = default;
    constexpr span(T* ptr, std::size_t count) noexcept : ptr_(ptr), size_(count) {}
    template <std::size_t N>
    constexpr span(T (&arr)[N]) noexcept : ptr_(arr), size_(N) {}
    template <class C,
              class = std::enable_if_t<
                  std::is_convertible_v<decltype(std::declval<C&>().data()), T*> &&
                  !std::is_same_v<std::decay_t<C>, span>>,
              class = decltype(std::declval<C&>().size())>
    constexpr span(C& c) noexcept : ptr_(c.data()), size_(c.size()) {}
    template <class U, class = std::enable_if_t<std::is_convertible_v<U (*)[], T (*)[]>>>
    constexpr span(const span<U>& other) noexcept : ptr_(other.data()), size_(other.size()) {}

    constexpr T* data() const noexcept { return ptr_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr std::size_t size_bytes() const noexcept { return size_ * sizeof(T); }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T& operator[](std::size_t i) const noexcept { return ptr_[i]; }
    constexpr T* begin() const noexcept { return ptr_; }
    constexpr T* end() const noexcept { return ptr_ + size_; }

private:
    T* ptr_ = nullptr;
    std::size_t size_ = 0;
};
#endif

// ---------------------------------------------------------------------------------
// Constants as typed C++ values.

enum class Status : int {
    ok = GACC_OK,
    null_pointer = GACC_ERR_NULL_POINTER,
    invalid_argument = GACC_ERR_INVALID_ARGUMENT,
    invalid_handle = GACC_ERR_INVALID_HANDLE,
    invalid_state = GACC_ERR_INVALID_STATE,
    out_of_memory = GACC_ERR_OUT_OF_MEMORY,
    device_unavailable = GACC_ERR_DEVICE_UNAVAILABLE,
    device = GACC_ERR_DEVICE,
    io = GACC_ERR_IO,
    corrupt = GACC_ERR_CORRUPT,
    communication = GACC_ERR_COMMUNICATION,
    internal = GACC_ERR_INTERNAL,
};

enum class Dtype : std::uint32_t { f32 = GACC_DTYPE_F32, f16 = GACC_DTYPE_F16, bf16 = GACC_DTYPE_BF16 };
enum class Optimizer : std::uint32_t { sgd = GACC_OPTIMIZER_SGD, adamw = GACC_OPTIMIZER_ADAMW };
enum class Precision : std::uint32_t {
    fp32 = GACC_PRECISION_FP32,
    fp16 = GACC_PRECISION_FP16,
    bf16 = GACC_PRECISION_BF16,
};
enum class Reduction : std::uint32_t { mean = GACC_GRADS_MEAN, sum = GACC_GRADS_SUM };
enum class LossScalePolicy : std::uint32_t {
    gradscaler = GACC_LOSS_SCALE_GRADSCALER,
    deepspeed = GACC_LOSS_SCALE_DEEPSPEED,
};

constexpr std::int32_t device_auto = GACC_DEVICE_AUTO;
constexpr std::int32_t device_cpu = GACC_DEVICE_CPU;

/// Static name of a status, e.g. "GACC_ERR_INVALID_ARGUMENT".
inline const char* status_name(Status s) noexcept {
    return gacc_status_name(static_cast<gacc_status>(s));
}

/// The library's version string and the header's; they should be equal.
inline const char* version() noexcept { return gacc_version(); }
inline bool header_matches_library() noexcept {
    return gacc_version_number() == GACC_VERSION_NUMBER && gacc_abi_version() == GACC_ABI_VERSION;
}

// ---------------------------------------------------------------------------------
// Errors

/// Thrown by every wrapper whose C call did not return GACC_OK. what() is
/// "GACC_ERR_...: <gacc_last_error()>"; message() is gacc_last_error() alone.
class Error : public std::runtime_error {
public:
    Error(Status status, std::string message)
        : std::runtime_error(std::string(status_name(status)) + ": " + message),
          status_(status),
          message_(std::move(message)) {}

    Status status() const noexcept { return status_; }
    /// The raw C status.
    gacc_status code() const noexcept { return static_cast<gacc_status>(status_); }
    const std::string& message() const noexcept { return message_; }

private:
    Status status_;
    std::string message_;
};

namespace detail {
/// Throws gacc::Error for a non-OK status. gacc_last_error() is per thread and read
/// right after the failing call on the same thread, before any other gacc call.
inline void check(gacc_status s) {
    if (s != GACC_OK) {
        const char* msg = gacc_last_error();
        throw Error(static_cast<Status>(s), msg ? std::string(msg) : std::string());
    }
}
}  // namespace detail

// ---------------------------------------------------------------------------------
// 16-bit floating-point storage types

/// IEEE binary16 bits. Construct from a float (round to nearest even, overflow to
/// infinity, NaN stays NaN) or from raw bits with half::from_bits.
struct half {
    std::uint16_t bits = 0;

    constexpr half() noexcept = default;
    explicit half(float f) noexcept : bits(from_float(f)) {}
    static constexpr half from_bits(std::uint16_t b) noexcept {
        half h;
        h.bits = b;
        return h;
    }
    explicit operator float() const noexcept { return to_float(bits); }
    float to_float() const noexcept { return to_float(bits); }

    static std::uint16_t from_float(float f) noexcept {
        std::uint32_t x;
        std::memcpy(&x, &f, 4);
        const std::uint32_t sign = (x >> 16) & 0x8000u;
        const std::uint32_t absx = x & 0x7fffffffu;
        if (absx >= 0x7f800000u) {  // inf or NaN
            const std::uint32_t mant = absx & 0x7fffffu;
            return static_cast<std::uint16_t>(sign | 0x7c00u | (mant ? (0x200u | (mant >> 13)) : 0u));
        }
        if (absx >= 0x477ff000u) {  // rounds to >= 65520: overflow to infinity
            return static_cast<std::uint16_t>(sign | 0x7c00u);
        }
        if (absx < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or 0
            if (absx < 0x33000000u) {  // < 2^-25: rounds to zero (2^-25 ties to even 0)
                return static_cast<std::uint16_t>(sign);
            }
            const std::uint32_t exp = absx >> 23;        // 102..112
            const std::uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
            const std::uint32_t shift = 126u - exp;      // 14..24
            std::uint32_t h = mant >> shift;
            const std::uint32_t rem = mant & ((1u << shift) - 1u);
            const std::uint32_t halfway = 1u << (shift - 1u);
            if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
            return static_cast<std::uint16_t>(sign | h);
        }
        // Normal: rebias the exponent (127 -> 15) and round the mantissa 23 -> 10 bits.
        std::uint32_t h = ((absx >> 13) - (112u << 10));
        const std::uint32_t rem = absx & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into exponent
        return static_cast<std::uint16_t>(sign | h);
    }

    static float to_float(std::uint16_t h) noexcept {
        const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
        const std::uint32_t exp = (h >> 10) & 0x1fu;
        std::uint32_t mant = h & 0x3ffu;
        std::uint32_t x;
        if (exp == 0) {
            if (mant == 0) {
                x = sign;
            } else {  // subnormal: normalise
                std::uint32_t e = 113;
                while (!(mant & 0x400u)) {
                    mant <<= 1;
                    --e;
                }
                x = sign | (e << 23) | ((mant & 0x3ffu) << 13);
            }
        } else if (exp == 0x1f) {
            x = sign | 0x7f800000u | (mant << 13);
        } else {
            x = sign | ((exp + 112u) << 23) | (mant << 13);
        }
        float f;
        std::memcpy(&f, &x, 4);
        return f;
    }
};

/// bfloat16 bits (the top half of a float). Construct from a float (round to nearest
/// even; NaN stays NaN) or from raw bits with bfloat16::from_bits.
struct bfloat16 {
    std::uint16_t bits = 0;

    constexpr bfloat16() noexcept = default;
    explicit bfloat16(float f) noexcept : bits(from_float(f)) {}
    static constexpr bfloat16 from_bits(std::uint16_t b) noexcept {
        bfloat16 h;
        h.bits = b;
        return h;
    }
    explicit operator float() const noexcept { return to_float(bits); }
    float to_float() const noexcept { return to_float(bits); }

    static std::uint16_t from_float(float f) noexcept {
        std::uint32_t x;
        std::memcpy(&x, &f, 4);
        if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet and NaN
            return static_cast<std::uint16_t>((x >> 16) | 0x40u);
        }
        x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
        return static_cast<std::uint16_t>(x >> 16);
    }
    static float to_float(std::uint16_t b) noexcept {
        const std::uint32_t x = static_cast<std::uint32_t>(b) << 16;
        float f;
        std::memcpy(&f, &x, 4);
        return f;
    }
};

static_assert(sizeof(half) == 2 && std::is_trivially_copyable_v<half>, "half must be 2 bytes");
static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16>,
              "bfloat16 must be 2 bytes");

/// Converts a float buffer into fp16 / bf16 (round to nearest even).
inline std::vector<half> to_half(span<const float> src) {
    std::vector<half> out(src.size());
    for (std::size_t i = 0; i < src.size(); ++i) out[i] = half(src[i]);
    return out;
}
inline std::vector<bfloat16> to_bfloat16(span<const float> src) {
    std::vector<bfloat16> out(src.size());
    for (std::size_t i = 0; i < src.size(); ++i) out[i] = bfloat16(src[i]);
    return out;
}

/// The gacc dtype constant for an element type: float, half, bfloat16.
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
    static constexpr Dtype value = Dtype::f32;
};
template <>
struct dtype_of<half> {
    static constexpr Dtype value = Dtype::f16;
};
template <>
struct dtype_of<bfloat16> {
    static constexpr Dtype value = Dtype::bf16;
};

/// "No gradient for this tensor in this micro-batch" (a NULL gacc_grad entry).
struct NoGrad {};
inline constexpr NoGrad no_grad{};

/// One tensor's gradient for Engine::microbatch({...}, weight): a span or vector of
/// float, half or bfloat16 (each tensor in its own type), no_grad / nullptr for none,
/// or raw (pointer, dtype, numel) for device memory. Holds only the gacc_grad entry
/// (a view: the memory must outlive the call).
class Grad {
public:
    Grad(NoGrad) noexcept {}
    Grad(std::nullptr_t) noexcept {}
    template <class T, class = decltype(dtype_of<std::remove_const_t<T>>::value)>
    Grad(span<T> g) noexcept
        : g_{g.data(), static_cast<std::uint32_t>(dtype_of<std::remove_const_t<T>>::value), g.size()} {}
    template <class T, class A, class = decltype(dtype_of<T>::value)>
    Grad(const std::vector<T, A>& v) noexcept
        : g_{v.data(), static_cast<std::uint32_t>(dtype_of<T>::value), v.size()} {}
    /// Raw: host or (CUDA engine) device memory holding `numel` elements of dtype.
    Grad(const void* data, Dtype dtype, std::size_t numel) noexcept
        : g_{data, static_cast<std::uint32_t>(dtype), numel} {}
    const gacc_grad& raw() const noexcept { return g_; }

private:
    gacc_grad g_{nullptr, GACC_DTYPE_F32, 0};
};
static_assert(sizeof(Grad) == sizeof(gacc_grad) && std::is_standard_layout_v<Grad>,
              "Grad must be layout-compatible with gacc_grad");

// ---------------------------------------------------------------------------------
// Configuration and tensors

/// gacc_config with the library's defaults (gacc_config_init) and chainable setters.
/// raw() gives the C struct for anything not covered here.
class Config {
public:
    Config() noexcept { gacc_config_init(&cfg_); }

    Config& device(std::int32_t d) noexcept { cfg_.device = d; return *this; }
    Config& cpu() noexcept { return device(GACC_DEVICE_CPU); }
    Config& optimizer(Optimizer o) noexcept { cfg_.optimizer = static_cast<std::uint32_t>(o); return *this; }
    /// SGD with the given learning rate, momentum and Nesterov flag.
    Config& sgd(float lr, float momentum = 0.0f, bool nesterov = false) noexcept {
        cfg_.optimizer = GACC_OPTIMIZER_SGD;
        cfg_.lr = lr;
        cfg_.momentum = momentum;
        cfg_.nesterov = nesterov ? 1u : 0u;
        return *this;
    }
    /// AdamW with the given learning rate and betas.
    Config& adamw(float lr, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f) noexcept {
        cfg_.optimizer = GACC_OPTIMIZER_ADAMW;
        cfg_.lr = lr;
        cfg_.beta1 = beta1;
        cfg_.beta2 = beta2;
        cfg_.eps = eps;
        return *this;
    }
    Config& lr(float v) noexcept { cfg_.lr = v; return *this; }
    Config& momentum(float v) noexcept { cfg_.momentum = v; return *this; }
    Config& nesterov(bool v) noexcept { cfg_.nesterov = v ? 1u : 0u; return *this; }
    Config& betas(float b1, float b2) noexcept { cfg_.beta1 = b1; cfg_.beta2 = b2; return *this; }
    Config& eps(float v) noexcept { cfg_.eps = v; return *this; }
    Config& weight_decay(float v) noexcept { cfg_.weight_decay = v; return *this; }
    Config& precision(Precision p) noexcept { cfg_.precision = static_cast<std::uint32_t>(p); return *this; }
    Config& max_grad_norm(float v) noexcept { cfg_.max_grad_norm = v; return *this; }
    Config& loss_scaling(float init_scale, float growth_factor = 2.0f, float backoff_factor = 0.5f,
                         std::uint32_t growth_interval = 2000) noexcept {
        cfg_.init_scale = init_scale;
        cfg_.growth_factor = growth_factor;
        cfg_.backoff_factor = backoff_factor;
        cfg_.growth_interval = growth_interval;
        return *this;
    }
    Config& reduction(Reduction r) noexcept { cfg_.grad_reduction = static_cast<std::uint32_t>(r); return *this; }

    // Numerics options (README "Numerics options"); the defaults keep today's behaviour.
    /// Loss-scale hysteresis (DeepSpeed): overflows tolerated before backing off
    /// (1: GradScaler); `consecutive`: every clean step restores the budget.
    Config& hysteresis(std::uint32_t n, bool consecutive = false) noexcept {
        cfg_.hysteresis = n;
        cfg_.consecutive_hysteresis = consecutive ? 1u : 0u;
        return *this;
    }
    /// Which rule moves the FP16 loss scale: GradScaler (default, torch.amp.GradScaler)
    /// or DeepSpeed (DeepSpeed's DynamicLossScaler; needs backoff = 1 / growth, no cap).
    Config& loss_scale_policy(LossScalePolicy p) noexcept {
        cfg_.loss_scale_policy = static_cast<std::uint32_t>(p);
        return *this;
    }
    /// Floor (on backoff) and cap (on growth) of the loss scale; 0: none.
    Config& loss_scale_bounds(float min_scale, float max_scale = 0.0f) noexcept {
        cfg_.min_loss_scale = min_scale;
        cfg_.max_loss_scale = max_scale;
        return *this;
    }
    /// Leave a micro-batch holding inf/NaN out of the window (decided on the device).
    Config& drop_nonfinite_microbatches(bool v = true) noexcept {
        cfg_.drop_nonfinite_microbatches = v ? 1u : 0u;
        return *this;
    }
    /// Kahan-compensated accumulation (+4 B per parameter).
    Config& compensated_accumulation(bool v = true) noexcept {
        cfg_.compensated_accumulation = v ? 1u : 0u;
        return *this;
    }
    /// Stochastic rounding of the FP16/BF16 working copy, reproducible from `seed`.
    Config& stochastic_rounding(bool v = true, std::uint64_t seed = 0) noexcept {
        cfg_.stochastic_rounding = v ? 1u : 0u;
        cfg_.seed = seed;
        return *this;
    }

    const gacc_config& raw() const noexcept { return cfg_; }
    gacc_config& raw() noexcept { return cfg_; }

private:
    gacc_config cfg_{};
};

/// One parameter tensor: a name (optional), its size, optional initial values
/// (copied by the library at creation) and whether weight decay skips it.
struct Tensor {
    std::string name;
    std::size_t numel = 0;
    std::vector<float> init;  // empty: zeros
    bool no_weight_decay = false;

    Tensor() = default;
    Tensor(std::string n, std::size_t count, bool no_decay = false)
        : name(std::move(n)), numel(count), no_weight_decay(no_decay) {}
    Tensor(std::string n, std::vector<float> values, bool no_decay = false)
        : name(std::move(n)), numel(values.size()), init(std::move(values)), no_weight_decay(no_decay) {}
};

/// What a step did (gacc_step_info).
struct StepInfo {
    bool applied = false;
    float grad_norm = 0.0f;
    float clip_coef = 1.0f;
    float loss_scale = 1.0f;
    std::uint64_t step = 0;
    std::uint32_t microbatches = 0;
    double total_weight = 0.0;  // without the dropped micro-batches
    std::uint32_t dropped_microbatches = 0;

    static StepInfo from_c(const gacc_step_info& i) noexcept {
        StepInfo s;
        s.applied = i.applied != 0;
        s.grad_norm = i.grad_norm;
        s.clip_coef = i.clip_coef;
        s.loss_scale = i.loss_scale;
        s.step = i.step;
        s.microbatches = i.microbatches;
        s.total_weight = i.total_weight;
        s.dropped_microbatches = i.dropped_microbatches;
        return s;
    }
};

// ---------------------------------------------------------------------------------
// Engine

/// Owns one gacc_engine. Move-only; the destructor releases it (gacc_destroy).
/// A moved-from Engine is empty: valid() is false and every call throws
/// gacc::Error(Status::invalid_handle).
/// A new NCCL unique id for one data-parallel group (gacc_nccl_unique_id): make it
/// on one rank and send its 128 bytes to every rank's Engine::set_nccl. Throws
/// Error(device_unavailable) when NCCL cannot be loaded.
inline gacc_nccl_id nccl_unique_id() {
    gacc_nccl_id id{};
    detail::check(gacc_nccl_unique_id(&id));
    return id;
}

class Engine {
public:
    Engine(const Config& cfg, const std::vector<Tensor>& tensors) {
        for (std::size_t i = 0; i < tensors.size(); ++i) {
            const Tensor& t = tensors[i];
            if (!t.init.empty() && t.init.size() != t.numel) {
                throw Error(Status::invalid_argument,
                            "gacc::Engine: tensors[" + std::to_string(i) + "] has " +
                                std::to_string(t.init.size()) + " initial values for numel " +
                                std::to_string(t.numel));
            }
        }
        std::vector<gacc_tensor_desc> descs(tensors.size());
        for (std::size_t i = 0; i < tensors.size(); ++i) {
            descs[i].name = tensors[i].name.empty() ? nullptr : tensors[i].name.c_str();
            descs[i].numel = tensors[i].numel;
            descs[i].init = tensors[i].init.empty() ? nullptr : tensors[i].init.data();
            descs[i].no_weight_decay = tensors[i].no_weight_decay ? 1u : 0u;
        }
        detail::check(gacc_create(&cfg.raw(), descs.empty() ? nullptr : descs.data(), descs.size(), &e_));
    }
    /// One tensor of `numel` zeros.
    Engine(const Config& cfg, std::size_t numel) : Engine(cfg, std::vector<Tensor>{Tensor("params", numel)}) {}
    /// Takes ownership of a handle made by gacc_create.
    explicit Engine(gacc_engine* adopted) noexcept : e_(adopted) {}

    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;
    Engine(Engine&& other) noexcept : e_(std::exchange(other.e_, nullptr)) {}
    Engine& operator=(Engine&& other) noexcept {
        if (this != &other) {
            reset();
            e_ = std::exchange(other.e_, nullptr);
        }
        return *this;
    }
    ~Engine() { reset(); }

    /// Destroys the engine now (idempotent).
    void reset() noexcept {
        if (e_) gacc_destroy(std::exchange(e_, nullptr));
    }
    /// Gives up ownership: the caller must gacc_destroy the handle.
    gacc_engine* release() noexcept { return std::exchange(e_, nullptr); }
    gacc_engine* get() const noexcept { return e_; }
    bool valid() const noexcept { return e_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }

    std::size_t numel() const {
        std::size_t n = 0;
        detail::check(gacc_numel(handle(), &n));
        return n;
    }
    std::size_t n_tensors() const {
        std::size_t n = 0;
        detail::check(gacc_n_tensors(handle(), &n));
        return n;
    }
    /// (offset, numel) of one tensor inside the concatenated buffers.
    std::pair<std::size_t, std::size_t> tensor_span(std::size_t tensor) const {
        std::size_t off = 0, n = 0;
        detail::check(gacc_tensor_span(handle(), tensor, &off, &n));
        return {off, n};
    }
    std::int32_t device() const {
        std::int32_t d = 0;
        detail::check(gacc_device(handle(), &d));
        return d;
    }

    /// Folds one micro-batch gradient (all tensors concatenated) into the window.
    /// `weight`: samples or tokens behind it.
    void microbatch(span<const float> grad, double weight) { microbatch_typed(grad, weight); }
    void microbatch(span<const half> grad, double weight) { microbatch_typed(grad, weight); }
    void microbatch(span<const bfloat16> grad, double weight) { microbatch_typed(grad, weight); }
    void microbatch(const std::vector<float>& grad, double weight) {
        microbatch(span<const float>(grad.data(), grad.size()), weight);
    }
    void microbatch(const std::vector<half>& grad, double weight) {
        microbatch(span<const half>(grad.data(), grad.size()), weight);
    }
    void microbatch(const std::vector<bfloat16>& grad, double weight) {
        microbatch(span<const bfloat16>(grad.data(), grad.size()), weight);
    }
    /// Raw form: host or (CUDA engine) device memory holding `numel` elements of dtype.
    void microbatch(const void* grad, Dtype dtype, std::size_t numel, double weight) {
        detail::check(gacc_microbatch(handle(), grad, static_cast<std::uint32_t>(dtype), numel, weight));
    }

    /// One micro-batch given tensor by tensor (gacc_microbatch_tensors): one Grad per
    /// tensor in creation order, each in its own type, no_grad for none, e.g.
    /// engine.microbatch({w1_grad, b1_grad, gacc::no_grad}, 16). Atomic: a rejected
    /// call throws (the message names the tensor index) and changes nothing.
    void microbatch(std::initializer_list<Grad> grads, double weight) {
        microbatch(span<const Grad>(grads.begin(), grads.size()), weight);
    }
    void microbatch(span<const Grad> grads, double weight) {
        // Grad is a standard-layout wrapper whose only member is the gacc_grad.
        const gacc_grad* raw = grads.empty() ? nullptr : &grads.data()->raw();
        detail::check(gacc_microbatch_tensors(handle(), raw, grads.size(), weight));
    }
    void microbatch(const std::vector<Grad>& grads, double weight) {
        microbatch(span<const Grad>(grads.data(), grads.size()), weight);
    }

    /// One tensor's fp32 accumulator (gacc_accumulator_ptr): zero when a window opens,
    /// holding what the window's micro-batches added; stable until the engine goes.
    /// Device memory on a CUDA engine (write it on the stream of set_stream()).
    span<float> accumulator(std::size_t tensor) {
        const auto sp = tensor_span(tensor);
        float* p = nullptr;
        detail::check(gacc_accumulator_ptr(handle(), tensor, &p));
        return span<float>(p, sp.second);
    }
    /// Books one micro-batch the host added into accumulator() itself (no data
    /// moves). Refused with compensated accumulation or drop mode.
    void microbatch_inplace(double weight) { detail::check(gacc_microbatch_inplace(handle(), weight)); }

    /// Closes the window and waits for the result. Returns std::nullopt when the
    /// update was skipped (non-finite gradient; the loss scale backed off).
    std::optional<StepInfo> step() {
        StepInfo info = step_info();
        if (!info.applied) return std::nullopt;
        return info;
    }
    /// Closes the window; always returns what happened (applied or skipped).
    StepInfo step_info() {
        gacc_step_info info{};
        detail::check(gacc_step(handle(), &info));
        return StepInfo::from_c(info);
    }
    /// Closes the window without waiting for the device (no report).
    void step_async() { detail::check(gacc_step(handle(), nullptr)); }
    /// Drops the open window without stepping.
    void zero() { detail::check(gacc_zero(handle())); }

    /// The fp32 master weights, all tensors concatenated.
    std::vector<float> params_read() const {
        std::vector<float> out(numel());
        detail::check(gacc_params_read(handle(), out.data(), out.size()));
        return out;
    }
    void params_read(span<float> out) const {
        detail::check(gacc_params_read(handle(), out.data(), out.size()));
    }
    void params_write(span<const float> in) {
        detail::check(gacc_params_write(handle(), in.data(), in.size()));
    }
    void params_write(const std::vector<float>& in) {
        params_write(span<const float>(in.data(), in.size()));
    }
    /// The engine's own buffer for one tensor (device memory on a CUDA engine).
    void* params_ptr(std::size_t tensor, Dtype dtype = Dtype::f32) {
        void* p = nullptr;
        detail::check(gacc_params_ptr(handle(), tensor, static_cast<std::uint32_t>(dtype), &p));
        return p;
    }
    /// Host view of one tensor's fp32 master (CPU engines only: on a CUDA engine the
    /// memory is on the device, use params_ptr()).
    span<float> params_view(std::size_t tensor) {
        const auto sp = tensor_span(tensor);
        return span<float>(static_cast<float*>(params_ptr(tensor, Dtype::f32)), sp.second);
    }

    /// The loss scale S: multiply the loss by it before backward.
    float loss_scale() const {
        float s = 0.0f;
        detail::check(gacc_loss_scale(handle(), &s));
        return s;
    }
    const float* loss_scale_ptr() {
        const float* p = nullptr;
        detail::check(gacc_loss_scale_ptr(handle(), &p));
        return p;
    }
    void set_lr(float lr) { detail::check(gacc_set_lr(handle(), lr)); }
    float lr() const {
        float v = 0.0f;
        detail::check(gacc_get_lr(handle(), &v));
        return v;
    }
    /// CUDA engines: order gacc's work on the caller's CUstream (nullptr: own stream).
    void set_stream(void* stream) { detail::check(gacc_set_stream(handle(), stream)); }

    /// Saves the whole state (weights, optimizer, scaler, open window) to a
    /// safetensors file, atomically.
    void save(const std::string& path) { detail::check(gacc_save(handle(), path.c_str())); }
    /// Loads a checkpoint into this engine; on error it is left unchanged.
    void load(const std::string& path) { detail::check(gacc_load(handle(), path.c_str())); }
    /// A new engine from a checkpoint alone (saved configuration, on `device`).
    static Engine from_checkpoint(const std::string& path, std::int32_t device = GACC_DEVICE_AUTO) {
        gacc_engine* e = nullptr;
        detail::check(gacc_create_from_checkpoint(path.c_str(), device, &e));
        return Engine(e);
    }
    /// Data parallelism through the caller's in-place sum all-reduce.
    void set_allreduce(gacc_allreduce_fn fn, void* user_data, std::int32_t rank, std::int32_t world_size) {
        detail::check(gacc_set_allreduce(handle(), fn, user_data, rank, world_size));
    }
    /// Data parallelism over MPI (`comm` points to an MPI_Comm; nullptr: MPI_COMM_WORLD).
    void set_mpi(const void* comm = nullptr) { detail::check(gacc_set_mpi(handle(), comm)); }
    /// Data parallelism over NCCL (CUDA engines): `id` from nccl_unique_id() on one
    /// rank, handed to every rank by the caller. The all-reduces run on the engine's
    /// stream with no host synchronisation.
    void set_nccl(const gacc_nccl_id& id, std::int32_t rank, std::int32_t world_size) {
        detail::check(gacc_set_nccl(handle(), &id, rank, world_size));
    }

private:
    gacc_engine* handle() const {
        if (!e_) throw Error(Status::invalid_handle, "gacc::Engine is empty (moved from or reset)");
        return e_;
    }
    template <class T>
    void microbatch_typed(span<const T> grad, double weight) {
        detail::check(gacc_microbatch(handle(), grad.data(), static_cast<std::uint32_t>(dtype_of<T>::value),
                                      grad.size(), weight));
    }

    gacc_engine* e_ = nullptr;
};

}  // namespace gacc

#endif  // GACC_HPP
