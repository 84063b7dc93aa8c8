//! Arbitrary bytes as an archive: open, read every tensor, verify. Any panic, abort,
//! timeout or out-of-memory is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = bpz::Reader::from_bytes(data.to_vec()) {
        common::exercise(&r);
    }
});
