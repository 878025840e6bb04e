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
use ndarray::{s, Array1, Array2, ArrayView2, ArrayViewMut2};
use rand::Rng;

use super::gemm::{gemm, gemm_strided_ptr, Init, Mat, MatMut, PackedB, View, NR};
use super::pool::{self, parts, row_tasks, SyncPtr};
use super::{as_f32, as_f32_ref, Float};

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
        p.set_forget_bias(F::one());
        p
    }

    /// Sets the forget gate's bias (gate order i, f, g, o: entries H..2H) to `v`.
    pub fn set_forget_bias(&mut self, v: F) {
        let h = self.hidden_size();
        self.b.slice_mut(s![h..2 * h]).fill(v);
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

/// The weights of one layer packed for [`gemm`]. After [`LstmPacked::pack_forward`] they
/// hold wx (D, 4H) and wh (H, 4H); after [`LstmPacked::pack_backward`], in the same buffers,
/// their transposes wxᵀ (4H, D) and whᵀ (4H, H) (the forward pass is over by then, so the
/// backward pass needs no memory of its own).
#[derive(Clone, Debug, Default)]
pub struct LstmPacked<F> {
    /// wx, or wxᵀ after `pack_backward`.
    pub wx: PackedB<F>,
    /// wh, or whᵀ after `pack_backward`.
    pub wh: PackedB<F>,
}

impl<F: Float> LstmPacked<F> {
    /// Packs the forward weights of `p`.
    pub fn pack_forward(&mut self, p: &LstmParams<F>) {
        self.wx.pack(p.wx.view());
        self.wh.pack(p.wh.view());
    }

    /// Packs the transposed weights of `p` for the backward pass.
    pub fn pack_backward(&mut self, p: &LstmParams<F>) {
        self.wx.pack(p.wx.t());
        self.wh.pack(p.wh.t());
    }

    /// Forward weights packed from `p`.
    pub fn forward_only(p: &LstmParams<F>) -> Self {
        let mut s = Self::default();
        s.pack_forward(p);
        s
    }
}

/// What the forward pass keeps for the backward pass, plus backward workspaces. Reused across
/// windows; reallocated only when (T, B) changes.
#[derive(Clone, Debug, Default)]
pub struct LstmCache<F> {
    t: usize,
    b: usize,
    /// Activated gates i, f, g, o per step, (T·B, 4H). During backward it is overwritten by
    /// the pre-activation gradients.
    gates: Array2<F>,
    /// Cell states: rows 0..B hold c_0 (the carried state), then c_1..c_T, ((T+1)·B, H).
    c: Array2<F>,
    /// Hidden states: rows 0..B hold h_0, then the layer's outputs h_1..h_T, ((T+1)·B, H).
    h: Array2<F>,
    /// Backward: gradient flowing into h_{t-1} from step t, (B, H).
    dh_next: Array2<F>,
    /// Backward: gradient flowing into c_{t-1} from step t, (B, H).
    dc_next: Array2<F>,
    /// The packed weights of the current pass (see [`LstmPacked`]).
    packed: LstmPacked<F>,
    /// Token inputs only: the folded table b + embed · wx in the forward pass, then the
    /// per-token sums of the gate gradients in the backward pass, (V, 4H).
    folded: Array2<F>,
}

impl<F: Float> LstmCache<F> {
    fn ensure(&mut self, t: usize, b: usize, h: usize) {
        if self.t != t || self.b != b || self.h.ncols() != h {
            self.t = t;
            self.b = b;
            self.gates = Array2::zeros((t * b, 4 * h));
            self.c = Array2::zeros(((t + 1) * b, h));
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

/// The input of a layer for a window of T·B rows.
#[derive(Clone, Copy, Debug)]
pub enum LstmInput<'a, F> {
    /// Dense rows, (T·B, D).
    Dense(ArrayView2<'a, F>),
    /// Token ids (T·B) into an embedding table (V, D) (layer 0). The embedding and the input
    /// projection fold into a (V, 4H) table b + table · wx computed once per window, and the
    /// backward pass works on per-token sums of the gate gradients; this pays off when V is
    /// small next to T·B (character models).
    Tokens {
        /// The embedding table, (V, D).
        table: ArrayView2<'a, F>,
        /// Token ids, (T·B), each < V.
        tokens: &'a [u32],
    },
}

impl<F: Float> LstmInput<'_, F> {
    fn rows(&self) -> usize {
        match self {
            LstmInput::Dense(x) => x.nrows(),
            LstmInput::Tokens { tokens, .. } => tokens.len(),
        }
    }

    fn width(&self) -> usize {
        match self {
            LstmInput::Dense(x) => x.ncols(),
            LstmInput::Tokens { table, .. } => table.ncols(),
        }
    }

    /// Panics unless the input has `rows` rows of width `d` and every token id is inside the
    /// table (the raw-pointer paths rely on it).
    fn check(&self, rows: usize, d: usize) {
        assert_eq!(self.rows(), rows, "LSTM input: rows");
        assert_eq!(self.width(), d, "LSTM input: width");
        if let LstmInput::Tokens { table, tokens } = self {
            let v = table.nrows();
            if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= v) {
                panic!("token id {bad} is outside the embedding table of {v} rows");
            }
        }
    }
}

/// Whether layer 0 should fold the embedding into its input projection for a window of
/// `n` = T·B rows and vocabulary `v` (the folded table costs V rows instead of T·B).
pub fn fold_embedding(v: usize, n: usize) -> bool {
    2 * v <= n
}

/// Forward pass over a window.
///
/// - `x`: inputs, (T·B, D), time-major rows.
/// - `h0`, `c0`: carried state, (B, H).
/// - Outputs land in `cache` ([`LstmCache::output`], [`LstmCache::last_h`], [`LstmCache::last_c`]).
///
/// First the input projection of the whole window, gates = b + x·wx, one product with its
/// rows split across threads. Then the B streams are split into contiguous groups, one per
/// thread; each group runs the time loop on its own (gates_t += h_{t-1}·wh, then the fused
/// cell update), so no thread waits for another inside the loop.
pub fn lstm_forward<F: Float>(
    p: &LstmParams<F>,
    x: ArrayView2<'_, F>,
    h0: ArrayView2<'_, F>,
    c0: ArrayView2<'_, F>,
    t_len: usize,
    cache: &mut LstmCache<F>,
) {
    lstm_forward_input(p, LstmInput::Dense(x), h0, c0, t_len, cache)
}

/// [`lstm_forward`] on any [`LstmInput`]; with tokens, the gates start as rows of the folded
/// table (the same values, bit for bit, as embedding then projecting each row).
pub fn lstm_forward_input<F: Float>(
    p: &LstmParams<F>,
    input: LstmInput<'_, F>,
    h0: ArrayView2<'_, F>,
    c0: ArrayView2<'_, F>,
    t_len: usize,
    cache: &mut LstmCache<F>,
) {
    let b = h0.nrows();
    let h = p.hidden_size();
    let d = p.input_size();
    input.check(t_len * b, d);
    cache.ensure(t_len, b, h);
    cache.packed.pack_forward(p);
    cache.h.slice_mut(s![..b, ..]).assign(&h0);
    cache.c.slice_mut(s![..b, ..]).assign(&c0);
    let bias = p.b.as_slice().expect("standard layout");
    let n = t_len * b;
    let gp = SyncPtr(cache.gates.as_mut_ptr());
    match input {
        LstmInput::Dense(x) => {
            let x = x.as_standard_layout();
            let xs = x.as_slice().expect("standard layout");
            let packed = &cache.packed;
            let tasks = row_tasks(n);
            pool::run(tasks, &|t| {
                let rows = pool::split(n, tasks, t);
                // SAFETY: disjoint row ranges of the gates.
                let g = unsafe { gp.slice(rows.start * 4 * h, rows.len() * 4 * h) };
                let xa = &xs[rows.start * d..rows.end * d];
                gemm(
                    rows.len(),
                    Mat { data: xa, ld: d },
                    &packed.wx,
                    MatMut { data: g, ld: 4 * h },
                    Init::Bias(bias),
                );
            });
        }
        LstmInput::Tokens { table, tokens } => {
            let v = table.nrows();
            let table = table.as_standard_layout();
            let ts = table.as_slice().expect("standard layout");
            if cache.folded.dim() != (v, 4 * h) {
                cache.folded = Array2::zeros((v, 4 * h));
            }
            let fp = SyncPtr(cache.folded.as_mut_ptr());
            let packed = &cache.packed;
            let tasks = row_tasks(v);
            pool::run(tasks, &|t| {
                let rows = pool::split(v, tasks, t);
                // SAFETY: disjoint row ranges of the folded table.
                let f = unsafe { fp.slice(rows.start * 4 * h, rows.len() * 4 * h) };
                gemm(
                    rows.len(),
                    Mat {
                        data: &ts[rows.start * d..rows.end * d],
                        ld: d,
                    },
                    &packed.wx,
                    MatMut { data: f, ld: 4 * h },
                    Init::Bias(bias),
                );
            });
            let folded = cache.folded.as_slice().expect("standard layout");
            let tasks = row_tasks(n);
            pool::run(tasks, &|t| {
                let rows = pool::split(n, tasks, t);
                // SAFETY: disjoint row ranges of the gates.
                let g = unsafe { gp.slice(rows.start * 4 * h, rows.len() * 4 * h) };
                for (row, &tok) in g.chunks_exact_mut(4 * h).zip(&tokens[rows]) {
                    let o = tok as usize * 4 * h;
                    row.copy_from_slice(&folded[o..o + 4 * h]);
                }
            });
        }
    }
    let cp = SyncPtr(cache.c.as_mut_ptr());
    let hp = SyncPtr(cache.h.as_mut_ptr());
    let packed = &cache.packed;
    let np = parts(b);
    pool::run(np, &|part| {
        let rows = pool::split(b, np, part);
        let nb = rows.len();
        for t in 0..t_len {
            let r0 = t * b + rows.start;
            // SAFETY: rows r0..r0+nb of step t belong to this task alone; h and c rows of
            // step t (read) were written by this task at step t-1 (or are the initial state).
            unsafe {
                let g = gp.slice(r0 * 4 * h, nb * 4 * h);
                let h_prev = hp.slice(r0 * h, nb * h);
                gemm(
                    nb,
                    Mat {
                        data: h_prev,
                        ld: h,
                    },
                    &packed.wh,
                    MatMut { data: g, ld: 4 * h },
                    Init::Accumulate,
                );
                let c_prev = cp.slice(r0 * h, nb * h);
                let c_next = cp.slice((r0 + b) * h, nb * h);
                let h_next = hp.slice((r0 + b) * h, nb * h);
                cell_forward(g, c_prev, c_next, h_next, nb, h);
            }
        }
    });
}

/// The element-wise part of one step, fused: activates the gates in place and writes c_t
/// and h_t. `gates` is (B, 4H), the state slices are (B, H). For f32 on AVX2 CPUs
/// the same code is compiled for AVX2 (vectorised polynomial nonlinearities).
pub(crate) fn cell_forward<F: Float>(
    gates: &mut [F],
    c_prev: &[F],
    c_next: &mut [F],
    h_next: &mut [F],
    b: usize,
    h: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if super::simd() {
        if let (Some(g), Some(cp), Some(cn), Some(hn)) = (
            as_f32(gates),
            as_f32_ref(c_prev),
            as_f32(c_next),
            as_f32(h_next),
        ) {
            // SAFETY: AVX2 and FMA are present.
            unsafe { cell_forward_avx2(g, cp, cn, hn, b, h) };
            return;
        }
    }
    cell_forward_impl(gates, c_prev, c_next, h_next, b, h);
}

/// One element of the forward cell: returns (i, f, g, o, c, tanh c, h).
#[inline(always)]
fn cell_elem<F: Float>(ai: F, af: F, ag: F, ao: F, cp: F) -> [F; 7] {
    let i = F::sigmoid(ai);
    let f = F::sigmoid(af);
    let g = F::tanh_(ag);
    let o = F::sigmoid(ao);
    let c = F::fma(f, cp, i * g);
    let tc = F::tanh_(c);
    [i, f, g, o, c, tc, o * tc]
}

/// [`cell_forward`] with AVX2 vectors (the slices' lengths are checked on entry).
///
/// # Safety
/// AVX2 and FMA present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn cell_forward_avx2(
    gates: &mut [f32],
    c_prev: &[f32],
    c_next: &mut [f32],
    h_next: &mut [f32],
    b: usize,
    h: usize,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        use super::fast::avx2::{sigmoid, tanh};
        use std::arch::x86_64::*;
        assert!(gates.len() >= b * 4 * h && c_prev.len() >= b * h && c_next.len() >= b * h);
        assert!(h_next.len() >= b * h);
        for r in 0..b {
            let g = gates.as_mut_ptr().add(r * 4 * h);
            let (gi, gf, gg, go) = (g, g.add(h), g.add(2 * h), g.add(3 * h));
            let cp = c_prev.as_ptr().add(r * h);
            let cn = c_next.as_mut_ptr().add(r * h);
            let hn = h_next.as_mut_ptr().add(r * h);
            let mut j = 0;
            while j + 8 <= h {
                let i = sigmoid(_mm256_loadu_ps(gi.add(j)));
                let f = sigmoid(_mm256_loadu_ps(gf.add(j)));
                let gv = tanh(_mm256_loadu_ps(gg.add(j)));
                let o = sigmoid(_mm256_loadu_ps(go.add(j)));
                _mm256_storeu_ps(gi.add(j), i);
                _mm256_storeu_ps(gf.add(j), f);
                _mm256_storeu_ps(gg.add(j), gv);
                _mm256_storeu_ps(go.add(j), o);
                let c = _mm256_fmadd_ps(f, _mm256_loadu_ps(cp.add(j)), _mm256_mul_ps(i, gv));
                let t = tanh(c);
                _mm256_storeu_ps(cn.add(j), c);
                _mm256_storeu_ps(hn.add(j), _mm256_mul_ps(o, t));
                j += 8;
            }
            while j < h {
                let [i, f, gv, o, c, _, hv] =
                    cell_elem(*gi.add(j), *gf.add(j), *gg.add(j), *go.add(j), *cp.add(j));
                *gi.add(j) = i;
                *gf.add(j) = f;
                *gg.add(j) = gv;
                *go.add(j) = o;
                *cn.add(j) = c;
                *hn.add(j) = hv;
                j += 1;
            }
        }
    }
}

#[inline(always)]
fn cell_forward_impl<F: Float>(
    gates: &mut [F],
    c_prev: &[F],
    c_next: &mut [F],
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
        let hn = &mut h_next[r * h..(r + 1) * h];
        for j in 0..h {
            let [i, f, gv, o, c, _, hv] = cell_elem(gi[j], gf[j], gg[j], go[j], cp[j]);
            gi[j] = i;
            gf[j] = f;
            gg[j] = gv;
            go[j] = o;
            cn[j] = c;
            hn[j] = hv;
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
/// gradient entering from beyond the window's end is zero. The sequential part (the cell
/// backward and dh_{t-1} = dG_t · whᵀ) runs per group of streams as in the forward pass; the
/// weight gradients and dx are whole-window products afterwards.
pub fn lstm_backward<F: Float>(
    p: &LstmParams<F>,
    x: ArrayView2<'_, F>,
    dh_out: ArrayView2<'_, F>,
    cache: &mut LstmCache<F>,
    dp: &mut LstmParams<F>,
    dx: Option<ArrayViewMut2<'_, F>>,
) {
    lstm_backward_input(p, LstmInput::Dense(x), dh_out, cache, dp, dx, None)
}

/// [`lstm_backward`] on any [`LstmInput`]. With tokens, `dx` is ignored and the gradient
/// w.r.t. the embedding table is *accumulated* into `dtable` (V, D): with S the (V, 4H)
/// per-token sums of the gate gradients, dwx += tableᵀ · S and dtable += S · wxᵀ.
pub fn lstm_backward_input<F: Float>(
    p: &LstmParams<F>,
    input: LstmInput<'_, F>,
    dh_out: ArrayView2<'_, F>,
    cache: &mut LstmCache<F>,
    dp: &mut LstmParams<F>,
    dx: Option<ArrayViewMut2<'_, F>>,
    dtable: Option<&mut Array2<F>>,
) {
    let (t_len, b) = (cache.t, cache.b);
    let h = p.hidden_size();
    input.check(t_len * b, p.input_size());
    cache.packed.pack_backward(p);
    cache.dh_next.fill(F::zero());
    cache.dc_next.fill(F::zero());
    let dh_out = dh_out.as_standard_layout();
    let dh_out = dh_out.as_slice().expect("standard layout");
    {
        let gp = SyncPtr(cache.gates.as_mut_ptr());
        let dhp = SyncPtr(cache.dh_next.as_mut_ptr());
        let dcp = SyncPtr(cache.dc_next.as_mut_ptr());
        let c = cache.c.as_slice().expect("standard layout");
        let wh_t = &cache.packed.wh;
        let np = parts(b);
        pool::run(np, &|part| {
            let rows = pool::split(b, np, part);
            let nb = rows.len();
            // SAFETY: this task owns rows `rows` of dh_next/dc_next and of every step's gates.
            let dh_next = unsafe { dhp.slice(rows.start * h, nb * h) };
            // SAFETY: as above, rows `rows` of dc_next (B·H values) belong to this task.
            let dc_next = unsafe { dcp.slice(rows.start * h, nb * h) };
            for t in (0..t_len).rev() {
                let r0 = t * b + rows.start;
                // SAFETY: rows r0..r0+nb of the (T·B, 4H) gates are this task's rows of step t.
                let g = unsafe { gp.slice(r0 * 4 * h, nb * 4 * h) };
                let c_prev = &c[r0 * h..(r0 + nb) * h];
                let c_t = &c[(r0 + b) * h..(r0 + b + nb) * h];
                let dho = &dh_out[r0 * h..(r0 + nb) * h];
                cell_backward(g, c_prev, c_t, dho, dh_next, dc_next, nb, h);
                if t > 0 {
                    gemm(
                        nb,
                        Mat { data: g, ld: 4 * h },
                        wh_t,
                        MatMut {
                            data: dh_next,
                            ld: h,
                        },
                        Init::Zero,
                    );
                }
            }
        });
    }

    // Weight gradients over the whole window: dwx += xᵀ·dG, dwh += h_prevᵀ·dG, db += Σ dG,
    // each thread taking a block of columns (so every element is summed in row order by one
    // thread, whatever the thread count). Token inputs first sum dG per token (S), then
    // dwx += tableᵀ·S.
    let n = t_len * b;
    let d = p.input_size();
    let dense = match &input {
        LstmInput::Dense(x) => Some(x.as_standard_layout()),
        LstmInput::Tokens { .. } => None,
    };
    let table = match &input {
        LstmInput::Tokens { table, .. } => Some(table.as_standard_layout()),
        LstmInput::Dense(_) => None,
    };
    let tokens: &[u32] = match input {
        LstmInput::Tokens { tokens, .. } => tokens,
        LstmInput::Dense(_) => &[],
    };
    if let Some(t) = &table {
        if cache.folded.dim() != (t.nrows(), 4 * h) {
            cache.folded = Array2::zeros((t.nrows(), 4 * h));
        }
    }
    let dgs = cache.gates.as_slice().expect("standard layout");
    let hs = &cache.h.as_slice().expect("standard layout")[..n * h];
    let panels = (4 * h).div_ceil(NR);
    let np = pool::width().min(panels);
    if let Some(t) = &table {
        // S: per-token sums of the gate gradients, each task summing its block of columns
        // (every element in row order, whatever the thread count).
        let v = t.nrows();
        let sp = SyncPtr(cache.folded.as_mut_ptr());
        pool::run(np, &|part| {
            let pr = pool::split(panels, np, part);
            let cols = pr.start * NR..(pr.end * NR).min(4 * h);
            let srows = sp.ptr();
            // SAFETY: S is (V, 4H); this task alone touches columns `cols` of it, element by
            // element through the raw pointer, and every token id is < V (checked on entry).
            unsafe {
                for tok in 0..v {
                    let row = srows.add(tok * 4 * h);
                    for j in cols.clone() {
                        row.add(j).write(F::zero());
                    }
                }
                for (r, &tok) in tokens.iter().enumerate() {
                    let src = &dgs[r * 4 * h + cols.start..r * 4 * h + cols.end];
                    let dst = srows.add(tok as usize * 4 * h + cols.start);
                    for (j, &g) in src.iter().enumerate() {
                        *dst.add(j) += g;
                    }
                }
            }
        });
    }
    {
        let (wxp, whp) = (SyncPtr(dp.wx.as_mut_ptr()), SyncPtr(dp.wh.as_mut_ptr()));
        let bp = SyncPtr(dp.b.as_mut_ptr());
        let s_all = cache.folded.as_slice().expect("standard layout");
        let (dense, table) = (&dense, &table);
        pool::run(np, &|part| {
            let pr = pool::split(panels, np, part);
            let cols = pr.start * NR..(pr.end * NR).min(4 * h);
            let dgv = View {
                data: &dgs[cols.start..],
                rows: n,
                cols: cols.len(),
                rs: 4 * h,
                cs: 1,
            };
            // SAFETY: this task alone writes columns `cols` of dwx, dwh and db (raw pointers
            // into their rows, never a reference); S and dG are only read here.
            unsafe {
                if let Some(x) = dense {
                    let xt = View::transposed(x.as_slice().expect("standard layout"), d, n, d);
                    gemm_strided_ptr(xt, dgv, wxp.ptr().add(cols.start), 4 * h, Init::Accumulate);
                }
                if let Some(t) = table {
                    let v = t.nrows();
                    let sv = View {
                        data: &s_all[cols.start..],
                        rows: v,
                        cols: cols.len(),
                        rs: 4 * h,
                        cs: 1,
                    };
                    let tt = View::transposed(t.as_slice().expect("standard layout"), d, v, d);
                    gemm_strided_ptr(tt, sv, wxp.ptr().add(cols.start), 4 * h, Init::Accumulate);
                }
                let ht = View::transposed(hs, h, n, h);
                gemm_strided_ptr(ht, dgv, whp.ptr().add(cols.start), 4 * h, Init::Accumulate);
                let db = bp.slice(cols.start, cols.len());
                for r in 0..n {
                    let row = &dgs[r * 4 * h + cols.start..r * 4 * h + cols.end];
                    for (acc, &v) in db.iter_mut().zip(row) {
                        *acc += v;
                    }
                }
            }
        });
    }
    if let (Some(t), Some(dtable)) = (&table, dtable) {
        // dtable += S · wxᵀ, rows split across threads.
        let v = t.nrows();
        let ss = cache.folded.as_slice().expect("standard layout");
        let dtp = SyncPtr(dtable.as_mut_ptr());
        let wx_t = &cache.packed.wx;
        let tasks = row_tasks(v);
        pool::run(tasks, &|k| {
            let rows = pool::split(v, tasks, k);
            // SAFETY: disjoint row ranges of dtable.
            let out = unsafe { dtp.slice(rows.start * d, rows.len() * d) };
            gemm(
                rows.len(),
                Mat {
                    data: &ss[rows.start * 4 * h..],
                    ld: 4 * h,
                },
                wx_t,
                MatMut { data: out, ld: d },
                Init::Accumulate,
            );
        });
        return;
    }
    if let Some(mut dx) = dx {
        if let Some(dxs) = dx.as_slice_mut() {
            let dxp = SyncPtr(dxs.as_mut_ptr());
            let wx_t = &cache.packed.wx;
            let np = row_tasks(n);
            pool::run(np, &|part| {
                let rows = pool::split(n, np, part);
                // SAFETY: disjoint row ranges of dx.
                let out = unsafe { dxp.slice(rows.start * d, rows.len() * d) };
                let a = &dgs[rows.start * 4 * h..];
                gemm(
                    rows.len(),
                    Mat { data: a, ld: 4 * h },
                    wx_t,
                    MatMut { data: out, ld: d },
                    Init::Zero,
                );
            });
        } else {
            general_mat_mul(F::one(), &cache.gates, &p.wx.t(), F::zero(), &mut dx);
        }
    }
}

/// Element-wise backward of one step. On entry `g` holds the activated gates (B, 4H); on exit
/// the gradients w.r.t. the pre-activations. `c` is c_t (tanh c_t is recomputed, the same
/// bits as in the forward pass); `dc_next` carries dL/dc_t in and dL/dc_{t-1} out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cell_backward<F: Float>(
    g: &mut [F],
    c_prev: &[F],
    c: &[F],
    dh_out: &[F],
    dh_next: &[F],
    dc_next: &mut [F],
    b: usize,
    h: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if super::simd() {
        if let (Some(g), Some(cp), Some(t), Some(dho), Some(dhn), Some(dcn)) = (
            as_f32(g),
            as_f32_ref(c_prev),
            as_f32_ref(c),
            as_f32_ref(dh_out),
            as_f32_ref(dh_next),
            as_f32(dc_next),
        ) {
            // SAFETY: AVX2 and FMA are present.
            unsafe { cell_backward_avx2(g, cp, t, dho, dhn, dcn, b, h) };
            return;
        }
    }
    cell_backward_impl(g, c_prev, c, dh_out, dh_next, dc_next, b, h);
}

/// One element of the backward cell: from the activated gates, c_{t-1}, tanh c_t, the
/// incoming dh and dc, returns (dai, daf, dag, dao, dc_{t-1}).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cell_back_elem<F: Float>(i: F, f: F, g: F, o: F, cp: F, tc: F, dh: F, dc_in: F) -> [F; 5] {
    let one = F::one();
    let dc = dc_in + dh * o * (one - tc * tc);
    [
        dc * g * i * (one - i),
        dc * cp * f * (one - f),
        dc * i * (one - g * g),
        dh * tc * o * (one - o),
        dc * f,
    ]
}

/// [`cell_backward`] with AVX2 vectors (the slices' lengths are checked on entry).
///
/// # Safety
/// AVX2 and FMA present.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn cell_backward_avx2(
    g: &mut [f32],
    c_prev: &[f32],
    c: &[f32],
    dh_out: &[f32],
    dh_next: &[f32],
    dc_next: &mut [f32],
    b: usize,
    h: usize,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        use super::fast::avx2::tanh;
        use std::arch::x86_64::*;
        assert!(g.len() >= b * 4 * h && c_prev.len() >= b * h && c.len() >= b * h);
        assert!(dh_out.len() >= b * h && dh_next.len() >= b * h && dc_next.len() >= b * h);
        let one = _mm256_set1_ps(1.0);
        for r in 0..b {
            let gr = g.as_mut_ptr().add(r * 4 * h);
            let (gi, gf, gg, go) = (gr, gr.add(h), gr.add(2 * h), gr.add(3 * h));
            let o_ = r * h;
            let (cp, cr) = (c_prev.as_ptr().add(o_), c.as_ptr().add(o_));
            let (dho, dhn) = (dh_out.as_ptr().add(o_), dh_next.as_ptr().add(o_));
            let dcn = dc_next.as_mut_ptr().add(o_);
            let mut j = 0;
            while j + 8 <= h {
                let i = _mm256_loadu_ps(gi.add(j));
                let f = _mm256_loadu_ps(gf.add(j));
                let gv = _mm256_loadu_ps(gg.add(j));
                let o = _mm256_loadu_ps(go.add(j));
                let t = tanh(_mm256_loadu_ps(cr.add(j)));
                let dh = _mm256_add_ps(_mm256_loadu_ps(dho.add(j)), _mm256_loadu_ps(dhn.add(j)));
                // dc = dc_in + ((dh · o) · (1 − t·t))
                let dc = _mm256_add_ps(
                    _mm256_loadu_ps(dcn.add(j)),
                    _mm256_mul_ps(
                        _mm256_mul_ps(dh, o),
                        _mm256_sub_ps(one, _mm256_mul_ps(t, t)),
                    ),
                );
                let mul3 = |a: __m256, b: __m256, c: __m256, d: __m256| {
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(a, b), c), d)
                };
                _mm256_storeu_ps(gi.add(j), mul3(dc, gv, i, _mm256_sub_ps(one, i)));
                _mm256_storeu_ps(
                    gf.add(j),
                    mul3(dc, _mm256_loadu_ps(cp.add(j)), f, _mm256_sub_ps(one, f)),
                );
                _mm256_storeu_ps(
                    gg.add(j),
                    _mm256_mul_ps(
                        _mm256_mul_ps(dc, i),
                        _mm256_sub_ps(one, _mm256_mul_ps(gv, gv)),
                    ),
                );
                _mm256_storeu_ps(go.add(j), mul3(dh, t, o, _mm256_sub_ps(one, o)));
                _mm256_storeu_ps(dcn.add(j), _mm256_mul_ps(dc, f));
                j += 8;
            }
            while j < h {
                let dh = *dho.add(j) + *dhn.add(j);
                let [di, df, dg, d_o, dcp] = cell_back_elem(
                    *gi.add(j),
                    *gf.add(j),
                    *gg.add(j),
                    *go.add(j),
                    *cp.add(j),
                    <f32 as Float>::tanh_(*cr.add(j)),
                    dh,
                    *dcn.add(j),
                );
                *gi.add(j) = di;
                *gf.add(j) = df;
                *gg.add(j) = dg;
                *go.add(j) = d_o;
                *dcn.add(j) = dcp;
                j += 1;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn cell_backward_impl<F: Float>(
    g: &mut [F],
    c_prev: &[F],
    c: &[F],
    dh_out: &[F],
    dh_next: &[F],
    dc_next: &mut [F],
    b: usize,
    h: usize,
) {
    for r in 0..b {
        let gr = &mut g[r * 4 * h..(r + 1) * 4 * h];
        let (gi, rest) = gr.split_at_mut(h);
        let (gf, rest) = rest.split_at_mut(h);
        let (gg, go) = rest.split_at_mut(h);
        let o_ = r * h;
        for j in 0..h {
            let dh = dh_out[o_ + j] + dh_next[o_ + j];
            let [di, df, dg, d_o, dcp] = cell_back_elem(
                gi[j],
                gf[j],
                gg[j],
                go[j],
                c_prev[o_ + j],
                F::tanh_(c[o_ + j]),
                dh,
                dc_next[o_ + j],
            );
            gi[j] = di;
            gf[j] = df;
            gg[j] = dg;
            go[j] = d_o;
            dc_next[o_ + j] = dcp;
        }
    }
}

/// One step for generation (no caching): updates `h` and `c` (B, H) in place given the input
/// projection `gx = b + x · wx` (B, 4H), which is overwritten as workspace.
pub fn lstm_step<F: Float>(
    p: &LstmParams<F>,
    gx: &mut Array2<F>,
    h: &mut Array2<F>,
    c: &mut Array2<F>,
) {
    let packed = LstmPacked::forward_only(p);
    let (b, hs) = (h.nrows(), h.ncols());
    let g = gx.as_slice_mut().expect("standard layout");
    let hv = h.as_slice_mut().expect("standard layout");
    let cv = c.as_slice_mut().expect("standard layout");
    lstm_step_packed(&packed.wh, g, hv, cv, b, hs);
}

/// [`lstm_step`] on packed weights and raw rows: `g` (B, 4H) holds b + x·wx on entry;
/// `h`, `c` (B, H) are updated in place.
pub(crate) fn lstm_step_packed<F: Float>(
    wh: &PackedB<F>,
    g: &mut [F],
    h: &mut [F],
    c: &mut [F],
    b: usize,
    hs: usize,
) {
    gemm(
        b,
        Mat { data: h, ld: hs },
        wh,
        MatMut {
            data: g,
            ld: 4 * hs,
        },
        Init::Accumulate,
    );
    cell_step(g, h, c, b, hs);
}

/// Cell update in place for generation: c ← f·c + i·g, h ← o·tanh(c) from pre-activations
/// `g` (B, 4H); the same arithmetic as [`cell_forward`].
pub(crate) fn cell_step<F: Float>(g: &[F], h: &mut [F], c: &mut [F], b: usize, hs: usize) {
    assert!(g.len() >= b * 4 * hs && h.len() >= b * hs && c.len() >= b * hs);
    // SAFETY: bounds checked; exclusive access through the borrows.
    unsafe { cell_step_units(g.as_ptr(), h.as_mut_ptr(), c.as_mut_ptr(), b, hs, 0..hs) }
}

/// [`cell_step`] on the hidden units `units` only, through raw pointers, so tasks on other
/// threads can update disjoint units of the same rows. `g` (B, 4H), `h`, `c` (B, H).
///
/// # Safety
/// The pointers cover those extents; no one else touches units `units` of `h` and `c`
/// (or writes `g`) during the call.
pub(crate) unsafe fn cell_step_units<F: Float>(
    g: *const F,
    h: *mut F,
    c: *mut F,
    b: usize,
    hs: usize,
    units: std::ops::Range<usize>,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if super::simd() && std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>() {
            cell_step_avx2(g as *const f32, h as *mut f32, c as *mut f32, b, hs, units);
            return;
        }
        cell_step_impl(g, h, c, b, hs, units);
    }
}

/// [`cell_step_units`] with AVX2 vectors.
///
/// # Safety
/// AVX2 and FMA present, and the contract of [`cell_step_units`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn cell_step_avx2(
    g: *const f32,
    h: *mut f32,
    c: *mut f32,
    b: usize,
    hs: usize,
    units: std::ops::Range<usize>,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        use super::fast::avx2::{sigmoid, tanh};
        use std::arch::x86_64::*;
        for r in 0..b {
            let gr = g.add(r * 4 * hs);
            let (gi, gf, gg, go) = (gr, gr.add(hs), gr.add(2 * hs), gr.add(3 * hs));
            let cr = c.add(r * hs);
            let hr = h.add(r * hs);
            let mut j = units.start;
            while j + 8 <= units.end {
                let i = sigmoid(_mm256_loadu_ps(gi.add(j)));
                let f = sigmoid(_mm256_loadu_ps(gf.add(j)));
                let gv = tanh(_mm256_loadu_ps(gg.add(j)));
                let o = sigmoid(_mm256_loadu_ps(go.add(j)));
                let cn = _mm256_fmadd_ps(f, _mm256_loadu_ps(cr.add(j)), _mm256_mul_ps(i, gv));
                _mm256_storeu_ps(cr.add(j), cn);
                _mm256_storeu_ps(hr.add(j), _mm256_mul_ps(o, tanh(cn)));
                j += 8;
            }
            while j < units.end {
                let [_, _, _, _, cn, _, hv] =
                    cell_elem(*gi.add(j), *gf.add(j), *gg.add(j), *go.add(j), *cr.add(j));
                *cr.add(j) = cn;
                *hr.add(j) = hv;
                j += 1;
            }
        }
    }
}

/// [`cell_step_units`], portable.
///
/// # Safety
/// The contract of [`cell_step_units`].
#[inline(always)]
unsafe fn cell_step_impl<F: Float>(
    g: *const F,
    h: *mut F,
    c: *mut F,
    b: usize,
    hs: usize,
    units: std::ops::Range<usize>,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        for r in 0..b {
            let gr = g.add(r * 4 * hs);
            for j in units.clone() {
                let cp = c.add(r * hs + j);
                let [_, _, _, _, cn, _, hv] = cell_elem(
                    *gr.add(j),
                    *gr.add(hs + j),
                    *gr.add(2 * hs + j),
                    *gr.add(3 * hs + j),
                    *cp,
                );
                *cp = cn;
                *h.add(r * hs + j) = hv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;
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

    /// The AVX2 element-wise kernels against the portable code: the same bits, tails included.
    #[test]
    fn simd_cells_match_portable_cells_bit_for_bit() {
        let (b, h) = (3, 21);
        let mut rng = Pcg64::seed_from_u64(9);
        let mut v =
            |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-s..s)).collect() };
        let gates = v(b * 4 * h, 6.0);
        let c_prev = v(b * h, 3.0);
        let (mut g1, mut g2) = (gates.clone(), gates.clone());
        let mut o1 = vec![vec![0f32; b * h]; 2];
        let mut o2 = o1.clone();
        let [c1, h1] = &mut o1[..] else {
            unreachable!()
        };
        cell_forward(&mut g1, &c_prev, c1, h1, b, h);
        let [c2, h2] = &mut o2[..] else {
            unreachable!()
        };
        cell_forward_impl(&mut g2, &c_prev, c2, h2, b, h);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&g1), bits(&g2));
        assert_eq!(
            o1.iter().map(|x| bits(x)).collect::<Vec<_>>(),
            o2.iter().map(|x| bits(x)).collect::<Vec<_>>()
        );

        let (dho, dhn, dc) = (v(b * h, 1.0), v(b * h, 1.0), v(b * h, 1.0));
        let (mut d1, mut d2) = (dc.clone(), dc.clone());
        let (mut a1, mut a2) = (g1.clone(), g1.clone());
        cell_backward(&mut a1, &c_prev, &o1[0], &dho, &dhn, &mut d1, b, h);
        cell_backward_impl(&mut a2, &c_prev, &o1[0], &dho, &dhn, &mut d2, b, h);
        assert_eq!(bits(&a1), bits(&a2));
        assert_eq!(bits(&d1), bits(&d2));

        let (mut hs1, mut cs1) = (vec![0f32; b * h], c_prev.clone());
        let (mut hs2, mut cs2) = (vec![0f32; b * h], c_prev.clone());
        cell_step(&gates, &mut hs1, &mut cs1, b, h);
        // SAFETY: the vectors hold B·4H and B·H values; nothing else touches them.
        unsafe {
            cell_step_impl(
                gates.as_ptr(),
                hs2.as_mut_ptr(),
                cs2.as_mut_ptr(),
                b,
                h,
                0..h,
            )
        };
        assert_eq!(bits(&hs1), bits(&hs2));
        assert_eq!(bits(&cs1), bits(&cs2));
        // and the in-place generation step equals the caching forward
        assert_eq!(bits(&hs1), bits(&o1[1]));
        assert_eq!(bits(&cs1), bits(&o1[0]));
    }

    /// A token id outside the embedding table is refused before any raw-pointer work, in the
    /// forward and in the backward pass.
    #[test]
    fn token_ids_outside_the_table_are_refused() {
        let (v, d, h, b, t) = (4, 3, 8, 2, 3);
        let mut rng = Pcg64::seed_from_u64(5);
        let p = LstmParams::<f32>::init(d, h, &mut rng);
        let table = Array2::<f32>::zeros((v, d));
        let (h0, c0) = (Array2::zeros((b, h)), Array2::zeros((b, h)));
        let good: Vec<u32> = vec![1; t * b];
        let mut bad = good.clone();
        bad[4] = v as u32;
        let forward = std::panic::catch_unwind(|| {
            let mut cache = LstmCache::default();
            let input = LstmInput::Tokens {
                table: table.view(),
                tokens: &bad,
            };
            lstm_forward_input(&p, input, h0.view(), c0.view(), t, &mut cache);
        });
        assert!(forward.is_err(), "forward accepted token {v}");
        let mut cache = LstmCache::default();
        let input = LstmInput::Tokens {
            table: table.view(),
            tokens: &good,
        };
        lstm_forward_input(&p, input, h0.view(), c0.view(), t, &mut cache);
        let backward = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut dp = LstmParams::zeros(d, h);
            let mut dtable = Array2::zeros((v, d));
            let input = LstmInput::Tokens {
                table: table.view(),
                tokens: &bad,
            };
            let dh = Array2::zeros((t * b, h));
            lstm_backward_input(
                &p,
                input,
                dh.view(),
                &mut cache,
                &mut dp,
                None,
                Some(&mut dtable),
            );
        }));
        let msg = backward.expect_err("backward accepted a bad token");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("outside the embedding table"), "{msg}");
    }

    /// Token inputs (embedding folded into the input projection, per-token gradient sums)
    /// against embedding the tokens and running the dense path.
    #[test]
    fn token_input_matches_dense_input() {
        let (v, d, h, b, t) = (4, 3, 5, 3, 4);
        let mut rng = Pcg64::seed_from_u64(21);
        let mut p = LstmParams::<f64>::init(d, h, &mut rng);
        p.b.mapv_inplace(|x| x + 0.2);
        let table = rand_arr(v, d, &mut rng);
        let tokens: Vec<u32> = (0..t * b).map(|_| rng.random_range(0..v as u32)).collect();
        let x = Array2::from_shape_fn((t * b, d), |(r, j)| table[[tokens[r] as usize, j]]);
        let (h0, c0) = (rand_arr(b, h, &mut rng), rand_arr(b, h, &mut rng));
        let dh_out = rand_arr(t * b, h, &mut rng);

        let mut dense = LstmCache::default();
        lstm_forward(&p, x.view(), h0.view(), c0.view(), t, &mut dense);
        let mut folded = LstmCache::default();
        let input = LstmInput::Tokens {
            table: table.view(),
            tokens: &tokens,
        };
        lstm_forward_input(&p, input, h0.view(), c0.view(), t, &mut folded);
        assert!((&dense.output() - &folded.output())
            .iter()
            .all(|e| e.abs() < 1e-14));

        let mut dp1 = LstmParams::zeros(d, h);
        let mut dx = Array2::zeros((t * b, d));
        lstm_backward(
            &p,
            x.view(),
            dh_out.view(),
            &mut dense,
            &mut dp1,
            Some(dx.view_mut()),
        );
        let mut dtable1 = Array2::<f64>::zeros((v, d));
        for (r, &tok) in tokens.iter().enumerate() {
            let mut row = dtable1.row_mut(tok as usize);
            row += &dx.row(r);
        }
        let mut dp2 = LstmParams::zeros(d, h);
        let mut dtable2 = Array2::<f64>::ones((v, d));
        lstm_backward_input(
            &p,
            input,
            dh_out.view(),
            &mut folded,
            &mut dp2,
            None,
            Some(&mut dtable2),
        );
        let close = |a: &Array2<f64>, b: &Array2<f64>| (a - b).iter().all(|e| e.abs() < 1e-12);
        assert!(close(&dp1.wx, &dp2.wx));
        assert!(close(&dp1.wh, &dp2.wh));
        assert!((&dp1.b - &dp2.b).iter().all(|e| e.abs() < 1e-12));
        assert!(close(&(dtable1 + 1.0), &dtable2), "dtable accumulates");
        assert!(dp2.wx.iter().any(|e| e.abs() > 1e-3));
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
