//! Layer 1 of the CUDA verification: every kernel compiles with NVRTC through the
//! library's own compile path, for sm_80 and sm_90, with no error, no warning and no
//! register spill (ptxas verbose output parsed). Each kernels/*.cu compiles on its
//! own given only include paths; the bundle the library embeds compiles too.
//!
//! Needs NVRTC and the CUDA headers: `eval "$(scripts/install-cuda-deps.sh)"`
//! (sets GACC_NVRTC_LIB and GACC_CUDA_INCLUDE). Without them the tests say
//! "skipped"; with GACC_REQUIRE_NVRTC=1 they fail instead.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gacc::backend::cuda::{cache, kernels, nvrtc};

const ARCHS: [u32; 2] = [80, 90];

fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc::available() && nvrtc::cuda_include_dir().is_some() {
        return true;
    }
    let why = if nvrtc::available() {
        "CUDA headers not found (set GACC_CUDA_INCLUDE)"
    } else {
        "NVRTC not found (set GACC_NVRTC_LIB)"
    };
    if std::env::var("GACC_REQUIRE_NVRTC").as_deref() == Ok("1") {
        panic!("{test}: GACC_REQUIRE_NVRTC=1 but {why}");
    }
    println!("skipped: {test}: {why}");
    false
}

/// Per-kernel ptxas report.
#[derive(Debug, Default, Clone, PartialEq)]
struct KernelUsage {
    registers: u32,
    smem: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
    /// ptxas printed the stack/spill line for this kernel.
    seen_spill_line: bool,
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let idx = line.find(unit)?;
    line[..idx].split_whitespace().last()?.parse().ok()
}

/// Parses NVRTC's log (with --ptxas-options=-v); fails on any error or warning.
fn parse_log(log: &str, what: &str) -> BTreeMap<String, KernelUsage> {
    let mut out: BTreeMap<String, KernelUsage> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        let lower = line.to_ascii_lowercase();
        assert!(!lower.contains("warning") && !lower.contains("error"), "{what}: NVRTC reported: {line}\n{log}");
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().map(str::to_string);
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some(rest.trim().to_string());
        }
        let Some(k) = current.clone() else { continue };
        let u = out.entry(k).or_default();
        if line.contains("bytes stack frame") {
            u.stack = number_before(line, "bytes stack frame").unwrap_or(0);
            u.spill_stores = number_before(line, "bytes spill stores").expect("spill stores");
            u.spill_loads = number_before(line, "bytes spill loads").expect("spill loads");
            u.seen_spill_line = true;
        }
        if line.contains("registers") {
            u.registers = number_before(line, "registers").expect("registers");
            u.smem = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

fn options(arch: u32, extra_includes: &[PathBuf]) -> Vec<String> {
    let mut o = nvrtc::base_options(arch);
    o.extend(nvrtc::kernel_include_options().unwrap());
    for i in extra_includes {
        o.push(format!("-I{}", i.display()));
    }
    o.push("--ptxas-options=-v".into());
    o
}

fn check_usage(usage: &BTreeMap<String, KernelUsage>, what: &str, expect: &[&str]) {
    for name in expect {
        let u = usage.get(*name).unwrap_or_else(|| panic!("{what}: no ptxas report for {name}: {usage:?}"));
        assert!(u.seen_spill_line, "{what}: ptxas printed no spill line for {name}: {u:?}");
        assert_eq!((u.spill_stores, u.spill_loads), (0, 0), "{what}: {name} spills: {u:?}");
        assert!(u.registers > 0, "{what}: {name}: {u:?}");
    }
}

#[test]
fn each_kernel_file_compiles_standalone() {
    if !nvrtc_or_skip("each_kernel_file_compiles_standalone") {
        return;
    }
    let kernel_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
    for arch in ARCHS {
        for (file, _) in kernels::KERNEL_FILES {
            let src = std::fs::read_to_string(kernel_dir.join(file)).unwrap();
            let what = format!("{file} for sm_{arch}");
            let compiled = nvrtc::compile(&src, file, &[], &options(arch, std::slice::from_ref(&kernel_dir)))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(compiled.cubin.starts_with(b"\x7fELF"), "{what}: not a cubin");
            let usage = parse_log(&compiled.log, &what);
            let names: Vec<&str> =
                kernels::KERNEL_NAMES.iter().copied().filter(|k| src.contains(&format!("{k}("))).collect();
            assert!(!names.is_empty(), "{what}: no kernel found");
            check_usage(&usage, &what, &names);
        }
    }
}

#[test]
fn library_bundle_compiles_for_sm80_and_sm90_without_spills() {
    if !nvrtc_or_skip("library_bundle_compiles_for_sm80_and_sm90_without_spills") {
        return;
    }
    let mut table = String::new();
    table.push_str("| kernel | arch | registers | shared memory (B) | stack (B) | spills (B) |\n");
    table.push_str("|---|---|---|---|---|---|\n");
    for arch in ARCHS {
        let compiled = nvrtc::compile_kernels(arch, &["--ptxas-options=-v".to_string()])
            .unwrap_or_else(|e| panic!("bundle for sm_{arch}: {e}"));
        assert!(compiled.cubin.starts_with(b"\x7fELF"));
        let usage = parse_log(&compiled.log, &format!("bundle sm_{arch}"));
        check_usage(&usage, &format!("bundle sm_{arch}"), &kernels::KERNEL_NAMES);
        for name in kernels::KERNEL_NAMES {
            let u = &usage[name];
            table.push_str(&format!(
                "| {name} | sm_{arch} | {} | {} | {} | {} |\n",
                u.registers,
                u.smem,
                u.stack,
                u.spill_stores + u.spill_loads
            ));
        }
    }
    println!("NVRTC {:?} from {}\n{table}", nvrtc::version().unwrap(), nvrtc::library_path().unwrap());
}

#[test]
fn a_compile_error_carries_the_log_and_versions() {
    if !nvrtc_or_skip("a_compile_error_carries_the_log_and_versions") {
        return;
    }
    let err =
        nvrtc::compile("extern \"C\" __global__ void k() { undefined_thing(); }", "bad.cu", &[], &options(80, &[]))
            .unwrap_err();
    assert_eq!(err.status, gacc::gacc_status::GACC_ERR_DEVICE);
    assert!(err.message.contains("undefined_thing"), "{}", err.message);
    assert!(err.message.contains("NVRTC 13.") || err.message.contains("NVRTC 12."), "{}", err.message);
}

#[test]
fn compiled_module_is_cached_in_memory_and_on_disk() {
    if !nvrtc_or_skip("compiled_module_is_cached_in_memory_and_on_disk") {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gacc-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (first, origin) = cache::kernels_cubin_in(Some(&dir), 80, false).unwrap();
    assert_eq!(origin, cache::Origin::Compiled);
    let key = cache::cache_key(80).unwrap();
    assert!(
        key.contains("sm80")
            && key.contains(&format!("nvrtc{}.{}", nvrtc::version().unwrap().0, nvrtc::version().unwrap().1)),
        "{key}"
    );
    let on_disk = std::fs::read(dir.join(format!("{key}.cubin"))).expect("cubin written to the disk cache");
    assert_eq!(on_disk, *first);
    let (second, origin) = cache::kernels_cubin_in(Some(&dir), 80, false).unwrap();
    assert_eq!(origin, cache::Origin::Memory);
    assert_eq!(*second, *first);
    assert_ne!(cache::cache_key(90).unwrap(), key, "the architecture is part of the key");
    // A corrupt disk entry is replaced by a fresh compile (refresh), never an error.
    std::fs::write(dir.join(format!("{key}.cubin")), b"garbage").unwrap();
    let (third, origin) = cache::kernels_cubin_in(Some(&dir), 80, true).unwrap();
    assert_eq!(origin, cache::Origin::Compiled);
    assert_eq!(std::fs::read(dir.join(format!("{key}.cubin"))).unwrap(), *third);
    // An unwritable cache folder costs a compile, not a failure.
    let unwritable = PathBuf::from("/proc/gacc-cannot-write-here");
    assert!(cache::kernels_cubin_in(Some(&unwritable), 90, false).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fails before the fix (NVRTC was asked for sm_<device arch> and refused it): a
/// device newer than every architecture this NVRTC knows gets PTX for the newest
/// one it knows (compute_XX, JIT-compiled by the driver), through the library's
/// cache path, with its own cache key.
#[test]
fn an_unknown_newer_architecture_gets_ptx_for_the_newest_known() {
    if !nvrtc_or_skip("an_unknown_newer_architecture_gets_ptx_for_the_newest_known") {
        return;
    }
    let known = nvrtc::supported_archs_of_loaded().unwrap();
    let Some(&newest) = known.iter().max() else {
        println!("skipped: this NVRTC cannot list its architectures");
        return;
    };
    let future = newest + 10;
    assert_eq!(nvrtc::target_for(future).unwrap(), nvrtc::CodeTarget::Ptx(newest));
    let key = cache::cache_key(future).unwrap();
    assert!(key.contains(&format!("compute{newest}-ptx")), "{key}");
    let (image, _) = cache::kernels_cubin_in(None, future, true).unwrap();
    assert_eq!(image.last(), Some(&0), "PTX for cuModuleLoadData is NUL-terminated");
    let text = String::from_utf8_lossy(&image[..image.len() - 1]).into_owned();
    assert!(text.contains(&format!(".target sm_{newest}")), "PTX targets sm_{newest}");
    for name in kernels::KERNEL_NAMES {
        assert!(text.contains(&format!(".entry {name}(")), "{name} missing from the PTX");
    }
}
