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
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::out_of_memory(format!("could not allocate {bytes} bytes for the {what}")))?;
    v.resize(n, T::default());
    Ok(v)
}

/// A copy of `src`, or GACC_ERR_OUT_OF_MEMORY naming `what`.
pub fn try_copy<T: Clone + Default>(src: &[T], what: &str) -> Result<Vec<T>> {
    let mut v = try_zeroed(src.len(), what)?;
    v.clone_from_slice(src);
    Ok(v)
}
