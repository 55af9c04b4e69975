//! Device buffers that own themselves: every allocation a CUDA backend makes goes
//! through one [`DeviceBuffers`] arena, which frees them all when the backend drops.
//! The backend's fields are [`DevBuf`] handles (`Option<DevBuf>` where a buffer may
//! be absent), so no list of pointers has to mirror the struct by hand.

use super::runtime::{DevPtr, Runtime};
use crate::status::Result;

/// One device allocation: its address and size in bytes. A handle, valid while the
/// arena that allocated it lives and has not freed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevBuf {
    ptr: DevPtr,
    bytes: usize,
}

impl DevBuf {
    /// The device address of the first byte.
    pub fn ptr(self) -> DevPtr {
        self.ptr
    }

    /// The allocation's size in bytes.
    pub fn bytes(self) -> usize {
        self.bytes
    }

    /// The device address `byte_offset` bytes into the buffer.
    pub fn at(self, byte_offset: usize) -> DevPtr {
        self.ptr + byte_offset as u64
    }
}

/// The address of an optional buffer as the kernels take it (0: absent).
pub fn ptr_or_null(buf: Option<DevBuf>) -> DevPtr {
    buf.map_or(0, DevBuf::ptr)
}

/// Every live allocation of one backend, freed through its runtime in one place.
#[derive(Debug, Default)]
pub struct DeviceBuffers {
    live: Vec<DevBuf>,
}

impl DeviceBuffers {
    /// Allocates `bytes` (contents undefined) and keeps the allocation until
    /// [`DeviceBuffers::free`] or [`DeviceBuffers::free_all`].
    pub fn alloc<R: Runtime + ?Sized>(&mut self, rt: &mut R, bytes: usize) -> Result<DevBuf> {
        let buf = DevBuf { ptr: rt.alloc(bytes)?, bytes };
        self.live.push(buf);
        Ok(buf)
    }

    /// Frees one allocation early (a buffer that is replaced by a larger one).
    ///
    /// # Safety
    /// `buf` came from this arena and `rt`, and is not used again.
    pub unsafe fn free<R: Runtime + ?Sized>(&mut self, rt: &mut R, buf: DevBuf) {
        if let Some(i) = self.live.iter().position(|b| *b == buf) {
            self.live.swap_remove(i);
            rt.free(buf.ptr);
        }
    }

    /// Frees every allocation.
    ///
    /// # Safety
    /// Every allocation came from `rt`, and none is used again.
    pub unsafe fn free_all<R: Runtime + ?Sized>(&mut self, rt: &mut R) {
        for buf in self.live.drain(..) {
            rt.free(buf.ptr);
        }
    }

    /// Number of live allocations.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}
