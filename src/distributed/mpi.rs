//! The MPI transport (cargo feature `mpi`): a duplicate of the caller's communicator
//! with MPI_ERRORS_RETURN, driven through src/distributed/mpi_shim.c.

use std::os::raw::{c_char, c_int, c_void};

use super::Collective;
use crate::status::{gacc_status, Error, Result};

#[repr(C)]
struct MpiCtx {
    _private: [u8; 0],
}

extern "C" {
    fn gacc_mpi_open(comm_ptr: *const c_void, out: *mut *mut MpiCtx, msg: *mut c_char, cap: c_int) -> c_int;
    fn gacc_mpi_rank_size(ctx: *const MpiCtx, rank: *mut c_int, size: *mut c_int);
    fn gacc_mpi_allreduce(
        ctx: *mut MpiCtx,
        buf: *mut c_void,
        count: usize,
        is_f64: c_int,
        msg: *mut c_char,
        cap: c_int,
    ) -> c_int;
    fn gacc_mpi_close(ctx: *mut MpiCtx);
}

fn comm_error(what: &str, msg: &[c_char]) -> Error {
    // SAFETY: the shim always NUL-terminates msg within its capacity.
    let text = unsafe { std::ffi::CStr::from_ptr(msg.as_ptr()) }.to_string_lossy();
    Error::new(gacc_status::GACC_ERR_COMMUNICATION, format!("{what}: {text}"))
}

/// One engine's MPI communicator.
pub struct MpiCollective {
    ctx: *mut MpiCtx,
    rank: u32,
    size: u32,
}

// SAFETY: the context is used by one engine, whose calls are serialised; MPI must be
// initialised with a thread level that allows calls from the thread calling gacc.
unsafe impl Send for MpiCollective {}

impl MpiCollective {
    /// `comm_ptr`: address of the caller's MPI_Comm, or NULL for MPI_COMM_WORLD.
    pub fn open(comm_ptr: *const c_void) -> Result<MpiCollective> {
        let mut msg = [0 as c_char; 256];
        let mut ctx = std::ptr::null_mut();
        // SAFETY: msg has the capacity passed; ctx is written on success only.
        let rc = unsafe { gacc_mpi_open(comm_ptr, &mut ctx, msg.as_mut_ptr(), msg.len() as c_int) };
        if rc != 0 {
            return Err(comm_error("MPI communicator", &msg));
        }
        let (mut rank, mut size) = (0, 0);
        // SAFETY: ctx is live.
        unsafe { gacc_mpi_rank_size(ctx, &mut rank, &mut size) };
        Ok(MpiCollective { ctx, rank: rank as u32, size: size as u32 })
    }

    fn allreduce(&mut self, buf: *mut c_void, count: usize, is_f64: bool) -> Result<()> {
        let mut msg = [0 as c_char; 256];
        // SAFETY: buf holds count elements of the named type; ctx is live.
        let rc = unsafe {
            gacc_mpi_allreduce(self.ctx, buf, count, c_int::from(is_f64), msg.as_mut_ptr(), msg.len() as c_int)
        };
        if rc != 0 {
            return Err(comm_error("MPI_Allreduce", &msg));
        }
        Ok(())
    }
}

impl Drop for MpiCollective {
    fn drop(&mut self) {
        // SAFETY: ctx came from gacc_mpi_open and is freed once.
        unsafe { gacc_mpi_close(self.ctx) };
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> u32 {
        self.rank
    }
    fn world_size(&self) -> u32 {
        self.size
    }
    fn allreduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        self.allreduce(buf.as_mut_ptr().cast(), buf.len(), false)
    }
    fn allreduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.allreduce(buf.as_mut_ptr().cast(), buf.len(), true)
    }
    fn describe(&self) -> String {
        format!("MPI (rank {} of {})", self.rank, self.size)
    }
}
