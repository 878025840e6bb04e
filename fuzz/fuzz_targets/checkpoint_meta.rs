//! Crafted metadata in a checkpoint with a valid checksum, through every loader (see
//! `quill::fuzzing::checkpoint_meta`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quill::fuzzing::checkpoint_meta(data));
