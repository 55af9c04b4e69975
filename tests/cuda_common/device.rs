//! The bodies of the device tests, shared by tests/gpu.rs (a real GPU) and
//! tests/fake_driver.rs (gacc's real CUDA runtime on a fake libcuda whose kernels
//! run on the host shim). They talk to the driver through cudarc's sys layer.

use std::cell::RefCell;
use std::ffi::c_void;

use super::Target;
use cudarc::driver::sys;
use gacc::engine::config::{Config, DeviceRequest};
use gacc::engine::layout::Layout;
use gacc::engine::Engine;
use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status;

pub fn ok(r: sys::CUresult, what: &str) {
    assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "{what}");
}

/// Makes device 0's primary context current on this thread (the engine uses it).
pub fn make_current() {
    // SAFETY: plain driver calls with out-pointers to locals.
    unsafe {
        let mut dev = 0;
        ok(sys::cuDeviceGet(&mut dev, 0), "cuDeviceGet");
        let mut ctx = std::ptr::null_mut();
        ok(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "retain");
        ok(sys::cuCtxSetCurrent(ctx), "set current");
    }
}

pub struct GpuTarget {
    pub live: RefCell<Vec<u64>>,
}

impl Target for GpuTarget {
    fn engine(&self, mut config: Config, layout: Layout, params: &[f32]) -> Engine {
        config.device = DeviceRequest::Cuda(0);
        let e = Engine::new(config, layout, params).unwrap_or_else(|e| panic!("CUDA engine: {e}"));
        make_current();
        e
    }
    fn read_device(&self, ptr: *const c_void, bytes: usize) -> Vec<u8> {
        make_current();
        let mut out = vec![0xA5u8; bytes];
        // SAFETY: ptr is device memory of at least `bytes`; the copy is synchronous
        // with respect to the legacy default stream, and the engine's work is waited
        // for by the synchronisation before it.
        unsafe {
            ok(sys::cuCtxSynchronize(), "sync");
            ok(sys::cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, ptr as u64, bytes), "dtoh");
        }
        out
    }
    fn upload(&self, data: &[u8], offset: usize) -> *const c_void {
        make_current();
        let mut p = 0u64;
        // SAFETY: p gets data.len() + offset bytes.
        unsafe {
            ok(sys::cuMemAlloc_v2(&mut p, data.len() + offset), "alloc");
            ok(sys::cuMemcpyHtoD_v2(p + offset as u64, data.as_ptr() as *const c_void, data.len()), "htod");
        }
        self.live.borrow_mut().push(p);
        (p + offset as u64) as *const c_void
    }
    fn write_device(&self, ptr: *mut c_void, data: &[u8]) {
        make_current();
        // SAFETY: ptr is device memory of at least data.len() bytes; the engine's work
        // is waited for first (the host's in-place writes are ordered after it).
        unsafe {
            ok(sys::cuCtxSynchronize(), "sync");
            ok(sys::cuMemcpyHtoD_v2(ptr as u64, data.as_ptr() as *const c_void, data.len()), "htod");
        }
    }
    fn release(&self) {
        make_current();
        for p in self.live.borrow_mut().drain(..) {
            // SAFETY: allocated by upload(); cuMemFree waits for work using it.
            unsafe {
                sys::cuCtxSynchronize();
                sys::cuMemFree_v2(p);
            }
        }
    }
}

/// Every case of the matrix, against the CPU backend.
pub fn matches_cpu_on_every_case() {
    let target = GpuTarget { live: RefCell::new(Vec::new()) };
    for case in super::cases() {
        super::run_case(&target, &case);
    }
}

/// The numerics options (hysteresis, drop, Kahan, stochastic rounding), every case.
pub fn matches_cpu_with_numerics_options() {
    let target = GpuTarget { live: RefCell::new(Vec::new()) };
    for case in super::option_cases() {
        super::run_case(&target, &case);
    }
    super::run_determinism_with_options(&target);
}

/// Same inputs twice: bit-identical results.
pub fn deterministic() {
    super::run_determinism(&GpuTarget { live: RefCell::new(Vec::new()) });
}

/// The C API on a CUDA engine: host and device gradients, the caller's stream,
/// the device loss-scale pointer.
pub fn c_api_stream_loss_scale_ptr_and_pointer_kinds() {
    let n = 10_000usize;
    unsafe {
        let mut cfg = std::mem::zeroed::<gacc_config>();
        gacc_config_init(&mut cfg);
        cfg.device = 0;
        cfg.precision = GACC_PRECISION_FP16;
        let init = vec![0.25f32; n];
        let desc = gacc_tensor_desc { name: std::ptr::null(), numel: n, init: init.as_ptr(), no_weight_decay: 0 };
        let mut e: *mut gacc_engine = std::ptr::null_mut();
        assert_eq!(gacc_create(&cfg, &desc, 1, &mut e), gacc_status::GACC_OK);
        let mut device = -5;
        assert_eq!(gacc_device(e, &mut device), gacc_status::GACC_OK);
        assert_eq!(device, 0);
        make_current();
        let mut stream: sys::CUstream = std::ptr::null_mut();
        ok(sys::cuStreamCreate(&mut stream, 0), "stream");
        assert_eq!(gacc_set_stream(e, stream as *mut c_void), gacc_status::GACC_OK);

        let host = vec![1.0f32; n];
        let mut dev = 0u64;
        ok(sys::cuMemAlloc_v2(&mut dev, 4 * n), "alloc");
        ok(sys::cuMemcpyHtoD_v2(dev, host.as_ptr() as *const c_void, 4 * n), "htod");
        assert_eq!(gacc_microbatch(e, host.as_ptr() as *const c_void, GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
        assert_eq!(gacc_microbatch(e, dev as *const c_void, GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
        assert_eq!(gacc_step(e, std::ptr::null_mut()), gacc_status::GACC_OK);

        let mut sp: *const f32 = std::ptr::null();
        assert_eq!(gacc_loss_scale_ptr(e, &mut sp), gacc_status::GACC_OK);
        ok(sys::cuStreamSynchronize(stream), "sync");
        let mut on_device = f32::NAN;
        ok(sys::cuMemcpyDtoH_v2(&mut on_device as *mut f32 as *mut c_void, sp as u64, 4), "dtoh");
        let mut s = f32::NAN;
        assert_eq!(gacc_loss_scale(e, &mut s), gacc_status::GACC_OK);
        assert_eq!(s.to_bits(), on_device.to_bits());

        let mut out = vec![f32::NAN; n];
        assert_eq!(gacc_params_read(e, out.as_mut_ptr(), n), gacc_status::GACC_OK);
        // One AdamW step on a constant gradient moves every parameter by ~lr.
        assert!(out.iter().all(|&p| (p - (0.25 * (1.0 - 1e-3 * 0.01) - 1e-3)).abs() < 1e-5), "{}", out[0]);
        assert_eq!(gacc_set_stream(e, std::ptr::null_mut()), gacc_status::GACC_OK);
        gacc_destroy(e);
        sys::cuMemFree_v2(dev);
        sys::cuStreamDestroy_v2(stream);
    }
}

/// NCCL with world size 1 (tests/gpu.rs on a real GPU with libnccl; tests/fake_nccl.rs
/// on the fakes): an engine joined through gacc_set_nccl takes bit for bit the steps
/// of an engine without a transport, with and without step info, and reports the
/// same windows. Says "skipped" when NCCL cannot be loaded.
pub fn nccl_world_size_one() {
    let mut id = gacc_nccl_id { internal: [0; 128] };
    let st = unsafe { gacc_nccl_unique_id(&mut id) };
    if st == gacc_status::GACC_ERR_DEVICE_UNAVAILABLE {
        println!("skipped: nccl_world_size_one: NCCL cannot be loaded (set GACC_NCCL_LIB)");
        return;
    }
    assert_eq!(st, gacc_status::GACC_OK);
    let n = 1031usize;
    let init: Vec<f32> = (0..n).map(|i| (i as f32 * 0.1).cos()).collect();
    let make = || {
        let mut c: gacc_config = unsafe { std::mem::zeroed() };
        unsafe { gacc_config_init(&mut c) };
        c.device = 0;
        c.optimizer = GACC_OPTIMIZER_ADAMW;
        c.precision = GACC_PRECISION_FP16;
        c.max_grad_norm = 1.0;
        c.compensated_accumulation = 1;
        let d = gacc_tensor_desc { name: std::ptr::null(), numel: n, init: init.as_ptr(), no_weight_decay: 0 };
        let mut e = std::ptr::null_mut();
        assert_eq!(unsafe { gacc_create(&c, &d, 1, &mut e) }, gacc_status::GACC_OK);
        e
    };
    let (plain, nccl) = (make(), make());
    assert_eq!(unsafe { gacc_set_nccl(nccl, &id, 0, 1) }, gacc_status::GACC_OK);
    for w in 0..5usize {
        for k in 0..3usize {
            let g: Vec<f32> = (0..n).map(|i| ((i * 7 + w * 13 + k * 29) % 61) as f32 / 32.0 - 0.9).collect();
            let weight = (1 + (w + k) % 4) as f64;
            for e in [plain, nccl] {
                let st = unsafe { gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n, weight) };
                assert_eq!(st, gacc_status::GACC_OK);
            }
        }
        let (mut a, mut b) = (gacc_step_info::default(), gacc_step_info::default());
        let info = w % 2 == 0;
        for (e, i) in [(plain, &mut a), (nccl, &mut b)] {
            let p = if info { i as *mut gacc_step_info } else { std::ptr::null_mut() };
            assert_eq!(unsafe { gacc_step(e, p) }, gacc_status::GACC_OK);
        }
        assert_eq!(a, b, "window {w}: step info");
    }
    let read = |e| {
        let mut out = vec![0f32; n];
        assert_eq!(unsafe { gacc_params_read(e, out.as_mut_ptr(), n) }, gacc_status::GACC_OK);
        out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(read(plain), read(nccl), "world size 1 over NCCL differs from no transport");
    gacc_destroy(plain);
    gacc_destroy(nccl);
}

/// Per-tensor micro-batches and in-place accumulation (tests/cuda_common/tensors.rs)
/// against the CPU backend, and the same through the C API: gacc_accumulator_ptr
/// returns device memory on the engine's device, tensor t at the tensor's offset.
pub fn per_tensor_and_inplace_match_cpu() {
    let target = GpuTarget { live: RefCell::new(Vec::new()) };
    for case in super::tensors::tensor_cases() {
        super::tensors::run_tensor_case(&target, &case);
    }
    super::tensors::run_inplace(&target);
    unsafe {
        let mut cfg = std::mem::zeroed::<gacc_config>();
        gacc_config_init(&mut cfg);
        cfg.device = 0;
        let descs: Vec<gacc_tensor_desc> = [6usize, 10]
            .iter()
            .map(|&numel| gacc_tensor_desc {
                name: std::ptr::null(),
                numel,
                init: std::ptr::null(),
                no_weight_decay: 0,
            })
            .collect();
        let mut e = std::ptr::null_mut();
        assert_eq!(gacc_create(&cfg, descs.as_ptr(), 2, &mut e), gacc_status::GACC_OK);
        let (mut a0, mut a1) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(gacc::ffi::tensors::gacc_accumulator_ptr(e, 0, &mut a0), gacc_status::GACC_OK);
        assert_eq!(gacc::ffi::tensors::gacc_accumulator_ptr(e, 1, &mut a1), gacc_status::GACC_OK);
        assert_eq!(a0.add(6), a1, "tensor 1 at offset 6");
        make_current();
        let mut kind: u32 = 0;
        ok(
            sys::cuPointerGetAttribute(
                &mut kind as *mut u32 as *mut c_void,
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                a0 as u64,
            ),
            "pointer attribute",
        );
        assert_eq!(kind, sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32, "the accumulator is device memory");
        // One host, one NULL entry; then the rest in place; the accumulator holds both.
        let g0 = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let grads = [
            gacc::ffi::tensors::gacc_grad { data: g0.as_ptr() as *const c_void, dtype: GACC_DTYPE_F32, numel: 6 },
            gacc::ffi::tensors::gacc_grad { data: std::ptr::null(), dtype: 0, numel: 0 },
        ];
        assert_eq!(gacc::ffi::tensors::gacc_microbatch_tensors(e, grads.as_ptr(), 2, 1.0), gacc_status::GACC_OK);
        let target = GpuTarget { live: RefCell::new(Vec::new()) };
        let ones: Vec<u8> = [1.0f32; 10].iter().flat_map(|x| x.to_le_bytes()).collect();
        target.write_device(a1 as *mut c_void, &ones);
        assert_eq!(gacc::ffi::tensors::gacc_microbatch_inplace(e, 1.0), gacc_status::GACC_OK);
        let acc = target.read_device(a0 as *const c_void, 16 * 4);
        let acc: Vec<f32> = acc.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(&acc[..6], &g0);
        assert!(acc[6..].iter().all(|&x| x == 1.0));
        let mut info = gacc_step_info::default();
        assert_eq!(gacc_step(e, &mut info), gacc_status::GACC_OK);
        assert_eq!((info.microbatches, info.total_weight, info.applied), (2, 2.0, 1));
        assert!(target.read_device(a0 as *const c_void, 16 * 4).iter().all(|&b| b == 0), "zero after the step");
        gacc_destroy(e);
    }
}
