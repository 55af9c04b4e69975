//! A CUDA engine in a device collective group (NCCL): the reduction buffers, joining
//! the group, and the window's cross-rank sums queued on the engine's stream.

use super::backend::{device_group_bytes, CudaBackend};
use super::buffers::ptr_or_null;
use super::launch;
use super::runtime::Runtime;
use crate::backend::{DeviceGroup, DeviceScope};
use crate::distributed::{DeviceCollective, Element};
use crate::status::{Error, Result};

impl<R: Runtime> DeviceGroup for CudaBackend<R> {
    fn bind_device(&mut self) -> Result<DeviceScope> {
        self.rt.enter()
    }

    /// Allocates the reduction buffers before the communicator is created, so that a
    /// device too full for them fails here (GACC_ERR_OUT_OF_MEMORY).
    fn reserve_device_group(&mut self) -> Result<()> {
        if self.dp_scratch.is_none() || self.dp_totals.is_none() {
            let need = device_group_bytes(self.n);
            let (free, total) = self.rt.memory_info()?;
            if need > free {
                return Err(Error::out_of_memory(format!(
                    "gacc_set_nccl: the NCCL reduction buffers of {} parameters need {need} bytes of device memory, \
                     more than the {free} bytes free ({total} total) on {}",
                    self.n,
                    self.rt.describe()
                )));
            }
        }
        self.dp_buffers().map(|_| ())
    }

    /// Rank 0's master weights go to every rank (one device all-reduce where the
    /// other ranks contribute zeros); from now on the step takes the device's total.
    fn join_device_group(&mut self, comm: &mut dyn DeviceCollective) -> Result<()> {
        let (scratch, _) = self.dp_buffers()?;
        let (scratch, master) = (scratch.ptr(), self.master.ptr());
        let _cx = self.rt.enter()?;
        let stream = self.rt.stream_handle();
        // SAFETY: scratch and master hold n f32 on this device.
        unsafe {
            if comm.rank() == 0 {
                self.rt.copy_d2d(scratch, master, self.n * 4)?;
            } else {
                self.rt.memset(scratch, 0, self.n * 4)?;
            }
            comm.allreduce(scratch, scratch, self.n, Element::F32, stream)?;
            self.rt.copy_d2d(master, scratch, self.n * 4)?;
        }
        self.refresh_working_copy()?;
        self.rt.synchronize()?;
        Ok(())
    }

    /// Queues the cross-rank sums of the window totals and of the accumulator
    /// (acc - comp) into scratch buffers that replace the window only when every
    /// collective was accepted.
    fn device_allreduce_window(
        &mut self,
        comm: &mut dyn DeviceCollective,
        _weight: f64,
        microbatches: u32,
    ) -> Result<()> {
        let (scratch, totals) = self.dp_buffers()?;
        let (scratch, totals) = (scratch.ptr(), totals.ptr());
        // A rank with an empty window contributes zeros, not a stale accumulator; the
        // global window replaces this rank's, so the step runs its own norm pass.
        self.materialize_zeros(false)?;
        self.invalidate_partials();
        let (acc, state) = (self.acc.ptr(), self.state.ptr());
        let comp = self.comp.map(|c| c.ptr());
        let _cx = self.rt.enter()?;
        let stream = self.rt.stream_handle();
        // SAFETY: totals holds 4 doubles, scratch/acc/comp n f32, state one gacc_state,
        // all on this device; everything is queued on the engine's stream.
        unsafe {
            // The rank's total is the device's (equal to the host's `_weight` outside
            // drop mode), so a captured window packs the replay's own.
            launch::dp_pack_totals(&mut self.rt, totals, state, microbatches)?;
            comm.allreduce(totals, totals, 4, Element::F64, stream)?;
            if let Some(comp) = comp {
                launch::dp_fold(&mut self.rt, scratch, acc, comp, self.n, self.grids.dp_fold)?;
                comm.allreduce(scratch, scratch, self.n, Element::F32, stream)?;
            } else {
                comm.allreduce(acc, scratch, self.n, Element::F32, stream)?;
            }
            // Every collective was accepted: the global window replaces this rank's.
            launch::dp_unpack_totals(&mut self.rt, totals, state, self.drop_mode)?;
            if let Some(comp) = comp {
                self.rt.memset(comp, 0, self.n * 4)?;
            }
        }
        // A copy, not a swap: the accumulator's address is part of the API
        // (gacc_accumulator_ptr is stable until gacc_destroy).
        // SAFETY: both hold n f32 on this device; stream-ordered after the reduction.
        unsafe { self.rt.copy_d2d(acc, scratch, self.n * 4)? };
        Ok(())
    }

    /// The global (total weight, micro-batch count) of the last reduced window
    /// (waits for the device; (0, 0) before the first).
    fn device_window(&mut self) -> Result<(f64, u32)> {
        let mut t = [0f64; 4];
        let totals = ptr_or_null(self.dp_totals);
        if totals == 0 {
            return Ok((0.0, 0));
        }
        // SAFETY: dp_totals holds 4 doubles.
        unsafe { self.rt.copy_d2h(t.as_mut_ptr() as *mut u8, totals, 32)? };
        Ok((t[0], t[1].min(f64::from(u32::MAX)) as u32))
    }
}
