//! `quill score` through the binary with the bundled checkpoint: per-line losses add up to
//! `quill eval --streams 1`, the JSONL schema, `--worst`, two checkpoints side by side, the
//! heat map, and the errors for bad files and flags.

mod common;
use common::{quill, text};

use std::path::{Path, PathBuf};
use std::process::Output;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bundled() -> String {
    root()
        .join("checkpoints/shakespeare-small.safetensors")
        .to_string_lossy()
        .into_owned()
}

/// A byte-level BPE model of the golden sample set, trained on the same corpus.
fn bpe() -> String {
    root()
        .join("tests/data/golden_samples/bpe.safetensors")
        .to_string_lossy()
        .into_owned()
}

/// Shakespeare-like lines, a blank line, and one line of nonsense (the oddest).
const FILE: &str = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n\
JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\nQzxq jjjv kkkw zzzq xqxq vvvj\n\
And I will kiss thy lips.\n";

fn write_file(dir: &Path) -> PathBuf {
    let p = dir.join("play.txt");
    std::fs::write(&p, FILE).unwrap();
    p
}

fn records(o: &Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn line_losses_add_up_to_the_sequential_eval_and_the_jsonl_has_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d);
    let b = bundled();
    let recs = records(&quill(
        &["score", "-c", &b, "play.txt", "--streams", "1", "--jsonl"],
        d,
    ));
    assert_eq!(recs.len(), FILE.lines().count());
    let mut nats = 0.0;
    let mut tokens = 0;
    let mut joined = String::new();
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["file"], "play.txt");
        assert_eq!(r["unit"], "line");
        assert_eq!(r["index"], i + 1);
        assert_eq!(r["line"], i + 1);
        joined.push_str(r["text"].as_str().unwrap());
        let s = &r["scores"].as_array().unwrap()[..];
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert!(s["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("shakespeare-small.safetensors"));
        let (n, t, c) = (
            s["nats"].as_f64().unwrap(),
            s["tokens"].as_u64().unwrap(),
            s["chars"].as_u64().unwrap(),
        );
        // A char model: one token per character, the file's first only context.
        assert_eq!(t, c);
        assert_eq!(
            t as usize,
            r["text"].as_str().unwrap().chars().count() - (i == 0) as usize
        );
        let lpt = s["loss_per_token"].as_f64().unwrap();
        assert!((lpt - n / t as f64).abs() < 1e-9);
        let bpc = s["bits_per_char"].as_f64().unwrap();
        assert!((bpc - n / std::f64::consts::LN_2 / c as f64).abs() < 1e-9);
        nats += n;
        tokens += t;
    }
    assert_eq!(joined, FILE, "the lines cover the file in order");

    let e = quill(
        &[
            "eval",
            "-c",
            &b,
            "--file",
            "play.txt",
            "--streams",
            "1",
            "--json",
        ],
        d,
    );
    assert!(e.status.success(), "{}", text(&e.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&e.stdout)).unwrap();
    assert_eq!(v["streams"], 1);
    assert_eq!(v["tokens"].as_u64().unwrap(), tokens);
    let eval_nats = v["loss_per_token"].as_f64().unwrap() * tokens as f64;
    assert!(
        (nats - eval_nats).abs() < 1e-9 * eval_nats,
        "score {nats} vs eval {eval_nats}"
    );

    // The default splits into streams and says so; the total is a little different.
    let t = quill(&["score", "-c", &b, "play.txt", "--by", "doc"], d);
    assert!(t.status.success(), "{}", text(&t.stderr));
    let out = text(&t.stdout);
    assert!(out.contains("streams 16 (each from a zero state"), "{out}");
    let e16 = quill(&["eval", "-c", &b, "--file", "play.txt"], d);
    assert!(text(&e16.stdout).contains("streams         16 (each from a zero state"));
}

#[test]
fn worst_sorted_paragraphs_and_the_heat_map() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d);
    let b = bundled();
    let recs = records(&quill(
        &["score", "-c", &b, "play.txt", "--worst", "2", "--jsonl"],
        d,
    ));
    assert_eq!(recs.len(), 2);
    assert!(
        recs[0]["text"].as_str().unwrap().starts_with("Qzxq"),
        "{}",
        recs[0]
    );
    let bpc = |r: &serde_json::Value| r["scores"][0]["bits_per_char"].as_f64().unwrap();
    assert!(bpc(&recs[0]) >= bpc(&recs[1]));
    // --sort keeps every line, oddest first.
    let all = records(&quill(
        &["score", "-c", &b, "play.txt", "--sort", "--jsonl"],
        d,
    ));
    assert_eq!(all.len(), FILE.lines().count());
    assert!(all.windows(2).all(|w| bpc(&w[0]) >= bpc(&w[1])));

    let paras = records(&quill(
        &[
            "score",
            "-c",
            &b,
            "play.txt",
            "--by",
            "paragraph",
            "--jsonl",
        ],
        d,
    ));
    assert_eq!(paras.len(), 2);
    assert_eq!(paras[1]["line"], 4);
    assert_eq!(paras[1]["unit"], "paragraph");

    let h = quill(
        &["score", "-c", &b, "play.txt", "--worst", "1", "--heatmap"],
        d,
    );
    assert!(h.status.success(), "{}", text(&h.stderr));
    let out = text(&h.stdout);
    assert!(out.contains("play.txt:6"), "{out}");
    assert!(out.contains("\u{1b}["), "coloured: {out}");
    let plain: String = strip_ansi(&out);
    assert!(plain.contains("Qzxq jjjv kkkw zzzq xqxq vvvj"), "{plain}");
}

/// `s` without ANSI escape sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn two_checkpoints_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d);
    let (a, b) = (bundled(), bpe());
    let recs = records(&quill(
        &[
            "score",
            "-c",
            &a,
            "-c",
            &b,
            "play.txt",
            "--jsonl",
            "--streams",
            "1",
        ],
        d,
    ));
    assert_eq!(recs.len(), FILE.lines().count());
    for r in &recs {
        let s = r["scores"].as_array().unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[1]["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("bpe.safetensors"));
    }
    // The BPE model has fewer tokens than characters over the whole file.
    let sum = |k: usize, f: &str| -> u64 {
        recs.iter()
            .map(|r| r["scores"][k][f].as_u64().unwrap())
            .sum()
    };
    assert!(sum(1, "tokens") < sum(0, "tokens"));
    let t = quill(
        &["score", "-c", &a, "-c", &b, "play.txt", "--worst", "3"],
        d,
    );
    assert!(t.status.success(), "{}", text(&t.stderr));
    let out = text(&t.stdout);
    assert!(out.contains("B-A bits"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("play.txt:")).count(),
        3
    );
}

#[test]
fn bad_files_and_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d);
    std::fs::write(d.join("empty.txt"), "").unwrap();
    std::fs::write(d.join("bad.txt"), b"ok\n\xff\xfe\n").unwrap();
    std::fs::write(d.join("one.txt"), "a").unwrap();
    let b = bundled();
    let fails = |args: &[&str], needle: &str| {
        let o = quill(args, d);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = text(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?} printed before failing");
    };
    fails(&["score", "-c", &b, "missing.txt"], "missing.txt");
    fails(&["score", "-c", &b, "play.txt", "empty.txt"], "empty");
    fails(&["score", "-c", &b, "bad.txt"], "bad.txt");
    fails(&["score", "-c", &b, "one.txt"], "too few");
    fails(&["score", "-c", &b, "."], "directory");
    fails(&["score", "-c", &b], "FILE");
    fails(
        &["score", "-c", &b, "play.txt", "--by", "sentence"],
        "sentence",
    );
    fails(
        &["score", "-c", &b, "play.txt", "--streams", "0"],
        "streams",
    );
    fails(&["score", "-c", &b, "play.txt", "--worst", "0"], "worst");
    fails(
        &["score", "-c", &b, "-c", &b, "-c", &b, "play.txt"],
        "checkpoint",
    );
    fails(
        &["score", "-c", "nope.safetensors", "play.txt"],
        "nope.safetensors",
    );
    fails(
        &["score", "-c", &b, "play.txt", "--jsonl", "--heatmap"],
        "--heatmap",
    );
    let word = root()
        .join("tests/data/golden_samples/word.safetensors")
        .to_string_lossy()
        .into_owned();
    fails(
        &["score", "-c", &word, "play.txt", "--heatmap"],
        "char or BPE",
    );
    // A short file is scored with fewer streams (each needs a token to score).
    std::fs::write(d.join("short.txt"), "To be\n").unwrap();
    let recs = records(&quill(&["score", "-c", &b, "short.txt", "--jsonl"], d));
    assert_eq!(recs[0]["scores"][0]["tokens"], 3);
}
