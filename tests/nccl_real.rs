//! gacc against the real NCCL (the `nvidia-nccl-cu13` wheel; scripts/install-nccl.sh
//! puts it in .deps/nccl and GACC_TEST_NCCL_DIR names its nvidia/nccl folder, the one
//! holding include/nccl.h and lib/libnccl.so.2). No GPU needed.
//!
//! 1. Compile time: src/distributed/nccl.rs's constants, the size of its ncclUniqueId
//!    and every entry point's Rust type are written as a C++ header
//!    (gacc_nccl_expected.h) and tests/nccl/abi_check.cpp checks them with
//!    static_asserts against nccl.h; a drifted declaration is shown to fail naming it.
//! 2. Run time: the real libnccl.so.2 loaded through gacc's own loader, named by
//!    GACC_NCCL_LIB and found by the default search (LD_LIBRARY_PATH): version,
//!    gacc_nccl_unique_id, error strings, and what gacc_set_nccl and ncclCommInitRank
//!    give on a machine without a GPU. gacc keeps the loaded library for the process,
//!    so each loading mode runs in a child process (this test binary, re-run on one test).
//!
//! Without GACC_TEST_NCCL_DIR every test prints "skipped"; GACC_REQUIRE_NCCL=1 (CI)
//! turns that into a failure.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;

use gacc::distributed::nccl::{self, Comm, NcclUniqueId};
use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status;

/// The wheel's nvidia/nccl folder, or None (with a "skipped" line).
fn nccl_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("GACC_TEST_NCCL_DIR").map(PathBuf::from);
    match dir {
        Some(d) if d.join("include/nccl.h").is_file() && d.join("lib/libnccl.so.2").is_file() => Some(d),
        _ => {
            let why = "GACC_TEST_NCCL_DIR does not name a folder with include/nccl.h and lib/libnccl.so.2 \
                       (run scripts/install-nccl.sh)";
            if std::env::var("GACC_REQUIRE_NCCL").as_deref() == Ok("1") {
                panic!("{test}: GACC_REQUIRE_NCCL=1 but {why}");
            }
            println!("skipped: {test}: {why}");
            None
        }
    }
}

// ---- 1. the declarations against nccl.h -------------------------------------------

/// A Rust FFI type spelled in C++ (east const, so nested pointers read right).
trait CType {
    fn c() -> String;
}
impl CType for c_int {
    fn c() -> String {
        "int".into()
    }
}
impl CType for u64 {
    fn c() -> String {
        "unsigned long long".into()
    }
}
impl CType for usize {
    fn c() -> String {
        "std::size_t".into()
    }
}
impl CType for c_char {
    fn c() -> String {
        "char".into()
    }
}
impl CType for c_void {
    fn c() -> String {
        "void".into()
    }
}
impl CType for NcclUniqueId {
    fn c() -> String {
        "gacc_rs::UniqueId".into()
    }
}
impl<T: CType> CType for *mut T {
    fn c() -> String {
        format!("{}*", T::c())
    }
}
impl<T: CType> CType for *const T {
    fn c() -> String {
        format!("{} const*", T::c())
    }
}
impl<R: CType, A: CType> CType for unsafe extern "C" fn(A) -> R {
    fn c() -> String {
        format!("{} (*)({})", R::c(), A::c())
    }
}
impl<R: CType, A: CType, B: CType> CType for unsafe extern "C" fn(A, B) -> R {
    fn c() -> String {
        format!("{} (*)({}, {})", R::c(), A::c(), B::c())
    }
}
impl<R: CType, A: CType, B: CType, C: CType, D: CType> CType for unsafe extern "C" fn(A, B, C, D) -> R {
    fn c() -> String {
        format!("{} (*)({}, {}, {}, {})", R::c(), A::c(), B::c(), C::c(), D::c())
    }
}
impl<R: CType, A: CType, B: CType, C: CType, D: CType, E: CType, F: CType, G: CType> CType
    for unsafe extern "C" fn(A, B, C, D, E, F, G) -> R
{
    fn c() -> String {
        let args = [A::c(), B::c(), C::c(), D::c(), E::c(), F::c(), G::c()];
        format!("{} (*)({})", R::c(), args.join(", "))
    }
}

/// Every entry point nccl.rs loads, with the type it loads it as.
fn entry_points() -> Vec<(&'static str, String)> {
    vec![
        ("ncclGetUniqueId", <nccl::GetUniqueId as CType>::c()),
        ("ncclCommInitRank", <nccl::CommInitRank as CType>::c()),
        ("ncclAllReduce", <nccl::AllReduce as CType>::c()),
        ("ncclCommDestroy", <nccl::CommDestroy as CType>::c()),
        ("ncclCommAbort", <nccl::CommDestroy as CType>::c()),
        ("ncclGetErrorString", <nccl::GetErrorString as CType>::c()),
        ("ncclCommGetAsyncError", <nccl::GetAsyncError as CType>::c()),
        ("ncclGetLastError", <nccl::GetLastError as CType>::c()),
        ("ncclGetVersion", <nccl::GetVersion as CType>::c()),
    ]
}

struct Declared {
    constants: Vec<(&'static str, i64)>,
    unique_id_bytes: usize,
    unique_id_align: usize,
    comm_bytes: usize,
    int_bytes: usize,
    functions: Vec<(&'static str, String)>,
}

fn declared() -> Declared {
    Declared {
        constants: nccl::declared_constants(),
        unique_id_bytes: std::mem::size_of::<NcclUniqueId>(),
        unique_id_align: std::mem::align_of::<NcclUniqueId>(),
        comm_bytes: std::mem::size_of::<Comm>(),
        int_bytes: std::mem::size_of::<c_int>(),
        functions: entry_points(),
    }
}

/// gacc_nccl_expected.h: static_asserts comparing `d` with nccl.h.
fn expected_header(d: &Declared) -> String {
    let mut h = String::from("// Generated by tests/nccl_real.rs from src/distributed/nccl.rs.\n");
    h += &format!(
        "namespace gacc_rs {{\nstruct UniqueId {{ alignas({}) char internal[{}]; }};\n}}\n",
        d.unique_id_align, d.unique_id_bytes
    );
    let mut check = |cond: String, what: &str| {
        h += &format!(
            "static_assert({cond}, \"{what}: gacc's declaration (src/distributed/nccl.rs) differs from nccl.h\");\n"
        );
    };
    for (name, value) in &d.constants {
        check(format!("(long long){name} == {value}LL"), &format!("{name} = {value}"));
    }
    check(format!("NCCL_UNIQUE_ID_BYTES == {}", d.unique_id_bytes), "NCCL_UNIQUE_ID_BYTES");
    check(format!("sizeof(ncclUniqueId) == {}", d.unique_id_bytes), "sizeof(ncclUniqueId)");
    check(format!("alignof(ncclUniqueId) == {}", d.unique_id_align), "alignof(ncclUniqueId)");
    check(format!("sizeof(ncclComm_t) == {}", d.comm_bytes), "sizeof(ncclComm_t)");
    for t in ["ncclResult_t", "ncclDataType_t", "ncclRedOp_t"] {
        check(format!("sizeof({t}) == {}", d.int_bytes), &format!("sizeof({t}) (an int in gacc)"));
    }
    for (name, ty) in &d.functions {
        check(format!("gacc_abi::same_fn<decltype(&{name}), {ty}>::value"), &format!("{name} as {ty}"));
    }
    h
}

/// Compiles tests/nccl/abi_check.cpp against `nccl_dir`'s nccl.h with `header`.
fn compile_check(nccl_dir: &Path, header: &str, tag: &str) -> std::result::Result<(), String> {
    // GACC_SOURCE_DIR: the source tree when this binary runs elsewhere than where it
    // was built (scripts/gpu-check.sh on a GPU machine).
    let root = std::env::var_os("GACC_SOURCE_DIR").map(PathBuf::from);
    let root = root.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let out = std::env::temp_dir().join(format!("gacc-nccl-abi-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("gacc_nccl_expected.h"), header).unwrap();
    // nccl.h includes cuda_runtime.h (which needs crt/host_config.h) and cuda_fp16.h:
    // scripts/install-nccl.sh puts the crt headers next to nccl's wheel
    // (<wheel root>/nvidia/cu13/include), scripts/install-cuda-deps.sh the others
    // (GACC_CUDA_INCLUDE); else a system CUDA.
    let crt_inc = nccl_dir.join("../cu13/include");
    let cuda_inc = std::env::var("GACC_CUDA_INCLUDE").unwrap_or_else(|_| "/usr/local/cuda/include".into());
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let o = Command::new(&cxx)
        .args(["-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{}", out.display()))
        .arg(format!("-I{}", nccl_dir.join("include").display()))
        .arg(format!("-I{cuda_inc}"))
        .arg(format!("-I{}", crt_inc.display()))
        .arg("-I/usr/local/cuda/include")
        .arg(root.join("tests/nccl/abi_check.cpp"))
        .output()
        .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
    std::fs::remove_dir_all(&out).ok();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn declarations_match_the_real_nccl_header() {
    let Some(dir) = nccl_dir("declarations_match_the_real_nccl_header") else { return };
    let d = declared();
    if let Err(log) = compile_check(&dir, &expected_header(&d), "ok") {
        panic!("gacc's NCCL declarations differ from {}/include/nccl.h:\n{log}", dir.display());
    }
    // Every symbol nccl.rs loads is in the list checked above.
    let source = include_str!("../src/distributed/nccl.rs");
    let loaded: Vec<&str> = source
        .split(['(', ')'])
        .filter_map(|s| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .filter(|s| s.starts_with("nccl"))
        .collect();
    assert!(loaded.len() >= 9, "found only {loaded:?} in nccl.rs");
    for sym in loaded {
        assert!(d.functions.iter().any(|(n, _)| *n == sym), "{sym} is loaded by nccl.rs but not checked here");
    }
    println!("checked {} constants, 7 sizes and {} signatures against nccl.h", d.constants.len(), d.functions.len());
}

/// The check can fail: one wrong constant, one wrong size and one wrong parameter
/// type each fail the compile with their names.
#[test]
fn a_drifted_declaration_fails_the_check_naming_it() {
    let Some(dir) = nccl_dir("a_drifted_declaration_fails_the_check_naming_it") else { return };
    type WrongInit = unsafe extern "C" fn(*mut Comm, c_int, NcclUniqueId, u64) -> c_int;
    type WrongAllReduce =
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut Comm) -> c_int;
    let mut d = declared();
    for (name, value) in d.constants.iter_mut() {
        if *name == "ncclFloat32" {
            *value = 6; // ncclFloat16's value
        }
    }
    d.unique_id_bytes = 64;
    for (name, ty) in d.functions.iter_mut() {
        match *name {
            "ncclCommInitRank" => *ty = <WrongInit as CType>::c(),
            "ncclAllReduce" => *ty = <WrongAllReduce as CType>::c(),
            _ => {}
        }
    }
    let log = compile_check(&dir, &expected_header(&d), "drift").expect_err("a drifted declaration compiled");
    for name in ["ncclFloat32 = 6", "sizeof(ncclUniqueId)", "ncclCommInitRank as", "ncclAllReduce as"] {
        assert!(log.contains(name), "the failure does not name {name}:\n{log}");
    }
    // (ncclGetUniqueId's check fails too: its pointee, the 64-byte id, changed.)
    for name in ["ncclFloat64", "ncclGetErrorString as", "ncclGetVersion as"] {
        assert!(!log.contains(name), "{name} was reported though it matches:\n{log}");
    }
}

// ---- 2. the real library through gacc's loader --------------------------------------

const CHILD: &str = "GACC_NCCL_REAL_CHILD";

/// Runs this test binary on `test` alone, with `set` set and `unset` removed; the
/// child's output is printed; panics when it fails or takes over 120 s.
fn run_child(test: &str, set: &[(&str, &Path)], unset: &[&str]) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]).env(CHILD, "1");
    for (k, v) in set {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() > 120 {
            child.kill().ok();
            panic!("{test}: the child process hung (over 120 s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    println!("---- child {test}:\n{text}");
    assert!(o.status.success(), "{test}: child failed ({}):\n{text}", o.status);
    assert!(text.contains("real NCCL checks done"), "{test}: the child did not run the checks:\n{text}");
}

fn last_error() -> String {
    // SAFETY: gacc_last_error returns a NUL-terminated per-thread string.
    unsafe { CStr::from_ptr(gacc_last_error()) }.to_string_lossy().into_owned()
}

/// "MAJOR.MINOR.PATCH" from nccl.h's NCCL_MAJOR/MINOR/PATCH.
fn header_version(dir: &Path) -> String {
    let h = std::fs::read_to_string(dir.join("include/nccl.h")).unwrap();
    let get = |key: &str| {
        h.lines()
            .find_map(|l| l.strip_prefix(&format!("#define {key} ")).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{key} not in nccl.h"))
    };
    format!("{}.{}.{}", get("NCCL_MAJOR"), get("NCCL_MINOR"), get("NCCL_PATCH"))
}

/// The checks, in a child process whose gacc has not loaded NCCL yet; `expect_name`
/// is the name gacc must report having opened.
fn check_real_library(dir: &Path, expect_name: &str) {
    // Before anything: an unique id through the C API loads the library.
    let mut id = gacc_nccl_id { internal: [0; 128] };
    let st = unsafe { gacc_nccl_unique_id(&mut id) };
    assert_eq!(st, gacc_status::GACC_OK, "gacc_nccl_unique_id: {}", last_error());
    assert!(id.internal.iter().any(|&b| b != 0), "the unique id is all zeros");
    let mut id2 = gacc_nccl_id { internal: [0; 128] };
    assert_eq!(unsafe { gacc_nccl_unique_id(&mut id2) }, gacc_status::GACC_OK);
    assert_ne!(id.internal, id2.internal, "two unique ids are equal");

    let api = nccl::api().unwrap();
    let described = api.describe();
    println!("gacc loaded {described}");
    let version = header_version(dir);
    assert_eq!(described, format!("NCCL {version} ({expect_name})"), "version or library name");

    // Error strings are NCCL's own (ncclResult_t values from nccl.h).
    let text = |r: c_int| api.error_string(r);
    assert!(text(0).starts_with("no error"), "{}", text(0));
    assert!(text(1).starts_with("unhandled cuda error"), "{}", text(1));
    assert!(text(4).starts_with("invalid argument"), "{}", text(4));
    assert!(text(1).contains("(ncclResult_t 1)"), "{}", text(1));
    for r in 1..=7 {
        println!("  ncclResult_t {r}: {}", text(r));
    }

    // A CPU engine refuses NCCL with a clear status, and its window survives.
    unsafe {
        let mut cfg = std::mem::zeroed::<gacc_config>();
        gacc_config_init(&mut cfg);
        cfg.device = GACC_DEVICE_CPU;
        cfg.optimizer = GACC_OPTIMIZER_SGD;
        cfg.lr = 1.0;
        cfg.weight_decay = 0.0;
        let init = [1.0f32, 2.0, 3.0, 4.0];
        let desc = gacc_tensor_desc { name: std::ptr::null(), numel: 4, init: init.as_ptr(), no_weight_decay: 0 };
        let mut e: *mut gacc_engine = std::ptr::null_mut();
        assert_eq!(gacc_create(&cfg, &desc, 1, &mut e), gacc_status::GACC_OK);
        let g = [0.5f32; 4];
        assert_eq!(gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, 4, 1.0), gacc_status::GACC_OK);
        let st = gacc_set_nccl(e, &id, 0, 1);
        let msg = last_error();
        println!("gacc_set_nccl on a CPU engine: {:?} ({msg})", st);
        assert_eq!(st, gacc_status::GACC_ERR_INVALID_STATE, "{msg}");
        assert!(msg.contains("CUDA"), "{msg}");
        assert_eq!(gacc_step(e, std::ptr::null_mut()), gacc_status::GACC_OK);
        let mut out = [0f32; 4];
        assert_eq!(gacc_params_read(e, out.as_mut_ptr(), 4), gacc_status::GACC_OK);
        assert_eq!(out, [0.5, 1.5, 2.5, 3.5], "the window accumulated before gacc_set_nccl was lost");
        gacc_destroy(e);

        // Without a GPU there is no CUDA engine to join.
        if gacc::backend::cuda::probe(0).is_err() {
            cfg.device = 0;
            let st = gacc_create(&cfg, &desc, 1, &mut e);
            println!("gacc_create on device 0: {:?} ({})", st, last_error());
            assert_eq!(st, gacc_status::GACC_ERR_DEVICE_UNAVAILABLE);

            // ncclCommInitRank itself, as gacc_set_nccl would call it: NCCL's own
            // failure becomes GACC_ERR_COMMUNICATION with NCCL's text; nothing aborts.
            let mut raw = NcclUniqueId { internal: [0; 128] };
            for (c, b) in raw.internal.iter_mut().zip(id.internal) {
                *c = b as c_char;
            }
            match nccl::NcclComm::init(&raw, 0, 1) {
                Ok(_) => panic!("ncclCommInitRank succeeded without a GPU"),
                Err(err) => {
                    println!("ncclCommInitRank without a GPU: {:?}: {}", err.status, err.message);
                    assert_eq!(err.status, gacc_status::GACC_ERR_COMMUNICATION);
                    assert!(err.message.contains("ncclCommInitRank (rank 0 of 1)"), "{}", err.message);
                    assert!(err.message.contains("ncclResult_t"), "{}", err.message);
                }
            }
        }
    }
    println!("real NCCL checks done");
}

#[test]
fn real_library_named_by_gacc_nccl_lib() {
    let test = "real_library_named_by_gacc_nccl_lib";
    let Some(dir) = nccl_dir(test) else { return };
    let lib = dir.join("lib/libnccl.so.2");
    if std::env::var_os(CHILD).is_some() {
        check_real_library(&dir, &lib.display().to_string());
    } else {
        run_child(test, &[("GACC_NCCL_LIB", &lib)], &["LD_LIBRARY_PATH"]);
    }
}

/// The search a user relies on: GACC_NCCL_LIB unset, libnccl.so.2 through the
/// dynamic loader (LD_LIBRARY_PATH here; ldconfig or an rpath elsewhere).
#[test]
fn real_library_found_by_the_default_search() {
    let test = "real_library_found_by_the_default_search";
    let Some(dir) = nccl_dir(test) else { return };
    if std::env::var_os(CHILD).is_some() {
        assert!(std::env::var_os("GACC_NCCL_LIB").is_none());
        check_real_library(&dir, "libnccl.so.2");
    } else {
        run_child(test, &[("LD_LIBRARY_PATH", &dir.join("lib"))], &["GACC_NCCL_LIB"]);
    }
}
