//! gacc_create checks that an engine fits the machine before it allocates anything
//! (docs/c-api.md), as GACC_ERR_INVALID_ARGUMENT naming numel. `backend::check_fits` is
//! the check; it is pure, so sizes far beyond this machine can be tried without
//! allocating. (tests/c/test_bad_input.c checks the same through the C ABI.)

use gacc::backend::check_fits;
use gacc::engine::config::{Config, RawConfig};
use gacc::engine::layout::Layout;
use gacc::ffi::types::{GACC_DEVICE_AUTO, GACC_DEVICE_CPU};
use gacc::gacc_status;

fn physical_memory() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal");
    kib * 1024
}

fn config(device: i32) -> Config {
    let mut raw = RawConfig::defaults(); // AdamW, fp32: 16 bytes of state per parameter
    raw.device = device;
    Config::validate(&raw).unwrap()
}

fn layout(numel: usize) -> Layout {
    Layout::new(vec![(None, numel, true)]).unwrap()
}

#[test]
fn small_engines_fit() {
    assert!(check_fits(&config(GACC_DEVICE_CPU), &layout(1000)).is_ok());
    assert!(check_fits(&config(GACC_DEVICE_AUTO), &layout(1000)).is_ok());
}

#[test]
fn an_explicit_cpu_engine_must_fit_with_all_its_state() {
    // The fp32 initial values (4 B/param) fit in half the memory; the AdamW state
    // (16 B/param) needs twice the memory.
    let numel = (physical_memory() / 8) as usize;
    let err = check_fits(&config(GACC_DEVICE_CPU), &layout(numel)).unwrap_err();
    assert_eq!(err.status, gacc_status::GACC_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("numel"), "{}", err.message);
    // AUTO may still become a CUDA engine: only the host copy is checked up front.
    assert!(check_fits(&config(GACC_DEVICE_AUTO), &layout(numel)).is_ok());
}

#[test]
fn the_initial_values_must_fit_on_the_host_whatever_the_device() {
    let numel = (physical_memory() / 2) as usize; // 4 B/param: twice the memory
    for device in [GACC_DEVICE_CPU, GACC_DEVICE_AUTO, 0] {
        let err = check_fits(&config(device), &layout(numel)).unwrap_err();
        assert_eq!(err.status, gacc_status::GACC_ERR_INVALID_ARGUMENT);
        assert!(err.message.contains("numel"), "{}", err.message);
    }
}
