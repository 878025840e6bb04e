//! Corpora of many files and prepared token files, through the real binary: directory walks
//! and --glob, separators, bad files named or left out, token file reuse and invalidation, a
//! damaged token file refused, and training and resuming on a prepared corpus.

mod common;
use common::{quill, text};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use quill::tokenizer::Tokenizer;
use quill::train::prepare::TokenMeta;
use quill::train::tokens::read_head;

fn ok(o: &Output) -> String {
    let err = text(&o.stderr);
    assert!(o.status.success(), "quill failed: {err}");
    err
}

fn fails(o: &Output) -> String {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// A small library: three plays in two folders and a note that is not a play.
fn library(d: &Path) {
    let play = |name: &str| {
        format!("{name}:\nWhat light through yonder window breaks? It is the east.\n").repeat(12)
    };
    write(d, "books/b-hamlet.txt", play("HAMLET").as_bytes());
    write(d, "books/a-romeo.txt", play("ROMEO").as_bytes());
    write(d, "books/more/c-lear.txt", play("LEAR").as_bytes());
    write(d, "books/notes.md", b"# not a play, no newline at the end");
}

/// The tokenizer and all tokens of a token file, decoded.
fn decoded(path: &Path) -> (TokenMeta, Tokenizer, Vec<u32>, String) {
    let head = read_head(path).unwrap();
    let meta: TokenMeta = serde_json::from_str(&head.meta).unwrap();
    let tok = Tokenizer::from_json(&meta.tokenizer).unwrap();
    head.verify(&mut |_, _| Ok(())).unwrap();
    let ids = head.map().unwrap().to_vec();
    let text = tok.decode(&ids);
    (meta, tok, ids, text)
}

#[test]
fn directories_are_walked_in_order_with_globs_and_separators() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    library(d);
    let romeo = fs::read_to_string(d.join("books/a-romeo.txt")).unwrap();
    let hamlet = fs::read_to_string(d.join("books/b-hamlet.txt")).unwrap();
    let lear = fs::read_to_string(d.join("books/more/c-lear.txt")).unwrap();

    // Everything, sorted by path; char: a blank line between documents (the note has no
    // final newline, so it gets one first).
    let err = ok(&quill(
        &[
            "prepare",
            "--corpus",
            "books",
            "--val-fraction",
            "0",
            "--quiet",
        ],
        d,
    ));
    assert!(err.contains("4 file(s)"), "{err}");
    let (meta, _, _, all) = decoded(&d.join("checkpoints/books.tokens"));
    let note = "# not a play, no newline at the end";
    assert_eq!(all, format!("{romeo}\n{hamlet}\n{lear}\n{note}"));
    assert_eq!(meta.documents, 4);

    // --glob: only the plays; a text separator; several paths, in the order given.
    ok(&quill(
        &[
            "prepare",
            "--corpus",
            "books",
            "--glob",
            "*.txt",
            "--glob",
            "!more/**",
            "--separator",
            "\\n=====\\n",
            "--val-fraction",
            "0",
            "--name",
            "two",
            "--quiet",
        ],
        d,
    ));
    let (_, _, _, two) = decoded(&d.join("checkpoints/two.tokens"));
    assert_eq!(two, format!("{romeo}\n=====\n{hamlet}"));
    ok(&quill(
        &[
            "prepare",
            "--corpus",
            "books/more/c-lear.txt",
            "books/a-romeo.txt",
            "--val-fraction",
            "0",
            "--name",
            "paths",
            "--quiet",
        ],
        d,
    ));
    let (_, _, _, paths) = decoded(&d.join("checkpoints/paths.tokens"));
    assert_eq!(paths, format!("{lear}\n{romeo}"));

    // Word and BPE: the end-of-text token between documents (by default).
    for kind in ["word", "bpe"] {
        ok(&quill(
            &[
                "prepare",
                "--corpus",
                "books",
                "--glob",
                "*.txt",
                "--tokenizer",
                kind,
                "--vocab-size",
                "300",
                "--min-frequency",
                "1",
                "--name",
                kind,
                "--quiet",
            ],
            d,
        ));
        let (meta, tok, ids, _) = decoded(&d.join(format!("checkpoints/{kind}.tokens")));
        let eos = tok.eos_id().unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == eos).count(), 2, "{kind}");
        assert_eq!(meta.documents, 3);
    }
    // A char tokenizer has no end-of-text token.
    let err = fails(&quill(
        &[
            "prepare",
            "--corpus",
            "books",
            "--separator",
            "eos",
            "--name",
            "x",
        ],
        d,
    ));
    assert!(err.contains("no end-of-text token"), "{err}");
}

#[test]
fn bad_files_are_named_or_left_out_and_empty_directories_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    library(d);
    write(d, "books/bad.txt", b"valid start \xff\xfe then garbage");
    let err = fails(&quill(&["prepare", "--corpus", "books"], d));
    assert!(
        err.contains("bad.txt") && err.contains("offset 12") && err.contains("--skip-bad-files"),
        "{err}"
    );
    assert!(!d.join("checkpoints/books.tokens").exists());

    let err = ok(&quill(
        &[
            "prepare",
            "--corpus",
            "books",
            "--skip-bad-files",
            "--val-fraction",
            "0",
            "--quiet",
        ],
        d,
    ));
    assert!(
        err.contains("warning: left out") && err.contains("bad.txt"),
        "{err}"
    );
    let (meta, _, _, all) = decoded(&d.join("checkpoints/books.tokens"));
    assert_eq!(meta.documents, 4);
    assert!(!all.contains("garbage"));
    let skipped: Vec<_> = meta
        .sources
        .iter()
        .filter(|s| s.skipped.is_some())
        .collect();
    assert_eq!(skipped.len(), 1);

    // Binary data (NUL bytes) is named too.
    write(d, "books/image.txt", b"PNG\0\0\0");
    let err = fails(&quill(&["prepare", "--corpus", "books", "--lossy"], d));
    assert!(err.contains("image.txt") && err.contains("NUL"), "{err}");

    fs::create_dir_all(d.join("empty")).unwrap();
    let err = fails(&quill(&["train", "--corpus", "empty"], d));
    assert!(err.contains("empty") && err.contains("no files"), "{err}");
    let err = fails(&quill(
        &["prepare", "--corpus", "books", "--glob", "*.tex"],
        d,
    ));
    assert!(err.contains("no file matches --glob *.tex"), "{err}");
}

fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--batch",
        "2",
        "--seq",
        "8",
        "--eval-every",
        "0",
        "--quiet",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn token_files_are_reused_until_a_source_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    library(d);
    let tokens = d.join("checkpoints/books.tokens");
    ok(&quill(&["prepare", "--corpus", "books", "--quiet"], d));
    let first = fs::read(&tokens).unwrap();

    let err = ok(&quill(&["prepare", "--corpus", "books", "--quiet"], d));
    assert!(
        err.contains("sources unchanged") && err.contains("up to date"),
        "{err}"
    );
    // `train` with the same corpus and --out finds it, and reads it memory-mapped.
    let err = ok(&quill(
        &train_args(&["--corpus", "books", "--max-steps", "3"]),
        d,
    ));
    assert!(err.contains("using the prepared tokens"), "{err}");
    // Other options make another file.
    let err = ok(&quill(
        &[
            "prepare",
            "--corpus",
            "books",
            "--val-fraction",
            "0.2",
            "--quiet",
        ],
        d,
    ));
    assert!(
        err.contains("validation fraction 0.2 was asked for"),
        "{err}"
    );
    ok(&quill(&["prepare", "--corpus", "books", "--quiet"], d));
    assert_eq!(
        fs::read(&tokens).unwrap(),
        first,
        "same options, same bytes"
    );

    // A changed source (size and time), then a new one.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(d.join("books/a-romeo.txt"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"ROMEO:\nOne more line.\n").unwrap();
    drop(f);
    let err = ok(&quill(&["prepare", "--corpus", "books", "--quiet"], d));
    assert!(err.contains("a-romeo.txt changed"), "{err}");
    assert_ne!(fs::read(&tokens).unwrap(), first);
    write(
        d,
        "books/more/d-othello.txt",
        b"OTHELLO:\nPut out the light.\n",
    );
    let err = ok(&quill(
        &train_args(&["--corpus", "books", "--max-steps", "3"]),
        d,
    ));
    assert!(
        err.contains("d-othello.txt is new") && err.contains("preparing it again"),
        "{err}"
    );
    // Same size, new contents, modification time set back: judged by size and time, the file
    // counts as unchanged; --force rereads it.
    let (meta, _, _, _) = decoded(&tokens);
    let rec = meta
        .sources
        .iter()
        .find(|s| s.path.ends_with("d-othello.txt"))
        .unwrap();
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(rec.mtime_ns);
    write(
        d,
        "books/more/d-othello.txt",
        b"OTHELLO:\nPut out the LIGHT.\n",
    );
    fs::File::options()
        .write(true)
        .open(d.join("books/more/d-othello.txt"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    let err = ok(&quill(&["prepare", "--corpus", "books", "--quiet"], d));
    assert!(err.contains("up to date"), "{err}");
    ok(&quill(
        &["prepare", "--corpus", "books", "--force", "--quiet"],
        d,
    ));
    let (_, _, _, all) = decoded(&tokens);
    assert!(all.contains("LIGHT"));
}

#[test]
fn a_damaged_token_file_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    library(d);
    ok(&quill(&["prepare", "--corpus", "books", "--quiet"], d));
    let tokens = d.join("checkpoints/books.tokens");
    let good = fs::read(&tokens).unwrap();
    let offset = read_head(&tokens).unwrap().header.data_offset as usize;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 3].to_vec(), "truncated"),
        (good[..60].to_vec(), "truncated"),
        (
            {
                // Another valid id: only the checksum can tell.
                let mut b = good.clone();
                b[offset + 100] = if b[offset + 100] == 0 { 1 } else { 0 };
                b
            },
            "data checksum mismatch",
        ),
        (
            {
                let mut b = good.clone();
                b[200] ^= 0x20;
                b
            },
            "metadata checksum mismatch",
        ),
    ];
    for (bytes, needle) in cases {
        fs::write(&tokens, &bytes).unwrap();
        for args in [
            train_args(&["--corpus", "books", "--max-steps", "3"]),
            train_args(&["--tokens", "checkpoints/books.tokens", "--max-steps", "3"]),
        ] {
            let err = fails(&quill(&args, d));
            assert!(
                err.contains("books.tokens") && err.contains(needle),
                "{needle}: {err}"
            );
            assert!(!d.join("checkpoints/books-latest.safetensors").exists());
        }
    }
    fs::write(&tokens, &good).unwrap();
    ok(&quill(
        &train_args(&["--tokens", "checkpoints/books.tokens", "--max-steps", "3"]),
        d,
    ));
}

fn latest(d: &Path, out: &str, name: &str) -> PathBuf {
    d.join(out).join(format!("{name}-latest.safetensors"))
}

#[test]
fn training_resumes_on_a_prepared_corpus_and_on_its_token_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    library(d);
    let run = |out: &str, extra: &[&str]| {
        let mut a = train_args(&["--corpus", "books", "--out", out, "--max-steps", "12"]);
        a.extend_from_slice(extra);
        ok(&quill(&a, d))
    };
    // In memory, straight; prepared (token file written and mapped), in two runs.
    run("mem", &["--prepare", "never"]);
    run("file", &["--prepare", "always", "--steps-this-run", "5"]);
    assert!(d.join("file/books.tokens").is_file());
    assert!(!d.join("mem/books.tokens").exists());
    let ck = latest(d, "file", "books");
    let err = run("file", &["--resume", ck.to_str().unwrap()]);
    assert!(err.contains("using the prepared tokens"), "{err}");
    let load = |p: &Path| quill::train::checkpoint::load_resumable(p).unwrap();
    let (x, y) = (load(&latest(d, "mem", "books")), load(&ck));
    assert_eq!(x.meta.progress.step, 12);
    assert_eq!(
        x.loaded.model.params, y.loaded.model.params,
        "weights differ"
    );
    assert_eq!(x.adam.m, y.adam.m);
    assert_eq!(x.state, y.state);
    assert_eq!(
        x.meta.base.corpus.fingerprint,
        y.meta.base.corpus.fingerprint
    );

    // The token file alone (sources gone) trains and resumes.
    fs::rename(d.join("books"), d.join("gone")).unwrap();
    ok(&quill(
        &train_args(&[
            "--tokens",
            "file/books.tokens",
            "--out",
            "t",
            "--max-steps",
            "4",
        ]),
        d,
    ));
    let ck = latest(d, "t", "books");
    let err = ok(&quill(
        &train_args(&[
            "--tokens",
            "file/books.tokens",
            "--out",
            "t",
            "--resume",
            ck.to_str().unwrap(),
            "--max-steps",
            "8",
        ]),
        d,
    ));
    assert!(err.contains("resuming"), "{err}");
    // A checkpoint of another corpus is refused.
    write(
        d,
        "other.txt",
        "Something else entirely.\n".repeat(40).as_bytes(),
    );
    let err = fails(&quill(
        &train_args(&["--corpus", "other.txt", "--resume", ck.to_str().unwrap()]),
        d,
    ));
    assert!(err.contains("different corpus"), "{err}");
}
