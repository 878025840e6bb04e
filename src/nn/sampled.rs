//! Sampled softmax for training large-vocabulary models (word, BPE): the output layer scores
//! each row's target and S candidates drawn once per window from a proposal q (the training
//! split's unigram frequencies) instead of all V entries, so its three products cost
//! S / V of the full layer's. Evaluation and generation always use the full softmax.
//!
//! The loss of a row with target y and output logits z (Bengio & Senécal's importance
//! sampling of the normaliser, target kept exact):
//!
//! ```text
//! L = log Ẑ − z_y,   Ẑ = exp(z_y) + Σ_j [s_j ≠ y] · exp(z_{s_j}) / (S · q_{s_j})
//! ```
//!
//! with candidates s_1..s_S drawn from q with replacement. The sum over candidates is an
//! unbiased estimate of Σ_{w≠y} exp(z_w), so L estimates the full cross-entropy (slightly
//! below it, by Jensen) and the training loss a run reports stays comparable with its
//! validation loss. In logits: a softmax cross-entropy over the row
//! `[z_y, z_{s_1} − ln(S q_{s_1}), …]` with target 0 and accidental hits (s_j = y) at −∞.
//!
//! Shapes: N = T·B rows, H the top layer's width, V the vocabulary, S the candidates, K = S + 1
//! columns per row (column 0 the target).

use ndarray::{Array2, ArrayView2};
use rand::{Rng, RngCore};

use super::gemm::PackedB;
use super::linear::{linear_forward_packed, linear_weight_grad, loss_backward_packed};
use super::Float;
use crate::error::{Error, Result};

/// Where a window's candidates come from: the F most frequent entries (the head), always
/// scored exactly, and S draws with replacement from the proposal q over the rest (the
/// tail), by a Walker / Vose alias table. ln(S · q_w) corrects each tail candidate's logit
/// (0 for the head: weight 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    samples: usize,
    head: Vec<u32>,
    tail: Vec<u32>,
    prob: Vec<f32>,
    alias: Vec<u32>,
    log_expected: Vec<f32>,
}

impl Proposal {
    /// `candidates` per window from `counts` (how often each entry occurs in the training
    /// tokens): the most frequent half of them as the head, the other half drawn from the
    /// rest (`quill train --sampled-softmax N`). Needs 2 ≤ N and N / 2 < V.
    pub fn from_counts(counts: &[u64], candidates: usize) -> Result<Self> {
        check_candidates(candidates, counts.len())?;
        Self::new(counts, candidates - candidates / 2, candidates / 2)
    }

    /// The `head` most frequent entries of `counts` (ties to the lower id) and S = `samples`
    /// draws from the rest with q_w ∝ counts[w] + 1 (add-one, so every entry can be drawn and
    /// the estimate of the normaliser is unbiased). Needs S ≥ 1 and F < V.
    pub fn new(counts: &[u64], samples: usize, head: usize) -> Result<Self> {
        let v = counts.len();
        if samples == 0 || head >= v {
            return Err(Error::config(
                "sampled-softmax",
                format!("{samples} draws beside a head of {head}: needs a draw and a head below V = {v}"),
            ));
        }
        let mut order: Vec<u32> = (0..v as u32).collect();
        order.sort_by_key(|&w| (std::cmp::Reverse(counts[w as usize]), w));
        let tail = order.split_off(head);
        let head = order;
        let total: f64 = tail.iter().map(|&w| counts[w as usize] as f64 + 1.0).sum();
        let q: Vec<f64> = tail
            .iter()
            .map(|&w| (counts[w as usize] as f64 + 1.0) / total)
            .collect();
        // Vose's alias method: scaled probabilities split into under- and over-full slots.
        let n = tail.len();
        let mut scaled: Vec<f64> = q.iter().map(|&p| p * n as f64).collect();
        let mut prob = vec![1.0f32; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            prob[s] = scaled[s] as f32;
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        let mut log_expected = vec![0f32; v];
        for (&w, &p) in tail.iter().zip(&q) {
            log_expected[w as usize] = (samples as f64 * p).ln() as f32;
        }
        Ok(Proposal {
            samples,
            head,
            tail,
            prob,
            alias,
            log_expected,
        })
    }

    /// Candidates per window: F + S.
    pub fn candidates(&self) -> usize {
        self.head.len() + self.samples
    }

    /// ln(S · q_w) for every entry w (0 for the head), (V).
    pub fn log_expected(&self) -> &[f32] {
        &self.log_expected
    }

    /// The head's ids, then S draws from the tail, into `out`.
    pub fn draw(&self, rng: &mut dyn RngCore, out: &mut Vec<u32>) {
        let n = self.prob.len();
        out.clear();
        out.extend_from_slice(&self.head);
        out.extend((0..self.samples).map(|_| {
            let i = rng.random_range(0..n);
            let slot = if rng.random::<f32>() < self.prob[i] {
                i
            } else {
                self.alias[i] as usize
            };
            self.tail[slot]
        }));
    }
}

/// Checks that N candidates per window fit a vocabulary of V: N ≥ 2 (a head and a draw)
/// and a head of N / 2 below V.
pub fn check_candidates(candidates: usize, v: usize) -> Result<()> {
    if candidates < 2 || candidates / 2 >= v {
        return Err(Error::config(
            "sampled-softmax",
            format!(
                "{candidates} candidates: needs 2 to {} for V = {v} (the most frequent half of \
                 them is always scored and must leave some of the vocabulary to draw from); 0 \
                 turns it off",
                2 * v - 1
            ),
        ));
    }
    Ok(())
}

/// The candidates of one window: the drawn ids (S) and ln(S · q_w) for every entry (V).
#[derive(Clone, Copy, Debug)]
pub struct Candidates<'a> {
    /// Drawn ids s_1..s_S.
    pub ids: &'a [u32],
    /// ln(S · q_w), (V).
    pub log_expected: &'a [f32],
}

/// Buffers of the sampled output layer, kept between windows.
#[derive(Clone, Debug, Default)]
pub struct SampledWorkspace<F> {
    /// Gathered output weights, (K, H): row 0 zero (the target column), row j = W[s_j].
    wc: Array2<F>,
    /// Gathered biases with the correction, (K): b[s_j] − ln(S q_{s_j}).
    bc: Vec<F>,
    /// Logits, then their gradient, (N, K).
    logits: Vec<F>,
    /// Gradient of the gathered weights and biases, (K, H) and (K).
    dwc: Vec<F>,
    dbc: Vec<F>,
    /// Column 0 for every row: the target of the candidate rows.
    zeros: Vec<u32>,
    wt: PackedB<F>,
    w: PackedB<F>,
}

/// Sampled softmax cross-entropy of the output layer `z = x · Wᵀ + b` against `targets`, and
/// its gradients: `x` (N, H) row-major, `weight` W (V, H), `bias` (V). Accumulates the
/// mean-loss gradients into `dw` (V, H) and `db` (V), overwrites `dx` (N, H) and `row_loss`
/// (N). Returns the sum of the row losses (the full layer's counterpart is
/// [`loss_backward_packed`]).
#[allow(clippy::too_many_arguments)]
pub fn sampled_loss_backward<F: Float>(
    x: &[F],
    targets: &[u32],
    weight: ArrayView2<'_, F>,
    bias: &[F],
    cand: Candidates<'_>,
    ws: &mut SampledWorkspace<F>,
    dw: &mut [F],
    db: &mut [F],
    dx: &mut [F],
    row_loss: &mut [f64],
) -> f64 {
    let (v, h) = weight.dim();
    let n = targets.len();
    let k = cand.ids.len() + 1;
    assert!(x.len() >= n * h && dx.len() >= n * h && dw.len() == v * h && db.len() == v);
    assert!(bias.len() == v && cand.log_expected.len() == v);
    if ws.wc.dim() != (k, h) {
        ws.wc = Array2::zeros((k, h));
    }
    ws.bc.resize(k, F::zero());
    ws.bc[0] = F::zero();
    for (j, &s) in cand.ids.iter().enumerate() {
        let s = s as usize;
        ws.wc.row_mut(j + 1).assign(&weight.row(s));
        ws.bc[j + 1] = bias[s] - F::c(cand.log_expected[s] as f64);
    }
    ws.logits.resize(n * k, F::zero());
    ws.wt.pack(ws.wc.t());
    linear_forward_packed(&x[..n * h], &ws.wt, &ws.bc, &mut ws.logits);
    for (i, &y) in targets.iter().enumerate() {
        let y = y as usize;
        let row = &mut ws.logits[i * k..(i + 1) * k];
        let w = weight.row(y);
        row[0] = x[i * h..(i + 1) * h]
            .iter()
            .zip(w.iter())
            .fold(bias[y], |acc, (&a, &b)| F::fma(a, b, acc));
        for (r, &s) in row[1..].iter_mut().zip(cand.ids) {
            if s as usize == y {
                *r = F::neg_infinity();
            }
        }
    }
    ws.zeros.resize(n, 0);
    ws.w.pack(ws.wc.view());
    let loss = loss_backward_packed(&mut ws.logits, &ws.zeros, &ws.w, dx, row_loss);
    // The target column: dx_i += g_i0 · W[y_i], dW[y_i] += g_i0 · x_i, db[y_i] += g_i0.
    for (i, &y) in targets.iter().enumerate() {
        let y = y as usize;
        let g = ws.logits[i * k];
        let xi = &x[i * h..(i + 1) * h];
        for (d, &w) in dx[i * h..(i + 1) * h].iter_mut().zip(weight.row(y).iter()) {
            *d = F::fma(g, w, *d);
        }
        for (d, &a) in dw[y * h..(y + 1) * h].iter_mut().zip(xi) {
            *d = F::fma(g, a, *d);
        }
        db[y] += g;
    }
    // The candidate columns: their gradient by one product, then added into their rows.
    ws.dwc.clear();
    ws.dwc.resize(k * h, F::zero());
    ws.dbc.clear();
    ws.dbc.resize(k, F::zero());
    linear_weight_grad(&x[..n * h], &ws.logits, n, &mut ws.dwc, &mut ws.dbc);
    for (j, &s) in cand.ids.iter().enumerate() {
        let s = s as usize;
        let src = &ws.dwc[(j + 1) * h..(j + 2) * h];
        for (d, &g) in dw[s * h..(s + 1) * h].iter_mut().zip(src) {
            *d += g;
        }
        db[s] += ws.dbc[j + 1];
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::loss::xent_row;
    use rand::SeedableRng;

    #[test]
    fn alias_table_draws_the_proposal() {
        let counts = [0u64, 9, 19, 49, 1];
        let p = Proposal::new(&counts, 4, 0).unwrap();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
        let mut hist = [0usize; 5];
        let mut out = Vec::new();
        for _ in 0..50_000 {
            p.draw(&mut rng, &mut out);
            assert_eq!(out.len(), 4);
            out.iter().for_each(|&s| hist[s as usize] += 1);
        }
        let total: f64 = counts.iter().map(|&c| c as f64 + 1.0).sum();
        for (w, &c) in counts.iter().enumerate() {
            let want = (c as f64 + 1.0) / total;
            let got = hist[w] as f64 / 200_000.0;
            assert!((got - want).abs() < 0.005, "entry {w}: {got} vs {want}");
            let le = (4.0 * want).ln() as f32;
            assert!((p.log_expected()[w] - le).abs() < 1e-6);
        }
    }

    #[test]
    fn the_head_is_the_most_frequent_half_and_must_leave_a_tail() {
        for (s, f) in [(0, 0), (0, 2), (3, 5), (3, 6)] {
            let e = Proposal::new(&[1, 2, 3, 4, 5], s, f).unwrap_err();
            assert!(e.to_string().contains("sampled-softmax"), "{e}");
        }
        for n in [0, 1, 10, 11] {
            let e = Proposal::from_counts(&[1, 2, 3, 4, 5], n).unwrap_err();
            assert!(e.to_string().contains("2 to 9 for V = 5"), "{e}");
        }
        let p = Proposal::from_counts(&[1, 9, 3, 4, 5], 9).unwrap();
        assert_eq!((p.head.len(), p.samples), (4, 5));
        let p = Proposal::new(&[1, 9, 3, 4, 5], 3, 4).unwrap();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(1);
        let mut out = Vec::new();
        p.draw(&mut rng, &mut out);
        // The head by frequency, then draws from the one entry left.
        assert_eq!(out, [1, 4, 3, 2, 0, 0, 0]);
        assert_eq!(&p.log_expected()[1..], [0.0; 4]);
        assert!((p.log_expected()[0] - 3f32.ln()).abs() < 1e-6);
    }

    fn setup(n: usize, h: usize, v: usize) -> (Vec<f64>, Array2<f64>, Vec<f64>, Vec<u32>) {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(11);
        let x = (0..n * h).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w = Array2::from_shape_fn((v, h), |_| rng.random_range(-1.0..1.0));
        let b = (0..v).map(|_| rng.random_range(-0.5..0.5)).collect();
        let y = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
        (x, w, b, y)
    }

    /// The mean loss and the gradients (dW, db, dx) of one window, from fresh buffers.
    fn mean_loss_and_grads(
        x: &[f64],
        y: &[u32],
        w: &Array2<f64>,
        b: &[f64],
        cand: Candidates<'_>,
        ws: &mut SampledWorkspace<f64>,
    ) -> (f64, Vec<f64>, Vec<f64>, Vec<f64>) {
        let ((v, h), n) = (w.dim(), y.len());
        let (mut dw, mut db, mut dx) = (vec![0.0; v * h], vec![0.0; v], vec![0.0; n * h]);
        let mut rl = vec![0.0; n];
        let l = sampled_loss_backward(
            x,
            y,
            w.view(),
            b,
            cand,
            ws,
            &mut dw,
            &mut db,
            &mut dx,
            &mut rl,
        );
        (l / n as f64, dw, db, dx)
    }

    /// Every other entry once, with S · q = 1: the estimate is the full normaliser, so the
    /// loss and every gradient equal the full softmax's.
    #[test]
    fn all_other_entries_once_is_the_full_softmax() {
        let (n, h, v) = (1, 6, 9);
        let (x, w, b, y) = setup(n, h, v);
        let ids: Vec<u32> = (0..v as u32).filter(|&s| s != y[0]).collect();
        let le = vec![0f32; v];
        let cand = Candidates {
            ids: &ids,
            log_expected: &le,
        };
        let (loss, dw, db, dx) =
            mean_loss_and_grads(&x, &y, &w, &b, cand, &mut SampledWorkspace::default());
        let xa = ndarray::ArrayView2::from_shape((n, h), &x).unwrap();
        let mut logits = xa.dot(&w.t()) + ndarray::ArrayView1::from(&b);
        let full = xent_row(logits.as_slice_mut().unwrap(), y[0] as usize, Some(1.0));
        assert!((loss - full).abs() < 1e-12, "{loss} vs {full}");
        let g = logits.row(0).to_owned();
        for (e, &d) in db.iter().enumerate() {
            assert!((d - g[e]).abs() < 1e-12, "db[{e}]");
        }
        let want_dx = g.dot(&w);
        for (a, bv) in dx.iter().zip(want_dx.iter()) {
            assert!((a - bv).abs() < 1e-12);
        }
        for e in 0..v {
            for c in 0..h {
                assert!((dw[e * h + c] - g[e] * x[c]).abs() < 1e-12);
            }
        }
    }

    /// Central differences in f64 with the candidates held fixed (repeats and an
    /// accidental hit included).
    #[test]
    fn gradients_match_central_differences() {
        let (n, h, v) = (5, 4, 12);
        let (x, w, b, mut y) = setup(n, h, v);
        y[2] = 3;
        let ids = [3u32, 7, 7, 0, 11, 5];
        let counts: Vec<u64> = (0..v as u64).map(|i| 20 - i).collect();
        let p = Proposal::new(&counts, ids.len(), 0).unwrap();
        let loss_of = |x: &[f64], w: &Array2<f64>, b: &[f64]| {
            let cand = Candidates {
                ids: &ids,
                log_expected: p.log_expected(),
            };
            mean_loss_and_grads(x, &y, w, b, cand, &mut SampledWorkspace::default())
        };
        let (_, dw, db, dx) = loss_of(&x, &w, &b);
        let eps = 1e-6;
        let check = |got: f64, lp: f64, lm: f64, what: &str| {
            let num = (lp - lm) / (2.0 * eps);
            assert!(
                (got - num).abs() < 1e-7 * (1.0 + num.abs()),
                "{what}: {got} vs {num}"
            );
        };
        for (i, &g) in dx.iter().enumerate() {
            let (mut p1, mut m1) = (x.clone(), x.clone());
            p1[i] += eps;
            m1[i] -= eps;
            check(g, loss_of(&p1, &w, &b).0, loss_of(&m1, &w, &b).0, "dx");
        }
        for (i, &g) in dw.iter().enumerate() {
            let (mut p1, mut m1) = (w.clone(), w.clone());
            p1.as_slice_mut().unwrap()[i] += eps;
            m1.as_slice_mut().unwrap()[i] -= eps;
            check(g, loss_of(&x, &p1, &b).0, loss_of(&x, &m1, &b).0, "dw");
        }
        for (i, &g) in db.iter().enumerate() {
            let (mut p1, mut m1) = (b.clone(), b.clone());
            p1[i] += eps;
            m1[i] -= eps;
            check(g, loss_of(&x, &w, &p1).0, loss_of(&x, &w, &m1).0, "db");
        }
    }

    /// Averaged over draws, the sampled loss is close to the full loss.
    #[test]
    fn the_loss_estimates_the_full_cross_entropy() {
        let (n, h, v) = (64, 8, 200);
        let (x, w, b, y) = setup(n, h, v);
        let counts: Vec<u64> = (0..v as u64).map(|i| 1000 / (i + 1)).collect();
        let p = Proposal::from_counts(&counts, 128).unwrap();
        let xa = ndarray::ArrayView2::from_shape((n, h), &x).unwrap();
        let mut logits = xa.dot(&w.t()) + ndarray::ArrayView1::from(&b);
        let full: f64 = logits
            .rows_mut()
            .into_iter()
            .zip(&y)
            .map(|(mut r, &t)| xent_row(r.as_slice_mut().unwrap(), t as usize, None))
            .sum::<f64>()
            / n as f64;
        let mut rng = rand_pcg::Pcg64::seed_from_u64(2);
        let (mut ids, mut ws) = (Vec::new(), SampledWorkspace::default());
        let draws = 200;
        let mut mean = 0.0;
        for _ in 0..draws {
            p.draw(&mut rng, &mut ids);
            let cand = Candidates {
                ids: &ids,
                log_expected: p.log_expected(),
            };
            mean += mean_loss_and_grads(&x, &y, &w, &b, cand, &mut ws).0 / draws as f64;
        }
        assert!((mean - full).abs() < 0.05, "{mean} vs {full}");
    }
}
