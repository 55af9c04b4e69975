//! Checkpoints through the C ABI: exact resume in the middle of a window, validation
//! of damaged files (the engine is left as it was), Python's safetensors reading the
//! file, and a crash test that SIGKILLs a saving process at random moments.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status::{self, *};

mod support;
use support::{last_error, Eng, Rng, TensorSpec};

fn tmpdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gacc-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cpath(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

const SIZES: [usize; 3] = [37, 5, 300];

fn config(optimizer: u32, precision: u32) -> gacc_config {
    let mut c = support::config(optimizer);
    c.precision = precision;
    c.momentum = 0.9;
    c.lr = 0.01;
    c.max_grad_norm = 1.0;
    c.growth_interval = 3;
    c
}

fn create(cfg: &gacc_config, init: &[f32]) -> Eng {
    let mut specs = Vec::new();
    let mut offset = 0;
    for (i, &n) in SIZES.iter().enumerate() {
        specs.push(TensorSpec { init: init[offset..offset + n].to_vec(), no_wd: i == 1 });
        offset += n;
    }
    Eng::new(cfg, &specs)
}

fn numel() -> usize {
    SIZES.iter().sum()
}

fn micro(e: &Eng, g: &[f32], w: f64) {
    assert_eq!(unsafe { gacc_microbatch(e.h, g.as_ptr().cast(), GACC_DTYPE_F32, g.len(), w) }, GACC_OK);
}

fn step(e: &Eng) -> gacc_step_info {
    let mut info = gacc_step_info::default();
    assert_eq!(unsafe { gacc_step(e.h, &mut info) }, GACC_OK);
    info
}

fn params(e: &Eng) -> Vec<f32> {
    let mut out = vec![0f32; numel()];
    assert_eq!(unsafe { gacc_params_read(e.h, out.as_mut_ptr(), out.len()) }, GACC_OK);
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Gradients for window w, micro-batch k: the same for every run with one seed.
fn gradients(seed: u64, windows: usize, k: usize) -> Vec<Vec<(Vec<f32>, f64)>> {
    let mut rng = Rng::new(seed);
    (0..windows)
        .map(|w| {
            (0..k)
                .map(|_| {
                    let mut g = rng.vec(numel(), 3.0);
                    if w == 4 {
                        g[7] = f32::INFINITY; // one overflowing window: a skip inside the run
                    }
                    (g, 1.0 + (rng.next_u64() % 7) as f64)
                })
                .collect()
        })
        .collect()
}

fn save(e: &Eng, p: &Path) -> gacc_status {
    unsafe { gacc_save(e.h, cpath(p).as_ptr()) }
}

fn load(e: &Eng, p: &Path) -> gacc_status {
    unsafe { gacc_load(e.h, cpath(p).as_ptr()) }
}

fn resume_is_exact(optimizer: u32, precision: u32, tag: &str) {
    resume_is_exact_with(config(optimizer, precision), false, tag);
}

fn resume_is_exact_with(cfg: gacc_config, poison: bool, tag: &str) {
    let dir = tmpdir(tag);
    let ckpt = dir.join("state.safetensors");
    let init = Rng::new(5).vec(numel(), 1.0);
    let mut data = gradients(11, 10, 4);
    if poison {
        // Scattered non-finite micro-batches (window 6, saved mid-window, has one).
        for (w, window) in data.iter_mut().enumerate() {
            for (m, (g, _)) in window.iter_mut().enumerate() {
                if (w * 4 + m) % 7 == 3 {
                    g[m + 1] = f32::NAN;
                }
            }
        }
    }
    let (stop_window, stop_micro) = (6, 2);

    // Uninterrupted run.
    let a = create(&cfg, &init);
    for window in &data {
        for (g, w) in window {
            micro(&a, g, *w);
        }
        step(&a);
    }
    let reference = params(&a);

    // Interrupted run: save in the middle of window 6, then continue in a new engine
    // loaded from the file (and in one created from the file alone).
    let b = create(&cfg, &init);
    'outer: for (wi, window) in data.iter().enumerate() {
        for (mi, (g, w)) in window.iter().enumerate() {
            if (wi, mi) == (stop_window, stop_micro) {
                break 'outer;
            }
            micro(&b, g, *w);
        }
        step(&b);
    }
    assert_eq!(save(&b, &ckpt), GACC_OK);
    drop(b);

    let resumed_load = create(&cfg, &Rng::new(99).vec(numel(), 1.0));
    assert_eq!(load(&resumed_load, &ckpt), GACC_OK);
    let mut raw = std::ptr::null_mut();
    let st = unsafe { gacc_create_from_checkpoint(cpath(&ckpt).as_ptr(), GACC_DEVICE_CPU, &mut raw) };
    assert_eq!(st, GACC_OK);
    let resumed_new = Eng::from_raw(raw);

    for e in [&resumed_load, &resumed_new] {
        for (wi, window) in data.iter().enumerate().skip(stop_window) {
            let first = if wi == stop_window { stop_micro } else { 0 };
            for (g, w) in &window[first..] {
                micro(e, g, *w);
            }
            let info = step(e);
            if wi == stop_window {
                assert_eq!(info.microbatches as usize, data[wi].len(), "window count restored");
            }
        }
        assert_eq!(bits(&params(e)), bits(&reference), "{tag}: resumed run differs");
        let (mut s1, mut s2) = (0f32, 0f32);
        unsafe {
            gacc_loss_scale(a.h, &mut s1);
            gacc_loss_scale(e.h, &mut s2);
        }
        assert_eq!(s1, s2);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_mid_window_is_bit_identical_adamw_fp16() {
    resume_is_exact(GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP16, "adamw");
}

#[test]
fn resume_mid_window_is_bit_identical_sgd_bf16() {
    resume_is_exact(GACC_OPTIMIZER_SGD, GACC_PRECISION_BF16, "sgd");
}

#[test]
fn resume_mid_window_is_bit_identical_with_the_deepspeed_policy() {
    // The policy and its counters (scale, stable-interval tracker, hysteresis) are
    // saved: the resumed runs' scale and parameters equal the uninterrupted run's.
    for (poison, tag) in [(false, "deepspeed"), (true, "deepspeed-drop")] {
        let mut cfg = config(GACC_OPTIMIZER_SGD, GACC_PRECISION_FP16);
        cfg.loss_scale_policy = GACC_LOSS_SCALE_DEEPSPEED;
        cfg.hysteresis = 2;
        cfg.min_loss_scale = 1.0;
        cfg.drop_nonfinite_microbatches = u32::from(poison);
        resume_is_exact_with(cfg, poison, tag);
    }
}

#[test]
fn a_checkpoint_from_before_the_policy_loads_as_gradscaler() {
    // tests/fixtures/checkpoint-0.1.0-before-loss-scale-policy.safetensors was written
    // by the library before loss_scale_policy existed (SGD, FP16, init_scale 1024,
    // growth_interval 3, windows C C X C C: scale 512, growth tracker 2, 4 params).
    // It loads as GRADSCALER: the next clean step completes growth_interval and the
    // scale doubles (DEEPSPEED's tracker would need one more step).
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoint-0.1.0-before-loss-scale-policy.safetensors");
    let mut raw = std::ptr::null_mut();
    let st = unsafe { gacc_create_from_checkpoint(cpath(&path).as_ptr(), GACC_DEVICE_CPU, &mut raw) };
    assert_eq!(st, GACC_OK, "{}", last_error());
    let e = Eng::from_raw(raw);
    let mut s = 0f32;
    assert_eq!(unsafe { gacc_loss_scale(e.h, &mut s) }, GACC_OK);
    assert_eq!(s, 512.0);
    micro(&e, &[0.5, 1.0, -1.0, 2.0], 1.0);
    assert_eq!(step(&e).loss_scale, 1024.0, "GRADSCALER growth after 3 clean steps");

    // gacc_load: into a GRADSCALER engine of that layout it loads; into a DEEPSPEED
    // one it is refused (the saved tracker counts toward the other rule).
    let mut cfg = config(GACC_OPTIMIZER_SGD, GACC_PRECISION_FP16);
    cfg.momentum = 0.0;
    let desc = gacc_tensor_desc { name: std::ptr::null(), numel: 4, init: std::ptr::null(), no_weight_decay: 0 };
    for (policy, want) in [(GACC_LOSS_SCALE_GRADSCALER, GACC_OK), (GACC_LOSS_SCALE_DEEPSPEED, GACC_ERR_CORRUPT)] {
        cfg.loss_scale_policy = policy;
        let mut raw = std::ptr::null_mut();
        assert_eq!(unsafe { gacc_create(&cfg, &desc, 1, &mut raw) }, GACC_OK, "{}", last_error());
        let e = Eng::from_raw(raw);
        assert_eq!(load(&e, &path), want, "{}", last_error());
        if want != GACC_OK {
            assert!(last_error().contains("loss_scale_policy"), "{}", last_error());
        }
    }
}

/// Damaged files are rejected with GACC_ERR_CORRUPT and leave the engine untouched.
#[test]
fn resume_mid_window_is_bit_identical_with_every_numerics_option() {
    // Hysteresis (its counter is state), drop mode (the window's total and dropped
    // count are state), Kahan compensation (comp.<i> tensors), stochastic rounding
    // (a function of seed and step: the working copy after resume must match too).
    for (precision, tag) in [(GACC_PRECISION_FP16, "numerics-fp16"), (GACC_PRECISION_BF16, "numerics-bf16")] {
        let mut cfg = config(GACC_OPTIMIZER_ADAMW, precision);
        cfg.hysteresis = 2;
        cfg.consecutive_hysteresis = 1;
        cfg.min_loss_scale = 1.0;
        cfg.max_loss_scale = 1e6;
        cfg.drop_nonfinite_microbatches = 1;
        cfg.compensated_accumulation = 1;
        cfg.stochastic_rounding = 1;
        cfg.seed = 1234;
        resume_is_exact_with(cfg, true, tag);
    }
}

#[test]
fn damaged_checkpoints_are_rejected_and_change_nothing() {
    let dir = tmpdir("damage");
    let good = dir.join("good.safetensors");
    let cfg = config(GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP32);
    let init = Rng::new(1).vec(numel(), 1.0);
    let src = create(&cfg, &init);
    let g = Rng::new(2).vec(numel(), 1.0);
    micro(&src, &g, 2.0);
    step(&src);
    micro(&src, &g, 3.0);
    assert_eq!(save(&src, &good), GACC_OK);
    let bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;

    let victim = create(&cfg, &Rng::new(3).vec(numel(), 1.0));
    micro(&victim, &g, 1.0);
    let twin = create(&cfg, &Rng::new(3).vec(numel(), 1.0));
    micro(&twin, &g, 1.0);

    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty file".into(), vec![]),
        ("truncated header".into(), bytes[..header_len / 2].to_vec()),
        ("truncated data".into(), bytes[..bytes.len() - 3].to_vec()),
        ("extra bytes".into(), [bytes.clone(), vec![0; 4]].concat()),
        ("huge header length".into(), [(u64::MAX).to_le_bytes().to_vec(), bytes[8..].to_vec()].concat()),
    ];
    // A flipped bit anywhere in the data region, and in several header places.
    for &pos in &[8 + header_len, 8 + header_len + 101, bytes.len() - 1, 8 + header_len / 3, 9, 8 + header_len - 2] {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        cases.push((format!("bit flip at byte {pos}"), b));
    }
    // The metadata edited consistently except for its checksum.
    let text = String::from_utf8_lossy(&bytes[8..8 + header_len]).into_owned();
    let edited = text.replacen("\"applied_steps\":\"1\"", "\"applied_steps\":\"7\"", 1);
    assert_ne!(edited, text, "test setup: the metadata should hold applied_steps 1");
    cases.push((
        "edited metadata".into(),
        [bytes[..8].to_vec(), edited.into_bytes(), bytes[8 + header_len..].to_vec()].concat(),
    ));

    for (what, content) in cases {
        let p = dir.join("bad.safetensors");
        std::fs::write(&p, &content).unwrap();
        let st = load(&victim, &p);
        assert_eq!(st, GACC_ERR_CORRUPT, "{what}: expected CORRUPT");
        let msg = unsafe { std::ffi::CStr::from_ptr(gacc_last_error()) }.to_string_lossy().into_owned();
        assert!(msg.starts_with("gacc_load:") && msg.len() > 12, "{what}: message {msg:?}");
    }
    assert_eq!(load(&victim, &dir.join("missing.safetensors")), GACC_ERR_IO);

    // A valid checkpoint of another layout does not fit.
    let other_cfg = cfg;
    let mut e2 = std::ptr::null_mut();
    let desc = gacc_tensor_desc { name: std::ptr::null(), numel: 10, init: std::ptr::null(), no_weight_decay: 0 };
    assert_eq!(unsafe { gacc_create(&other_cfg, &desc, 1, &mut e2) }, GACC_OK);
    let other = Eng::from_raw(e2);
    let other_path = dir.join("other.safetensors");
    assert_eq!(save(&other, &other_path), GACC_OK);
    assert_eq!(load(&victim, &other_path), GACC_ERR_CORRUPT);

    // The victim still holds exactly its own state: finish its window like the twin.
    micro(&victim, &g, 1.0);
    micro(&twin, &g, 1.0);
    let (a, b) = (step(&victim), step(&twin));
    assert_eq!(a, b);
    assert_eq!(bits(&params(&victim)), bits(&params(&twin)));

    // And the good file still loads.
    assert_eq!(load(&victim, &good), GACC_OK);
    let _ = std::fs::remove_dir_all(&dir);
}

fn python_has_safetensors() -> bool {
    Command::new("python3")
        .args(["-c", "import safetensors, numpy"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn python_safetensors_opens_the_checkpoint() {
    if !python_has_safetensors() {
        assert!(
            std::env::var_os("GACC_REQUIRE_SAFETENSORS").is_none(),
            "GACC_REQUIRE_SAFETENSORS is set but python3 cannot import safetensors"
        );
        println!("skipped: python_safetensors_opens_the_checkpoint: python3 has no safetensors/numpy");
        return;
    }
    let dir = tmpdir("python");
    let p = dir.join("py.safetensors");
    let cfg = config(GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP16);
    let init: Vec<f32> = (0..numel()).map(|i| i as f32 * 0.25).collect();
    let e = create(&cfg, &init);
    let g: Vec<f32> = vec![0.5; numel()];
    micro(&e, &g, 4.0);
    assert_eq!(save(&e, &p), GACC_OK);
    let expected = serde_json::json!({
        "tensors": {
            "master.0": [SIZES[0], 0.0],
            "master.1": [SIZES[1], SIZES[0] as f32 * 0.25],
            "acc.2": [SIZES[2], 2.0],
            "exp_avg.0": [SIZES[0], 0.0],
            "exp_avg_sq.2": [SIZES[2], 0.0],
        },
        "metadata": { "total_weight": "4", "microbatches": "1", "applied_steps": "0", "loss_scale": "65536" },
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/read_checkpoint.py");
    let out = Command::new("python3").arg(script).arg(&p).arg(expected.to_string()).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Child side of the crash test: saves states 0, 1, 2, ... forever; state k has every
/// parameter equal to k and an open window whose total weight is k.
#[test]
fn crash_child_saving_loop() {
    let Some(path) = std::env::var_os("GACC_CRASH_CHILD_PATH") else {
        return; // only runs when spawned by the crash test
    };
    let cfg = config(GACC_OPTIMIZER_SGD, GACC_PRECISION_FP32);
    let e = create(&cfg, &vec![0.0; numel()]);
    let g = vec![1.0f32; numel()];
    for k in 0u64.. {
        let v = vec![k as f32; numel()];
        unsafe { gacc_params_write(e.h, v.as_ptr(), v.len()) };
        unsafe { gacc_zero(e.h) };
        micro(&e, &g, k as f64 + 1.0);
        assert_eq!(save(&e, Path::new(&path)), GACC_OK);
    }
}

#[test]
fn sigkill_during_save_never_leaves_a_mixed_checkpoint() {
    let dir = tmpdir("crash");
    let path = dir.join("ckpt.safetensors");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(77);
    let mut seen_states = std::collections::BTreeSet::new();
    let kills = 40;
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child_saving_loop", "--nocapture", "--test-threads=1"])
            .env("GACC_CRASH_CHILD_PATH", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + rng.next_u64() % 60));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        if !path.exists() {
            continue; // killed before its first rename
        }
        let mut raw = std::ptr::null_mut();
        let st = unsafe { gacc_create_from_checkpoint(cpath(&path).as_ptr(), GACC_DEVICE_CPU, &mut raw) };
        assert_eq!(st, GACC_OK, "round {round}: checkpoint on disk does not load");
        let e = Eng::from_raw(raw);
        let p = params(&e);
        let k = p[0];
        assert!(p.iter().all(|&x| x == k), "round {round}: parameters from different states");
        // The window belongs to the same state: its total weight is k + 1.
        let info = step(&e);
        assert_eq!(info.total_weight, f64::from(k) + 1.0, "round {round}: window from another state");
        seen_states.insert(k as u64);
        // Leftover temporary files are allowed (the crash interrupted them) but never
        // mistaken for the checkpoint.
    }
    assert!(!seen_states.is_empty(), "the child never completed a save");
    println!("{kills} SIGKILLs, {} distinct states recovered, all whole", seen_states.len());
    let _ = std::fs::remove_dir_all(&dir);
}
