//! Checkpoints from strangers: a file with a valid checksum but crafted metadata gets a clear
//! error naming the field, before anything is allocated from it, from every loader (sample,
//! info, resume); never a panic, an abort or an out-of-memory kill.

mod common;
use common::{quill, text};

use std::path::{Path, PathBuf};

use quill::checkpoint::format::CheckpointFile;
use serde_json::json;

/// A small full checkpoint trained by the binary on `tiny.txt` in `dir`.
fn base(dir: &Path) -> PathBuf {
    let para = "ROMEO:\nBut soft, what light through yonder window breaks?\n\
JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n";
    std::fs::write(dir.join("tiny.txt"), para.repeat(20)).unwrap();
    let o = quill(
        &[
            "train",
            "--corpus",
            "tiny.txt",
            "--hidden",
            "16",
            "--embed",
            "8",
            "--batch",
            "4",
            "--seq",
            "16",
            "--max-steps",
            "3",
            "--quiet",
        ],
        dir,
    );
    assert!(o.status.success(), "train: {}", text(&o.stderr));
    dir.join("checkpoints/tiny-latest.safetensors")
}

/// A copy of `src` at `dst` with `edit` applied to its metadata, saved with a valid checksum.
fn craft(src: &Path, dst: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut f = CheckpointFile::load(src).unwrap();
    let mut meta = f.meta_value().unwrap();
    edit(&mut meta);
    f.set_meta(&meta).unwrap();
    f.save_atomic(dst).unwrap();
}

fn err_of<T>(r: quill::Result<T>) -> String {
    match r {
        Ok(_) => panic!("a crafted checkpoint was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn crafted_metadata_is_refused_field_by_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ck = base(d);
    let bad = d.join("bad.safetensors");

    // Training-record fields: inference still loads the model, resuming is refused.
    let training: Vec<(&str, serde_json::Value, &str)> = vec![
        ("/train/batch", json!(1u64 << 40), "batch"),
        ("/train/seq", json!(0), "seq"),
        ("/train/lr", json!(-1.0), "lr"),
        ("/train/name", json!("../../etc/x"), "name"),
        ("/progress/lr_scale", json!(-2.0), "lr_scale"),
        ("/progress/elapsed_secs", json!(-5.0), "elapsed_secs"),
        ("/adam/beta1", json!(1.5), "beta1"),
        ("/adam/eps", json!(0.0), "eps"),
    ];
    for (field, value, needle) in training {
        craft(&ck, &bad, |m| {
            *m.pointer_mut(field).unwrap() = value.clone()
        });
        let e = err_of(quill::train::checkpoint::load_resumable(&bad));
        assert!(
            e.contains(needle) && e.contains("bad.safetensors"),
            "{field}: {e}"
        );
        assert!(quill::checkpoint::load_model(&bad).is_ok(), "{field}");
    }

    // Model fields: refused by every loader, before any tensor is built.
    let model: Vec<(&str, serde_json::Value, &str)> = vec![
        ("/model/vocab", json!(1u64 << 40), "vocab"),
        ("/model/hidden", json!(1u64 << 20), "hidden"),
        ("/model/layers", json!(100_000), "layers"),
        ("/model/embed", json!(0), "embed"),
        ("/model/dropout", json!(1.5), "dropout"),
        // sizes in range but not what the tensors hold
        ("/model/hidden", json!(4096), "shape"),
        ("/model/vocab", json!(70), "vocabulary"),
        (
            "/tokenizer",
            json!("{\"kind\":\"char\",\"chars\":[\"a\"]}"),
            "vocabulary",
        ),
        ("/kind", json!("everything"), "metadata"),
    ];
    for (field, value, needle) in model {
        craft(&ck, &bad, |m| {
            *m.pointer_mut(field).unwrap() = value.clone()
        });
        let e = err_of(quill::checkpoint::load_model(&bad));
        assert!(e.contains(needle), "{field}: {e}");
        let e = err_of(quill::train::checkpoint::load_resumable(&bad));
        assert!(e.contains(needle), "{field}: {e}");
        let o = quill(&["sample", "-c", "bad.safetensors", "--length", "5"], d);
        assert_eq!(o.status.code(), Some(1), "{field}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(needle), "{field}");
    }

    // A tokenizer far larger than its vocabulary is refused before it is parsed.
    craft(&ck, &bad, |m| {
        let padding = " ".repeat(2 << 20);
        let t = m["tokenizer"].as_str().unwrap().to_string();
        m["tokenizer"] = json!(format!("{t}{padding}"));
    });
    let e = err_of(quill::checkpoint::load_model(&bad));
    assert!(e.contains("tokenizer") && e.contains("allowed"), "{e}");

    // Missing or misshapen carried state.
    let mut f = CheckpointFile::load(&ck).unwrap();
    f.tensors.remove("state.c");
    f.save_atomic(&bad).unwrap();
    let e = err_of(quill::train::checkpoint::load_resumable(&bad));
    assert!(e.contains("state.c"), "{e}");
}

/// Values that parse but do not fit the corpus, and text fields with odd characters: clear
/// errors from `--resume`, no panic.
#[test]
fn resume_refuses_a_data_cursor_past_the_corpus_and_odd_fingerprints() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ck = base(d);
    let bad = d.join("cursor.safetensors");
    craft(&ck, &bad, |m| m["progress"]["window"] = json!(1u64 << 40));
    let o = quill(
        &[
            "train",
            "--resume",
            "cursor.safetensors",
            "--corpus",
            "tiny.txt",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("data cursor"),
        "{}",
        text(&o.stderr)
    );

    // A fingerprint of multi-byte characters: the mismatch message cuts it safely.
    let odd = d.join("odd.safetensors");
    craft(&ck, &odd, |m| {
        m["corpus"]["fingerprint"] = json!("aéééééééééééééééé")
    });
    let o = quill(
        &[
            "train",
            "--resume",
            "odd.safetensors",
            "--corpus",
            "tiny.txt",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("different corpus"),
        "{}",
        text(&o.stderr)
    );
}
