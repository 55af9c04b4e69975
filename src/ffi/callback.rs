//! The callback transport: the caller supplies an in-place sum all-reduce. It lives in
//! the ffi layer because it calls C: the engine sees only a [`Collective`].

use std::os::raw::c_void;

use super::types::{GACC_DTYPE_F32, GACC_DTYPE_F64};
use crate::distributed::Collective;
use crate::status::{gacc_status, Error, Result};

/// In-place sum all-reduce supplied by the caller: `buf` holds `count` elements of
/// `dtype` (GACC_DTYPE_F32 or GACC_DTYPE_F64) in host memory on a CPU engine; every
/// rank must return with `buf` holding the element-wise sum over all ranks. Return 0
/// on success, anything else on failure (gacc then returns GACC_ERR_COMMUNICATION).
pub type gacc_allreduce_fn =
    Option<unsafe extern "C" fn(buf: *mut c_void, count: usize, dtype: u32, user_data: *mut c_void) -> i32>;

/// A caller-provided all-reduce with its user data.
pub struct CallbackCollective {
    function: unsafe extern "C" fn(*mut c_void, usize, u32, *mut c_void) -> i32,
    user_data: *mut c_void,
    rank: u32,
    world_size: u32,
}

// SAFETY: the caller promises (in the header) that the callback and its user data may
// be used from whichever thread calls gacc_step on the engine.
unsafe impl Send for CallbackCollective {}

impl CallbackCollective {
    pub fn new(
        function: unsafe extern "C" fn(*mut c_void, usize, u32, *mut c_void) -> i32,
        user_data: *mut c_void,
        rank: u32,
        world_size: u32,
    ) -> CallbackCollective {
        CallbackCollective { function, user_data, rank, world_size }
    }

    fn call(&mut self, buf: *mut c_void, count: usize, dtype: u32) -> Result<()> {
        // SAFETY: buf holds count elements of dtype; the callback's contract is the
        // caller's.
        let rc = unsafe { (self.function)(buf, count, dtype, self.user_data) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::new(
                gacc_status::GACC_ERR_COMMUNICATION,
                format!("the all-reduce callback returned {rc} (rank {} of {})", self.rank, self.world_size),
            ))
        }
    }
}

impl Collective for CallbackCollective {
    fn rank(&self) -> u32 {
        self.rank
    }
    fn world_size(&self) -> u32 {
        self.world_size
    }
    fn allreduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        self.call(buf.as_mut_ptr().cast(), buf.len(), GACC_DTYPE_F32)
    }
    fn allreduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.call(buf.as_mut_ptr().cast(), buf.len(), GACC_DTYPE_F64)
    }
    fn describe(&self) -> String {
        format!("callback (rank {} of {})", self.rank, self.world_size)
    }
}
