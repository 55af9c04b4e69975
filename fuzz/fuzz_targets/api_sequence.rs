//! Random sequences of C API calls with random arguments: configs with any bit
//! patterns (NaN, infinities, unknown enums), any sizes, dtypes and weights, NULLs,
//! destroyed and made-up handles; per-tensor micro-batches with NULL, misaligned and
//! wrongly sized entries, and in-place writes into the accumulator. Every call must return a known status, never
//! GACC_ERR_INTERNAL (a caught panic is a bug), and never crash.
//!
//! Buffers handed to gacc are always as long as the numel passed with them: a caller
//! lying about a buffer's length is undefined behaviour in C too, not a gacc bug.
#![no_main]

use std::ffi::CString;

use gacc::ffi::tensors::*;
use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status::{self, *};
use libfuzzer_sys::fuzz_target;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn f32(&mut self) -> f32 {
        // Half the time a "reasonable" value, half the time any bit pattern.
        if self.byte() & 1 == 0 {
            f32::from(self.byte()) / 64.0
        } else {
            f32::from_bits(self.u32())
        }
    }
    fn f64(&mut self) -> f64 {
        match self.byte() % 4 {
            0 => f64::from(self.byte()),
            1 => f64::NAN,
            2 => -f64::from(self.byte()),
            _ => f64::from_bits(u64::from(self.u32()) << 32 | u64::from(self.u32())),
        }
    }
    fn small(&mut self, n: u8) -> usize {
        usize::from(self.byte() % n)
    }
}

const MAX_NUMEL: usize = 64;

fn check(st: gacc_status) {
    assert_ne!(st, GACC_ERR_INTERNAL, "internal error: {:?}", unsafe {
        std::ffi::CStr::from_ptr(gacc_last_error())
    });
}

fn config(inp: &mut Input) -> gacc_config {
    let mut c: gacc_config = unsafe { std::mem::zeroed() };
    unsafe { gacc_config_init(&mut c) };
    c.device = GACC_DEVICE_CPU;
    // Mutate a few fields with arbitrary values.
    for _ in 0..inp.small(4) {
        match inp.small(17) {
            0 => c.optimizer = inp.u32() % 3,
            1 => c.lr = inp.f32(),
            2 => c.momentum = inp.f32(),
            3 => c.nesterov = inp.u32() % 3,
            4 => c.beta1 = inp.f32(),
            5 => c.beta2 = inp.f32(),
            6 => c.eps = inp.f32(),
            7 => c.weight_decay = inp.f32(),
            8 => c.precision = inp.u32() % 4,
            9 => c.max_grad_norm = inp.f32(),
            10 => c.init_scale = inp.f32(),
            11 => c.growth_factor = inp.f32(),
            12 => c.backoff_factor = inp.f32(),
            13 => c.growth_interval = inp.u32() % 4,
            14 => c.grad_reduction = inp.u32() % 3,
            15 => c.loss_scale_policy = inp.u32() % 3,
            _ => c.device = [GACC_DEVICE_CPU, GACC_DEVICE_AUTO, -7, 3][inp.small(4)],
        }
    }
    c
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mut handles: Vec<*mut gacc_engine> = vec![std::ptr::null_mut(), 0x1000 as *mut gacc_engine];
    let mut live: Vec<*mut gacc_engine> = Vec::new();
    let path = std::env::temp_dir().join(format!("gacc-fuzz-{}.safetensors", std::process::id()));
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let mut buf = vec![0f32; MAX_NUMEL * 2];

    for _ in 0..64 {
        if inp.0.is_empty() {
            break;
        }
        let h = handles[inp.small(handles.len() as u8 + 1).min(handles.len() - 1)];
        match inp.small(14) {
            0 => {
                let cfg = config(&mut inp);
                let n = inp.small(4);
                let inits: Vec<f32> = (0..MAX_NUMEL).map(|_| inp.f32()).collect();
                let descs: Vec<gacc_tensor_desc> = (0..n.max(1))
                    .map(|_| gacc_tensor_desc {
                        name: std::ptr::null(),
                        numel: inp.small(20),
                        init: if inp.byte() & 1 == 0 { std::ptr::null() } else { inits.as_ptr() },
                        no_weight_decay: inp.u32() % 3,
                    })
                    .collect();
                let tensors = if inp.byte() % 8 == 0 { std::ptr::null() } else { descs.as_ptr() };
                let mut out = std::ptr::null_mut();
                let st = unsafe { gacc_create(&cfg, tensors, n, &mut out) };
                check(st);
                if st == GACC_OK {
                    handles.push(out);
                    live.push(out);
                }
            }
            1 => {
                gacc_destroy(h);
                live.retain(|&x| x != h);
            }
            2 => {
                let numel = if inp.byte() & 1 == 0 {
                    let mut n = 0;
                    unsafe { gacc_numel(h, &mut n) };
                    n.min(MAX_NUMEL)
                } else {
                    inp.small(MAX_NUMEL as u8)
                };
                for v in buf.iter_mut().take(numel) {
                    *v = inp.f32();
                }
                let grad = if inp.byte() % 16 == 0 { std::ptr::null() } else { buf.as_ptr().cast() };
                let dtype = inp.u32() % 4;
                check(unsafe { gacc_microbatch(h, grad, dtype, numel, inp.f64()) });
            }
            3 => {
                let mut info = gacc_step_info::default();
                let p = if inp.byte() & 1 == 0 { std::ptr::null_mut() } else { &mut info as *mut _ };
                check(unsafe { gacc_step(h, p) });
            }
            4 => check(unsafe { gacc_zero(h) }),
            5 => {
                let numel = inp.small(MAX_NUMEL as u8);
                check(unsafe { gacc_params_read(h, buf.as_mut_ptr(), numel) });
                check(unsafe { gacc_params_write(h, buf.as_ptr(), numel) });
            }
            6 => {
                let mut out = std::ptr::null_mut();
                check(unsafe { gacc_params_ptr(h, inp.small(5), inp.u32() % 4, &mut out) });
            }
            7 => {
                let mut s = 0f32;
                check(unsafe { gacc_loss_scale(h, &mut s) });
                check(unsafe { gacc_set_lr(h, inp.f32()) });
                check(unsafe { gacc_get_lr(h, &mut s) });
            }
            8 => {
                let name = unsafe { std::ffi::CStr::from_ptr(gacc_status_name(inp.u32() as i32)) };
                assert!(name.to_bytes().starts_with(b"GACC_"));
                let _ = unsafe { std::ffi::CStr::from_ptr(gacc_last_error()) };
            }
            9 => check(unsafe { gacc_save(h, cpath.as_ptr()) }),
            10 => check(unsafe { gacc_load(h, cpath.as_ptr()) }),
            11 => {
                // Per tensor: up to 5 entries, each NULL, or a (possibly misaligned)
                // pointer into buf with a numel buf can back, any dtype.
                for v in buf.iter_mut().take(MAX_NUMEL) {
                    *v = inp.f32();
                }
                let base = buf.as_ptr() as *const u8;
                let entries: Vec<gacc_grad> = (0..inp.small(6))
                    .map(|_| {
                        let data = match inp.small(4) {
                            0 => std::ptr::null(),
                            // SAFETY: 1 byte into buf, which holds 2 * MAX_NUMEL floats.
                            1 => unsafe { base.add(1) }.cast(),
                            _ => base.cast(),
                        };
                        gacc_grad { data, dtype: inp.u32() % 4, numel: inp.small(MAX_NUMEL as u8) }
                    })
                    .collect();
                let grads = if inp.byte() % 16 == 0 { std::ptr::null() } else { entries.as_ptr() };
                check(unsafe { gacc_microbatch_tensors(h, grads, entries.len(), inp.f64()) });
            }
            12 => {
                // In place: write into tensor t's accumulator (within its numel), book it.
                let t = inp.small(5);
                let mut acc = std::ptr::null_mut();
                let st = unsafe { gacc_accumulator_ptr(h, t, &mut acc) };
                check(st);
                let (mut offset, mut numel) = (0usize, 0usize);
                if st == GACC_OK && unsafe { gacc_tensor_span(h, t, &mut offset, &mut numel) } == GACC_OK {
                    for i in 0..numel.min(inp.small(8)) {
                        // SAFETY: the accumulator of tensor t holds numel floats.
                        unsafe { *acc.add(i) += inp.f32() };
                    }
                }
                check(unsafe { gacc_microbatch_inplace(h, inp.f64()) });
            }
            _ => {
                let mut n = 0usize;
                check(unsafe { gacc_numel(h, &mut n) });
                check(unsafe { gacc_n_tensors(h, &mut n) });
                let mut d = 0i32;
                check(unsafe { gacc_device(h, &mut d) });
            }
        }
    }
    for h in live {
        gacc_destroy(h);
    }
    let _ = std::fs::remove_file(&path);
});
