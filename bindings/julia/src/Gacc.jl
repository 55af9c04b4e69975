"""
    Gacc

Julia binding of gacc, a gradient-accumulation engine with a C ABI: feed it one
gradient per micro-batch, and every K micro-batches let it take one optimizer step
(SGD or AdamW) with fp32 accumulators, loss scaling and gradient clipping.

    using Gacc
    e = Engine(Config(device = GACC_DEVICE_CPU, lr = 1f-2), [Tensor("w", 10)])
    microbatch!(e, grad, 32)      # one micro-batch gradient (Vector{Float32}/Float16) of 32 samples
    info = step!(e)               # every K micro-batches
    p = params(e)
    close(e)                      # or leave it to the finalizer

Every non-OK status throws a `GaccError` carrying the status and the library's
message. The shared library is `ENV["GACC_LIB"]` when set (read when the package is
loaded/precompiled), otherwise `target/release/libgacc` of the source tree this
package sits in, otherwise `libgacc` from the system's search path.

The C layer (constants, struct mirrors, one function per C function with the
prototype's exact types) is `LibGacc` in capi.jl, generated from include/gacc.h by
scripts/gen_julia_ccalls.py; this file calls `LibGacc.gacc_*` and has no ccall of its own.
"""
module Gacc

using Libdl

export Engine, Config, Tensor, StepInfo, GaccError
export microbatch!, microbatch_bf16!, microbatch_tensors!, BF16Bits, Grad, accumulator, accumulator_ptr,
       microbatch_inplace!, step!, step_async!, zero!, params, params!, read_params!,
       params_ptr, loss_scale, loss_scale_ptr, set_lr!, get_lr, numel, ntensors, tensor_range,
       set_stream!, status_name, gacc_version, header_matches_library, save, load!,
       set_allreduce!, set_mpi!, comm_stats, NcclId, nccl_unique_id, set_nccl!

include("capi.jl")
using .LibGacc
import .LibGacc: Config  # the keyword constructor below adds a method

# Every constant of gacc.h (LibGacc exports them) is exported from Gacc too.
for name in names(LibGacc)
    if startswith(string(name), "GACC_")
        @eval export $name
    end
end

# ---------------------------------------------------------------------------------
# The config: the C struct with the library's defaults, fields overridden by keyword.

function default_config()
    r = Ref{Config}()
    # The binding's own struct size: a library newer than this binding fills only
    # the fields the binding knows (the later ones keep their defaults).
    check(LibGacc.gacc_config_init_sized(r, sizeof(Config)))
    return r[]
end

"""
    Config(; kwargs...)

Mirror of `gacc_config`. `Config()` holds the library's defaults (gacc_config_init);
keywords override fields: `Config(device = GACC_DEVICE_CPU, optimizer = GACC_OPTIMIZER_SGD, lr = 0.1)`.
"""
function Config(; kwargs...)
    c = default_config()
    isempty(kwargs) && return c
    fields = fieldnames(Config)
    vals = Any[getfield(c, f) for f in fields]
    for (k, v) in kwargs
        i = findfirst(==(k), fields)
        i === nothing && throw(ArgumentError("gacc_config has no field `$k`"))
        vals[i] = convert(fieldtype(Config, i), v)
    end
    return Config(vals...)
end

# ---------------------------------------------------------------------------------
# Errors

"""
    GaccError(status, message)

Thrown for every non-OK `gacc_status`: `status` is the code (compare with
`GACC_ERR_INVALID_ARGUMENT` etc.), `message` is `gacc_last_error()` of the failed call.
"""
struct GaccError <: Exception
    status::Cint
    message::String
end

Base.showerror(io::IO, err::GaccError) = print(io, "GaccError(", status_name(err.status), "): ", err.message)

"Static name of a status, e.g. \"GACC_ERR_INVALID_ARGUMENT\"."
status_name(s::Integer) = unsafe_string(LibGacc.gacc_status_name(Cint(s)))

last_error() = unsafe_string(LibGacc.gacc_last_error())

# gacc_last_error() is per OS thread. A ccall never yields, and nothing between a
# ccall and this check does, so the task is still on the thread that failed.
@inline function check(status::Cint)
    status == GACC_OK || throw(GaccError(status, last_error()))
    return nothing
end

# ---------------------------------------------------------------------------------
# Version

"The library's version string."
gacc_version() = unsafe_string(LibGacc.gacc_version())

"True when the loaded library has the version and ABI this binding was written for."
function header_matches_library()
    number = LibGacc.gacc_version_number()
    abi = LibGacc.gacc_abi_version()
    return number == GACC_VERSION_NUMBER && abi == GACC_ABI_VERSION
end

# ---------------------------------------------------------------------------------
# Engine

"""
    Tensor(name, numel; no_weight_decay = false)
    Tensor(name, init::AbstractVector; no_weight_decay = false)

One parameter tensor: zeros, or the given initial values (copied at creation).
"""
struct Tensor
    name::String
    numel::Int
    init::Union{Nothing,Vector{Float32}}
    no_weight_decay::Bool
end
Tensor(name::AbstractString, numel::Integer; no_weight_decay::Bool = false) =
    Tensor(String(name), Int(numel), nothing, no_weight_decay)
Tensor(name::AbstractString, init::AbstractVector{<:Real}; no_weight_decay::Bool = false) =
    Tensor(String(name), length(init), Vector{Float32}(init), no_weight_decay)

"""
    Engine(cfg::Config, tensors::Vector{Tensor})
    Engine(cfg::Config, numel::Integer)

Owns one gacc engine. `close(e)` releases it; a finalizer does so if you forget.
"""
mutable struct Engine
    handle::Ptr{Cvoid}

    function Engine(cfg::Config, tensors::AbstractVector{Tensor})
        for (i, t) in enumerate(tensors)
            t.numel >= 0 || throw(GaccError(GACC_ERR_INVALID_ARGUMENT, "Gacc.Engine: tensors[$i].numel is negative"))
            t.init === nothing || length(t.init) == t.numel ||
                throw(GaccError(GACC_ERR_INVALID_ARGUMENT,
                                "Gacc.Engine: tensors[$i] has $(length(t.init)) initial values for numel $(t.numel)"))
        end
        # Julia Strings are NUL-terminated: pointer(name) is a C string while preserved.
        names = Union{Nothing,String}[isempty(t.name) ? nothing : t.name for t in tensors]
        inits = [t.init for t in tensors]
        out = Ref{Ptr{Cvoid}}(C_NULL)
        status = GC.@preserve names inits begin
            descs = TensorDesc[TensorDesc(names[i] === nothing ? Ptr{UInt8}(C_NULL) : pointer(names[i]),
                                          Csize_t(t.numel),
                                          inits[i] === nothing ? Ptr{Cfloat}(C_NULL) : pointer(inits[i]),
                                          t.no_weight_decay ? UInt32(1) : UInt32(0))
                               for (i, t) in enumerate(tensors)]
            LibGacc.gacc_create(Ref(cfg), descs, length(descs), out)
        end
        check(status)
        e = new(out[])
        finalizer(destroy!, e)
        return e
    end

    # Engine(path; device): a new engine from a checkpoint written by `save`.
    function Engine(path::AbstractString; device::Integer = GACC_DEVICE_AUTO)
        out = Ref{Ptr{Cvoid}}(C_NULL)
        check(LibGacc.gacc_create_from_checkpoint(path, Int32(device), out))
        e = new(out[])
        finalizer(destroy!, e)
        return e
    end
end

Engine(cfg::Config, numel::Integer) = Engine(cfg, [Tensor("params", numel)])

"Releases the engine now (idempotent). Later calls throw GACC_ERR_INVALID_HANDLE."
function destroy!(e::Engine)
    h = e.handle
    if h != C_NULL
        e.handle = C_NULL
        LibGacc.gacc_destroy(h)
    end
    return nothing
end

Base.close(e::Engine) = destroy!(e)
Base.isopen(e::Engine) = e.handle != C_NULL
Base.show(io::IO, e::Engine) = print(io, "Gacc.Engine(", isopen(e) ? "open" : "closed", ")")

# The live handle; throws when closed. Callers wrap the ccall in GC.@preserve e so
# the finalizer cannot run while the library uses the engine.
@inline function handle(e::Engine)
    h = e.handle
    h == C_NULL && throw(GaccError(GACC_ERR_INVALID_HANDLE, "Gacc.Engine is closed"))
    return h
end

"Total number of parameters."
function numel(e::Engine)
    out = Ref{Csize_t}(0)
    GC.@preserve e check(LibGacc.gacc_numel(handle(e), out))
    return Int(out[])
end

"Number of tensors."
function ntensors(e::Engine)
    out = Ref{Csize_t}(0)
    GC.@preserve e check(LibGacc.gacc_n_tensors(handle(e), out))
    return Int(out[])
end

"Indices (1-based) of tensor `i` (1-based) inside the concatenated buffers."
function tensor_range(e::Engine, i::Integer)
    i >= 1 || throw(GaccError(GACC_ERR_INVALID_ARGUMENT, "Gacc.tensor_range: tensor index $i < 1"))
    off = Ref{Csize_t}(0)
    n = Ref{Csize_t}(0)
    GC.@preserve e check(LibGacc.gacc_tensor_span(handle(e), i - 1, off, n))
    return (Int(off[]) + 1):(Int(off[]) + Int(n[]))
end

"Where the engine runs: GACC_DEVICE_CPU or a CUDA ordinal."
function device(e::Engine)
    out = Ref{Int32}(0)
    GC.@preserve e check(LibGacc.gacc_device(handle(e), out))
    return out[]
end

function microbatch_raw!(e::Engine, ptr::Ptr{Cvoid}, dtype::UInt32, n::Integer, weight::Real)
    GC.@preserve e check(LibGacc.gacc_microbatch(handle(e), ptr, dtype, n, weight))
    return e
end

"""
    microbatch!(e, grad, weight)

Folds one micro-batch gradient (all tensors concatenated) into the window; `weight`
is the number of samples or tokens behind it. `grad`: a dense vector of Float32 or
Float16 (other reals are converted to Float32), or `(ptr, dtype, n)` for memory the
library reads directly (device memory on a CUDA engine).
"""
function microbatch!(e::Engine, grad::DenseVector{Float32}, weight::Real)
    GC.@preserve grad microbatch_raw!(e, Ptr{Cvoid}(pointer(grad)), GACC_DTYPE_F32, length(grad), weight)
end
function microbatch!(e::Engine, grad::DenseVector{Float16}, weight::Real)
    GC.@preserve grad microbatch_raw!(e, Ptr{Cvoid}(pointer(grad)), GACC_DTYPE_F16, length(grad), weight)
end
microbatch!(e::Engine, grad::AbstractVector{<:Real}, weight::Real) = microbatch!(e, Vector{Float32}(grad), weight)
microbatch!(e::Engine, ptr::Ptr, dtype::Integer, n::Integer, weight::Real) =
    microbatch_raw!(e, Ptr{Cvoid}(ptr), UInt32(dtype), n, weight)

"""
    microbatch_bf16!(e, bits::DenseVector{UInt16}, weight)

Like `microbatch!` for bfloat16 gradients given as their bits (Base has no BFloat16;
`reinterpret(UInt16, x)` of a BFloat16s.jl vector works).
"""
function microbatch_bf16!(e::Engine, grad::DenseVector{UInt16}, weight::Real)
    GC.@preserve grad microbatch_raw!(e, Ptr{Cvoid}(pointer(grad)), GACC_DTYPE_BF16, length(grad), weight)
end

"""
    BF16Bits(bits::DenseVector{UInt16})

Marks a vector of bfloat16 bit patterns as a bfloat16 gradient for
`microbatch_tensors!` (Base has no BFloat16 type).
"""
struct BF16Bits{V<:DenseVector{UInt16}}
    bits::V
end

grad_entry(::Nothing) = Grad(C_NULL, GACC_DTYPE_F32, 0)
grad_entry(g::DenseVector{Float32}) = Grad(Ptr{Cvoid}(pointer(g)), GACC_DTYPE_F32, length(g))
grad_entry(g::DenseVector{Float16}) = Grad(Ptr{Cvoid}(pointer(g)), GACC_DTYPE_F16, length(g))
grad_entry(g::BF16Bits) = Grad(Ptr{Cvoid}(pointer(g.bits)), GACC_DTYPE_BF16, length(g.bits))
grad_entry(g::Grad) = g

"""
    microbatch_tensors!(e, grads, weight)

One micro-batch given tensor by tensor (gacc_microbatch_tensors): `grads[t]` is
tensor t's gradient in creation order, each in its own type: a dense Float32 or
Float16 vector, `BF16Bits(bits)`, `nothing` for no gradient, or a raw `Grad(ptr,
dtype, n)` (device memory on a CUDA engine). Same meaning as `microbatch!` on the
concatenation; atomic: a rejected call changes nothing and names the tensor index.
"""
function microbatch_tensors!(e::Engine, grads, weight::Real)
    entries = Grad[grad_entry(g) for g in grads]
    GC.@preserve e grads entries check(LibGacc.gacc_microbatch_tensors(handle(e), pointer(entries), length(entries), weight))
    return e
end

"""
    accumulator_ptr(e, i) -> Ptr{Cfloat}

Tensor `i`'s (1-based) fp32 accumulator (gacc_accumulator_ptr): zero when a window
opens, holding what the window's micro-batches added; stable until the engine is
closed. Device memory on a CUDA engine (write it on the stream of `set_stream!`).
"""
function accumulator_ptr(e::Engine, i::Integer)
    i >= 1 || throw(GaccError(GACC_ERR_INVALID_ARGUMENT, "Gacc.accumulator_ptr: tensor index $i < 1"))
    out = Ref{Ptr{Cfloat}}(C_NULL)
    GC.@preserve e check(LibGacc.gacc_accumulator_ptr(handle(e), i - 1, out))
    return out[]
end

"""
    accumulator(e, i) -> Vector{Float32}

Tensor `i`'s accumulator as an array over the engine's own memory (CPU engines only;
valid until the engine is closed): add a micro-batch into it, then call
`microbatch_inplace!`.
"""
function accumulator(e::Engine, i::Integer)
    device(e) < 0 || throw(GaccError(GACC_ERR_INVALID_STATE,
                                     "Gacc.accumulator: device memory on a CUDA engine (use accumulator_ptr)"))
    return unsafe_wrap(Array, accumulator_ptr(e, i), length(tensor_range(e, i)); own = false)
end

"""
    microbatch_inplace!(e, weight)

Books one micro-batch the host added into the accumulators itself (no data moves).
Refused with compensated accumulation or drop mode.
"""
function microbatch_inplace!(e::Engine, weight::Real)
    GC.@preserve e check(LibGacc.gacc_microbatch_inplace(handle(e), weight))
    return e
end

"""
    step!(e) -> StepInfo

Closes the window and applies the update. A skipped update (non-finite gradient)
is not an error: `info.applied == 0`.
"""
function step!(e::Engine)
    info = Ref{StepInfo}()
    GC.@preserve e info check(LibGacc.gacc_step(handle(e), info))
    return info[]
end

"Closes the window without waiting for the device and without a report."
function step_async!(e::Engine)
    GC.@preserve e check(LibGacc.gacc_step(handle(e), C_NULL))
    return e
end

"Drops the open window without stepping."
function zero!(e::Engine)
    GC.@preserve e check(LibGacc.gacc_zero(handle(e)))
    return e
end

"Copies the fp32 master weights into `dst` (length == numel(e))."
function read_params!(dst::DenseVector{Float32}, e::Engine)
    GC.@preserve e dst check(LibGacc.gacc_params_read(handle(e), pointer(dst), length(dst)))
    return dst
end

"The fp32 master weights, all tensors concatenated."
params(e::Engine) = read_params!(Vector{Float32}(undef, numel(e)), e)

"Replaces the fp32 master weights (length == numel(e))."
function params!(e::Engine, src::DenseVector{Float32})
    GC.@preserve e src check(LibGacc.gacc_params_write(handle(e), pointer(src), length(src)))
    return e
end
params!(e::Engine, src::AbstractVector{<:Real}) = params!(e, Vector{Float32}(src))

"The engine's own buffer for tensor `i` (1-based); device memory on a CUDA engine."
function params_ptr(e::Engine, i::Integer, dtype::Integer = GACC_DTYPE_F32)
    i >= 1 || throw(GaccError(GACC_ERR_INVALID_ARGUMENT, "Gacc.params_ptr: tensor index $i < 1"))
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve e check(LibGacc.gacc_params_ptr(handle(e), i - 1, UInt32(dtype), out))
    return out[]
end

"The loss scale S: multiply the loss by it before computing gradients."
function loss_scale(e::Engine)
    out = Ref{Cfloat}(0)
    GC.@preserve e check(LibGacc.gacc_loss_scale(handle(e), out))
    return out[]
end

"Address of S (device memory on a CUDA engine), valid until the engine is closed."
function loss_scale_ptr(e::Engine)
    out = Ref{Ptr{Cfloat}}(C_NULL)
    GC.@preserve e check(LibGacc.gacc_loss_scale_ptr(handle(e), out))
    return out[]
end

"Sets the learning rate used from the next step on."
function set_lr!(e::Engine, lr::Real)
    GC.@preserve e check(LibGacc.gacc_set_lr(handle(e), lr))
    return e
end

"The learning rate in use."
function get_lr(e::Engine)
    out = Ref{Cfloat}(0)
    GC.@preserve e check(LibGacc.gacc_get_lr(handle(e), out))
    return out[]
end

"CUDA engines: order gacc's work on the caller's CUstream (C_NULL: the engine's own)."
function set_stream!(e::Engine, stream::Ptr)
    GC.@preserve e check(LibGacc.gacc_set_stream(handle(e), stream))
    return e
end

"Saves the whole state (weights, optimizer, scaler, open window) to a safetensors file."
function save(e::Engine, path::AbstractString)
    GC.@preserve e check(LibGacc.gacc_save(handle(e), path))
    return path
end

"Loads a checkpoint into an engine of the same shape; on error the engine is unchanged."
function load!(e::Engine, path::AbstractString)
    GC.@preserve e check(LibGacc.gacc_load(handle(e), path))
    return e
end

"""
    set_allreduce!(e, fn::Ptr{Cvoid}, user_data::Ptr{Cvoid}, rank, world_size)

Data parallelism through your own transport: `fn` is a C function pointer (from
`@cfunction(f, Cint, (Ptr{Cvoid}, Csize_t, UInt32, Ptr{Cvoid}))`) that sums `count`
elements of dtype GACC_DTYPE_F32 or GACC_DTYPE_F64 in place across ranks and returns 0.
"""
function set_allreduce!(e::Engine, fn::Ptr{Cvoid}, user_data::Ptr{Cvoid}, rank::Integer, world_size::Integer)
    GC.@preserve e check(LibGacc.gacc_set_allreduce(handle(e), fn, user_data, Int32(rank), Int32(world_size)))
    return e
end

"Data parallelism over MPI: `comm` points to an MPI_Comm (C_NULL: MPI_COMM_WORLD)."
function set_mpi!(e::Engine, comm::Ptr{Cvoid} = C_NULL)
    GC.@preserve e check(LibGacc.gacc_set_mpi(handle(e), comm))
    return e
end

"A new NCCL unique id for one data-parallel group (make it on one rank; NCCL is loaded at run time)."
function nccl_unique_id()
    id = Ref(NcclId(ntuple(_ -> 0x00, 128)))
    check(LibGacc.gacc_nccl_unique_id(id))
    return id[]
end

"""
    set_nccl!(e, id::NcclId, rank, world_size)

Data parallelism over NCCL (CUDA engines): every rank passes the same `id`. The
all-reduces run on the engine's stream with no host synchronisation.
"""
function set_nccl!(e::Engine, id::NcclId, rank::Integer, world_size::Integer)
    GC.@preserve e check(LibGacc.gacc_set_nccl(handle(e), Ref(id), Int32(rank), Int32(world_size)))
    return e
end

"(collectives, bytes) this rank has sent through data-parallel collectives."
function comm_stats(e::Engine)
    c = Ref{UInt64}(0)
    b = Ref{UInt64}(0)
    GC.@preserve e check(LibGacc.gacc_comm_stats(handle(e), c, b))
    return (c[], b[])
end

end # module
