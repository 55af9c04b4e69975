//! Status codes (fixed numbers, never reused) and the crate's error type.

use std::fmt;

/// Result of every fallible gacc call. The numbers are part of the ABI: they are
/// fixed forever and a retired code is never reused for another meaning.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gacc_status {
    /// Success.
    GACC_OK = 0,
    /// A required pointer argument was NULL.
    GACC_ERR_NULL_POINTER = 1,
    /// A value out of range: dtype, sizes, NaN weight, misaligned pointer...
    GACC_ERR_INVALID_ARGUMENT = 2,
    /// Not a live engine (never created, or already destroyed).
    GACC_ERR_INVALID_HANDLE = 3,
    /// The call does not fit the engine's state, e.g. gacc_step with nothing accumulated.
    GACC_ERR_INVALID_STATE = 4,
    /// An allocation (host or device) failed.
    GACC_ERR_OUT_OF_MEMORY = 5,
    /// CUDA was asked for, but there is no driver or no such device.
    GACC_ERR_DEVICE_UNAVAILABLE = 6,
    /// A CUDA driver or NVRTC call failed.
    GACC_ERR_DEVICE = 7,
    /// A file could not be read or written.
    GACC_ERR_IO = 8,
    /// A checkpoint failed validation.
    GACC_ERR_CORRUPT = 9,
    /// A collective (NCCL, MPI, callback) failed.
    GACC_ERR_COMMUNICATION = 10,
    /// A bug: a Rust panic was caught at the boundary.
    GACC_ERR_INTERNAL = 11,
}

/// Every status, in numeric order (index == value).
pub(crate) const ALL_STATUSES: [gacc_status; 12] = [
    gacc_status::GACC_OK,
    gacc_status::GACC_ERR_NULL_POINTER,
    gacc_status::GACC_ERR_INVALID_ARGUMENT,
    gacc_status::GACC_ERR_INVALID_HANDLE,
    gacc_status::GACC_ERR_INVALID_STATE,
    gacc_status::GACC_ERR_OUT_OF_MEMORY,
    gacc_status::GACC_ERR_DEVICE_UNAVAILABLE,
    gacc_status::GACC_ERR_DEVICE,
    gacc_status::GACC_ERR_IO,
    gacc_status::GACC_ERR_CORRUPT,
    gacc_status::GACC_ERR_COMMUNICATION,
    gacc_status::GACC_ERR_INTERNAL,
];

impl gacc_status {
    /// The variant's name as a NUL-terminated static string.
    pub fn name_cstr(self) -> &'static [u8] {
        match self {
            gacc_status::GACC_OK => b"GACC_OK\0",
            gacc_status::GACC_ERR_NULL_POINTER => b"GACC_ERR_NULL_POINTER\0",
            gacc_status::GACC_ERR_INVALID_ARGUMENT => b"GACC_ERR_INVALID_ARGUMENT\0",
            gacc_status::GACC_ERR_INVALID_HANDLE => b"GACC_ERR_INVALID_HANDLE\0",
            gacc_status::GACC_ERR_INVALID_STATE => b"GACC_ERR_INVALID_STATE\0",
            gacc_status::GACC_ERR_OUT_OF_MEMORY => b"GACC_ERR_OUT_OF_MEMORY\0",
            gacc_status::GACC_ERR_DEVICE_UNAVAILABLE => b"GACC_ERR_DEVICE_UNAVAILABLE\0",
            gacc_status::GACC_ERR_DEVICE => b"GACC_ERR_DEVICE\0",
            gacc_status::GACC_ERR_IO => b"GACC_ERR_IO\0",
            gacc_status::GACC_ERR_CORRUPT => b"GACC_ERR_CORRUPT\0",
            gacc_status::GACC_ERR_COMMUNICATION => b"GACC_ERR_COMMUNICATION\0",
            gacc_status::GACC_ERR_INTERNAL => b"GACC_ERR_INTERNAL\0",
        }
    }

    /// The variant's name without the terminating NUL.
    pub fn name(self) -> &'static str {
        let bytes = self.name_cstr();
        // The tables above are ASCII literals.
        std::str::from_utf8(&bytes[..bytes.len() - 1]).unwrap_or("GACC_ERR_INTERNAL")
    }

    /// Maps a raw integer received from C to a status, if it names one.
    pub fn from_raw(raw: i64) -> Option<gacc_status> {
        usize::try_from(raw).ok().and_then(|i| ALL_STATUSES.get(i).copied())
    }
}

/// The crate's error: a status plus a human message for `gacc_last_error`.
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    pub status: gacc_status,
    pub message: String,
}

/// Short alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(status: gacc_status, message: impl Into<String>) -> Error {
        Error { status, message: message.into() }
    }
    pub fn invalid_argument(message: impl Into<String>) -> Error {
        Error::new(gacc_status::GACC_ERR_INVALID_ARGUMENT, message)
    }
    pub fn invalid_state(message: impl Into<String>) -> Error {
        Error::new(gacc_status::GACC_ERR_INVALID_STATE, message)
    }
    pub fn out_of_memory(message: impl Into<String>) -> Error {
        Error::new(gacc_status::GACC_ERR_OUT_OF_MEMORY, message)
    }
    pub fn device(message: impl Into<String>) -> Error {
        Error::new(gacc_status::GACC_ERR_DEVICE, message)
    }
    pub fn device_unavailable(message: impl Into<String>) -> Error {
        Error::new(gacc_status::GACC_ERR_DEVICE_UNAVAILABLE, message)
    }
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(gacc_status::GACC_ERR_INTERNAL, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.name(), self.message)
    }
}

impl std::error::Error for Error {}
