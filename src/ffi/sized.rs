//! gacc_config's `struct_size`: how much of the struct the caller's program knows.
//!
//! The struct only grows at its end. A program compiled against an older header has a
//! shorter struct; gacc_config_init_sized fills only its bytes and gacc_create reads
//! only its bytes, taking every later field at its default (as Vulkan's sType/pNext and
//! Win32's cbSize do). The smallest accepted size is the first ABI-2 layout: the struct
//! up to and including `seed`. A program built against a newer header than the library
//! (a larger size) is refused: the library cannot know what the extra fields ask for.

use std::mem::{offset_of, size_of};

use super::conv::default_config;
use super::types::gacc_config;
use crate::status::{Error, Result};

/// Size of the first ABI-2 gacc_config (struct_size ... seed): 104 bytes.
pub const CONFIG_SIZE_V2_0: usize = offset_of!(gacc_config, seed) + size_of::<u64>();

/// Checks a caller's struct size; returns it as the number of bytes to copy.
pub fn check_size(size: usize, what: &str) -> Result<usize> {
    if size == 0 {
        return Err(Error::invalid_argument(format!(
            "{what} is 0: fill the gacc_config with gacc_config_init before changing fields"
        )));
    }
    if size < CONFIG_SIZE_V2_0 {
        return Err(Error::invalid_argument(format!(
            "{what} {size} is smaller than the oldest gacc_config this library knows ({CONFIG_SIZE_V2_0} bytes, \
             GACC_ABI_VERSION 2): the program was built against an incompatible gacc.h"
        )));
    }
    if size > size_of::<gacc_config>() {
        return Err(Error::invalid_argument(format!(
            "{what} {size} is larger than this library's gacc_config ({} bytes): the program was built \
             against a newer gacc.h than this library",
            size_of::<gacc_config>()
        )));
    }
    Ok(size)
}

/// Reads the caller's config: its first `struct_size` bytes over the defaults.
///
/// # Safety
/// `cfg` is non-NULL, aligned for gacc_config and points to at least `struct_size`
/// readable bytes (the caller's own struct, possibly shorter than this library's).
pub unsafe fn read_config(cfg: *const gacc_config) -> Result<gacc_config> {
    // SAFETY: struct_size is the first field, present in every accepted layout; read
    // through a raw pointer so no reference to a possibly shorter struct is made.
    let size = unsafe { std::ptr::addr_of!((*cfg).struct_size).read() } as usize;
    let n = check_size(size, "cfg->struct_size")?;
    let mut raw = default_config();
    // SAFETY: n <= size_of::<gacc_config>() and the caller provides n bytes.
    unsafe { std::ptr::copy_nonoverlapping(cfg as *const u8, &mut raw as *mut gacc_config as *mut u8, n) };
    raw.struct_size = size_of::<gacc_config>() as u32;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_abi2_layout_is_the_old_fields_plus_struct_size() {
        assert_eq!(CONFIG_SIZE_V2_0, 104);
        assert_eq!(offset_of!(gacc_config, struct_size), 0);
        assert!(size_of::<gacc_config>() > CONFIG_SIZE_V2_0);
    }

    #[test]
    fn a_short_struct_gets_the_later_fields_defaults() {
        let mut full = default_config();
        full.loss_scale_policy = 1;
        full.lr = 0.5;
        full.struct_size = CONFIG_SIZE_V2_0 as u32;
        // SAFETY: a whole struct, of which only the first 104 bytes are read.
        let raw = unsafe { read_config(&full) }.unwrap();
        assert_eq!(raw.lr, 0.5);
        assert_eq!(raw.loss_scale_policy, default_config().loss_scale_policy);
        for bad in [0u32, 4, 103, size_of::<gacc_config>() as u32 + 8] {
            full.struct_size = bad;
            // SAFETY: as above.
            let err = unsafe { read_config(&full) }.unwrap_err();
            assert!(err.message.contains("struct_size"), "{}", err.message);
        }
    }
}
