//! Gradient check of the whole model against central differences in f64, and agreement of the
//! production f32 path with the f64 one.
//!
//! Tiny model: L=2 layers, H=5, E=4, V=7, window T=4, B=3 streams, starting from a non-zero
//! carried (h, c) whose gradient is cut as truncated BPTT does (the loss is a function of the
//! parameters with (h0, c0) held constant). Numerical derivatives use the fourth-order central
//! stencil  f'(x) ≈ [8(f(x+ε) − f(x−ε)) − (f(x+2ε) − f(x−2ε))] / (12ε)  with ε = 1e-3, whose
//! truncation error (~ε⁴) and rounding error (~1e-16/ε) are both far below the 1e-6 bar.

use ndarray::Array2;
use quill::nn::model::{LstmState, Model, ModelConfig, Params, Workspace};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const T: usize = 4;
const B: usize = 3;

fn tiny_config(tie: bool) -> ModelConfig {
    ModelConfig {
        vocab: 7,
        embed: if tie { 5 } else { 4 },
        hidden: 5,
        layers: 2,
        dropout: 0.0,
        tie_weights: tie,
    }
}

/// A model with every parameter (biases too) random, plus data and a non-zero state.
fn setup(tie: bool, seed: u64) -> (Model<f64>, Vec<u32>, Vec<u32>, LstmState<f64>) {
    let cfg = tiny_config(tie);
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut model = Model::<f64>::new(cfg.clone(), &mut rng).unwrap();
    for s in model.params.slices_mut() {
        for v in s.iter_mut() {
            *v = rng.random_range(-0.6..0.6);
        }
    }
    let x: Vec<u32> = (0..T * B).map(|_| rng.random_range(0..7)).collect();
    let y: Vec<u32> = (0..T * B).map(|_| rng.random_range(0..7)).collect();
    let mut state = LstmState::zeros(&cfg, B);
    for a in state.h.iter_mut().chain(state.c.iter_mut()) {
        *a = Array2::from_shape_fn((B, 5), |_| rng.random_range(-0.8..0.8));
    }
    (model, x, y, state)
}

fn loss_of(model: &Model<f64>, x: &[u32], y: &[u32], state: &LstmState<f64>) -> f64 {
    let mut ws = Workspace::default();
    let mut s = state.clone();
    model.eval_window(&mut ws, x, y, &mut s) / x.len() as f64
}

fn analytic(
    model: &Model<f64>,
    x: &[u32],
    y: &[u32],
    state: &LstmState<f64>,
) -> (f64, Params<f64>) {
    let mut ws = Workspace::default();
    let mut grads = Params::zeros(&model.config);
    let mut s = state.clone();
    let loss = model.forward_backward(&mut ws, &mut grads, x, y, &mut s, None);
    (loss, grads)
}

fn check(tie: bool) {
    let (model, x, y, state) = setup(tie, if tie { 11 } else { 5 });
    let (loss, grads) = analytic(&model, &x, &y, &state);
    assert!((loss - loss_of(&model, &x, &y, &state)).abs() < 1e-14);
    let eps = 1e-3;
    let n_tensors = grads.slices().len();
    let mut worst = 0.0f64;
    let mut checked = 0;
    for ti in 0..n_tensors {
        let len = grads.slices()[ti].len();
        for k in 0..len {
            let at = |delta: f64| {
                let mut m = model.clone();
                m.params.slices_mut()[ti][k] += delta;
                loss_of(&m, &x, &y, &state)
            };
            let num =
                (8.0 * (at(eps) - at(-eps)) - (at(2.0 * eps) - at(-2.0 * eps))) / (12.0 * eps);
            let ana = grads.slices()[ti][k];
            let rel = (ana - num).abs() / (ana.abs() + num.abs()).max(1e-8);
            assert!(
                rel <= 1e-6,
                "tensor {ti} element {k}: analytic {ana:e} numeric {num:e} rel {rel:e}"
            );
            worst = worst.max(rel);
            checked += 1;
        }
    }
    let expected = tiny_config(tie).num_params();
    assert_eq!(checked, expected, "every parameter checked");
    eprintln!("gradient check (tie={tie}): {checked} parameters, max relative error {worst:e}");
}

#[test]
fn every_parameter_gradient_matches_central_differences() {
    check(false);
}

#[test]
fn tied_weights_gradient_matches_central_differences() {
    check(true);
}

#[test]
fn gradients_are_nonzero_where_expected() {
    // A check that passes with all-zero gradients would prove nothing: make sure they are not.
    let (model, x, y, state) = setup(false, 5);
    let (_, grads) = analytic(&model, &x, &y, &state);
    for (i, s) in grads.slices().iter().enumerate() {
        assert!(
            s.iter().any(|v| v.abs() > 1e-6),
            "tensor {i} has an all-zero gradient"
        );
    }
}

#[test]
fn f32_path_agrees_with_f64() {
    let (model64, x, y, state64) = setup(false, 5);
    let (loss64, g64) = analytic(&model64, &x, &y, &state64);
    let model32 = Model {
        config: model64.config.clone(),
        params: model64.params.cast::<f32>(),
    };
    let state32 = LstmState {
        h: state64.h.iter().map(|a| a.mapv(|v| v as f32)).collect(),
        c: state64.c.iter().map(|a| a.mapv(|v| v as f32)).collect(),
    };
    let mut ws = Workspace::default();
    let mut g32 = Params::<f32>::zeros(&model32.config);
    let mut s = state32.clone();
    let loss32 = model32.forward_backward(&mut ws, &mut g32, &x, &y, &mut s, None);
    assert!((loss32 - loss64).abs() < 1e-5, "{loss32} vs {loss64}");
    let g32 = g32.cast::<f64>();
    let mut worst = 0.0f64;
    for (a, b) in g32.slices().iter().zip(g64.slices()) {
        for (&u, &v) in a.iter().zip(b.iter()) {
            let err = (u - v).abs() / (v.abs().max(1e-3));
            worst = worst.max(err);
        }
    }
    assert!(worst < 1e-4, "f32 vs f64 gradient error {worst:e}");
}
