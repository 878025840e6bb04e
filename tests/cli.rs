//! The real binary, end to end: train → sample → eval → info → export on a tiny corpus, and
//! the error paths a user hits first.

mod common;
use common::{quill, text};

use std::path::Path;
use std::process::Command;

fn tiny_corpus(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("tiny.txt");
    let para = "ROMEO:\nBut soft, what light through yonder window breaks?\n\
JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n";
    std::fs::write(&p, para.repeat(30)).unwrap();
    p
}

#[test]
fn train_sample_eval_info_export() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_corpus(d);
    let o = quill(
        &[
            "train",
            "--corpus",
            "tiny.txt",
            "--hidden",
            "32",
            "--embed",
            "8",
            "--batch",
            "4",
            "--seq",
            "16",
            "--max-steps",
            "30",
            "--eval-every",
            "10",
            "--quiet",
        ],
        d,
    );
    assert!(o.status.success(), "train failed: {}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("val loss"), "{err}");
    for f in [
        "tiny-latest.safetensors",
        "tiny-best.safetensors",
        "tiny-metrics.jsonl",
    ] {
        assert!(d.join("checkpoints").join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(d.join("checkpoints/tiny-metrics.jsonl")).unwrap();
    assert!(metrics
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));

    // sample: default checkpoint discovery, prime echoed, deterministic per seed
    let s1 = quill(
        &[
            "sample", "--prime", "ROMEO:", "--length", "40", "--seed", "3",
        ],
        d,
    );
    assert!(s1.status.success(), "{}", text(&s1.stderr));
    let out1 = text(&s1.stdout);
    assert!(out1.starts_with("ROMEO:"), "{out1}");
    assert!(out1.chars().count() >= 40);
    let s2 = quill(
        &[
            "sample", "--prime", "ROMEO:", "--length", "40", "--seed", "3",
        ],
        d,
    );
    assert_eq!(out1, text(&s2.stdout), "same seed, same text");

    // unknown prime characters: an error listing them, or skipped on request
    let bad = quill(&["sample", "--prime", "Zq§", "--length", "5"], d);
    assert!(!bad.status.success());
    let msg = text(&bad.stderr);
    assert!(msg.contains("'§'") && msg.contains("'Z'"), "{msg}");
    let skip = quill(
        &[
            "sample",
            "--prime",
            "Zq§",
            "--length",
            "5",
            "--unknown",
            "skip",
        ],
        d,
    );
    assert!(skip.status.success(), "{}", text(&skip.stderr));

    // eval prints loss, perplexity and bits per character
    let e = quill(&["eval", "--file", "tiny.txt", "--json"], d);
    assert!(e.status.success(), "{}", text(&e.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&e.stdout)).unwrap();
    let loss = v["loss_per_token"].as_f64().unwrap();
    assert!(loss > 0.0 && loss < 4.0, "{v}");
    assert!((v["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-6);

    let i = quill(&["info", "checkpoints/tiny-best.safetensors"], d);
    assert!(i.status.success());
    let info = text(&i.stdout);
    assert!(
        info.contains("parameters") && info.contains("vocabulary"),
        "{info}"
    );

    let x = quill(
        &[
            "export",
            "checkpoints/tiny-latest.safetensors",
            "small.safetensors",
        ],
        d,
    );
    assert!(x.status.success(), "{}", text(&x.stderr));
    let full = std::fs::metadata(d.join("checkpoints/tiny-latest.safetensors"))
        .unwrap()
        .len();
    let small = std::fs::metadata(d.join("small.safetensors"))
        .unwrap()
        .len();
    assert!(small * 2 < full, "weights-only {small} vs full {full}");
    let s3 = quill(&["sample", "-c", "small.safetensors", "--length", "10"], d);
    assert!(s3.status.success());
    let r = quill(
        &[
            "train",
            "--corpus",
            "tiny.txt",
            "--resume",
            "small.safetensors",
        ],
        d,
    );
    assert!(!r.status.success());
    assert!(text(&r.stderr).contains("weights only"));
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--corpus", "missing.txt"], "missing.txt"),
        (
            vec!["train", "--corpus", "tiny.txt", "--dropout", "1.5"],
            "dropout",
        ),
        (
            vec!["train", "--corpus", "tiny.txt", "--hidden", "0"],
            "hidden",
        ),
        (
            vec!["train", "--corpus", "tiny.txt", "--weight-drop", "1"],
            "weight-drop",
        ),
        (
            vec!["train", "--corpus", "tiny.txt", "--dropout-embed", "-0.1"],
            "dropout-embed",
        ),
        (
            vec!["train", "--corpus", "tiny.txt", "--dropout-input", "NaN"],
            "dropout-input",
        ),
        (vec!["train", "--corpus", "tiny.txt", "--ema", "1.0"], "ema"),
        (
            vec!["train", "--corpus", "tiny.txt", "--forget-bias", "inf"],
            "forget-bias",
        ),
        (
            vec![
                "train", "--corpus", "tiny.txt", "--batch", "5000", "--seq", "500",
            ],
            "need at least",
        ),
        (
            vec!["sample", "-c", "tiny.txt", "--temperature", "-1"],
            "temperature",
        ),
        (vec!["sample", "-c", "nope.safetensors"], "nope.safetensors"),
        (vec!["sample", "-c", "tiny.txt"], "tiny.txt"),
    ];
    tiny_corpus(d);
    for (args, needle) in cases {
        let o = quill(&args, d);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn resume_refuses_other_architecture_or_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_corpus(d);
    let base = [
        "train",
        "--corpus",
        "tiny.txt",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--batch",
        "2",
        "--seq",
        "8",
        "--max-steps",
        "3",
        "--quiet",
    ];
    assert!(quill(&base, d).status.success());
    let ck = "checkpoints/tiny-latest.safetensors";
    for (flag, val, needle) in [
        ("--hidden", "32", "hidden 16"),
        ("--tokenizer", "bpe", "tokenizer"),
        ("--forget-bias", "0", "only initialises a new model"),
    ] {
        let o = quill(
            &[
                "train",
                "--corpus",
                "tiny.txt",
                "--resume",
                ck,
                flag,
                val,
                "--max-steps",
                "6",
            ],
            d,
        );
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o.stderr).contains(needle), "{}", text(&o.stderr));
    }
    // the same architecture resumes, batch and seq taken from the checkpoint
    let o = quill(
        &[
            "train",
            "--corpus",
            "tiny.txt",
            "--resume",
            ck,
            "--max-steps",
            "6",
            "--quiet",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// An output directory that cannot be made is an error before any training (and before the
/// corpus is prepared), naming the directory.
#[test]
fn an_unwritable_out_stops_train_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_corpus(d);
    std::fs::write(d.join("plain"), "a file, not a directory").unwrap();
    let o = quill(
        &[
            "train",
            "--corpus",
            "tiny.txt",
            "--out",
            "plain/out",
            "--hidden",
            "16",
            "--batch",
            "2",
            "--seq",
            "8",
            "--max-steps",
            "3",
            "--quiet",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("plain/out") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!err.contains("step"), "training started: {err}");
}

/// A resumed run never writes where a checkpoint says (it may come from anyone): without
/// --out it writes to checkpoints/. Without --corpus it trains on the corpus the checkpoint
/// records when that is still there, and says which corpus to pass when it is not. A missing
/// checkpoint is named as such (not the default corpus).
#[test]
fn resume_takes_its_paths_from_the_command_line_and_the_recorded_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("texts")).unwrap();
    std::fs::rename(tiny_corpus(d), d.join("texts/tiny.txt")).unwrap();
    let small = [
        "--hidden", "16", "--embed", "8", "--batch", "2", "--seq", "8", "--quiet",
    ];
    let run = |extra: &[&str]| {
        let mut a = vec!["train"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&small);
        quill(&a, d)
    };
    let o = run(&[
        "--corpus",
        "texts/tiny.txt",
        "--out",
        "runs",
        "--max-steps",
        "3",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ck = "runs/tiny-latest.safetensors";
    let before = std::fs::read(d.join(ck)).unwrap();

    // no --corpus, no --out: the recorded corpus, and checkpoints/ (not runs/)
    let o = run(&["--resume", ck, "--max-steps", "5"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("the corpus the checkpoint records: texts/tiny.txt"),
        "{}",
        text(&o.stderr)
    );
    assert!(d.join("checkpoints/tiny-latest.safetensors").is_file());
    assert_eq!(
        std::fs::read(d.join(ck)).unwrap(),
        before,
        "runs/ was written"
    );
    let info = quill(&["info", "checkpoints/tiny-latest.safetensors"], d);
    assert!(
        text(&info.stdout).contains("step 5"),
        "{}",
        text(&info.stdout)
    );

    // the recorded corpus is gone: the error names the checkpoint and asks for --corpus
    std::fs::rename(d.join("texts"), d.join("moved")).unwrap();
    let o = run(&["--resume", ck, "--max-steps", "5"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(ck) && err.contains("texts/tiny.txt") && err.contains("--corpus"),
        "{err}"
    );
    // ... and --corpus points to where it is now
    let o = run(&[
        "--resume",
        ck,
        "--corpus",
        "moved/tiny.txt",
        "--max-steps",
        "5",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // a missing checkpoint is named, before any corpus is looked at
    let o = run(&["--resume", "runs/nothere.safetensors", "--max-steps", "5"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("runs/nothere.safetensors") && !err.contains("shakespeare"),
        "{err}"
    );
}

#[test]
fn a_closed_stdout_ends_info_eval_and_sample_quietly() {
    // `quill info X | head -1`, `quill sample | head`: the reader is gone before quill writes. Printing must end
    // the command with success, not a panic and a backtrace.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ckpt = root.join("checkpoints/shakespeare-small.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("short.txt");
    std::fs::write(
        &corpus,
        "GLOUCESTER:\nNow is the winter of our discontent.\n",
    )
    .unwrap();
    for args in [
        vec!["info", ckpt.to_str().unwrap()],
        vec![
            "eval",
            "-c",
            ckpt.to_str().unwrap(),
            "--file",
            corpus.to_str().unwrap(),
        ],
        vec![
            "sample",
            "-c",
            ckpt.to_str().unwrap(),
            "--length",
            "2000",
            "--seed",
            "1",
        ],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quill"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run quill");
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = text(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(o.status.success(), "{args:?}: {:?} {err}", o.status);
    }
}

/// `quill info` prints what a checkpoint says about itself (corpus path, version) with control
/// characters escaped, so a crafted file cannot send escape sequences to the terminal.
#[test]
fn info_escapes_control_characters_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let evil = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J.txt";
    std::fs::copy(tiny_corpus(d), d.join(evil)).unwrap();
    let o = quill(
        &[
            "train",
            "--corpus",
            evil,
            "--name",
            "e",
            "--hidden",
            "16",
            "--embed",
            "8",
            "--batch",
            "4",
            "--seq",
            "16",
            "--max-steps",
            "2",
            "--quiet",
        ],
        d,
    );
    assert!(o.status.success(), "train failed: {}", text(&o.stderr));
    let o = quill(&["info", "checkpoints/e-latest.safetensors"], d);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}'),
        "raw control characters in: {out:?}"
    );
    assert!(
        out.contains(r"evil\u{1b}]0;pwned\u{7}\u{1b}[2J.txt"),
        "{out}"
    );
}
