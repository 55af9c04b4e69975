//! Fallible host allocation, with a fault-injection hook for tests.
//!
//! Every large host buffer gacc allocates goes through `try_zeroed`/`try_copy`, so
//! allocation failure becomes GACC_ERR_OUT_OF_MEMORY instead of an abort, and tests
//! can make the n-th allocation on the current thread fail to prove that every such
//! failure leaves the engine usable and unchanged. Backends that allocate device
//! memory call `check_injected_failure` too.

use std::cell::Cell;

use crate::status::{Error, Result};

thread_local! {
    /// Allocations left before the injected failure (0: no injection armed).
    static FAIL_COUNTDOWN: Cell<u64> = const { Cell::new(0) };
}

/// Arms the hook: the `n`-th allocation from now on, on this thread, fails
/// (n = 1: the next one). `n = 0` disarms it. Test support; harmless in production.
pub fn fail_nth_allocation(n: u64) {
    FAIL_COUNTDOWN.with(|c| c.set(n));
}

/// Counts one allocation against the armed hook; Err when this one must fail.
pub fn check_injected_failure(what: &str, bytes: usize) -> Result<()> {
    FAIL_COUNTDOWN.with(|c| match c.get() {
        0 => Ok(()),
        1 => {
            c.set(0);
            Err(Error::out_of_memory(format!("could not allocate {bytes} bytes for the {what} (injected failure)")))
        }
        n => {
            c.set(n - 1);
            Ok(())
        }
    })
}

/// A buffer of `n` default values, or GACC_ERR_OUT_OF_MEMORY naming `what`.
pub fn try_zeroed<T: Clone + Default>(n: usize, what: &str) -> Result<Vec<T>> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    check_injected_failure(what, bytes)?;
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::out_of_memory(format!("could not allocate {bytes} bytes for the {what}")))?;
    advise_huge_pages(v.as_mut_ptr().cast(), bytes);
    v.resize(n, T::default());
    Ok(v)
}

/// Buffers at least this large ask the kernel for transparent huge pages.
const HUGE_PAGE_MIN_BYTES: usize = 8 << 20;

/// Asks for 2 MiB pages behind a large buffer before it is first touched: the step's
/// fused pass streams five buffers at once, and with 4 KiB pages it walks a new page
/// (and a TLB entry) every 1024 elements of each. Only a hint (Linux with THP in
/// "madvise" or "always" mode); an error is ignored.
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        if bytes < HUGE_PAGE_MIN_BYTES {
            return;
        }
        const PAGE: usize = 4096;
        let start = (ptr as usize).div_ceil(PAGE) * PAGE;
        let end = (ptr as usize + bytes) / PAGE * PAGE;
        if end > start {
            // SAFETY: [start, end) lies inside the allocation just reserved; madvise
            // with MADV_HUGEPAGE changes no contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
}

/// A copy of `src`, or GACC_ERR_OUT_OF_MEMORY naming `what`.
pub fn try_copy<T: Clone + Default>(src: &[T], what: &str) -> Result<Vec<T>> {
    let mut v = try_zeroed(src.len(), what)?;
    v.clone_from_slice(src);
    Ok(v)
}
