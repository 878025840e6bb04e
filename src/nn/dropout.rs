//! Inverted dropout: at training time each element is kept with probability 1 − p and scaled
//! by 1 / (1 − p), so evaluation and sampling use the activations unchanged.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Zip};
use rand::Rng;

use super::Float;

/// Fills `mask` with 0 or 1/(1−p) and writes `out = x * mask`. `x`, `mask`, `out` (N, H).
pub fn dropout_forward<F: Float>(
    x: ArrayView2<'_, F>,
    p: f32,
    rng: &mut impl Rng,
    mask: &mut Array2<F>,
    mut out: ArrayViewMut2<'_, F>,
) {
    let keep = F::c(1.0 / (1.0 - p as f64));
    mask.mapv_inplace(|_| {
        if rng.random::<f32>() < p {
            F::zero()
        } else {
            keep
        }
    });
    Zip::from(&mut out)
        .and(&x)
        .and(&*mask)
        .for_each(|o, &xv, &m| *o = xv * m);
}

/// `d *= mask` in place (the gradient through the same mask).
pub fn dropout_backward<F: Float>(mut d: ArrayViewMut2<'_, F>, mask: &Array2<F>) {
    d *= mask;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keeps_expected_fraction_and_mean() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
        let x = Array2::<f64>::ones((100, 100));
        let mut mask = Array2::zeros((100, 100));
        let mut out = Array2::zeros((100, 100));
        dropout_forward(x.view(), 0.3, &mut rng, &mut mask, out.view_mut());
        let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / 1e4;
        assert!((kept - 0.7).abs() < 0.03, "kept {kept}");
        assert!((out.mean().unwrap() - 1.0).abs() < 0.05);
    }
}
