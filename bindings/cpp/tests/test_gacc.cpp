// Tests of the C++ wrapper (bindings/cpp/gacc.hpp) against the real library.
// Compiled twice by CMake: as C++20 (std::span) and as C++17 (the span fallback).
// A tiny harness: each TEST runs, a failed CHECK prints file:line and the test fails.
#include "gacc.hpp"

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

int g_failures = 0;
int g_checks = 0;
std::vector<std::pair<const char*, std::function<void()>>>& registry() {
    static std::vector<std::pair<const char*, std::function<void()>>> r;
    return r;
}
struct Register {
    Register(const char* name, std::function<void()> f) { registry().emplace_back(name, std::move(f)); }
};
#define TEST(name)                                   \
    static void name();                              \
    static Register register_##name(#name, name);    \
    static void name()
#define CHECK(cond)                                                                 \
    do {                                                                            \
        ++g_checks;                                                                 \
        if (!(cond)) {                                                              \
            ++g_failures;                                                           \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                           \
    } while (0)
#define CHECK_THROWS_STATUS(expr, st, fragment)                                      \
    do {                                                                             \
        ++g_checks;                                                                  \
        bool thrown_ = false;                                                        \
        try {                                                                        \
            (void)(expr);                                                            \
        } catch (const gacc::Error& e_) {                                            \
            thrown_ = true;                                                          \
            if (e_.status() != (st) || e_.message().find(fragment) == std::string::npos || \
                std::string(e_.what()).find(gacc::status_name(st)) != 0) {           \
                ++g_failures;                                                        \
                std::fprintf(stderr, "%s:%d: %s threw %s / \"%s\"\n", __FILE__, __LINE__, #expr, \
                             gacc::status_name(e_.status()), e_.what());             \
            }                                                                        \
        }                                                                            \
        if (!thrown_) {                                                              \
            ++g_failures;                                                            \
            std::fprintf(stderr, "%s:%d: %s did not throw\n", __FILE__, __LINE__, #expr); \
        }                                                                            \
    } while (0)

bool close(float a, float b, float rtol = 1e-5f, float atol = 1e-6f) {
    return std::fabs(a - b) <= atol + rtol * std::fabs(b);
}
bool all_close(const std::vector<float>& a, const std::vector<float>& b, float rtol = 1e-5f,
               float atol = 1e-6f) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (!close(a[i], b[i], rtol, atol)) {
            std::fprintf(stderr, "  element %zu: %.9g vs %.9g\n", i, a[i], b[i]);
            return false;
        }
    }
    return true;
}

// A small linear regression: y = w . x + b, loss = mean over samples of (pred - y)^2 / 2.
// Parameters: w (D), b (1), concatenated.
constexpr std::size_t D = 6;
struct Data {
    std::vector<std::array<float, D>> x;
    std::vector<float> y;
};
Data make_data(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    Data d;
    for (std::size_t i = 0; i < n; ++i) {
        std::array<float, D> xi{};
        float y = 0.5f;
        for (std::size_t j = 0; j < D; ++j) {
            xi[j] = nd(rng);
            y += (0.3f * static_cast<float>(j) - 0.7f) * xi[j];
        }
        d.x.push_back(xi);
        d.y.push_back(y + 0.01f * nd(rng));
    }
    return d;
}
// Gradient of the mean loss over samples [lo, hi).
std::vector<float> grad_mean(const std::vector<float>& p, const Data& d, std::size_t lo, std::size_t hi) {
    std::vector<float> g(D + 1, 0.0f);
    for (std::size_t i = lo; i < hi; ++i) {
        float pred = p[D];
        for (std::size_t j = 0; j < D; ++j) pred += p[j] * d.x[i][j];
        const float r = pred - d.y[i];
        for (std::size_t j = 0; j < D; ++j) g[j] += r * d.x[i][j];
        g[D] += r;
    }
    const float inv = 1.0f / static_cast<float>(hi - lo);
    for (float& v : g) v *= inv;
    return g;
}

std::vector<gacc::Tensor> model_tensors() {
    std::vector<float> w(D);
    for (std::size_t j = 0; j < D; ++j) w[j] = 0.1f * static_cast<float>(j) - 0.2f;
    return {gacc::Tensor("w", w), gacc::Tensor("b", std::vector<float>{0.05f}, /*no_decay=*/true)};
}

// Trains `steps` windows; each window covers the same N samples split at `cuts`.
std::vector<float> train(const gacc::Config& cfg, const Data& d, const std::vector<std::size_t>& cuts,
                         int steps) {
    gacc::Engine eng(cfg, model_tensors());
    std::vector<float> p = eng.params_read();
    for (int s = 0; s < steps; ++s) {
        for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
            const auto g = grad_mean(p, d, cuts[k], cuts[k + 1]);
            eng.microbatch(gacc::span<const float>(g.data(), g.size()),
                           static_cast<double>(cuts[k + 1] - cuts[k]));
        }
        const auto info = eng.step();
        CHECK(info.has_value());
        CHECK(info && info->microbatches == cuts.size() - 1);
        CHECK(info && info->total_weight == static_cast<double>(cuts.back()));
        eng.params_read(gacc::span<float>(p.data(), p.size()));
    }
    return p;
}

TEST(header_matches_library) {
    CHECK(gacc::header_matches_library());
    CHECK(std::string(gacc::version()) == GACC_VERSION);
}

TEST(config_defaults_come_from_the_library) {
    gacc::Config c;
    CHECK(c.raw().device == GACC_DEVICE_AUTO);
    CHECK(c.raw().optimizer == GACC_OPTIMIZER_ADAMW);
    CHECK(c.raw().lr == 1e-3f);
    CHECK(c.raw().init_scale == 65536.0f);
    c.cpu().sgd(0.1f, 0.9f, true).weight_decay(0.0f);
    CHECK(c.raw().device == GACC_DEVICE_CPU && c.raw().optimizer == GACC_OPTIMIZER_SGD);
    CHECK(c.raw().momentum == 0.9f && c.raw().nesterov == 1u);
    CHECK(c.raw().struct_size == sizeof(gacc_config));
    CHECK(c.raw().loss_scale_policy == GACC_LOSS_SCALE_GRADSCALER);
}

TEST(loss_scale_policy_deepspeed_waits_for_a_stable_interval) {
    // Window 1: GradScaler doubles on every clean step; DeepSpeed's DynamicLossScaler
    // not on the first one (its stable interval is 0 there).
    const std::vector<float> good = {0.5f, -0.25f, 1.0f};
    for (auto policy : {gacc::LossScalePolicy::gradscaler, gacc::LossScalePolicy::deepspeed}) {
        gacc::Engine eng(gacc::Config()
                             .cpu()
                             .precision(gacc::Precision::fp16)
                             .loss_scaling(1024.0f, 2.0f, 0.5f, 1)
                             .loss_scale_policy(policy),
                         3);
        eng.microbatch(good, 1.0);
        eng.step();
        eng.microbatch(good, 1.0);
        eng.step();
        const bool ds = policy == gacc::LossScalePolicy::deepspeed;
        CHECK(eng.loss_scale() == (ds ? 2048.0f : 4096.0f));
    }
    CHECK_THROWS_STATUS(gacc::Engine(gacc::Config()
                                         .cpu()
                                         .precision(gacc::Precision::fp16)
                                         .loss_scaling(1024.0f, 2.0f, 0.25f)
                                         .loss_scale_policy(gacc::LossScalePolicy::deepspeed),
                                     3),
                        gacc::Status::invalid_argument, "backoff_factor");
}

TEST(checkpoint_round_trip_and_corruption) {
    const auto cfg = gacc::Config().cpu().sgd(0.1f, 0.9f);
    gacc::Engine e(cfg, 5);
    const std::vector<float> p = {1, 2, 3, 4, 5};
    e.params_write(p);
    const std::string path = "gacc_cpp_test_ckpt.safetensors";
    e.save(path);
    gacc::Engine r = gacc::Engine::from_checkpoint(path, GACC_DEVICE_CPU);
    CHECK(r.params_read() == p);
    e.params_write(std::vector<float>(5, 0.0f));
    e.load(path);
    CHECK(e.params_read() == p);
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fputs("not a checkpoint", f);
    std::fclose(f);
    CHECK_THROWS_STATUS(e.load(path), gacc::Status::corrupt, "gacc_load");
    CHECK(e.params_read() == p);
    std::remove(path.c_str());
}

TEST(microbatches_equal_one_batch_sgd) {
    const Data d = make_data(48, 1);
    const auto cfg = gacc::Config().cpu().sgd(0.05f, 0.9f).weight_decay(0.01f);
    const auto one = train(cfg, d, {0, 48}, 5);
    const auto even = train(cfg, d, {0, 12, 24, 36, 48}, 5);
    const auto uneven = train(cfg, d, {0, 5, 16, 40, 48}, 5);
    CHECK(all_close(even, one));
    CHECK(all_close(uneven, one));
}

TEST(microbatches_equal_one_batch_adamw_and_reference) {
    const Data d = make_data(40, 2);
    const auto cfg = gacc::Config().cpu().adamw(0.01f).weight_decay(0.0f);
    const auto one = train(cfg, d, {0, 40}, 4);
    const auto split = train(cfg, d, {0, 7, 8, 30, 40}, 4);
    CHECK(all_close(split, one));

    // One plain SGD step by hand: p - lr * g.
    const auto sgd = gacc::Config().cpu().sgd(0.1f).weight_decay(0.0f);
    gacc::Engine eng(sgd, model_tensors());
    const auto p0 = eng.params_read();
    const auto g = grad_mean(p0, d, 0, 40);
    eng.microbatch(grad_mean(p0, d, 0, 25), 25.0);
    eng.microbatch(grad_mean(p0, d, 25, 40), 15.0);
    eng.step();
    std::vector<float> expect(p0.size());
    for (std::size_t i = 0; i < p0.size(); ++i) expect[i] = p0[i] - 0.1f * g[i];
    CHECK(all_close(eng.params_read(), expect));
}

TEST(fp16_and_bf16_conversions) {
    using gacc::bfloat16;
    using gacc::half;
    CHECK(half(1.0f).bits == 0x3c00);
    CHECK(half(-2.0f).bits == 0xc000);
    CHECK(half(65504.0f).bits == 0x7bff);
    CHECK(half(65519.0f).bits == 0x7bff);
    CHECK(half(65520.0f).bits == 0x7c00);
    CHECK(half(std::ldexp(1.0f, -24)).bits == 0x0001);   // smallest subnormal
    CHECK(half(std::ldexp(1.0f, -25)).bits == 0x0000);   // tie to even: 0
    CHECK(half(std::ldexp(1.5f, -25)).bits == 0x0001);
    CHECK(half(1.0f + std::ldexp(1.0f, -11)).bits == 0x3c00);  // tie, even stays
    CHECK(half(1.0f + 3 * std::ldexp(1.0f, -11)).bits == 0x3c02);  // tie, odd rounds up
    CHECK((half(std::numeric_limits<float>::quiet_NaN()).bits & 0x7c00) == 0x7c00);
    CHECK((half(std::numeric_limits<float>::quiet_NaN()).bits & 0x03ff) != 0);
    CHECK(half(std::numeric_limits<float>::infinity()).bits == 0x7c00);
    CHECK(float(half::from_bits(0x3555)) == 0.333251953125f);
    CHECK(float(half::from_bits(0x0001)) == std::ldexp(1.0f, -24));
    CHECK(bfloat16(1.0f).bits == 0x3f80);
    CHECK(bfloat16(1.0f + std::ldexp(1.0f, -8)).bits == 0x3f80);       // tie, even
    CHECK(bfloat16(1.0f + 3 * std::ldexp(1.0f, -8)).bits == 0x3f82);   // tie, odd rounds up
    CHECK(float(bfloat16::from_bits(0xc040)) == -3.0f);
    CHECK(std::isnan(float(bfloat16(std::numeric_limits<float>::quiet_NaN()))));
    // Every finite half round-trips through float.
    bool roundtrip = true;
    for (unsigned b = 0; b < 0x10000; ++b) {
        if ((b & 0x7c00) == 0x7c00) continue;
        const half h = half::from_bits(static_cast<std::uint16_t>(b));
        if (half(float(h)).bits != h.bits) roundtrip = false;
    }
    CHECK(roundtrip);
}

TEST(typed_fp16_bf16_microbatches_match_fp32) {
    const std::vector<float> g = {0.5f, -0.25f, 1.0f / 3.0f, 2.0f, -1e-3f, 7.0f, 0.125f};
    const auto cfg = gacc::Config().cpu().sgd(1.0f).weight_decay(0.0f);
    const auto h = gacc::to_half(gacc::span<const float>(g.data(), g.size()));
    const auto b = gacc::to_bfloat16(gacc::span<const float>(g.data(), g.size()));
    std::vector<float> h_as_f(g.size()), b_as_f(g.size());
    for (std::size_t i = 0; i < g.size(); ++i) {
        h_as_f[i] = float(h[i]);
        b_as_f[i] = float(b[i]);
    }
    gacc::Engine e16(cfg, g.size()), ebf(cfg, g.size()), e32h(cfg, g.size()), e32b(cfg, g.size());
    e16.microbatch(h, 2.0);
    ebf.microbatch(gacc::span<const gacc::bfloat16>(b.data(), b.size()), 2.0);
    e32h.microbatch(h_as_f, 2.0);
    e32b.microbatch(b_as_f, 2.0);
    for (auto* e : {&e16, &ebf, &e32h, &e32b}) e->step();
    CHECK(e16.params_read() == e32h.params_read());
    CHECK(ebf.params_read() == e32b.params_read());
    // Raw pointer overload, with an explicit dtype.
    gacc::Engine raw(cfg, g.size());
    raw.microbatch(static_cast<const void*>(h.data()), gacc::Dtype::f16, h.size(), 2.0);
    raw.step();
    CHECK(raw.params_read() == e32h.params_read());
}

TEST(errors_carry_status_and_message) {
    const auto cfg = gacc::Config().cpu().sgd(0.1f);
    gacc::Engine eng(cfg, 4);
    const std::vector<float> short_grad(3, 1.0f);
    CHECK_THROWS_STATUS(eng.microbatch(short_grad, 1.0), gacc::Status::invalid_argument, "numel");
    const std::vector<float> grad(4, 1.0f);
    CHECK_THROWS_STATUS(eng.microbatch(grad, std::nan("")), gacc::Status::invalid_argument, "weight");
    CHECK_THROWS_STATUS(eng.microbatch(grad, -1.0), gacc::Status::invalid_argument, "weight");
    CHECK_THROWS_STATUS(eng.microbatch(grad.data(), static_cast<gacc::Dtype>(7), 4, 1.0),
                        gacc::Status::invalid_argument, "dtype");
    CHECK_THROWS_STATUS(eng.microbatch(nullptr, gacc::Dtype::f32, 4, 1.0), gacc::Status::null_pointer, "grad");
    // Nothing was accumulated by the failed calls: stepping is an invalid state.
    CHECK_THROWS_STATUS(eng.step(), gacc::Status::invalid_state, "gacc_step");
    CHECK_THROWS_STATUS(eng.set_lr(-1.0f), gacc::Status::invalid_argument, "lr");
    std::vector<float> out(5);
    CHECK_THROWS_STATUS(eng.params_read(gacc::span<float>(out.data(), out.size())),
                        gacc::Status::invalid_argument, "numel");
    CHECK_THROWS_STATUS(eng.tensor_span(3), gacc::Status::invalid_argument, "tensor");
    CHECK_THROWS_STATUS(eng.set_stream(reinterpret_cast<void*>(0x1)), gacc::Status::invalid_state, "");

    CHECK_THROWS_STATUS(gacc::Engine(gacc::Config().cpu().lr(-0.5f), 4), gacc::Status::invalid_argument, "lr");
    CHECK_THROWS_STATUS(gacc::Engine(gacc::Config().cpu().betas(1.0f, 0.999f), 4),
                        gacc::Status::invalid_argument, "beta1");
    CHECK_THROWS_STATUS(gacc::Engine(cfg, std::vector<gacc::Tensor>{}), gacc::Status::invalid_argument,
                        "n_tensors");
    CHECK_THROWS_STATUS(gacc::Engine(cfg, 0), gacc::Status::invalid_argument, "numel");

    // A caught error is a std::runtime_error too.
    bool caught = false;
    try {
        eng.zero();
        eng.step();
    } catch (const std::runtime_error& e) {
        caught = std::string(e.what()).rfind("GACC_ERR_INVALID_STATE: ", 0) == 0;
    }
    CHECK(caught);
    // The engine still works after errors.
    eng.microbatch(grad, 1.0);
    CHECK(eng.step_info().applied);
}

TEST(skipped_step_on_non_finite_gradient) {
    gacc::Engine eng(gacc::Config().cpu().precision(gacc::Precision::fp16).loss_scaling(1024.0f), 3);
    CHECK(eng.loss_scale() == 1024.0f);
    const std::vector<float> bad = {1.0f, std::numeric_limits<float>::infinity(), 0.0f};
    eng.microbatch(bad, 1.0);
    CHECK(!eng.step().has_value());
    CHECK(eng.loss_scale() == 512.0f);
    CHECK(*eng.loss_scale_ptr() == 512.0f);
    CHECK(eng.params_read() == std::vector<float>(3, 0.0f));
}

TEST(numerics_options_drop_hysteresis_kahan_sr) {
    gacc::Engine eng(gacc::Config()
                         .cpu()
                         .precision(gacc::Precision::fp16)
                         .loss_scaling(1024.0f)
                         .hysteresis(2)
                         .loss_scale_bounds(1.0f, 4096.0f)
                         .drop_nonfinite_microbatches()
                         .compensated_accumulation()
                         .stochastic_rounding(true, 42),
                     3);
    const std::vector<float> bad = {1.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f};
    const std::vector<float> good = {0.5f, -0.25f, 1.0f};
    eng.microbatch(bad, 1.0);
    eng.microbatch(good, 2.0);
    gacc::StepInfo info = eng.step_info();
    CHECK(info.applied);
    CHECK(info.dropped_microbatches == 1u && info.microbatches == 2u && info.total_weight == 2.0);
    CHECK(eng.loss_scale() == 1024.0f);  // hysteresis 2: the first overflow is tolerated
    eng.microbatch(bad, 1.0);
    info = eng.step_info();
    CHECK(!info.applied && info.dropped_microbatches == 1u && info.total_weight == 0.0);
    CHECK(eng.loss_scale() == 512.0f);
    CHECK_THROWS_STATUS(gacc::Engine(gacc::Config().cpu().stochastic_rounding(true), 3),
                        gacc::Status::invalid_argument, "stochastic_rounding");
}

TEST(move_semantics) {
    static_assert(!std::is_copy_constructible_v<gacc::Engine>, "Engine must not be copyable");
    static_assert(!std::is_copy_assignable_v<gacc::Engine>, "Engine must not be copy-assignable");
    static_assert(std::is_nothrow_move_constructible_v<gacc::Engine>, "noexcept move");
    static_assert(std::is_nothrow_move_assignable_v<gacc::Engine>, "noexcept move assignment");

    const auto cfg = gacc::Config().cpu().sgd(0.1f);
    gacc::Engine a(cfg, 3);
    gacc_engine* raw_a = a.get();
    gacc::Engine b(std::move(a));
    CHECK(!a.valid() && b.get() == raw_a);
    CHECK_THROWS_STATUS(a.numel(), gacc::Status::invalid_handle, "moved from");
    CHECK(b.numel() == 3);

    gacc::Engine c(cfg, 5);
    gacc_engine* raw_c = c.get();
    c = std::move(b);  // c's old engine is destroyed
    std::size_t n = 0;
    CHECK(gacc_numel(raw_c, &n) == GACC_ERR_INVALID_HANDLE);
    CHECK(c.numel() == 3);

    std::vector<gacc::Engine> engines;
    for (int i = 0; i < 8; ++i) engines.emplace_back(cfg, static_cast<std::size_t>(i + 1));
    for (int i = 0; i < 8; ++i) CHECK(engines[static_cast<std::size_t>(i)].numel() == static_cast<std::size_t>(i + 1));

    gacc_engine* released = c.release();
    CHECK(!c.valid());
    CHECK(gacc_numel(released, &n) == GACC_OK && n == 3);
    gacc::Engine adopted(released);
    adopted.reset();
    CHECK(gacc_numel(released, &n) == GACC_ERR_INVALID_HANDLE);
    adopted.reset();  // idempotent
}

TEST(params_and_lr) {
    gacc::Engine eng(gacc::Config().cpu().adamw(0.01f), model_tensors());
    CHECK(eng.n_tensors() == 2);
    CHECK(eng.tensor_span(1) == std::make_pair(D, std::size_t{1}));
    CHECK(eng.device() == GACC_DEVICE_CPU);
    std::vector<float> p(D + 1);
    for (std::size_t i = 0; i < p.size(); ++i) p[i] = static_cast<float>(i) * 0.5f;
    eng.params_write(p);
    CHECK(eng.params_read() == p);
    CHECK(eng.params_view(1)[0] == p[D]);
    CHECK(eng.loss_scale() == 1.0f);
    eng.set_lr(0.5f);
    CHECK(eng.lr() == 0.5f);
}

}  // namespace

// Per-tensor micro-batches in mixed types (float, half, bfloat16 spans and vectors,
// no_grad) equal gacc_microbatch on the f32 concatenation bit for bit; accumulator()
// is a span of the tensor's accumulator; the in-place path equals microbatch().
TEST(per_tensor_and_inplace_match_the_concatenation) {
    const std::vector<gacc::Tensor> tensors = {gacc::Tensor("w", 40), gacc::Tensor("b", 7), gacc::Tensor("v", 100)};
    gacc::Config cfg;
    cfg.device(GACC_DEVICE_CPU);
    gacc::Engine a(cfg, tensors), b(cfg, tensors);
    std::mt19937 gen(5);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    auto rand = [&](std::size_t n) {
        std::vector<float> v(n);
        for (auto& x : v) x = u(gen);
        return v;
    };
    for (int mb = 0; mb < 3; ++mb) {
        const std::vector<float> w = rand(40);
        const std::vector<float> bias32 = rand(7), v32 = rand(100);
        const std::vector<gacc::half> bias = gacc::to_half(bias32);
        const std::vector<gacc::bfloat16> v = gacc::to_bfloat16(v32);
        const bool skip_v = mb == 1;
        if (skip_v) {
            a.microbatch({gacc::span<const float>(w.data(), w.size()), bias, gacc::no_grad}, 2.0);
        } else {
            a.microbatch({w, gacc::span<const gacc::half>(bias.data(), bias.size()), v}, 2.0);
        }
        std::vector<float> flat(w);
        for (auto h : bias) flat.push_back(static_cast<float>(h));
        for (auto x : v) flat.push_back(skip_v ? 0.0f : static_cast<float>(x));
        b.microbatch(flat, 2.0);
    }
    for (std::size_t t = 0; t < 3; ++t) {
        const auto sa = a.accumulator(t), sb = b.accumulator(t);
        CHECK(sa.size() == a.tensor_span(t).second);
        CHECK(std::memcmp(sa.data(), sb.data(), sa.size() * sizeof(float)) == 0);
    }
    CHECK_THROWS_STATUS(a.microbatch({gacc::no_grad, gacc::no_grad}, 1.0), gacc::Status::invalid_argument, "n_grads");
    const std::vector<float> short_w(39, 1.0f);
    CHECK_THROWS_STATUS(a.microbatch({short_w, nullptr, nullptr}, 1.0), gacc::Status::invalid_argument,
                        "grads[0].numel");
    CHECK(a.step_info().total_weight == 6.0);
    b.step_info();
    CHECK(a.params_read() == b.params_read());
    // In place: the host adds into the spans, then books the micro-batch.
    const std::vector<float> g = rand(147);
    std::size_t off = 0;
    for (std::size_t t = 0; t < 3; ++t) {
        auto acc = a.accumulator(t);
        for (std::size_t i = 0; i < acc.size(); ++i) acc[i] += 3.0f * g[off + i];
        off += acc.size();
    }
    a.microbatch_inplace(3.0);
    b.microbatch(g, 3.0);
    const auto ia = a.step_info(), ib = b.step_info();
    CHECK(ia.microbatches == 1 && ia.grad_norm == ib.grad_norm);
    CHECK(a.params_read() == b.params_read());
    CHECK(a.accumulator(2)[99] == 0.0f);
}

int main() {
    for (auto& [name, fn] : registry()) {
        const int before = g_failures;
        try {
            fn();
        } catch (const std::exception& e) {
            ++g_failures;
            std::fprintf(stderr, "%s: unexpected exception: %s\n", name, e.what());
        }
        std::printf("[%s] %s\n", g_failures == before ? " OK " : "FAIL", name);
    }
    std::printf("%s (C++%ld): %zu tests, %d checks, %d failures\n", __FILE__,
                static_cast<long>(__cplusplus / 100 % 100), registry().size(), g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
