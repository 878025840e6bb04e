//! One LSTM layer: forward over a window of T steps and its backward pass (truncated BPTT).
//!
//! The cell, with `*` the element-wise (Hadamard) product, `σ` the logistic sigmoid and
//! `[x; h]` the concatenation of the input and the previous hidden state:
//!
//! ```text
//! a_t = [x_t; h_{t-1}] · W + b            W: (D+H, 4H), b: (4H), gate columns i | f | g | o
//! i_t = σ(a_i)   f_t = σ(a_f)   o_t = σ(a_o)   g_t = tanh(a_g)
//! c_t = f_t * c_{t-1} + i_t * g_t
//! h_t = o_t * tanh(c_t)
//! ```
//!
//! W is stored as its two row blocks, `wx = W[..D]` (D, 4H) and `wh = W[D..]` (H, 4H), so the
//! input projection of all T steps is one (T·B, D)·(D, 4H) GEMM before the time loop and only
//! `h_{t-1} · wh` runs inside it. The gate order i, f, g, o is PyTorch's, so a checkpoint's
//! `weight_ih_l{k}` is `wxᵀ` and `weight_hh_l{k}` is `whᵀ`.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, ArrayViewMut2, Axis};
use rand::Rng;

use super::Float;

/// Parameters of one layer (also used for their gradients and optimizer moments).
#[derive(Clone, Debug, PartialEq)]
pub struct LstmParams<F> {
    /// Input rows of the fused weight, (D, 4H).
    pub wx: Array2<F>,
    /// Recurrent rows of the fused weight, (H, 4H).
    pub wh: Array2<F>,
    /// Bias, (4H).
    pub b: Array1<F>,
}

impl<F: Float> LstmParams<F> {
    /// All-zero parameters (gradient buffers).
    pub fn zeros(d: usize, h: usize) -> Self {
        LstmParams {
            wx: Array2::zeros((d, 4 * h)),
            wh: Array2::zeros((h, 4 * h)),
            b: Array1::zeros(4 * h),
        }
    }

    /// Initialisation: every weight uniform in [-1/√H, 1/√H] (PyTorch's `nn.LSTM` default),
    /// bias zero except the forget gate's, which starts at 1 so the cell remembers by default.
    pub fn init(d: usize, h: usize, rng: &mut impl Rng) -> Self {
        let k = 1.0 / (h as f64).sqrt();
        let mut p = Self::zeros(d, h);
        p.wx.mapv_inplace(|_| F::c(rng.random_range(-k..k)));
        p.wh.mapv_inplace(|_| F::c(rng.random_range(-k..k)));
        p.b.slice_mut(s![h..2 * h]).fill(F::one());
        p
    }

    /// Input size D.
    pub fn input_size(&self) -> usize {
        self.wx.nrows()
    }

    /// Hidden size H.
    pub fn hidden_size(&self) -> usize {
        self.wh.nrows()
    }
}

/// What the forward pass keeps for the backward pass, plus backward workspaces. Reused across
/// windows; reallocated only when (T, B) changes.
#[derive(Clone, Debug, Default)]
pub struct LstmCache<F> {
    t: usize,
    b: usize,
    /// Activated gates i, f, g, o per step, (T·B, 4H). Before the time loop it holds the input
    /// projection; during backward it is overwritten by the pre-activation gradients.
    gates: Array2<F>,
    /// Cell states: rows 0..B hold c_0 (the carried state), then c_1..c_T, ((T+1)·B, H).
    c: Array2<F>,
    /// tanh(c_t) for t = 1..T, (T·B, H).
    tc: Array2<F>,
    /// Hidden states: rows 0..B hold h_0, then the layer's outputs h_1..h_T, ((T+1)·B, H).
    h: Array2<F>,
    /// Backward: gradient flowing into h_{t-1} from step t, (B, H).
    dh_next: Array2<F>,
    /// Backward: gradient flowing into c_{t-1} from step t, (B, H).
    dc_next: Array2<F>,
}

impl<F: Float> LstmCache<F> {
    fn ensure(&mut self, t: usize, b: usize, h: usize) {
        if self.t != t || self.b != b || self.h.ncols() != h {
            self.t = t;
            self.b = b;
            self.gates = Array2::zeros((t * b, 4 * h));
            self.c = Array2::zeros(((t + 1) * b, h));
            self.tc = Array2::zeros((t * b, h));
            self.h = Array2::zeros(((t + 1) * b, h));
            self.dh_next = Array2::zeros((b, h));
            self.dc_next = Array2::zeros((b, h));
        }
    }

    /// The layer's outputs h_1..h_T, (T·B, H).
    pub fn output(&self) -> ArrayView2<'_, F> {
        self.h.slice(s![self.b.., ..])
    }

    /// Final hidden state h_T, (B, H).
    pub fn last_h(&self) -> ArrayView2<'_, F> {
        self.h.slice(s![self.t * self.b.., ..])
    }

    /// Final cell state c_T, (B, H).
    pub fn last_c(&self) -> ArrayView2<'_, F> {
        self.c.slice(s![self.t * self.b.., ..])
    }
}

/// Forward pass over a window.
///
/// - `x`: inputs, (T·B, D), time-major rows.
/// - `h0`, `c0`: carried state, (B, H).
/// - Outputs land in `cache` ([`LstmCache::output`], [`LstmCache::last_h`], [`LstmCache::last_c`]).
pub fn lstm_forward<F: Float>(
    p: &LstmParams<F>,
    x: ArrayView2<'_, F>,
    h0: ArrayView2<'_, F>,
    c0: ArrayView2<'_, F>,
    t_len: usize,
    cache: &mut LstmCache<F>,
) {
    let b = h0.nrows();
    let h = p.hidden_size();
    debug_assert_eq!(x.nrows(), t_len * b);
    debug_assert_eq!(x.ncols(), p.input_size());
    cache.ensure(t_len, b, h);

    // Input projection for every step at once: gates = x · wx + b.
    general_mat_mul(F::one(), &x, &p.wx, F::zero(), &mut cache.gates);
    cache.gates += &p.b;
    cache.h.slice_mut(s![..b, ..]).assign(&h0);
    cache.c.slice_mut(s![..b, ..]).assign(&c0);

    for t in 0..t_len {
        let rows = t * b..(t + 1) * b;
        {
            let h_prev = cache.h.slice(s![rows.clone(), ..]);
            let mut g = cache.gates.slice_mut(s![rows.clone(), ..]);
            general_mat_mul(F::one(), &h_prev, &p.wh, F::one(), &mut g);
        }
        let gates = cache.gates.as_slice_mut().expect("standard layout");
        let gates = &mut gates[t * b * 4 * h..(t + 1) * b * 4 * h];
        let (c_prev, c_next) = split_rows(&mut cache.c, t, b, h);
        let (_, h_next) = split_rows(&mut cache.h, t, b, h);
        let tc = &mut cache.tc.as_slice_mut().expect("standard layout")[t * b * h..(t + 1) * b * h];
        cell_forward(gates, c_prev, c_next, tc, h_next, b, h);
    }
}

/// Rows t·B..(t+1)·B (read) and (t+1)·B..(t+2)·B (write) of a ((T+1)·B, H) state matrix.
fn split_rows<F: Float>(a: &mut Array2<F>, t: usize, b: usize, h: usize) -> (&[F], &mut [F]) {
    let s = a.as_slice_mut().expect("standard layout");
    let (lo, hi) = s.split_at_mut((t + 1) * b * h);
    (&lo[t * b * h..], &mut hi[..b * h])
}

/// The element-wise part of one step, fused: activates the gates in place and writes c_t,
/// tanh(c_t) and h_t. `gates` is (B, 4H), the state slices are (B, H).
#[inline]
fn cell_forward<F: Float>(
    gates: &mut [F],
    c_prev: &[F],
    c_next: &mut [F],
    tc: &mut [F],
    h_next: &mut [F],
    b: usize,
    h: usize,
) {
    for r in 0..b {
        let g = &mut gates[r * 4 * h..(r + 1) * 4 * h];
        let (gi, rest) = g.split_at_mut(h);
        let (gf, rest) = rest.split_at_mut(h);
        let (gg, go) = rest.split_at_mut(h);
        let cp = &c_prev[r * h..(r + 1) * h];
        let cn = &mut c_next[r * h..(r + 1) * h];
        let tcr = &mut tc[r * h..(r + 1) * h];
        let hn = &mut h_next[r * h..(r + 1) * h];
        for j in 0..h {
            let i = F::sigmoid(gi[j]);
            let f = F::sigmoid(gf[j]);
            let gv = F::tanh_(gg[j]);
            let o = F::sigmoid(go[j]);
            gi[j] = i;
            gf[j] = f;
            gg[j] = gv;
            go[j] = o;
            let c = f * cp[j] + i * gv;
            let tcv = F::tanh_(c);
            cn[j] = c;
            tcr[j] = tcv;
            hn[j] = o * tcv;
        }
    }
}

/// Backward pass over the window that [`lstm_forward`] last ran in `cache`.
///
/// - `x`: the same inputs, (T·B, D).
/// - `dh_out`: gradient of the loss w.r.t. the outputs h_1..h_T, (T·B, H).
/// - `dp`: parameter gradients, accumulated into.
/// - `dx`: if given, receives the gradient w.r.t. `x`, (T·B, D) (overwritten).
///
/// Truncated BPTT: the gradient w.r.t. the carried state (h_0, c_0) is not computed; the
/// gradient entering from beyond the window's end is zero.
pub fn lstm_backward<F: Float>(
    p: &LstmParams<F>,
    x: ArrayView2<'_, F>,
    dh_out: ArrayView2<'_, F>,
    cache: &mut LstmCache<F>,
    dp: &mut LstmParams<F>,
    dx: Option<ArrayViewMut2<'_, F>>,
) {
    let (t_len, b) = (cache.t, cache.b);
    let h = p.hidden_size();
    cache.dh_next.fill(F::zero());
    cache.dc_next.fill(F::zero());
    let dh_out = dh_out.as_slice().expect("standard layout");

    for t in (0..t_len).rev() {
        {
            let gates = cache.gates.as_slice_mut().expect("standard layout");
            let g = &mut gates[t * b * 4 * h..(t + 1) * b * 4 * h];
            let c = cache.c.as_slice().expect("standard layout");
            let c_prev = &c[t * b * h..(t + 1) * b * h];
            let tc = &cache.tc.as_slice().expect("standard layout")[t * b * h..(t + 1) * b * h];
            let dho = &dh_out[t * b * h..(t + 1) * b * h];
            let dh_next = cache.dh_next.as_slice().expect("standard layout");
            let dc_next = cache.dc_next.as_slice_mut().expect("standard layout");
            cell_backward(g, c_prev, tc, dho, dh_next, dc_next, b, h);
        }
        if t > 0 {
            let dg = cache.gates.slice(s![t * b..(t + 1) * b, ..]);
            general_mat_mul(F::one(), &dg, &p.wh.t(), F::zero(), &mut cache.dh_next);
        }
    }

    // Weight gradients over the whole window, one GEMM each.
    let dg = &cache.gates;
    general_mat_mul(F::one(), &x.t(), dg, F::one(), &mut dp.wx);
    let h_prev = cache.h.slice(s![..t_len * b, ..]);
    general_mat_mul(F::one(), &h_prev.t(), dg, F::one(), &mut dp.wh);
    dp.b += &dg.sum_axis(Axis(0));
    if let Some(mut dx) = dx {
        general_mat_mul(F::one(), dg, &p.wx.t(), F::zero(), &mut dx);
    }
}

/// Element-wise backward of one step. On entry `g` holds the activated gates (B, 4H); on exit
/// the gradients w.r.t. the pre-activations. `dc_next` carries dL/dc_t in and dL/dc_{t-1} out.
#[allow(clippy::too_many_arguments)]
#[inline]
fn cell_backward<F: Float>(
    g: &mut [F],
    c_prev: &[F],
    tc: &[F],
    dh_out: &[F],
    dh_next: &[F],
    dc_next: &mut [F],
    b: usize,
    h: usize,
) {
    let one = F::one();
    for r in 0..b {
        let gr = &mut g[r * 4 * h..(r + 1) * 4 * h];
        let (gi, rest) = gr.split_at_mut(h);
        let (gf, rest) = rest.split_at_mut(h);
        let (gg, go) = rest.split_at_mut(h);
        let o_ = r * h;
        for j in 0..h {
            let (i, f, gv, o) = (gi[j], gf[j], gg[j], go[j]);
            let tcv = tc[o_ + j];
            let dh = dh_out[o_ + j] + dh_next[o_ + j];
            let dc = dc_next[o_ + j] + dh * o * (one - tcv * tcv);
            dc_next[o_ + j] = dc * f;
            gi[j] = dc * gv * i * (one - i);
            gf[j] = dc * c_prev[o_ + j] * f * (one - f);
            gg[j] = dc * i * (one - gv * gv);
            go[j] = dh * tcv * o * (one - o);
        }
    }
}

/// One step for generation (no caching): updates `h` and `c` (B, H) in place given the input
/// projection `gx = x · wx + b` (B, 4H), which is overwritten as workspace.
pub fn lstm_step<F: Float>(
    p: &LstmParams<F>,
    gx: &mut Array2<F>,
    h: &mut Array2<F>,
    c: &mut Array2<F>,
) {
    let (b, hs) = (h.nrows(), h.ncols());
    general_mat_mul(F::one(), &*h, &p.wh, F::one(), gx);
    let g = gx.as_slice_mut().expect("standard layout");
    let c = c.as_slice_mut().expect("standard layout");
    let hv = h.as_slice_mut().expect("standard layout");
    for r in 0..b {
        let gr = &g[r * 4 * hs..(r + 1) * 4 * hs];
        for j in 0..hs {
            let i = F::sigmoid(gr[j]);
            let f = F::sigmoid(gr[hs + j]);
            let gv = F::tanh_(gr[2 * hs + j]);
            let o = F::sigmoid(gr[3 * hs + j]);
            let cn = f * c[r * hs + j] + i * gv;
            c[r * hs + j] = cn;
            hv[r * hs + j] = o * F::tanh_(cn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_pcg::Pcg64;

    fn rand_arr(r: usize, c: usize, rng: &mut Pcg64) -> Array2<f64> {
        Array2::from_shape_fn((r, c), |_| rng.random_range(-1.0..1.0))
    }

    /// The optimised forward against a naive one written straight from the equations with the
    /// fused (D+H, 4H) matrix.
    #[test]
    fn forward_matches_naive_equations() {
        let (d, h, b, t) = (3, 4, 2, 5);
        let mut rng = Pcg64::seed_from_u64(7);
        let mut p = LstmParams::<f64>::init(d, h, &mut rng);
        p.b.mapv_inplace(|v| v + 0.1);
        let x = rand_arr(t * b, d, &mut rng);
        let h0 = rand_arr(b, h, &mut rng);
        let c0 = rand_arr(b, h, &mut rng);
        let mut cache = LstmCache::default();
        lstm_forward(&p, x.view(), h0.view(), c0.view(), t, &mut cache);

        let w = ndarray::concatenate(Axis(0), &[p.wx.view(), p.wh.view()]).unwrap();
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let (mut hp, mut cp) = (h0.clone(), c0.clone());
        for step in 0..t {
            let xt = x.slice(s![step * b..(step + 1) * b, ..]);
            let xh = ndarray::concatenate(Axis(1), &[xt, hp.view()]).unwrap();
            let a = xh.dot(&w) + &p.b;
            let mut hn = Array2::zeros((b, h));
            let mut cn = Array2::zeros((b, h));
            for r in 0..b {
                for j in 0..h {
                    let (i, f, g, o) = (
                        sig(a[[r, j]]),
                        sig(a[[r, h + j]]),
                        a[[r, 2 * h + j]].tanh(),
                        sig(a[[r, 3 * h + j]]),
                    );
                    cn[[r, j]] = f * cp[[r, j]] + i * g;
                    hn[[r, j]] = o * cn[[r, j]].tanh();
                }
            }
            let got = cache
                .output()
                .slice(s![step * b..(step + 1) * b, ..])
                .to_owned();
            for (a, e) in got.iter().zip(hn.iter()) {
                assert!((a - e).abs() < 1e-12, "step {step}: {a} vs {e}");
            }
            hp = hn;
            cp = cn;
        }
        assert!((&cache.last_c().to_owned() - &cp)
            .iter()
            .all(|v| v.abs() < 1e-12));
    }

    #[test]
    fn forget_bias_starts_at_one() {
        let mut rng = Pcg64::seed_from_u64(1);
        let p = LstmParams::<f32>::init(3, 4, &mut rng);
        assert_eq!(p.b.slice(s![4..8]).to_vec(), vec![1.0; 4]);
        assert!(p.b.slice(s![..4]).iter().all(|&v| v == 0.0));
        assert!(p.b.slice(s![8..]).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn step_matches_window_forward() {
        let (d, h, b, t) = (3, 4, 2, 3);
        let mut rng = Pcg64::seed_from_u64(3);
        let p = LstmParams::<f64>::init(d, h, &mut rng);
        let x = rand_arr(t * b, d, &mut rng);
        let h0 = rand_arr(b, h, &mut rng);
        let c0 = rand_arr(b, h, &mut rng);
        let mut cache = LstmCache::default();
        lstm_forward(&p, x.view(), h0.view(), c0.view(), t, &mut cache);
        let (mut hs, mut cs) = (h0.clone(), c0.clone());
        for step in 0..t {
            let mut gx = x.slice(s![step * b..(step + 1) * b, ..]).dot(&p.wx) + &p.b;
            lstm_step(&p, &mut gx, &mut hs, &mut cs);
        }
        assert!((&hs - &cache.last_h()).iter().all(|v| v.abs() < 1e-12));
        assert!((&cs - &cache.last_c()).iter().all(|v| v.abs() < 1e-12));
    }
}
