//! Arbitrary bytes fed to the checkpoint reader: it must never panic, never read out
//! of bounds, never allocate beyond what the input justifies, and every rejection
//! must be GACC_ERR_CORRUPT (or OUT_OF_MEMORY / IO).
#![no_main]

use gacc::gacc_status::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = gacc::checkpoint::read_snapshot_from(std::io::Cursor::new(data), data.len() as u64);
    if let Err(e) = result {
        assert!(
            matches!(e.status, GACC_ERR_CORRUPT | GACC_ERR_OUT_OF_MEMORY | GACC_ERR_IO),
            "unexpected status {:?}: {}",
            e.status,
            e.message
        );
    }
});
