//! quill against PyTorch: logits, loss, final state and every gradient for given weights and
//! input, in PyTorch's state-dict layout.
//!
//! The golden file `tests/data/torch_golden.safetensors` was made by
//! `tests/data/make_torch_golden.py` (torch 2.15, see tests/data/README.md); its core is:
//!
//! ```python
//! torch.manual_seed(1234)
//! embed = nn.Embedding(7, 4); rnn = nn.LSTM(4, 5, num_layers=2); out = nn.Linear(5, 7)
//! # every parameter uniform in [-0.5, 0.5], rounded to f32, computed in f64
//! x, y = randint(0, 7, (4, 3)), randint(0, 7, (4, 3))        # (T, B)
//! h0, c0 = rand(2, 3, 5) - 0.5, rand(2, 3, 5) - 0.5          # (L, B, H)
//! out_seq, (h_n, c_n) = rnn(embed(x), (h0, c0))
//! logits = out(out_seq)                                      # (T, B, V)
//! loss = F.cross_entropy(logits.view(-1, 7), y.view(-1)); loss.backward()
//! ```

use std::collections::HashMap;

use ndarray::Array2;
use quill::nn::model::{LstmState, Model, ModelConfig, Params, Workspace};

const T: usize = 4;
const B: usize = 3;
const H: usize = 5;
const L: usize = 2;

fn load() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/torch_golden.safetensors"
    ))
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

fn config() -> ModelConfig {
    ModelConfig {
        vocab: 7,
        embed: 4,
        hidden: H,
        layers: L,
        dropout: 0.0,
        tie_weights: false,
    }
}

fn state_from(t: &(Vec<usize>, Vec<f32>)) -> Vec<Array2<f64>> {
    assert_eq!(t.0, vec![L, B, H]);
    (0..L)
        .map(|l| Array2::from_shape_fn((B, H), |(b, j)| t.1[l * B * H + b * H + j] as f64))
        .collect()
}

fn assert_close(name: &str, got: &[f64], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w as f64).abs() / (w.abs() as f64).max(1e-3);
        assert!(err < tol, "{name}[{i}]: quill {g} torch {w}");
    }
}

#[test]
fn logits_loss_state_and_gradients_match_pytorch() {
    let g = load();
    let cfg = config();
    let params = Params::from_named(&cfg, "", |name, shape| {
        let (s, d) = g.get(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(s.as_slice(), shape, "{name}");
        Ok(d.clone())
    })
    .unwrap();
    let model = Model {
        config: cfg.clone(),
        params: params.cast::<f64>(),
    };
    let x: Vec<u32> = g["input.x"].1.iter().map(|&v| v as u32).collect();
    let y: Vec<u32> = g["input.y"].1.iter().map(|&v| v as u32).collect();
    assert_eq!(x.len(), T * B);
    let state0 = LstmState {
        h: state_from(&g["input.h0"]),
        c: state_from(&g["input.c0"]),
    };

    // Logits: PyTorch's (T, B, V) row-major is exactly quill's time-major (T·B, V).
    let mut ws = Workspace::default();
    model.forward(&mut ws, &x, &state0, None);
    let logits: Vec<f64> = ws.logits().iter().copied().collect();
    assert_close("logits", &logits, &g["expected.logits"].1, 1e-5);

    let mut grads = Params::<f64>::zeros(&cfg);
    let mut state = state0.clone();
    let loss = model.forward_backward(&mut ws, &mut grads, &x, &y, &mut state, None, None);
    assert_close("loss", &[loss], &g["expected.loss"].1, 1e-6);
    let flat = |a: &[Array2<f64>]| a.iter().flat_map(|m| m.iter().copied()).collect::<Vec<_>>();
    assert_close("h_n", &flat(&state.h), &g["expected.h_n"].1, 1e-5);
    assert_close("c_n", &flat(&state.c), &g["expected.c_n"].1, 1e-5);

    // Gradients, mapped to PyTorch names and layouts.
    for (name, _shape, data) in grads.cast::<f32>().to_named("") {
        if name.contains("bias_hh") {
            continue; // quill keeps one bias; PyTorch's two biases get the same gradient
        }
        let want = &g[&format!("grad.{name}")].1;
        let got: Vec<f64> = data.iter().map(|&v| v as f64).collect();
        assert_close(&format!("grad.{name}"), &got, want, 1e-4);
    }
    // ... and PyTorch's bias_hh gradient equals its bias_ih gradient, which we matched.
    assert_eq!(g["grad.rnn.bias_hh_l0"].1, g["grad.rnn.bias_ih_l0"].1);
}
