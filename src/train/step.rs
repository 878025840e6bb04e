//! One optimizer step on one window, the one step of training: shared by the trainer and
//! `quill bench`, so the benchmark times what training does.
//!
//! The step: DropConnect masks into `W_h` (once per step), the sampled softmax's candidates
//! (with `TrainConfig::sampled_softmax`), forward and backward of the regularised window, raw
//! weights back, global-norm clipping, Adam(W), and the update of the weight average.

use rand::RngCore;

use super::config::TrainConfig;
use super::optim::{average_decay, clip_grad_norm, update_average, Adam};
use crate::error::Result;
use crate::nn::dropout::{Dropout, WeightDrop};
use crate::nn::model::{LstmState, Model, Params, Workspace};
use crate::nn::sampled::{Candidates, Proposal};

/// The buffers and optimizer state a step works with.
#[derive(Clone, Debug)]
pub struct Stepper {
    /// Activations and workspaces of the window.
    pub ws: Workspace<f32>,
    /// Gradients of the last step.
    pub grads: Params<f32>,
    /// Optimizer state.
    pub adam: Adam,
    /// Exponential moving average of the weights (with `TrainConfig::ema` > 0).
    pub average: Option<Params<f32>>,
    weight_drop: WeightDrop<f32>,
    /// The sampled softmax's proposal and this step's candidates.
    sampled: Option<(Proposal, Vec<u32>)>,
}

impl Stepper {
    /// A stepper for `model`, with the optimizer state and weight average to continue from;
    /// a missing average starts as a copy of the weights when `config.ema` > 0. With
    /// `config.sampled_softmax` > 0, `counts` (how often each of the V entries occurs in the
    /// training tokens) make the candidates' proposal ([`Proposal::from_counts`]).
    pub fn new(
        model: &Model<f32>,
        config: &TrainConfig,
        adam: Adam,
        average: Option<Params<f32>>,
        counts: impl FnOnce() -> Vec<u64>,
    ) -> Result<Self> {
        let sampled = match config.sampled_softmax {
            0 => None,
            n => {
                let mut c = counts();
                c.resize(model.config.vocab, 0);
                Some((Proposal::from_counts(&c, n)?, Vec::with_capacity(n)))
            }
        };
        let average = (config.ema > 0.0).then(|| average.unwrap_or_else(|| model.params.clone()));
        Ok(Stepper {
            ws: Workspace::default(),
            grads: Params::zeros(&model.config),
            adam,
            average,
            weight_drop: WeightDrop::default(),
            sampled,
        })
    }

    /// The dropout of a training window of `model` under `config`.
    pub fn dropout(model: &Model<f32>, config: &TrainConfig) -> Dropout {
        Dropout {
            output: model.config.dropout,
            input: config.dropout_input,
            embed: config.dropout_embed,
            shape: config.dropout_mask,
        }
    }

    /// One step on the window `x` → `y` (T·B each, time-major) with learning rate `lr`:
    /// returns the window's mean loss and the gradient norm before clipping. A non-finite loss
    /// or norm leaves the weights, the optimizer and the average as they were.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        model: &mut Model<f32>,
        config: &TrainConfig,
        x: &[u32],
        y: &[u32],
        state: &mut LstmState<f32>,
        rng: &mut dyn RngCore,
        lr: f32,
    ) -> (f64, f64) {
        let plan = Self::dropout(model, config);
        self.grads.zero();
        if config.weight_drop > 0.0 {
            self.weight_drop
                .apply(&mut model.params.lstm, config.weight_drop, rng);
        }
        let cand = self.sampled.as_mut().map(|(p, ids)| {
            p.draw(rng, ids);
            Candidates {
                ids,
                log_expected: p.log_expected(),
            }
        });
        let loss = model.forward_backward(
            &mut self.ws,
            &mut self.grads,
            x,
            y,
            state,
            Some((&plan, rng)),
            cand,
        );
        if config.weight_drop > 0.0 {
            self.weight_drop
                .restore(&mut model.params.lstm, &mut self.grads.lstm);
        }
        let norm = clip_grad_norm(&mut self.grads, config.clip);
        if loss.is_finite() && norm.is_finite() {
            self.adam.step(&mut model.params, &self.grads, lr);
            if let Some(avg) = self.average.as_mut() {
                update_average(avg, &model.params, average_decay(config.ema, self.adam.t));
            }
        }
        (loss, norm)
    }
}
