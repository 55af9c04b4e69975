// Package gacc is the Go binding of gacc, a gradient-accumulation engine with a C
// ABI: feed it one gradient per micro-batch, and every K micro-batches let it take
// one optimizer step (SGD or AdamW) with fp32 accumulators, loss scaling and
// gradient clipping, on the CPU or a CUDA device.
//
//	eng, err := gacc.New(gacc.DefaultConfig(), gacc.Tensor{Name: "w", Numel: n})
//	if err != nil { ... }
//	defer eng.Close()
//	for each micro-batch: eng.Microbatch(grad, float64(batchSize))
//	every K micro-batches: info, err := eng.Step()
//
// Every failing call returns a *Error carrying the C status and the library's
// message; compare with errors.Is(err, gacc.ErrInvalidArgument) and friends.
// An Engine may be used from several goroutines; the library serialises calls on
// one engine. Close releases it; a finalizer does so too if Close was forgotten.
package gacc

/*
#include <stdlib.h>
#include <gacc.h>
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// Status is a gacc_status code.
type Status int32

// The gacc_status codes (fixed numbers, part of the ABI).
const (
	StatusOK                Status = C.GACC_OK
	StatusNullPointer       Status = C.GACC_ERR_NULL_POINTER
	StatusInvalidArgument   Status = C.GACC_ERR_INVALID_ARGUMENT
	StatusInvalidHandle     Status = C.GACC_ERR_INVALID_HANDLE
	StatusInvalidState      Status = C.GACC_ERR_INVALID_STATE
	StatusOutOfMemory       Status = C.GACC_ERR_OUT_OF_MEMORY
	StatusDeviceUnavailable Status = C.GACC_ERR_DEVICE_UNAVAILABLE
	StatusDevice            Status = C.GACC_ERR_DEVICE
	StatusIO                Status = C.GACC_ERR_IO
	StatusCorrupt           Status = C.GACC_ERR_CORRUPT
	StatusCommunication     Status = C.GACC_ERR_COMMUNICATION
	StatusInternal          Status = C.GACC_ERR_INTERNAL
)

// String is the C name of the status, e.g. "GACC_ERR_INVALID_ARGUMENT".
func (s Status) String() string {
	return C.GoString(C.gacc_status_name(C.gacc_status(s)))
}

// Error is returned by every call whose C function did not return GACC_OK.
type Error struct {
	Status Status // the gacc_status
	Msg    string // gacc_last_error() of the failing call
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return e.Status.String()
	}
	return e.Status.String() + ": " + e.Msg
}

// Is makes errors.Is(err, gacc.ErrInvalidArgument) true for any *Error with that
// status: a target without a message matches on the status alone.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status && (t.Msg == "" || t.Msg == e.Msg)
}

// Sentinels for errors.Is.
var (
	ErrNullPointer       = &Error{Status: StatusNullPointer}
	ErrInvalidArgument   = &Error{Status: StatusInvalidArgument}
	ErrInvalidHandle     = &Error{Status: StatusInvalidHandle}
	ErrInvalidState      = &Error{Status: StatusInvalidState}
	ErrOutOfMemory       = &Error{Status: StatusOutOfMemory}
	ErrDeviceUnavailable = &Error{Status: StatusDeviceUnavailable}
	ErrDevice            = &Error{Status: StatusDevice}
	ErrIO                = &Error{Status: StatusIO}
	ErrCorrupt           = &Error{Status: StatusCorrupt}
	ErrCommunication     = &Error{Status: StatusCommunication}
	ErrInternal          = &Error{Status: StatusInternal}
)

// Dtype of a gradient buffer.
type Dtype uint32

const (
	F32  Dtype = C.GACC_DTYPE_F32
	F16  Dtype = C.GACC_DTYPE_F16
	BF16 Dtype = C.GACC_DTYPE_BF16
)

// Optimizer selects the update rule.
type Optimizer uint32

const (
	SGD   Optimizer = C.GACC_OPTIMIZER_SGD
	AdamW Optimizer = C.GACC_OPTIMIZER_ADAMW
)

// Precision is the dtype of the engine's working copy; PrecisionFP16 turns on
// dynamic loss scaling.
type Precision uint32

const (
	PrecisionFP32 Precision = C.GACC_PRECISION_FP32
	PrecisionFP16 Precision = C.GACC_PRECISION_FP16
	PrecisionBF16 Precision = C.GACC_PRECISION_BF16
)

// Reduction says how each micro-batch's loss was reduced.
type Reduction uint32

const (
	GradsMean Reduction = C.GACC_GRADS_MEAN // acc += weight * grad
	GradsSum  Reduction = C.GACC_GRADS_SUM  // acc += grad
)

// Devices.
const (
	DeviceAuto int32 = C.GACC_DEVICE_AUTO // CUDA device 0 if usable, else the CPU
	DeviceCPU  int32 = C.GACC_DEVICE_CPU
)

// Version is the library's version string; HeaderVersion the header's.
func Version() string { return C.GoString(C.gacc_version()) }

// HeaderVersion is the GACC_VERSION the binding was compiled against.
const HeaderVersion = C.GACC_VERSION

// HeaderMatchesLibrary reports whether the loaded library has the version and ABI
// of the header the binding was compiled with.
func HeaderMatchesLibrary() bool {
	return C.gacc_version_number() == C.GACC_VERSION_NUMBER && C.gacc_abi_version() == C.GACC_ABI_VERSION
}

// Config mirrors gacc_config. Start from DefaultConfig.
type Config struct {
	Device         int32 // DeviceAuto, DeviceCPU or a CUDA ordinal
	Optimizer      Optimizer
	LR             float32
	Momentum       float32 // SGD
	Nesterov       bool    // SGD
	Beta1, Beta2   float32 // AdamW
	Eps            float32 // AdamW
	WeightDecay    float32 // SGD: L2; AdamW: decoupled
	Precision      Precision
	MaxGradNorm    float32 // <= 0: no clipping
	InitScale      float32 // FP16 loss scaling
	GrowthFactor   float32
	BackoffFactor  float32
	GrowthInterval uint32
	GradReduction  Reduction
	// Numerics options (README "Numerics options"); the defaults keep today's behaviour.
	Hysteresis                uint32  // overflows tolerated before backing off (FP16); 0 or 1: GradScaler
	ConsecutiveHysteresis     bool    // every clean step restores the hysteresis budget (DeepSpeed)
	MinLossScale              float32 // floor on backoff; 0: none
	MaxLossScale              float32 // cap on growth; 0: none
	DropNonfiniteMicrobatches bool    // leave an inf/NaN micro-batch out instead of skipping the window
	CompensatedAccumulation   bool    // Kahan-compensated accumulator (+4 B per parameter)
	StochasticRounding        bool    // FP16/BF16 working copy rounded stochastically (needs FP16/BF16)
	Seed                      uint64  // seed of the stochastic rounding
	LossScalePolicy           LossScalePolicy // FP16 scale rule: LossScaleGradScaler (default) or LossScaleDeepSpeed
}

// LossScalePolicy is the rule that moves the FP16 loss scale (docs/numerics.md).
type LossScalePolicy uint32

const (
	// LossScaleGradScaler is torch.amp.GradScaler's rule (the default).
	LossScaleGradScaler LossScalePolicy = C.GACC_LOSS_SCALE_GRADSCALER
	// LossScaleDeepSpeed is DeepSpeed's DynamicLossScaler (backoff = 1 / growth, no cap).
	LossScaleDeepSpeed LossScalePolicy = C.GACC_LOSS_SCALE_DEEPSPEED
)

func b2u(b bool) C.uint32_t {
	if b {
		return 1
	}
	return 0
}

// DefaultConfig returns the library's defaults (gacc_config_init): device auto,
// AdamW lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01, FP32, no clipping.
func DefaultConfig() Config {
	var c C.gacc_config
	C.gacc_config_init(&c)
	return Config{
		Device:         int32(c.device),
		Optimizer:      Optimizer(c.optimizer),
		LR:             float32(c.lr),
		Momentum:       float32(c.momentum),
		Nesterov:       c.nesterov != 0,
		Beta1:          float32(c.beta1),
		Beta2:          float32(c.beta2),
		Eps:            float32(c.eps),
		WeightDecay:    float32(c.weight_decay),
		Precision:      Precision(c.precision),
		MaxGradNorm:    float32(c.max_grad_norm),
		InitScale:      float32(c.init_scale),
		GrowthFactor:   float32(c.growth_factor),
		BackoffFactor:  float32(c.backoff_factor),
		GrowthInterval: uint32(c.growth_interval),
		GradReduction:  Reduction(c.grad_reduction),

		Hysteresis:                uint32(c.hysteresis),
		ConsecutiveHysteresis:     c.consecutive_hysteresis != 0,
		MinLossScale:              float32(c.min_loss_scale),
		MaxLossScale:              float32(c.max_loss_scale),
		DropNonfiniteMicrobatches: c.drop_nonfinite_microbatches != 0,
		CompensatedAccumulation:   c.compensated_accumulation != 0,
		StochasticRounding:        c.stochastic_rounding != 0,
		Seed:                      uint64(c.seed),
		LossScalePolicy:           LossScalePolicy(c.loss_scale_policy),
	}
}

func (cfg *Config) toC() C.gacc_config {
	var c C.gacc_config
	C.gacc_config_init(&c)
	c.device = C.int32_t(cfg.Device)
	c.optimizer = C.uint32_t(cfg.Optimizer)
	c.lr = C.float(cfg.LR)
	c.momentum = C.float(cfg.Momentum)
	if cfg.Nesterov {
		c.nesterov = 1
	} else {
		c.nesterov = 0
	}
	c.beta1 = C.float(cfg.Beta1)
	c.beta2 = C.float(cfg.Beta2)
	c.eps = C.float(cfg.Eps)
	c.weight_decay = C.float(cfg.WeightDecay)
	c.precision = C.uint32_t(cfg.Precision)
	c.max_grad_norm = C.float(cfg.MaxGradNorm)
	c.init_scale = C.float(cfg.InitScale)
	c.growth_factor = C.float(cfg.GrowthFactor)
	c.backoff_factor = C.float(cfg.BackoffFactor)
	c.growth_interval = C.uint32_t(cfg.GrowthInterval)
	c.grad_reduction = C.uint32_t(cfg.GradReduction)
	c.hysteresis = C.uint32_t(cfg.Hysteresis)
	c.consecutive_hysteresis = b2u(cfg.ConsecutiveHysteresis)
	c.min_loss_scale = C.float(cfg.MinLossScale)
	c.max_loss_scale = C.float(cfg.MaxLossScale)
	c.drop_nonfinite_microbatches = b2u(cfg.DropNonfiniteMicrobatches)
	c.compensated_accumulation = b2u(cfg.CompensatedAccumulation)
	c.stochastic_rounding = b2u(cfg.StochasticRounding)
	c.seed = C.uint64_t(cfg.Seed)
	c.loss_scale_policy = C.uint32_t(cfg.LossScalePolicy)
	return c
}

// Tensor describes one parameter tensor. Init, when not nil, holds Numel initial
// values (copied at creation); nil means zeros.
type Tensor struct {
	Name          string
	Numel         int
	Init          []float32
	NoWeightDecay bool
}

// StepInfo is what a step did (gacc_step_info).
type StepInfo struct {
	Applied      bool    // false: skipped because the gradient was not finite
	GradNorm     float32 // before clipping
	ClipCoef     float32 // 1 when not clipped
	LossScale    float32 // S for the next window
	Step         uint64  // applied updates so far
	Microbatches uint32  // micro-batches in the window just closed
	TotalWeight  float64 // without the dropped micro-batches (DropNonfiniteMicrobatches)
	Dropped      uint32  // micro-batches left out because not finite (DropNonfiniteMicrobatches)
}

// Engine owns one gacc_engine. Release it with Close; a finalizer releases it if
// Close is forgotten, but do not rely on it for prompt release of device memory.
type Engine struct {
	h atomic.Pointer[C.gacc_engine]
}

// call runs one C call and turns its status into an error. gacc_last_error() is per
// OS thread, and a goroutine may move to another thread between two cgo calls: the
// goroutine is locked to its thread from the call until the message is read.
func call(f func() C.enum_gacc_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s := f()
	if s == C.GACC_OK {
		return nil
	}
	return &Error{Status: Status(s), Msg: C.GoString(C.gacc_last_error())}
}

func closedError() error {
	return &Error{Status: StatusInvalidHandle, Msg: "gacc: engine is closed"}
}

// do runs f with the live handle; KeepAlive keeps the finalizer away until f returns.
func (e *Engine) do(f func(h *C.gacc_engine) C.enum_gacc_status) error {
	h := e.h.Load()
	if h == nil {
		return closedError()
	}
	err := call(func() C.enum_gacc_status { return f(h) })
	runtime.KeepAlive(e)
	return err
}

// New creates an engine for the given tensors (at least one).
func New(cfg Config, tensors ...Tensor) (*Engine, error) {
	for i, t := range tensors {
		if t.Numel < 0 {
			return nil, &Error{Status: StatusInvalidArgument, Msg: fmt.Sprintf("gacc.New: tensors[%d].Numel is negative (%d)", i, t.Numel)}
		}
		if t.Init != nil && len(t.Init) != t.Numel {
			return nil, &Error{Status: StatusInvalidArgument, Msg: fmt.Sprintf("gacc.New: tensors[%d] has %d initial values for Numel %d", i, len(t.Init), t.Numel)}
		}
	}
	ccfg := cfg.toC()
	// The descriptors hold pointers (names, initial values), so by cgo's rules they
	// live in C memory, and so does what they point to.
	var descs *C.gacc_tensor_desc
	var toFree []unsafe.Pointer
	defer func() {
		for _, p := range toFree {
			C.free(p)
		}
	}()
	if len(tensors) > 0 {
		descSize := C.size_t(unsafe.Sizeof(C.gacc_tensor_desc{}))
		p := C.calloc(C.size_t(len(tensors)), descSize)
		if p == nil {
			return nil, &Error{Status: StatusOutOfMemory, Msg: "gacc.New: calloc failed"}
		}
		toFree = append(toFree, p)
		descs = (*C.gacc_tensor_desc)(p)
		ds := unsafe.Slice(descs, len(tensors))
		for i, t := range tensors {
			if t.Name != "" {
				name := C.CString(t.Name)
				toFree = append(toFree, unsafe.Pointer(name))
				ds[i].name = name
			}
			ds[i].numel = C.size_t(t.Numel)
			if len(t.Init) > 0 {
				buf := C.malloc(C.size_t(len(t.Init)) * 4)
				if buf == nil {
					return nil, &Error{Status: StatusOutOfMemory, Msg: "gacc.New: malloc failed"}
				}
				toFree = append(toFree, buf)
				copy(unsafe.Slice((*float32)(buf), len(t.Init)), t.Init)
				ds[i].init = (*C.float)(buf)
			}
			if t.NoWeightDecay {
				ds[i].no_weight_decay = 1
			}
		}
	}
	var h *C.gacc_engine
	err := call(func() C.enum_gacc_status {
		return C.gacc_create(&ccfg, descs, C.size_t(len(tensors)), &h)
	})
	if err != nil {
		return nil, err
	}
	e := &Engine{}
	e.h.Store(h)
	runtime.SetFinalizer(e, (*Engine).Close)
	return e, nil
}

// Close releases the engine. It is safe to call more than once and from several
// goroutines; later calls on the engine return ErrInvalidHandle.
func (e *Engine) Close() error {
	if h := e.h.Swap(nil); h != nil {
		C.gacc_destroy(h)
		runtime.SetFinalizer(e, nil)
	}
	return nil
}

// Numel is the total number of parameters (all tensors).
func (e *Engine) Numel() (int, error) {
	var n C.size_t
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_numel(h, &n) })
	return int(n), err
}

// NTensors is the number of tensors.
func (e *Engine) NTensors() (int, error) {
	var n C.size_t
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_n_tensors(h, &n) })
	return int(n), err
}

// TensorSpan is the offset and size of one tensor inside the concatenated buffers.
func (e *Engine) TensorSpan(tensor int) (offset, numel int, err error) {
	if tensor < 0 {
		return 0, 0, &Error{Status: StatusInvalidArgument, Msg: fmt.Sprintf("gacc: tensor index %d is negative", tensor)}
	}
	var off, n C.size_t
	err = e.do(func(h *C.gacc_engine) C.enum_gacc_status {
		return C.gacc_tensor_span(h, C.size_t(tensor), &off, &n)
	})
	return int(off), int(n), err
}

// Device is where the engine runs: DeviceCPU or a CUDA ordinal.
func (e *Engine) Device() (int32, error) {
	var d C.int32_t
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_device(h, &d) })
	return int32(d), err
}

func firstOrNil[T any](s []T) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Pointer(&s[0])
}

func (e *Engine) microbatch(p unsafe.Pointer, dtype Dtype, n int, weight float64) error {
	return e.do(func(h *C.gacc_engine) C.enum_gacc_status {
		return C.gacc_microbatch(h, p, C.uint32_t(dtype), C.size_t(n), C.double(weight))
	})
}

// Microbatch folds one micro-batch gradient (all tensors concatenated, fp32) into
// the window. weight is the number of samples or tokens behind it.
func (e *Engine) Microbatch(grad []float32, weight float64) error {
	err := e.microbatch(firstOrNil(grad), F32, len(grad), weight)
	runtime.KeepAlive(grad)
	return err
}

// MicrobatchF16 is Microbatch for IEEE half-precision bits (see F16FromFloat32).
func (e *Engine) MicrobatchF16(grad []uint16, weight float64) error {
	err := e.microbatch(firstOrNil(grad), F16, len(grad), weight)
	runtime.KeepAlive(grad)
	return err
}

// MicrobatchBF16 is Microbatch for bfloat16 bits (see BF16FromFloat32).
func (e *Engine) MicrobatchBF16(grad []uint16, weight float64) error {
	err := e.microbatch(firstOrNil(grad), BF16, len(grad), weight)
	runtime.KeepAlive(grad)
	return err
}

// MicrobatchPtr passes a gradient that lives outside Go's heap: C memory, or device
// memory on a CUDA engine (e.g. from a CUDA binding), numel elements of dtype.
func (e *Engine) MicrobatchPtr(grad unsafe.Pointer, dtype Dtype, numel int, weight float64) error {
	if numel < 0 {
		return &Error{Status: StatusInvalidArgument, Msg: "gacc: numel is negative"}
	}
	return e.microbatch(grad, dtype, numel, weight)
}

// Step closes the window, applies the update and reports what happened. A skipped
// update (non-finite gradient) is not an error: info.Applied is false.
func (e *Engine) Step() (StepInfo, error) {
	var info C.gacc_step_info
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_step(h, &info) })
	if err != nil {
		return StepInfo{}, err
	}
	return StepInfo{
		Applied:      info.applied != 0,
		GradNorm:     float32(info.grad_norm),
		ClipCoef:     float32(info.clip_coef),
		LossScale:    float32(info.loss_scale),
		Step:         uint64(info.step),
		Microbatches: uint32(info.microbatches),
		TotalWeight:  float64(info.total_weight),
		Dropped:      uint32(info.dropped_microbatches),
	}, nil
}

// NCCLUniqueID makes a new NCCL unique id for one data-parallel group
// (gacc_nccl_unique_id): make it on one rank and send its 128 bytes to every rank's
// SetNCCL by your own means. NCCL is loaded at run time (GACC_NCCL_LIB, else
// libnccl.so.2); without it the error's Status is DeviceUnavailable.
func NCCLUniqueID() ([128]byte, error) {
	var id C.gacc_nccl_id
	var out [128]byte
	if err := call(func() C.enum_gacc_status { return C.gacc_nccl_unique_id(&id) }); err != nil {
		return out, err
	}
	for i := range out {
		out[i] = byte(id.internal[i])
	}
	return out, nil
}

// SetNCCL makes a CUDA engine rank `rank` of a `worldSize`-rank data-parallel group
// over NCCL (gacc_set_nccl; blocks until every rank has called it). Call it right
// after New, with an empty window.
func (e *Engine) SetNCCL(id [128]byte, rank, worldSize int32) error {
	var cid C.gacc_nccl_id
	for i := range id {
		cid.internal[i] = C.uint8_t(id[i])
	}
	return e.do(func(h *C.gacc_engine) C.enum_gacc_status {
		return C.gacc_set_nccl(h, &cid, C.int32_t(rank), C.int32_t(worldSize))
	})
}

// StepAsync closes the window without waiting for the device and without a report.
func (e *Engine) StepAsync() error {
	return e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_step(h, nil) })
}

// Zero drops the open window without stepping.
func (e *Engine) Zero() error {
	return e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_zero(h) })
}

// ParamsRead returns a copy of the fp32 master weights, all tensors concatenated.
func (e *Engine) ParamsRead() ([]float32, error) {
	n, err := e.Numel()
	if err != nil {
		return nil, err
	}
	out := make([]float32, n)
	if err := e.ParamsReadInto(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ParamsReadInto copies the fp32 master weights into dst (len(dst) == Numel).
func (e *Engine) ParamsReadInto(dst []float32) error {
	p := (*C.float)(firstOrNil(dst))
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_params_read(h, p, C.size_t(len(dst))) })
	runtime.KeepAlive(dst)
	return err
}

// ParamsWrite replaces the fp32 master weights (len(src) == Numel).
func (e *Engine) ParamsWrite(src []float32) error {
	p := (*C.float)(firstOrNil(src))
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_params_write(h, p, C.size_t(len(src))) })
	runtime.KeepAlive(src)
	return err
}

// ParamsPtr is the engine's own buffer for one tensor (fp32 master, or the
// FP16/BF16 working copy when dtype matches the precision). Device memory on a CUDA
// engine. Valid until Close; do not keep it past that.
func (e *Engine) ParamsPtr(tensor int, dtype Dtype) (unsafe.Pointer, error) {
	if tensor < 0 {
		return nil, &Error{Status: StatusInvalidArgument, Msg: fmt.Sprintf("gacc: tensor index %d is negative", tensor)}
	}
	var p unsafe.Pointer
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status {
		return C.gacc_params_ptr(h, C.size_t(tensor), C.uint32_t(dtype), &p)
	})
	return p, err
}

// LossScale is the current loss scale S (1 unless PrecisionFP16): multiply the loss
// by it before computing gradients.
func (e *Engine) LossScale() (float32, error) {
	var s C.float
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_loss_scale(h, &s) })
	return float32(s), err
}

// LossScalePtr is the address of S (device memory on a CUDA engine), valid until Close.
func (e *Engine) LossScalePtr() (unsafe.Pointer, error) {
	var p *C.float
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_loss_scale_ptr(h, &p) })
	return unsafe.Pointer(p), err
}

// SetLR sets the learning rate used from the next step on.
func (e *Engine) SetLR(lr float32) error {
	return e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_set_lr(h, C.float(lr)) })
}

// LR is the learning rate in use.
func (e *Engine) LR() (float32, error) {
	var v C.float
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_get_lr(h, &v) })
	return float32(v), err
}

// SetStream (CUDA engines) orders gacc's work on the caller's CUstream; nil returns
// to the engine's own stream.
func (e *Engine) SetStream(stream unsafe.Pointer) error {
	return e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_set_stream(h, stream) })
}

// cEngine lets the tests (which cannot use cgo) hold a raw handle.
type cEngine = C.gacc_engine

// isLive reports whether a raw handle is still a live engine (for tests of Close
// and the finalizer).
func isLive(h *C.gacc_engine) bool {
	var n C.size_t
	return C.gacc_numel(h, &n) == C.GACC_OK
}

// Save writes the whole state (weights, optimizer, scaler, open window) to a
// safetensors file, atomically.
func (e *Engine) Save(path string) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	return e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_save(h, cpath) })
}

// Load reads a checkpoint into the engine; on error the engine is unchanged.
func (e *Engine) Load(path string) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	return e.do(func(h *C.gacc_engine) C.enum_gacc_status { return C.gacc_load(h, cpath) })
}

// FromCheckpoint creates an engine from a checkpoint alone, on the given device.
func FromCheckpoint(path string, device int32) (*Engine, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var h *C.gacc_engine
	err := call(func() C.enum_gacc_status {
		return C.gacc_create_from_checkpoint(cpath, C.int32_t(device), &h)
	})
	if err != nil {
		return nil, err
	}
	e := &Engine{}
	e.h.Store(h)
	runtime.SetFinalizer(e, (*Engine).Close)
	return e, nil
}

func (e *Engine) raw() *C.gacc_engine { return e.h.Load() }

// F16FromFloat32 converts to IEEE binary16 bits, rounding to nearest even
// (overflow to infinity, NaN stays NaN).
func F16FromFloat32(f float32) uint16 {
	x := math.Float32bits(f)
	sign := uint16(x>>16) & 0x8000
	abs := x & 0x7fffffff
	switch {
	case abs >= 0x7f800000: // inf, NaN
		if abs > 0x7f800000 {
			return sign | 0x7e00 | uint16((abs&0x7fffff)>>13)
		}
		return sign | 0x7c00
	case abs >= 0x477ff000: // rounds to >= 65520
		return sign | 0x7c00
	case abs < 0x33000000: // < 2^-25: zero
		return sign
	case abs < 0x38800000: // subnormal half
		exp := abs >> 23
		mant := (abs & 0x7fffff) | 0x800000
		shift := 126 - exp
		h := mant >> shift
		rem := mant & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	default:
		h := (abs >> 13) - (112 << 10)
		rem := abs & 0x1fff
		if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
}

// F16ToFloat32 converts IEEE binary16 bits to float32 (exact).
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0:
		e := uint32(113)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	default:
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	}
}

// BF16FromFloat32 converts to bfloat16 bits, rounding to nearest even.
func BF16FromFloat32(f float32) uint16 {
	x := math.Float32bits(f)
	if x&0x7fffffff > 0x7f800000 {
		return uint16(x>>16) | 0x40
	}
	x += 0x7fff + (x>>16)&1
	return uint16(x >> 16)
}

// BF16ToFloat32 converts bfloat16 bits to float32 (exact).
func BF16ToFloat32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// ToF16 converts a float32 slice to half-precision bits.
func ToF16(src []float32) []uint16 {
	out := make([]uint16, len(src))
	for i, v := range src {
		out[i] = F16FromFloat32(v)
	}
	return out
}

// ToBF16 converts a float32 slice to bfloat16 bits.
func ToBF16(src []float32) []uint16 {
	out := make([]uint16, len(src))
	for i, v := range src {
		out[i] = BF16FromFloat32(v)
	}
	return out
}
