//! The loss-scale policies replayed against their real implementations.
//!
//! tests/python/loss_scale_reference.py drives DeepSpeed's own DynamicLossScaler
//! (deepspeed/runtime/fp16/loss_scaler.py from the PyPI sdist, loaded by path) and
//! torch's `_amp_update_scale_` rule over hundreds of random configurations and
//! overflow patterns and writes the scale after every step; `replay` feeds the same
//! overflow pattern to a gacc engine (CPU, kernel shim or fake driver) and checks the
//! skip decision and the scale, bit for bit, after every step.
//!
//! Where the sdist is: GACC_DEEPSPEED_LOSS_SCALER, else .deps/deepspeed/deepspeed-*/
//! (scripts/install-test-deps.sh). Without it the tests say "skipped", and fail when
//! GACC_REQUIRE_DEEPSPEED=1.

use std::ffi::c_void;
use std::path::PathBuf;
use std::process::Command;

use gacc::backend::GradInput;
use gacc::engine::config::{Config, Dtype, RawConfig};
use gacc::engine::layout::Layout;
use gacc::engine::Engine;
use gacc::ffi::types::*;
use serde_json::Value;

/// One reference case: a configuration, an overflow pattern and the scales.
pub struct RefCase {
    pub raw: RawConfig,
    pub overflow: Vec<bool>,
    pub scale: Vec<f64>,
}

/// The DeepSpeed version checked and the cases, or None (with a "skipped" line).
pub struct References {
    pub deepspeed_version: String,
    pub cases: Vec<RefCase>,
}

fn loss_scaler_py() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("GACC_DEEPSPEED_LOSS_SCALER") {
        return Some(PathBuf::from(p));
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/deepspeed");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("deepspeed/runtime/fp16/loss_scaler.py"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Runs the Python script (n cases of at most max_steps steps) and parses its output.
pub fn references(test: &str, n: usize, max_steps: usize) -> Option<References> {
    let Some(py) = loss_scaler_py() else {
        let why = "DeepSpeed's loss_scaler.py not found (scripts/install-test-deps.sh fetches the sdist)";
        if std::env::var("GACC_REQUIRE_DEEPSPEED").as_deref() == Ok("1") {
            panic!("{test}: GACC_REQUIRE_DEEPSPEED=1 but {why}");
        }
        println!("skipped: {test}: {why}");
        return None;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/loss_scale_reference.py");
    let out =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("loss_scale_{}_{}.json", std::process::id(), test));
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(&py).arg(&out).arg(n.to_string()).arg(max_steps.to_string());
    let run = cmd.output();
    let run = run.unwrap_or_else(|e| panic!("{test}: cannot run python3: {e}"));
    assert!(run.status.success(), "{test}: {}", String::from_utf8_lossy(&run.stderr));
    println!("{test}: {}", String::from_utf8_lossy(&run.stdout).trim());
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let v: Value = serde_json::from_str(&text).unwrap();
    let num = |c: &Value, k: &str| c[k].as_f64().unwrap_or_else(|| panic!("case field {k}"));
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut raw = RawConfig::defaults();
            raw.device = GACC_DEVICE_CPU;
            raw.optimizer = GACC_OPTIMIZER_SGD;
            raw.lr = 0.0;
            raw.weight_decay = 0.0;
            raw.precision = GACC_PRECISION_FP16;
            raw.loss_scale_policy = num(c, "policy") as u32;
            raw.init_scale = num(c, "init_scale") as f32;
            raw.growth_factor = num(c, "growth_factor") as f32;
            raw.backoff_factor = num(c, "backoff_factor") as f32;
            raw.growth_interval = num(c, "growth_interval") as u32;
            raw.hysteresis = num(c, "hysteresis") as u32;
            raw.consecutive_hysteresis = u32::from(c["consecutive"].as_bool().unwrap());
            raw.min_loss_scale = num(c, "min_scale") as f32;
            RefCase {
                raw,
                overflow: c["overflow"].as_str().unwrap().bytes().map(|b| b == b'1').collect(),
                scale: c["scale_bits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| f64::from_bits(x.as_u64().unwrap()))
                    .collect(),
            }
        })
        .collect();
    Some(References { deepspeed_version: v["deepspeed_version"].as_str().unwrap_or("?").to_string(), cases })
}

/// Replays every case on engines from `make`: after each step the skip decision
/// (applied = 0 exactly on the overflowing windows), gacc_step_info.loss_scale and
/// the engine's loss scale must equal the reference's scale bit for bit. Returns
/// (DeepSpeed cases, GradScaler cases, steps).
pub fn replay(make: &dyn Fn(Config, Layout, &[f32]) -> Engine, refs: &References) -> (usize, usize, usize) {
    let (mut ds, mut gs, mut steps) = (0, 0, 0);
    for (k, case) in refs.cases.iter().enumerate() {
        let config = Config::validate(&case.raw).unwrap_or_else(|e| panic!("case {k}: {e}"));
        let mut engine = make(config, Layout::new(vec![(None, 3, true)]).unwrap(), &[0.0; 3]);
        for (step, (&overflow, &want)) in case.overflow.iter().zip(&case.scale).enumerate() {
            let g = [0.25f32, if overflow { f32::INFINITY } else { -0.5 }, 1.0];
            let input = GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: 3 };
            // SAFETY: g holds 3 f32 in host memory.
            unsafe { engine.microbatch(&input, 1.0).unwrap() };
            let info = engine.step(true).unwrap().unwrap();
            let what = || {
                format!(
                    "case {k} step {step} (policy {}, init {}, factor {}/{}, window {}, hysteresis {}, consecutive {}, \
                     min {}; overflows {})",
                    case.raw.loss_scale_policy,
                    case.raw.init_scale,
                    case.raw.growth_factor,
                    case.raw.backoff_factor,
                    case.raw.growth_interval,
                    case.raw.hysteresis,
                    case.raw.consecutive_hysteresis,
                    case.raw.min_loss_scale,
                    case.overflow[..=step].iter().map(|&o| if o { '1' } else { '0' }).collect::<String>()
                )
            };
            assert_eq!(info.applied, !overflow, "{}: skip decision", what());
            let got = f64::from(info.loss_scale);
            assert_eq!(got.to_bits(), want.to_bits(), "{}: scale {got} vs {want}", what());
            steps += 1;
        }
        assert_eq!(engine.loss_scale().unwrap() as f64, *case.scale.last().unwrap(), "case {k}: gacc_loss_scale");
        if case.raw.loss_scale_policy == GACC_LOSS_SCALE_DEEPSPEED {
            ds += 1;
        } else {
            gs += 1;
        }
    }
    (ds, gs, steps)
}
