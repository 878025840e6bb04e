//! The output layer: `y = x · Wᵀ + b` with W stored as PyTorch's `nn.Linear` does, (V, H).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis};

use super::Float;

/// `out = x · wᵀ + b`; `x` (N, H), `w` (V, H), `b` (V), `out` (N, V).
pub fn linear_forward<F: Float>(
    x: ArrayView2<'_, F>,
    w: &Array2<F>,
    b: &Array1<F>,
    mut out: ArrayViewMut2<'_, F>,
) {
    general_mat_mul(F::one(), &x, &w.t(), F::zero(), &mut out);
    out += b;
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
    general_mat_mul(F::one(), &dout.t(), &x, F::one(), dw);
    *db += &dout.sum_axis(Axis(0));
    if let Some(mut dx) = dx {
        general_mat_mul(F::one(), &dout, w, F::zero(), &mut dx);
    }
}
