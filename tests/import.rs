//! `quill import` end to end, without PyTorch: the tests write a word_language_model-style
//! safetensors file (`encoder.weight`, `rnn.*_l{k}`, `decoder.*`) and its vocabulary, import
//! it, and check `quill eval` against a loss computed here straight from the source tensors
//! with PyTorch's LSTM equations (two biases, gates i, f, g, o) in f64; then the errors a bad
//! file gets.

mod common;
use common::{quill, text};

use std::path::{Path, PathBuf};
use std::process::Output;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

const V: usize = 6;
const E: usize = 3;
const H: usize = 4;
const VOCAB: &str = "<unk>\nthe\ncat\nsat\n.\n<eos>\n";
/// Encodes (quill's word splitter, `<eol>` at each line end) to the source ids below.
const TEXT: &str = "the cat sat .\nthe cat\nsat . the cat sat\n";
const IDS: &[usize] = &[1, 2, 3, 4, 5, 1, 2, 5, 3, 4, 1, 2, 3, 5];

/// Deterministic values in (-0.5, 0.5).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut k = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            k = k.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (k >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// A source model: name → (shape, f32 values).
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn word_lm(layers: usize, tied: bool) -> Tensors {
    let mut t: Tensors = vec![("encoder.weight".into(), vec![V, E], values(V * E, 1))];
    for k in 0..layers {
        let d = if k == 0 { E } else { H };
        let s = 10 * (k as u32 + 1);
        t.push((
            format!("rnn.weight_ih_l{k}"),
            vec![4 * H, d],
            values(4 * H * d, s),
        ));
        t.push((
            format!("rnn.weight_hh_l{k}"),
            vec![4 * H, H],
            values(4 * H * H, s + 1),
        ));
        t.push((
            format!("rnn.bias_ih_l{k}"),
            vec![4 * H],
            values(4 * H, s + 2),
        ));
        t.push((
            format!("rnn.bias_hh_l{k}"),
            vec![4 * H],
            values(4 * H, s + 3),
        ));
    }
    if !tied {
        t.push(("decoder.weight".into(), vec![V, H], values(V * H, 100)));
    }
    t.push(("decoder.bias".into(), vec![V], values(V, 101)));
    t
}

/// Writes `tensors` as a safetensors file in `dtype` (F32, F16 or BF16), as PyTorch's
/// `safetensors.torch.save_file` would.
fn write_st(path: &Path, tensors: &Tensors, dtype: Dtype) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let b = match dtype {
                Dtype::F32 => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::F16 => d
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => d
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
                other => panic!("{other}"),
            };
            (n.clone(), s.clone(), b)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Rounds values to what `dtype` stores.
fn rounded(tensors: &Tensors, dtype: Dtype) -> Tensors {
    tensors
        .iter()
        .map(|(n, s, d)| {
            let r = d
                .iter()
                .map(|&v| match dtype {
                    Dtype::F16 => half::f16::from_f32(v).to_f32(),
                    Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
                    _ => v,
                })
                .collect();
            (n.clone(), s.clone(), r)
        })
        .collect()
}

/// Mean cross-entropy of `ids` (one stream, zero state) under PyTorch's LSTM equations, in
/// f64, straight from the source tensors (names stripped of `prefix`).
fn reference_loss(t: &Tensors, prefix: &str, layers: usize, ids: &[usize]) -> f64 {
    let get = |n: &str| -> &Vec<f32> {
        &t.iter()
            .find(|(name, _, _)| name == &format!("{prefix}{n}"))
            .unwrap_or_else(|| panic!("{n}"))
            .2
    };
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let mut h = vec![vec![0.0f64; H]; layers];
    let mut c = vec![vec![0.0f64; H]; layers];
    let emb = get("encoder.weight");
    let e = emb.len() / V;
    let has_decoder = t.iter().any(|(n, _, _)| n.ends_with("decoder.weight"));
    let dec = if has_decoder {
        get("decoder.weight")
    } else {
        emb
    };
    let dec_b = get("decoder.bias");
    let mut total = 0.0;
    for w in ids.windows(2) {
        let mut x: Vec<f64> = emb[w[0] * e..(w[0] + 1) * e]
            .iter()
            .map(|&v| v as f64)
            .collect();
        for k in 0..layers {
            let d = x.len();
            let (wih, whh) = (
                get(&format!("rnn.weight_ih_l{k}")),
                get(&format!("rnn.weight_hh_l{k}")),
            );
            let (bih, bhh) = (
                get(&format!("rnn.bias_ih_l{k}")),
                get(&format!("rnn.bias_hh_l{k}")),
            );
            let a: Vec<f64> = (0..4 * H)
                .map(|r| {
                    let mut s = bih[r] as f64 + bhh[r] as f64;
                    s += (0..d).map(|j| wih[r * d + j] as f64 * x[j]).sum::<f64>();
                    s += (0..H).map(|j| whh[r * H + j] as f64 * h[k][j]).sum::<f64>();
                    s
                })
                .collect();
            for j in 0..H {
                let (i, f, g, o) = (
                    sig(a[j]),
                    sig(a[H + j]),
                    a[2 * H + j].tanh(),
                    sig(a[3 * H + j]),
                );
                c[k][j] = f * c[k][j] + i * g;
                h[k][j] = o * c[k][j].tanh();
            }
            x = h[k].clone();
        }
        let logits: Vec<f64> = (0..V)
            .map(|v| dec_b[v] as f64 + (0..H).map(|j| dec[v * H + j] as f64 * x[j]).sum::<f64>())
            .collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        total += lse - logits[w[1]];
    }
    total / (ids.len() - 1) as f64
}

struct Case {
    _dir: tempfile::TempDir,
    weights: PathBuf,
    vocab: PathBuf,
    out: PathBuf,
    corpus: PathBuf,
}

impl Case {
    /// Where the case's files are (the directory quill runs in).
    fn dir(&self) -> &Path {
        self._dir.path()
    }
}

fn case(tensors: &Tensors, dtype: Dtype, vocab: &str) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Case {
        weights: d.join("model.safetensors"),
        vocab: d.join("vocab.txt"),
        out: d.join("imported.safetensors"),
        corpus: d.join("text.txt"),
        _dir: dir,
    };
    write_st(&c.weights, tensors, dtype);
    std::fs::write(&c.vocab, vocab).unwrap();
    std::fs::write(&c.corpus, TEXT).unwrap();
    c
}

fn run_import(c: &Case, extra: &[&str]) -> Output {
    let mut args = vec![
        "import",
        "--weights",
        c.weights.to_str().unwrap(),
        "--vocab",
        c.vocab.to_str().unwrap(),
        "--out",
        c.out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    quill(&args, c.dir())
}

fn eval_loss(c: &Case) -> f64 {
    let o = quill(
        &[
            "eval",
            "-c",
            c.out.to_str().unwrap(),
            "--file",
            c.corpus.to_str().unwrap(),
            "--batch",
            "1",
            "--seq",
            "100",
            "--json",
        ],
        c.dir(),
    );
    assert!(o.status.success(), "eval: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"], IDS.len() - 1);
    v["loss_per_token"].as_f64().unwrap()
}

#[test]
fn word_language_model_imports_and_evaluates_as_pytorch_computes() {
    let src = word_lm(2, false);
    let c = case(&src, Dtype::F32, VOCAB);
    let o = run_import(&c, &[]);
    assert!(o.status.success(), "import: {}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("encoder.weight") && err.contains("-> embed.weight"),
        "{err}"
    );
    assert!(
        err.contains("\"<eos>\" (line end) is quill's <eol>"),
        "{err}"
    );
    assert!(err.contains("added <eos>"), "{err}");
    assert!(!err.contains("never produced"), "{err}");

    // The tokenizer: the source's ids, `<eos>` renamed `<eol>`, quill's `<eos>` appended.
    let lm = quill::checkpoint::load_model(&c.out).unwrap();
    assert_eq!(lm.tokenizer.vocab_size(), V + 1);
    assert_eq!(
        lm.tokenizer.encode(TEXT).unwrap(),
        IDS.iter().map(|&i| i as u32).collect::<Vec<_>>()
    );
    assert_eq!(lm.tokenizer.eos_id(), Some(V as u32));
    assert_eq!(lm.tokenizer.decode(&[1, 2, 3, 4, 5]), "the cat sat.\n");
    // The weights: PyTorch layouts kept; the two biases summed; the added row silent.
    let cfg = &lm.model.config;
    assert_eq!(
        (
            cfg.vocab,
            cfg.embed,
            cfg.hidden,
            cfg.layers,
            cfg.tie_weights
        ),
        (V + 1, E, H, 2, false)
    );
    let named = lm.model.params.to_named("");
    let find = |n: &str| &named.iter().find(|(name, _, _)| name == n).unwrap().2;
    assert_eq!(&find("rnn.weight_ih_l1")[..], &src[5].2[..]);
    let b: Vec<f32> = src[3].2.iter().zip(&src[4].2).map(|(a, b)| a + b).collect();
    assert_eq!(find("rnn.bias_ih_l0"), &b);
    assert_eq!(&find("embed.weight")[..V * E], &src[0].2[..]);
    assert!(find("embed.weight")[V * E..].iter().all(|&x| x == 0.0));
    assert_eq!(
        find("out.bias")[V],
        quill::checkpoint::import::ADDED_TOKEN_BIAS
    );

    let want = reference_loss(&src, "", 2, IDS);
    let got = eval_loss(&c);
    assert!(
        (got - want).abs() < 1e-5,
        "quill eval {got}, PyTorch equations {want}"
    );

    // It samples, and `info` reads it.
    let o = quill(
        &[
            "sample",
            "-c",
            c.out.to_str().unwrap(),
            "--prime",
            "the",
            "--length",
            "12",
            "--seed",
            "3",
        ],
        c.dir(),
    );
    assert!(o.status.success(), "sample: {}", text(&o.stderr));
    assert!(!text(&o.stdout).trim().is_empty());
    let o = quill(&["info", c.out.to_str().unwrap()], c.dir());
    assert!(o.status.success(), "info: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("Word, vocabulary 7"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn half_precision_tied_model_under_a_ddp_prefix_imports() {
    // A tied model (no decoder.weight) saved from DistributedDataParallel (`module.` prefix),
    // in f16 and in bf16; a vocabulary with `<eol>` already present and no `<unk>`.
    let src: Tensors = word_lm(1, true)
        .into_iter()
        .map(|(n, s, d)| (format!("module.{n}"), s, d))
        .collect();
    let src: Tensors = src
        .into_iter()
        .map(|(n, s, d)| {
            // Tied: E must equal H; widen the embedding to H columns.
            if n == "module.encoder.weight" {
                (n, vec![V, H], values(V * H, 7))
            } else if n == "module.rnn.weight_ih_l0" {
                (n, vec![4 * H, H], values(4 * H * H, 8))
            } else {
                (n, s, d)
            }
        })
        .collect();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let vocab = "the\ncat\nsat\n.\n<eol>\n<eos>\n";
        let c = case(&src, dtype, vocab);
        let o = run_import(&c, &["--eol-token", "<eol>"]);
        assert!(o.status.success(), "import {dtype}: {}", text(&o.stderr));
        let lm = quill::checkpoint::load_model(&c.out).unwrap();
        assert!(lm.model.config.tie_weights);
        assert_eq!(lm.tokenizer.vocab_size(), V + 1); // <unk> appended
                                                      // Source ids of TEXT under this vocabulary: the=0, cat=1, sat=2, .=3, <eol>=4.
        let ids: Vec<usize> = IDS
            .iter()
            .map(|&i| if i == 5 { 4 } else { i - 1 })
            .collect();
        let want = reference_loss(&rounded(&src, dtype), "module.", 1, &ids);
        let got = eval_loss(&c);
        assert!(
            (got - want).abs() < 1e-5,
            "{dtype}: quill eval {got}, PyTorch equations {want}"
        );
    }
}

#[test]
fn entries_the_word_splitter_cuts_are_named() {
    let c = case(
        &word_lm(1, false),
        Dtype::F32,
        "<unk>\nthe\n's\nU.S.\n.\n<eos>\n",
    );
    let o = run_import(&c, &[]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: 2 vocabulary entries are never produced") && err.contains("'s U.S."),
        "{err}"
    );
}

/// The message of a failed import, checking that it failed cleanly and wrote nothing.
fn import_error(tensors: &Tensors, vocab: &str, extra: &[&str]) -> String {
    let c = case(tensors, Dtype::F32, vocab);
    let o = run_import(&c, extra);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!c.out.exists());
    err
}

#[test]
fn bad_models_and_vocabularies_get_errors_naming_the_tensor_or_line() {
    let good = word_lm(2, false);
    let without =
        |name: &str| -> Tensors { good.iter().filter(|t| t.0 != name).cloned().collect() };
    let e = import_error(&without("decoder.bias"), VOCAB, &[]);
    assert!(e.contains("missing tensor decoder.bias"), "{e}");

    let mut bad = good.clone();
    bad[5] = (
        "rnn.weight_ih_l1".into(),
        vec![4 * H, H + 1],
        values(4 * H * (H + 1), 3),
    );
    let e = import_error(&bad, VOCAB, &[]);
    assert!(
        e.contains("\"rnn.weight_ih_l1\"")
            && e.contains("[16, 5]")
            && e.contains("expected [16, 4]"),
        "{e}"
    );

    let e = import_error(&good, "<unk>\nthe\ncat\nsat\n<eos>\n", &[]);
    assert!(e.contains("has 5 entries") && e.contains("6 rows"), "{e}");

    let e = import_error(&good, "<unk>\nthe\ncat\nthe\n.\n<eos>\n", &[]);
    assert!(e.contains("line 4") && e.contains("repeats line 2"), "{e}");

    let e = import_error(&good, "<unk>\nthe\ncat\nsat here\n.\n<eos>\n", &[]);
    assert!(e.contains("line 4") && e.contains("whitespace"), "{e}");

    let e = import_error(&good, VOCAB, &["--eol-token", "<nl>"]);
    assert!(e.contains("\"<nl>\""), "{e}");

    // A GRU (3H rows).
    let gru: Tensors = good
        .iter()
        .map(|(n, s, d)| {
            if n.starts_with("rnn.") {
                let mut s = s.clone();
                s[0] = 3 * H;
                let len = s.iter().product();
                (n.clone(), s, d[..len].to_vec())
            } else {
                (n.clone(), s.clone(), d.clone())
            }
        })
        .collect();
    let e = import_error(&gru, VOCAB, &[]);
    assert!(e.contains("GRU"), "{e}");

    let mut bi = good.clone();
    bi.push((
        "rnn.weight_ih_l0_reverse".into(),
        vec![4 * H, E],
        values(4 * H * E, 9),
    ));
    let e = import_error(&bi, VOCAB, &[]);
    assert!(e.contains("bidirectional"), "{e}");

    let mut tr = good.clone();
    tr.push((
        "transformer.layers.0.linear1.weight".into(),
        vec![2, 2],
        values(4, 9),
    ));
    let e = import_error(&tr, VOCAB, &[]);
    assert!(
        e.contains("transformer.layers.0.linear1.weight") && e.contains("accepted names"),
        "{e}"
    );

    let mut nan = good.clone();
    nan[1].2[3] = f32::NAN;
    let e = import_error(&nan, VOCAB, &[]);
    assert!(
        e.contains("rnn.weight_ih_l0") && e.contains("non-finite"),
        "{e}"
    );

    // No decoder.weight and E != H: nothing to tie.
    let e = import_error(&without("decoder.weight"), VOCAB, &[]);
    assert!(
        e.contains("decoder.weight") && e.contains("embed = hidden"),
        "{e}"
    );
}

#[test]
fn damaged_and_hostile_files_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good.safetensors");
    write_st(&good, &word_lm(1, false), Dtype::F32);
    let vocab = d.join("vocab.txt");
    std::fs::write(&vocab, VOCAB).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let out = d.join("out.safetensors");
    let try_file = |name: &str, b: &[u8]| -> String {
        let p = d.join(name);
        std::fs::write(&p, b).unwrap();
        let o = quill(
            &[
                "import",
                "--weights",
                p.to_str().unwrap(),
                "--vocab",
                vocab.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            d,
        );
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(name) && !err.contains("panicked"),
            "{name}: {err}"
        );
        assert!(!out.exists());
        err
    };
    for cut in [0, 5, 8, 40, bytes.len() / 2, bytes.len() - 1] {
        try_file("cut.safetensors", &bytes[..cut]);
    }
    // A header declaring an enormous tensor over 16 bytes of data.
    let header = r#"{"encoder.weight":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,16]}}"#;
    let mut huge = (header.len() as u64).to_le_bytes().to_vec();
    huge.extend_from_slice(header.as_bytes());
    huge.extend_from_slice(&[0u8; 16]);
    let e = try_file("huge.safetensors", &huge);
    assert!(e.contains("not a safetensors file"), "{e}");
    // An integer tensor.
    let header = r#"{"encoder.weight":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#;
    let mut int = (header.len() as u64).to_le_bytes().to_vec();
    int.extend_from_slice(header.as_bytes());
    int.extend_from_slice(&[0u8; 16]);
    let e = try_file("int.safetensors", &int);
    assert!(e.contains("dtype I64"), "{e}");
}
