//! Data parallelism: the three transports (the caller's all-reduce, MPI, NCCL) and
//! what they moved.
#![allow(clippy::missing_safety_doc)]

use std::os::raw::c_void;

use super::boundary::{check_rank, guard, require, write_out};
use super::types::*;
use super::{conv, registry};
use crate::status::{gacc_status, Error};

/// Makes the engine one rank of a data-parallel group whose transport is the
/// caller's own in-place sum all-reduce `allreduce` (Gloo, Horovod, a game server's
/// channel…). From then on gacc_step sums the window (total weight and micro-batch
/// count as two GACC_DTYPE_F64 values, then the fp32 accumulator) across ranks before
/// unscaling, so every rank takes the identical step; every rank must call gacc_step
/// for every window. Called once, right after gacc_create (the window must be empty):
/// it also sends rank 0's parameters to every rank through one all-reduce in which the
/// other ranks contribute zeros. The callback runs on the thread that calls gacc_step
/// (or this function) and must be usable from it. A nonzero return from the callback is
/// GACC_ERR_COMMUNICATION and leaves this rank's window as it was. gacc_step_info then
/// reports the global window (micro-batches and weight summed over ranks).
#[no_mangle]
pub unsafe extern "C" fn gacc_set_allreduce(
    e: *mut gacc_engine,
    allreduce: super::callback::gacc_allreduce_fn,
    user_data: *mut c_void,
    rank: i32,
    world_size: i32,
) -> gacc_status {
    guard("gacc_set_allreduce", || {
        let Some(function) = allreduce else {
            return Err(Error::new(gacc_status::GACC_ERR_NULL_POINTER, "allreduce is NULL"));
        };
        let (rank, world_size) = check_rank(rank, world_size)?;
        let comm = super::callback::CallbackCollective::new(function, user_data, rank, world_size);
        registry::with_engine(e, |eng| eng.set_collective(Box::new(comm)))
    })
}

/// Bytes this rank has sent through data-parallel collectives, and how many
/// collectives ran (including the initial parameter broadcast). Zero without a
/// transport.
#[no_mangle]
pub unsafe extern "C" fn gacc_comm_stats(e: *const gacc_engine, collectives: *mut u64, bytes: *mut u64) -> gacc_status {
    guard("gacc_comm_stats", || {
        require(collectives, "collectives")?;
        require(bytes, "bytes")?;
        let s = registry::with_engine(e, |eng| Ok(eng.comm_stats()))?;
        // SAFETY: both non-null.
        unsafe {
            collectives.write(s.collectives);
            bytes.write(s.bytes);
        }
        Ok(())
    })
}

/// Makes the engine one rank of a data-parallel group over MPI (CPU engines; needs a
/// library built with the `mpi` cargo feature, otherwise GACC_ERR_INVALID_STATE).
/// `comm` is the address of the caller's `MPI_Comm` (NULL: MPI_COMM_WORLD); gacc
/// duplicates it, with MPI_ERRORS_RETURN so a failed collective is
/// GACC_ERR_COMMUNICATION rather than an abort. MPI must be initialised, and stay so
/// until the engine is destroyed. Same semantics as gacc_set_allreduce otherwise.
#[no_mangle]
pub unsafe extern "C" fn gacc_set_mpi(e: *mut gacc_engine, comm: *const c_void) -> gacc_status {
    guard("gacc_set_mpi", || {
        // Check the handle before touching MPI.
        registry::get(e)?;
        mpi_collective(comm).and_then(|c| registry::with_engine(e, |eng| eng.set_collective(c)))
    })
}

/// Makes a new NCCL unique id (ncclGetUniqueId) for one data-parallel group: call it
/// on one rank (rank 0), send the 128 bytes to every rank by your own means, and
/// pass them to gacc_set_nccl on every rank. NCCL is loaded at run time
/// (`GACC_NCCL_LIB`, else libnccl.so.2): GACC_ERR_DEVICE_UNAVAILABLE with the reason
/// when it cannot be loaded; GACC_ERR_COMMUNICATION when NCCL fails.
#[no_mangle]
pub unsafe extern "C" fn gacc_nccl_unique_id(out: *mut gacc_nccl_id) -> gacc_status {
    guard("gacc_nccl_unique_id", || unsafe {
        write_out(out, "out", || {
            let id = crate::distributed::nccl::unique_id()?;
            Ok(conv::nccl_id_to_c(&id))
        })
    })
}

/// Makes a CUDA engine rank `rank` of a `world_size`-rank data-parallel group over
/// NCCL (ncclCommInitRank with `id` from gacc_nccl_unique_id; blocks until every
/// rank has called it). Call it right after gacc_create, with an empty window; each
/// rank's engine should be on its own GPU. Like the other transports it sends rank
/// 0's parameters to every rank once. Then each gacc_step sums the window totals
/// and the fp32 accumulator across ranks with ncclAllReduce on the engine's stream
/// (the one gacc_set_stream names), before unscaling; the kernels read the global
/// total from device memory, so gacc_step without info neither waits for the device
/// nor copies anything to the host. A window whose global total weight is 0 is
/// skipped on the device (applied = 0, loss scale unchanged) instead of
/// GACC_ERR_INVALID_STATE. An error NCCL reports when the work is queued is
/// GACC_ERR_COMMUNICATION with NCCL's message, and the rank's window is left as it
/// was; an error NCCL detects later (asynchronously) is reported by the next
/// gacc_step as GACC_ERR_COMMUNICATION and aborts the communicator; the window that
/// was being reduced then is lost (call gacc_zero) and the engine needs a new group.
/// CPU engines: GACC_ERR_INVALID_STATE (use gacc_set_mpi or gacc_set_allreduce);
/// NCCL not loadable: GACC_ERR_DEVICE_UNAVAILABLE.
#[no_mangle]
pub unsafe extern "C" fn gacc_set_nccl(
    e: *mut gacc_engine,
    id: *const gacc_nccl_id,
    rank: i32,
    world_size: i32,
) -> gacc_status {
    guard("gacc_set_nccl", || {
        require(id, "id")?;
        let (rank, world_size) = check_rank(rank, world_size)?;
        // SAFETY: id is non-null and points to a gacc_nccl_id.
        let nccl_id = conv::nccl_id_from_c(unsafe { &*id });
        registry::with_engine(e, |eng| {
            let device = eng.prepare_device_collective()?;
            let comm = crate::distributed::nccl::NcclComm::init(&nccl_id, rank, world_size)?;
            drop(device);
            eng.set_device_collective(Box::new(comm))
        })
    })
}

#[cfg(feature = "mpi")]
fn mpi_collective(comm: *const c_void) -> crate::Result<Box<dyn crate::distributed::Collective>> {
    Ok(Box::new(crate::distributed::mpi::MpiCollective::open(comm)?))
}

#[cfg(not(feature = "mpi"))]
fn mpi_collective(_comm: *const c_void) -> crate::Result<Box<dyn crate::distributed::Collective>> {
    Err(Error::invalid_state("this build of gacc has no MPI support (build with --features mpi)"))
}
