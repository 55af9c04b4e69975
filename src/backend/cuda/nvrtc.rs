//! NVRTC: found at run time, asked for a cubin for the device's exact architecture.
//!
//! A cubin (not PTX) because PTX made by a newer NVRTC is rejected by an older
//! driver, while a cubin loads on any driver of the same CUDA major version (and a
//! driver refuses the cubin of a newer major: NVRTC 13 with a 12.x driver fails).
//! So the NVRTC chosen matches the driver's major version ([`candidates`],
//! [`check_driver_compatible`]), and when the device is newer than every
//! architecture this NVRTC knows (nvrtcGetSupportedArchs), the kernels are compiled
//! to PTX for the newest one it knows, which the driver JIT-compiles for the device
//! ([`choose_target`]).
//!
//! Where NVRTC comes from: the environment variable `GACC_NVRTC_LIB` (full path of
//! libnvrtc.so.*; refused when its major version is newer than the driver's), else
//! libnvrtc.so.<driver major> and then libnvrtc.so when a driver is loaded, else
//! the default names (libnvrtc.so.13, .12, libnvrtc.so), through the dynamic
//! loader. The CUDA headers NVRTC needs for cuda_fp16.h / cuda_bf16.h
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
    ptx_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    ptx: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    error_string: unsafe extern "C" fn(NvrtcResult) -> *const c_char,
    /// The architectures this NVRTC compiles for (empty: it cannot say, NVRTC < 11.2).
    supported_archs: Vec<u32>,
}

// SAFETY: NVRTC's API is thread-safe (programs are not shared between threads here).
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// The libraries tried, in order: `explicit` (GACC_NVRTC_LIB) alone; with a driver
/// of CUDA major `driver_major`, the NVRTC of that major and then the unversioned
/// name (whose version [`check_driver_compatible`] checks); without a driver, the
/// newest first.
pub fn candidates(explicit: Option<String>, driver_major: Option<u32>) -> Vec<String> {
    if let Some(p) = explicit {
        return vec![p];
    }
    match driver_major {
        Some(major) => vec![format!("libnvrtc.so.{major}"), "libnvrtc.so".to_string()],
        None => ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"].iter().map(|s| s.to_string()).collect(),
    }
}

/// Whether code from NVRTC `nvrtc_major` loads on a driver of CUDA `driver_major`:
/// not when NVRTC is newer (the driver refuses its cubin and its PTX).
pub fn check_driver_compatible(
    nvrtc: (i32, i32),
    driver_major: Option<u32>,
    path: &str,
) -> std::result::Result<(), String> {
    match driver_major {
        Some(d) if i64::from(nvrtc.0) > i64::from(d) => Err(format!(
            "{path} is NVRTC {}.{}, newer than the CUDA {d}.x driver, which cannot load what it compiles; \
             install NVRTC {d} (e.g. pip install nvidia-cuda-nvrtc-cu{d}) or point GACC_NVRTC_LIB at it",
            nvrtc.0, nvrtc.1
        )),
        _ => Ok(()),
    }
}

/// The loaded driver's CUDA major version (None without a driver).
fn driver_major() -> Option<u32> {
    super::driver::driver_version().and_then(|v| v.split('.').next()?.parse().ok())
}

fn load_api() -> std::result::Result<Api, String> {
    let mut tried = Vec::new();
    let driver = driver_major();
    let explicit = std::env::var_os("GACC_NVRTC_LIB").map(|p| p.to_string_lossy().into_owned());
    for name in candidates(explicit, driver) {
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
            if let Err(e) = check_driver_compatible((major, minor), driver, &path) {
                tried.push(e);
                continue;
            }
            let supported_archs = supported_archs(&lib);
            return Ok(Api {
                create: sym!(b"nvrtcCreateProgram\0"),
                compile: sym!(b"nvrtcCompileProgram\0"),
                destroy: sym!(b"nvrtcDestroyProgram\0"),
                log_size: sym!(b"nvrtcGetProgramLogSize\0"),
                log: sym!(b"nvrtcGetProgramLog\0"),
                cubin_size: sym!(b"nvrtcGetCUBINSize\0"),
                cubin: sym!(b"nvrtcGetCUBIN\0"),
                ptx_size: sym!(b"nvrtcGetPTXSize\0"),
                ptx: sym!(b"nvrtcGetPTX\0"),
                supported_archs,
                error_string: sym!(b"nvrtcGetErrorString\0"),
                version: (major, minor),
                path,
                _lib: lib,
            });
        }
    }
    Err(format!("NVRTC not found (set GACC_NVRTC_LIB to the full path of libnvrtc.so.*); tried: {}", tried.join("; ")))
}

/// nvrtcGetSupportedArchs (NVRTC 11.2 and later; empty before).
fn supported_archs(lib: &libloading::Library) -> Vec<u32> {
    type Num = unsafe extern "C" fn(*mut c_int) -> NvrtcResult;
    type List = unsafe extern "C" fn(*mut c_int) -> NvrtcResult;
    // SAFETY: NVRTC's documented signatures; the list has the size NVRTC reported.
    unsafe {
        let (Ok(num), Ok(list)) =
            (lib.get::<Num>(b"nvrtcGetNumSupportedArchs\0"), lib.get::<List>(b"nvrtcGetSupportedArchs\0"))
        else {
            return Vec::new();
        };
        let mut n: c_int = 0;
        if num(&mut n) != 0 || n <= 0 {
            return Vec::new();
        }
        let mut archs = vec![0 as c_int; n as usize];
        if list(archs.as_mut_ptr()) != 0 {
            return Vec::new();
        }
        archs.into_iter().filter(|&a| a > 0).map(|a| a as u32).collect()
    }
}

/// What NVRTC produces for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeTarget {
    /// A cubin for `sm_<arch>`, the device's own architecture.
    Cubin(u32),
    /// PTX for `compute_<arch>` (an older architecture than the device's), which the
    /// driver JIT-compiles when the module is loaded.
    Ptx(u32),
}

impl CodeTarget {
    /// NVRTC's --gpu-architecture option.
    pub fn arch_option(self) -> String {
        match self {
            CodeTarget::Cubin(a) => format!("--gpu-architecture=sm_{a}"),
            CodeTarget::Ptx(a) => format!("--gpu-architecture=compute_{a}"),
        }
    }
    /// "sm90" or "compute90-ptx" (cache keys, messages).
    pub fn label(self) -> String {
        match self {
            CodeTarget::Cubin(a) => format!("sm{a}"),
            CodeTarget::Ptx(a) => format!("compute{a}-ptx"),
        }
    }
}

/// A cubin when NVRTC knows the device's architecture (or cannot list what it
/// knows); otherwise PTX for the newest architecture it knows that is older than
/// the device's; None when every one it knows is newer than the device.
pub fn choose_target(device_arch: u32, supported: &[u32]) -> Option<CodeTarget> {
    if supported.is_empty() || supported.contains(&device_arch) {
        return Some(CodeTarget::Cubin(device_arch));
    }
    supported.iter().copied().filter(|&a| a < device_arch).max().map(CodeTarget::Ptx)
}

/// The architectures the loaded NVRTC compiles for (empty when it cannot say).
pub fn supported_archs_of_loaded() -> Result<Vec<u32>> {
    api().map(|a| a.supported_archs.clone())
}

/// What the library compiles for a device of compute capability `device_arch`
/// with the loaded NVRTC ([`choose_target`]); an error names both when NVRTC only
/// knows newer architectures.
pub fn target_for(device_arch: u32) -> Result<CodeTarget> {
    let api = api()?;
    choose_target(device_arch, &api.supported_archs).ok_or_else(|| {
        Error::device(format!(
            "NVRTC {}.{} ({}) compiles for sm_{:?}, all newer than the device's sm_{device_arch}",
            api.version.0, api.version.1, api.path, api.supported_archs
        ))
    })
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
    target_options(CodeTarget::Cubin(arch))
}

/// [`base_options`] for a cubin or PTX target.
pub fn target_options(target: CodeTarget) -> Vec<String> {
    vec![
        target.arch_option(),
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
    /// The module image: a cubin, or NUL-terminated PTX text for a
    /// [`CodeTarget::Ptx`] compile (cuModuleLoadData takes either).
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
            let ptx = options.iter().any(|o| o.starts_with("--gpu-architecture=compute_"));
            if ptx {
                check(api, (api.ptx_size)(prog, &mut size), "nvrtcGetPTXSize")?;
            } else {
                check(api, (api.cubin_size)(prog, &mut size), "nvrtcGetCUBINSize")?;
            }
            let mut cubin = vec![0u8; size];
            if ptx {
                check(api, (api.ptx)(prog, cubin.as_mut_ptr() as *mut c_char), "nvrtcGetPTX")?;
            } else {
                check(api, (api.cubin)(prog, cubin.as_mut_ptr() as *mut c_char), "nvrtcGetCUBIN")?;
            }
            Ok(Compiled { cubin, log })
        })();
        (api.destroy)(&mut prog);
        result
    }
}

/// Compiles the library's kernel bundle for `sm_{arch}` with the library's options
/// plus `extra` (the compile test adds --ptxas-options=-v).
pub fn compile_kernels(arch: u32, extra: &[String]) -> Result<Compiled> {
    compile_kernels_for(CodeTarget::Cubin(arch), extra)
}

/// [`compile_kernels`] for a cubin or PTX target.
pub fn compile_kernels_for(target: CodeTarget, extra: &[String]) -> Result<Compiled> {
    let mut options = target_options(target);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails before the fix: NVRTC 13 was tried first whatever the driver.
    #[test]
    fn the_nvrtc_of_the_drivers_major_is_chosen() {
        assert_eq!(candidates(None, Some(12)), ["libnvrtc.so.12", "libnvrtc.so"]);
        assert_eq!(candidates(None, Some(13)), ["libnvrtc.so.13", "libnvrtc.so"]);
        assert_eq!(candidates(None, None), ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]);
        assert_eq!(candidates(Some("/x/libnvrtc.so.13".into()), Some(12)), ["/x/libnvrtc.so.13"]);
        let e = check_driver_compatible((13, 0), Some(12), "/x/libnvrtc.so.13").unwrap_err();
        assert!(e.contains("NVRTC 13.0") && e.contains("CUDA 12.x driver"), "{e}");
        assert!(check_driver_compatible((12, 8), Some(12), "n").is_ok());
        assert!(check_driver_compatible((12, 8), Some(13), "n").is_ok(), "an older NVRTC's cubin loads");
        assert!(check_driver_compatible((13, 0), None, "n").is_ok(), "no driver: nothing to check");
    }

    /// Fails before the fix: an architecture NVRTC does not know got no code at all.
    #[test]
    fn an_architecture_newer_than_nvrtc_gets_ptx_for_the_newest_it_knows() {
        let known = [75, 80, 86, 89, 90, 100, 120];
        assert_eq!(choose_target(90, &known), Some(CodeTarget::Cubin(90)));
        assert_eq!(choose_target(130, &known), Some(CodeTarget::Ptx(120)));
        assert_eq!(choose_target(87, &known), Some(CodeTarget::Ptx(86)), "unknown in between: the next older");
        assert_eq!(choose_target(70, &known), None, "older than every known architecture");
        assert_eq!(choose_target(90, &[]), Some(CodeTarget::Cubin(90)), "NVRTC cannot list: try the device's own");
        assert_eq!(CodeTarget::Ptx(120).arch_option(), "--gpu-architecture=compute_120");
    }
}
