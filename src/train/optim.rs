//! Adam(W) with bias correction, global-norm gradient clipping and the learning-rate schedule.

use serde::{Deserialize, Serialize};

use crate::nn::model::{ModelConfig, Params};
use crate::nn::pool;

/// Adam hyper-parameters. `weight_decay > 0` gives AdamW (decoupled decay, applied to every
/// parameter as `p -= lr · wd · p`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// β1, the first-moment decay.
    pub beta1: f32,
    /// β2, the second-moment decay.
    pub beta2: f32,
    /// ε in the denominator.
    pub eps: f32,
    /// Decoupled weight decay (AdamW); 0 is plain Adam.
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adam state: first and second moments shaped like the parameters, and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    /// Hyper-parameters.
    pub config: AdamConfig,
    /// First moments.
    pub m: Params<f32>,
    /// Second moments.
    pub v: Params<f32>,
    /// Number of updates applied so far (for bias correction).
    pub t: u64,
}

impl Adam {
    /// Fresh state for a model.
    pub fn new(config: AdamConfig, model: &ModelConfig) -> Self {
        Adam {
            config,
            m: Params::zeros(model),
            v: Params::zeros(model),
            t: 0,
        }
    }

    /// One update with learning rate `lr`:
    /// m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  p ← p − lr (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε).
    pub fn step(&mut self, params: &mut Params<f32>, grads: &Params<f32>, lr: f32) {
        self.t += 1;
        let AdamConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let bc1 = 1.0 - (beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (beta2 as f64).powi(self.t as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let decay = lr * weight_decay;
        let mut chunks: Vec<AdamChunk<'_>> = params
            .slices_mut()
            .into_iter()
            .zip(grads.slices())
            .zip(self.m.slices_mut())
            .zip(self.v.slices_mut())
            .flat_map(|(((p, g), m), v)| {
                p.chunks_mut(CHUNK)
                    .zip(g.chunks(CHUNK))
                    .zip(m.chunks_mut(CHUNK))
                    .zip(v.chunks_mut(CHUNK))
                    .map(|(((p, g), m), v)| (p, g, m, v))
            })
            .collect();
        // Element-wise, so the result does not depend on how chunks meet threads.
        pool::for_each_mut(&mut chunks, &|(p, g, m, v)| {
            for (((p, &g), m), v) in p
                .iter_mut()
                .zip(g.iter())
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                if decay != 0.0 {
                    *p -= decay * *p;
                }
                *p -= step_size * *m / (v.sqrt() * inv_sqrt_bc2 + eps);
            }
        });
    }
}

/// Elements per task of the optimizer and clipping passes (fixed, so sums are grouped the
/// same way whatever the thread count).
const CHUNK: usize = 1 << 15;

/// One chunk of (parameters, gradients, first moments, second moments).
type AdamChunk<'a> = (&'a mut [f32], &'a [f32], &'a mut [f32], &'a mut [f32]);

/// Σ g² in f64 over one chunk, in eight interleaved partial sums (vectorisable, and a fixed
/// order).
fn sum_squares(g: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut it = g.chunks_exact(8);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += (x as f64) * (x as f64);
        }
    }
    for (a, &x) in acc.iter_mut().zip(it.remainder()) {
        *a += (x as f64) * (x as f64);
    }
    acc.iter().sum()
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (as PyTorch's
/// `clip_grad_norm_`). Returns the norm before clipping; a non-finite norm leaves the
/// gradients untouched (the caller treats it as a failed step).
pub fn clip_grad_norm(grads: &mut Params<f32>, max_norm: f32) -> f64 {
    // (chunk, its Σ g²)
    let mut chunks: Vec<(&mut [f32], f64)> = grads
        .slices_mut()
        .into_iter()
        .flat_map(|s| s.chunks_mut(CHUNK).map(|c| (c, 0.0)))
        .collect();
    pool::for_each_mut(&mut chunks, &|(c, sum)| *sum = sum_squares(c));
    // Chunk sums are added in order: the norm is the same on any number of threads.
    let norm = chunks.iter().map(|(_, sum)| sum).sum::<f64>().sqrt();
    if norm.is_finite() && max_norm > 0.0 && norm > max_norm as f64 {
        let scale = (max_norm as f64 / (norm + 1e-6)) as f32;
        pool::for_each_mut(&mut chunks, &|(c, _)| {
            c.iter_mut().for_each(|g| *g *= scale)
        });
    }
    norm
}

/// The decay of the weight average after `t` updates: `min(decay, (1 + t) / (10 + t))`, so
/// the first updates are not held back by the initial weights.
pub fn average_decay(decay: f32, t: u64) -> f32 {
    decay.min(((1 + t) as f64 / (10 + t) as f64) as f32)
}

/// One update of an exponential moving average of the weights (Polyak averaging, used for
/// evaluation and saved as the model): `avg ← d · avg + (1 − d) · params`.
pub fn update_average(avg: &mut Params<f32>, params: &Params<f32>, d: f32) {
    let mut chunks: Vec<(&mut [f32], &[f32])> = avg
        .slices_mut()
        .into_iter()
        .zip(params.slices())
        .flat_map(|(a, p)| a.chunks_mut(CHUNK).zip(p.chunks(CHUNK)))
        .collect();
    pool::for_each_mut(&mut chunks, &|(a, p)| {
        for (a, &p) in a.iter_mut().zip(p.iter()) {
            *a += (1.0 - d) * (p - *a);
        }
    });
}

/// Shape of the learning-rate decay after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Constant after warm-up.
    Constant,
    /// Cosine from the base rate down to `min_lr_ratio ×` base as training progresses.
    #[default]
    Cosine,
}

/// Learning rate as a function of the step and of training progress in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub base: f32,
    /// Linear warm-up length in steps.
    pub warmup_steps: u64,
    /// Decay shape.
    pub schedule: Schedule,
    /// Final rate as a fraction of `base` (cosine).
    pub min_lr_ratio: f32,
}

impl LrSchedule {
    /// The rate at `step` (0-based) when a fraction `progress` of the run is done.
    /// Warm-up: `base · (step+1) / warmup_steps`; then cosine:
    /// `base · (r + (1−r) · ½ (1 + cos(π · progress)))` with r = `min_lr_ratio`.
    pub fn lr(&self, step: u64, progress: f64) -> f32 {
        let warm = if step < self.warmup_steps {
            (step + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let decay = match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let r = self.min_lr_ratio as f64;
                let p = progress.clamp(0.0, 1.0);
                r + (1.0 - r) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        };
        (self.base as f64 * warm * decay) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;

    #[test]
    fn the_weight_average_warms_up_then_decays_at_its_rate() {
        assert_eq!(average_decay(0.995, 0), 0.1);
        assert_eq!(average_decay(0.995, 80), 0.9);
        assert_eq!(average_decay(0.995, 100_000), 0.995);
        let cfg = tiny();
        let mut avg = Params::<f32>::zeros(&cfg);
        let mut p = Params::<f32>::zeros(&cfg);
        p.out_b.fill(2.0);
        update_average(&mut avg, &p, 0.75);
        // avg ← 0.75 · 0 + 0.25 · 2
        assert!(avg.out_b.iter().all(|&v| v == 0.5));
        assert!(avg.embed.iter().all(|&v| v == 0.0));
    }

    fn tiny() -> ModelConfig {
        ModelConfig {
            vocab: 3,
            embed: 2,
            hidden: 2,
            layers: 1,
            dropout: 0.0,
            tie_weights: false,
        }
    }

    #[test]
    fn first_adam_step_moves_each_weight_by_lr() {
        // With bias correction the first update is lr · g/|g| (up to ε) for every element.
        let cfg = tiny();
        let mut p = Params::<f32>::zeros(&cfg);
        let mut g = Params::<f32>::zeros(&cfg);
        g.out_b = Array1::from(vec![0.5, -2.0, 0.0]);
        let mut adam = Adam::new(AdamConfig::default(), &cfg);
        adam.step(&mut p, &g, 0.01);
        assert!((p.out_b[0] + 0.01).abs() < 1e-6);
        assert!((p.out_b[1] - 0.01).abs() < 1e-6);
        assert_eq!(p.out_b[2], 0.0);
        assert_eq!(adam.t, 1);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let cfg = tiny();
        let mut g = Params::<f32>::zeros(&cfg);
        g.out_b = Array1::from(vec![3.0, 4.0, 0.0]);
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-9);
        let after: f32 = g.out_b.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((after - 1.0).abs() < 1e-5);
        // below the limit nothing changes
        let n2 = clip_grad_norm(&mut g, 10.0);
        assert!((n2 - 1.0).abs() < 1e-5);
    }

    #[test]
    fn chunked_parallel_passes_match_plain_loops() {
        // > CHUNK elements in several tensors, so chunks cross tensor ends and threads.
        let cfg = ModelConfig {
            vocab: 300,
            embed: 64,
            hidden: 96,
            layers: 2,
            dropout: 0.0,
            tie_weights: false,
        };
        let mut g = Params::<f32>::zeros(&cfg);
        let mut k = 0u32;
        for s in g.slices_mut() {
            for x in s.iter_mut() {
                k = k.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *x = (k >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            }
        }
        let flat: Vec<f32> = g.slices().iter().flat_map(|s| s.iter().copied()).collect();
        assert!(flat.len() > 3 * CHUNK);
        let want = flat
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        let mut clipped = g.clone();
        let norm = clip_grad_norm(&mut clipped, 1.0);
        assert!((norm - want).abs() < 1e-9 * want, "{norm} vs {want}");
        let scale = (1.0 / (norm + 1e-6)) as f32;
        let got: Vec<f32> = clipped
            .slices()
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect();
        assert!(got.iter().zip(&flat).all(|(&a, &b)| a == b * scale));

        // Two Adam steps against the formula written out per element.
        let mut p = Params::<f32>::zeros(&cfg);
        let mut adam = Adam::new(AdamConfig::default(), &cfg);
        adam.step(&mut p, &g, 0.01);
        adam.step(&mut p, &g, 0.01);
        let c = AdamConfig::default();
        let got: Vec<f32> = p.slices().iter().flat_map(|s| s.iter().copied()).collect();
        for (&pv, &gv) in got.iter().zip(&flat) {
            let (mut m, mut v, mut q) = (0f32, 0f32, 0f32);
            for t in 1..=2 {
                m = c.beta1 * m + (1.0 - c.beta1) * gv;
                v = c.beta2 * v + (1.0 - c.beta2) * gv * gv;
                let bc1 = 1.0 - (c.beta1 as f64).powi(t);
                let bc2 = 1.0 - (c.beta2 as f64).powi(t);
                q -= (0.01f32 as f64 / bc1) as f32 * m
                    / (v.sqrt() * (1.0 / bc2.sqrt()) as f32 + c.eps);
            }
            assert_eq!(pv, q);
        }
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = LrSchedule {
            base: 1.0,
            warmup_steps: 10,
            schedule: Schedule::Cosine,
            min_lr_ratio: 0.1,
        };
        assert!((s.lr(0, 0.0) - 0.1).abs() < 1e-6);
        assert!((s.lr(9, 0.0) - 1.0).abs() < 1e-6);
        assert!((s.lr(100, 0.5) - 0.55).abs() < 1e-6);
        assert!((s.lr(100, 1.0) - 0.1).abs() < 1e-6);
        assert!(s.lr(100, 0.3) > s.lr(100, 0.6));
    }
}
