//! Shared helpers for the tests: the one seeded generator, a thin safe wrapper
//! over the C ABI, and an independent f64 model of the contract (docs/c-api.md) written
//! from PyTorch's formulas (torch.optim.SGD / AdamW single-tensor paths,
//! torch.amp.GradScaler's _amp_update_scale_, torch.nn.utils.clip_grad_norm_).
//!
//! The model does NOT use gacc::engine::math. Every model value carries a
//! first-order bound on how far an fp32 evaluation of the same formula can drift
//! from the exact (f64) value: each fp32 operation adds u·|result| (u = 2^-24, the
//! unit roundoff of fp32) plus the propagated input errors (|∂z/∂x|·e_x). Tests
//! accept |gacc - model| <= TOL_FACTOR · bound + tiny, where TOL_FACTOR = 4 covers
//! gacc evaluating a mathematically equal formula in a different association order
//! (e.g. (-step·m)/denom versus -step·(m/denom)): each reassociation changes the
//! rounding by at most the same first-order terms. In practice the bound grows like
//! steps × 2^-24 × (|p| + lr·|update| × condition), which is what it measures.
#![allow(dead_code)]
// Index loops mirror the per-element formulas; `!(d <= tol)` is deliberate (NaN fails).
#![allow(clippy::needless_range_loop, clippy::type_complexity, clippy::neg_cmp_op_on_partial_ord)]

// The CUDA test bodies (the host shim, the fake driver and a real GPU run them).
pub mod cuda;

use std::ffi::CStr;
use std::os::raw::c_void;

use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status;

// ---------------------------------------------------------------------------------
// Seeded generator (splitmix64).

#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn range(&mut self, lo: i64, hi_inclusive: i64) -> i64 {
        lo + self.below((hi_inclusive - lo + 1) as u64) as i64
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, 1) with 24 random bits (exact in f32).
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-scale, scale).
    pub fn symmetric(&mut self, scale: f32) -> f32 {
        (self.unit_f32() * 2.0 - 1.0) * scale
    }
    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.symmetric(scale)).collect()
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// ±(1 + frac)·2^e with `bits` significant bits, e in [emin, emax]; exactly
    /// representable in any format with >= `bits` significand bits and that range.
    pub fn value(&mut self, bits: u32, emin: i32, emax: i32) -> f64 {
        let m = (1u64 << (bits - 1)) + self.below(1u64 << (bits - 1));
        let e = self.range(emin as i64, emax as i64) as i32;
        let s = if self.chance(0.5) { -1.0 } else { 1.0 };
        s * m as f64 * 2f64.powi(e - (bits as i32 - 1))
    }
}

// ---------------------------------------------------------------------------------
// Independent rounding to narrow formats (f64 arithmetic, ties to even).

/// Rounds x to a binary format with `p` significand bits (including the implicit
/// one), minimum normal exponent `emin` and largest finite value `max`; overflow
/// goes to ±inf exactly as IEEE round-to-nearest-even does (values at or above
/// max + ulp/2 become inf).
pub fn round_to_format(x: f64, p: i32, emin: i32, max: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let e = (x.abs().log2().floor() as i32).max(emin);
    // log2 may be off by one near powers of two: fix e so that 2^e <= |x| < 2^(e+1).
    let mut e = e;
    if e > emin && x.abs() < 2f64.powi(e) {
        e -= 1;
    }
    if x.abs() >= 2f64.powi(e + 1) {
        e += 1;
    }
    let ulp = 2f64.powi(e - (p - 1));
    let r = (x / ulp).round_ties_even() * ulp;
    if r.abs() > max {
        return x.signum() * f64::INFINITY;
    }
    if r == 0.0 {
        return 0.0 * x.signum();
    }
    r
}

pub fn rne_f16(x: f32) -> f64 {
    round_to_format(x as f64, 11, -14, 65504.0)
}
pub fn rne_bf16(x: f32) -> f64 {
    // Largest finite bf16: (2 - 2^-7) * 2^127.
    round_to_format(x as f64, 8, -126, (2.0 - 2f64.powi(-7)) * 2f64.powi(127))
}

pub fn f16_bits_to_f64(b: u16) -> f64 {
    half::f16::from_bits(b).to_f64()
}
pub fn bf16_bits_to_f64(b: u16) -> f64 {
    f32::from_bits((b as u32) << 16) as f64
}

// ---------------------------------------------------------------------------------
// Gradient buffers in any dtype.

#[derive(Clone, Debug)]
pub enum Grad {
    F32(Vec<f32>),
    F16(Vec<u16>),
    Bf16(Vec<u16>),
}

impl Grad {
    pub const NONFINITE: [f64; 3] = [f64::INFINITY, f64::NEG_INFINITY, f64::NAN];

    /// Encodes f64 values into `dtype` (RNE via the half crate for narrow types).
    pub fn encode(dtype: u32, xs: &[f64]) -> Grad {
        match dtype {
            GACC_DTYPE_F32 => Grad::F32(xs.iter().map(|&x| x as f32).collect()),
            GACC_DTYPE_F16 => Grad::F16(xs.iter().map(|&x| half::f16::from_f64(x).to_bits()).collect()),
            GACC_DTYPE_BF16 => Grad::Bf16(xs.iter().map(|&x| half::bf16::from_f64(x).to_bits()).collect()),
            _ => unreachable!(),
        }
    }
    pub fn dtype(&self) -> u32 {
        match self {
            Grad::F32(_) => GACC_DTYPE_F32,
            Grad::F16(_) => GACC_DTYPE_F16,
            Grad::Bf16(_) => GACC_DTYPE_BF16,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Grad::F32(v) => v.len(),
            Grad::F16(v) | Grad::Bf16(v) => v.len(),
        }
    }
    pub fn ptr(&self) -> *const c_void {
        match self {
            Grad::F32(v) => v.as_ptr() as *const c_void,
            Grad::F16(v) | Grad::Bf16(v) => v.as_ptr() as *const c_void,
        }
    }
    /// The exact values the engine receives, widened to f64.
    pub fn values(&self) -> Vec<f64> {
        match self {
            Grad::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Grad::F16(v) => v.iter().map(|&b| f16_bits_to_f64(b)).collect(),
            Grad::Bf16(v) => v.iter().map(|&b| bf16_bits_to_f64(b)).collect(),
        }
    }
    /// Puts inf, -inf or NaN (kind 0, 1, 2) at `i`.
    pub fn poison(&mut self, i: usize, kind: usize) {
        let x = Grad::NONFINITE[kind];
        match self {
            Grad::F32(v) => v[i] = x as f32,
            Grad::F16(v) => v[i] = [0x7C00, 0xFC00, 0x7E00][kind],
            Grad::Bf16(v) => v[i] = [0x7F80, 0xFF80, 0x7FC0][kind],
        }
        debug_assert!(x.is_nan() == self.values()[i].is_nan());
    }
}

/// A random gradient of n elements in `dtype`, true magnitude 2^[emin, emax],
/// multiplied by the loss scale S (what a caller hands in under FP16).
pub fn random_grad(rng: &mut Rng, dtype: u32, n: usize, emin: i32, emax: i32, scale: f32) -> Grad {
    let bits = match dtype {
        GACC_DTYPE_F32 => 24,
        GACC_DTYPE_F16 => 11,
        _ => 8,
    };
    let xs: Vec<f64> =
        (0..n).map(|_| if rng.chance(0.03) { 0.0 } else { rng.value(bits, emin, emax) * scale as f64 }).collect();
    Grad::encode(dtype, &xs)
}

// ---------------------------------------------------------------------------------
// The C ABI, wrapped.

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(gacc_last_error()) }.to_string_lossy().into_owned()
}

#[track_caller]
pub fn ok(s: gacc_status) {
    assert_eq!(s, gacc_status::GACC_OK, "{}", last_error());
}

pub fn config(optimizer: u32) -> gacc_config {
    let mut c = std::mem::MaybeUninit::<gacc_config>::uninit();
    unsafe {
        gacc_config_init(c.as_mut_ptr());
        let mut c = c.assume_init();
        c.device = GACC_DEVICE_CPU;
        c.optimizer = optimizer;
        c
    }
}

/// (numel, initial values, no_weight_decay) of one tensor.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub init: Vec<f32>,
    pub no_wd: bool,
}

/// `init` as two tensors: the first `split` values with weight decay, the rest
/// without (the layout of the data-parallel tests).
pub fn split_tensors(init: &[f32], split: usize) -> Vec<TensorSpec> {
    vec![
        TensorSpec { init: init[..split].to_vec(), no_wd: false },
        TensorSpec { init: init[split..].to_vec(), no_wd: true },
    ]
}

/// An engine made through the C API, destroyed when dropped.
pub struct Eng {
    pub h: *mut gacc_engine,
    pub n: usize,
    pub spans: Vec<(usize, usize)>,
}

// The handle is a plain token; the engine serialises calls itself.
unsafe impl Send for Eng {}
unsafe impl Sync for Eng {}

impl Eng {
    pub fn new(cfg: &gacc_config, tensors: &[TensorSpec]) -> Eng {
        Eng::try_new(cfg, tensors).unwrap_or_else(|s| panic!("gacc_create: {s:?}: {}", last_error()))
    }
    pub fn try_new(cfg: &gacc_config, tensors: &[TensorSpec]) -> Result<Eng, gacc_status> {
        let descs: Vec<gacc_tensor_desc> = tensors
            .iter()
            .map(|t| gacc_tensor_desc {
                name: std::ptr::null(),
                numel: t.init.len(),
                init: t.init.as_ptr(),
                no_weight_decay: t.no_wd as u32,
            })
            .collect();
        let mut h = std::ptr::null_mut();
        let s = unsafe { gacc_create(cfg, descs.as_ptr(), descs.len(), &mut h) };
        if s != gacc_status::GACC_OK {
            return Err(s);
        }
        Ok(Eng::from_raw(h))
    }
    /// Owns an engine the caller created (gacc_create_from_checkpoint, or gacc_create
    /// with its own descriptors).
    pub fn from_raw(h: *mut gacc_engine) -> Eng {
        assert!(!h.is_null());
        let mut n_tensors = 0;
        ok(unsafe { gacc_n_tensors(h, &mut n_tensors) });
        let mut n = 0;
        ok(unsafe { gacc_numel(h, &mut n) });
        let mut spans = Vec::new();
        for i in 0..n_tensors {
            let (mut o, mut k) = (0, 0);
            ok(unsafe { gacc_tensor_span(h, i, &mut o, &mut k) });
            spans.push((o, k));
        }
        Eng { h, n, spans }
    }
    /// One f32 micro-batch gradient (all tensors concatenated).
    pub fn mb_f32(&self, g: &[f32], w: f64) {
        ok(unsafe { gacc_microbatch(self.h, g.as_ptr().cast(), GACC_DTYPE_F32, g.len(), w) });
    }
    pub fn mb(&self, g: &Grad, w: f64) {
        ok(self.try_mb(g, w));
    }
    pub fn try_mb(&self, g: &Grad, w: f64) -> gacc_status {
        unsafe { gacc_microbatch(self.h, g.ptr(), g.dtype(), g.len(), w) }
    }
    pub fn step(&self) -> gacc_step_info {
        let mut info = gacc_step_info::default();
        ok(unsafe { gacc_step(self.h, &mut info) });
        info
    }
    pub fn try_step(&self) -> gacc_status {
        let mut info = gacc_step_info::default();
        unsafe { gacc_step(self.h, &mut info) }
    }
    pub fn zero(&self) {
        ok(unsafe { gacc_zero(self.h) });
    }
    pub fn params(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.n];
        ok(unsafe { gacc_params_read(self.h, v.as_mut_ptr(), self.n) });
        v
    }
    pub fn write(&self, p: &[f32]) {
        ok(unsafe { gacc_params_write(self.h, p.as_ptr(), p.len()) });
    }
    pub fn scale(&self) -> f32 {
        let mut s = 0f32;
        ok(unsafe { gacc_loss_scale(self.h, &mut s) });
        s
    }
    pub fn set_lr(&self, lr: f32) {
        ok(unsafe { gacc_set_lr(self.h, lr) });
    }
    /// The working copy (all tensors, concatenated) as raw 16-bit patterns.
    pub fn working(&self, dtype: u32) -> Vec<u16> {
        let mut out = Vec::with_capacity(self.n);
        for (t, &(_, k)) in self.spans.iter().enumerate() {
            let mut p = std::ptr::null_mut();
            ok(unsafe { gacc_params_ptr(self.h, t, dtype, &mut p) });
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(p as *const u16, k) });
        }
        out
    }
    /// The fp32 master as seen through gacc_params_ptr(F32).
    pub fn master_via_ptr(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n);
        for (t, &(_, k)) in self.spans.iter().enumerate() {
            let mut p = std::ptr::null_mut();
            ok(unsafe { gacc_params_ptr(self.h, t, GACC_DTYPE_F32, &mut p) });
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(p as *const f32, k) });
        }
        out
    }
}

impl Drop for Eng {
    fn drop(&mut self) {
        gacc_destroy(self.h);
    }
}

/// Checks the working copy is RNE(master), bit for bit (by value; ±0 and inf by sign).
#[track_caller]
pub fn check_working_copy(e: &Eng, precision: u32, master: &[f32]) {
    let (dtype, round, decode): (u32, fn(f32) -> f64, fn(u16) -> f64) = match precision {
        GACC_PRECISION_FP16 => (GACC_DTYPE_F16, rne_f16, f16_bits_to_f64),
        GACC_PRECISION_BF16 => (GACC_DTYPE_BF16, rne_bf16, bf16_bits_to_f64),
        _ => return,
    };
    let w = e.working(dtype);
    assert_eq!(w.len(), master.len());
    for (i, (&b, &m)) in w.iter().zip(master).enumerate() {
        let want = round(m);
        let got = decode(b);
        if m.is_nan() {
            assert!(got.is_nan(), "working copy [{i}]: master NaN, got {got}");
            continue;
        }
        assert!(
            got == want && got.is_sign_negative() == want.is_sign_negative(),
            "working copy [{i}]: master {m:e} -> expected {want:e}, got {got:e} (bits {b:#06x})"
        );
    }
}

// ---------------------------------------------------------------------------------
// Values with a first-order fp32 error bound.

/// Unit roundoff of fp32.
pub const U: f64 = 1.0 / 16_777_216.0;
/// Smallest fp32 subnormal: absolute rounding error floor of one operation.
pub const TINY: f64 = 1.401298464324817e-45;
pub const TOL_FACTOR: f64 = 4.0;

#[derive(Clone, Copy, Debug, Default)]
pub struct R {
    /// The exact value (f64, whose own rounding is ~2^-29 of fp32's: ignored).
    pub v: f64,
    /// Bound on |fp32 evaluation - v|.
    pub e: f64,
}

impl R {
    pub fn exact(v: f64) -> R {
        R { v, e: 0.0 }
    }
    /// A scalar rounded once to fp32 (PyTorch hands Python doubles to fp32 kernels).
    pub fn f32c(v: f64) -> R {
        R { v, e: U * v.abs() + TINY }
    }
    fn round(v: f64, e: f64) -> R {
        R { v, e: e + U * v.abs() + TINY }
    }
    pub fn add(self, o: R) -> R {
        R::round(self.v + o.v, self.e + o.e)
    }
    pub fn sub(self, o: R) -> R {
        R::round(self.v - o.v, self.e + o.e)
    }
    pub fn mul(self, o: R) -> R {
        R::round(self.v * o.v, self.v.abs() * o.e + o.v.abs() * self.e + self.e * o.e)
    }
    pub fn div(self, o: R) -> R {
        let v = self.v / o.v;
        let den = o.v.abs() - o.e;
        assert!(den > 0.0, "divisor bound crosses zero");
        R::round(v, (self.e + v.abs() * o.e) / den)
    }
    pub fn sqrt(self) -> R {
        let v = self.v.sqrt();
        let lo = (self.v - self.e).max(0.0).sqrt();
        let e = if v + lo > 0.0 { (self.e / (v + lo)).min(self.e.sqrt()) } else { self.e.sqrt() };
        R::round(v, e)
    }
    /// fp32 overflow: a value beyond the largest finite f32 is ±inf.
    pub fn ovf(self) -> R {
        if self.v.abs() > f32::MAX as f64 {
            R { v: self.v.signum() * f64::INFINITY, e: 0.0 }
        } else {
            self
        }
    }
    pub fn tol(self) -> f64 {
        TOL_FACTOR * self.e + 1e-38
    }
}

/// torch.lerp (aten/src/ATen/native/Lerp.h): two forms split at |weight| = 0.5.
pub fn lerp(start: R, end: R, weight: R) -> R {
    if weight.v.abs() < 0.5 {
        start.add(weight.mul(end.sub(start)))
    } else {
        end.sub(end.sub(start).mul(R::exact(1.0).sub(weight)))
    }
}

// ---------------------------------------------------------------------------------
// The model.

/// Deliberate mistakes, used as negative controls: a reference carrying one of these
/// must disagree with gacc (shows the comparison can fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// AdamW bias correction with t + 1.
    BiasCorrectionOffByOne,
    /// Weight decay also on no_weight_decay tensors.
    DecayEverything,
    /// A skipped step still advances the step count.
    SkipAdvancesStep,
    /// MEAN: divide by the number of micro-batches instead of the total weight.
    DivideByCount,
    /// Clip each micro-batch on its own instead of once per window.
    ClipPerMicrobatch,
    /// SGD nesterov ignored.
    NoNesterov,
}

#[derive(Clone, Debug)]
pub struct RefInfo {
    pub applied: bool,
    pub norm: R,
    pub coef: R,
    pub scale: f32,
    pub step: u64,
    pub microbatches: u32,
    pub total: f64,
}

#[derive(Clone)]
pub struct Model {
    pub cfg: gacc_config,
    pub decay: Vec<bool>,
    pub p: Vec<R>,
    pub s1: Vec<R>,
    pub s2: Vec<R>,
    pub acc: Vec<R>,
    pub total: f64,
    pub nmb: u32,
    pub t: u64,
    pub scale: f32,
    pub tracker: u32,
    pub lr: f32,
    pub mutation: Mutation,
}

impl Model {
    pub fn new(cfg: &gacc_config, tensors: &[TensorSpec]) -> Model {
        let p: Vec<R> = tensors.iter().flat_map(|t| t.init.iter().map(|&x| R::exact(x as f64))).collect();
        let decay = tensors.iter().flat_map(|t| std::iter::repeat_n(!t.no_wd, t.init.len())).collect();
        let n = p.len();
        Model {
            cfg: *cfg,
            decay,
            p,
            s1: vec![R::default(); n],
            s2: vec![R::default(); n],
            acc: vec![R::default(); n],
            total: 0.0,
            nmb: 0,
            t: 0,
            scale: if cfg.precision == GACC_PRECISION_FP16 { cfg.init_scale } else { 1.0 },
            tracker: 0,
            lr: cfg.lr,
            mutation: Mutation::None,
        }
    }

    pub fn params(&self) -> Vec<f64> {
        self.p.iter().map(|r| r.v).collect()
    }

    pub fn write(&mut self, p: &[f32]) {
        self.p = p.iter().map(|&x| R::exact(x as f64)).collect();
    }

    pub fn zero(&mut self) {
        self.acc.iter_mut().for_each(|a| *a = R::default());
        self.total = 0.0;
        self.nmb = 0;
    }

    /// docs/c-api.md: MEAN: acc += weight * grad; SUM: acc += grad; total += weight.
    pub fn microbatch(&mut self, g: &[f64], w: f64) {
        assert_eq!(g.len(), self.acc.len());
        let mean = self.cfg.grad_reduction == GACC_GRADS_MEAN;
        if self.mutation == Mutation::ClipPerMicrobatch && self.cfg.max_grad_norm > 0.0 {
            // Wrong on purpose: clip this micro-batch's gradient by itself.
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            let coef = (self.cfg.max_grad_norm as f64 / (norm + 1e-6)).min(1.0);
            for (a, &x) in self.acc.iter_mut().zip(g) {
                *a = a.add(R::exact(if mean { w } else { 1.0 } * x * coef));
            }
        } else if mean {
            if w != 0.0 {
                let wr = R::f32c(w);
                for (a, &x) in self.acc.iter_mut().zip(g) {
                    *a = a.add(wr.mul(R::exact(x)).ovf()).ovf();
                }
            }
        } else {
            for (a, &x) in self.acc.iter_mut().zip(g) {
                *a = a.add(R::exact(x)).ovf();
            }
        }
        self.total += w;
        self.nmb += 1;
    }

    /// torch/amp/grad_scaler.py + _amp_update_scale_ (AmpKernels.cu), factors as
    /// doubles, scale and tracker as the device's f32 / i32.
    pub fn scaler_update(&mut self, found_inf: bool) {
        if self.cfg.precision != GACC_PRECISION_FP16 {
            return;
        }
        if found_inf {
            self.scale = (self.scale as f64 * self.cfg.backoff_factor as f64) as f32;
            self.tracker = 0;
        } else {
            let successful = self.tracker + 1;
            if successful == self.cfg.growth_interval {
                let new_scale = (self.scale as f64 * self.cfg.growth_factor as f64) as f32;
                if new_scale.is_finite() {
                    self.scale = new_scale;
                }
                self.tracker = 0;
            } else {
                self.tracker = successful;
            }
        }
    }

    pub fn step(&mut self) -> RefInfo {
        assert!(self.total > 0.0, "model: step with total weight 0");
        let s = self.scale as f64;
        let denom_count = if self.mutation == Mutation::DivideByCount { self.nmb as f64 } else { self.total };
        let factor = R::f32c(1.0 / (denom_count * s));
        let mut g: Vec<R> = self.acc.iter().map(|a| a.mul(factor).ovf()).collect();
        let (microbatches, total) = (self.nmb, self.total);
        self.zero();
        let found_inf = g.iter().any(|x| !x.v.is_finite());
        if found_inf {
            self.scaler_update(true);
            if self.mutation == Mutation::SkipAdvancesStep {
                self.t += 1;
            }
            return RefInfo {
                applied: false,
                norm: R::exact(f64::INFINITY),
                coef: R::exact(1.0),
                scale: self.scale,
                step: self.t,
                microbatches,
                total,
            };
        }
        // clip_grad_norm_: ||g~ - g|| <= ||e|| (triangle inequality), then one f32 rounding.
        let nv = g.iter().map(|x| x.v * x.v).sum::<f64>().sqrt();
        let ne = g.iter().map(|x| x.e * x.e).sum::<f64>().sqrt();
        let norm = R::round(nv, ne + U * nv);
        let mut coef = R::exact(1.0);
        let max = self.cfg.max_grad_norm;
        if max > 0.0 && self.mutation != Mutation::ClipPerMicrobatch {
            let c = R::exact(max as f64).div(norm.add(R::f32c(1e-6)));
            coef = if c.v - c.e >= 1.0 {
                R::exact(1.0)
            } else if c.v + c.e < 1.0 {
                c
            } else {
                // Too close to 1 to tell whether gacc clipped: accept both.
                R { v: c.v.min(1.0), e: c.e + (1.0 - c.v).abs() }
            };
            for x in g.iter_mut() {
                *x = x.mul(coef);
            }
        }
        self.t += 1;
        let t = self.t;
        let lr = self.lr as f64;
        let wd = self.cfg.weight_decay as f64;
        match self.cfg.optimizer {
            GACC_OPTIMIZER_ADAMW => {
                let (b1, b2, eps) = (self.cfg.beta1 as f64, self.cfg.beta2 as f64, self.cfg.eps as f64);
                let tb = if self.mutation == Mutation::BiasCorrectionOffByOne { t + 1 } else { t } as f64;
                let bias_correction1 = 1.0 - b1.powf(tb);
                let bias_correction2 = 1.0 - b2.powf(tb);
                let step_size = R::f32c(lr / bias_correction1);
                let bc2_sqrt = R::f32c(bias_correction2.sqrt());
                let decay_mult = R::f32c(1.0 - lr * wd);
                let w1 = R::f32c(1.0 - b1);
                let one_minus_b2 = R::f32c(1.0 - b2);
                for i in 0..self.p.len() {
                    let mut p = self.p[i];
                    if self.decay[i] || self.mutation == Mutation::DecayEverything {
                        p = p.mul(decay_mult); // param.mul_(1 - lr * weight_decay)
                    }
                    let m = lerp(self.s1[i], g[i], w1); // exp_avg.lerp_(grad, 1 - beta1)
                                                        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    let v = self.s2[i].mul(R::exact(b2)).add(one_minus_b2.mul(g[i]).mul(g[i]));
                    // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                    let denom = v.sqrt().div(bc2_sqrt).add(R::exact(eps));
                    // param.addcdiv_(exp_avg, denom, value=-step_size)
                    p = p.sub(step_size.mul(m.div(denom)));
                    self.p[i] = p;
                    self.s1[i] = m;
                    self.s2[i] = v;
                }
            }
            GACC_OPTIMIZER_SGD => {
                let mom = self.cfg.momentum as f64;
                let nesterov = self.cfg.nesterov == 1 && self.mutation != Mutation::NoNesterov;
                for i in 0..self.p.len() {
                    let mut d = g[i];
                    if (self.decay[i] || self.mutation == Mutation::DecayEverything) && wd != 0.0 {
                        d = d.add(R::exact(wd).mul(self.p[i])); // grad.add(param, alpha=wd)
                    }
                    if mom != 0.0 {
                        let buf = if t == 1 { d } else { self.s1[i].mul(R::exact(mom)).add(d) };
                        self.s1[i] = buf;
                        d = if nesterov { d.add(R::exact(mom).mul(buf)) } else { buf };
                    }
                    self.p[i] = self.p[i].add(R::exact(-lr).mul(d)); // param.add_(grad, alpha=-lr)
                }
            }
            _ => unreachable!(),
        }
        self.scaler_update(false);
        RefInfo { applied: true, norm, coef, scale: self.scale, step: t, microbatches, total }
    }
}

/// Largest violation of |gacc - model| <= tol, as (index, gacc, model, tol), or None.
pub fn first_mismatch(got: &[f32], want: &Model) -> Option<(usize, f32, f64, f64)> {
    got.iter()
        .zip(&want.p)
        .enumerate()
        .find(|(_, (&g, r))| !((g as f64 - r.v).abs() <= r.tol()))
        .map(|(i, (&g, r))| (i, g, r.v, r.tol()))
}

#[track_caller]
pub fn assert_params_match(ctx: &str, got: &[f32], want: &Model) {
    if let Some((i, g, v, tol)) = first_mismatch(got, want) {
        panic!("{ctx}: param[{i}] gacc {g:e} model {v:e} |diff| {:e} > tol {tol:e}", (g as f64 - v).abs());
    }
}

#[track_caller]
pub fn assert_info_matches(ctx: &str, got: &gacc_step_info, want: &RefInfo) {
    assert_eq!(got.applied, want.applied as u32, "{ctx}: applied");
    assert_eq!(got.step, want.step, "{ctx}: step");
    assert_eq!(got.microbatches, want.microbatches, "{ctx}: microbatches");
    assert_eq!(got.total_weight, want.total, "{ctx}: total_weight");
    assert_eq!(
        got.loss_scale.to_bits(),
        want.scale.to_bits(),
        "{ctx}: loss_scale {} vs {}",
        got.loss_scale,
        want.scale
    );
    if want.applied {
        let dn = (got.grad_norm as f64 - want.norm.v).abs();
        assert!(
            dn <= want.norm.tol(),
            "{ctx}: grad_norm {} vs {} (tol {:e})",
            got.grad_norm,
            want.norm.v,
            want.norm.tol()
        );
        let dc = (got.clip_coef as f64 - want.coef.v).abs();
        assert!(
            dc <= want.coef.tol(),
            "{ctx}: clip_coef {} vs {} (tol {:e})",
            got.clip_coef,
            want.coef.v,
            want.coef.tol()
        );
        if want.coef.v == 1.0 && want.coef.e == 0.0 {
            assert_eq!(got.clip_coef, 1.0, "{ctx}: clip_coef must be exactly 1 when not clipped");
        }
    } else {
        assert!(!got.grad_norm.is_finite(), "{ctx}: grad_norm of a skipped step must be non-finite");
        assert_eq!(got.clip_coef, 1.0, "{ctx}: clip_coef of a skipped step");
    }
}

/// Random layout: 1..=max_tensors tensors, sizes from a menu of awkward sizes.
pub fn random_tensors(rng: &mut Rng, max_tensors: u64, sizes: &[usize]) -> Vec<TensorSpec> {
    let k = 1 + rng.below(max_tensors) as usize;
    (0..k)
        .map(|_| {
            let n = rng.pick(sizes);
            TensorSpec { init: (0..n).map(|_| rng.value(24, -4, 1) as f32).collect(), no_wd: rng.chance(0.3) }
        })
        .collect()
}
