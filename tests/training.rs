//! Training behaviour: over-fitting a tiny string, checkpoint round trip, exact resume.

use std::path::{Path, PathBuf};

use sha2::Digest;

use quill::nn::model::ModelConfig;
use quill::tokenizer::{Tokenizer, TokenizerKind, TokenizerOptions};
use quill::train::checkpoint;
use quill::train::corpus::Corpus;
use quill::train::prepare::{prepare, PrepareEvent, PrepareOptions, TokenizerPlan};
use quill::train::{Control, Event, TrainConfig, Trainer};

fn corpus(text: &str) -> Corpus {
    Corpus {
        path: PathBuf::from("inline.txt"),
        text: text.to_string(),
        fingerprint: quill::train::corpus::hex(&sha2::Sha256::digest(text.as_bytes())),
    }
}

fn char_tok(text: &str) -> Tokenizer {
    let opts = TokenizerOptions {
        vocab_size: 10_000,
        min_frequency: 1,
    };
    Tokenizer::train(TokenizerKind::Char, text, &opts).unwrap()
}

fn model_cfg(hidden: usize, dropout: f32) -> ModelConfig {
    ModelConfig {
        vocab: 0,
        embed: 16,
        hidden,
        layers: 2,
        dropout,
        tie_weights: false,
    }
}

fn quiet(_: &Event) -> Control {
    Control::Continue
}

const TEXT200: &str = "The quick brown fox jumps over the lazy dog. \
Pack my box with five dozen liquor jugs! How vexingly quick daft zebras jump; \
sphinx of black quartz, judge my vow. Waltz, bad nymph, for quick jigs vex. \
Glib jocks quiz nymph to vex dwarf.";

#[test]
fn tiny_model_overfits_a_200_char_string() {
    assert!(TEXT200.len() >= 200);
    let c = corpus(TEXT200);
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        batch: 4,
        seq: 16,
        lr: 1e-2,
        warmup_steps: 10,
        val_fraction: 0.0,
        eval_every: 0,
        save_every: 0,
        max_steps: Some(400),
        out: dir.path().to_path_buf(),
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(&c, char_tok(TEXT200), model_cfg(64, 0.0), cfg).unwrap();
    let mut last = f64::NAN;
    let summary = tr
        .run(None, &mut |e| {
            if let Event::Step(s) = e {
                last = s.loss;
            }
            Control::Continue
        })
        .unwrap();
    assert_eq!(summary.steps, 400);
    assert!(last < 0.05, "final training loss {last}");
}

#[test]
fn a_new_run_starts_from_the_forget_bias_it_is_given() {
    let c = corpus(TEXT200);
    let dir = tempfile::tempdir().unwrap();
    let h = 8;
    let start = |forget_bias: f32| {
        let cfg = TrainConfig {
            forget_bias,
            batch: 2,
            seq: 8,
            out: dir.path().to_path_buf(),
            ..TrainConfig::default()
        };
        let tr = Trainer::new(&c, char_tok(TEXT200), model_cfg(h, 0.0), cfg).unwrap();
        tr.model.params
    };
    let (one, zero) = (start(TrainConfig::default().forget_bias), start(0.0));
    assert_eq!(TrainConfig::default().forget_bias, 1.0);
    for (a, b) in one.lstm.iter().zip(&zero.lstm) {
        // Gate order i, f, g, o: only the forget gate's H entries differ.
        assert!(a.b.iter().skip(h).take(h).all(|&v| v == 1.0));
        assert!(b.b.iter().all(|&v| v == 0.0));
        assert!(a
            .b
            .iter()
            .enumerate()
            .all(|(k, &v)| (h..2 * h).contains(&k) || v == 0.0));
        // The same seed draws the same weights.
        assert_eq!(a.wx, b.wx);
        assert_eq!(a.wh, b.wh);
    }
    let bad = TrainConfig {
        forget_bias: f32::NAN,
        batch: 2,
        seq: 8,
        ..TrainConfig::default()
    };
    let Err(e) = Trainer::new(&c, char_tok(TEXT200), model_cfg(h, 0.0), bad) else {
        panic!("a NaN forget bias is refused");
    };
    let e = e.to_string();
    assert!(e.contains("forget-bias"), "{e}");
}

/// The default config with every regulariser, the weight average and the sampled softmax on,
/// so that their masks, state and candidates are part of what must resume exactly.
fn regularised() -> TrainConfig {
    TrainConfig {
        dropout_input: 0.1,
        dropout_embed: 0.1,
        weight_drop: 0.2,
        ema: 0.9,
        sampled_softmax: 12,
        shift_windows: true,
        ..TrainConfig::default()
    }
}

/// The corpus of the exact-resume runs: 17 windows per epoch (B 3, T 8), so that 40 steps
/// cross two epoch boundaries and a resume at step 25 starts inside the second epoch, whose
/// windows are shifted.
fn resume_text() -> String {
    TEXT200.repeat(2)
}

#[test]
fn the_sampled_softmax_refuses_candidates_the_vocabulary_cannot_give() {
    let text = TEXT200.repeat(4);
    let tok = char_tok(&text);
    let v = tok.vocab_size();
    let dir = tempfile::tempdir().unwrap();
    for s in [2 * v, 2 * v + 5] {
        let cfg = TrainConfig {
            sampled_softmax: s,
            out: dir.path().to_path_buf(),
            ..TrainConfig::default()
        };
        let e = Trainer::new(&corpus(&text), tok.clone(), model_cfg(8, 0.0), cfg).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("sampled-softmax") && e.contains(&format!("for V = {v}")),
            "{e}"
        );
    }
    for s in [1, 1 << 21] {
        let cfg = TrainConfig {
            sampled_softmax: s,
            ..TrainConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("sampled-softmax") && e.contains("give 0 (off) or 2 to"),
            "{e}"
        );
    }
}

fn run_steps(dir: &Path, max_steps: u64, this_run: Option<u64>, resume: Option<&Path>) -> PathBuf {
    let text = resume_text();
    let c = corpus(&text);
    let cfg = TrainConfig {
        batch: 3,
        seq: 8,
        val_fraction: 0.1,
        eval_every: 5,
        save_every: 7,
        max_steps: Some(max_steps),
        out: dir.to_path_buf(),
        name: "t".into(),
        ..regularised()
    };
    let mut tr = match resume {
        Some(p) => Trainer::resume(&c, checkpoint::load_resumable(p).unwrap(), cfg).unwrap(),
        None => Trainer::new(&c, char_tok(&text), model_cfg(12, 0.2), cfg).unwrap(),
    };
    tr.run(this_run, &mut quiet).unwrap().latest
}

#[test]
fn resume_is_bit_for_bit_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // One run of 2N steps ...
    let straight = run_steps(a.path(), 40, None, None);
    // ... and 25 steps, a resume from the checkpoint (inside the second, shifted epoch), the
    // rest (dropout on, two epoch boundaries crossed).
    let half = run_steps(b.path(), 40, Some(25), None);
    assert_eq!(
        checkpoint::load_resumable(&half)
            .unwrap()
            .meta
            .progress
            .epoch,
        1
    );
    let resumed = run_steps(b.path(), 40, None, Some(&half));
    let x = checkpoint::load_resumable(&straight).unwrap();
    let y = checkpoint::load_resumable(&resumed).unwrap();
    assert_eq!(x.meta.progress.step, 40);
    assert_eq!(x.meta.progress.epoch, 2);
    assert_eq!(y.meta.progress.step, 40);
    assert_eq!(
        x.loaded.model.params, y.loaded.model.params,
        "weights differ"
    );
    assert_eq!(x.adam.m, y.adam.m);
    assert_eq!(x.adam.v, y.adam.v);
    assert_eq!(x.state, y.state);
    assert_eq!(x.meta.progress.rng, y.meta.progress.rng);
    assert_eq!(x.meta.progress.best_val, y.meta.progress.best_val);
    assert!(x.average.is_some(), "the weight average is kept");
    assert_eq!(x.average, y.average, "weight averages differ");
    assert_ne!(x.average.as_ref(), Some(&x.loaded.model.params));
}

#[test]
fn shifted_windows_change_only_the_epochs_after_the_first() {
    let text = resume_text();
    let c = corpus(&text);
    let dir = tempfile::tempdir().unwrap();
    let train = |shift_windows: bool, steps: u64| {
        let cfg = TrainConfig {
            batch: 3,
            seq: 8,
            eval_every: 0,
            save_every: 0,
            max_steps: Some(steps),
            shift_windows,
            out: dir.path().to_path_buf(),
            ..TrainConfig::default()
        };
        let mut tr = Trainer::new(&c, char_tok(&text), model_cfg(8, 0.0), cfg).unwrap();
        let windows = tr.windows_per_epoch() as u64;
        tr.run(None, &mut quiet).unwrap();
        (windows, tr.progress.epoch, tr.model.params.clone())
    };
    let (w, ..) = train(false, 1);
    // Through the first epoch both read the same windows ...
    let (_, epoch, fixed) = train(false, w);
    let (_, _, shifted) = train(true, w);
    assert_eq!(epoch, 1);
    assert_eq!(fixed, shifted);
    // ... and from the second on, the shifted run reads others.
    let (_, _, fixed) = train(false, w + 3);
    let (_, _, shifted) = train(true, w + 3);
    assert_ne!(fixed, shifted);
}

#[test]
fn the_weight_average_is_what_checkpoints_give_to_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let latest = run_steps(dir.path(), 12, None, None);
    let r = checkpoint::load_resumable(&latest).unwrap();
    let sampled = quill::checkpoint::load_model(&latest).unwrap();
    assert_eq!(Some(&sampled.model.params), r.average.as_ref());
    assert_ne!(sampled.model.params, r.loaded.model.params);
}

/// As `run_steps`, on the same text prepared into a token file (written on the first call,
/// reused and memory-mapped on the next).
fn run_steps_prepared(
    dir: &Path,
    max_steps: u64,
    this_run: Option<u64>,
    resume: Option<&Path>,
) -> PathBuf {
    let text = resume_text();
    let corpus = dir.join("corpus.txt");
    if !corpus.exists() {
        std::fs::write(&corpus, &text).unwrap();
    }
    let cfg = TrainConfig {
        batch: 3,
        seq: 8,
        val_fraction: 0.1,
        eval_every: 5,
        save_every: 7,
        max_steps: Some(max_steps),
        out: dir.to_path_buf(),
        name: "t".into(),
        ..regularised()
    };
    let r = resume.map(|p| checkpoint::load_resumable(p).unwrap());
    let opts = PrepareOptions {
        paths: vec![corpus],
        val_paths: Vec::new(),
        globs: Vec::new(),
        separator: None,
        skip_bad_files: false,
        lossy: false,
        val_fraction: cfg.val_fraction,
        tokenizer: match &r {
            Some(r) => TokenizerPlan::Use(r.loaded.tokenizer.clone()),
            None => TokenizerPlan::Train {
                kind: TokenizerKind::Char,
                options: TokenizerOptions::for_kind(TokenizerKind::Char),
                sample_bytes: 1 << 20,
            },
        },
        token_file: Some(dir.join("t.tokens")),
        write_threshold: 0,
        force: false,
        cancel: None,
    };
    let mut events = Vec::new();
    let p = prepare(&opts, &mut |e| events.push(e.clone())).unwrap();
    assert!(p.data.train.is_mapped());
    assert_eq!(
        events
            .iter()
            .any(|e| matches!(e, PrepareEvent::Reusing { .. })),
        resume.is_some(),
        "{events:?}"
    );
    let mut tr = match r {
        Some(r) => Trainer::resume_data(p.data, r, cfg).unwrap(),
        None => Trainer::from_data(p.data, p.tokenizer, model_cfg(12, 0.2), cfg).unwrap(),
    };
    assert!(tr.is_mapped());
    tr.run(this_run, &mut quiet).unwrap().latest
}

#[test]
fn resume_is_bit_for_bit_identical_on_a_prepared_memory_mapped_corpus() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    // In memory, straight; prepared and mapped, in two runs with a resume between.
    let in_memory = run_steps(a.path(), 40, None, None);
    let half = run_steps_prepared(b.path(), 40, Some(25), None);
    let resumed = run_steps_prepared(b.path(), 40, None, Some(&half));
    let straight = run_steps_prepared(c.path(), 40, None, None);
    let x = checkpoint::load_resumable(&in_memory).unwrap();
    for other in [&resumed, &straight] {
        let y = checkpoint::load_resumable(other).unwrap();
        assert_eq!(y.meta.progress.step, 40);
        assert_eq!(
            x.loaded.model.params, y.loaded.model.params,
            "weights differ"
        );
        assert_eq!(x.adam.m, y.adam.m);
        assert_eq!(x.adam.v, y.adam.v);
        assert_eq!(x.state, y.state);
        assert_eq!(x.meta.progress.rng, y.meta.progress.rng);
        assert_eq!(x.meta.progress.best_val, y.meta.progress.best_val);
        // The same corpus record: one file's fingerprint is its SHA-256, as before.
        assert_eq!(
            x.meta.base.corpus.fingerprint,
            y.meta.base.corpus.fingerprint
        );
        assert_eq!(
            x.meta.base.corpus.train_tokens,
            y.meta.base.corpus.train_tokens
        );
        assert_eq!(x.meta.base.corpus.val_tokens, y.meta.base.corpus.val_tokens);
    }
}

#[test]
fn checkpoint_round_trip_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let text = TEXT200.repeat(4);
    let c = corpus(&text);
    let cfg = TrainConfig {
        batch: 2,
        seq: 8,
        eval_every: 0,
        save_every: 0,
        max_steps: Some(3),
        out: dir.path().to_path_buf(),
        name: "rt".into(),
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(&c, char_tok(&text), model_cfg(8, 0.0), cfg).unwrap();
    tr.run(None, &mut quiet).unwrap();
    let path = dir.path().join("copy.safetensors");
    tr.save(&path).unwrap();
    let r = checkpoint::load_resumable(&path).unwrap();
    assert_eq!(r.loaded.model, tr.model);
    assert_eq!(r.adam, *tr.adam());
    assert_eq!(r.state, tr.state);
    assert_eq!(r.meta.progress, tr.progress);
    assert_eq!(r.loaded.tokenizer.to_json(), tr.tokenizer.to_json());
    assert_eq!(r.loaded.meta.model.vocab, tr.tokenizer.vocab_size());
}

#[test]
fn resume_refuses_a_different_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_steps(dir.path(), 6, None, None);
    let other = corpus(&"different text entirely\n".repeat(50));
    let cfg = TrainConfig {
        batch: 3,
        seq: 8,
        out: dir.path().to_path_buf(),
        ..TrainConfig::default()
    };
    let err = Trainer::resume(&other, checkpoint::load_resumable(&first).unwrap(), cfg)
        .expect_err("must refuse")
        .to_string();
    assert!(err.contains("different corpus"), "{err}");
}

#[test]
fn non_finite_losses_never_reach_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let text = TEXT200.repeat(4);
    let c = corpus(&text);
    let cfg = TrainConfig {
        batch: 2,
        seq: 8,
        eval_every: 0,
        save_every: 1,
        max_steps: Some(50),
        out: dir.path().to_path_buf(),
        name: "nan".into(),
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(&c, char_tok(&text), model_cfg(8, 0.0), cfg).unwrap();
    // Poison one weight: every step now has a non-finite loss.
    tr.model.params.out_b[0] = f32::NAN;
    let mut warnings = 0;
    let err = tr
        .run(None, &mut |e| {
            if let Event::Warning(w) = e {
                assert!(w.contains("non-finite"), "{w}");
                warnings += 1;
            }
            Control::Continue
        })
        .unwrap_err();
    assert!(err.to_string().contains("diverged"), "{err}");
    assert_eq!(
        warnings, 4,
        "four warnings, then the fifth failure stops training"
    );
    assert!(tr.progress.lr_scale < 0.1);
    // Nothing was written with NaN weights.
    assert!(!dir.path().join("nan-latest.safetensors").exists());
    assert!(tr.save(&dir.path().join("x.safetensors")).is_err());
}

#[test]
fn failed_saves_warn_and_training_continues() {
    let dir = tempfile::tempdir().unwrap();
    let text = TEXT200.repeat(4);
    let c = corpus(&text);
    let cfg = TrainConfig {
        batch: 2,
        seq: 8,
        eval_every: 0,
        save_every: 2,
        max_steps: Some(6),
        out: dir.path().to_path_buf(),
        name: "ro".into(),
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(&c, char_tok(&text), model_cfg(8, 0.0), cfg).unwrap();
    // A directory where the checkpoint file should go makes every periodic save fail
    // (permission bits do not stop root, which CI runs as).
    std::fs::create_dir(dir.path().join("ro-latest.safetensors")).unwrap();
    let mut save_warnings = 0;
    let res = tr.run(None, &mut |e| {
        if let Event::Warning(w) = e {
            if w.contains("could not write checkpoint") {
                save_warnings += 1;
            }
        }
        Control::Continue
    });
    assert_eq!(tr.progress.step, 6, "training went on");
    assert!(save_warnings >= 2);
    // The final save cannot succeed either: an error naming the file, state still in memory.
    let err = res.unwrap_err().to_string();
    assert!(err.contains("ro-latest"), "{err}");
    tr.config.out = dir.path().join("elsewhere");
    std::fs::create_dir_all(&tr.config.out).unwrap();
    tr.save(&tr.config.checkpoint_path("latest")).unwrap();
}

#[test]
fn time_spent_in_the_step_hook_is_not_training_time() {
    // A dashboard's pause blocks inside the step hook. The trainer runs on a hand-driven
    // clock: every reading advances it 0.1 s, and the hook at step 1 "pauses" for 10 s. With a
    // 0.6 s limit the pause must not end the run, and the reported elapsed time leaves it out.
    let c = corpus(TEXT200);
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        batch: 2,
        seq: 8,
        val_fraction: 0.0,
        eval_every: 0,
        save_every: 0,
        max_minutes: Some(0.01),
        out: dir.path().to_path_buf(),
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(&c, char_tok(TEXT200), model_cfg(8, 0.0), cfg).unwrap();
    let now = std::sync::Arc::new(std::sync::Mutex::new(0.0f64));
    let clock = std::sync::Arc::clone(&now);
    tr.set_clock(std::sync::Arc::new(move || {
        let mut t = clock.lock().unwrap();
        *t += 0.1;
        *t
    }));
    let mut elapsed = Vec::new();
    let summary = tr
        .run(None, &mut |e| {
            if let Event::Step(s) = e {
                if s.step == 1 {
                    *now.lock().unwrap() += 10.0;
                }
                elapsed.push(s.elapsed_secs);
            }
            Control::Continue
        })
        .unwrap();
    assert!(
        summary.steps > 1,
        "the pause ended the run after {} step(s)",
        summary.steps
    );
    // Training time grows by the clock's own ticks only, never by the 10 s.
    assert!(elapsed.windows(2).all(|w| w[1] - w[0] < 1.0), "{elapsed:?}");
    assert!(*elapsed.last().unwrap() < 1.0, "{elapsed:?}");
    assert!(
        *elapsed.last().unwrap() >= 0.6,
        "the limit is training time: {elapsed:?}"
    );
}
