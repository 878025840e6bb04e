//! The time-budget recipe of `quill train --minutes N`: model size, batch, regularisation and
//! weight averaging chosen from the tokenizer, the size of the training split and the minutes,
//! so that a user who knows none of the tricks gets the best text the budget allows.
//!
//! The choice goes by how many passes over the training split the budget allows a 2 × 512
//! model (`epochs512`, from its measured throughput on the project's 2-core machine): little
//! data for the time means many passes, which a larger dropout and DropConnect keep from
//! over-fitting; too little time for the data means a smaller, faster model. The rows and the
//! runs that chose them are in the README ("Results on this machine").

use crate::nn::dropout::MaskShape;
use crate::tokenizer::TokenizerKind;
use crate::train::config::TrainConfig;

/// Training tokens per second of a char model of 2 × 512 at B = 64, T = 64 on the project's
/// 2-core machine (`quill train`, validation included), the yardstick of `epochs512`.
pub const CHAR_512_TOKENS_PER_S: f64 = 8_800.0;
/// The same for a word or BPE model of 2 × 400, tied, V = 10 k, B = 32, T = 35.
pub const WORD_400_TOKENS_PER_S: f64 = 4_000.0;

/// What the budget chooses. Flags given on the command line take precedence, field by field.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// LSTM layers L.
    pub layers: usize,
    /// Hidden size H.
    pub hidden: usize,
    /// Embedding size E. For char models E = H: the embedding folds into layer 0's input
    /// projection, so a wide one costs nothing per token, and it learns much faster than a
    /// narrow one (2 × 512 on tiny-shakespeare after 250 steps: 1.761 nats/char with E = 512,
    /// 1.936 with E = 64).
    pub embed: usize,
    /// Share the embedding with the output layer.
    pub tie_weights: bool,
    /// Streams B.
    pub batch: usize,
    /// Window length T.
    pub seq: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Dropout on every layer's output.
    pub dropout: f32,
    /// Dropout on the embedded inputs.
    pub dropout_input: f32,
    /// Embedding dropout (whole tokens).
    pub dropout_embed: f32,
    /// DropConnect on `W_h`.
    pub weight_drop: f32,
    /// Shape of the activation masks.
    pub dropout_mask: MaskShape,
    /// Decay of the weight average.
    pub ema: f32,
    /// Initial forget-gate bias. 0 (PyTorch's initialisation) learns faster per step than the
    /// usual 1: 2 × 512 on tiny-shakespeare after 200 steps, 1.7476 nats/char against
    /// 1.7971, and 1.4270 against 1.4491 after 20 minutes (README).
    pub forget_bias: f32,
    /// Each epoch's windows at their own phase (`--shift-windows`).
    pub shift_windows: bool,
}

impl Recipe {
    /// `config` with the recipe's training choices: B, T, learning rate, regularisation,
    /// weight average and forget bias (the model's own choices are in the other fields).
    pub fn train_config(&self, config: TrainConfig) -> TrainConfig {
        TrainConfig {
            batch: self.batch,
            seq: self.seq,
            lr: self.lr,
            dropout_mask: self.dropout_mask,
            dropout_input: self.dropout_input,
            dropout_embed: self.dropout_embed,
            weight_drop: self.weight_drop,
            ema: self.ema,
            forget_bias: self.forget_bias,
            shift_windows: self.shift_windows,
            ..config
        }
    }
}

/// Passes over `train_tokens` that `minutes` allow at `tokens_per_s`.
pub fn epochs_at(minutes: f64, tokens_per_s: f64, train_tokens: usize) -> f64 {
    minutes * 60.0 * tokens_per_s / train_tokens.max(1) as f64
}

/// A limit of the run the recipe is chosen for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// Minutes of training.
    Minutes(f64),
    /// Passes over the training split.
    Epochs(f64),
    /// Optimizer steps (of the recipe's B × T tokens).
    Steps(u64),
}

/// The recipe for a run on `train_tokens` tokens of a `kind` tokenizer that stops at the
/// first of `limits` (none: [`Limit::Minutes`] of 8). The batch is made smaller for a
/// training split of fewer than 16 windows of B × T tokens.
pub fn recipe(kind: TokenizerKind, train_tokens: usize, limits: &[Limit]) -> Recipe {
    let (rate, tokens_per_step) = match kind {
        TokenizerKind::Char => (CHAR_512_TOKENS_PER_S, 64.0 * 64.0),
        TokenizerKind::Word | TokenizerKind::Bpe => (WORD_400_TOKENS_PER_S, 32.0 * 35.0),
    };
    let passes = |l: &Limit| match *l {
        Limit::Minutes(m) => epochs_at(m, rate, train_tokens),
        Limit::Epochs(e) => e,
        Limit::Steps(s) => s as f64 * tokens_per_step / train_tokens.max(1) as f64,
    };
    let epochs = if limits.is_empty() {
        passes(&Limit::Minutes(8.0))
    } else {
        limits.iter().map(passes).fold(f64::INFINITY, f64::min)
    };
    let mut r = match kind {
        TokenizerKind::Char => char_recipe(epochs),
        TokenizerKind::Word | TokenizerKind::Bpe => word_recipe(epochs),
    };
    r.batch = r.batch.min((train_tokens / (r.seq * 16)).max(1));
    r
}

/// Char models by the passes a 2 × 512 model would make.
fn char_recipe(epochs512: f64) -> Recipe {
    let base = Recipe {
        layers: 2,
        hidden: 512,
        embed: 512,
        tie_weights: false,
        batch: 64,
        seq: 64,
        lr: 3e-3,
        dropout: 0.25,
        dropout_input: 0.0,
        dropout_embed: 0.0,
        weight_drop: 0.25,
        dropout_mask: MaskShape::Stream,
        ema: 0.995,
        forget_bias: 0.0,
        shift_windows: false,
    };
    // A 2 × 512 model would see the data under 6 times: 2 × 256 at B 32 sees it 3.5× as
    // often and ends lower. Measured on the default 8-minute run of the bundled corpus
    // (README): this row 1.4954; 2 × 256, E 256, B 64, locked 0.25, weight drop 0.25: 1.5132;
    // 2 × 512 as the next row with 0.2 / 0.2: 1.5302. Forget bias 0 (from the base row):
    // 1.4438, against 1.4954 with 1.
    let small = Recipe {
        hidden: 256,
        embed: 64,
        batch: 32,
        lr: 2e-3,
        dropout: 0.2,
        weight_drop: 0.0,
        dropout_mask: MaskShape::Element,
        ..base
    };
    if epochs512 < 2.0 {
        // Too little time for the data: lightly regularised.
        Recipe {
            dropout: 0.1,
            ..small
        }
    } else if epochs512 < 6.0 {
        small
    } else if epochs512 < 15.0 {
        base
    } else {
        Recipe {
            dropout: 0.35,
            weight_drop: 0.35,
            ..base
        }
    }
}

/// Word and BPE models (large vocabularies: tied weights, embedding dropout).
fn word_recipe(epochs400: f64) -> Recipe {
    let base = Recipe {
        layers: 2,
        hidden: 400,
        embed: 400,
        tie_weights: true,
        batch: 32,
        seq: 35,
        lr: 3e-3,
        dropout: 0.25,
        dropout_input: 0.2,
        dropout_embed: 0.05,
        weight_drop: 0.1,
        dropout_mask: MaskShape::Stream,
        ema: 0.995,
        forget_bias: 0.0,
        shift_windows: false,
    };
    if epochs400 < 2.0 {
        Recipe {
            hidden: 256,
            embed: 256,
            dropout: 0.1,
            dropout_input: 0.1,
            dropout_embed: 0.0,
            weight_drop: 0.0,
            ..base
        }
    } else if epochs400 < 6.0 {
        base
    } else if epochs400 < 15.0 {
        Recipe {
            dropout: 0.4,
            dropout_input: 0.3,
            dropout_embed: 0.1,
            weight_drop: 0.3,
            ..base
        }
    } else {
        Recipe {
            dropout: 0.5,
            dropout_input: 0.4,
            dropout_embed: 0.1,
            weight_drop: 0.4,
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_passes_get_more_regularisation_and_less_time_a_smaller_model() {
        let ts = 1_003_854; // tiny-shakespeare's training split, chars
        let at = |m: f64| recipe(TokenizerKind::Char, ts, &[Limit::Minutes(m)]);
        let (r20, r60, r1) = (at(20.0), at(60.0), at(1.0));
        assert_eq!(r20.hidden, 512);
        let bundled = recipe(TokenizerKind::Char, 891_017, &[Limit::Minutes(8.0)]);
        assert_eq!(
            (bundled.hidden, bundled.batch, bundled.dropout),
            (256, 32, 0.2)
        );
        // The measured rows start the forget gate at 0 (README: 1.4438 against 1.4954 for
        // the bundled corpus, 1.4270 against 1.4491 for tiny-shakespeare in 20 minutes).
        assert_eq!((bundled.forget_bias, r20.forget_bias), (0.0, 0.0));
        // A recipe fills its own fields of a training configuration and leaves the rest.
        let d = TrainConfig::default();
        let c = r20.train_config(d.clone());
        assert_eq!(
            (
                c.batch,
                c.lr,
                c.dropout_mask,
                c.weight_drop,
                c.ema,
                c.forget_bias
            ),
            (64, 3e-3, MaskShape::Stream, 0.25, 0.995, 0.0)
        );
        assert_eq!(
            (c.clip, c.seed, c.warmup_steps),
            (d.clip, d.seed, d.warmup_steps)
        );
        assert!(r60.dropout > r20.dropout && r60.weight_drop > r20.weight_drop);
        assert!(r1.hidden < r20.hidden && r1.dropout < r20.dropout);
        let w = recipe(TokenizerKind::Word, 800_000, &[Limit::Minutes(15.0)]);
        assert!(w.tie_weights && w.embed == w.hidden && w.dropout_embed > 0.0);
        // Every recipe is a valid configuration.
        for r in [r20, r60, r1, w] {
            for p in [
                r.dropout,
                r.dropout_input,
                r.dropout_embed,
                r.weight_drop,
                r.ema,
            ] {
                assert!((0.0..1.0).contains(&p));
            }
        }
    }

    #[test]
    fn the_strictest_limit_chooses_and_small_corpora_get_fewer_streams() {
        let ts = 1_003_854;
        let long = recipe(TokenizerKind::Char, ts, &[Limit::Minutes(60.0)]);
        let short = recipe(
            TokenizerKind::Char,
            ts,
            &[Limit::Minutes(60.0), Limit::Epochs(1.0)],
        );
        assert_eq!(
            short,
            recipe(TokenizerKind::Char, ts, &[Limit::Epochs(1.0)])
        );
        assert!(short.hidden < long.hidden);
        assert_eq!(
            recipe(TokenizerKind::Char, ts, &[]),
            recipe(TokenizerKind::Char, ts, &[Limit::Minutes(8.0)])
        );
        let few = |tokens: usize| recipe(TokenizerKind::Char, tokens, &[Limit::Epochs(10.0)]);
        assert_eq!(few(64 * 64 * 16).batch, 64);
        assert_eq!(few(64 * 16 * 5).batch, 5);
        assert_eq!(few(100).batch, 1);
    }

    #[test]
    fn epochs_scale_with_time_and_data() {
        assert_eq!(epochs_at(10.0, 1000.0, 60_000), 10.0);
        assert_eq!(epochs_at(10.0, 1000.0, 0), 600_000.0);
    }
}
