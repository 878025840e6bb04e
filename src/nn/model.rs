//! The language model: embedding (V→E) → L LSTM layers → dropout → linear (H→V) → softmax.
//!
//! While training, a window may be regularised ([`crate::nn::dropout`]): dropout on every
//! LSTM layer's output (between layers and before the output layer), on the embedded inputs,
//! and of whole tokens of the embedding table. Evaluation and generation use none of it.

use ndarray::{Array1, Array2, ArrayView2};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::dropout::{
    add_masked_rows, apply_mask, draw_mask, draw_mask1, mask_in_place, mask_rows, Dropout,
    MaskShape,
};
use crate::nn::embedding::{embedding_backward, embedding_forward};
use crate::nn::linear::{
    linear_forward_packed, linear_weight_grad, loss_backward_packed, LinearPacked,
};
use crate::nn::loss::xent_row;
use crate::nn::lstm::{
    fold_embedding, lstm_backward_input, lstm_forward_input, LstmCache, LstmInput, LstmParams,
};
use crate::nn::sampled::{sampled_loss_backward, Candidates, SampledWorkspace};
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

    /// Sets every layer's forget-gate bias to `v` ([`LstmParams::set_forget_bias`]).
    pub fn set_forget_bias(&mut self, v: F) {
        for l in &mut self.lstm {
            l.set_forget_bias(v);
        }
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
    /// Dropout masks of the layers' outputs, (T·B or B, H) each.
    masks: Vec<Array2<F>>,
    /// Layer outputs after dropout, (T·B, H).
    dropped: Vec<Array2<F>>,
    /// Dropout mask of the embedded inputs, (T·B or B, E).
    in_mask: Array2<F>,
    /// Embedding dropout: the mask over the table's rows, (V).
    embed_mask: Array1<F>,
    /// Embedding dropout: the table with its rows masked, (V, E).
    table: Array2<F>,
    /// Embedding dropout: the input side's gradient w.r.t. the masked table, (V, E).
    dtable: Array2<F>,
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
    /// The sampled output layer's buffers (training with sampled softmax).
    sampled: SampledWorkspace<F>,
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
        if drop && self.dropped.len() != cfg.layers {
            self.masks = vec![Array2::zeros((0, 0)); cfg.layers];
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
    /// `state` the carried state (B streams). With `train`, the window is regularised by its
    /// [`Dropout`], masks drawn from its RNG; without, nothing is dropped. Logits land in
    /// `ws`.
    pub fn forward(
        &self,
        ws: &mut Workspace<F>,
        tokens: &[u32],
        state: &LstmState<F>,
        train: Option<(&Dropout, &mut dyn rand::RngCore)>,
    ) {
        let drop = train.as_ref().is_some_and(|(d, _)| d.output > 0.0);
        self.forward_hidden(ws, tokens, state, train);
        ws.out.wt.pack(self.params.out_weight().t());
        linear_forward_packed(
            Self::top(&ws.dropped, &ws.caches, drop)
                .to_slice()
                .expect("standard layout"),
            &ws.out.wt,
            self.params.out_b.as_slice().expect("standard layout"),
            ws.logits.as_slice_mut().expect("standard layout"),
        );
    }

    /// The top layer's output that the output layer reads, (T·B, H): after its dropout when
    /// the window drops.
    fn top<'a>(
        dropped: &'a [Array2<F>],
        caches: &'a [LstmCache<F>],
        drop: bool,
    ) -> ArrayView2<'a, F> {
        match drop {
            true => dropped[caches.len() - 1].view(),
            false => caches[caches.len() - 1].output(),
        }
    }

    /// [`Model::forward`] up to the output layer: embedding, every LSTM layer and its dropout.
    fn forward_hidden(
        &self,
        ws: &mut Workspace<F>,
        tokens: &[u32],
        state: &LstmState<F>,
        train: Option<(&Dropout, &mut dyn rand::RngCore)>,
    ) {
        let cfg = &self.config;
        let b = state.batch();
        let n = tokens.len();
        let t_len = n / b;
        let (plan, mut rng) = match train {
            Some((d, rng)) => (*d, Some(rng)),
            None => (Dropout::default(), None),
        };
        let drop = plan.output > 0.0;
        let mask_rows_of = |shape: MaskShape| match shape {
            MaskShape::Element => n,
            MaskShape::Stream => b,
        };
        let fold = fold_embedding(cfg.vocab, n) && plan.input == 0.0;
        ws.ensure(cfg, n, fold, drop);
        if plan.embed > 0.0 {
            let rng = rng.as_mut().expect("embedding dropout implies rng");
            draw_mask1(&mut ws.embed_mask, cfg.vocab, plan.embed, &mut **rng);
            mask_rows(&self.params.embed, &ws.embed_mask, &mut ws.table);
        }
        let table = if plan.embed > 0.0 {
            &ws.table
        } else {
            &self.params.embed
        };
        if !fold {
            embedding_forward(table, tokens, ws.x0.view_mut());
            if plan.input > 0.0 {
                let rng = rng.as_mut().expect("input dropout implies rng");
                let rows = mask_rows_of(plan.shape);
                draw_mask(&mut ws.in_mask, rows, cfg.embed, plan.input, &mut **rng);
                mask_in_place(ws.x0.view_mut(), &ws.in_mask);
            }
        }
        for l in 0..cfg.layers {
            let (done, rest) = ws.caches.split_at_mut(l);
            let nd = ws.dropped.len();
            let (dropped_done, dropped_rest) = ws.dropped.split_at_mut(l.min(nd));
            let input = match l {
                0 if fold => LstmInput::Tokens {
                    table: table.view(),
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
                let mask = &mut ws.masks[l];
                draw_mask(
                    mask,
                    mask_rows_of(plan.shape),
                    cfg.hidden,
                    plan.output,
                    &mut **rng,
                );
                apply_mask(cache.output(), mask, dropped_rest[0].view_mut());
            }
        }
    }

    /// Copies each layer's final (h, c) into `state` (the carry to the next window).
    fn carry(&self, ws: &Workspace<F>, state: &mut LstmState<F>) {
        for l in 0..self.config.layers {
            state.h[l].assign(&ws.caches[l].last_h());
            state.c[l].assign(&ws.caches[l].last_c());
        }
    }

    /// One training window: forward (regularised as [`Model::forward`] with `train`), mean
    /// cross-entropy against `targets` (T·B), backward through the same masks. Gradients are
    /// *accumulated* into `grads`; `state` is advanced to the window's end. Returns the mean
    /// loss in nats per token. With `sampled`, the output layer is a sampled softmax over
    /// those candidates ([`crate::nn::sampled`]) and the loss is its estimate.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &self,
        ws: &mut Workspace<F>,
        grads: &mut Params<F>,
        tokens: &[u32],
        targets: &[u32],
        state: &mut LstmState<F>,
        train: Option<(&Dropout, &mut dyn rand::RngCore)>,
        sampled: Option<Candidates<'_>>,
    ) -> f64 {
        let cfg = &self.config;
        let plan = train.as_ref().map(|(d, _)| **d).unwrap_or_default();
        let drop = plan.output > 0.0;
        let n = tokens.len();
        let fold = fold_embedding(cfg.vocab, n) && plan.input == 0.0;
        let embed_drop = plan.embed > 0.0;
        match sampled {
            None => self.forward(ws, tokens, state, train),
            Some(_) => self.forward_hidden(ws, tokens, state, train),
        }
        ws.ensure_backward(cfg, fold);
        let top = Self::top(&ws.dropped, &ws.caches, drop);
        let top = top.to_slice().expect("standard layout");
        let dw = grads.out_w.as_mut().unwrap_or(&mut grads.embed);
        let dw = dw.as_slice_mut().expect("standard layout");
        let db = grads.out_b.as_slice_mut().expect("standard layout");
        let dh = ws.dh.as_slice_mut().expect("standard layout");
        let loss = match sampled {
            None => {
                // Output layer: loss, dlogits and dh fused per block of rows, then dW and db.
                ws.out.w.pack(self.params.out_weight().view());
                let logits = ws.logits.as_slice_mut().expect("standard layout");
                let loss = loss_backward_packed(logits, targets, &ws.out.w, dh, &mut ws.row_loss);
                linear_weight_grad(top, logits, n, dw, db);
                loss
            }
            Some(cand) => sampled_loss_backward(
                top,
                targets,
                self.params.out_weight().view(),
                self.params.out_b.as_slice().expect("standard layout"),
                cand,
                &mut ws.sampled,
                dw,
                db,
                dh,
                &mut ws.row_loss,
            ),
        } / n as f64;
        // With embedding dropout, the input side's gradient of the table is gathered apart
        // (w.r.t. the masked table) and masked into `grads.embed` at the end; the output
        // layer's share (tied weights) is not masked.
        if embed_drop {
            shape(&mut ws.dtable, cfg.vocab, cfg.embed);
            ws.dtable.fill(F::zero());
        }
        // LSTM layers, top to bottom.
        for l in (0..cfg.layers).rev() {
            if drop {
                mask_in_place(ws.dh.view_mut(), &ws.masks[l]);
            }
            let (done, rest) = ws.caches.split_at_mut(l);
            let input = match l {
                0 if fold => LstmInput::Tokens {
                    table: if embed_drop {
                        ws.table.view()
                    } else {
                        self.params.embed.view()
                    },
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
            let dtable = (l == 0 && fold).then_some(if embed_drop {
                &mut ws.dtable
            } else {
                &mut grads.embed
            });
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
            if plan.input > 0.0 {
                mask_in_place(ws.dx0.view_mut(), &ws.in_mask);
            }
            let dtable = if embed_drop {
                &mut ws.dtable
            } else {
                &mut grads.embed
            };
            embedding_backward(dtable, tokens, ws.dx0.view());
        }
        if embed_drop {
            add_masked_rows(&mut grads.embed, &ws.dtable, &ws.embed_mask);
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
        self.eval_window_each(ws, tokens, targets, state, &mut |_, _| {})
    }

    /// [`Model::eval_window`], also handing each token's loss to `each` as (row of the
    /// window, time-major as `tokens`, nats). The sum is the same, added in the same order.
    pub fn eval_window_each(
        &self,
        ws: &mut Workspace<F>,
        tokens: &[u32],
        targets: &[u32],
        state: &mut LstmState<F>,
        each: &mut dyn FnMut(usize, f64),
    ) -> f64 {
        self.forward(ws, tokens, state, None);
        let mut sum = 0.0f64;
        for (i, (mut row, &y)) in ws.logits.rows_mut().into_iter().zip(targets).enumerate() {
            let loss = match row.as_slice_mut() {
                Some(r) => xent_row(r, y as usize, None),
                None => xent_row(&mut row.to_vec(), y as usize, None),
            };
            each(i, loss);
            sum += loss;
        }
        self.carry(ws, state);
        sum
    }
}
