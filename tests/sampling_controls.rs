//! The sampling controls (min-p, repetition / frequency / presence penalties, the UTF-8 guard)
//! through `quill sample`: range errors, sweeps with their manifest fields, and a BPE model
//! whose high-temperature samples are free of U+FFFD with the guard (the golden samples of
//! the same command without it are full of them).

mod common;
use common::{quill, text};

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model(name: &str) -> String {
    root().join(name).to_string_lossy().into_owned()
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn out_of_range_controls_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let b = model("checkpoints/shakespeare-small.safetensors");
    for (flag, value, needle) in [
        ("--min-p", "1.5", "min-p"),
        ("--min-p", "-0.1", "min-p"),
        ("--repetition-penalty", "0", "repetition-penalty"),
        ("--repetition-window", "0", "repetition-window"),
        ("--frequency-penalty", "2.5", "frequency-penalty"),
        ("--presence-penalty", "-3", "presence-penalty"),
        ("--presence-penalty", "x", "presence-penalty"),
    ] {
        let o = quill(&["sample", "-c", &b, "-l", "5", flag, value], dir.path());
        assert!(!o.status.success(), "{flag} {value} accepted");
        let err = text(&o.stderr);
        assert!(err.contains(needle), "{flag} {value}: {err}");
        assert!(
            o.stdout.is_empty(),
            "{flag} {value}: printed text before failing"
        );
    }
    let o = quill(&["sample", "-c", &b, "--min-p", "0,0.1"], dir.path());
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--out"), "{}", text(&o.stderr));
}

#[test]
fn a_sweep_of_the_controls_records_them_in_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.jsonl");
    let b = model("checkpoints/shakespeare-small.safetensors");
    let o = quill(
        &[
            "sample",
            "-c",
            &b,
            "--length",
            "60",
            "--temperature",
            "1.0",
            "--min-p",
            "0,0.2",
            "--repetition-penalty",
            "1,1.5",
            "--frequency-penalty",
            "0,0.8",
            "--repetition-window",
            "32",
            "--seed",
            "4",
            "--format",
            "jsonl",
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let recs = jsonl(&out);
    assert_eq!(recs.len(), 8);
    // The plain combination is recorded as before (no new fields); the others name theirs.
    assert!(recs[0].get("min_p").is_none() && recs[0].get("repetition_penalty").is_none());
    assert_eq!(recs[1]["frequency_penalty"], 0.8);
    assert_eq!(recs[2]["repetition_penalty"], 1.5);
    assert_eq!(recs[2]["repetition_window"], 32);
    assert_eq!(recs[4]["min_p"].as_f64().unwrap() as f32, 0.2);
    // The first sample is the plain sample of `quill sample` to stdout with the same seed.
    let plain = quill(
        &[
            "sample",
            "-c",
            &b,
            "--length",
            "60",
            "--temperature",
            "1.0",
            "--seed",
            "4",
        ],
        dir.path(),
    );
    assert_eq!(
        text(&plain.stdout).trim_end_matches('\n'),
        recs[0]["text"].as_str().unwrap()
    );
    // Each control changes the text.
    let texts: Vec<&str> = recs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert!(texts[1..].iter().all(|t| *t != texts[0]));
    // With the controls, `quill sample` to stdout is still sample 1 of a batch run.
    let controls = [
        "--length",
        "60",
        "--temperature",
        "1.0",
        "--repetition-penalty",
        "1.5",
        "--presence-penalty",
        "-0.5",
        "--min-p",
        "0.05",
        "--seed",
        "4",
    ];
    let pen = quill(&[&["sample", "-c", &b], &controls[..]].concat(), dir.path());
    assert!(pen.status.success(), "{}", text(&pen.stderr));
    let one = dir.path().join("one.jsonl");
    let o = quill(
        &[
            &["sample", "-c", &b],
            &controls[..],
            &["--format", "jsonl", "--out", one.to_str().unwrap()],
        ]
        .concat(),
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rec = &jsonl(&one)[0];
    assert_eq!(rec["presence_penalty"], -0.5);
    assert_eq!(
        text(&pen.stdout).trim_end_matches('\n'),
        rec["text"].as_str().unwrap()
    );
    assert_ne!(rec["text"], recs[0]["text"]);
}

#[test]
fn the_utf8_guard_removes_replacement_characters_from_bpe_samples() {
    let dir = tempfile::tempdir().unwrap();
    let bpe = model("tests/data/golden_samples/bpe.safetensors");
    let run = |guard: bool| {
        let out = dir.path().join(format!("g{guard}.jsonl"));
        let mut args = vec![
            "sample",
            "-c",
            &bpe,
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
            "--out",
            out.to_str().unwrap(),
        ];
        // on by default; off only when asked
        if !guard {
            args.extend(["--valid-utf8", "false"]);
        }
        let o = quill(&args, dir.path());
        assert!(o.status.success(), "{}", text(&o.stderr));
        jsonl(&out)
    };
    let count = |recs: &[serde_json::Value]| {
        recs.iter()
            .map(|r| r["text"].as_str().unwrap().matches('\u{FFFD}').count())
            .sum::<usize>()
    };
    let without = run(false);
    let with = run(true);
    assert!(count(&without) > 16, "the unguarded samples have U+FFFD");
    assert_eq!(count(&with), 0);
    assert!(with.iter().all(|r| r["valid_utf8"] == true));
    assert!(without.iter().all(|r| r.get("valid_utf8").is_none()));
    // Multi-byte characters still come out, and samples still end at end-of-text.
    assert!(with.iter().any(|r| !r["text"].as_str().unwrap().is_ascii()));
    assert!(with.iter().any(|r| r["stop_reason"] == "end_of_text"));
}
