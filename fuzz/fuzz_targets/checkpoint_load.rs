//! Arbitrary bytes as a checkpoint file (see `quill::fuzzing::checkpoint_bytes`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quill::fuzzing::checkpoint_bytes(data));
