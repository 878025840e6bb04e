//! Batch samples are byte-identical to those made before the generation engine was rewritten
//! (`tests/data/golden_samples/`, see its README for the commands that made them): same
//! checkpoint, parameters, seed and id give the same text, token count, stop reason and mean
//! log-probability, for char, word and BPE models, with primes, sweeps, stop strings and
//! end-of-text.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden_samples")
}

fn bundled() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("checkpoints/shakespeare-small.safetensors")
        .to_string_lossy()
        .into_owned()
}

/// Runs `quill sample ARGS --out OUT` in the golden directory (primes.txt is read from there).
fn sample(args: &[&str], out: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_quill"))
        .arg("sample")
        .args(args)
        .arg("--out")
        .arg(out)
        .current_dir(data())
        .output()
        .expect("run quill");
    assert!(
        o.status.success(),
        "quill sample {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The records of a JSONL manifest without their `checkpoint` path.
fn records(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("checkpoint");
            v
        })
        .collect()
}

fn same_records(golden: &str, got: &Path) {
    let want = records(&data().join(golden));
    let have = records(got);
    assert_eq!(want.len(), have.len(), "{golden}: number of samples");
    for (w, h) in want.iter().zip(&have) {
        assert_eq!(w, h, "{golden}: sample {}", w["id"]);
    }
}

#[test]
fn char_sweep_with_primes_and_stop_strings() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s.jsonl");
    let b = bundled();
    sample(
        &[
            "-c",
            &b,
            "--prime-file",
            "primes.txt",
            "--count",
            "2",
            "--temperature",
            "0,0.8,1.2",
            "--top-k",
            "none,7",
            "--top-p",
            "1.0,0.9",
            "--seed",
            "5",
            "--length",
            "80",
            "--stop",
            "\n\n",
            "--format",
            "jsonl",
        ],
        &out,
    );
    same_records("char-sweep.jsonl", &out);
}

#[test]
fn char_files_and_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("files");
    let b = bundled();
    sample(
        &[
            "-c",
            &b,
            "--count",
            "6",
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
            "--seed",
            "3",
            "--length",
            "120",
        ],
        &out,
    );
    let golden = data().join("char-files");
    for i in 1..=6 {
        let name = format!("{i:04}.txt");
        assert_eq!(
            fs::read(golden.join(&name)).unwrap(),
            fs::read(out.join(&name)).unwrap(),
            "{name}"
        );
    }
    same_records("char-files/manifest.jsonl", &out.join("manifest.jsonl"));
}

#[test]
fn word_and_bpe_samples() {
    let tmp = tempfile::tempdir().unwrap();
    for m in ["word", "bpe"] {
        let ck = format!("{m}.safetensors");
        let out = tmp.path().join(format!("{m}-sweep.jsonl"));
        sample(
            &[
                "-c",
                &ck,
                "--prime-file",
                "primes.txt",
                "--count",
                "2",
                "--temperature",
                "0,1.0",
                "--top-k",
                "none,20",
                "--seed",
                "7",
                "--length",
                "40",
                "--stop",
                ".",
                "--format",
                "jsonl",
                "--valid-utf8",
                "false",
            ],
            &out,
        );
        same_records(&format!("{m}-sweep.jsonl"), &out);
        let out = tmp.path().join(format!("{m}-empty.jsonl"));
        sample(
            &[
                "-c",
                &ck,
                "--count",
                "4",
                "--temperature",
                "0.9",
                "--seed",
                "1",
                "--length",
                "50",
                "--format",
                "jsonl",
                "--valid-utf8",
                "false",
            ],
            &out,
        );
        same_records(&format!("{m}-empty.jsonl"), &out);
    }
}

#[test]
fn end_of_text_and_stop_strings_at_high_temperature() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bpe-hot.jsonl");
    sample(
        &[
            "-c",
            "bpe.safetensors",
            "--count",
            "16",
            "--temperature",
            "2.0",
            "--seed",
            "2",
            "--length",
            "40",
            "--format",
            "jsonl",
            // made before the UTF-8 guard existed
            "--valid-utf8",
            "false",
        ],
        &out,
    );
    same_records("bpe-hot.jsonl", &out);
    let eos = records(&out)
        .iter()
        .filter(|r| r["stop_reason"] == "end_of_text")
        .count();
    assert!(eos > 0, "the golden set must exercise end-of-text");
    let out = tmp.path().join("word-hot.jsonl");
    sample(
        &[
            "-c",
            "word.safetensors",
            "--count",
            "16",
            "--temperature",
            "2.5",
            "--seed",
            "2",
            "--length",
            "40",
            "--stop",
            ",",
            "--format",
            "jsonl",
        ],
        &out,
    );
    same_records("word-hot.jsonl", &out);
}
