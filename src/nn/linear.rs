//! The output layer: `y = x · Wᵀ + b` with W stored as PyTorch's `nn.Linear` does, (V, H).
//!
//! The products run on packed weights ([`LinearPacked`]) with rows split across threads; the
//! training path fuses the loss into the backward pass ([`loss_backward_packed`]): per block
//! of rows, softmax cross-entropy and its gradient in place, then dx = dlogits · W, while the
//! block is still in cache.

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2};

use super::gemm::{gemm, gemm_strided_ptr, Init, Mat, MatMut, PackedB, View, NR};
use super::loss::xent_row;
use super::pool::{row_tasks, SyncPtr};
use super::{pool, Float};

/// The output weight packed for the forward pass (Wᵀ, (H, V)) and for dx (W, (V, H)).
#[derive(Clone, Debug, Default)]
pub struct LinearPacked<F> {
    /// Wᵀ (H, V).
    pub wt: PackedB<F>,
    /// W (V, H), backward only.
    pub w: PackedB<F>,
}

/// `out = x · wᵀ + b` on packed weights; `x` (N, H) row-major, `out` (N, V) row-major.
/// Rows are split across threads. Each element is b + (one product chain), so row i does not
/// depend on N.
pub fn linear_forward_packed<F: Float>(x: &[F], wt: &PackedB<F>, b: &[F], out: &mut [F]) {
    let (h, v) = (wt.k(), wt.n());
    let n = x.len().checked_div(h).unwrap_or(out.len() / v.max(1));
    assert!(out.len() >= n * v && b.len() == v);
    let op = SyncPtr(out.as_mut_ptr());
    let tasks = row_tasks(n);
    pool::run(tasks, &|t| {
        let rows = pool::split(n, tasks, t);
        // SAFETY: disjoint row ranges of `out`.
        let o = unsafe { op.slice(rows.start * v, rows.len() * v) };
        let xa = &x[rows.start * h..];
        gemm(
            rows.len(),
            Mat { data: xa, ld: h },
            wt,
            MatMut { data: o, ld: v },
            Init::Bias(b),
        );
    });
}

/// `out = x · wᵀ + b`; `x` (N, H), `w` (V, H), `b` (V), `out` (N, V).
pub fn linear_forward<F: Float>(
    x: ArrayView2<'_, F>,
    w: &Array2<F>,
    b: &Array1<F>,
    mut out: ArrayViewMut2<'_, F>,
) {
    let wt = PackedB::from_view(w.t());
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let bs = b.as_slice().expect("standard layout");
    match out.as_slice_mut() {
        Some(o) => linear_forward_packed(xs, &wt, bs, o),
        None => {
            let mut tmp = Array2::zeros(out.dim());
            linear_forward_packed(xs, &wt, bs, tmp.as_slice_mut().expect("standard layout"));
            out.assign(&tmp);
        }
    }
}

/// The weight gradients `dw += doutᵀ · x`, `db += Σ_rows dout`; `x` (N, H), `dout` (N, V),
/// `dw` (V, H), `db` (V), all row-major. Rows of dw (vocabulary entries) are split across
/// threads, so each element is summed over N in order by one thread.
pub fn linear_weight_grad<F: Float>(x: &[F], dout: &[F], n: usize, dw: &mut [F], db: &mut [F]) {
    let v = db.len();
    let h = dw.len().checked_div(v).unwrap_or(0);
    assert!(x.len() >= n * h && dout.len() >= n * v && dw.len() == v * h);
    let (wp, bp) = (SyncPtr(dw.as_mut_ptr()), SyncPtr(db.as_mut_ptr()));
    // Split V into blocks of whole panels when V is large, else into halves.
    let tasks = pool::width().min(v.div_ceil(NR)).max(1);
    pool::run(tasks, &|t| {
        let r = pool::split(v, tasks, t);
        if r.is_empty() {
            return;
        }
        let a = View {
            data: &dout[r.start..],
            rows: r.len(),
            cols: n,
            rs: 1,
            cs: v,
        };
        let b = View::rows(x, n, h, h);
        // SAFETY: this task alone writes rows r of dw and entries r of db.
        unsafe {
            gemm_strided_ptr(a, b, wp.ptr().add(r.start * h), h, Init::Accumulate);
            let db = bp.slice(r.start, r.len());
            for i in 0..n {
                for (acc, &g) in db.iter_mut().zip(&dout[i * v + r.start..i * v + r.end]) {
                    *acc += g;
                }
            }
        }
    });
}

/// Accumulates `dw += doutᵀ · x`, `db += Σ_rows dout`, and writes `dx = dout · w` when asked.
pub fn linear_backward<F: Float>(
    x: ArrayView2<'_, F>,
    w: &Array2<F>,
    dout: ArrayView2<'_, F>,
    dw: &mut Array2<F>,
    db: &mut Array1<F>,
    dx: Option<ArrayViewMut2<'_, F>>,
) {
    let n = x.nrows();
    let x = x.as_standard_layout();
    let dout = dout.as_standard_layout();
    let (xs, ds) = (
        x.as_slice().expect("standard layout"),
        dout.as_slice().expect("standard layout"),
    );
    linear_weight_grad(
        xs,
        ds,
        n,
        dw.as_slice_mut().expect("standard layout"),
        db.as_slice_mut().expect("standard layout"),
    );
    if let Some(mut dx) = dx {
        let wp = PackedB::from_view(w.view());
        let mut tmp = Array2::zeros(dx.dim());
        dx_rows(ds, &wp, tmp.as_slice_mut().expect("standard layout"));
        dx.assign(&tmp);
    }
}

/// `dx = dout · w` on packed w (V, H), rows split across threads.
fn dx_rows<F: Float>(dout: &[F], w: &PackedB<F>, dx: &mut [F]) {
    let (v, h) = (w.k(), w.n());
    let n = dx.len().checked_div(h).unwrap_or(0);
    let xp = SyncPtr(dx.as_mut_ptr());
    let tasks = row_tasks(n);
    pool::run(tasks, &|t| {
        let rows = pool::split(n, tasks, t);
        // SAFETY: disjoint row ranges of dx.
        let o = unsafe { xp.slice(rows.start * h, rows.len() * h) };
        let a = &dout[rows.start * v..];
        gemm(
            rows.len(),
            Mat { data: a, ld: v },
            w,
            MatMut { data: o, ld: h },
            Init::Zero,
        );
    });
}

/// Fused loss and input gradient of the output layer. `logits` (N, V) from the forward pass
/// is overwritten by dL/dlogits = (softmax − onehot) / N; `dx` (N, H) receives
/// dlogits · W (W packed as (V, H)); `row_loss` (N) receives each row's loss. Returns the
/// sum of the row losses, added in row order.
pub fn loss_backward_packed<F: Float>(
    logits: &mut [F],
    targets: &[u32],
    w: &PackedB<F>,
    dx: &mut [F],
    row_loss: &mut [f64],
) -> f64 {
    let (v, h) = (w.k(), w.n());
    let n = targets.len();
    assert!(logits.len() >= n * v && dx.len() >= n * h && row_loss.len() >= n);
    let scale = F::one() / F::c(n as f64);
    let (lp, xp, rp) = (
        SyncPtr(logits.as_mut_ptr()),
        SyncPtr(dx.as_mut_ptr()),
        SyncPtr(row_loss.as_mut_ptr()),
    );
    let tasks = row_tasks(n);
    pool::run(tasks, &|t| {
        let rows = pool::split(n, tasks, t);
        // SAFETY: disjoint row ranges of logits, dx and row_loss.
        let (l, o, rl) = unsafe {
            (
                lp.slice(rows.start * v, rows.len() * v),
                xp.slice(rows.start * h, rows.len() * h),
                rp.slice(rows.start, rows.len()),
            )
        };
        for ((row, &y), loss) in l.chunks_exact_mut(v).zip(&targets[rows.clone()]).zip(rl) {
            *loss = xent_row(row, y as usize, Some(scale));
        }
        gemm(
            rows.len(),
            Mat { data: l, ld: v },
            w,
            MatMut { data: o, ld: h },
            Init::Zero,
        );
    });
    row_loss[..n].iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn forward_and_backward_match_plain_products() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
        let (n, h, v) = (200, 9, 37);
        let mut r =
            |a: usize, b: usize| Array2::from_shape_fn((a, b), |_| rng.random_range(-1.0..1.0f64));
        let (x, w, dout) = (r(n, h), r(v, h), r(n, v));
        let b = Array1::from_shape_fn(v, |i| i as f64 * 0.1);
        let mut out = Array2::zeros((n, v));
        linear_forward(x.view(), &w, &b, out.view_mut());
        let want = x.dot(&w.t()) + &b;
        assert!((&out - &want).iter().all(|e| e.abs() < 1e-12));

        let (mut dw, mut db) = (Array2::ones((v, h)), Array1::ones(v));
        let mut dx = Array2::zeros((n, h));
        linear_backward(
            x.view(),
            &w,
            dout.view(),
            &mut dw,
            &mut db,
            Some(dx.view_mut()),
        );
        let want_dw = dout.t().dot(&x) + 1.0;
        let want_db = dout.sum_axis(ndarray::Axis(0)) + 1.0;
        assert!((&dw - &want_dw).iter().all(|e| e.abs() < 1e-12));
        assert!((&db - &want_db).iter().all(|e| e.abs() < 1e-12));
        assert!((&dx - &dout.dot(&w)).iter().all(|e| e.abs() < 1e-12));
    }
}
