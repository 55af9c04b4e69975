//! A CUDA engine's whole state to and from the host ([`crate::backend::StateSnapshot`]:
//! checkpoints, and the host data-parallel path's default).

use super::backend::CudaBackend;
use super::buffers::DevBuf;
use super::runtime::Runtime;
use crate::backend::StateSnapshot;
use crate::status::{Error, Result};

impl<R: Runtime> CudaBackend<R> {
    /// A buffer of n f32 on the host (empty when the buffer is absent).
    fn read_optional(&mut self, buf: Option<DevBuf>) -> Result<Vec<f32>> {
        let Some(buf) = buf else { return Ok(Vec::new()) };
        let mut v = vec![0f32; self.n];
        self.read_f32(buf, &mut v)?;
        Ok(v)
    }

    /// Copies all state to the host (waits for the device).
    pub(super) fn export(&mut self) -> Result<StateSnapshot> {
        let n = self.n;
        let mut master = vec![0f32; n];
        let mut acc = vec![0f32; n];
        // Read first (it waits for the device): a stale accumulator is logically zero,
        // which is what the snapshot holds (a checkpoint of an empty window).
        let st = self.read_state()?;
        self.read_f32(self.master, &mut master)?;
        if st.acc_stale == 0 {
            self.read_f32(self.acc, &mut acc)?;
        }
        let state1 = self.read_optional(self.state1)?;
        let state2 = self.read_optional(self.state2)?;
        let comp = self.read_optional(self.comp)?;
        Ok(StateSnapshot {
            master,
            acc,
            state1,
            state2,
            loss_scale: st.loss_scale,
            growth_tracker: st.growth_tracker,
            hysteresis_left: st.hysteresis_left,
            applied_steps: st.step,
            comp,
            // Outside drop mode the device total only mirrors the engine's (which the
            // snapshot holds): as on the CPU, the backend reports 0.
            window_total: if self.drop_mode { st.window_total } else { 0.0 },
            window_dropped: st.window_dropped,
        })
    }

    /// Replaces all state and rewrites the working copy from the imported master.
    pub(super) fn import(&mut self, s: &StateSnapshot) -> Result<()> {
        let n = self.n;
        let expect = |v: &Vec<f32>, present: bool| v.len() == if present { n } else { 0 };
        if !(s.master.len() == n
            && s.acc.len() == n
            && expect(&s.state1, self.state1.is_some())
            && expect(&s.state2, self.state2.is_some())
            && expect(&s.comp, self.comp.is_some()))
        {
            return Err(Error::internal("state snapshot does not match this backend's buffers"));
        }
        let mut st = self.read_state()?;
        st.loss_scale = s.loss_scale;
        st.growth_tracker = s.growth_tracker;
        st.hysteresis_left = s.hysteresis_left;
        st.step = s.applied_steps;
        if self.drop_mode {
            st.window_total = s.window_total;
        }
        // Outside drop mode the device total stays (the engine mirrors its own after
        // a restore: mirror_window_total).
        st.window_dropped = s.window_dropped;
        // The imported accumulator is real data (zeros for an empty window).
        st.acc_stale = 0;
        self.write_f32(self.master, &s.master)?;
        self.write_f32(self.acc, &s.acc)?;
        for (buf, values) in [(self.state1, &s.state1), (self.state2, &s.state2), (self.comp, &s.comp)] {
            if let Some(buf) = buf {
                self.write_f32(buf, values)?;
            }
        }
        self.write_state(&st)?;
        self.clear_stale_after_import();
        self.refresh_working_copy()?;
        self.rt.synchronize()
    }
}
