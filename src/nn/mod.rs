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
pub mod linear;
pub mod loss;
pub mod lstm;

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
    fn f64(self) -> f64 {
        self
    }
}

/// f32 nonlinearities. Plain `libm` calls for now; a single place to swap in vectorisable
/// polynomial versions.
pub mod fast {
    /// sigmoid(x) = 1 / (1 + e^-x), computed as 0.5 + 0.5 tanh(x/2) for symmetry and range.
    #[inline(always)]
    pub fn sigmoid_f32(x: f32) -> f32 {
        0.5 + 0.5 * tanh_f32(0.5 * x)
    }

    /// tanh(x).
    #[inline(always)]
    pub fn tanh_f32(x: f32) -> f32 {
        x.tanh()
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
