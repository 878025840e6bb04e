//! Regularisation of a training window, after AWD-LSTM (Merity et al., 2017): inverted dropout
//! on activations, whole-token embedding dropout and DropConnect on the recurrent weights.
//! Every mask keeps a value with probability 1 − p and scales it by 1 / (1 − p), so evaluation
//! and generation use the weights and activations unchanged and never see a mask.
//!
//! - Activation dropout (layer inputs and outputs): a mask of (B, H) rows, one per stream,
//!   held for the whole window (*locked* or variational dropout), or (T·B, H), one per element.
//!   Rows are time-major, so row r of a window uses mask row `r % rows`.
//! - Embedding dropout: a mask over the V rows of the embedding table, drawn per window, so a
//!   dropped token is dropped wherever it occurs in the window.
//! - DropConnect ([`WeightDrop`]): a mask over every `W_h` (H, 4H), drawn once per optimizer
//!   step and multiplied into the weights before they are packed, so the GEMMs run at full
//!   speed; the gradient of the raw weights is the masked gradient.

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Zip};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use super::lstm::LstmParams;
use super::Float;

/// How a window's activation masks are shaped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskShape {
    /// One mask per element, (T·B, H): the dropout of quill before 0.2 and of `nn.Dropout`.
    #[default]
    Element,
    /// One mask per stream held over the window, (B, H): locked (variational) dropout.
    Stream,
}

/// The dropout of one training window; all zero is no regularisation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dropout {
    /// On every layer's output (between layers and before the output layer).
    pub output: f32,
    /// On the embedded inputs of layer 0.
    pub input: f32,
    /// Whole tokens of the embedding table.
    pub embed: f32,
    /// Shape of the activation masks.
    pub shape: MaskShape,
}

/// `mask` as (rows, cols) of 0 or 1/(1−p), each kept with probability 1 − p.
pub fn draw_mask<F: Float>(
    mask: &mut Array2<F>,
    rows: usize,
    cols: usize,
    p: f32,
    rng: &mut dyn RngCore,
) {
    if mask.dim() != (rows, cols) {
        *mask = Array2::zeros((rows, cols));
    }
    fill_mask(mask.iter_mut(), p, rng);
}

/// `mask` as (n) values of 0 or 1/(1−p), each kept with probability 1 − p.
pub fn draw_mask1<F: Float>(mask: &mut Array1<F>, n: usize, p: f32, rng: &mut dyn RngCore) {
    if mask.len() != n {
        *mask = Array1::zeros(n);
    }
    fill_mask(mask.iter_mut(), p, rng);
}

/// The one draw of every mask: each value 0 with probability p, else 1/(1−p).
fn fill_mask<'a, F: Float + 'a>(
    values: impl Iterator<Item = &'a mut F>,
    p: f32,
    rng: &mut dyn RngCore,
) {
    let keep = F::c(1.0 / (1.0 - p as f64));
    for v in values {
        *v = if rng.random::<f32>() < p {
            F::zero()
        } else {
            keep
        };
    }
}

/// `out[r] = x[r] * mask[r % mask.rows]`; `x`, `out` (N, H), `mask` (N or B, H) with B | N.
pub fn apply_mask<F: Float>(x: ArrayView2<'_, F>, mask: &Array2<F>, mut out: ArrayViewMut2<'_, F>) {
    let m = mask.nrows();
    for (r, (mut o, xr)) in out.rows_mut().into_iter().zip(x.rows()).enumerate() {
        Zip::from(&mut o)
            .and(&xr)
            .and(mask.row(r % m))
            .for_each(|o, &xv, &k| *o = xv * k);
    }
}

/// `d[r] *= mask[r % mask.rows]` in place: the gradient through [`apply_mask`], and dropout of
/// a buffer in place.
pub fn mask_in_place<F: Float>(mut d: ArrayViewMut2<'_, F>, mask: &Array2<F>) {
    let m = mask.nrows();
    for (r, mut row) in d.rows_mut().into_iter().enumerate() {
        row *= &mask.row(r % m);
    }
}

/// `out = table` with row v scaled by `mask[v]` (embedding dropout); `table`, `out` (V, E).
pub fn mask_rows<F: Float>(table: &Array2<F>, mask: &Array1<F>, out: &mut Array2<F>) {
    if out.dim() != table.dim() {
        *out = Array2::zeros(table.dim());
    }
    for ((mut o, t), &k) in out.rows_mut().into_iter().zip(table.rows()).zip(mask) {
        Zip::from(&mut o).and(&t).for_each(|o, &tv| *o = tv * k);
    }
}

/// `acc[v] += d[v] * mask[v]` for every row v: the gradient through [`mask_rows`].
pub fn add_masked_rows<F: Float>(acc: &mut Array2<F>, d: &Array2<F>, mask: &Array1<F>) {
    for ((mut a, dr), &k) in acc.rows_mut().into_iter().zip(d.rows()).zip(mask) {
        if k != F::zero() {
            Zip::from(&mut a).and(&dr).for_each(|a, &dv| *a += dv * k);
        }
    }
}

/// DropConnect on the recurrent weights `W_h` of every layer (Wan et al., 2013; AWD-LSTM's
/// WeightDrop): [`WeightDrop::apply`] draws one mask per layer and multiplies it into the
/// weights for one optimizer step, [`WeightDrop::restore`] puts the raw weights back and masks
/// their gradient (∂L/∂W = mask * ∂L/∂(mask * W)).
#[derive(Clone, Debug, Default)]
pub struct WeightDrop<F> {
    /// One mask per layer, (H, 4H).
    masks: Vec<Array2<F>>,
    /// The raw `W_h` of every layer while the masked ones are in place.
    saved: Vec<Array2<F>>,
}

impl<F: Float> WeightDrop<F> {
    /// Draws new masks with drop probability `p` and puts `W_h * mask` in place of the
    /// `W_h` of every layer (a model's `params.lstm`), keeping the raw weights.
    pub fn apply(&mut self, params: &mut [LstmParams<F>], p: f32, rng: &mut dyn RngCore) {
        let layers = params.len();
        self.masks.resize_with(layers, || Array2::zeros((0, 0)));
        self.saved.resize_with(layers, || Array2::zeros((0, 0)));
        for ((layer, mask), saved) in params.iter_mut().zip(&mut self.masks).zip(&mut self.saved) {
            let (r, c) = layer.wh.dim();
            draw_mask(mask, r, c, p, rng);
            if saved.dim() != (r, c) {
                *saved = Array2::zeros((r, c));
            }
            saved.assign(&layer.wh);
            layer.wh *= &*mask;
        }
    }

    /// Undoes [`WeightDrop::apply`]: the raw weights go back into `params` and every `W_h`
    /// gradient in `grads` (of the masked weights) becomes the gradient of the raw ones.
    pub fn restore(&mut self, params: &mut [LstmParams<F>], grads: &mut [LstmParams<F>]) {
        for (((layer, g), mask), saved) in params
            .iter_mut()
            .zip(grads.iter_mut())
            .zip(&self.masks)
            .zip(&self.saved)
        {
            layer.wh.assign(saved);
            g.wh *= mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keeps_expected_fraction_and_mean() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
        let x = Array2::<f64>::ones((100, 100));
        let mut mask = Array2::zeros((0, 0));
        let mut out = Array2::zeros((100, 100));
        draw_mask(&mut mask, 100, 100, 0.3, &mut rng);
        apply_mask(x.view(), &mask, out.view_mut());
        let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / 1e4;
        assert!((kept - 0.7).abs() < 0.03, "kept {kept}");
        assert!((out.mean().unwrap() - 1.0).abs() < 0.05);
    }

    #[test]
    fn a_stream_mask_is_held_over_the_window() {
        // 3 steps of 4 streams: row r = t·4 + b uses mask row b at every step.
        let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
        let mut mask = Array2::zeros((0, 0));
        draw_mask(&mut mask, 4, 50, 0.5, &mut rng);
        let x = Array2::<f64>::from_shape_fn((12, 50), |(r, c)| (r * 50 + c) as f64 + 1.0);
        let mut out = Array2::zeros((12, 50));
        apply_mask(x.view(), &mask, out.view_mut());
        for r in 0..12 {
            for c in 0..50 {
                assert_eq!(out[[r, c]], x[[r, c]] * mask[[r % 4, c]]);
            }
        }
        let mut d = x.clone();
        mask_in_place(d.view_mut(), &mask);
        assert_eq!(d, out);
    }

    #[test]
    fn masked_rows_and_their_gradient() {
        let table = Array2::<f64>::from_shape_fn((3, 2), |(r, c)| (r * 2 + c) as f64 + 1.0);
        let mask = Array1::from(vec![2.0, 0.0, 2.0]);
        let mut out = Array2::zeros((0, 0));
        mask_rows(&table, &mask, &mut out);
        assert_eq!(out, ndarray::array![[2.0, 4.0], [0.0, 0.0], [10.0, 12.0]]);
        let mut acc = Array2::ones((3, 2));
        add_masked_rows(&mut acc, &table, &mask);
        assert_eq!(acc, ndarray::array![[3.0, 5.0], [1.0, 1.0], [11.0, 13.0]]);
    }
}
