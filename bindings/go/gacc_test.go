package gacc

import (
	"errors"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// A small linear regression: y = w . x + b, loss = mean (pred - y)^2 / 2.
const dim = 6

type dataset struct {
	x [][dim]float32
	y []float32
}

func makeData(n int, seed int64) dataset {
	rng := rand.New(rand.NewSource(seed))
	var d dataset
	for i := 0; i < n; i++ {
		var xi [dim]float32
		y := float32(0.5)
		for j := 0; j < dim; j++ {
			xi[j] = float32(rng.NormFloat64())
			y += (0.3*float32(j) - 0.7) * xi[j]
		}
		d.x = append(d.x, xi)
		d.y = append(d.y, y+0.01*float32(rng.NormFloat64()))
	}
	return d
}

// gradMean is the gradient of the mean loss over samples [lo, hi).
func gradMean(p []float32, d dataset, lo, hi int) []float32 {
	g := make([]float32, dim+1)
	for i := lo; i < hi; i++ {
		pred := p[dim]
		for j := 0; j < dim; j++ {
			pred += p[j] * d.x[i][j]
		}
		r := pred - d.y[i]
		for j := 0; j < dim; j++ {
			g[j] += r * d.x[i][j]
		}
		g[dim] += r
	}
	inv := 1 / float32(hi-lo)
	for j := range g {
		g[j] *= inv
	}
	return g
}

func modelTensors() []Tensor {
	w := make([]float32, dim)
	for j := range w {
		w[j] = 0.1*float32(j) - 0.2
	}
	return []Tensor{{Name: "w", Numel: dim, Init: w}, {Name: "b", Numel: 1, Init: []float32{0.05}, NoWeightDecay: true}}
}

func train(t *testing.T, cfg Config, d dataset, cuts []int, steps int) []float32 {
	t.Helper()
	eng, err := New(cfg, modelTensors()...)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	p, err := eng.ParamsRead()
	if err != nil {
		t.Fatal(err)
	}
	for s := 0; s < steps; s++ {
		for k := 0; k+1 < len(cuts); k++ {
			if err := eng.Microbatch(gradMean(p, d, cuts[k], cuts[k+1]), float64(cuts[k+1]-cuts[k])); err != nil {
				t.Fatal(err)
			}
		}
		info, err := eng.Step()
		if err != nil {
			t.Fatal(err)
		}
		if !info.Applied || info.Microbatches != uint32(len(cuts)-1) || info.TotalWeight != float64(cuts[len(cuts)-1]) {
			t.Fatalf("unexpected step info %+v", info)
		}
		if err := eng.ParamsReadInto(p); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func assertClose(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: length %d, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Abs(float64(got[i]-want[i])) > 1e-6+1e-5*math.Abs(float64(want[i])) {
			t.Fatalf("%s: element %d = %.9g, want %.9g", what, i, got[i], want[i])
		}
	}
}

func cpuSGD(lr, momentum float32) Config {
	c := DefaultConfig()
	c.Device = DeviceCPU
	c.Optimizer = SGD
	c.LR = lr
	c.Momentum = momentum
	c.WeightDecay = 0
	return c
}

func TestHeaderMatchesLibrary(t *testing.T) {
	if !HeaderMatchesLibrary() || Version() != HeaderVersion {
		t.Fatalf("library %s does not match header %s", Version(), HeaderVersion)
	}
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	if c.Device != DeviceAuto || c.Optimizer != AdamW || c.LR != 1e-3 || c.Beta2 != 0.999 || c.InitScale != 65536 || c.GrowthInterval != 2000 || c.GradReduction != GradsMean {
		t.Fatalf("unexpected defaults %+v", c)
	}
}

func TestNumericsOptions(t *testing.T) {
	c := DefaultConfig()
	if c.Hysteresis != 1 || c.ConsecutiveHysteresis || c.MinLossScale != 0 || c.MaxLossScale != 0 ||
		c.DropNonfiniteMicrobatches || c.CompensatedAccumulation || c.StochasticRounding || c.Seed != 0 {
		t.Fatalf("unexpected numerics defaults %+v", c)
	}
	c.Device = DeviceCPU
	c.Precision = PrecisionFP16
	c.InitScale = 1024
	c.Hysteresis = 2
	c.MinLossScale = 1
	c.DropNonfiniteMicrobatches = true
	c.CompensatedAccumulation = true
	c.StochasticRounding = true
	c.Seed = 7
	eng, err := New(c, Tensor{Name: "w", Numel: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	nan := float32(math.NaN())
	if err := eng.Microbatch([]float32{1, nan, 0}, 1); err != nil {
		t.Fatal(err)
	}
	if err := eng.Microbatch([]float32{0.5, -0.25, 1}, 2); err != nil {
		t.Fatal(err)
	}
	info, err := eng.Step()
	if err != nil {
		t.Fatal(err)
	}
	if !info.Applied || info.Dropped != 1 || info.Microbatches != 2 || info.TotalWeight != 2 || info.LossScale != 1024 {
		t.Fatalf("drop mode with hysteresis: %+v", info)
	}
	bad := DefaultConfig()
	bad.Device = DeviceCPU
	bad.StochasticRounding = true
	if _, err := New(bad, Tensor{Name: "w", Numel: 3}); err == nil || !strings.Contains(err.Error(), "stochastic_rounding") {
		t.Fatalf("stochastic rounding with FP32 must be refused, got %v", err)
	}
}

// Window 1: GradScaler doubles on every clean step; DeepSpeed's DynamicLossScaler not
// on the first one (its stable interval is 0 there).
func TestLossScalePolicy(t *testing.T) {
	if DefaultConfig().LossScalePolicy != LossScaleGradScaler {
		t.Fatal("the default policy must be GradScaler")
	}
	for _, tc := range []struct {
		policy LossScalePolicy
		want   float32
	}{{LossScaleGradScaler, 4096}, {LossScaleDeepSpeed, 2048}} {
		c := DefaultConfig()
		c.Device = DeviceCPU
		c.Precision = PrecisionFP16
		c.InitScale = 1024
		c.GrowthInterval = 1
		c.LossScalePolicy = tc.policy
		eng, err := New(c, Tensor{Name: "w", Numel: 3})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if err := eng.Microbatch([]float32{0.5, -0.25, 1}, 1); err != nil {
				t.Fatal(err)
			}
			if _, err := eng.Step(); err != nil {
				t.Fatal(err)
			}
		}
		if s, _ := eng.LossScale(); s != tc.want {
			t.Fatalf("policy %d: scale %v, want %v", tc.policy, s, tc.want)
		}
		eng.Close()
	}
	bad := DefaultConfig()
	bad.Device = DeviceCPU
	bad.LossScalePolicy = 7
	if _, err := New(bad, Tensor{Name: "w", Numel: 3}); err == nil || !strings.Contains(err.Error(), "loss_scale_policy") {
		t.Fatalf("an unknown policy must be refused, got %v", err)
	}
}

// K micro-batches weighted by their sizes give the same update as one batch.
func TestMicrobatchEquivalence(t *testing.T) {
	d := makeData(48, 1)
	sgd := cpuSGD(0.05, 0.9)
	sgd.WeightDecay = 0.01
	one := train(t, sgd, d, []int{0, 48}, 5)
	assertClose(t, "sgd even", train(t, sgd, d, []int{0, 12, 24, 36, 48}, 5), one)
	assertClose(t, "sgd uneven", train(t, sgd, d, []int{0, 5, 16, 40, 48}, 5), one)

	adamw := DefaultConfig()
	adamw.Device = DeviceCPU
	adamw.LR = 0.01
	oneA := train(t, adamw, d, []int{0, 48}, 4)
	assertClose(t, "adamw", train(t, adamw, d, []int{0, 7, 8, 30, 48}, 4), oneA)

	// And one plain SGD step equals p - lr * g by hand.
	eng, err := New(cpuSGD(0.1, 0), modelTensors()...)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	p0, _ := eng.ParamsRead()
	g := gradMean(p0, d, 0, 48)
	if err := eng.Microbatch(gradMean(p0, d, 0, 20), 20); err != nil {
		t.Fatal(err)
	}
	if err := eng.Microbatch(gradMean(p0, d, 20, 48), 28); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Step(); err != nil {
		t.Fatal(err)
	}
	want := make([]float32, len(p0))
	for i := range p0 {
		want[i] = p0[i] - 0.1*g[i]
	}
	got, _ := eng.ParamsRead()
	assertClose(t, "sgd by hand", got, want)
}

func TestHalfPrecisionMicrobatches(t *testing.T) {
	g := []float32{0.5, -0.25, 1.0 / 3.0, 2, -1e-3, 7, 0.125}
	h, b := ToF16(g), ToBF16(g)
	hf, bf := make([]float32, len(g)), make([]float32, len(g))
	for i := range g {
		hf[i], bf[i] = F16ToFloat32(h[i]), BF16ToFloat32(b[i])
	}
	run := func(feed func(e *Engine) error) []float32 {
		e, err := New(cpuSGD(1, 0), Tensor{Numel: len(g)})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		if err := feed(e); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Step(); err != nil {
			t.Fatal(err)
		}
		p, _ := e.ParamsRead()
		return p
	}
	assertClose(t, "f16", run(func(e *Engine) error { return e.MicrobatchF16(h, 2) }), run(func(e *Engine) error { return e.Microbatch(hf, 2) }))
	assertClose(t, "bf16", run(func(e *Engine) error { return e.MicrobatchBF16(b, 2) }), run(func(e *Engine) error { return e.Microbatch(bf, 2) }))
}

func TestHalfConversions(t *testing.T) {
	cases := []struct {
		f    float32
		bits uint16
	}{
		{1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {65519, 0x7bff}, {65520, 0x7c00},
		{float32(math.Ldexp(1, -24)), 0x0001}, {float32(math.Ldexp(1, -25)), 0},
		{float32(math.Ldexp(1.5, -25)), 0x0001}, {1 + float32(math.Ldexp(1, -11)), 0x3c00},
		{1 + 3*float32(math.Ldexp(1, -11)), 0x3c02}, {float32(math.Inf(-1)), 0xfc00},
	}
	for _, c := range cases {
		if got := F16FromFloat32(c.f); got != c.bits {
			t.Errorf("F16FromFloat32(%g) = %#04x, want %#04x", c.f, got, c.bits)
		}
	}
	if h := F16FromFloat32(float32(math.NaN())); h&0x7c00 != 0x7c00 || h&0x3ff == 0 {
		t.Errorf("NaN -> %#04x", h)
	}
	for b := 0; b < 0x10000; b++ {
		if b&0x7c00 == 0x7c00 {
			continue
		}
		if got := F16FromFloat32(F16ToFloat32(uint16(b))); got != uint16(b) {
			t.Fatalf("half %#04x does not round-trip (%#04x)", b, got)
		}
	}
	if BF16FromFloat32(1) != 0x3f80 || BF16FromFloat32(1+float32(math.Ldexp(3, -8))) != 0x3f82 ||
		BF16FromFloat32(1+float32(math.Ldexp(1, -8))) != 0x3f80 || BF16ToFloat32(0xc040) != -3 {
		t.Error("bfloat16 conversion")
	}
	if !math.IsNaN(float64(BF16ToFloat32(BF16FromFloat32(float32(math.NaN()))))) {
		t.Error("bfloat16 NaN")
	}
}

// expectErr checks the status, errors.Is against the sentinel and a fragment of the message.
func expectErr(t *testing.T, err error, sentinel *Error, fragment string) {
	t.Helper()
	var ge *Error
	if !errors.As(err, &ge) {
		t.Fatalf("got %v, want a *gacc.Error with %v", err, sentinel.Status)
	}
	if !errors.Is(err, sentinel) || ge.Status != sentinel.Status {
		t.Fatalf("got status %v (%q), want %v", ge.Status, ge.Msg, sentinel.Status)
	}
	if !strings.Contains(ge.Msg, fragment) || !strings.HasPrefix(err.Error(), sentinel.Status.String()+": ") {
		t.Fatalf("error %q does not mention %q", err.Error(), fragment)
	}
}

func TestBadInputs(t *testing.T) {
	eng, err := New(cpuSGD(0.1, 0), Tensor{Name: "p", Numel: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	grad := []float32{1, 2, 3, 4}
	expectErr(t, eng.Microbatch(grad[:3], 1), ErrInvalidArgument, "numel")
	expectErr(t, eng.Microbatch(grad, math.NaN()), ErrInvalidArgument, "weight")
	expectErr(t, eng.Microbatch(grad, math.Inf(1)), ErrInvalidArgument, "weight")
	expectErr(t, eng.Microbatch(grad, -1), ErrInvalidArgument, "weight")
	expectErr(t, eng.Microbatch(nil, 1), ErrNullPointer, "grad")
	expectErr(t, eng.MicrobatchF16(make([]uint16, 5), 1), ErrInvalidArgument, "numel")
	expectErr(t, eng.MicrobatchPtr(nil, F32, 4, 1), ErrNullPointer, "grad")
	// None of the rejected calls accumulated anything.
	_, err = eng.Step()
	expectErr(t, err, ErrInvalidState, "gacc_step")
	expectErr(t, eng.ParamsReadInto(make([]float32, 5)), ErrInvalidArgument, "numel")
	expectErr(t, eng.ParamsWrite(make([]float32, 3)), ErrInvalidArgument, "numel")
	expectErr(t, eng.SetLR(float32(math.NaN())), ErrInvalidArgument, "lr")
	_, _, err = eng.TensorSpan(1)
	expectErr(t, err, ErrInvalidArgument, "tensor")
	_, err = eng.ParamsPtr(0, Dtype(9))
	expectErr(t, err, ErrInvalidArgument, "dtype")

	bad := cpuSGD(-1, 0)
	_, err = New(bad, Tensor{Numel: 4})
	expectErr(t, err, ErrInvalidArgument, "lr")
	bad = DefaultConfig()
	bad.Beta1 = 1
	_, err = New(bad, Tensor{Numel: 4})
	expectErr(t, err, ErrInvalidArgument, "beta1")
	bad = DefaultConfig()
	bad.Optimizer = Optimizer(42)
	_, err = New(bad, Tensor{Numel: 4})
	expectErr(t, err, ErrInvalidArgument, "optimizer")
	_, err = New(DefaultConfig())
	expectErr(t, err, ErrInvalidArgument, "n_tensors")
	_, err = New(DefaultConfig(), Tensor{Numel: 0})
	expectErr(t, err, ErrInvalidArgument, "numel")
	_, err = New(DefaultConfig(), Tensor{Numel: 3, Init: []float32{1}})
	expectErr(t, err, ErrInvalidArgument, "initial values")

	// The engine still works after all that.
	if err := eng.Microbatch(grad, 2); err != nil {
		t.Fatal(err)
	}
	if info, err := eng.Step(); err != nil || !info.Applied {
		t.Fatalf("step after errors: %+v %v", info, err)
	}
}

func TestSkippedStepIsNotAnError(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Device = DeviceCPU
	cfg.Precision = PrecisionFP16
	cfg.InitScale = 1024
	eng, err := New(cfg, Tensor{Numel: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if err := eng.Microbatch([]float32{1, float32(math.Inf(1)), 0}, 1); err != nil {
		t.Fatal(err)
	}
	info, err := eng.Step()
	if err != nil || info.Applied || info.LossScale != 512 {
		t.Fatalf("got %+v, %v", info, err)
	}
	if s, _ := eng.LossScale(); s != 512 {
		t.Fatalf("loss scale %v", s)
	}
}

// Error messages are per OS thread in C; each goroutine must see its own.
func TestErrorsFromManyGoroutines(t *testing.T) {
	eng, err := New(cpuSGD(0.1, 0), Tensor{Numel: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				var err error
				var want string
				if (g+i)%2 == 0 {
					err, want = eng.Microbatch(make([]float32, 3), 1), "numel"
				} else {
					err, want = eng.Microbatch(make([]float32, 4), -1), "weight"
				}
				var ge *Error
				if !errors.As(err, &ge) || !strings.Contains(ge.Msg, want) {
					errs <- err
					return
				}
				runtime.Gosched()
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("wrong error under concurrency: %v", err)
	}
}

func TestCloseAndFinalizer(t *testing.T) {
	eng, err := New(cpuSGD(0.1, 0), Tensor{Numel: 2})
	if err != nil {
		t.Fatal(err)
	}
	h := eng.raw()
	if !isLive(h) {
		t.Fatal("new engine is not live")
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	if isLive(h) {
		t.Fatal("Close did not destroy the engine")
	}
	if err := eng.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = eng.Numel()
	expectErr(t, err, ErrInvalidHandle, "closed")
	expectErr(t, eng.Microbatch([]float32{1, 2}, 1), ErrInvalidHandle, "closed")

	// Forgotten engine: the finalizer destroys it.
	leaked := func() *cEngine {
		e, err := New(cpuSGD(0.1, 0), Tensor{Numel: 2})
		if err != nil {
			t.Fatal(err)
		}
		return e.raw()
	}()
	deadline := time.Now().Add(5 * time.Second)
	for isLive(leaked) && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if isLive(leaked) {
		t.Fatal("the finalizer did not destroy an unreachable engine")
	}
}

func TestParamsAndLR(t *testing.T) {
	eng, err := New(cpuSGD(0.1, 0), modelTensors()...)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if n, _ := eng.NTensors(); n != 2 {
		t.Fatalf("NTensors %d", n)
	}
	if off, n, err := eng.TensorSpan(1); err != nil || off != dim || n != 1 {
		t.Fatalf("TensorSpan(1) = %d, %d, %v", off, n, err)
	}
	if d, _ := eng.Device(); d != DeviceCPU {
		t.Fatalf("device %d", d)
	}
	p := []float32{1, 2, 3, 4, 5, 6, 7}
	if err := eng.ParamsWrite(p); err != nil {
		t.Fatal(err)
	}
	got, _ := eng.ParamsRead()
	assertClose(t, "params", got, p)
	if ptr, err := eng.ParamsPtr(1, F32); err != nil || *(*float32)(ptr) != 7 {
		t.Fatalf("ParamsPtr: %v", err)
	}
	if err := eng.SetLR(0.25); err != nil {
		t.Fatal(err)
	}
	if lr, _ := eng.LR(); lr != 0.25 {
		t.Fatalf("lr %v", lr)
	}
	if s, _ := eng.LossScale(); s != 1 {
		t.Fatalf("loss scale %v", s)
	}
}

// Save, load and FromCheckpoint round-trip; a damaged file is StatusCorrupt and
// leaves the engine unchanged.
func TestCheckpointRoundTrip(t *testing.T) {
	cfg := cpuSGD(0.1, 0.9)
	e, err := New(cfg, Tensor{Name: "w", Numel: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	p := []float32{1, 2, 3, 4}
	if err := e.ParamsWrite(p); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ckpt.safetensors")
	if err := e.Save(path); err != nil {
		t.Fatal(err)
	}
	r, err := FromCheckpoint(path, DeviceCPU)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, _ := r.ParamsRead()
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("restored %v, want %v", got, p)
	}
	if err := os.WriteFile(path, []byte("not a checkpoint"), 0o644); err != nil {
		t.Fatal(err)
	}
	var gerr *Error
	if err := e.Load(path); !errors.As(err, &gerr) || gerr.Status != StatusCorrupt {
		t.Fatalf("want StatusCorrupt, got %v", err)
	}
	got, _ = e.ParamsRead()
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("a failed load changed the engine: %v", got)
	}
}
