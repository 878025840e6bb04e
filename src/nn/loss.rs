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
        match row.as_slice_mut() {
            Some(r) => total += xent_row(r, y as usize, grad.then_some(scale)),
            None => {
                let mut r = row.to_vec();
                total += xent_row(&mut r, y as usize, grad.then_some(scale));
                row.iter_mut().zip(r).for_each(|(d, v)| *d = v);
            }
        }
    }
    total
}

/// Loss of one row of logits against target `y`, in nats; with `Some(scale)` the row is
/// overwritten by scale · (softmax − onehot(y)). Vectorised for f32 on AVX2 CPUs.
pub fn xent_row<F: Float>(row: &mut [F], y: usize, scale: Option<F>) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if super::simd() {
        if let Some(r) = super::as_f32(row) {
            let s = scale.map(|v| v.f64() as f32);
            // SAFETY: AVX2 and FMA are present.
            return unsafe { xent_row_avx2(r, y, s) };
        }
    }
    let max = row.iter().copied().fold(F::neg_infinity(), F::max);
    let mut sum = F::zero();
    for v in row.iter() {
        sum += (*v - max).exp();
    }
    let log_z = max + sum.ln();
    let loss = (log_z - row[y]).f64();
    if let Some(scale) = scale {
        for v in row.iter_mut() {
            *v = (*v - log_z).exp() * scale;
        }
        row[y] -= scale;
    }
    loss
}

/// [`xent_row`] with AVX2 vectors (indices are checked as in the portable code).
///
/// # Safety
/// AVX2 and FMA present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn xent_row_avx2(row: &mut [f32], y: usize, scale: Option<f32>) -> f64 {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        use super::fast::{avx2::exp, exp_f32};
        use std::arch::x86_64::*;
        let hsum = |v: __m256| {
            let mut a = [0f32; 8];
            _mm256_storeu_ps(a.as_mut_ptr(), v);
            ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
        };
        let n = row.len();
        let p = row.as_mut_ptr();
        let body = n - n % 8;
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j < body {
            vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(p.add(j)));
            j += 8;
        }
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), vmax);
        let mut max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for &v in &row[body..] {
            max = max.max(v);
        }
        let vm = _mm256_set1_ps(max);
        let mut vsum = _mm256_setzero_ps();
        j = 0;
        while j < body {
            vsum = _mm256_add_ps(vsum, exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), vm)));
            j += 8;
        }
        let mut sum = hsum(vsum);
        for &v in &row[body..] {
            sum += exp_f32(v - max);
        }
        let log_z = max + sum.ln();
        let loss = (log_z - row[y]) as f64;
        if let Some(scale) = scale {
            let (vz, vs) = (_mm256_set1_ps(log_z), _mm256_set1_ps(scale));
            j = 0;
            while j < body {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), vz));
                _mm256_storeu_ps(p.add(j), _mm256_mul_ps(e, vs));
                j += 8;
            }
            for v in &mut row[body..] {
                *v = exp_f32(*v - log_z) * scale;
            }
            row[y] -= scale;
        }
        loss
    }
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
    fn f32_rows_match_f64() {
        // odd V exercises the vector body and the scalar tail
        let v = 37;
        let logits: Vec<f64> = (0..v)
            .map(|i| ((i * 7919) % 23) as f64 * 0.37 - 4.0)
            .collect();
        let mut r64 = logits.clone();
        let mut r32: Vec<f32> = logits.iter().map(|&x| x as f32).collect();
        let l64 = xent_row(&mut r64, 5, Some(0.25));
        let l32 = xent_row(&mut r32, 5, Some(0.25f32));
        assert!((l64 - l32).abs() < 1e-5, "{l64} vs {l32}");
        for (a, b) in r32.iter().zip(&r64) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert!(r32.iter().map(|&x| x as f64).sum::<f64>().abs() < 1e-6);
    }

    #[test]
    fn large_logits_are_stable() {
        let mut l = array![[1000.0f32, 0.0, -1000.0]];
        let s = softmax_xent(l.view_mut(), &[0], false);
        assert!(s.is_finite() && s.abs() < 1e-6);
    }
}
