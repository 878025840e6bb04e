//! Replays the fuzz targets' seeds and every crash the fuzzer ever found
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) through the same code the fuzz
//! targets run (`quill::fuzzing`), so CI compiles the harnesses and keeps fixed crashes fixed.

use std::fs;
use std::path::Path;

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let d = root.join(dir).join(target);
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            out.push((p.display().to_string(), fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn checkpoint_load_corpus_replays() {
    let inputs = files("checkpoint_load");
    assert!(inputs.len() >= 5, "the committed seeds are missing");
    for (name, data) in inputs {
        eprintln!("{name}");
        quill::fuzzing::checkpoint_bytes(&data);
    }
}

#[test]
fn checkpoint_meta_corpus_replays() {
    let inputs = files("checkpoint_meta");
    assert!(inputs.len() >= 3, "the committed seeds are missing");
    for (name, data) in inputs {
        eprintln!("{name}");
        quill::fuzzing::checkpoint_meta(&data);
    }
    for seed in quill::fuzzing::checkpoint_meta_seeds() {
        quill::fuzzing::checkpoint_meta(&seed);
    }
}

#[test]
fn tokenizer_json_corpus_replays() {
    let inputs = files("tokenizer_json");
    assert!(inputs.len() >= 3, "the committed seeds are missing");
    for (name, data) in inputs {
        eprintln!("{name}");
        quill::fuzzing::tokenizer_json(&data);
    }
}

/// Writes the generated seeds of `checkpoint_meta` and `tokenizer_json` into
/// `fuzz/seeds/` (run after changing the checkpoint or tokenizer format:
/// `cargo test --release --test fuzz_replay -- --ignored write_seeds`).
#[test]
#[ignore]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (target, seeds) in [
        ("checkpoint_meta", quill::fuzzing::checkpoint_meta_seeds()),
        ("tokenizer_json", quill::fuzzing::tokenizer_json_seeds()),
    ] {
        let d = root.join(target);
        fs::create_dir_all(&d).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            let kind = ["char", "word", "bpe"][i];
            fs::write(d.join(format!("valid-{kind}")), s).unwrap();
        }
    }
}
