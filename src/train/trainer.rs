//! The truncated-BPTT training loop: B streams, windows of T steps, (h, c) carried from
//! window to window and reset at each epoch boundary, Adam(W), global-norm clipping, a
//! warm-up + cosine learning-rate schedule, periodic validation and checkpoints.
//!
//! The library never prints: progress leaves through the `on_event` callback, whose return
//! value lets the caller stop training or ask for a checkpoint (Ctrl-C, a dashboard key).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg32;

use super::checkpoint::{self, Resumable, TrainMeta};
pub use super::config::{HistoryPoint, Progress, TrainConfig};
use super::metrics::{self, Line};
use crate::checkpoint::{CheckpointKind, CorpusInfo, ModelMeta};
use crate::error::{Error, Result};
use crate::nn::model::{LstmState, Model, ModelConfig, Params, Workspace};
use crate::nn::sampled::check_candidates;
use crate::tokenizer::Tokenizer;
use crate::train::batcher::Batcher;
use crate::train::corpus::Corpus;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::step::Stepper;
use crate::train::tokens::{TokenView, Tokens, TrainData};

/// Mapped training tokens are released from memory every this many windows.
const RELEASE_EVERY: usize = 64;

/// Per-step figures sent to the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct StepInfo {
    /// Step just completed (1-based count of steps done).
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// This window's mean loss (nats/token).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Training throughput of this run so far.
    pub tokens_per_s: f64,
    /// Fraction of the planned run done, [0, 1], if a limit is set.
    pub progress: Option<f64>,
    /// Training seconds, all runs together.
    pub elapsed_secs: f64,
}

/// What training reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Training is about to start (or continue).
    Start {
        /// Parameter count.
        params: usize,
        /// Tokens in the training and validation splits.
        train_tokens: usize,
        /// Validation tokens.
        val_tokens: usize,
        /// Windows per epoch.
        windows_per_epoch: usize,
        /// Step at which this run starts (non-zero on resume).
        start_step: u64,
        /// Planned total steps if known from --max-steps/--epochs.
        planned_steps: Option<u64>,
    },
    /// One optimizer step finished.
    Step(StepInfo),
    /// A validation finished.
    Eval {
        /// Step.
        step: u64,
        /// Validation loss (nats/token).
        val_loss: f64,
        /// Whether it is the best so far.
        best: bool,
    },
    /// A copy of the weights after `step`, asked for with [`Control::Weights`] (for
    /// sampling while training goes on).
    Weights {
        /// Step of the weights.
        step: u64,
        /// The weights.
        model: Arc<Model<f32>>,
    },
    /// A checkpoint was written.
    Saved {
        /// Its path.
        path: PathBuf,
    },
    /// Something the user should know (e.g. a skipped non-finite step).
    Warning(String),
}

/// The caller's answer to an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    #[default]
    Continue,
    /// Write `NAME-latest` now, then keep going.
    SaveNow,
    /// Send a copy of the weights ([`Event::Weights`]), then keep going.
    Weights,
    /// Finish: validate, write `NAME-latest`, return.
    Stop,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Steps done in total.
    pub steps: u64,
    /// Steps done in this run.
    pub steps_this_run: u64,
    /// Last validation loss.
    pub val_loss: Option<f64>,
    /// Best validation loss.
    pub best_val: Option<f64>,
    /// Mean training loss over the last stretch.
    pub train_loss: Option<f64>,
    /// Throughput of this run.
    pub tokens_per_s: f64,
    /// Path of the latest checkpoint.
    pub latest: PathBuf,
    /// Why it stopped.
    pub reason: String,
}

/// How [`evaluate_tokens`] splits `n` tokens into streams when asked for `b`: `(B, S)`, B
/// streams of S consecutive tokens each (the last `n - B·S` tokens are left out). B is at
/// most n / 2, so that every stream has a token to score. Each stream starts from a zero
/// state and its first token is only context, so with B > 1 the loss is slightly above the
/// sequential one (B = 1). `(0, 0)` when there is nothing to score (n < 2).
pub fn eval_split(n: usize, b: usize) -> (usize, usize) {
    if n < 2 {
        return (0, 0);
    }
    let b = b.clamp(1, n / 2);
    (b, n / b)
}

/// Loss of a model over a token sequence, evaluated as B streams in windows of T steps from
/// a zero state (the last partial window included; see [`eval_split`]). Returns (sum of
/// nats, tokens scored).
pub fn evaluate_tokens<T: Copy + Into<u32>>(
    model: &Model<f32>,
    ws: &mut Workspace<f32>,
    tokens: &[T],
    b: usize,
    t: usize,
) -> (f64, usize) {
    evaluate_tokens_each(model, ws, tokens, b, t, &mut |_, _| {})
}

/// [`evaluate_tokens`], also handing the loss of each scored token to `each` as (its index
/// in `tokens`, nats). Every token but the first of each stream (and the left-out tail) is
/// scored once.
pub fn evaluate_tokens_each<T: Copy + Into<u32>>(
    model: &Model<f32>,
    ws: &mut Workspace<f32>,
    tokens: &[T],
    b: usize,
    t: usize,
    each: &mut dyn FnMut(usize, f64),
) -> (f64, usize) {
    let (b, s) = eval_split(tokens.len(), b);
    if b == 0 {
        return (0.0, 0);
    }
    let mut state = LstmState::zeros(&model.config, b);
    let (mut total, mut count) = (0.0, 0usize);
    let mut x = Vec::with_capacity(t * b);
    let mut y = Vec::with_capacity(t * b);
    let mut pos = 0;
    while pos + 1 < s {
        let len = t.min(s - 1 - pos);
        x.clear();
        y.clear();
        for k in 0..len {
            for stream in 0..b {
                x.push(tokens[stream * s + pos + k].into());
                y.push(tokens[stream * s + pos + k + 1].into());
            }
        }
        // Row k·B + stream of the window predicts token stream·S + pos + k + 1.
        let at = pos;
        total += model.eval_window_each(ws, &x, &y, &mut state, &mut |row, nats| {
            let (k, stream) = (row / b, row % b);
            each(stream * s + at + k + 1, nats)
        });
        count += x.len();
        pos += len;
    }
    (total, count)
}

/// Where epoch `epoch`'s windows start in every stream (the batcher's phase): 0 for the first
/// epoch and without `shift_windows`, otherwise a draw from 0..T that depends on the seed and
/// the epoch alone, so a resumed run draws what the uninterrupted one did.
fn epoch_phase(config: &TrainConfig, epoch: u64) -> usize {
    if !config.shift_windows || epoch == 0 {
        return 0;
    }
    Pcg32::new(config.seed ^ 0x5bd1_e995_7f4a_7c15, epoch).random_range(0..config.seq)
}

/// A training session: model, optimizer, data and progress.
pub struct Trainer {
    /// The model being trained (its raw weights; see [`Trainer::eval_model`]).
    pub model: Model<f32>,
    /// Carried state of the B streams.
    pub state: LstmState<f32>,
    /// Progress (cursor, losses, RNG).
    pub progress: Progress,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    corpus: CorpusInfo,
    /// Optimizer state, weight average and the step's buffers.
    stepper: Stepper,
    train_tokens: Tokens,
    val_tokens: Tokens,
    batcher: Batcher,
    /// Windows of this epoch whose tokens were released from memory (mapped tokens).
    released: usize,
    x: Vec<u32>,
    y: Vec<u32>,
    clock: Clock,
}

/// A monotonic clock in seconds from an arbitrary origin: where training time comes from.
pub type Clock = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The wall clock (a monotonic [`Instant`]).
pub fn wall_clock() -> Clock {
    let origin = Instant::now();
    Arc::new(move || origin.elapsed().as_secs_f64())
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A new session on an in-memory corpus: splits it, encodes both parts with `tokenizer`
    /// (already trained on the training part) and initialises the model from `config.seed`.
    pub fn new(
        corpus: &Corpus,
        tokenizer: Tokenizer,
        model_config: ModelConfig,
        config: TrainConfig,
    ) -> Result<Self> {
        config.validate()?;
        let data = TrainData::from_text(
            &corpus.text,
            CorpusInfo {
                path: corpus.path.clone(),
                fingerprint: corpus.fingerprint.clone(),
                ..CorpusInfo::default()
            },
            &tokenizer,
            config.val_fraction,
        )?;
        Self::from_data(data, tokenizer, model_config, config)
    }

    /// A new session on prepared tokens (`train::prepare`), made with `tokenizer`; the model is
    /// initialised from `config.seed`.
    pub fn from_data(
        data: TrainData,
        tokenizer: Tokenizer,
        mut model_config: ModelConfig,
        config: TrainConfig,
    ) -> Result<Self> {
        config.validate()?;
        check_tokenizer(&data, &tokenizer)?;
        model_config.vocab = tokenizer.vocab_size();
        model_config.validate()?;
        if config.sampled_softmax > 0 {
            check_candidates(config.sampled_softmax, model_config.vocab)?;
        }
        let mut rng = Pcg32::seed_from_u64(config.seed);
        let mut model = Model::new(model_config, &mut rng)?;
        model.params.set_forget_bias(config.forget_bias);
        let adam = Adam::new(
            AdamConfig {
                weight_decay: config.weight_decay,
                ..AdamConfig::default()
            },
            &model.config,
        );
        let progress = Progress::new(config.seed);
        Self::assemble(data, tokenizer, model, (adam, None), None, progress, config)
    }

    /// Continues from a full checkpoint on an in-memory corpus, which must be the one it was
    /// trained on (same fingerprint); see [`Trainer::resume_data`].
    pub fn resume(corpus: &Corpus, r: Resumable, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        check_same_corpus(
            &r.meta.base.corpus,
            &corpus.fingerprint,
            &corpus.path,
            &r.loaded.path,
        )?;
        let data = TrainData::from_text(
            &corpus.text,
            CorpusInfo {
                path: corpus.path.clone(),
                fingerprint: corpus.fingerprint.clone(),
                ..CorpusInfo::default()
            },
            &r.loaded.tokenizer,
            config.val_fraction,
        )?;
        Self::resume_data(data, r, config)
    }

    /// Continues from a full checkpoint on prepared tokens, which must come from the corpus it
    /// was trained on (same fingerprint) through its tokenizer; `config` may change run
    /// limits, intervals and output, but not the shapes of the data (batch, seq,
    /// val-fraction) or the seed.
    pub fn resume_data(data: TrainData, r: Resumable, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let meta = &r.meta;
        check_same_corpus(
            &meta.base.corpus,
            &data.corpus.fingerprint,
            &data.corpus.path,
            &r.loaded.path,
        )?;
        check_tokenizer(&data, &r.loaded.tokenizer)?;
        let old = &meta.train;
        for (name, a, b) in [
            ("batch", old.batch as f64, config.batch as f64),
            ("seq", old.seq as f64, config.seq as f64),
            (
                "val-fraction",
                old.val_fraction as f64,
                config.val_fraction as f64,
            ),
            ("seed", old.seed as f64, config.seed as f64),
            (
                "shift-windows",
                f64::from(u8::from(old.shift_windows)),
                f64::from(u8::from(config.shift_windows)),
            ),
        ] {
            if a != b {
                return Err(Error::Checkpoint {
                    path: r.loaded.path.clone(),
                    msg: format!("was trained with {name} {a}; resuming with {name} {b} would not continue the same run"),
                });
            }
        }
        let rec = &meta.base.corpus;
        if (rec.train_tokens, rec.val_tokens) != (data.train.len(), data.val.len()) {
            return Err(Error::Checkpoint {
                path: r.loaded.path.clone(),
                msg: format!(
                    "was trained on {} training and {} validation tokens, but the corpus now \
                     gives {} and {} (another separator, validation split or corpus order?); \
                     resume with the options it was trained with",
                    rec.train_tokens,
                    rec.val_tokens,
                    data.train.len(),
                    data.val.len()
                ),
            });
        }
        let progress = meta.progress.clone();
        Self::assemble(
            data,
            r.loaded.tokenizer,
            r.loaded.model,
            (r.adam, r.average),
            Some(r.state),
            progress,
            config,
        )
    }

    fn assemble(
        data: TrainData,
        tokenizer: Tokenizer,
        model: Model<f32>,
        (adam, average): (Adam, Option<Params<f32>>),
        state: Option<LstmState<f32>>,
        progress: Progress,
        config: TrainConfig,
    ) -> Result<Self> {
        let batcher = Batcher::new(data.train.len(), config.batch, config.seq)
            .map_err(|e| Error::Corpus {
                path: data.corpus.path.clone(),
                msg: format!("training split: {e}"),
            })?
            .with_phase(epoch_phase(&config, progress.epoch));
        if progress.window >= batcher.windows() {
            return Err(Error::Corpus {
                path: data.corpus.path.clone(),
                msg: format!(
                    "the checkpoint's data cursor (window {}) lies past this corpus's {} windows \
                     per epoch",
                    progress.window,
                    batcher.windows()
                ),
            });
        }
        let state = state.unwrap_or_else(|| LstmState::zeros(&model.config, config.batch));
        let n = config.batch * config.seq;
        let released = progress.window;
        let stepper = Stepper::new(&model, &config, adam, average, || data.train.counts())?;
        Ok(Trainer {
            stepper,
            corpus: CorpusInfo {
                train_tokens: data.train.len(),
                val_tokens: data.val.len(),
                ..data.corpus
            },
            model,
            state,
            progress,
            config,
            tokenizer,
            train_tokens: data.train,
            val_tokens: data.val,
            batcher,
            released,
            x: vec![0; n],
            y: vec![0; n],
            clock: wall_clock(),
        })
    }

    /// What the checkpoints record about the corpus.
    pub fn corpus(&self) -> &CorpusInfo {
        &self.corpus
    }

    /// Whether the training tokens are read from a memory-mapped token file.
    pub fn is_mapped(&self) -> bool {
        self.train_tokens.is_mapped()
    }

    /// Windows per epoch.
    pub fn windows_per_epoch(&self) -> usize {
        self.batcher.windows()
    }

    /// Fraction of the planned run done, by the strictest of the configured limits.
    pub fn planned_fraction(&self) -> Option<f64> {
        let p = &self.progress;
        let mut f: Option<f64> = None;
        let mut upd = |v: f64| f = Some(f.map_or(v, |o: f64| o.max(v)));
        if let Some(ms) = self.config.max_steps {
            upd(p.step as f64 / ms as f64);
        }
        if let Some(ep) = self.config.epochs {
            upd((p.epoch as f64 + p.window as f64 / self.batcher.windows() as f64) / ep);
        }
        if let Some(mm) = self.config.max_minutes {
            upd(p.elapsed_secs / (mm * 60.0));
        }
        f
    }

    fn planned_steps(&self) -> Option<u64> {
        let by_epochs = self
            .config
            .epochs
            .map(|e| (e * self.batcher.windows() as f64).ceil() as u64);
        match (self.config.max_steps, by_epochs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One optimizer step on the next window. Returns the window's loss and the gradient norm;
    /// a non-finite loss or gradient skips the update (see [`Trainer::run`]).
    pub fn train_step(&mut self) -> (f64, f64, f32) {
        let p = &mut self.progress;
        match self.train_tokens.view() {
            TokenView::U8(t) => self.batcher.fill(t, p.window, &mut self.x, &mut self.y),
            TokenView::U16(t) => self.batcher.fill(t, p.window, &mut self.x, &mut self.y),
            TokenView::U32(t) => self.batcher.fill(t, p.window, &mut self.x, &mut self.y),
        }
        let frac = self.planned_fraction().unwrap_or(0.0);
        let p = &mut self.progress;
        let lr = self.config.schedule().lr(p.step, frac) * p.lr_scale;
        let (loss, norm) = self.stepper.step(
            &mut self.model,
            &self.config,
            &self.x,
            &self.y,
            &mut self.state,
            &mut p.rng,
            lr,
        );
        p.step += 1;
        p.tokens_seen += self.x.len() as u64;
        p.window += 1;
        let epoch_done = p.window >= self.batcher.windows();
        if epoch_done || p.window - self.released >= RELEASE_EVERY {
            // Mapped tokens the streams have read leave the resident set, so memory stays flat
            // however long the corpus is.
            for r in self.batcher.consumed(self.released, p.window) {
                self.train_tokens.release(r);
            }
            self.released = p.window;
        }
        if epoch_done {
            p.window = 0;
            p.epoch += 1;
            self.released = 0;
            self.state.reset();
            self.batcher = self.batcher.with_phase(epoch_phase(&self.config, p.epoch));
        }
        (loss, norm, lr)
    }

    /// Optimizer state.
    pub fn adam(&self) -> &Adam {
        &self.stepper.adam
    }

    /// The weight average, when the run keeps one.
    pub fn average(&self) -> Option<&Params<f32>> {
        self.stepper.average.as_ref()
    }

    /// A copy of the model as it is evaluated and saved (the weight average, if kept).
    pub fn eval_model(&self) -> Model<f32> {
        Model {
            config: self.model.config.clone(),
            params: self
                .stepper
                .average
                .clone()
                .unwrap_or_else(|| self.model.params.clone()),
        }
    }

    /// Validation loss (nats/token) over the held-out split, or `None` without one; with a
    /// weight average, the average's.
    pub fn validate(&mut self) -> Option<f64> {
        let (b, t) = (self.config.batch, self.config.seq);
        // The average, when kept, is swapped in for the evaluation and out again.
        if let Some(avg) = self.stepper.average.as_mut() {
            std::mem::swap(&mut self.model.params, avg);
        }
        let (m, ws) = (&self.model, &mut self.stepper.ws);
        let (sum, n) = match self.val_tokens.view() {
            TokenView::U8(v) => evaluate_tokens(m, ws, v, b, t),
            TokenView::U16(v) => evaluate_tokens(m, ws, v, b, t),
            TokenView::U32(v) => evaluate_tokens(m, ws, v, b, t),
        };
        if let Some(avg) = self.stepper.average.as_mut() {
            std::mem::swap(&mut self.model.params, avg);
        }
        self.val_tokens.release(0..self.val_tokens.len());
        (n > 0).then(|| sum / n as f64)
    }

    /// The checkpoint metadata for the current state.
    pub fn meta(&self, kind: CheckpointKind) -> TrainMeta {
        TrainMeta {
            base: ModelMeta {
                kind,
                model: self.model.config.clone(),
                tokenizer: self.tokenizer.to_json(),
                corpus: self.corpus.clone(),
                quill_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            train: self.config.clone(),
            progress: self.progress.clone(),
            adam: self.stepper.adam.config,
            adam_t: self.stepper.adam.t,
        }
    }

    /// Takes training time from `clock` instead of the wall clock (tests drive it by hand).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    fn train_state(&self) -> checkpoint::TrainState<'_> {
        checkpoint::TrainState {
            adam: &self.stepper.adam,
            state: &self.state,
            average: self.stepper.average.as_ref(),
        }
    }

    /// The full (resumable) checkpoint of the current state.
    pub fn checkpoint(&self) -> Result<crate::checkpoint::format::CheckpointFile> {
        checkpoint::build(
            &self.model,
            &self.meta(CheckpointKind::Full),
            Some(self.train_state()),
        )
    }

    /// Writes a full (resumable) checkpoint to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        if !self
            .model
            .params
            .slices()
            .iter()
            .all(|s| s.iter().all(|v| v.is_finite()))
        {
            return Err(Error::Diverged(format!(
                "refusing to write {}: the weights contain NaN or infinity",
                path.display()
            )));
        }
        checkpoint::save(
            path,
            &self.model,
            &self.meta(CheckpointKind::Full),
            Some(self.train_state()),
        )
    }

    fn log_metrics(&self, line: &Line) -> Result<()> {
        metrics::append(&self.config.metrics_path(), line)
    }

    fn eval_and_record(
        &mut self,
        on_event: &mut dyn FnMut(&Event) -> Control,
    ) -> Result<Option<f64>> {
        let val = self.validate();
        let (sum, cnt) = self.progress.loss_acc;
        let train_loss = if cnt > 0 { sum / cnt as f64 } else { f64::NAN };
        self.progress.loss_acc = (0.0, 0);
        let step = self.progress.step;
        self.progress.history.push(HistoryPoint {
            step,
            train_loss,
            val_loss: val,
        });
        if let Err(e) = self.log_metrics(&Line::Eval {
            step,
            train_loss: Some(train_loss),
            val_loss: val,
            elapsed_s: self.progress.elapsed_secs,
        }) {
            on_event(&Event::Warning(format!("metrics log: {e}")));
        }
        if let Some(v) = val {
            let best = self.progress.best_val.is_none_or(|b| v < b);
            if best {
                self.progress.best_val = Some(v);
            }
            on_event(&Event::Eval {
                step,
                val_loss: v,
                best,
            });
            if best {
                let path = self.config.checkpoint_path("best");
                self.save_or_warn(&path, on_event);
            }
        }
        Ok(val)
    }

    /// Trains until a limit in the config is reached, `steps_this_run` steps are done, or
    /// `on_event` answers [`Control::Stop`]. Validates every `eval_every` steps (writing
    /// `NAME-best` on a new best), writes `NAME-latest` every `save_every` steps and at the
    /// end, and appends to the metrics log.
    ///
    /// A non-finite loss or gradient skips the update, resets the carried state, halves the
    /// learning rate and warns; five in a row end training with [`Error::Diverged`] (the
    /// checkpoints on disk are the last good ones).
    pub fn run(
        &mut self,
        steps_this_run: Option<u64>,
        on_event: &mut dyn FnMut(&Event) -> Control,
    ) -> Result<Summary> {
        check_writable(&self.config.out)?;
        on_event(&Event::Start {
            params: self.model.config.num_params(),
            train_tokens: self.train_tokens.len(),
            val_tokens: self.val_tokens.len(),
            windows_per_epoch: self.batcher.windows(),
            start_step: self.progress.step,
            planned_steps: self.planned_steps(),
        });
        let clock = Arc::clone(&self.clock);
        let start = clock();
        let since = |t0: f64| clock() - t0;
        let start_elapsed = self.progress.elapsed_secs;
        let start_step = self.progress.step;
        // Seconds spent inside the step hook (a dashboard's pause blocks there): not training
        // time, so neither --max-minutes, the schedule nor tokens/s count it.
        let mut hook_secs = 0.0;
        let mut bad_in_a_row = 0;
        let mut reason = String::from("limit reached");
        let mut last_val = None;
        loop {
            if self.planned_fraction().is_some_and(|f| f >= 1.0) {
                break;
            }
            if steps_this_run.is_some_and(|n| self.progress.step - start_step >= n) {
                reason = "steps for this run done".into();
                break;
            }
            let (loss, norm, lr) = self.train_step();
            self.progress.elapsed_secs = start_elapsed + since(start) - hook_secs;
            let step = self.progress.step;
            if !(loss.is_finite() && norm.is_finite()) {
                bad_in_a_row += 1;
                self.state.reset();
                self.progress.lr_scale *= 0.5;
                if bad_in_a_row >= 5 {
                    return Err(Error::Diverged(format!(
                        "{bad_in_a_row} non-finite losses in a row up to step {step}; \
                         the checkpoints in {} are from before; try a lower --lr",
                        self.config.out.display()
                    )));
                }
                on_event(&Event::Warning(format!(
                    "step {step}: non-finite loss or gradient; update skipped, state reset, \
                     learning rate scaled to {}x",
                    self.progress.lr_scale
                )));
                continue;
            }
            bad_in_a_row = 0;
            self.progress.loss_acc.0 += loss;
            self.progress.loss_acc.1 += 1;
            let secs = (since(start) - hook_secs).max(1e-9);
            let info = StepInfo {
                step,
                epoch: self.progress.epoch as f64
                    + self.progress.window as f64 / self.batcher.windows() as f64,
                loss,
                lr,
                grad_norm: norm,
                tokens_per_s: (step - start_step) as f64 * self.x.len() as f64 / secs,
                progress: self.planned_fraction(),
                elapsed_secs: self.progress.elapsed_secs,
            };
            if step.is_multiple_of(10) {
                if let Err(e) = self.log_metrics(&Line::Train {
                    step,
                    epoch: info.epoch,
                    loss: Some(loss),
                    lr,
                    grad_norm: norm,
                    tokens_per_s: info.tokens_per_s,
                    elapsed_s: info.elapsed_secs,
                }) {
                    on_event(&Event::Warning(format!("metrics log: {e}")));
                }
            }
            let hook_start = clock();
            let mut control = on_event(&Event::Step(info));
            hook_secs += since(hook_start);
            if self.config.eval_every > 0 && step.is_multiple_of(self.config.eval_every) {
                last_val = self.eval_and_record(on_event)?;
            }
            if self.config.save_every > 0 && step.is_multiple_of(self.config.save_every) {
                control = match control {
                    Control::SaveNow => Control::Continue,
                    c => c,
                };
                self.save_or_warn(&self.config.checkpoint_path("latest"), on_event);
            }
            if control == Control::Weights {
                control = on_event(&Event::Weights {
                    step,
                    model: Arc::new(self.eval_model()),
                });
            }
            match control {
                Control::Continue | Control::Weights => {}
                Control::SaveNow => {
                    self.save_or_warn(&self.config.checkpoint_path("latest"), on_event);
                }
                Control::Stop => {
                    reason = "stopped by request".into();
                    break;
                }
            }
        }
        if self.progress.step > start_step || last_val.is_none() {
            let evaluated_here = self
                .progress
                .history
                .last()
                .is_some_and(|h| h.step == self.progress.step);
            if !evaluated_here {
                last_val = self.eval_and_record(on_event)?;
            } else {
                last_val = self.progress.history.last().and_then(|h| h.val_loss);
            }
        }
        let latest = self.save_latest(on_event)?;
        let secs = (since(start) - hook_secs).max(1e-9);
        Ok(Summary {
            steps: self.progress.step,
            steps_this_run: self.progress.step - start_step,
            val_loss: last_val,
            best_val: self.progress.best_val,
            train_loss: self.progress.history.last().map(|h| h.train_loss),
            tokens_per_s: (self.progress.step - start_step) as f64 * self.x.len() as f64 / secs,
            latest,
            reason,
        })
    }

    /// A save during training: a failure (full disk, unwritable directory) is reported and
    /// training goes on with its state in memory; the next save tries again.
    fn save_or_warn(&self, path: &Path, on_event: &mut dyn FnMut(&Event) -> Control) {
        match self.save(path) {
            Ok(()) => {
                on_event(&Event::Saved {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => {
                on_event(&Event::Warning(format!(
                    "could not write checkpoint: {e}; training continues in memory and the \
                     next save tries again (the previous file, if any, is intact)"
                )));
            }
        }
    }

    fn save_latest(&self, on_event: &mut dyn FnMut(&Event) -> Control) -> Result<PathBuf> {
        let path = self.config.checkpoint_path("latest");
        self.save(&path)?;
        on_event(&Event::Saved { path: path.clone() });
        Ok(path)
    }
}

/// Creates `dir` if needed and proves a file can be created in it, so an unwritable `--out`
/// fails before any training time is spent.
pub fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // A fresh create-new file (never through a link), removed again when dropped.
    crate::atomic::AtomicFile::create(&dir.join(".quill-write-test"))
        .map(drop)
        .map_err(|e| Error::io(dir, e))
}

/// The first 12 characters of a fingerprint, for messages (whatever the file put there).
fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(12).collect()
}

/// The check that a resumed run continues on the corpus its checkpoint (at `checkpoint`) was
/// trained on: `fingerprint` is the corpus's now, `path` where it was read from.
pub fn check_same_corpus(
    recorded: &CorpusInfo,
    fingerprint: &str,
    path: &Path,
    checkpoint: &Path,
) -> Result<()> {
    if fingerprint == recorded.fingerprint {
        return Ok(());
    }
    Err(Error::Checkpoint {
        path: checkpoint.to_path_buf(),
        msg: format!(
            "was trained on a different corpus ({} has fingerprint {}…, the checkpoint expects \
             {}… from {}); resume with the original corpus (the same files, and the --glob, \
             --separator and --val-corpus flags it was read with)",
            path.display(),
            short(fingerprint),
            short(&recorded.fingerprint),
            recorded.path.display()
        ),
    })
}

/// Prepared tokens must come from this very tokenizer.
fn check_tokenizer(data: &TrainData, tokenizer: &Tokenizer) -> Result<()> {
    if data.tokenizer_sha256 != tokenizer.sha256() || data.train.vocab() != tokenizer.vocab_size() {
        return Err(Error::Corpus {
            path: data.corpus.path.clone(),
            msg: format!(
                "the tokens were made with another tokenizer (V = {}) than the model's (V = {}); \
                 prepare the corpus again",
                data.train.vocab(),
                tokenizer.vocab_size()
            ),
        });
    }
    Ok(())
}
