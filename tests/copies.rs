//! Copy detection end to end through the binary: `quill sample --check-copies` (stdout report,
//! manifest fields), `--max-copy` regeneration (bounded tries, recorded, reproducible), the
//! cached index beside the checkpoint (reused, rebuilt when damaged), a changed or missing
//! corpus, `--corpus` pointing elsewhere, and the CLI's errors.

mod common;
use common::{quill, tiny_model};

use std::fs;
use std::path::Path;
use std::process::Output;

use quill::generate::output::ManifestRecord;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "quill failed: {}", stderr(o));
}

fn fails(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "quill should have failed: {e}");
    assert!(e.contains(needle), "{needle:?} not in {e:?}");
    assert!(!e.contains("panicked"), "{e}");
}

fn manifest(path: &Path) -> Vec<ManifestRecord> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The longest span of `text` found in `corpus`, by brute force (characters).
fn brute_longest(corpus: &str, text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut best = 0;
    for i in 0..chars.len() {
        let mut j = i + best + 1;
        while j <= chars.len() && corpus.contains(&chars[i..j].iter().collect::<String>()) {
            best = j - i;
            j += 1;
        }
    }
    best
}

#[test]
fn check_copies_reports_on_stdout_runs_and_in_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ck = tiny_model(d, 40, 1e-2);
    let ck_s = ck.to_str().unwrap();
    let corpus = fs::read_to_string(d.join("corpus.txt")).unwrap();
    let args = ["sample", "-c", ck_s, "--seed", "5", "-l", "80", "-t", "0.6"];

    // To stdout: the text, then the report on stderr; the first run builds and caches the
    // index, the second reuses it.
    let o = quill(
        &[&args[..], &["--check-copies", "--prime", "RO"]].concat(),
        d,
    );
    ok(&o);
    let e = stderr(&o);
    assert!(e.contains("corpus index built"), "{e}");
    assert!(e.contains("longest span copied from the corpus"), "{e}");
    assert!(
        e.contains("12-character n-grams occur in the corpus"),
        "{e}"
    );
    let cache = d.join("tiny-latest.safetensors.copies");
    assert!(cache.is_file(), "no cache at {}", cache.display());
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    let generated = text.strip_prefix("RO").unwrap().strip_suffix('\n').unwrap();
    let longest = brute_longest(&corpus, generated);
    assert!(
        e.contains(&format!(
            "longest span copied from the corpus: {longest} characters"
        )),
        "brute force says {longest}: {e}"
    );
    let o2 = quill(
        &[&args[..], &["--check-copies", "--prime", "RO"]].concat(),
        d,
    );
    ok(&o2);
    assert!(stderr(&o2).contains("index loaded from"), "{}", stderr(&o2));
    assert_eq!(o2.stdout, o.stdout);

    // Batch: the manifest has the fields, and sample 1 is the stdout text.
    let out = d.join("out.jsonl");
    let o = quill(
        &[
            &args[..],
            &["--check-copies", "--prime", "RO", "-n", "6"],
            &["--out", out.to_str().unwrap(), "--format", "jsonl"],
        ]
        .concat(),
        d,
    );
    ok(&o);
    let m = manifest(&out);
    assert_eq!(m.len(), 6);
    assert_eq!(format!("{}\n", m[0].text.as_deref().unwrap()), text);
    for r in &m {
        let c = r.copies.as_ref().expect("copy fields");
        let generated = r.text.as_deref().unwrap().strip_prefix("RO").unwrap();
        assert_eq!(c.longest_copy, brute_longest(&corpus, generated), "{r:?}");
        let n = generated.chars().count();
        let f = c.copied_fraction.unwrap();
        assert!((0.0..=1.0).contains(&f));
        let chars: Vec<char> = generated.chars().collect();
        let found = (0..n - 11)
            .filter(|&i| corpus.contains(&chars[i..i + 12].iter().collect::<String>()))
            .count();
        assert!((f - found as f64 / (n - 11) as f64).abs() < 1e-12);
        if c.longest_copy > 0 {
            assert!(c
                .longest_copy_file
                .as_deref()
                .unwrap()
                .ends_with("corpus.txt"));
            assert!(c.longest_copy_line.unwrap() >= 1);
        }
        assert_eq!((c.tries, c.max_copy_exceeded), (None, None));
    }
}

#[test]
fn max_copy_regenerates_with_bounded_recorded_reproducible_tries() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ck = tiny_model(d, 40, 1e-2);
    let ck_s = ck.to_str().unwrap();
    let base = [
        "sample", "-c", ck_s, "--seed", "2", "-l", "60", "-n", "16", "-t", "0.7", "--format",
        "jsonl",
    ];
    let run = |extra: &[&str], name: &str| -> Vec<ManifestRecord> {
        let out = d.join(name);
        let o = quill(
            &[&base[..], extra, &["--out", out.to_str().unwrap()]].concat(),
            d,
        );
        ok(&o);
        manifest(&out)
    };
    // First tries only.
    let first = run(&["--check-copies"], "first.jsonl");
    let longest: Vec<usize> = first
        .iter()
        .map(|r| r.copies.as_ref().unwrap().longest_copy)
        .collect();
    let limit = *longest.iter().min().unwrap();
    assert!(
        longest.iter().any(|&l| l > limit),
        "every sample copies {limit}: no sample to regenerate"
    );
    let limit_s = limit.to_string();
    let checked = run(
        &["--max-copy", &limit_s, "--max-tries", "4"],
        "checked.jsonl",
    );
    let mut regenerated = 0;
    for (a, b) in first.iter().zip(&checked) {
        let c = b.copies.as_ref().unwrap();
        let tries = c.tries.unwrap();
        assert!((1..=4).contains(&tries));
        if a.copies.as_ref().unwrap().longest_copy <= limit {
            // Kept at the first try: the very same text.
            assert_eq!((tries, &a.text), (1, &b.text), "sample {}", b.id);
            assert_eq!(c.max_copy_exceeded, Some(false));
        } else {
            regenerated += 1;
            assert!(tries > 1, "sample {} was over the limit", b.id);
            assert_ne!(a.text, b.text);
        }
        // Kept under the limit, or the tries ran out.
        if c.max_copy_exceeded == Some(true) {
            assert_eq!(tries, 4);
            assert!(c.longest_copy > limit);
        } else {
            assert!(c.longest_copy <= limit, "{b:?}");
        }
    }
    assert!(regenerated > 0);
    // Reproducible: the same run gives the same samples, tries included.
    let again = run(&["--max-copy", &limit_s, "--max-tries", "4"], "again.jsonl");
    assert_eq!(again, checked);
    // A limit nothing meets: every sample uses every try and says so.
    let none = run(&["--max-copy", "0", "--max-tries", "3"], "none.jsonl");
    for r in &none {
        let c = r.copies.as_ref().unwrap();
        assert_eq!(
            (c.tries, c.max_copy_exceeded),
            (Some(3), Some(true)),
            "{r:?}"
        );
    }
    // To stdout, --max-copy prints sample 1 of the batch run with the same limit.
    let o = quill(
        &[
            "sample",
            "-c",
            ck_s,
            "--seed",
            "2",
            "-l",
            "60",
            "-t",
            "0.7",
            "--max-copy",
            &limit_s,
            "--max-tries",
            "4",
        ],
        d,
    );
    ok(&o);
    assert_eq!(
        String::from_utf8(o.stdout.clone()).unwrap(),
        format!("{}\n", checked[0].text.as_deref().unwrap())
    );
    let e = stderr(&o);
    assert!(e.contains("kept") || e.contains("still more than"), "{e}");
}

#[test]
fn cache_and_corpus_problems_are_handled_with_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ck = tiny_model(d, 40, 1e-2);
    let ck_s = ck.to_str().unwrap();
    let args = ["sample", "-c", ck_s, "-l", "20", "--check-copies"];
    ok(&quill(&args, d));
    let cache = d.join("tiny-latest.safetensors.copies");
    let good = fs::read(&cache).unwrap();

    // A damaged cache is rebuilt, with a note; the rebuilt file is the same.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&cache, &bad).unwrap();
    let o = quill(&args, d);
    ok(&o);
    assert!(stderr(&o).contains("building it again"), "{}", stderr(&o));
    assert_eq!(fs::read(&cache).unwrap(), good);
    fs::write(&cache, b"QUILLCPY\x01\x00\x00\x00\xff\xff\xff\xff").unwrap();
    let o = quill(&args, d);
    ok(&o);
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));

    // A changed corpus is refused with both fingerprints named; --corpus can point at the
    // original text elsewhere.
    let original = fs::read_to_string(d.join("corpus.txt")).unwrap();
    fs::create_dir_all(d.join("moved")).unwrap();
    fs::write(d.join("moved/c.txt"), &original).unwrap();
    fs::write(d.join("corpus.txt"), "changed\n").unwrap();
    fails(&quill(&args, d), "has changed since");
    let o = quill(&[&args[..], &["--corpus", "moved/c.txt"]].concat(), d);
    ok(&o);
    assert!(stderr(&o).contains("index loaded from"), "{}", stderr(&o));
    // A folder holding just that file is the same corpus too.
    ok(&quill(&[&args[..], &["--corpus", "moved"]].concat(), d));
    // A missing corpus.
    fs::remove_file(d.join("corpus.txt")).unwrap();
    fails(&quill(&args, d), "cannot read the training corpus");
    fails(
        &quill(&[&args[..], &["--corpus", "nowhere.txt"]].concat(), d),
        "nowhere.txt",
    );
    // A cache that cannot be written (a directory in its place) is a warning, not an error.
    fs::remove_file(&cache).unwrap();
    fs::create_dir(&cache).unwrap();
    let o = quill(&[&args[..], &["--corpus", "moved/c.txt"]].concat(), d);
    ok(&o);
    let e = stderr(&o);
    assert!(e.contains("is not a regular file"), "{e}");
    assert!(e.contains("cannot cache the index"), "{e}");
}

#[test]
fn copy_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ck = tiny_model(d, 40, 1e-2);
    let ck_s = ck.to_str().unwrap();
    fails(
        &quill(&["sample", "-c", ck_s, "--corpus", "x.txt"], d),
        "--check-copies",
    );
    fails(
        &quill(&["sample", "-c", ck_s, "--max-tries", "3"], d),
        "--max-copy",
    );
    fails(
        &quill(
            &["sample", "-c", ck_s, "--max-copy", "5", "--max-tries", "0"],
            d,
        ),
        "max-tries",
    );
    fails(
        &quill(&["sample", "-c", ck_s, "--max-copy", "-3"], d),
        "--max-copy",
    );
}
