//! Word-level and BPE models through the real binary: train, sample, eval, info; and a
//! checkpoint whose tokenizer data is damaged.

mod common;
use common::{quill, text};

use std::path::Path;

use quill::checkpoint::format::CheckpointFile;

fn corpus(dir: &Path) {
    let lines = [
        "the king is dead , long live the king .",
        "my lord , the queen is come to court !",
        "what news from the north , good sir ?",
        "naïve men of Tōkyō sing — and the king listens .",
    ];
    let mut s = String::new();
    for i in 0..60 {
        s.push_str(lines[i % lines.len()]);
        s.push('\n');
    }
    std::fs::write(dir.join("c.txt"), s).unwrap();
}

fn train(dir: &Path, kind: &str, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--corpus",
        "c.txt",
        "--tokenizer",
        kind,
        "--hidden",
        "24",
        "--batch",
        "2",
        "--seq",
        "8",
        "--max-steps",
        "20",
        "--eval-every",
        "10",
        "--quiet",
        "--name",
        kind,
        "--min-frequency",
        "1",
    ];
    args.extend_from_slice(extra);
    let o = quill(&args, dir);
    assert!(o.status.success(), "{kind}: {}", text(&o.stderr));
}

fn sample_eval_info(dir: &Path, kind: &str) {
    let ck = format!("checkpoints/{kind}-latest.safetensors");
    let s = quill(
        &[
            "sample", "-c", &ck, "--prime", "the king", "--length", "20", "--seed", "1",
        ],
        dir,
    );
    assert!(s.status.success(), "{kind}: {}", text(&s.stderr));
    assert!(text(&s.stdout).starts_with("the king"));
    let e = quill(&["eval", "-c", &ck, "--file", "c.txt", "--json"], dir);
    assert!(e.status.success(), "{kind}: {}", text(&e.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&e.stdout)).unwrap();
    assert_eq!(v["tokenizer"], kind);
    let (loss, bpc) = (
        v["loss_per_token"].as_f64().unwrap(),
        v["bits_per_char"].as_f64().unwrap(),
    );
    assert!(loss.is_finite() && loss > 0.0 && bpc > 0.0, "{v}");
    let i = quill(&["info", &ck], dir);
    assert!(
        text(&i.stdout).to_lowercase().contains(kind),
        "{}",
        text(&i.stdout)
    );
}

#[test]
fn word_model_with_tied_weights_trains_samples_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    train(dir.path(), "word", &["--tie-weights", "--vocab-size", "40"]);
    sample_eval_info(dir.path(), "word");
    // out-of-vocabulary prime words are named in a warning and mapped to <unk>
    let s = quill(
        &[
            "sample",
            "-c",
            "checkpoints/word-latest.safetensors",
            "--prime",
            "the zebra",
            "--length",
            "3",
        ],
        dir.path(),
    );
    assert!(s.status.success());
    assert!(text(&s.stderr).contains("zebra"), "{}", text(&s.stderr));
}

#[test]
fn bpe_model_trains_samples_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    train(dir.path(), "bpe", &["--vocab-size", "300"]);
    sample_eval_info(dir.path(), "bpe");
}

#[test]
fn tie_weights_needs_embed_equal_hidden() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let o = quill(
        &[
            "train",
            "--corpus",
            "c.txt",
            "--tokenizer",
            "word",
            "--tie-weights",
            "--embed",
            "8",
            "--hidden",
            "16",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("embed = hidden"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn damaged_tokenizer_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    train(dir.path(), "word", &[]);
    let src = dir.path().join("checkpoints/word-latest.safetensors");
    let mut f = CheckpointFile::load(&src).unwrap();
    let mut meta = f.meta_value().unwrap();
    let tok = meta["tokenizer"].as_str().unwrap().to_string();
    meta["tokenizer"] = serde_json::Value::String(tok[..tok.len() / 2].to_string());
    f.set_meta(&meta).unwrap();
    let bad = dir.path().join("bad.safetensors");
    f.save_atomic(&bad).unwrap();
    let o = quill(
        &["sample", "-c", "bad.safetensors", "--length", "5"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("bad.safetensors") && err.contains("tokenizer"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
