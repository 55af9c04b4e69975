// A minimal training loop with gacc from Go: logistic regression on a synthetic
// problem, 4 micro-batches of 16 samples per optimizer step.
//
//	cargo build --release && cd bindings/go && go run ./example
package main

import (
	"errors"
	"fmt"
	"log"
	"math"
	"math/rand"

	gacc "github.com/gacc/gacc/bindings/go"
)

const (
	features     = 4
	microbatch   = 16
	microbatches = 4 // per step
	steps        = 300
)

func main() {
	cfg := gacc.DefaultConfig()
	cfg.Device = gacc.DeviceCPU
	cfg.LR = 0.05
	cfg.WeightDecay = 0
	eng, err := gacc.New(cfg,
		gacc.Tensor{Name: "w", Numel: features},
		gacc.Tensor{Name: "b", Numel: 1, NoWeightDecay: true})
	if err != nil {
		log.Fatal(err)
	}
	defer eng.Close()

	trueW := []float32{1.5, -2, 0.5, 3}
	rng := rand.New(rand.NewSource(1))
	sample := func() ([]float32, float32) {
		x := make([]float32, features)
		z := float32(-0.5)
		for j := range x {
			x[j] = float32(rng.NormFloat64())
			z += trueW[j] * x[j]
		}
		if z > 0 {
			return x, 1
		}
		return x, 0
	}

	params, _ := eng.ParamsRead()
	grad := make([]float32, features+1)
	for step := 1; step <= steps; step++ {
		loss := 0.0
		for k := 0; k < microbatches; k++ {
			for j := range grad {
				grad[j] = 0
			}
			for i := 0; i < microbatch; i++ {
				x, y := sample()
				z := params[features]
				for j := range x {
					z += params[j] * x[j]
				}
				q := float32(1 / (1 + math.Exp(-float64(z))))
				for j := range x {
					grad[j] += (q - y) * x[j] / microbatch
				}
				grad[features] += (q - y) / microbatch
				loss -= float64(y)*math.Log(float64(q)+1e-7) + float64(1-y)*math.Log(float64(1-q)+1e-7)
			}
			if err := eng.Microbatch(grad, microbatch); err != nil {
				log.Fatal(err)
			}
		}
		info, err := eng.Step()
		if err != nil {
			log.Fatal(err)
		}
		if err := eng.ParamsReadInto(params); err != nil {
			log.Fatal(err)
		}
		if step%50 == 0 {
			fmt.Printf("step %3d  loss %.4f  |g| %.4f\n", info.Step, loss/(microbatch*microbatches), info.GradNorm)
		}
	}
	fmt.Printf("learned w %.2f b %.2f (direction of %v, -0.5)\n", params[:features], params[features], trueW)

	// What an error looks like.
	err = eng.Microbatch(grad[:2], 1)
	var ge *gacc.Error
	if errors.As(err, &ge) && errors.Is(err, gacc.ErrInvalidArgument) {
		fmt.Printf("error: status %v, message %q\n", ge.Status, ge.Msg)
	}
}
