//! The sampling controls beyond temperature, top-k and top-p, as flags shared by `sample`
//! (lists sweep with `--out`) and `tui` (one value each).

use clap::Args;
use quill::generate::batch::Sweep;
use quill::generate::sampler::DEFAULT_REPETITION_WINDOW;
use quill::generate::SamplingParams;

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Keep only tokens at least MIN_P times as probable as the most probable one (0: off).
    /// List with --out.
    #[arg(long, value_delimiter = ',', default_value = "0", value_name = "MIN_P")]
    pub min_p: Vec<f32>,
    /// Repetition penalty over the last --repetition-window tokens of prompt and text: their
    /// positive logits are divided by it, negative ones multiplied (1: off; 1.1-1.3 is
    /// typical). List with --out.
    #[arg(long, value_delimiter = ',', default_value = "1", value_name = "R")]
    pub repetition_penalty: Vec<f32>,
    /// Tokens the repetition penalty looks back over.
    #[arg(long, default_value_t = DEFAULT_REPETITION_WINDOW, value_name = "N")]
    pub repetition_window: usize,
    /// Lower each token's logit by F times how often it was generated so far (-2 to 2; 0:
    /// off). List with --out.
    #[arg(long, value_delimiter = ',', default_value = "0", value_name = "F")]
    pub frequency_penalty: Vec<f32>,
    /// Lower the logit of every token generated so far by P (-2 to 2; 0: off). List with --out.
    #[arg(long, value_delimiter = ',', default_value = "0", value_name = "P")]
    pub presence_penalty: Vec<f32>,
    /// Byte-level BPE models: never sample a token that would break UTF-8, so the text has no
    /// U+FFFD replacement characters (char and word models are always valid). On by default;
    /// `--valid-utf8 false` samples from the model's whole distribution.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub valid_utf8: bool,
}

impl ControlArgs {
    /// Whether a control was given several values.
    pub fn is_sweep(&self) -> bool {
        [
            self.min_p.len(),
            self.repetition_penalty.len(),
            self.frequency_penalty.len(),
            self.presence_penalty.len(),
        ]
        .iter()
        .any(|&n| n > 1)
    }

    /// `p` with the first value of each control.
    pub fn apply(&self, p: SamplingParams) -> SamplingParams {
        let first = |v: &[f32], d: f32| v.first().copied().unwrap_or(d);
        SamplingParams {
            min_p: first(&self.min_p, p.min_p),
            repetition_penalty: first(&self.repetition_penalty, p.repetition_penalty),
            repetition_window: self.repetition_window,
            frequency_penalty: first(&self.frequency_penalty, p.frequency_penalty),
            presence_penalty: first(&self.presence_penalty, p.presence_penalty),
            valid_utf8: self.valid_utf8,
            ..p
        }
    }

    /// `sweep` sweeping these controls too.
    pub fn sweep(&self, sweep: Sweep) -> Sweep {
        Sweep {
            min_p: self.min_p.clone(),
            repetition_penalty: self.repetition_penalty.clone(),
            frequency_penalty: self.frequency_penalty.clone(),
            presence_penalty: self.presence_penalty.clone(),
            fixed: self.apply(sweep.fixed),
            ..sweep
        }
    }
}
