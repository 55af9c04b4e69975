//! NVRTC: found at run time, asked for a cubin for the device's exact architecture.
//!
//! A cubin (not PTX) because PTX made by a newer NVRTC is rejected by an older
//! driver, while a cubin loads on any driver of the same CUDA major version.
//!
//! Where NVRTC comes from: the environment variable `GACC_NVRTC_LIB` (full path of
//! libnvrtc.so.*), else the default names (libnvrtc.so.13, .12, libnvrtc.so) through
//! the dynamic loader. The CUDA headers NVRTC needs for cuda_fp16.h / cuda_bf16.h
//! come from `GACC_CUDA_INCLUDE`, else from a pip-installed layout next to the
//! NVRTC library (…/nvidia/cu13/include or …/nvidia/cuda_runtime/include), else
//! /usr/local/cuda/include. The library is opened by gacc itself (libloading), not
//! through cudarc's loader, so that a missing NVRTC is an error, never a panic.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::status::{Error, Result};

type NvrtcResult = c_int;
type NvrtcProgram = *mut c_void;

/// The NVRTC entry points gacc uses.
struct Api {
    _lib: libloading::Library,
    path: String,
    version: (i32, i32),
    create: unsafe extern "C" fn(
        *mut NvrtcProgram,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> NvrtcResult,
    compile: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> NvrtcResult,
    destroy: unsafe extern "C" fn(*mut NvrtcProgram) -> NvrtcResult,
    log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    cubin_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    cubin: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    error_string: unsafe extern "C" fn(NvrtcResult) -> *const c_char,
}

// SAFETY: NVRTC's API is thread-safe (programs are not shared between threads here).
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

fn candidates() -> Vec<String> {
    if let Some(p) = std::env::var_os("GACC_NVRTC_LIB") {
        return vec![p.to_string_lossy().into_owned()];
    }
    ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"].iter().map(|s| s.to_string()).collect()
}

fn load_api() -> std::result::Result<Api, String> {
    let mut tried = Vec::new();
    for name in candidates() {
        // SAFETY: loading NVRTC runs its initialisers, which have no preconditions.
        let lib = match unsafe { libloading::Library::new(&name) } {
            Ok(lib) => lib,
            Err(e) => {
                tried.push(format!("{name}: {e}"));
                continue;
            }
        };
        // SAFETY: the symbol types are NVRTC's documented C signatures.
        unsafe {
            macro_rules! sym {
                ($s:literal) => {
                    *lib.get($s).map_err(|e| format!("{name}: missing symbol: {e}"))?
                };
            }
            let version_fn: unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult = sym!(b"nvrtcVersion\0");
            let (mut major, mut minor) = (0, 0);
            if version_fn(&mut major, &mut minor) != 0 {
                return Err(format!("{name}: nvrtcVersion failed"));
            }
            let path = loaded_path(&lib, name.as_str());
            return Ok(Api {
                create: sym!(b"nvrtcCreateProgram\0"),
                compile: sym!(b"nvrtcCompileProgram\0"),
                destroy: sym!(b"nvrtcDestroyProgram\0"),
                log_size: sym!(b"nvrtcGetProgramLogSize\0"),
                log: sym!(b"nvrtcGetProgramLog\0"),
                cubin_size: sym!(b"nvrtcGetCUBINSize\0"),
                cubin: sym!(b"nvrtcGetCUBIN\0"),
                error_string: sym!(b"nvrtcGetErrorString\0"),
                version: (major, minor),
                path,
                _lib: lib,
            });
        }
    }
    Err(format!("NVRTC not found (set GACC_NVRTC_LIB to the full path of libnvrtc.so.*); tried: {}", tried.join("; ")))
}

/// The file a loaded library came from (dladdr on one of its symbols).
fn loaded_path(lib: &libloading::Library, fallback: &str) -> String {
    // SAFETY: dladdr only reads the loader's tables.
    unsafe {
        if let Ok(sym) = lib.get::<*const c_void>(b"nvrtcVersion\0") {
            let mut info: libc::Dl_info = std::mem::zeroed();
            if libc::dladdr(*sym, &mut info) != 0 && !info.dli_fname.is_null() {
                return CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned();
            }
        }
    }
    fallback.to_string()
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load_api).as_ref().map_err(|e| Error::device(e.clone()))
}

/// Whether NVRTC can be loaded (without failing).
pub fn available() -> bool {
    api().is_ok()
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32)> {
    api().map(|a| a.version)
}

/// The path of the NVRTC library in use.
pub fn library_path() -> Result<String> {
    api().map(|a| a.path.clone())
}

/// The folder holding cuda_fp16.h and cuda_bf16.h, if one can be found.
pub fn cuda_include_dir() -> Option<PathBuf> {
    let has_headers = |p: &Path| p.join("cuda_fp16.h").is_file() && p.join("cuda_bf16.h").is_file();
    if let Some(dir) = std::env::var_os("GACC_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(lib) = library_path() {
        // pip layouts: nvidia/cu13/{lib,include}, nvidia/cuda_nvrtc/lib + nvidia/cuda_runtime/include
        let lib_dir = Path::new(&lib).parent().map(Path::to_path_buf).unwrap_or_default();
        if let Some(pkg) = lib_dir.parent() {
            for cand in [pkg.join("include"), pkg.join("../cuda_runtime/include")] {
                if has_headers(&cand) {
                    return Some(cand);
                }
            }
        }
    }
    let system = PathBuf::from("/usr/local/cuda/include");
    has_headers(&system).then_some(system)
}

/// The options every gacc compile uses: IEEE, unfused arithmetic so that kernels
/// round exactly like the CPU backend (src/engine/math.rs).
pub fn base_options(arch: u32) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{arch}"),
        "--fmad=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--ftz=false".into(),
        "-std=c++17".into(),
    ]
}

/// What a compile produced.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// NVRTC's log (with --ptxas-options=-v: registers, shared memory, spills).
    pub log: String,
}

fn check(api: &Api, r: NvrtcResult, what: &str) -> Result<()> {
    if r == 0 {
        return Ok(());
    }
    // SAFETY: nvrtcGetErrorString returns a static string for any value.
    let s = unsafe { CStr::from_ptr((api.error_string)(r)) }.to_string_lossy().into_owned();
    Err(Error::device(format!("{what} failed: {s} (NVRTC {}.{}, {})", api.version.0, api.version.1, api.path)))
}

/// Compiles `source` (named `name` in messages) with in-memory `headers`
/// (name, text) and `options`, returning the cubin and the log. A compile error
/// carries NVRTC's log and version.
pub fn compile(source: &str, name: &str, headers: &[(&str, &str)], options: &[String]) -> Result<Compiled> {
    let api = api()?;
    let c = |s: &str| CString::new(s).map_err(|_| Error::internal("NUL byte in an NVRTC input"));
    let src = c(source)?;
    let cname = c(name)?;
    let header_src: Vec<CString> = headers.iter().map(|h| c(h.1)).collect::<Result<_>>()?;
    let header_names: Vec<CString> = headers.iter().map(|h| c(h.0)).collect::<Result<_>>()?;
    let hs: Vec<*const c_char> = header_src.iter().map(|s| s.as_ptr()).collect();
    let hn: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
    let opts: Vec<CString> = options.iter().map(|o| c(o)).collect::<Result<_>>()?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
    let mut prog: NvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is a live NUL-terminated string; counts match the arrays.
    unsafe {
        check(
            api,
            (api.create)(&mut prog, src.as_ptr(), cname.as_ptr(), hs.len() as c_int, hs.as_ptr(), hn.as_ptr()),
            "nvrtcCreateProgram",
        )?;
        let result = (|| {
            let r = (api.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let mut log_len = 0usize;
            check(api, (api.log_size)(prog, &mut log_len), "nvrtcGetProgramLogSize")?;
            let mut log = vec![0u8; log_len.max(1)];
            check(api, (api.log)(prog, log.as_mut_ptr() as *mut c_char), "nvrtcGetProgramLog")?;
            let log =
                String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(log.len())]).into_owned();
            if r != 0 {
                let s = CStr::from_ptr((api.error_string)(r)).to_string_lossy().into_owned();
                return Err(Error::device(format!(
                    "NVRTC could not compile {name} ({s}; NVRTC {}.{} from {}; options {}):\n{log}",
                    api.version.0,
                    api.version.1,
                    api.path,
                    options.join(" ")
                )));
            }
            let mut size = 0usize;
            check(api, (api.cubin_size)(prog, &mut size), "nvrtcGetCUBINSize")?;
            let mut cubin = vec![0u8; size];
            check(api, (api.cubin)(prog, cubin.as_mut_ptr() as *mut c_char), "nvrtcGetCUBIN")?;
            Ok(Compiled { cubin, log })
        })();
        (api.destroy)(&mut prog);
        result
    }
}

/// Compiles the library's kernel bundle for `sm_{arch}` with the library's options
/// plus `extra` (the compile test adds --ptxas-options=-v).
pub fn compile_kernels(arch: u32, extra: &[String]) -> Result<Compiled> {
    let mut options = base_options(arch);
    options.extend(kernel_include_options()?);
    options.extend(extra.iter().cloned());
    compile(
        &super::kernels::bundle_source(),
        "gacc_kernels.cu",
        &[("common.cuh", super::kernels::COMMON_CUH)],
        &options,
    )
}

/// -I for the CUDA headers (an error naming GACC_CUDA_INCLUDE when none is found).
pub fn kernel_include_options() -> Result<Vec<String>> {
    match cuda_include_dir() {
        Some(dir) => Ok(vec![format!("-I{}", dir.display())]),
        None => Err(Error::device(
            "the CUDA headers (cuda_fp16.h, cuda_bf16.h) were not found: set GACC_CUDA_INCLUDE \
             (scripts/install-cuda-deps.sh installs them from PyPI)",
        )),
    }
}
