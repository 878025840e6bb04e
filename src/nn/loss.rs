//! Softmax cross-entropy over the vocabulary, fused with its gradient.

use ndarray::ArrayViewMut2;

use super::Float;

/// Mean negative log-likelihood of `targets` under softmax(`logits`), `logits` (N, V),
/// `targets` (N). With `grad`, overwrites `logits` with dL/dlogits = (softmax − onehot) / N.
/// Returns the *sum* of the per-row losses (callers divide; evaluation sums over windows).
pub fn softmax_xent<F: Float>(
    mut logits: ArrayViewMut2<'_, F>,
    targets: &[u32],
    grad: bool,
) -> f64 {
    let n = logits.nrows();
    debug_assert_eq!(n, targets.len());
    let scale = F::one() / F::c(n as f64);
    let mut total = 0.0f64;
    for (mut row, &y) in logits.rows_mut().into_iter().zip(targets) {
        let row = row.as_slice_mut().expect("standard layout");
        let max = row.iter().copied().fold(F::neg_infinity(), F::max);
        let mut sum = F::zero();
        for v in row.iter() {
            sum += (*v - max).exp();
        }
        let log_z = max + sum.ln();
        total += (log_z - row[y as usize]).f64();
        if grad {
            for v in row.iter_mut() {
                *v = (*v - log_z).exp() * scale;
            }
            row[y as usize] -= scale;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn uniform_logits_give_log_v() {
        let mut l = ndarray::Array2::<f64>::zeros((2, 4));
        let s = softmax_xent(l.view_mut(), &[1, 3], true);
        assert!((s / 2.0 - 4f64.ln()).abs() < 1e-12);
        // gradient rows sum to zero and the target entry is negative
        assert!(l.row(0).sum().abs() < 1e-12);
        assert!((l[[0, 1]] - (0.25 - 1.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn large_logits_are_stable() {
        let mut l = array![[1000.0f32, 0.0, -1000.0]];
        let s = softmax_xent(l.view_mut(), &[0], false);
        assert!(s.is_finite() && s.abs() < 1e-6);
    }
}
