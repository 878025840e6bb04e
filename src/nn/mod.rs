//! Layers of the language model as forward/backward pairs of free functions on `ndarray`.
//!
//! Conventions (after llm.c and torch-rnn):
//! - Activations of a window are 2-D with rows ordered time-major: row `t * B + b` holds time
//!   step `t` of stream `b`, so a (T·B, X) matrix is T blocks of B rows.
//! - Every `*_backward` *accumulates* into parameter gradients (names start with `d`), so
//!   gradients from several uses of one tensor (tied weights) simply add up; callers zero
//!   gradients once per step.
//! - Workspaces are allocated when the shape changes, never inside a time loop.
//!
//! The numeric core is generic over [`Float`] so the gradient check runs in f64 while training
//! runs in f32 through exactly the same code.

pub mod dropout;
pub mod embedding;
pub mod gemm;
pub mod generator;
pub mod linear;
pub mod loss;
pub mod lstm;
pub mod model;
pub mod pool;
pub mod sampled;

use std::fmt::{Debug, Display};

/// Scalar type of the numeric core: f32 for training and sampling, f64 for gradient checks.
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::iter::Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// Logistic sigmoid 1 / (1 + e^-x).
    fn sigmoid(x: Self) -> Self;
    /// Hyperbolic tangent.
    fn tanh_(x: Self) -> Self;
    /// Conversion from f64 (constants, initialisation).
    fn c(x: f64) -> Self;
    /// Conversion to f64 (reporting, checks).
    fn f64(self) -> f64;

    /// `a · b + c` with one rounding (fused multiply-add): the step of every product chain in
    /// [`gemm`], so the SIMD kernels and the portable code give the same bits.
    #[inline(always)]
    fn fma(a: Self, b: Self, c: Self) -> Self {
        a.mul_add(b, c)
    }

    /// One register tile of [`gemm`]; see [`gemm::tile_generic`] for the contract.
    ///
    /// # Safety
    /// Pointers valid for the extents described there.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn gemm_tile(
        k: usize,
        a: *const Self,
        b: *const Self,
        pstride: usize,
        np: usize,
        c: *mut Self,
        ldc: usize,
        rows: usize,
        cols: usize,
        init: gemm::TileInit<Self>,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe { gemm::tile_generic(k, a, b, pstride, np, c, ldc, rows, cols, init) }
    }
}

impl Float for f32 {
    #[inline(always)]
    fn sigmoid(x: f32) -> f32 {
        fast::sigmoid_f32(x)
    }
    #[inline(always)]
    fn tanh_(x: f32) -> f32 {
        fast::tanh_f32(x)
    }
    #[inline(always)]
    fn c(x: f64) -> f32 {
        x as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        // Always fused, so the portable code rounds exactly as the FMA kernels do.
        a.mul_add(b, c)
    }
    /// # Safety
    /// As [`Float::gemm_tile`]: pointers valid for the extents of [`gemm::tile_generic`].
    #[inline]
    unsafe fn gemm_tile(
        k: usize,
        a: *const f32,
        b: *const f32,
        pstride: usize,
        np: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        init: gemm::TileInit<f32>,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if simd() {
                return gemm::avx2::tile(k, a, b, pstride, np, c, ldc, rows, cols, init);
            }
            gemm::tile_generic(k, a, b, pstride, np, c, ldc, rows, cols, init)
        }
    }
}

/// Whether the f32 AVX2/FMA kernels run on this CPU (x86-64 with AVX2 and FMA).
#[inline]
pub fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        gemm::avx2::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Float for f64 {
    #[inline(always)]
    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    #[inline(always)]
    fn tanh_(x: f64) -> f64 {
        x.tanh()
    }
    #[inline(always)]
    fn c(x: f64) -> f64 {
        x
    }
    #[inline(always)]
    fn fma(a: f64, b: f64, c: f64) -> f64 {
        // Fused: the gradient check's central differences need every bit of the loss.
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
}

/// Branch-free f32 nonlinearities (no libm calls): max absolute error about 5e-7 for tanh and
/// 3e-7 for sigmoid, 2e-7 relative for exp (tested against f64). Each scalar function has an
/// 8-lane AVX2 twin in [`fast::avx2`] doing exactly the same operations, so a value gets the
/// same bits whichever path computes it.
pub mod fast {
    /// Clamp of the tanh argument: beyond it tanh is ±1 in f32.
    const TANH_CLAMP: f32 = 7.905_311;
    /// Numerator coefficients of tanh, x¹³ first (Eigen's `ptanh_float`).
    const TANH_P: [f32; 7] = [
        -2.760_768_5e-16,
        2.000_188e-13,
        -8.604_672e-11,
        5.122_297e-8,
        1.485_722_4e-5,
        6.372_619_3e-4,
        4.893_524_6e-3,
    ];
    /// Denominator coefficients of tanh, x⁶ first.
    const TANH_Q: [f32; 4] = [1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_6e-3, 4.893_525e-3];
    const EXP_LO: f32 = -87.0;
    const EXP_HI: f32 = 88.0;
    /// 1.5 · 2^23: adding it rounds to an integer.
    const EXP_MAGIC: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// e^r on [-ln2/2, ln2/2] as 1 + r + r²·q(r), q's coefficients r⁵ first.
    const EXP_Q: [f32; 6] = [
        1.987_569_1e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];

    /// sigmoid(x) = 1 / (1 + e^-x), computed as ½ + ½ tanh(x/2) for symmetry and range.
    #[inline(always)]
    pub fn sigmoid_f32(x: f32) -> f32 {
        0.5f32.mul_add(tanh_f32(0.5 * x), 0.5)
    }

    /// tanh(x) as a rational function: odd degree-13 numerator over even degree-6
    /// denominator, x clamped to ±7.905. NaN gives NaN.
    #[inline(always)]
    pub fn tanh_f32(x: f32) -> f32 {
        // Written as selects so NaN propagates (and matches the vector min/max order).
        let x = if TANH_CLAMP < x { TANH_CLAMP } else { x };
        let x = if -TANH_CLAMP > x { -TANH_CLAMP } else { x };
        let x2 = x * x;
        let mut p = TANH_P[0];
        for &c in &TANH_P[1..] {
            p = p.mul_add(x2, c);
        }
        p *= x;
        let mut q = TANH_Q[0];
        for &c in &TANH_Q[1..] {
            q = q.mul_add(x2, c);
        }
        p / q
    }

    /// e^x before the range rule: x clamped to [-87, 88], Cody–Waite reduction
    /// x = n ln2 + r, polynomial for e^r, 2^n built in the exponent bits. Plain multiplies
    /// and adds (no fused multiply-add), so the compiler vectorises loops over it on any x86-64
    /// and the AVX2 twin gives the same bits.
    #[inline(always)]
    fn exp_poly(x: f32) -> f32 {
        let xc = if EXP_LO > x { EXP_LO } else { x };
        let xc = if EXP_HI < xc { EXP_HI } else { xc };
        let t = xc * std::f32::consts::LOG2_E + EXP_MAGIC;
        let n = t - EXP_MAGIC;
        // Wrapping ops: no overflow-check branch (which would block vectorisation); the clamp
        // keeps n in [-126, 127] anyway.
        let n_i = (t.to_bits() as i32).wrapping_sub(EXP_MAGIC.to_bits() as i32);
        let r = xc - n * LN2_HI - n * LN2_LO;
        let mut q = EXP_Q[0];
        for &c in &EXP_Q[1..] {
            q = q * r + c;
        }
        let y = q * r * r + r + 1.0;
        let scale = f32::from_bits(((n_i.wrapping_add(127)) as u32 & 0xff) << 23);
        y * scale
    }

    /// e^x: anything below -87, -inf included, gives 0 (the true value is under 1.7e-38);
    /// NaN gives NaN; x is clamped to 88 above. About 1-2 ulp.
    #[inline(always)]
    pub fn exp_f32(x: f32) -> f32 {
        let v = exp_poly(x);
        if x >= EXP_LO || x.is_nan() {
            v
        } else {
            0.0
        }
    }

    /// [`exp_f32`], except that NaN gives 0 (the sampler's rule: a NaN logit has
    /// probability 0). Meant for x <= 0.
    #[inline(always)]
    pub fn exp_or_zero(x: f32) -> f32 {
        let v = exp_poly(x);
        if x >= EXP_LO {
            v
        } else {
            0.0
        }
    }

    /// 8-lane AVX2/FMA twins of the scalar functions. Call only from code compiled with
    /// `avx2,fma` enabled (they are always inlined into it).
    #[cfg(target_arch = "x86_64")]
    pub mod avx2 {
        use super::*;
        use std::arch::x86_64::*;

        /// [`tanh_f32`] on 8 lanes.
        ///
        /// # Safety
        /// AVX2 and FMA present.
        #[inline(always)]
        pub unsafe fn tanh(x: __m256) -> __m256 {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe {
                let x = _mm256_min_ps(_mm256_set1_ps(TANH_CLAMP), x);
                let x = _mm256_max_ps(_mm256_set1_ps(-TANH_CLAMP), x);
                let x2 = _mm256_mul_ps(x, x);
                let mut p = _mm256_set1_ps(TANH_P[0]);
                for &c in &TANH_P[1..] {
                    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(c));
                }
                p = _mm256_mul_ps(p, x);
                let mut q = _mm256_set1_ps(TANH_Q[0]);
                for &c in &TANH_Q[1..] {
                    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(c));
                }
                _mm256_div_ps(p, q)
            }
        }

        /// [`sigmoid_f32`] on 8 lanes.
        ///
        /// # Safety
        /// AVX2 and FMA present.
        #[inline(always)]
        pub unsafe fn sigmoid(x: __m256) -> __m256 {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe {
                let half = _mm256_set1_ps(0.5);
                _mm256_fmadd_ps(half, tanh(_mm256_mul_ps(half, x)), half)
            }
        }

        /// [`exp_f32`] on 8 lanes.
        ///
        /// # Safety
        /// AVX2 and FMA present.
        #[inline(always)]
        pub unsafe fn exp(x: __m256) -> __m256 {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe {
                let lo = _mm256_set1_ps(EXP_LO);
                let magic = _mm256_set1_ps(EXP_MAGIC);
                let xc = _mm256_max_ps(lo, x);
                let xc = _mm256_min_ps(_mm256_set1_ps(EXP_HI), xc);
                let t = _mm256_add_ps(
                    _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
                    magic,
                );
                let n = _mm256_sub_ps(t, magic);
                let n_i = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
                let r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI)));
                let r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)));
                let mut q = _mm256_set1_ps(EXP_Q[0]);
                for &c in &EXP_Q[1..] {
                    q = _mm256_add_ps(_mm256_mul_ps(q, r), _mm256_set1_ps(c));
                }
                let y = _mm256_add_ps(
                    _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(q, r), r), r),
                    _mm256_set1_ps(1.0),
                );
                let biased = _mm256_add_epi32(n_i, _mm256_set1_epi32(127));
                let e = _mm256_slli_epi32::<23>(_mm256_and_si256(biased, _mm256_set1_epi32(0xff)));
                let v = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
                // keep v where x >= LO or x is NaN (unordered), else 0
                let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, lo);
                _mm256_and_ps(v, keep)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn grid() -> impl Iterator<Item = f32> {
            (-400_000..=400_000).map(|i| i as f32 * 5e-5)
        }

        #[test]
        fn tanh_and_sigmoid_are_accurate() {
            let mut worst_t = 0f64;
            let mut worst_s = 0f64;
            for x in grid().chain([30.0, -30.0, 1e-30, -1e-30, 0.0]) {
                let e = (x as f64).tanh();
                worst_t = worst_t.max((tanh_f32(x) as f64 - e).abs());
                let s = 1.0 / (1.0 + (-(x as f64)).exp());
                worst_s = worst_s.max((sigmoid_f32(x) as f64 - s).abs());
            }
            assert!(worst_t < 1e-6, "tanh error {worst_t:e}");
            assert!(worst_s < 1e-6, "sigmoid error {worst_s:e}");
            assert!(tanh_f32(f32::NAN).is_nan());
            assert_eq!(tanh_f32(f32::INFINITY), tanh_f32(100.0));
            assert!(tanh_f32(100.0) <= 1.0 && tanh_f32(-100.0) >= -1.0);
            assert!(sigmoid_f32(-100.0) >= 0.0);
        }

        #[test]
        fn exp_is_accurate() {
            let mut worst = 0f64;
            for x in grid().map(|x| x * 4.0) {
                let e = (x as f64).exp();
                worst = worst.max((exp_f32(x) as f64 - e).abs() / e);
            }
            assert!(worst < 5e-7, "exp relative error {worst:e}");
            assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
            assert_eq!(exp_f32(-1000.0), 0.0);
            assert_eq!(exp_f32(0.0), 1.0);
            assert!(exp_f32(f32::NAN).is_nan());
            // The sampler's variant: NaN (a NaN logit) has probability 0.
            for x in [f32::NEG_INFINITY, f32::NAN, -87.5, -1e30] {
                assert_eq!(exp_or_zero(x), 0.0, "{x}");
            }
            let mut worst = 0.0f64;
            for i in 0..=200_000 {
                let x = -87.0 + 87.0 * i as f32 / 200_000.0;
                let want = (x as f64).exp();
                assert_eq!(exp_or_zero(x).to_bits(), exp_f32(x).to_bits());
                worst = worst.max((exp_or_zero(x) as f64 - want).abs() / want);
            }
            assert!(worst < 3e-7, "max relative error {worst}");
        }

        #[cfg(target_arch = "x86_64")]
        #[test]
        fn vector_twins_give_the_same_bits() {
            if !crate::nn::simd() {
                return;
            }
            /// # Safety
            /// AVX2 and FMA present (checked by the caller).
            #[target_feature(enable = "avx2,fma")]
            unsafe fn check() {
                // SAFETY: the caller upholds this function's `# Safety` contract.
                unsafe {
                    use std::arch::x86_64::*;
                    let special = [
                        f32::NAN,
                        f32::INFINITY,
                        f32::NEG_INFINITY,
                        -87.5,
                        100.0,
                        -0.0,
                    ];
                    let xs: Vec<f32> = grid().step_by(7).chain(special).collect();
                    for chunk in xs.chunks_exact(8) {
                        let v = _mm256_loadu_ps(chunk.as_ptr());
                        let mut out = [[0f32; 8]; 3];
                        _mm256_storeu_ps(out[0].as_mut_ptr(), avx2::tanh(v));
                        _mm256_storeu_ps(out[1].as_mut_ptr(), avx2::sigmoid(v));
                        _mm256_storeu_ps(
                            out[2].as_mut_ptr(),
                            avx2::exp(_mm256_mul_ps(v, _mm256_set1_ps(4.0))),
                        );
                        for l in 0..8 {
                            let x = chunk[l];
                            assert_eq!(out[0][l].to_bits(), tanh_f32(x).to_bits(), "tanh {x}");
                            assert_eq!(
                                out[1][l].to_bits(),
                                sigmoid_f32(x).to_bits(),
                                "sigmoid {x}"
                            );
                            assert_eq!(out[2][l].to_bits(), exp_f32(x * 4.0).to_bits(), "exp {x}");
                        }
                    }
                }
            }
            // SAFETY: checked above.
            unsafe { check() }
        }
    }
}

/// `Some(s as &mut [f32])` when F is f32 (for dispatch to f32 SIMD kernels).
#[inline]
pub(crate) fn as_f32<F: Float>(s: &mut [F]) -> Option<&mut [f32]> {
    if std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>() {
        // SAFETY: F is f32.
        Some(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, s.len()) })
    } else {
        None
    }
}

/// Shared-slice twin of [`as_f32`].
#[inline]
pub(crate) fn as_f32_ref<F: Float>(s: &[F]) -> Option<&[f32]> {
    if std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>() {
        // SAFETY: F is f32.
        Some(unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) })
    } else {
        None
    }
}

/// Zero every element of an array (gradient reset).
pub fn zero<F: Float, D: ndarray::Dimension>(a: &mut ndarray::Array<F, D>) {
    a.fill(F::zero());
}

/// Worker threads the numeric core uses: `QUILL_THREADS` if set to a positive number, else
/// the number of CPUs available to the process. Read once.
pub fn threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("QUILL_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}
