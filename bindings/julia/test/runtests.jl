# Tests of the Julia binding. NOT EXECUTED in this repository's CI: no Julia
# toolchain is available here. Its C layer (src/capi.jl) is generated from
# include/gacc.h by scripts/gen_julia_ccalls.py, which also checks it. To run these:
#   cargo build --release
#   julia --project=bindings/julia -e 'using Pkg; Pkg.test()'
using Gacc
using Random
using Test

const D = 6

# A small linear regression: y = w . x + b, loss = mean (pred - y)^2 / 2.
function make_data(n, seed)
    rng = MersenneTwister(seed)
    x = randn(rng, Float32, D, n)
    wtrue = Float32[0.3f0 * j - 0.7f0 for j in 0:D-1]
    y = vec(wtrue' * x) .+ 0.5f0 .+ 0.01f0 .* randn(rng, Float32, n)
    return x, y
end

# Gradient of the mean loss over the samples in `r`, as [w; b].
function grad_mean(p, x, y, r)
    w, b = p[1:D], p[D+1]
    res = vec(w' * x[:, r]) .+ b .- y[r]
    g = vcat(x[:, r] * res, sum(res))
    return Float32.(g ./ length(r))
end

model_tensors() = [Tensor("w", Float32[0.1f0 * j - 0.2f0 for j in 0:D-1]),
                   Tensor("b", Float32[0.05f0]; no_weight_decay = true)]

function train(cfg, x, y, cuts, steps)
    e = Engine(cfg, model_tensors())
    try
        p = params(e)
        for _ in 1:steps
            for k in 1:length(cuts)-1
                r = cuts[k]+1:cuts[k+1]
                microbatch!(e, grad_mean(p, x, y, r), length(r))
            end
            info = step!(e)
            @test info.applied == 1
            @test info.microbatches == length(cuts) - 1
            @test info.total_weight == cuts[end]
            read_params!(p, e)
        end
        return p
    finally
        close(e)
    end
end

cpu_sgd(lr; momentum = 0) = Config(device = GACC_DEVICE_CPU, optimizer = GACC_OPTIMIZER_SGD, lr = lr,
                                   momentum = momentum, weight_decay = 0)

function expect_error(f, status, fragment)
    err = try
        f()
        nothing
    catch ex
        ex
    end
    @test err isa GaccError
    err isa GaccError || return
    @test err.status == status
    @test occursin(fragment, err.message)
    @test startswith(sprint(showerror, err), "GaccError($(Gacc.status_name(status))): ")
end

@noinline forgotten_engine_handle() = Engine(cpu_sgd(0.1), 4).handle

@testset "Gacc" begin
    @testset "version and defaults" begin
        @test header_matches_library()
        @test gacc_version() == Gacc.GACC_VERSION
        c = Config()
        @test c.device == GACC_DEVICE_AUTO
        @test c.optimizer == GACC_OPTIMIZER_ADAMW
        @test c.lr == 1f-3
        @test c.init_scale == 65536
        @test c.hysteresis == 1 && c.consecutive_hysteresis == 0
        @test c.min_loss_scale == 0 && c.max_loss_scale == 0
        @test c.drop_nonfinite_microbatches == 0 && c.compensated_accumulation == 0
        @test c.stochastic_rounding == 0 && c.seed == 0
        @test c.struct_size == sizeof(Gacc.Config)
        @test c.loss_scale_policy == GACC_LOSS_SCALE_GRADSCALER
        @test sizeof(Gacc.Config) == 112
        @test sizeof(Gacc.TensorDesc) == 32
        @test sizeof(Gacc.StepInfo) == 48
    end

    @testset "micro-batches equal one batch" begin
        x, y = make_data(48, 1)
        sgd = Config(device = GACC_DEVICE_CPU, optimizer = GACC_OPTIMIZER_SGD, lr = 0.05,
                     momentum = 0.9, weight_decay = 0.01)
        one = train(sgd, x, y, [0, 48], 5)
        @test isapprox(train(sgd, x, y, [0, 12, 24, 36, 48], 5), one; rtol = 1e-5, atol = 1e-6)
        @test isapprox(train(sgd, x, y, [0, 5, 16, 40, 48], 5), one; rtol = 1e-5, atol = 1e-6)

        adamw = Config(device = GACC_DEVICE_CPU, lr = 0.01)
        @test isapprox(train(adamw, x, y, [0, 7, 8, 30, 48], 4), train(adamw, x, y, [0, 48], 4);
                       rtol = 1e-5, atol = 1e-6)

        # One SGD step by hand: p - lr * g.
        e = Engine(cpu_sgd(0.1), model_tensors())
        p0 = params(e)
        microbatch!(e, grad_mean(p0, x, y, 1:20), 20)
        microbatch!(e, grad_mean(p0, x, y, 21:48), 28)
        step!(e)
        @test isapprox(params(e), p0 .- 0.1f0 .* grad_mean(p0, x, y, 1:48); rtol = 1e-5, atol = 1e-6)
        close(e)
    end

    @testset "Float16 gradients" begin
        g = Float32[0.5, -0.25, 1 / 3, 2, -1e-3, 7, 0.125]
        a = Engine(cpu_sgd(1), length(g))
        b = Engine(cpu_sgd(1), length(g))
        microbatch!(a, Float16.(g), 2)
        microbatch!(b, Float32.(Float16.(g)), 2)
        step!(a)
        step!(b)
        @test params(a) == params(b)
        close(a)
        close(b)
    end

    @testset "bad inputs" begin
        e = Engine(cpu_sgd(0.1), 4)
        g = Float32[1, 2, 3, 4]
        expect_error(() -> microbatch!(e, g[1:3], 1), GACC_ERR_INVALID_ARGUMENT, "numel")
        expect_error(() -> microbatch!(e, g, NaN), GACC_ERR_INVALID_ARGUMENT, "weight")
        expect_error(() -> microbatch!(e, g, -1), GACC_ERR_INVALID_ARGUMENT, "weight")
        expect_error(() -> microbatch!(e, Ptr{Cvoid}(C_NULL), GACC_DTYPE_F32, 4, 1), GACC_ERR_NULL_POINTER, "grad")
        expect_error(() -> microbatch!(e, pointer(g), 9, 4, 1), GACC_ERR_INVALID_ARGUMENT, "dtype")
        expect_error(() -> step!(e), GACC_ERR_INVALID_STATE, "gacc_step")   # nothing was accumulated
        expect_error(() -> read_params!(zeros(Float32, 5), e), GACC_ERR_INVALID_ARGUMENT, "numel")
        expect_error(() -> set_lr!(e, -1), GACC_ERR_INVALID_ARGUMENT, "lr")
        expect_error(() -> tensor_range(e, 2), GACC_ERR_INVALID_ARGUMENT, "tensor")
        expect_error(() -> Engine(cpu_sgd(-1), 4), GACC_ERR_INVALID_ARGUMENT, "lr")
        expect_error(() -> Engine(Config(beta1 = 1), 4), GACC_ERR_INVALID_ARGUMENT, "beta1")
        expect_error(() -> Engine(Config(), Tensor[]), GACC_ERR_INVALID_ARGUMENT, "n_tensors")
        expect_error(() -> Engine(Config(), 0), GACC_ERR_INVALID_ARGUMENT, "numel")
        # Still usable.
        microbatch!(e, g, 2)
        @test step!(e).applied == 1
        close(e)
        @test !isopen(e)
        close(e)   # idempotent
        expect_error(() -> numel(e), GACC_ERR_INVALID_HANDLE, "closed")
    end

    @testset "skipped step, loss scale" begin
        e = Engine(Config(device = GACC_DEVICE_CPU, precision = GACC_PRECISION_FP16, init_scale = 1024), 3)
        @test loss_scale(e) == 1024
        microbatch!(e, Float32[1, Inf, 0], 1)
        info = step!(e)
        @test info.applied == 0
        @test info.loss_scale == 512
        @test unsafe_load(loss_scale_ptr(e)) == 512
        @test params(e) == zeros(Float32, 3)
        close(e)
    end

    @testset "numerics options" begin
        e = Engine(Config(device = GACC_DEVICE_CPU, precision = GACC_PRECISION_FP16, init_scale = 1024,
                          hysteresis = 2, drop_nonfinite_microbatches = 1, compensated_accumulation = 1,
                          stochastic_rounding = 1, seed = 7), 3)
        microbatch!(e, Float32[1, NaN, 0], 1)
        microbatch!(e, Float32[0.5, -0.25, 1], 2)
        info = step!(e)
        @test info.applied == 1
        @test info.dropped_microbatches == 1
        @test info.microbatches == 2
        @test info.total_weight == 2
        @test info.loss_scale == 1024   # hysteresis 2: the first overflow is tolerated
        close(e)
        expect_error(() -> Engine(Config(device = GACC_DEVICE_CPU, stochastic_rounding = 1), 3),
                     GACC_ERR_INVALID_ARGUMENT, "stochastic_rounding")
    end

    @testset "params, lr, finalizer" begin
        e = Engine(cpu_sgd(0.1), model_tensors())
        @test ntensors(e) == 2
        @test tensor_range(e, 2) == D+1:D+1
        @test Gacc.device(e) == GACC_DEVICE_CPU
        p = Float32.(1:D+1)
        params!(e, p)
        @test params(e) == p
        @test unsafe_load(Ptr{Float32}(params_ptr(e, 2))) == D + 1
        set_lr!(e, 0.25)
        @test get_lr(e) == 0.25f0
        close(e)

        # A forgotten engine is destroyed by its finalizer (no reference survives the
        # function that made it).
        h = forgotten_engine_handle()
        live(h) = Gacc.LibGacc.gacc_numel(h, Ref{Csize_t}(0)) == GACC_OK
        for _ in 1:20
            live(h) || break
            GC.gc(true)
            yield()   # finalizers may be deferred to a safe point
        end
        @test !live(h)
    end

    @testset "checkpoint round trip" begin
        e = Engine(cpu_sgd(0.1), model_tensors())
        p = Float32.(1:D+1)
        params!(e, p)
        path = joinpath(mktempdir(), "ckpt.safetensors")
        save(e, path)
        r = Engine(path; device = GACC_DEVICE_CPU)
        @test params(r) == p
        params!(e, zeros(Float32, D+1))
        load!(e, path)
        @test params(e) == p
        write(path, "not a checkpoint")
        err = try load!(e, path); nothing catch x; x end
        @test err isa GaccError && err.status == GACC_ERR_CORRUPT
        close(e); close(r)
    end
    @testset "per-tensor and in-place micro-batches" begin
        a = Engine(cpu_sgd(0.1), model_tensors())
        b = Engine(cpu_sgd(0.1), model_tensors())
        w, bias = Float32[0.5f0 * j for j in 1:D], Float16[0.25]
        # Float32 + Float16 tensors equal the Float32 concatenation bit for bit.
        microbatch_tensors!(a, [w, bias], 2)
        microbatch!(b, vcat(w, Float32.(bias)), 2)
        # No gradient for the bias: nothing.
        microbatch_tensors!(a, [w, nothing], 1)
        microbatch!(b, vcat(w, 0f0), 1)
        @test accumulator(a, 1) == accumulator(b, 1) && accumulator(a, 2) == accumulator(b, 2)
        err = try microbatch_tensors!(a, [w[1:end-1], nothing], 1); nothing catch x; x end
        @test err isa GaccError && err.status == GACC_ERR_INVALID_ARGUMENT && occursin("grads[0].numel", err.message)
        # In place: add into the accumulators, then book the micro-batch.
        accumulator(a, 1) .+= 3f0 .* w
        microbatch_inplace!(a, 3)
        microbatch!(b, vcat(w, 0f0), 3)
        ia, ib = step!(a), step!(b)
        @test ia.microbatches == 3 && ia.total_weight == 6.0
        @test params(a) == params(b)
        @test all(iszero, accumulator(a, 1))
        close(a); close(b)
    end
end
