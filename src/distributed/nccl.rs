//! The NCCL transport (CUDA engines): libnccl loaded at run time with libloading, so
//! gacc builds without NCCL and a machine without it gets
//! GACC_ERR_DEVICE_UNAVAILABLE, never a panic or a link error.
//!
//! The library is `GACC_NCCL_LIB` when set, else `libnccl.so.2`, else `libnccl.so`.
//! Only plain C entry points are declared here (ncclGetUniqueId, ncclCommInitRank,
//! ncclAllReduce, ncclCommDestroy, ncclGetErrorString; ncclCommAbort,
//! ncclCommGetAsyncError, ncclGetLastError and ncclGetVersion when present), with
//! the ABI of nccl.h (ncclResult_t and the enums are C ints; ncclUniqueId is a
//! 128-byte struct passed by value).
//!
//! The all-reduces are queued on the engine's stream: an `Ok` from [`NcclComm`] means
//! NCCL accepted the work, not that it finished (NCCL reports later failures
//! through ncclCommGetAsyncError, which is checked before every collective).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Mutex;

use super::{DeviceCollective, Element};
use crate::status::{gacc_status, Error, Result};

/// `ncclUniqueId`: NCCL_UNIQUE_ID_BYTES (128) opaque bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NcclUniqueId {
    pub internal: [c_char; 128],
}

/// `ncclComm_t`: an opaque pointer.
pub type Comm = *mut c_void;
const NCCL_SUCCESS: c_int = 0;
/// ncclInProgress (non-blocking communicators only; gacc's are blocking).
const NCCL_IN_PROGRESS: c_int = 7;
/// ncclFloat32 / ncclFloat64 and ncclSum in nccl.h.
const NCCL_FLOAT32: c_int = 7;
const NCCL_FLOAT64: c_int = 8;
const NCCL_SUM: c_int = 0;

/// The declared constants with their nccl.h names (tests/nccl_real.rs checks each
/// against the real header at compile time).
#[doc(hidden)]
pub fn declared_constants() -> Vec<(&'static str, i64)> {
    vec![
        ("ncclSuccess", NCCL_SUCCESS as i64),
        ("ncclInProgress", NCCL_IN_PROGRESS as i64),
        ("ncclFloat32", NCCL_FLOAT32 as i64),
        ("ncclFloat64", NCCL_FLOAT64 as i64),
        ("ncclSum", NCCL_SUM as i64),
    ]
}

// The entry points' types, as declared in nccl.h (ncclResult_t, ncclDataType_t and
// ncclRedOp_t are C ints; cudaStream_t is a pointer). Public for tests/nccl_real.rs,
// which turns each into a C++ function-pointer type and compares it with nccl.h's.
/// `ncclGetUniqueId`.
pub type GetUniqueId = unsafe extern "C" fn(*mut NcclUniqueId) -> c_int;
/// `ncclCommInitRank(comm*, nranks, id, rank)`.
pub type CommInitRank = unsafe extern "C" fn(*mut Comm, c_int, NcclUniqueId, c_int) -> c_int;
/// `ncclAllReduce(send, recv, count, datatype, op, comm, stream)`.
pub type AllReduce = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> c_int;
/// `ncclCommDestroy` and `ncclCommAbort`.
pub type CommDestroy = unsafe extern "C" fn(Comm) -> c_int;
/// `ncclGetErrorString`.
pub type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
/// `ncclCommGetAsyncError`.
pub type GetAsyncError = unsafe extern "C" fn(Comm, *mut c_int) -> c_int;
/// `ncclGetLastError`.
pub type GetLastError = unsafe extern "C" fn(Comm) -> *const c_char;
/// `ncclGetVersion`.
pub type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;

/// The entry points gacc uses.
pub struct Api {
    _lib: libloading::Library,
    name: String,
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    comm_destroy: CommDestroy,
    comm_abort: Option<CommDestroy>,
    get_error_string: GetErrorString,
    get_async_error: Option<GetAsyncError>,
    get_last_error: Option<GetLastError>,
    get_version: Option<GetVersion>,
}

/// Only a successful load is kept (a failed one is retried by the next call).
static LOADED: Mutex<Option<&'static Api>> = Mutex::new(None);

fn candidates() -> Vec<String> {
    match std::env::var("GACC_NCCL_LIB") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["libnccl.so.2".into(), "libnccl.so".into()],
    }
}

fn open(name: &str) -> std::result::Result<Api, String> {
    // SAFETY: loading libnccl runs its initialisers, which have no preconditions.
    let lib = unsafe { libloading::Library::new(name) }.map_err(|e| e.to_string())?;
    // SAFETY: each symbol is declared with nccl.h's signature; the function pointers
    // are kept together with the library, which is never unloaded.
    unsafe {
        macro_rules! req {
            ($sym:literal) => {
                *lib.get::<_>(concat!($sym, "\0").as_bytes()).map_err(|e| format!("{}: {e}", $sym))?
            };
        }
        macro_rules! opt {
            ($sym:literal) => {
                lib.get::<_>(concat!($sym, "\0").as_bytes()).ok().map(|s| *s)
            };
        }
        Ok(Api {
            get_unique_id: req!("ncclGetUniqueId"),
            comm_init_rank: req!("ncclCommInitRank"),
            all_reduce: req!("ncclAllReduce"),
            comm_destroy: req!("ncclCommDestroy"),
            get_error_string: req!("ncclGetErrorString"),
            comm_abort: opt!("ncclCommAbort"),
            get_async_error: opt!("ncclCommGetAsyncError"),
            get_last_error: opt!("ncclGetLastError"),
            get_version: opt!("ncclGetVersion"),
            name: name.to_string(),
            _lib: lib,
        })
    }
}

/// Loads libnccl (GACC_ERR_DEVICE_UNAVAILABLE with the reasons when it cannot).
pub fn api() -> Result<&'static Api> {
    let mut slot = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(api) = *slot {
        return Ok(api);
    }
    let mut reasons = Vec::new();
    for name in candidates() {
        match open(&name) {
            Ok(api) => {
                let api: &'static Api = Box::leak(Box::new(api));
                *slot = Some(api);
                return Ok(api);
            }
            Err(e) => reasons.push(format!("{name}: {e}")),
        }
    }
    Err(Error::device_unavailable(format!(
        "NCCL cannot be loaded (set GACC_NCCL_LIB to libnccl.so.2's path): {}",
        reasons.join("; ")
    )))
}

impl Api {
    fn error_text(&self, r: c_int, comm: Comm) -> String {
        // SAFETY: ncclGetErrorString returns a static string (or NULL).
        let base = unsafe { cstr((self.get_error_string)(r)) };
        let last = match (self.get_last_error, comm.is_null()) {
            // SAFETY: comm is live; the returned string is NCCL's own.
            (Some(f), false) => unsafe { cstr(f(comm)) },
            _ => String::new(),
        };
        if last.is_empty() {
            format!("{base} (ncclResult_t {r})")
        } else {
            format!("{base} (ncclResult_t {r}): {last}")
        }
    }

    /// ncclGetErrorString's text for `result` (with ncclGetLastError's when there is one).
    pub fn error_string(&self, result: c_int) -> String {
        self.error_text(result, std::ptr::null_mut())
    }

    /// "NCCL 2.21.5 (libnccl.so.2)".
    pub fn describe(&self) -> String {
        let mut v: c_int = 0;
        // SAFETY: writes one int.
        let version = match self.get_version.map(|f| unsafe { f(&mut v) }) {
            Some(NCCL_SUCCESS) if v >= 10000 => format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100),
            Some(NCCL_SUCCESS) => format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100),
            _ => "?".into(),
        };
        format!("NCCL {version} ({})", self.name)
    }
}

/// SAFETY: `p` is NULL or a NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn comm_error(what: &str, text: String) -> Error {
    Error::new(gacc_status::GACC_ERR_COMMUNICATION, format!("{what}: {text}"))
}

/// ncclGetUniqueId: rank 0 calls it and hands the bytes to every rank.
pub fn unique_id() -> Result<NcclUniqueId> {
    let api = api()?;
    let mut id = NcclUniqueId { internal: [0; 128] };
    // SAFETY: writes one ncclUniqueId.
    let r = unsafe { (api.get_unique_id)(&mut id) };
    if r != NCCL_SUCCESS {
        return Err(comm_error("ncclGetUniqueId", api.error_text(r, std::ptr::null_mut())));
    }
    Ok(id)
}

/// One rank's NCCL communicator.
pub struct NcclComm {
    api: &'static Api,
    comm: Comm,
    rank: u32,
    size: u32,
    /// Set once NCCL reported an asynchronous error: the communicator is aborted and
    /// every later collective fails.
    broken: Option<String>,
}

// SAFETY: a communicator may be used from any thread as long as its calls are
// serialised, which the engine does.
unsafe impl Send for NcclComm {}

impl NcclComm {
    /// ncclCommInitRank; the device this rank uses must be current on the calling
    /// thread (the CUDA backend binds its context first). Blocks until every rank
    /// of the group has called it.
    pub fn init(id: &NcclUniqueId, rank: u32, size: u32) -> Result<NcclComm> {
        let api = api()?;
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: writes one handle; the id is passed by value.
        let r = unsafe { (api.comm_init_rank)(&mut comm, size as c_int, *id, rank as c_int) };
        if r != NCCL_SUCCESS || comm.is_null() {
            return Err(comm_error(
                &format!("ncclCommInitRank (rank {rank} of {size})"),
                api.error_text(r, std::ptr::null_mut()),
            ));
        }
        Ok(NcclComm { api, comm, rank, size, broken: None })
    }

    fn check_async(&mut self) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(comm_error("NCCL communicator", why.clone()));
        }
        let Some(f) = self.api.get_async_error else { return Ok(()) };
        let mut async_err: c_int = NCCL_SUCCESS;
        // SAFETY: comm is live; writes one int.
        let r = unsafe { f(self.comm, &mut async_err) };
        let bad = if r != NCCL_SUCCESS { r } else { async_err };
        if bad == NCCL_SUCCESS || bad == NCCL_IN_PROGRESS {
            return Ok(());
        }
        let why = format!("asynchronous error, communicator aborted: {}", self.api.error_text(bad, self.comm));
        if let Some(abort) = self.api.comm_abort {
            // SAFETY: comm is live and not used again (broken is set).
            unsafe { abort(self.comm) };
            self.comm = std::ptr::null_mut();
        }
        self.broken = Some(why.clone());
        Err(comm_error("NCCL communicator", why))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if !self.comm.is_null() {
            // SAFETY: comm came from ncclCommInitRank and is released once.
            unsafe { (self.api.comm_destroy)(self.comm) };
        }
    }
}

impl DeviceCollective for NcclComm {
    fn rank(&self) -> u32 {
        self.rank
    }
    fn world_size(&self) -> u32 {
        self.size
    }
    unsafe fn allreduce(
        &mut self,
        send: u64,
        recv: u64,
        count: usize,
        element: Element,
        stream: *mut c_void,
    ) -> Result<()> {
        self.check_async()?;
        let dtype = match element {
            Element::F32 => NCCL_FLOAT32,
            Element::F64 => NCCL_FLOAT64,
        };
        let r = (self.api.all_reduce)(
            send as *const c_void,
            recv as *mut c_void,
            count,
            dtype,
            NCCL_SUM,
            self.comm,
            stream,
        );
        if r != NCCL_SUCCESS {
            return Err(comm_error(
                &format!(
                    "ncclAllReduce of {count} {} (rank {} of {})",
                    match element {
                        Element::F32 => "floats",
                        Element::F64 => "doubles",
                    },
                    self.rank,
                    self.size
                ),
                self.api.error_text(r, self.comm),
            ));
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("{} (rank {} of {})", self.api.describe(), self.rank, self.size)
    }
}
