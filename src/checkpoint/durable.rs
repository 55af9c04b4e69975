//! Crash-safe file replacement: write a temporary file in the same directory, fsync
//! it, rename it over the target, fsync the directory. A reader (or a process that
//! restarts after a crash or SIGKILL at any moment) sees either the old file or the
//! new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::safetensors::io_error;
use crate::status::Result;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{unique}", std::process::id()))
}

/// Replaces `path` with what `fill` writes, durably and atomically.
pub fn replace_file(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_error(&format!("creating {}", tmp.display()), e))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        fill(&mut writer)?;
        writer.flush().map_err(|e| io_error("writing the checkpoint", e))?;
        let file = writer.into_inner().map_err(|e| io_error("writing the checkpoint", e.into_error()))?;
        file.sync_all().map_err(|e| io_error("fsync of the checkpoint", e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| io_error(&format!("renaming over {}", path.display()), e))?;
        sync_parent_dir(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(&format!("fsync of directory {}", dir.display()), e))
}
