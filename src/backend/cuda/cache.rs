//! The compiled-module cache: in memory for the process, on disk across processes.
//!
//! Key: a hash of the kernel sources and every compile option, the architecture and
//! the NVRTC version. Disk location: `GACC_CACHE_DIR`, else `$XDG_CACHE_HOME/gacc`,
//! else `~/.cache/gacc`. Files are written to a temporary name of their own (process
//! id and a per-process counter: unique per writer, also for two engines compiling
//! at once in one process) and renamed, so a concurrent reader sees a whole cubin or
//! none. Any cache failure (unwritable
//! folder, corrupt file) only costs a compile: it never fails engine creation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use super::kernels;
use super::nvrtc;
use crate::status::Result;

/// 64-bit FNV-1a (stable across builds and platforms, unlike std's hasher).
fn fnv1a(data: &[u8], mut h: u64) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// A 128-bit key from two FNV-1a passes with different offsets.
pub fn source_hash(parts: &[&str]) -> String {
    let (mut a, mut b) = (0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142u64);
    for p in parts {
        a = fnv1a(p.as_bytes(), a);
        a = fnv1a(&[0xff], a);
        b = fnv1a(&(p.len() as u64).to_le_bytes(), b);
        b = fnv1a(p.as_bytes(), b);
    }
    format!("{a:016x}{b:016x}")
}

/// The disk cache folder, if one can be named.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("GACC_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("gacc"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("gacc"))
}

/// The cache key of the library's kernels for a device of compute capability
/// `arch`: hash of the sources and options, the code target (a cubin for `sm_{arch}`,
/// or PTX for an older architecture when NVRTC does not know the device's: see
/// nvrtc::choose_target) and the NVRTC version. The disk file is
/// `cache_dir()/<key>.cubin` (`.ptx` for PTX).
pub fn cache_key(arch: u32) -> Result<String> {
    cache_key_for(nvrtc::target_for(arch)?)
}

fn cache_key_for(target: nvrtc::CodeTarget) -> Result<String> {
    let (major, minor) = nvrtc::version()?;
    let mut options = nvrtc::target_options(target);
    options.extend(nvrtc::kernel_include_options()?);
    let source = kernels::bundle_source();
    let mut parts: Vec<&str> = vec![&source, kernels::COMMON_CUH];
    parts.extend(options.iter().map(String::as_str));
    Ok(format!("gacc-{}-{}-nvrtc{major}.{minor}", source_hash(&parts), target.label()))
}

/// Where a cubin came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Memory,
    Disk,
    Compiled,
}

/// The library's kernels for a device of compute capability `arch` (a cubin, or PTX
/// text when NVRTC does not know the architecture): from memory, disk or NVRTC.
/// `refresh` skips both caches and overwrites them (used when the driver refused a
/// cached image).
pub fn kernels_cubin(arch: u32, refresh: bool) -> Result<(Arc<Vec<u8>>, Origin)> {
    kernels_cubin_in(cache_dir().as_deref(), arch, refresh)
}

/// [`kernels_cubin`] with an explicit disk cache folder (None: memory only).
pub fn kernels_cubin_in(dir: Option<&std::path::Path>, arch: u32, refresh: bool) -> Result<(Arc<Vec<u8>>, Origin)> {
    static MEMORY: OnceLock<Mutex<HashMap<String, Arc<Vec<u8>>>>> = OnceLock::new();
    let target = nvrtc::target_for(arch)?;
    let key = cache_key_for(target)?;
    let ptx = matches!(target, nvrtc::CodeTarget::Ptx(_));

    let memory = MEMORY.get_or_init(|| Mutex::new(HashMap::new()));
    if !refresh {
        if let Some(c) = memory.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok((c.clone(), Origin::Memory));
        }
    }
    let file = dir.map(|d| d.join(format!("{key}.{}", if ptx { "ptx" } else { "cubin" })));
    let whole = |b: &Vec<u8>| if ptx { looks_like_ptx(b) } else { looks_like_cubin(b) };
    let from_disk = if refresh { None } else { file.as_ref().and_then(|f| std::fs::read(f).ok()).filter(whole) };
    let (cubin, origin) = match from_disk {
        Some(bytes) => (bytes, Origin::Disk),
        None => {
            let compiled = nvrtc::compile_kernels_for(target, &[])?;
            if let Some(f) = &file {
                store(f, &compiled.cubin);
            }
            (compiled.cubin, Origin::Compiled)
        }
    };
    let cubin = Arc::new(cubin);
    memory.lock().unwrap_or_else(|e| e.into_inner()).insert(key, cubin.clone());
    Ok((cubin, origin))
}

/// A cubin is an ELF file.
fn looks_like_cubin(b: &[u8]) -> bool {
    b.len() > 64 && &b[..4] == b"\x7fELF"
}

/// PTX as NVRTC writes it: text with a .version and a .target line, NUL-terminated.
fn looks_like_ptx(b: &[u8]) -> bool {
    let text = String::from_utf8_lossy(b);
    b.last() == Some(&0) && text.contains(".version") && text.contains(".target")
}

fn store(path: &std::path::Path, bytes: &[u8]) {
    static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{writer}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("gacc"),
        std::process::id()
    ));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails before the fix (one temporary name per process): writers in one process
    /// truncated and interleaved each other's temporary file, and readers of the
    /// cache file saw a mix of two cubins.
    #[test]
    fn concurrent_writers_in_one_process_leave_one_whole_file() {
        let dir = std::env::temp_dir().join(format!("gacc-cache-writers-{}", std::process::id()));
        let path = dir.join("k.cubin");
        const WRITERS: usize = 6;
        const BYTES: usize = 1 << 21;
        let contents: Vec<Vec<u8>> = (0..WRITERS).map(|w| vec![w as u8 + 1; BYTES]).collect();
        for round in 0..4 {
            std::thread::scope(|s| {
                for c in &contents {
                    s.spawn(|| store(&path, c));
                }
                s.spawn(|| {
                    for _ in 0..20 {
                        if let Ok(b) = std::fs::read(&path) {
                            assert!(contents.contains(&b), "round {round}: a reader saw a partial or mixed file");
                        }
                    }
                });
            });
            let b = std::fs::read(&path).unwrap();
            assert!(contents.contains(&b), "round {round}: the cache file is not one writer's whole file");
        }
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        assert_eq!(source_hash(&["a", "b"]), source_hash(&["a", "b"]));
        assert_ne!(source_hash(&["a", "b"]), source_hash(&["ab"]));
        assert_ne!(source_hash(&["a", "b"]), source_hash(&["a", "c"]));
        assert_eq!(source_hash(&[]).len(), 32);
    }
}
