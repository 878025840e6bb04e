//! Gradient check of the whole model against central differences in f64, and agreement of the
//! production f32 path with the f64 one.
//!
//! Tiny model: L=2 layers, H=5, E=4, V=7, window T=4 (embedded inputs) or T=6 (embedding
//! folded into layer 0), B=3 streams, starting from a non-zero carried (h, c) whose gradient is
//! cut as truncated BPTT does (the loss is a function of the parameters with (h0, c0) held
//! constant). The regularisers (dropout on layer outputs and inputs, per stream or per element,
//! embedding dropout, DropConnect on W_h) are checked with their masks held fixed: every
//! evaluation draws them from the same seed, so the loss is a function of the raw weights; the
//! sampled softmax with its candidates held fixed (a repeat and accidental hits among them). Numerical derivatives use the fourth-order central
//! stencil  f'(x) ≈ [8(f(x+ε) − f(x−ε)) − (f(x+2ε) − f(x−2ε))] / (12ε)  with ε = 1e-3, whose
//! truncation error (~ε⁴) and rounding error (~1e-16/ε) are both far below the 1e-6 bar.

use ndarray::Array2;
use quill::nn::dropout::{Dropout, MaskShape, WeightDrop};
use quill::nn::model::{LstmState, Model, ModelConfig, Params, Workspace};
use quill::nn::sampled::{Candidates, Proposal};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const T: usize = 4;
/// A window long enough for layer 0 to fold the embedding (2V ≤ T·B).
const T_FOLD: usize = 6;
const B: usize = 3;

/// Regularisation of the checked window, its masks drawn from `seed` at every evaluation.
#[derive(Clone, Copy, Debug)]
struct Reg {
    drop: Dropout,
    weight_drop: f32,
    seed: u64,
    /// Output layer: a sampled softmax over [`CANDIDATES`] instead of the full one.
    sampled: bool,
}

/// The sampled softmax's candidates of the checked windows (V = 7): the head of the
/// proposal below (entries 0 and 5), then two draws, a repeat.
const CANDIDATES: [u32; 4] = [0, 5, 2, 2];

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
fn setup(tie: bool, seed: u64, t: usize) -> (Model<f64>, Vec<u32>, Vec<u32>, LstmState<f64>) {
    let cfg = tiny_config(tie);
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut model = Model::<f64>::new(cfg.clone(), &mut rng).unwrap();
    for s in model.params.slices_mut() {
        for v in s.iter_mut() {
            *v = rng.random_range(-0.6..0.6);
        }
    }
    let x: Vec<u32> = (0..t * B).map(|_| rng.random_range(0..7)).collect();
    let y: Vec<u32> = (0..t * B).map(|_| rng.random_range(0..7)).collect();
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
    analytic_reg(model, x, y, state, None)
}

/// Loss and gradients of a training window, regularised by `reg` as the trainer's step does:
/// DropConnect masks into W_h, the window with its dropout, the raw weights back and their
/// gradient masked.
fn analytic_reg(
    model: &Model<f64>,
    x: &[u32],
    y: &[u32],
    state: &LstmState<f64>,
    reg: Option<Reg>,
) -> (f64, Params<f64>) {
    let mut ws = Workspace::default();
    let mut grads = Params::zeros(&model.config);
    let mut s = state.clone();
    let Some(reg) = reg else {
        let loss = model.forward_backward(&mut ws, &mut grads, x, y, &mut s, None, None);
        return (loss, grads);
    };
    let mut rng = Pcg64::seed_from_u64(reg.seed);
    let mut m = model.clone();
    let mut wd = WeightDrop::default();
    if reg.weight_drop > 0.0 {
        wd.apply(&mut m.params.lstm, reg.weight_drop, &mut rng);
    }
    let proposal = Proposal::from_counts(&[9, 1, 4, 0, 2, 7, 3], CANDIDATES.len()).unwrap();
    let cand = reg.sampled.then(|| Candidates {
        ids: &CANDIDATES,
        log_expected: proposal.log_expected(),
    });
    let loss = m.forward_backward(
        &mut ws,
        &mut grads,
        x,
        y,
        &mut s,
        Some((&reg.drop, &mut rng)),
        cand,
    );
    if reg.weight_drop > 0.0 {
        wd.restore(&mut m.params.lstm, &mut grads.lstm);
        assert_eq!(m.params, model.params, "restore puts the raw weights back");
    }
    (loss, grads)
}

fn check(tie: bool) {
    check_window(tie, T, None);
}

fn check_window(tie: bool, t: usize, reg: Option<Reg>) {
    let (model, x, y, state) = setup(tie, if tie { 11 } else { 5 }, t);
    let (loss, grads) = analytic_reg(&model, &x, &y, &state, reg);
    let plain = loss_of(&model, &x, &y, &state);
    let loss_at = |m: &Model<f64>| match reg {
        None => loss_of(m, &x, &y, &state),
        Some(_) => analytic_reg(m, &x, &y, &state, reg).0,
    };
    if reg.is_some() {
        // The masks change the loss: a check that dropped nothing would prove nothing.
        assert!((loss - plain).abs() > 1e-6, "{loss} vs {plain}");
    } else {
        assert!((loss - plain).abs() < 1e-14);
    }
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
                loss_at(&m)
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
    eprintln!(
        "gradient check (tie={tie}, T={t}, {reg:?}): {checked} parameters, max relative error {worst:e}"
    );
}

fn reg(output: f32, input: f32, embed: f32, shape: MaskShape, weight_drop: f32) -> Option<Reg> {
    Some(Reg {
        drop: Dropout {
            output,
            input,
            embed,
            shape,
        },
        weight_drop,
        seed: 3,
        sampled: false,
    })
}

fn sampled(r: Option<Reg>) -> Option<Reg> {
    r.map(|r| Reg { sampled: true, ..r })
}

#[test]
fn folded_embedding_gradient_matches_central_differences() {
    check_window(false, T_FOLD, None);
}

#[test]
fn locked_dropout_on_inputs_and_outputs_gradient_matches() {
    check_window(false, T, reg(0.3, 0.3, 0.0, MaskShape::Stream, 0.0));
}

#[test]
fn element_dropout_on_inputs_and_outputs_gradient_matches() {
    check_window(false, T, reg(0.3, 0.3, 0.0, MaskShape::Element, 0.0));
}

#[test]
fn embedding_dropout_gradient_matches_embedded_and_folded() {
    check_window(false, T, reg(0.0, 0.0, 0.4, MaskShape::Stream, 0.0));
    check_window(false, T_FOLD, reg(0.0, 0.0, 0.4, MaskShape::Stream, 0.0));
    // Tied: the output layer's share of the table's gradient is not masked.
    check_window(true, T_FOLD, reg(0.0, 0.0, 0.4, MaskShape::Stream, 0.0));
}

#[test]
fn dropconnect_on_recurrent_weights_gradient_matches() {
    check_window(false, T, reg(0.0, 0.0, 0.0, MaskShape::Stream, 0.4));
}

#[test]
fn every_regulariser_at_once_gradient_matches() {
    check_window(false, T, reg(0.25, 0.25, 0.25, MaskShape::Stream, 0.25));
    check_window(true, T_FOLD, reg(0.25, 0.0, 0.25, MaskShape::Stream, 0.25));
}

#[test]
fn sampled_softmax_gradient_matches() {
    let none = reg(0.0, 0.0, 0.0, MaskShape::Stream, 0.0);
    check_window(false, T, sampled(none));
    check_window(true, T_FOLD, sampled(none));
    check_window(
        true,
        T,
        sampled(reg(0.25, 0.25, 0.25, MaskShape::Stream, 0.25)),
    );
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
    let (model, x, y, state) = setup(false, 5, T);
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
    let (model64, x, y, state64) = setup(false, 5, T);
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
    let loss32 = model32.forward_backward(&mut ws, &mut g32, &x, &y, &mut s, None, None);
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
