//! The configuration of a training run and where it stands: what a training checkpoint
//! records beside the weights ([`TrainConfig`], [`Progress`]).

use std::path::PathBuf;

use rand::SeedableRng;
use rand_pcg::Pcg32;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::dropout::MaskShape;
use crate::train::optim::{LrSchedule, Schedule};

/// Most tokens one window (B × T) may hold: bounds what a run, or a resumed checkpoint,
/// can ask to allocate per window.
pub const MAX_WINDOW_TOKENS: usize = 1 << 22;

/// Most candidates of the sampled softmax (it must also stay below the vocabulary size).
pub const MAX_SAMPLED: usize = 1 << 20;

/// Dropout on every layer's output of `quill train` (the model's [`ModelConfig::dropout`]).
///
/// [`ModelConfig::dropout`]: crate::nn::model::ModelConfig::dropout
pub const DEFAULT_DROPOUT: f32 = 0.2;

/// The forget-gate bias a new model starts from (the LSTM's usual initialisation: the cell
/// remembers by default).
pub const DEFAULT_FORGET_BIAS: f32 = 1.0;

fn default_forget_bias() -> f32 {
    DEFAULT_FORGET_BIAS
}

/// Training hyper-parameters and run control. Saved in every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Parallel streams B.
    pub batch: usize,
    /// Window length T (truncated-BPTT length).
    pub seq: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Decay after warm-up.
    pub schedule: Schedule,
    /// Final learning rate as a fraction of `lr` (cosine).
    pub min_lr_ratio: f32,
    /// AdamW decoupled weight decay (0 = Adam).
    pub weight_decay: f32,
    /// Global gradient-norm limit (0 = no clipping).
    pub clip: f32,
    /// Shape of the activation dropout masks: one per stream per window (locked) or one per
    /// element. Checkpoints from before this field trained with `element`.
    #[serde(default)]
    pub dropout_mask: MaskShape,
    /// Dropout on the embedded inputs of layer 0, in [0, 1).
    #[serde(default)]
    pub dropout_input: f32,
    /// Embedding dropout: the probability of dropping a token of the vocabulary for a whole
    /// window, in [0, 1).
    #[serde(default)]
    pub dropout_embed: f32,
    /// DropConnect on the recurrent weights `W_h`: drop probability per weight and step, in
    /// [0, 1).
    #[serde(default)]
    pub weight_drop: f32,
    /// Decay of the exponential moving average of the weights that validation uses and
    /// checkpoints hold as the model, in [0, 1) (0 = no average).
    #[serde(default)]
    pub ema: f32,
    /// Initial bias of every layer's forget gate (the other biases start at 0). Only a new
    /// run's initialisation reads it.
    #[serde(default = "default_forget_bias")]
    pub forget_bias: f32,
    /// Sampled softmax while training: N candidates per window, the N / 2 most frequent
    /// entries of the training tokens and N − N / 2 draws from the rest by their frequency,
    /// scored with each row's target instead of all V entries (0 = the full softmax;
    /// [`crate::nn::sampled`]). Validation, evaluation and generation use the full one.
    #[serde(default)]
    pub sampled_softmax: usize,
    /// Start each epoch's windows, after the first epoch's, a different number of tokens
    /// (0 to T − 1, drawn from the seed and the epoch) into every stream, so that a token is
    /// not always at the same place in its window ([`crate::train::batcher`]).
    #[serde(default)]
    pub shift_windows: bool,
    /// Seed of initialisation and dropout.
    pub seed: u64,
    /// Fraction of the corpus (its end) held out for validation.
    pub val_fraction: f32,
    /// Validate every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Write `NAME-latest` every this many steps (0 = only at the end).
    pub save_every: u64,
    /// Stop after this many optimizer steps in total.
    pub max_steps: Option<u64>,
    /// Stop after this many epochs (may be fractional).
    pub epochs: Option<f64>,
    /// Stop after this many minutes of training in total (resumes included).
    pub max_minutes: Option<f64>,
    /// Checkpoint name prefix.
    pub name: String,
    /// Directory for checkpoints and the metrics log.
    pub out: PathBuf,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch: 32,
            seq: 64,
            lr: 2e-3,
            warmup_steps: 100,
            schedule: Schedule::Cosine,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            clip: 5.0,
            dropout_mask: MaskShape::Stream,
            dropout_input: 0.0,
            dropout_embed: 0.0,
            weight_drop: 0.0,
            ema: 0.0,
            forget_bias: DEFAULT_FORGET_BIAS,
            sampled_softmax: 0,
            shift_windows: false,
            seed: 1,
            val_fraction: 0.1,
            eval_every: 200,
            save_every: 200,
            max_steps: None,
            epochs: None,
            max_minutes: None,
            name: "model".into(),
            out: PathBuf::from("checkpoints"),
        }
    }
}

impl TrainConfig {
    /// Checks every value before any work starts.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.batch > 1 << 16 {
            return Err(Error::config(
                "batch",
                format!("{} is outside 1..=65536", self.batch),
            ));
        }
        if self.seq == 0 || self.seq > 1 << 16 {
            return Err(Error::config(
                "seq",
                format!("{} is outside 1..=65536", self.seq),
            ));
        }
        if self.batch * self.seq > MAX_WINDOW_TOKENS {
            return Err(Error::config(
                "batch",
                format!(
                    "batch × seq = {} is more than {MAX_WINDOW_TOKENS} tokens per window",
                    self.batch * self.seq
                ),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config(
                "lr",
                format!("{} must be a positive number", self.lr),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config("min-lr-ratio", "must be in [0, 1]"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::config("weight-decay", "must be >= 0"));
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return Err(Error::config("clip", "must be >= 0 (0 disables clipping)"));
        }
        if !(-10.0..=10.0).contains(&self.forget_bias) {
            return Err(Error::config(
                "forget-bias",
                format!("{} is outside [-10, 10]", self.forget_bias),
            ));
        }
        if self.sampled_softmax == 1 || self.sampled_softmax > MAX_SAMPLED {
            return Err(Error::config(
                "sampled-softmax",
                format!(
                    "{} candidates: give 0 (off) or 2 to {MAX_SAMPLED}",
                    self.sampled_softmax
                ),
            ));
        }
        for (name, v) in [
            ("dropout-input", self.dropout_input),
            ("dropout-embed", self.dropout_embed),
            ("weight-drop", self.weight_drop),
            ("ema", self.ema),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::config(name, format!("{v} is outside [0, 1)")));
            }
        }
        if !(0.0..0.9).contains(&self.val_fraction) {
            return Err(Error::config(
                "val-fraction",
                format!("{} is outside [0, 0.9)", self.val_fraction),
            ));
        }
        if self.max_steps == Some(0) {
            return Err(Error::config("max-steps", "must be at least 1"));
        }
        if let Some(e) = self.epochs {
            if !(e.is_finite() && e > 0.0) {
                return Err(Error::config("epochs", "must be a positive number"));
            }
        }
        if let Some(m) = self.max_minutes {
            if !(m.is_finite() && m > 0.0) {
                return Err(Error::config("max-minutes", "must be a positive number"));
            }
        }
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return Err(Error::config(
                "name",
                "must be a non-empty file name without slashes",
            ));
        }
        Ok(())
    }

    pub(crate) fn schedule(&self) -> LrSchedule {
        LrSchedule {
            base: self.lr,
            warmup_steps: self.warmup_steps,
            schedule: self.schedule,
            min_lr_ratio: self.min_lr_ratio,
        }
    }

    /// Path of the `latest` or `best` checkpoint.
    pub fn checkpoint_path(&self, which: &str) -> PathBuf {
        self.out.join(format!("{}-{which}.safetensors", self.name))
    }

    /// Path of the metrics log (JSON lines).
    pub fn metrics_path(&self) -> PathBuf {
        self.out.join(format!("{}-metrics.jsonl", self.name))
    }
}

/// One validation point of the loss history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Optimizer step.
    pub step: u64,
    /// Mean training loss since the previous point (nats/token).
    pub train_loss: f64,
    /// Validation loss (nats/token), if there is a validation split.
    pub val_loss: Option<f64>,
}

/// Where training stands; saved in checkpoints so a resume continues exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: u64,
    /// Completed epochs.
    pub epoch: u64,
    /// Next window of the current epoch (the data cursor).
    pub window: usize,
    /// Training time so far, all runs together, in seconds.
    pub elapsed_secs: f64,
    /// Tokens trained on.
    pub tokens_seen: u64,
    /// Best validation loss so far.
    pub best_val: Option<f64>,
    /// Loss history at every validation.
    pub history: Vec<HistoryPoint>,
    /// Multiplier on the scheduled learning rate (lowered after a non-finite loss).
    pub lr_scale: f32,
    /// Dropout RNG.
    pub rng: Pcg32,
    /// Sum and count of training losses since the last history point.
    pub loss_acc: (f64, u64),
}

impl Progress {
    pub(crate) fn new(seed: u64) -> Self {
        Progress {
            step: 0,
            epoch: 0,
            window: 0,
            elapsed_secs: 0.0,
            tokens_seen: 0,
            best_val: None,
            history: Vec::new(),
            lr_scale: 1.0,
            rng: Pcg32::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            loss_acc: (0.0, 0),
        }
    }
}
