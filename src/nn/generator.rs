//! The model stepped one token at a time for a changing set of rows (streams): the inference
//! twin of [`Model::forward`], beside the LSTM cell kernels it calls.
//!
//! A [`Generator`] holds R rows. Each row is one stream's recurrent state (per layer h and c,
//! each H) and, after a step, its next-token logits (V). [`Generator::step`] feeds one token
//! per row through embedding → L LSTM layers → output layer as one matrix product per layer
//! for all rows. Rows can be added ([`Generator::push_row`]) and removed
//! ([`Generator::swap_remove_row`]) between steps, which is what continuous batching needs.
//!
//! Determinism: every product row is computed on its own, in the same order, whatever R is and
//! whichever path (row split or column split across threads) a step takes, so a row's numbers
//! never depend on which or how many other rows share the step, and equal the window forward
//! pass of training bit for bit.
//!
//! Memory: the buffers keep their capacity when rows leave, so a generator whose row count
//! goes up and down allocates only when it reaches a new maximum. No allocation per step
//! otherwise.

use std::sync::Arc;

use ndarray::Array2;

use super::gemm::{gemm, gemm_cols_ptr, Init, Mat, MatMut, PackedB, NR};
use super::lstm::{cell_step, cell_step_units, LstmPacked};
use super::model::{Model, ModelConfig};
use super::pool::{self, SyncPtr};

/// The weights of a model packed for generation; shared by every generator forked from one.
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

/// The recurrent state of one row: per layer h then c, each H values (2·L·H in all).
#[derive(Clone, Debug, PartialEq)]
pub struct RowState(Vec<f32>);

impl RowState {
    /// The zero state of a model.
    pub fn zeros(cfg: &ModelConfig) -> Self {
        RowState(vec![0.0; 2 * cfg.layers * cfg.hidden])
    }

    /// The values, per layer h then c.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// h of layer `l` (H values).
    pub fn h(&self, l: usize, hidden: usize) -> &[f32] {
        &self.0[2 * l * hidden..(2 * l + 1) * hidden]
    }
}

/// Token-by-token generation for R rows at once, with the weights shared (`Arc`) so a worker
/// thread can own it. See the module docs for the determinism rule.
#[derive(Clone, Debug)]
pub struct Generator {
    model: Arc<Model<f32>>,
    packed: Arc<GenWeights>,
    /// Rows R.
    rows: usize,
    /// Hidden state per layer, (R, H) each.
    h: Vec<Vec<f32>>,
    /// Cell state per layer, (R, H) each.
    c: Vec<Vec<f32>>,
    /// Input to layer 0, (R, E).
    x: Vec<f32>,
    /// Gate workspace, (R, 4H).
    gx: Vec<f32>,
    /// Logits of the last step, (R, V).
    logits: Vec<f32>,
    /// Copy of a layer's previous h for the column-split path, (R, H).
    h_prev: Vec<f32>,
}

/// Up to this many rows, a step splits each product by columns (hidden units) across
/// threads instead of splitting the rows.
const NARROW: usize = 4;

impl Generator {
    /// A generator for `rows` rows starting from the zero state; packs the weights.
    pub fn new(model: Arc<Model<f32>>, rows: usize) -> Self {
        let packed = Arc::new(GenWeights::new(&model));
        let layers = model.config.layers;
        let mut g = Generator {
            model,
            packed,
            rows: 0,
            h: vec![Vec::new(); layers],
            c: vec![Vec::new(); layers],
            x: Vec::new(),
            gx: Vec::new(),
            logits: Vec::new(),
            h_prev: Vec::new(),
        };
        g.resize(rows);
        g
    }

    /// A generator with no rows sharing this one's packed weights (no packing).
    pub fn fork(&self) -> Self {
        let layers = self.model.config.layers;
        Generator {
            model: Arc::clone(&self.model),
            packed: Arc::clone(&self.packed),
            rows: 0,
            h: vec![Vec::new(); layers],
            c: vec![Vec::new(); layers],
            x: Vec::new(),
            gx: Vec::new(),
            logits: Vec::new(),
            h_prev: Vec::new(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model<f32>> {
        &self.model
    }

    /// Number of rows R.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Sets the row count; new rows start from the zero state with zero logits.
    fn resize(&mut self, rows: usize) {
        let cfg = &self.model.config;
        let (e, hs, v) = (cfg.embed, cfg.hidden, cfg.vocab);
        for a in self.h.iter_mut().chain(self.c.iter_mut()) {
            a.resize(rows * hs, 0.0);
        }
        self.x.resize(rows * e, 0.0);
        self.gx.resize(rows * 4 * hs, 0.0);
        self.logits.resize(rows * v, 0.0);
        self.h_prev.resize(rows * hs, 0.0);
        self.rows = rows;
    }

    /// Adds a row at the end (index R) with `state`, or the zero state; its logits are zero
    /// until the next step. Returns its index.
    pub fn push_row(&mut self, state: Option<&RowState>) -> usize {
        let r = self.rows;
        self.resize(r + 1);
        if let Some(s) = state {
            self.set_row_state(r, s);
        }
        r
    }

    /// Removes row `r`, moving the last row into its place (its state and logits go with
    /// it); returns the removed row's state. Panics if `r` is out of range.
    pub fn swap_remove_row(&mut self, r: usize) -> RowState {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        let out = self.row_state(r);
        let last = self.rows - 1;
        if r != last {
            let cfg = &self.model.config;
            let (hs, v) = (cfg.hidden, cfg.vocab);
            for a in self.h.iter_mut().chain(self.c.iter_mut()) {
                a.copy_within(last * hs..(last + 1) * hs, r * hs);
            }
            self.logits.copy_within(last * v..(last + 1) * v, r * v);
        }
        self.resize(last);
        out
    }

    /// The recurrent state of row `r`.
    pub fn row_state(&self, r: usize) -> RowState {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        let hs = self.model.config.hidden;
        let mut out = Vec::with_capacity(2 * self.h.len() * hs);
        for (h, c) in self.h.iter().zip(&self.c) {
            out.extend_from_slice(&h[r * hs..(r + 1) * hs]);
            out.extend_from_slice(&c[r * hs..(r + 1) * hs]);
        }
        RowState(out)
    }

    /// Replaces the recurrent state of row `r`. Panics if `r` is out of range or the state
    /// belongs to a model of another shape.
    pub fn set_row_state(&mut self, r: usize, state: &RowState) {
        let hs = self.model.config.hidden;
        assert!(r < self.rows, "row {r} of {}", self.rows);
        assert_eq!(
            state.0.len(),
            2 * self.h.len() * hs,
            "state of another shape"
        );
        for (l, chunk) in state.0.chunks_exact(2 * hs).enumerate() {
            let (h, c) = chunk.split_at(hs);
            self.h[l][r * hs..(r + 1) * hs].copy_from_slice(h);
            self.c[l][r * hs..(r + 1) * hs].copy_from_slice(c);
        }
    }

    /// Sets the next-token logits of row `r` (a row moved from another generator). Panics if
    /// `r` is out of range or `logits` is not V long.
    pub fn set_row_logits(&mut self, r: usize, logits: &[f32]) {
        let v = self.model.config.vocab;
        assert!(r < self.rows, "row {r} of {}", self.rows);
        self.logits[r * v..(r + 1) * v].copy_from_slice(logits);
    }

    /// Every row back to the zero state.
    pub fn reset(&mut self) {
        for a in self.h.iter_mut().chain(self.c.iter_mut()) {
            a.fill(0.0);
        }
    }

    /// Feeds one token per row (`tokens` has R entries, each < V) and returns the next-token
    /// logits, (R, V) row-major. Panics on a wrong count or a token id outside the vocabulary.
    pub fn step(&mut self, tokens: &[u32]) -> &[f32] {
        let b = self.rows;
        assert_eq!(tokens.len(), b, "one token per row");
        let cfg = &self.model.config;
        let v = cfg.vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= v) {
            panic!("token id {bad} is outside the vocabulary of {v}");
        }
        if b == 0 {
            return &self.logits;
        }
        if b <= NARROW && pool::width() > 1 && cfg.hidden.is_multiple_of(NR) {
            self.step_narrow(tokens);
        } else {
            self.step_rows(tokens);
        }
        &self.logits
    }

    /// [`Generator::step`] with the rows split across threads.
    fn step_rows(&mut self, tokens: &[u32]) {
        let b = self.rows;
        let p = &self.model.params;
        let cfg = &self.model.config;
        let (e, hs, v) = (cfg.embed, cfg.hidden, cfg.vocab);
        let h4 = 4 * hs;
        let w = &*self.packed;
        let xp = SyncPtr(self.x.as_mut_ptr());
        let gp = SyncPtr(self.gx.as_mut_ptr());
        let lp = SyncPtr(self.logits.as_mut_ptr());
        let hp: Vec<SyncPtr<f32>> = self.h.iter_mut().map(|a| SyncPtr(a.as_mut_ptr())).collect();
        let cp: Vec<SyncPtr<f32>> = self.c.iter_mut().map(|a| SyncPtr(a.as_mut_ptr())).collect();
        let embed = p.embed.as_slice().expect("standard layout");
        let tasks = pool::width().min(b).max(1);
        pool::run(tasks, &|t| {
            let r = pool::split(b, tasks, t);
            let nb = r.len();
            // SAFETY: the buffers hold R rows (resize keeps them so) and this task touches
            // only its rows r of each; token ids were checked against V, so the table and
            // embedding reads stay in bounds.
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
    }

    /// [`Generator::step`] for a few rows: every product is split by columns across threads
    /// (each thread owns a block of hidden units and computes their four gates and the cell
    /// update), layer after layer. Same arithmetic per element as the row-split path.
    fn step_narrow(&mut self, tokens: &[u32]) {
        let b = self.rows;
        let p = &self.model.params;
        let cfg = &self.model.config;
        let (e, hs, v) = (cfg.embed, cfg.hidden, cfg.vocab);
        let h4 = 4 * hs;
        let w = &*self.packed;
        let blocks = hs / NR;
        let tasks = pool::width().min(blocks).max(1);
        if w.table0.is_none() {
            let embed = p.embed.as_slice().expect("standard layout");
            for (row, &tok) in self.x.chunks_exact_mut(e).zip(tokens) {
                let o = tok as usize * e;
                row.copy_from_slice(&embed[o..o + e]);
            }
        }
        for l in 0..cfg.layers {
            self.h_prev.copy_from_slice(&self.h[l]);
            let (below, here) = self.h.split_at_mut(l);
            let input: &[f32] = match l {
                0 => &self.x,
                _ => &below[l - 1],
            };
            let d = if l == 0 { e } else { hs };
            let h_prev = &self.h_prev[..];
            let gp = SyncPtr(self.gx.as_mut_ptr());
            let hp = SyncPtr(here[0].as_mut_ptr());
            let cp = SyncPtr(self.c[l].as_mut_ptr());
            let lw = &w.layers[l];
            let bias = p.lstm[l].b.as_slice().expect("standard layout");
            pool::run(tasks, &|t| {
                let ur = pool::split(blocks, tasks, t);
                let units = ur.start * NR..ur.end * NR;
                // SAFETY: gx holds R·4H values and h, c R·H; this task alone writes gate
                // columns q·H + units of gx and units of h and c; h_prev and the input are
                // read-only here; token ids were checked against V.
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
        let top = &self.h[cfg.layers - 1][..];
        let lp = SyncPtr(self.logits.as_mut_ptr());
        let ob = p.out_b.as_slice().expect("standard layout");
        let panels = v.div_ceil(NR);
        let tasks = pool::width().min(panels).max(1);
        pool::run(tasks, &|t| {
            let pr = pool::split(panels, tasks, t);
            let cols = pr.start * NR..(pr.end * NR).min(v);
            // SAFETY: logits hold R·V values; this task alone writes these columns.
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

    /// Feeds a sequence of tokens, the same for every row (a prime); returns the logits
    /// after the last one, or `None` if `tokens` is empty.
    pub fn feed(&mut self, tokens: &[u32]) -> Option<&[f32]> {
        let mut row = vec![0u32; self.rows];
        for &t in tokens {
            row.fill(t);
            self.step(&row);
        }
        (!tokens.is_empty()).then_some(&self.logits[..])
    }

    /// Logits of row `r` from the last step, (V).
    pub fn logits_row(&self, r: usize) -> &[f32] {
        let v = self.model.config.vocab;
        &self.logits[r * v..(r + 1) * v]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::model::{LstmState, Workspace};
    use rand::{Rng, SeedableRng};

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

    /// A row gives the same bits alone or among others, with and without the layer-0 token
    /// table (V ≤ E and V > E).
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
            assert_eq!(many.row_state(3), one.row_state(0));
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
                let got = g.step(&tokens[step * b..(step + 1) * b]).to_vec();
                let vv = m.config.vocab;
                let want = &ws.logits().to_slice().unwrap()[step * b * vv..(step + 1) * b * vv];
                assert_eq!(bits(&got), bits(want), "step {step}");
            }
        }
    }

    /// Rows that join and leave between steps (swap-removal, pushes with a saved state) keep
    /// giving the numbers they would give alone; a forked generator shares the weights.
    #[test]
    fn rows_join_and_leave_without_changing_any_row() {
        for m in [model(7, 12, 32, 2), model(40, 9, 21, 2)] {
            let v = m.config.vocab as u32;
            // Reference: one generator per stream, each alone.
            let tok = |s: u32, step: u32| (s * 11 + step * 5 + 1) % v;
            let alone = |s: u32, from: u32, to: u32| {
                let mut g = Generator::new(Arc::clone(&m), 1);
                let mut out = Vec::new();
                for step in from..to {
                    out.push(bits(g.step(&[tok(s, step)])));
                }
                (out, g.row_state(0))
            };
            let base = Generator::new(Arc::clone(&m), 0);
            let mut g = base.fork();
            // streams[i] = (id, first step) of row i
            let mut streams: Vec<(u32, u32)> = Vec::new();
            let mut got: std::collections::HashMap<u32, Vec<Vec<u32>>> = Default::default();
            let mut parked = None;
            for step in 0..12u32 {
                if step % 2 == 0 && step < 10 {
                    g.push_row(None);
                    streams.push((step, step));
                }
                if step == 5 {
                    // stream 0 leaves: the last row moves into its place
                    let i = streams.iter().position(|s| s.0 == 0).unwrap();
                    parked = Some((g.swap_remove_row(i), streams.swap_remove(i)));
                }
                let toks: Vec<u32> = streams.iter().map(|&(s, f)| tok(s, step - f)).collect();
                g.step(&toks);
                for (r, &(s, _)) in streams.iter().enumerate() {
                    got.entry(s).or_default().push(bits(g.logits_row(r)));
                }
            }
            for (&s, rows) in &got {
                let (want, _) = alone(s, 0, rows.len() as u32);
                assert_eq!(&want, rows, "stream {s}");
            }
            let (state, (s, _)) = parked.unwrap();
            assert_eq!(state, alone(s, 0, 5).1);
            // A parked state pushed back continues where it left off.
            let mut h = base.fork();
            h.push_row(Some(&state));
            let cont = bits(h.step(&[tok(s, 5)]));
            assert_eq!(cont, alone(s, 0, 6).0[5]);
        }
    }

    #[test]
    #[should_panic(expected = "outside the vocabulary")]
    fn a_token_outside_the_vocabulary_is_refused() {
        let m = model(7, 12, 20, 1);
        Generator::new(m, 2).step(&[1, 7]);
    }

    #[test]
    #[should_panic(expected = "another shape")]
    fn a_state_of_another_shape_is_refused() {
        let mut g = Generator::new(model(7, 12, 20, 1), 1);
        let other = RowState::zeros(&model(7, 12, 21, 1).config);
        g.set_row_state(0, &other);
    }
}
