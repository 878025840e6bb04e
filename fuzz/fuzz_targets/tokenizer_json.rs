//! Arbitrary tokenizer JSON (see `quill::fuzzing::tokenizer_json`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quill::fuzzing::tokenizer_json(data));
