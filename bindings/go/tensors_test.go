package gacc

import (
	"errors"
	"math"
	"math/rand"
	"strings"
	"testing"
)

func threeTensors() []Tensor {
	return []Tensor{{Name: "w", Numel: 30}, {Name: "b", Numel: 3, NoWeightDecay: true}, {Name: "v", Numel: 50}}
}

func cpuEngine(t *testing.T) *Engine {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Device = DeviceCPU
	e, err := New(cfg, threeTensors()...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func sameBits(t *testing.T, what string, a, b []float32) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: lengths %d and %d", what, len(a), len(b))
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("%s: element %d: %g vs %g", what, i, a[i], b[i])
		}
	}
}

// Per-tensor (f32, f16, bf16, NoGrad) equals Microbatch on the f32 concatenation bit
// for bit; in place equals Microbatch bit for bit; rejections name the index.
func TestMicrobatchTensorsAndInplace(t *testing.T) {
	a, b := cpuEngine(t), cpuEngine(t)
	defer a.Close()
	defer b.Close()
	rng := rand.New(rand.NewSource(3))
	r := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	for mb := 0; mb < 3; mb++ {
		w := r(30)
		bias := make([]uint16, 3)
		for i, x := range r(3) {
			bias[i] = F16FromFloat32(x)
		}
		v := make([]uint16, 50)
		for i, x := range r(50) {
			v[i] = BF16FromFloat32(x)
		}
		vGrad := GradBF16(v)
		if mb == 1 {
			vGrad = NoGrad
		}
		if err := a.MicrobatchTensors([]Grad{GradF32(w), GradF16(bias), vGrad}, 2); err != nil {
			t.Fatal(err)
		}
		flat := append([]float32{}, w...)
		for _, h := range bias {
			flat = append(flat, F16ToFloat32(h))
		}
		for _, x := range v {
			if mb == 1 {
				flat = append(flat, 0)
			} else {
				flat = append(flat, BF16ToFloat32(x))
			}
		}
		if err := b.Microbatch(flat, 2); err != nil {
			t.Fatal(err)
		}
	}
	for tensor := 0; tensor < 3; tensor++ {
		x, err := a.Accumulator(tensor)
		if err != nil {
			t.Fatal(err)
		}
		y, _ := b.Accumulator(tensor)
		sameBits(t, "accumulator", x, y)
	}
	err := a.MicrobatchTensors([]Grad{GradF32(make([]float32, 29)), NoGrad, NoGrad}, 1)
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "grads[0].numel") {
		t.Fatalf("wrong numel: %v", err)
	}
	if err := a.MicrobatchTensors([]Grad{NoGrad}, 1); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("n_grads: %v", err)
	}
	ia, err := a.Step()
	if err != nil {
		t.Fatal(err)
	}
	ib, _ := b.Step()
	if ia.Microbatches != 3 || ia.TotalWeight != 6 || ia.GradNorm != ib.GradNorm {
		t.Fatalf("step info %+v vs %+v", ia, ib)
	}
	pa, _ := a.ParamsRead()
	pb, _ := b.ParamsRead()
	sameBits(t, "params", pa, pb)

	g := r(83)
	off := 0
	for tensor := 0; tensor < 3; tensor++ {
		acc, err := a.Accumulator(tensor)
		if err != nil {
			t.Fatal(err)
		}
		for i := range acc {
			acc[i] += 1.5 * g[off+i]
		}
		off += len(acc)
	}
	if err := a.MicrobatchInplace(1.5); err != nil {
		t.Fatal(err)
	}
	if err := b.Microbatch(g, 1.5); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Step(); err != nil {
		t.Fatal(err)
	}
	b.Step()
	pa, _ = a.ParamsRead()
	pb, _ = b.ParamsRead()
	sameBits(t, "params after in place", pa, pb)
	acc, _ := a.Accumulator(2)
	if acc[49] != 0 {
		t.Fatal("accumulator not zero after the step")
	}
}

func TestMicrobatchInplaceRefusedInDropMode(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Device = DeviceCPU
	cfg.DropNonfiniteMicrobatches = true
	e, err := New(cfg, threeTensors()...)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	err = e.MicrobatchInplace(1)
	if !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "drop_nonfinite_microbatches") {
		t.Fatalf("got %v", err)
	}
}
