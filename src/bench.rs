//! Throughput benchmark of training and generation on named configurations (`quill bench`).
//!
//! Everything runs on random tokens and freshly initialised weights, so no corpus or
//! checkpoint is needed and every run of a configuration does the same work:
//!
//! - training: full optimizer steps of the trainer ([`Stepper`]: zero gradients, forward,
//!   loss, backward, global-norm clipping at 5, Adam), `warmup` untimed steps, then `runs`
//!   timed runs of `steps` steps each; the median run gives ms/step and tokens/s (B·T tokens
//!   per step). Without regularisation by default (the PyTorch peer's work); with
//!   [`BenchOptions::regularise`], the regularisation and weight average of the recipe
//!   (`train::budget`) for that kind of model;
//! - generation, one stream: the [`Engine`] stepping one stream with the default sampling
//!   parameters (temperature 0.8), decoding its tokens; the median of `runs` runs of
//!   `gen_tokens` tokens;
//! - generation, [`BenchOptions::batch_streams`] streams at once: the same, tokens/s counted
//!   over all streams;
//! - peak resident set size of the process (`VmHWM`), reset before each configuration where
//!   the kernel allows it.
//!
//! Effective GFLOP/s counts only the matrix products, see [`train_flops_per_token`].

use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::generate::{Engine, Stream, StreamSpec};
use crate::nn::model::{LstmState, Model, ModelConfig};
use crate::tokenizer::{Tokenizer, TokenizerKind, TokenizerOptions};
use crate::train::budget::{self, Limit};
use crate::train::config::TrainConfig;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::step::Stepper;
use crate::train::tokens::Tokens;

/// A named benchmark configuration: a model and the training window shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchConfig {
    /// Short name (`p1`, `p2`, `p3`).
    pub name: &'static str,
    /// One-line description of the model.
    pub description: &'static str,
    /// The model; dropout is 0 so the work is the same as the PyTorch peer's.
    pub model: ModelConfig,
    /// Streams per training step, B.
    pub batch: usize,
    /// Window length, T.
    pub window: usize,
}

/// Names accepted by [`BenchConfig::named`], in order.
pub const CONFIG_NAMES: [&str; 3] = ["p1", "p2", "p3"];

impl BenchConfig {
    /// The configuration called `name` (`p1`, `p2` or `p3`):
    ///
    /// | name | model | B | T | V |
    /// |------|-------|---|---|---|
    /// | p1 | char, 2 layers × 512 (embed 512) | 64 | 64 | 65 |
    /// | p2 | char, 1 layer × 128 (embed 128) | 32 | 64 | 65 |
    /// | p3 | word, 2 layers × 200 (embed 200) | 20 | 20 | 10000 |
    pub fn named(name: &str) -> Result<Self> {
        let model = |vocab, width, layers| ModelConfig {
            vocab,
            embed: width,
            hidden: width,
            layers,
            dropout: 0.0,
            tie_weights: false,
        };
        Ok(match name {
            "p1" => BenchConfig {
                name: "p1",
                description: "char, 2 layers x 512",
                model: model(65, 512, 2),
                batch: 64,
                window: 64,
            },
            "p2" => BenchConfig {
                name: "p2",
                description: "char, 1 layer x 128",
                model: model(65, 128, 1),
                batch: 32,
                window: 64,
            },
            "p3" => BenchConfig {
                name: "p3",
                description: "word, 2 layers x 200",
                model: model(10_000, 200, 2),
                batch: 20,
                window: 20,
            },
            other => {
                return Err(Error::config(
                    "config",
                    format!("unknown benchmark configuration {other:?} (use p1, p2, p3 or all)"),
                ))
            }
        })
    }

    /// Tokens processed by one training step, B·T.
    pub fn tokens_per_step(&self) -> usize {
        self.batch * self.window
    }
}

/// Matrix-product FLOPs of one training token (forward and backward), the numerator of the
/// effective GFLOP/s:
///
/// `6 · (Σ_l 4H·(D_l + H) + H·V)`
///
/// Per token the forward pass does Σ_l 4H·(D_l + H) multiply-adds in the LSTM layers (input
/// and recurrent projections of the four gates) and H·V in the output layer; the backward
/// pass does twice as many (gradients w.r.t. the inputs and w.r.t. the weights); a
/// multiply-add counts as 2 FLOPs. Element-wise work, the embedding, the loss and Adam are
/// not counted.
pub fn train_flops_per_token(cfg: &ModelConfig) -> f64 {
    let h = cfg.hidden as f64;
    let lstm: f64 = (0..cfg.layers)
        .map(|l| 4.0 * h * (cfg.input_size(l) as f64 + h))
        .sum();
    6.0 * (lstm + h * cfg.vocab as f64)
}

/// How much to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchOptions {
    /// Untimed training steps (and generation tokens ×10) before timing.
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub runs: usize,
    /// Training steps per timed run.
    pub steps: usize,
    /// Tokens per timed one-stream generation run.
    pub gen_tokens: usize,
    /// Streams of the batched generation.
    pub batch_streams: usize,
    /// Steps (tokens per stream) per timed batched generation run.
    pub batch_gen_steps: usize,
    /// Seed of the weights, tokens and sampler.
    pub seed: u64,
    /// Train with the recipe's regularisation and weight average instead of none.
    pub regularise: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: 2,
            runs: 5,
            steps: 3,
            gen_tokens: 500,
            batch_streams: 256,
            batch_gen_steps: 20,
            seed: 0,
            regularise: false,
        }
    }
}

impl BenchOptions {
    /// Checks that every count is at least 1.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("runs", self.runs),
            ("steps", self.steps),
            ("gen-tokens", self.gen_tokens),
            ("batch-streams", self.batch_streams),
            ("batch-gen-steps", self.batch_gen_steps),
        ] {
            if v == 0 {
                return Err(Error::config(name, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Measurements of one configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchResult {
    /// Configuration name.
    pub name: String,
    /// Layers L.
    pub layers: usize,
    /// Hidden size H (= embedding size E).
    pub hidden: usize,
    /// Vocabulary size V.
    pub vocab: usize,
    /// Streams per training step B.
    pub batch: usize,
    /// Window length T.
    pub window: usize,
    /// Trainable parameters.
    pub params: usize,
    /// Training throughput, tokens per second (median run).
    pub train_tokens_per_s: f64,
    /// Milliseconds per training step (median run).
    pub train_ms_per_step: f64,
    /// Matrix-product FLOPs per training token ([`train_flops_per_token`]).
    pub train_flops_per_token: f64,
    /// Effective training GFLOP/s: FLOPs per token × tokens/s / 1e9.
    pub train_gflops: f64,
    /// One-stream generation, tokens per second (median run).
    pub gen_tokens_per_s: f64,
    /// Streams of the batched generation.
    pub batch_streams: usize,
    /// Batched generation, tokens per second over all streams (median run).
    pub batch_gen_tokens_per_s: f64,
    /// Peak resident set size of the process in bytes (0 when unknown).
    pub peak_rss_bytes: u64,
    /// Whether the peak RSS was reset before this configuration (else it is the process's
    /// peak since start).
    pub peak_rss_reset: bool,
    /// Worker threads the numeric core uses.
    pub threads: usize,
}

/// Median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Peak resident set size of this process in bytes (`VmHWM` of `/proc/self/status`), if
/// the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` value 5); false if not allowed.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Times `steps` full training steps, `runs` times after `warmup` steps; returns the median
/// seconds per step.
fn time_training(cfg: &BenchConfig, opts: &BenchOptions, rng: &mut Pcg64) -> Result<f64> {
    let (model_cfg, train) = if opts.regularise {
        // The recipe's regularisation for this kind of model (char: its 6-to-15-passes row,
        // tiny-shakespeare's 20 minutes; word: its 2-to-6-passes row), on the bench's model.
        let (kind, passes) = if cfg.model.vocab <= 256 {
            (TokenizerKind::Char, 10.0)
        } else {
            (TokenizerKind::Word, 3.0)
        };
        let r = budget::recipe(kind, 1 << 20, &[Limit::Epochs(passes)]);
        let m = ModelConfig {
            dropout: r.dropout,
            ..cfg.model.clone()
        };
        (m, r.train_config(TrainConfig::default()))
    } else {
        let t = TrainConfig {
            dropout_input: 0.0,
            dropout_embed: 0.0,
            weight_drop: 0.0,
            ema: 0.0,
            ..TrainConfig::default()
        };
        (cfg.model.clone(), t)
    };
    let mut model = Model::<f32>::new(model_cfg, rng)?;
    let n = cfg.tokens_per_step();
    let v = cfg.model.vocab as u32;
    let x: Vec<u32> = (0..n).map(|_| rng.random_range(0..v)).collect();
    let y: Vec<u32> = (0..n).map(|_| rng.random_range(0..v)).collect();
    let adam = Adam::new(AdamConfig::default(), &model.config);
    let mut stepper = Stepper::new(&model, &train, adam, None, || {
        Tokens::from_ids(&y, model.config.vocab).counts()
    })?;
    let mut state = LstmState::zeros(&model.config, cfg.batch);
    let mut drop_rng = Pcg64::seed_from_u64(rng.random());
    let mut step = |model: &mut Model<f32>| {
        stepper.step(model, &train, &x, &y, &mut state, &mut drop_rng, 2e-3);
    };
    for _ in 0..opts.warmup {
        step(&mut model);
    }
    let mut per_step = Vec::with_capacity(opts.runs);
    for _ in 0..opts.runs {
        let t0 = Instant::now();
        for _ in 0..opts.steps {
            step(&mut model);
        }
        per_step.push(t0.elapsed().as_secs_f64() / opts.steps as f64);
    }
    Ok(median(per_step))
}

/// A char tokenizer with exactly `v` tokens (distinct characters), so the generation
/// benchmark decodes as a real model does.
fn synthetic_tokenizer(v: usize) -> Result<Tokenizer> {
    let text: String = (0..v as u32)
        .map(|i| char::from_u32(0x4E00 + i).unwrap_or('?'))
        .collect();
    let tok = Tokenizer::train(
        TokenizerKind::Char,
        &text,
        &TokenizerOptions::for_kind(TokenizerKind::Char),
    )?;
    if tok.vocab_size() != v {
        return Err(Error::config(
            "vocab",
            format!("{v} is too large for the generation benchmark"),
        ));
    }
    Ok(tok)
}

/// Times generation through the [`Engine`] (one shard, as a single generator): `b` streams
/// with the default sampling parameters, `steps` tokens per stream, `runs` times after a
/// warm-up; returns the median tokens/s over all streams.
fn time_generation(
    model: &Arc<Model<f32>>,
    tok: &Tokenizer,
    b: usize,
    steps: usize,
    opts: &BenchOptions,
) -> Result<f64> {
    let mut engine = Engine::new(Arc::clone(model), 1);
    for i in 0..b as u64 {
        let spec = StreamSpec {
            seed: opts.seed,
            id: i + 1,
            ..StreamSpec::new(vec![0])
        };
        engine.join(i, Stream::new(&spec, tok)?, None)?;
    }
    let mut updates = Vec::with_capacity(b);
    let mut run = |steps: usize| {
        for _ in 0..steps {
            updates.clear();
            engine.step(&mut updates);
        }
    };
    run((steps / 10).max(1) * opts.warmup.max(1));
    let mut rates = Vec::with_capacity(opts.runs);
    for _ in 0..opts.runs {
        let t0 = Instant::now();
        run(steps);
        rates.push((steps * b) as f64 / t0.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

/// Runs the whole benchmark of one configuration.
pub fn run_config(cfg: &BenchConfig, opts: &BenchOptions) -> Result<BenchResult> {
    opts.validate()?;
    cfg.model.validate()?;
    let reset = reset_peak_rss();
    let mut rng = Pcg64::seed_from_u64(opts.seed);
    let sec_per_step = time_training(cfg, opts, &mut rng)?;
    let model = Arc::new(Model::<f32>::new(cfg.model.clone(), &mut rng)?);
    let tok = synthetic_tokenizer(cfg.model.vocab)?;
    let gen = time_generation(&model, &tok, 1, opts.gen_tokens, opts)?;
    let batch_gen = time_generation(&model, &tok, opts.batch_streams, opts.batch_gen_steps, opts)?;
    let tps = cfg.tokens_per_step() as f64 / sec_per_step;
    let fpt = train_flops_per_token(&cfg.model);
    Ok(BenchResult {
        name: cfg.name.to_string(),
        layers: cfg.model.layers,
        hidden: cfg.model.hidden,
        vocab: cfg.model.vocab,
        batch: cfg.batch,
        window: cfg.window,
        params: cfg.model.num_params(),
        train_tokens_per_s: tps,
        train_ms_per_step: sec_per_step * 1e3,
        train_flops_per_token: fpt,
        train_gflops: fpt * tps / 1e9,
        gen_tokens_per_s: gen,
        batch_streams: opts.batch_streams,
        batch_gen_tokens_per_s: batch_gen,
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        peak_rss_reset: reset,
        threads: crate::nn::threads(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_configs_match_the_issue_table() {
        let p1 = BenchConfig::named("p1").unwrap();
        assert_eq!(
            (p1.model.layers, p1.model.hidden, p1.model.embed),
            (2, 512, 512)
        );
        assert_eq!((p1.batch, p1.window, p1.model.vocab), (64, 64, 65));
        let p2 = BenchConfig::named("p2").unwrap();
        assert_eq!((p2.model.layers, p2.model.hidden, p2.batch), (1, 128, 32));
        let p3 = BenchConfig::named("p3").unwrap();
        assert_eq!((p3.model.vocab, p3.batch, p3.window), (10_000, 20, 20));
        assert!(BenchConfig::named("p4").is_err());
        for name in CONFIG_NAMES {
            assert_eq!(BenchConfig::named(name).unwrap().name, name);
        }
    }

    #[test]
    fn flop_formula() {
        // p1: 6 · (2 · 4·512·1024 + 512·65)
        let p1 = BenchConfig::named("p1").unwrap();
        let want = 6.0 * (2.0 * 4.0 * 512.0 * 1024.0 + 512.0 * 65.0);
        assert_eq!(train_flops_per_token(&p1.model), want);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn tiny_run_reports_positive_rates() {
        let cfg = BenchConfig {
            name: "tiny",
            description: "tiny",
            model: ModelConfig {
                vocab: 7,
                embed: 4,
                hidden: 5,
                layers: 2,
                dropout: 0.0,
                tie_weights: false,
            },
            batch: 3,
            window: 4,
        };
        let opts = BenchOptions {
            warmup: 1,
            runs: 2,
            steps: 1,
            gen_tokens: 5,
            batch_streams: 3,
            batch_gen_steps: 2,
            seed: 1,
            regularise: false,
        };
        let r = run_config(&cfg, &opts).unwrap();
        assert!(r.train_tokens_per_s > 0.0 && r.train_tokens_per_s.is_finite());
        assert!(r.gen_tokens_per_s > 0.0 && r.batch_gen_tokens_per_s > 0.0);
        assert!(
            (r.train_gflops - r.train_flops_per_token * r.train_tokens_per_s / 1e9).abs() < 1e-9
        );
        assert_eq!(r.params, cfg.model.num_params());
        if cfg!(target_os = "linux") {
            assert!(r.peak_rss_bytes > 0);
        }
        let reg = run_config(
            &cfg,
            &BenchOptions {
                regularise: true,
                ..opts
            },
        )
        .unwrap();
        assert!(reg.train_tokens_per_s > 0.0 && reg.train_tokens_per_s.is_finite());
        let bad = BenchOptions { runs: 0, ..opts };
        assert!(run_config(&cfg, &bad).is_err());
    }
}
