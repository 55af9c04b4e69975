//! The set of live engines.
//!
//! A handle is an address inside a reserved, never-touched block of this library's
//! memory: one byte per engine ever created. Handles are therefore never reused (a
//! destroyed handle stays invalid forever, even after new engines are created), are
//! never dereferenced, and look like ordinary C pointers to every language runtime
//! (Go's garbage collector rejects small integers disguised as pointers).
//!
//! Calls look the engine up under the registry lock, clone its Arc, release the
//! registry and then lock the engine itself: calls on one engine are serialised,
//! calls on different engines run in parallel, and destroy during another thread's
//! call frees the engine only when that call returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::types::gacc_engine;
use crate::engine::Engine;
use crate::status::{gacc_status, Error, Result};

/// Number of handles a process can create.
pub(crate) const HANDLE_SPACE: usize = 1 << 24;

/// Reserved address space for handles; zero-initialised and mutable so it lives in
/// .bss (costing no file size and no physical memory), and never read or written.
struct HandleArena(std::cell::UnsafeCell<[u8; HANDLE_SPACE]>);
// SAFETY: the arena's bytes are never accessed; only its address is used.
unsafe impl Sync for HandleArena {}
static HANDLE_ARENA: HandleArena = HandleArena(std::cell::UnsafeCell::new([0; HANDLE_SPACE]));

pub type SharedEngine = Arc<Mutex<Engine>>;

struct Registry {
    next: usize,
    live: BTreeMap<usize, SharedEngine>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { next: 0, live: BTreeMap::new() });

fn registry() -> MutexGuard<'static, Registry> {
    // The registry's invariants hold between statements: a poisoned lock is safe to use.
    REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn arena_base() -> usize {
    HANDLE_ARENA.0.get() as usize
}

/// Registers a new engine and returns its handle.
pub fn insert(engine: Engine) -> Result<*mut gacc_engine> {
    let mut reg = registry();
    if reg.next >= HANDLE_SPACE {
        return Err(Error::out_of_memory(format!(
            "handle space exhausted: {HANDLE_SPACE} engines were created in this process"
        )));
    }
    let address = arena_base() + reg.next;
    reg.next += 1;
    reg.live.insert(address, Arc::new(Mutex::new(engine)));
    Ok(address as *mut gacc_engine)
}

fn invalid_handle(handle: *const gacc_engine) -> Error {
    Error::new(
        gacc_status::GACC_ERR_INVALID_HANDLE,
        format!("{handle:p} is not a live engine (never created, or already destroyed)"),
    )
}

/// Finds a live engine.
pub fn get(handle: *const gacc_engine) -> Result<SharedEngine> {
    if handle.is_null() {
        return Err(Error::new(gacc_status::GACC_ERR_NULL_POINTER, "engine is NULL"));
    }
    registry().live.get(&(handle as usize)).cloned().ok_or_else(|| invalid_handle(handle))
}

/// Removes an engine; it is dropped when the last in-flight call releases it.
pub fn remove(handle: *const gacc_engine) -> Option<SharedEngine> {
    registry().live.remove(&(handle as usize))
}

/// Number of live engines (tests; `test-support` builds only).
#[cfg(feature = "test-support")]
pub fn live_count() -> usize {
    registry().live.len()
}

/// Runs `f` with the engine locked. A lock poisoned by an earlier panic means the
/// engine may be inconsistent: it is refused rather than used.
pub fn with_engine<T>(handle: *const gacc_engine, f: impl FnOnce(&mut Engine) -> Result<T>) -> Result<T> {
    let shared = get(handle)?;
    let mut engine = shared.lock().map_err(|_| {
        Error::internal("this engine is unusable after an internal error in an earlier call; destroy it")
    })?;
    f(&mut engine)
}
