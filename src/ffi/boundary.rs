//! The boundary every exported function goes through: panics caught, errors turned
//! into a status plus a thread-local message, pointers checked.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::status::{gacc_status, Error, Result};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error.
pub fn set_last_error(message: &str) {
    // Interior NULs would truncate the C string: replace them.
    let clean = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; never panic here.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut s) = slot.try_borrow_mut() {
            *s = clean;
        }
    });
}

/// Pointer to this thread's last error message ("" if none). Valid until the next
/// call that fails on this thread.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.try_with(|slot| slot.try_borrow().map(|s| s.as_ptr()).ok()).ok().flatten().unwrap_or(c"".as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs `body`, converting its error or panic into a status and a message that
/// starts with the function's name.
pub fn guard<F>(function: &'static str, body: F) -> gacc_status
where
    F: FnOnce() -> Result<()>,
{
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => gacc_status::GACC_OK,
        Ok(Err(err)) => {
            set_last_error(&format!("{function}: {}", err.message));
            err.status
        }
        Err(payload) => {
            set_last_error(&format!(
                "{function}: internal error (a Rust panic was caught at the C boundary): {}",
                panic_message(payload.as_ref())
            ));
            gacc_status::GACC_ERR_INTERNAL
        }
    }
}

/// Like `guard`, for functions that return no status: a failure is only recorded.
pub fn guard_void<F>(function: &'static str, body: F)
where
    F: FnOnce() -> Result<()>,
{
    let _ = guard(function, body);
}

/// Fails with GACC_ERR_NULL_POINTER naming the argument when `ptr` is NULL.
pub fn require<T>(ptr: *const T, argument: &str) -> Result<()> {
    if ptr.is_null() {
        Err(Error::new(gacc_status::GACC_ERR_NULL_POINTER, format!("{argument} is NULL")))
    } else {
        Ok(())
    }
}

/// Fails with GACC_ERR_INVALID_ARGUMENT when `ptr` is not aligned to `align` bytes
/// (building a Rust slice from it would be undefined behaviour).
pub fn require_aligned<T>(ptr: *const T, align: usize, argument: &str) -> Result<()> {
    if !(ptr as usize).is_multiple_of(align) {
        Err(Error::invalid_argument(format!("{argument} ({ptr:p}) is not aligned to {align} bytes")))
    } else {
        Ok(())
    }
}

/// The tail of every function with one output: fails with GACC_ERR_NULL_POINTER when
/// `out` is NULL (before `value` runs), otherwise runs `value` and writes its result
/// to `*out` only when it succeeds.
///
/// # Safety
/// `out` is NULL or points to a writable `T`.
pub unsafe fn write_out<T>(out: *mut T, argument: &str, value: impl FnOnce() -> Result<T>) -> Result<()> {
    require(out, argument)?;
    let v = value()?;
    // SAFETY: non-null; the caller provides a writable T.
    unsafe { out.write(v) };
    Ok(())
}

/// Fails with GACC_ERR_INVALID_ARGUMENT unless 0 <= rank < world_size.
pub fn check_rank(rank: i32, world_size: i32) -> Result<(u32, u32)> {
    if world_size < 1 || rank < 0 || rank >= world_size {
        return Err(Error::invalid_argument(format!(
            "rank {rank} and world_size {world_size}: need 0 <= rank < world_size"
        )));
    }
    Ok((rank as u32, world_size as u32))
}
