//! The language model: embedding (V→E) → L LSTM layers → dropout → linear (H→V) → softmax.
//!
//! Dropout (inverted) is applied to the output of every LSTM layer, i.e. between layers and
//! before the output layer, only while training.

use std::sync::Arc;

use ndarray::{Array1, Array2, ArrayView2};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::dropout::{dropout_backward, dropout_forward};
use crate::nn::embedding::{embedding_backward, embedding_forward};
use crate::nn::gemm::{gemm, gemm_cols_ptr, Init, Mat, MatMut, PackedB, NR};
use crate::nn::linear::{
    linear_forward_packed, linear_weight_grad, loss_backward_packed, LinearPacked,
};
use crate::nn::loss::softmax_xent;
use crate::nn::lstm::{
    cell_step, cell_step_units, fold_embedding, lstm_backward_input, lstm_forward_input, LstmCache,
    LstmInput, LstmPacked, LstmParams, SyncPtr,
};
use crate::nn::{pool, Float};

/// Largest sizes a model may declare; guards allocations driven by untrusted checkpoints.
const MAX_VOCAB: usize = 1 << 21;
const MAX_WIDTH: usize = 1 << 14;
const MAX_LAYERS: usize = 64;

/// Architecture of a model. Saved in every checkpoint; it is what rebuilds the model on load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Vocabulary size V.
    pub vocab: usize,
    /// Embedding size E.
    pub embed: usize,
    /// Hidden size H of every layer.
    pub hidden: usize,
    /// Number of LSTM layers L.
    pub layers: usize,
    /// Dropout probability on each layer's output while training, in [0, 1).
    pub dropout: f32,
    /// Share the embedding table with the output layer's weight (needs E = H).
    #[serde(default)]
    pub tie_weights: bool,
}

impl ModelConfig {
    /// Checks every field; run before any allocation.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &'static str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(Error::config(name, format!("{v} is outside 1..={max}")))
            } else {
                Ok(())
            }
        };
        check("vocab", self.vocab, MAX_VOCAB)?;
        check("embed", self.embed, MAX_WIDTH)?;
        check("hidden", self.hidden, MAX_WIDTH)?;
        check("layers", self.layers, MAX_LAYERS)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(
                "dropout",
                format!("{} is outside [0, 1)", self.dropout),
            ));
        }
        if self.tie_weights && self.embed != self.hidden {
            return Err(Error::config(
                "tie-weights",
                format!(
                    "tied weights need embed = hidden, got embed {} and hidden {}",
                    self.embed, self.hidden
                ),
            ));
        }
        Ok(())
    }

    /// Input size D of layer `l`.
    pub fn input_size(&self, l: usize) -> usize {
        if l == 0 {
            self.embed
        } else {
            self.hidden
        }
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        let (v, e, h) = (self.vocab, self.embed, self.hidden);
        let lstm: usize = (0..self.layers)
            .map(|l| (self.input_size(l) + h) * 4 * h + 4 * h)
            .sum();
        let out_w = if self.tie_weights { 0 } else { v * h };
        v * e + lstm + out_w + v
    }
}

/// All parameters of a model (also the layout of its gradients and Adam moments).
#[derive(Clone, Debug, PartialEq)]
pub struct Params<F> {
    /// Embedding table, (V, E).
    pub embed: Array2<F>,
    /// One entry per layer.
    pub lstm: Vec<LstmParams<F>>,
    /// Output weight, (V, H), PyTorch's `nn.Linear` layout; `None` when tied to `embed`.
    pub out_w: Option<Array2<F>>,
    /// Output bias, (V).
    pub out_b: Array1<F>,
}

impl<F: Float> Params<F> {
    /// All zeros (gradients, moments).
    pub fn zeros(cfg: &ModelConfig) -> Self {
        Params {
            embed: Array2::zeros((cfg.vocab, cfg.embed)),
            lstm: (0..cfg.layers)
                .map(|l| LstmParams::zeros(cfg.input_size(l), cfg.hidden))
                .collect(),
            out_w: (!cfg.tie_weights).then(|| Array2::zeros((cfg.vocab, cfg.hidden))),
            out_b: Array1::zeros(cfg.vocab),
        }
    }

    /// Initialisation: embedding N(0, 1) (PyTorch's `nn.Embedding`), or U(−0.1, 0.1) when it
    /// is tied to the output layer (PyTorch's word_language_model); LSTM as
    /// [`LstmParams::init`] (U(±1/√H), forget bias 1); output weight U(±1/√H) and bias 0
    /// (PyTorch's `nn.Linear` bound).
    pub fn init(cfg: &ModelConfig, rng: &mut impl Rng) -> Self {
        let mut p = Self::zeros(cfg);
        if cfg.tie_weights {
            p.embed.mapv_inplace(|_| F::c(rng.random_range(-0.1..0.1)));
        } else {
            p.embed.mapv_inplace(|_| F::c(standard_normal(rng)));
        }
        for (l, layer) in p.lstm.iter_mut().enumerate() {
            *layer = LstmParams::init(cfg.input_size(l), cfg.hidden, rng);
        }
        let k = 1.0 / (cfg.hidden as f64).sqrt();
        if let Some(w) = p.out_w.as_mut() {
            w.mapv_inplace(|_| F::c(rng.random_range(-k..k)));
        }
        p
    }

    /// The output layer's weight (V, H): its own, or the embedding when tied.
    pub fn out_weight(&self) -> &Array2<F> {
        self.out_w.as_ref().unwrap_or(&self.embed)
    }

    /// Every tensor as a flat slice, in a fixed order (for the optimizer and clipping).
    pub fn slices(&self) -> Vec<&[F]> {
        let mut v: Vec<&[F]> = vec![self.embed.as_slice().expect("standard layout")];
        for l in &self.lstm {
            v.push(l.wx.as_slice().expect("standard layout"));
            v.push(l.wh.as_slice().expect("standard layout"));
            v.push(l.b.as_slice().expect("standard layout"));
        }
        if let Some(w) = &self.out_w {
            v.push(w.as_slice().expect("standard layout"));
        }
        v.push(self.out_b.as_slice().expect("standard layout"));
        v
    }

    /// Mutable twin of [`Params::slices`], same order.
    pub fn slices_mut(&mut self) -> Vec<&mut [F]> {
        let mut v: Vec<&mut [F]> = vec![self.embed.as_slice_mut().expect("standard layout")];
        for l in &mut self.lstm {
            v.push(l.wx.as_slice_mut().expect("standard layout"));
            v.push(l.wh.as_slice_mut().expect("standard layout"));
            v.push(l.b.as_slice_mut().expect("standard layout"));
        }
        if let Some(w) = &mut self.out_w {
            v.push(w.as_slice_mut().expect("standard layout"));
        }
        v.push(self.out_b.as_slice_mut().expect("standard layout"));
        v
    }

    /// Sets every element to zero.
    pub fn zero(&mut self) {
        // Blocks of 64K elements on the pool's threads (a large vocabulary's gradients are
        // tens of MB).
        let mut blocks: Vec<&mut [F]> = self
            .slices_mut()
            .into_iter()
            .flat_map(|s| s.chunks_mut(1 << 16))
            .collect();
        pool::for_each_mut(&mut blocks, &|b| b.fill(F::zero()));
    }

    /// Converts element type (f32 ↔ f64 for checks).
    pub fn cast<G: Float>(&self) -> Params<G> {
        let c2 = |a: &Array2<F>| a.mapv(|v| G::c(v.f64()));
        let c1 = |a: &Array1<F>| a.mapv(|v| G::c(v.f64()));
        Params {
            embed: c2(&self.embed),
            lstm: self
                .lstm
                .iter()
                .map(|l| LstmParams {
                    wx: c2(&l.wx),
                    wh: c2(&l.wh),
                    b: c1(&l.b),
                })
                .collect(),
            out_w: self.out_w.as_ref().map(c2),
            out_b: c1(&self.out_b),
        }
    }
}

/// One draw from N(0, 1) (Box–Muller).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A named tensor in PyTorch state-dict layout: (name, shape, row-major data).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

impl Params<f32> {
    /// The tensors under the names and layouts of a PyTorch state dict of `nn.Embedding`
    /// (`embed`), `nn.LSTM` (`rnn`) and `nn.Linear` (`out`), each name prefixed by `prefix`.
    /// `weight_ih_l{k}` is (4H, D) = wxᵀ, `weight_hh_l{k}` is (4H, H) = whᵀ, gate order
    /// i, f, g, o; the bias goes to `bias_ih_l{k}` and `bias_hh_l{k}` is zero. A tied model
    /// writes `out.weight` too (a copy of `embed.weight`), as PyTorch's state dict has both.
    pub fn to_named(&self, prefix: &str) -> Vec<NamedTensor> {
        let flat = |a: ArrayView2<'_, f32>| a.iter().copied().collect::<Vec<f32>>();
        let mut v = vec![(
            format!("{prefix}embed.weight"),
            self.embed.shape().to_vec(),
            flat(self.embed.view()),
        )];
        for (k, l) in self.lstm.iter().enumerate() {
            let (d, h4) = l.wx.dim();
            let h = h4 / 4;
            v.push((
                format!("{prefix}rnn.weight_ih_l{k}"),
                vec![h4, d],
                flat(l.wx.t()),
            ));
            v.push((
                format!("{prefix}rnn.weight_hh_l{k}"),
                vec![h4, h],
                flat(l.wh.t()),
            ));
            v.push((format!("{prefix}rnn.bias_ih_l{k}"), vec![h4], l.b.to_vec()));
            v.push((format!("{prefix}rnn.bias_hh_l{k}"), vec![h4], vec![0.0; h4]));
        }
        let w = self.out_weight();
        v.push((
            format!("{prefix}out.weight"),
            w.shape().to_vec(),
            flat(w.view()),
        ));
        v.push((
            format!("{prefix}out.bias"),
            vec![self.out_b.len()],
            self.out_b.to_vec(),
        ));
        v
    }

    /// Inverse of [`Params::to_named`]. `get(name, shape)` returns the tensor's data or an
    /// error naming what is missing or misshapen. The two LSTM biases are summed, so weights
    /// trained in PyTorch load too.
    pub fn from_named(
        cfg: &ModelConfig,
        prefix: &str,
        mut get: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        cfg.validate()?;
        let (v, e, h) = (cfg.vocab, cfg.embed, cfg.hidden);
        let arr2 = |r: usize, c: usize, d: Vec<f32>| {
            Array2::from_shape_vec((r, c), d).map_err(|e| Error::Shape(e.to_string()))
        };
        let embed = arr2(v, e, get(&format!("{prefix}embed.weight"), &[v, e])?)?;
        let mut lstm = Vec::with_capacity(cfg.layers);
        for k in 0..cfg.layers {
            let d = cfg.input_size(k);
            let wih = arr2(
                4 * h,
                d,
                get(&format!("{prefix}rnn.weight_ih_l{k}"), &[4 * h, d])?,
            )?;
            let whh = arr2(
                4 * h,
                h,
                get(&format!("{prefix}rnn.weight_hh_l{k}"), &[4 * h, h])?,
            )?;
            let bih = get(&format!("{prefix}rnn.bias_ih_l{k}"), &[4 * h])?;
            let bhh = get(&format!("{prefix}rnn.bias_hh_l{k}"), &[4 * h])?;
            lstm.push(LstmParams {
                wx: wih.t().as_standard_layout().into_owned(),
                wh: whh.t().as_standard_layout().into_owned(),
                b: bih.iter().zip(&bhh).map(|(a, b)| a + b).collect(),
            });
        }
        let out_w = if cfg.tie_weights {
            None
        } else {
            Some(arr2(v, h, get(&format!("{prefix}out.weight"), &[v, h])?)?)
        };
        let out_b = Array1::from(get(&format!("{prefix}out.bias"), &[v])?);
        Ok(Params {
            embed,
            lstm,
            out_w,
            out_b,
        })
    }
}

/// The carried recurrent state of B streams: per layer h and c, each (B, H).
#[derive(Clone, Debug, PartialEq)]
pub struct LstmState<F> {
    /// Hidden state per layer, (B, H) each.
    pub h: Vec<Array2<F>>,
    /// Cell state per layer, (B, H) each.
    pub c: Vec<Array2<F>>,
}

impl<F: Float> LstmState<F> {
    /// The zero state for `b` streams.
    pub fn zeros(cfg: &ModelConfig, b: usize) -> Self {
        LstmState {
            h: vec![Array2::zeros((b, cfg.hidden)); cfg.layers],
            c: vec![Array2::zeros((b, cfg.hidden)); cfg.layers],
        }
    }

    /// Sets every element to zero (epoch boundary).
    pub fn reset(&mut self) {
        self.h
            .iter_mut()
            .chain(self.c.iter_mut())
            .for_each(|a| a.fill(F::zero()));
    }

    /// Number of streams B.
    pub fn batch(&self) -> usize {
        self.h.first().map_or(0, |a| a.nrows())
    }
}

/// Activations and workspaces of one window, reused across windows.
#[derive(Clone, Debug, Default)]
pub struct Workspace<F> {
    n: usize,
    /// Embedded inputs, (T·B, E).
    x0: Array2<F>,
    caches: Vec<LstmCache<F>>,
    /// Dropout masks per layer, (T·B, H).
    masks: Vec<Array2<F>>,
    /// Layer outputs after dropout, (T·B, H).
    dropped: Vec<Array2<F>>,
    /// Logits, then their gradient, (T·B, V).
    logits: Array2<F>,
    /// Gradient w.r.t. the current layer's output, (T·B, H).
    dh: Array2<F>,
    /// Gradient w.r.t. a layer's input when that is another layer's output, (T·B, H).
    dxh: Array2<F>,
    /// Gradient w.r.t. the embedded inputs, (T·B, E).
    dx0: Array2<F>,
    /// The output weight packed for this window.
    out: LinearPacked<F>,
    /// Loss of each row of the window, (T·B).
    row_loss: Vec<f64>,
}

/// `a` as a zero (r, c) array, reallocated only if its shape differs.
fn shape<F: Float>(a: &mut Array2<F>, r: usize, c: usize) {
    if a.dim() != (r, c) {
        *a = Array2::zeros((r, c));
    }
}

impl<F: Float> Workspace<F> {
    /// Buffers of the forward pass for `n` = T·B rows. Only what the window needs is kept:
    /// no embedded inputs when layer 0 folds the embedding, no dropout buffers without
    /// dropout (they stay once a training window has needed them).
    fn ensure(&mut self, cfg: &ModelConfig, n: usize, fold: bool, drop: bool) {
        if self.n != n || self.caches.len() != cfg.layers || self.logits.ncols() != cfg.vocab {
            self.n = n;
            self.caches = vec![LstmCache::default(); cfg.layers];
            self.masks.clear();
            self.dropped.clear();
            self.logits = Array2::zeros((n, cfg.vocab));
            self.row_loss = vec![0.0; n];
        }
        if fold {
            self.x0 = Array2::zeros((0, 0));
            self.dx0 = Array2::zeros((0, 0));
        } else {
            shape(&mut self.x0, n, cfg.embed);
        }
        if drop && self.masks.len() != cfg.layers {
            self.masks = vec![Array2::zeros((n, cfg.hidden)); cfg.layers];
            self.dropped = vec![Array2::zeros((n, cfg.hidden)); cfg.layers];
        }
    }

    /// Buffers of the backward pass.
    fn ensure_backward(&mut self, cfg: &ModelConfig, fold: bool) {
        let n = self.n;
        shape(&mut self.dh, n, cfg.hidden);
        if cfg.layers > 1 {
            shape(&mut self.dxh, n, cfg.hidden);
        }
        if !fold {
            shape(&mut self.dx0, n, cfg.embed);
        }
    }

    /// Logits of the last forward pass, (T·B, V) (after a backward pass: their gradient).
    pub fn logits(&self) -> ArrayView2<'_, F> {
        self.logits.view()
    }
}

/// A language model: its configuration and parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Model<F> {
    /// Architecture.
    pub config: ModelConfig,
    /// Weights.
    pub params: Params<F>,
}

impl<F: Float> Model<F> {
    /// A freshly initialised model.
    pub fn new(config: ModelConfig, rng: &mut impl Rng) -> Result<Self> {
        config.validate()?;
        let params = Params::init(&config, rng);
        Ok(Model { config, params })
    }

    /// Forward pass over a window of T steps of B streams: `tokens` (T·B) time-major,
    /// `state` the carried state (B streams). Dropout is active when `rng` is given and the
    /// configured probability is non-zero. Logits land in `ws`.
    pub fn forward(
        &self,
        ws: &mut Workspace<F>,
        tokens: &[u32],
        state: &LstmState<F>,
        mut rng: Option<&mut dyn rand::RngCore>,
    ) {
        let cfg = &self.config;
        let b = state.batch();
        let n = tokens.len();
        let t_len = n / b;
        let drop = rng.is_some() && cfg.dropout > 0.0;
        let fold = fold_embedding(cfg.vocab, n);
        ws.ensure(cfg, n, fold, drop);
        if !fold {
            embedding_forward(&self.params.embed, tokens, ws.x0.view_mut());
        }
        for l in 0..cfg.layers {
            let (done, rest) = ws.caches.split_at_mut(l);
            let nd = ws.dropped.len();
            let (dropped_done, dropped_rest) = ws.dropped.split_at_mut(l.min(nd));
            let input = match l {
                0 if fold => LstmInput::Tokens {
                    table: self.params.embed.view(),
                    tokens,
                },
                0 => LstmInput::Dense(ws.x0.view()),
                _ if drop => LstmInput::Dense(dropped_done[l - 1].view()),
                _ => LstmInput::Dense(done[l - 1].output()),
            };
            let cache = &mut rest[0];
            lstm_forward_input(
                &self.params.lstm[l],
                input,
                state.h[l].view(),
                state.c[l].view(),
                t_len,
                cache,
            );
            if drop {
                let rng = rng.as_mut().expect("drop implies rng");
                dropout_forward(
                    cache.output(),
                    cfg.dropout,
                    rng,
                    &mut ws.masks[l],
                    dropped_rest[0].view_mut(),
                );
            }
        }
        ws.out.wt.pack(self.params.out_weight().t());
        let top = if drop {
            ws.dropped[cfg.layers - 1].view()
        } else {
            ws.caches[cfg.layers - 1].output()
        };
        linear_forward_packed(
            top.to_slice().expect("standard layout"),
            &ws.out.wt,
            self.params.out_b.as_slice().expect("standard layout"),
            ws.logits.as_slice_mut().expect("standard layout"),
        );
    }

    /// Copies each layer's final (h, c) into `state` (the carry to the next window).
    fn carry(&self, ws: &Workspace<F>, state: &mut LstmState<F>) {
        for l in 0..self.config.layers {
            state.h[l].assign(&ws.caches[l].last_h());
            state.c[l].assign(&ws.caches[l].last_c());
        }
    }

    /// One training window: forward, mean cross-entropy against `targets` (T·B), backward.
    /// Gradients are *accumulated* into `grads`; `state` is advanced to the window's end.
    /// Returns the mean loss in nats per token.
    pub fn forward_backward(
        &self,
        ws: &mut Workspace<F>,
        grads: &mut Params<F>,
        tokens: &[u32],
        targets: &[u32],
        state: &mut LstmState<F>,
        rng: Option<&mut dyn rand::RngCore>,
    ) -> f64 {
        let cfg = &self.config;
        let drop = rng.is_some() && cfg.dropout > 0.0;
        self.forward(ws, tokens, state, rng);
        let n = tokens.len();
        let fold = fold_embedding(cfg.vocab, n);
        ws.ensure_backward(cfg, fold);

        // Output layer: loss, dlogits and dh fused per block of rows, then dW and db.
        ws.out.w.pack(self.params.out_weight().view());
        let loss = loss_backward_packed(
            ws.logits.as_slice_mut().expect("standard layout"),
            targets,
            &ws.out.w,
            ws.dh.as_slice_mut().expect("standard layout"),
            &mut ws.row_loss,
        ) / n as f64;
        let last = cfg.layers - 1;
        {
            let top = if drop {
                ws.dropped[last].view()
            } else {
                ws.caches[last].output()
            };
            let dw = match grads.out_w.as_mut() {
                Some(w) => w,
                None => &mut grads.embed,
            };
            linear_weight_grad(
                top.to_slice().expect("standard layout"),
                ws.logits.as_slice().expect("standard layout"),
                n,
                dw.as_slice_mut().expect("standard layout"),
                grads.out_b.as_slice_mut().expect("standard layout"),
            );
        }
        // LSTM layers, top to bottom.
        for l in (0..cfg.layers).rev() {
            if drop {
                dropout_backward(ws.dh.view_mut(), &ws.masks[l]);
            }
            let (done, rest) = ws.caches.split_at_mut(l);
            let input = match l {
                0 if fold => LstmInput::Tokens {
                    table: self.params.embed.view(),
                    tokens,
                },
                0 => LstmInput::Dense(ws.x0.view()),
                _ if drop => LstmInput::Dense(ws.dropped[l - 1].view()),
                _ => LstmInput::Dense(done[l - 1].output()),
            };
            let dx = if l == 0 {
                ws.dx0.view_mut()
            } else {
                ws.dxh.view_mut()
            };
            let dtable = (l == 0 && fold).then_some(&mut grads.embed);
            lstm_backward_input(
                &self.params.lstm[l],
                input,
                ws.dh.view(),
                &mut rest[0],
                &mut grads.lstm[l],
                (!(l == 0 && fold)).then_some(dx),
                dtable,
            );
            if l > 0 {
                std::mem::swap(&mut ws.dh, &mut ws.dxh);
            }
        }
        if !fold {
            embedding_backward(&mut grads.embed, tokens, ws.dx0.view());
        }
        self.carry(ws, state);
        loss
    }

    /// Evaluation of one window (no dropout, no gradients): returns the *sum* of the
    /// per-token losses in nats and advances `state`.
    pub fn eval_window(
        &self,
        ws: &mut Workspace<F>,
        tokens: &[u32],
        targets: &[u32],
        state: &mut LstmState<F>,
    ) -> f64 {
        self.forward(ws, tokens, state, None);
        let sum = softmax_xent(ws.logits.view_mut(), targets, false);
        self.carry(ws, state);
        sum
    }
}

/// The weights of a model packed for generation; shared by clones of a [`Generator`].
#[derive(Debug)]
struct GenWeights {
    /// Per layer: wx, wh packed.
    layers: Vec<LstmPacked<f32>>,
    /// For layer 0 when V ≤ E: the input projection of every token, b + embed[v] · wx,
    /// (V, 4H) (computed by the same product as per step, so the same bits).
    table0: Option<Array2<f32>>,
    /// Output weight transposed, (H, V).
    out_wt: PackedB<f32>,
}

impl GenWeights {
    fn new(model: &Model<f32>) -> Self {
        let p = &model.params;
        let cfg = &model.config;
        let layers: Vec<LstmPacked<f32>> = p.lstm.iter().map(LstmPacked::forward_only).collect();
        let table0 = (cfg.vocab <= cfg.embed).then(|| {
            let h4 = 4 * cfg.hidden;
            let mut t = Array2::zeros((cfg.vocab, h4));
            gemm(
                cfg.vocab,
                Mat {
                    data: p.embed.as_slice().expect("standard layout"),
                    ld: cfg.embed,
                },
                &layers[0].wx,
                MatMut {
                    data: t.as_slice_mut().expect("standard layout"),
                    ld: h4,
                },
                Init::Bias(p.lstm[0].b.as_slice().expect("standard layout")),
            );
            t
        });
        GenWeights {
            out_wt: PackedB::from_view(p.out_weight().t()),
            layers,
            table0,
        }
    }
}

/// Token-by-token generation for B streams at once, with the weights shared (`Arc`) so a
/// worker thread can own it. No allocation per step.
///
/// The weights are packed once, at construction. Each stream's results are bit-identical
/// whatever B is (every product row is computed on its own, in the same order), so a stream
/// generates the same text alone or in a batch.
#[derive(Clone, Debug)]
pub struct Generator {
    model: Arc<Model<f32>>,
    packed: Arc<GenWeights>,
    state: LstmState<f32>,
    /// Input to layer 0, (B, E).
    x: Array2<f32>,
    /// Gate workspace, (B, 4H).
    gx: Array2<f32>,
    /// Logits of the last step, (B, V).
    logits: Array2<f32>,
    /// Copy of a layer's previous h for the column-split path, (B, H).
    h_prev: Array2<f32>,
}

/// Up to this many streams, a step splits each product by columns (hidden units) across
/// threads instead of splitting the streams.
const NARROW: usize = 4;

impl Generator {
    /// A generator for `b` streams starting from the zero state.
    pub fn new(model: Arc<Model<f32>>, b: usize) -> Self {
        let cfg = &model.config;
        Generator {
            packed: Arc::new(GenWeights::new(&model)),
            state: LstmState::zeros(cfg, b),
            x: Array2::zeros((b, cfg.embed)),
            gx: Array2::zeros((b, 4 * cfg.hidden)),
            logits: Array2::zeros((b, cfg.vocab)),
            h_prev: Array2::zeros((b, cfg.hidden)),
            model,
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model<f32>> {
        &self.model
    }

    /// Number of streams B.
    pub fn batch(&self) -> usize {
        self.logits.nrows()
    }

    /// The recurrent state (to save and restore, e.g. "continue" in the UI).
    pub fn state(&self) -> &LstmState<f32> {
        &self.state
    }

    /// Replaces the recurrent state (must have the same B).
    pub fn set_state(&mut self, state: LstmState<f32>) {
        self.state = state;
    }

    /// Back to the zero state.
    pub fn reset(&mut self) {
        self.state.reset();
    }

    /// Feeds one token per stream (`tokens` has B entries) and returns the next-token
    /// logits, (B, V).
    pub fn step(&mut self, tokens: &[u32]) -> ArrayView2<'_, f32> {
        let b = self.batch();
        assert_eq!(tokens.len(), b, "one token per stream");
        let hs = self.model.config.hidden;
        if b <= NARROW && pool::width() > 1 && hs % NR == 0 {
            self.step_narrow(tokens);
            return self.logits.view();
        }
        let p = &self.model.params;
        let cfg = &self.model.config;
        let (e, hs, v) = (cfg.embed, cfg.hidden, cfg.vocab);
        let h4 = 4 * hs;
        let w = &*self.packed;
        let xp = SyncPtr(self.x.as_mut_ptr());
        let gp = SyncPtr(self.gx.as_mut_ptr());
        let lp = SyncPtr(self.logits.as_mut_ptr());
        let hp: Vec<SyncPtr<f32>> = self
            .state
            .h
            .iter_mut()
            .map(|a| SyncPtr(a.as_mut_ptr()))
            .collect();
        let cp: Vec<SyncPtr<f32>> = self
            .state
            .c
            .iter_mut()
            .map(|a| SyncPtr(a.as_mut_ptr()))
            .collect();
        let embed = p.embed.as_slice().expect("standard layout");
        let tasks = pool::width().min(b).max(1);
        pool::run(tasks, &|t| {
            let r = pool::split(b, tasks, t);
            let nb = r.len();
            // SAFETY: every buffer is touched only in this task's rows r.
            unsafe {
                let g = gp.slice(r.start * h4, nb * h4);
                for l in 0..cfg.layers {
                    let lw = &w.layers[l];
                    match (l, &w.table0) {
                        (0, Some(tab)) => {
                            let tab = tab.as_slice().expect("standard layout");
                            for (row, &tok) in g.chunks_exact_mut(h4).zip(&tokens[r.clone()]) {
                                let o = tok as usize * h4;
                                row.copy_from_slice(&tab[o..o + h4]);
                            }
                        }
                        _ => {
                            let bias = p.lstm[l].b.as_slice().expect("standard layout");
                            let (input, d): (&[f32], usize) = if l == 0 {
                                let x = xp.slice(r.start * e, nb * e);
                                for (row, &tok) in x.chunks_exact_mut(e).zip(&tokens[r.clone()]) {
                                    let o = tok as usize * e;
                                    row.copy_from_slice(&embed[o..o + e]);
                                }
                                (x, e)
                            } else {
                                (hp[l - 1].slice(r.start * hs, nb * hs), hs)
                            };
                            gemm(
                                nb,
                                Mat { data: input, ld: d },
                                &lw.wx,
                                MatMut { data: g, ld: h4 },
                                Init::Bias(bias),
                            );
                        }
                    }
                    let h = hp[l].slice(r.start * hs, nb * hs);
                    let c = cp[l].slice(r.start * hs, nb * hs);
                    gemm(
                        nb,
                        Mat { data: h, ld: hs },
                        &lw.wh,
                        MatMut { data: g, ld: h4 },
                        Init::Accumulate,
                    );
                    cell_step(g, h, c, nb, hs);
                }
                let top = hp[cfg.layers - 1].slice(r.start * hs, nb * hs);
                let out = lp.slice(r.start * v, nb * v);
                let ob = p.out_b.as_slice().expect("standard layout");
                gemm(
                    nb,
                    Mat { data: top, ld: hs },
                    &w.out_wt,
                    MatMut { data: out, ld: v },
                    Init::Bias(ob),
                );
            }
        });
        self.logits.view()
    }

    /// [`Generator::step`] for a few streams: every product is split by columns across
    /// threads (each thread owns a block of hidden units and computes their four gates and
    /// the cell update), layer after layer. Same arithmetic per element as the row-split
    /// path.
    fn step_narrow(&mut self, tokens: &[u32]) {
        let b = self.batch();
        let p = &self.model.params;
        let cfg = &self.model.config;
        let (e, hs, v) = (cfg.embed, cfg.hidden, cfg.vocab);
        let h4 = 4 * hs;
        let w = &*self.packed;
        let blocks = hs / NR;
        let tasks = pool::width().min(blocks).max(1);
        if w.table0.is_none() {
            let embed = p.embed.as_slice().expect("standard layout");
            for (row, &tok) in self.x.rows_mut().into_iter().zip(tokens) {
                let o = tok as usize * e;
                row.into_slice()
                    .expect("standard layout")
                    .copy_from_slice(&embed[o..o + e]);
            }
        }
        for l in 0..cfg.layers {
            self.h_prev.assign(&self.state.h[l]);
            let (below, here) = self.state.h.split_at_mut(l);
            let input: &[f32] = match l {
                0 => self.x.as_slice().expect("standard layout"),
                _ => below[l - 1].as_slice().expect("standard layout"),
            };
            let d = if l == 0 { e } else { hs };
            let h_prev = self.h_prev.as_slice().expect("standard layout");
            let gp = SyncPtr(self.gx.as_mut_ptr());
            let hp = SyncPtr(here[0].as_mut_ptr());
            let cp = SyncPtr(self.state.c[l].as_mut_ptr());
            let lw = &w.layers[l];
            let bias = p.lstm[l].b.as_slice().expect("standard layout");
            pool::run(tasks, &|t| {
                let ur = pool::split(blocks, tasks, t);
                let units = ur.start * NR..ur.end * NR;
                // SAFETY: this task alone writes gate columns q·H + units of gx and units of
                // h and c; h_prev and the input are read-only here.
                unsafe {
                    for q in 0..4 {
                        let cols = q * hs + units.start..q * hs + units.end;
                        let g = gp.ptr().add(cols.start);
                        match (l, &w.table0) {
                            (0, Some(tab)) => {
                                for (r, &tok) in tokens.iter().enumerate() {
                                    let src = tab.as_ptr().add(tok as usize * h4 + cols.start);
                                    std::ptr::copy_nonoverlapping(src, g.add(r * h4), cols.len());
                                }
                            }
                            _ => gemm_cols_ptr(
                                b,
                                Mat { data: input, ld: d },
                                &lw.wx,
                                cols.clone(),
                                g,
                                h4,
                                Init::Bias(&bias[cols.clone()]),
                            ),
                        }
                        gemm_cols_ptr(
                            b,
                            Mat {
                                data: h_prev,
                                ld: hs,
                            },
                            &lw.wh,
                            cols,
                            g,
                            h4,
                            Init::Accumulate,
                        );
                    }
                    cell_step_units(gp.ptr(), hp.ptr(), cp.ptr(), b, hs, units);
                }
            });
        }
        let top = self.state.h[cfg.layers - 1]
            .as_slice()
            .expect("standard layout");
        let lp = SyncPtr(self.logits.as_mut_ptr());
        let ob = p.out_b.as_slice().expect("standard layout");
        let panels = v.div_ceil(NR);
        let tasks = pool::width().min(panels).max(1);
        pool::run(tasks, &|t| {
            let pr = pool::split(panels, tasks, t);
            let cols = pr.start * NR..(pr.end * NR).min(v);
            // SAFETY: this task alone writes these logit columns.
            unsafe {
                gemm_cols_ptr(
                    b,
                    Mat { data: top, ld: hs },
                    &w.out_wt,
                    cols.clone(),
                    lp.ptr().add(cols.start),
                    v,
                    Init::Bias(&ob[cols]),
                );
            }
        });
    }

    /// Feeds a sequence of tokens, the same for every stream (a prime); returns the logits
    /// after the last one, or `None` if `tokens` is empty.
    pub fn feed(&mut self, tokens: &[u32]) -> Option<ArrayView2<'_, f32>> {
        let b = self.batch();
        let mut row = vec![0u32; b];
        for &t in tokens {
            row.fill(t);
            self.step(&row);
        }
        (!tokens.is_empty()).then(|| self.logits.view())
    }

    /// Logits of stream `i` from the last step, (V).
    pub fn logits_row(&self, i: usize) -> &[f32] {
        let v = self.logits.ncols();
        &self.logits.as_slice().expect("standard layout")[i * v..(i + 1) * v]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn model(vocab: usize, embed: usize, hidden: usize, layers: usize) -> Arc<Model<f32>> {
        let cfg = ModelConfig {
            vocab,
            embed,
            hidden,
            layers,
            dropout: 0.0,
            tie_weights: false,
        };
        let mut rng = rand_pcg::Pcg64::seed_from_u64(11);
        let mut m = Model::<f32>::new(cfg, &mut rng).unwrap();
        m.params.out_b.mapv_inplace(|_| rng.random_range(-0.5..0.5));
        Arc::new(m)
    }

    fn bits(a: &[f32]) -> Vec<u32> {
        a.iter().map(|v| v.to_bits()).collect()
    }

    /// A stream gives the same bits alone or among others, with and without the layer-0
    /// token table (V ≤ E and V > E).
    #[test]
    fn generator_streams_do_not_depend_on_batch() {
        // hidden 32: a batch of 1 takes the column-split path, a batch of 7 the row split
        for m in [
            model(7, 12, 20, 2),
            model(40, 9, 21, 1),
            model(7, 12, 32, 2),
            model(40, 9, 16, 2),
        ] {
            let v = m.config.vocab as u32;
            let b = 7;
            let mut many = Generator::new(Arc::clone(&m), b);
            let mut one = Generator::new(Arc::clone(&m), 1);
            for step in 0..6u32 {
                let toks: Vec<u32> = (0..b as u32).map(|i| (i * 5 + step * 3) % v).collect();
                many.step(&toks);
                one.step(&toks[3..4]);
                assert_eq!(
                    bits(many.logits_row(3)),
                    bits(one.logits_row(0)),
                    "step {step}"
                );
            }
            assert_eq!(
                bits(many.state().h[0].row(3).as_slice().unwrap()),
                bits(one.state().h[0].row(0).as_slice().unwrap())
            );
        }
    }

    /// Generation step by step equals the window forward pass of training, bit for bit.
    #[test]
    fn generator_matches_window_forward() {
        for m in [
            model(7, 12, 20, 2),
            model(40, 9, 21, 2),
            model(7, 12, 32, 2),
            model(40, 9, 16, 2),
        ] {
            let (b, t) = (3, 4);
            let v = m.config.vocab as u32;
            let tokens: Vec<u32> = (0..(t * b) as u32).map(|i| (i * 7 + 1) % v).collect();
            let mut ws = Workspace::default();
            let state = LstmState::zeros(&m.config, b);
            m.forward(&mut ws, &tokens, &state, None);
            let mut g = Generator::new(Arc::clone(&m), b);
            for step in 0..t {
                g.step(&tokens[step * b..(step + 1) * b]);
                let vv = m.config.vocab;
                let want = &ws.logits().to_slice().unwrap()[step * b * vv..(step + 1) * b * vv];
                assert_eq!(
                    bits(g.logits.as_slice().unwrap()),
                    bits(want),
                    "step {step}"
                );
            }
        }
    }
}
