package gacc

/*
#include <stdlib.h>
#include <gacc.h>

// Fills entry i of a C-allocated gacc_grad table (see MicrobatchTensors).
static void gacc_go_set_grad(gacc_grad *table, size_t i, const void *data, uint32_t dtype, size_t numel) {
	table[i].data = data;
	table[i].dtype = dtype;
	table[i].numel = numel;
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Grad is one tensor's gradient for MicrobatchTensors: build it with GradF32,
// GradF16, GradBF16 (Go slices) or GradPtr (C or device memory); NoGrad (the zero
// value) means no gradient for that tensor in this micro-batch.
type Grad struct {
	ptr   unsafe.Pointer
	dtype Dtype
	numel int
	keep  any // the Go slice behind ptr, kept alive for the call
}

// NoGrad is "no gradient for this tensor in this micro-batch" (a NULL entry).
var NoGrad = Grad{}

// GradF32 is a tensor's fp32 gradient.
func GradF32(g []float32) Grad {
	return Grad{ptr: firstOrNil(g), dtype: F32, numel: len(g), keep: g}
}

// GradF16 is a tensor's gradient as IEEE half-precision bits (see F16FromFloat32).
func GradF16(g []uint16) Grad {
	return Grad{ptr: firstOrNil(g), dtype: F16, numel: len(g), keep: g}
}

// GradBF16 is a tensor's gradient as bfloat16 bits (see BF16FromFloat32).
func GradBF16(g []uint16) Grad {
	return Grad{ptr: firstOrNil(g), dtype: BF16, numel: len(g), keep: g}
}

// GradPtr is a gradient outside Go's heap: C memory, or device memory on a CUDA
// engine, numel elements of dtype.
func GradPtr(p unsafe.Pointer, dtype Dtype, numel int) Grad {
	return Grad{ptr: p, dtype: dtype, numel: numel}
}

// MicrobatchTensors folds one micro-batch given tensor by tensor into the window
// (gacc_microbatch_tensors): grads[t] is tensor t's gradient in creation order, each
// in its own dtype, NoGrad for none. Same meaning as Microbatch on the concatenation.
// Atomic: a rejected call changes nothing and its message names the tensor index.
//
// cgo: the C call needs a table of pointers. Go 1.19 (this module's floor) has no
// runtime.Pinner, so the table is built in C memory for the duration of the call
// only; the slices are kept alive across it (Go's collector does not move heap
// objects) and the library keeps no pointer after it returns.
func (e *Engine) MicrobatchTensors(grads []Grad, weight float64) error {
	for i, g := range grads {
		if g.numel < 0 {
			return &Error{Status: StatusInvalidArgument, Msg: fmt.Sprintf("gacc: grads[%d].numel is negative", i)}
		}
	}
	var table *C.gacc_grad
	if len(grads) > 0 {
		table = (*C.gacc_grad)(C.malloc(C.size_t(len(grads)) * C.size_t(unsafe.Sizeof(C.gacc_grad{}))))
		if table == nil {
			return &Error{Status: StatusOutOfMemory, Msg: "gacc: no memory for the gradient table"}
		}
		defer C.free(unsafe.Pointer(table))
		for i, g := range grads {
			C.gacc_go_set_grad(table, C.size_t(i), g.ptr, C.uint32_t(g.dtype), C.size_t(g.numel))
		}
	}
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status {
		return C.gacc_microbatch_tensors(h, table, C.size_t(len(grads)), C.double(weight))
	})
	runtime.KeepAlive(grads)
	return err
}

// AccumulatorPtr is one tensor's fp32 accumulator (gacc_accumulator_ptr): zero when
// a window opens, holding what the window's micro-batches added, stable until Close.
// Device memory on a CUDA engine (write it on the stream given to SetStream).
func (e *Engine) AccumulatorPtr(tensor int) (unsafe.Pointer, error) {
	if tensor < 0 {
		return nil, &Error{Status: StatusInvalidArgument, Msg: fmt.Sprintf("gacc: tensor index %d is negative", tensor)}
	}
	var p *C.float
	err := e.do(func(h *C.gacc_engine) C.enum_gacc_status {
		return C.gacc_accumulator_ptr(h, C.size_t(tensor), &p)
	})
	return unsafe.Pointer(p), err
}

// Accumulator is one tensor's fp32 accumulator as a slice over the engine's own
// memory (CPU engines only: on a CUDA engine it is device memory, use
// AccumulatorPtr). Valid until Close; a host adds its micro-batch into it, then calls
// MicrobatchInplace.
func (e *Engine) Accumulator(tensor int) ([]float32, error) {
	dev, err := e.Device()
	if err != nil {
		return nil, err
	}
	if dev >= 0 {
		msg := "gacc: the accumulator of a CUDA engine is device memory (use AccumulatorPtr)"
		return nil, &Error{Status: StatusInvalidState, Msg: msg}
	}
	_, n, err := e.TensorSpan(tensor)
	if err != nil {
		return nil, err
	}
	p, err := e.AccumulatorPtr(tensor)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*float32)(p), n), nil
}

// MicrobatchInplace books one micro-batch that the host added into the accumulators
// itself (gacc_microbatch_inplace): total += weight, no data moves. Refused
// (ErrInvalidState) with compensated accumulation or drop mode.
func (e *Engine) MicrobatchInplace(weight float64) error {
	return e.do(func(h *C.gacc_engine) C.enum_gacc_status {
		return C.gacc_microbatch_inplace(h, C.double(weight))
	})
}
