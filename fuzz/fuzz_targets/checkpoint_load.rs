//! Fuzz `CheckpointFile::from_bytes` with arbitrary bytes: it must never panic, and anything it
//! accepts must re-encode to bytes that load back to the same encoding.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use quill::checkpoint::format::CheckpointFile;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz-input.qck");
    if let Ok(cp) = CheckpointFile::from_bytes(data, path) {
        let bytes = cp
            .to_bytes()
            .expect("an accepted checkpoint must re-encode");
        let again = CheckpointFile::from_bytes(&bytes, path).expect("re-encoded bytes must load");
        assert_eq!(again.to_bytes().expect("re-encode"), bytes);
    }
});
