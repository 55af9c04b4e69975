// A game loop that learns while it runs.
//
// Every frame the "game" spawns a few projectiles; a small logistic model decides for
// each whether the player should dodge (it learns the rule "dodge when the projectile
// will pass within 3 units of the player"). The update tick computes the gradient of
// that frame's samples (one micro-batch) and hands it to gacc; every K frames the
// engine closes the window and applies one AdamW step, so the effective batch is
// K frames of samples whatever the frame rate. Parameters are read back once per step
// into a buffer the model uses for inference on the next frames.
//
// Build: see bindings/cpp/CMakeLists.txt (target gacc_game_loop). Exits 0 when the
// model has learned the rule (accuracy >= 90% on fresh frames), so CTest runs it.
#include "gacc.hpp"

#include <array>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

constexpr int kFeatures = 5;          // x, y, vx, vy, |closest approach| of a projectile
constexpr int kProjectilesPerFrame = 8;
constexpr int kFramesPerStep = 4;     // K: micro-batches (frames) per optimizer step
constexpr int kFrames = 2400;
constexpr float kDodgeRadius = 3.0f;   // dodge when the projectile passes this close

struct Projectile {
    std::array<float, kFeatures> features;
    float should_dodge;  // the label
};

class World {
public:
    explicit World(unsigned seed) : rng_(seed) {}

    std::vector<Projectile> spawn(int n) {
        std::uniform_real_distribution<float> pos(-8.0f, 8.0f), vel(-1.0f, 1.0f);
        std::vector<Projectile> out;
        for (int i = 0; i < n; ++i) {
            const float x = pos(rng_), y = pos(rng_), vx = vel(rng_), vy = vel(rng_);
            // Closest approach of the ray (x, y) + t (vx, vy), t >= 0, to the player at 0.
            const float v2 = vx * vx + vy * vy + 1e-6f;
            const float t = std::fmax(0.0f, -(x * vx + y * vy) / v2);
            const float cx = x + t * vx, cy = y + t * vy;
            const float miss = std::sqrt(cx * cx + cy * cy);
            out.push_back({{x / 8.0f, y / 8.0f, vx, vy, miss / 8.0f}, miss < kDodgeRadius ? 1.0f : 0.0f});
        }
        return out;
    }

private:
    std::mt19937 rng_;
};

struct Model {
    // Parameters: w (kFeatures), b (1), one flat buffer in gacc's order.
    std::vector<float> params = std::vector<float>(kFeatures + 1, 0.0f);

    float predict(const Projectile& p) const {
        float z = params[kFeatures];
        for (int j = 0; j < kFeatures; ++j) z += params[j] * p.features[j];
        return 1.0f / (1.0f + std::exp(-z));
    }
    // Gradient of the mean binary cross-entropy over the frame's projectiles.
    float gradient(const std::vector<Projectile>& batch, std::vector<float>& grad) const {
        std::fill(grad.begin(), grad.end(), 0.0f);
        float loss = 0.0f;
        for (const auto& p : batch) {
            const float q = predict(p);
            const float r = q - p.should_dodge;
            for (int j = 0; j < kFeatures; ++j) grad[j] += r * p.features[j];
            grad[kFeatures] += r;
            loss -= p.should_dodge * std::log(q + 1e-7f) + (1.0f - p.should_dodge) * std::log(1.0f - q + 1e-7f);
        }
        const float inv = 1.0f / static_cast<float>(batch.size());
        for (float& g : grad) g *= inv;
        return loss * inv;
    }
};

}  // namespace

int main() {
    try {
        gacc::Engine engine(gacc::Config().cpu().adamw(0.05f).weight_decay(0.0f).max_grad_norm(5.0f),
                            {gacc::Tensor("w", kFeatures), gacc::Tensor("b", 1, /*no_weight_decay=*/true)});
        World world(42);
        Model model;
        std::vector<float> grad(kFeatures + 1);
        float window_loss = 0.0f;

        for (int frame = 1; frame <= kFrames; ++frame) {
            // --- game update: simulate, then the learning tick ---
            const auto projectiles = world.spawn(kProjectilesPerFrame);
            window_loss += model.gradient(projectiles, grad);
            engine.microbatch(gacc::span<const float>(grad.data(), grad.size()),
                              static_cast<double>(projectiles.size()));

            if (frame % kFramesPerStep == 0) {
                const auto info = engine.step();  // std::nullopt if the update was skipped
                engine.params_read(gacc::span<float>(model.params.data(), model.params.size()));
                if (info && info->step % 100 == 0) {
                    std::printf("frame %5d  step %4llu  loss %.4f  |g| %.4f\n", frame,
                                static_cast<unsigned long long>(info->step),
                                window_loss / kFramesPerStep, info->grad_norm);
                }
                window_loss = 0.0f;
            }
            // --- render would go here ---
        }

        World test_world(7);
        int correct = 0, total = 0;
        for (int frame = 0; frame < 200; ++frame) {
            for (const auto& p : test_world.spawn(kProjectilesPerFrame)) {
                correct += ((model.predict(p) > 0.5f) == (p.should_dodge > 0.5f)) ? 1 : 0;
                ++total;
            }
        }
        const double accuracy = static_cast<double>(correct) / total;
        std::printf("dodge accuracy on new frames: %.1f%%\n", 100.0 * accuracy);
        return accuracy >= 0.9 ? 0 : 1;
    } catch (const gacc::Error& e) {
        std::fprintf(stderr, "gacc error (%s): %s\n", gacc::status_name(e.status()), e.message().c_str());
        return 2;
    }
}
