//! Token embedding: a lookup of rows of a (V, E) table.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use super::Float;

/// `out[n] = table[tokens[n]]`; `tokens` (N), `table` (V, E), `out` (N, E).
pub fn embedding_forward<F: Float>(
    table: &Array2<F>,
    tokens: &[u32],
    mut out: ArrayViewMut2<'_, F>,
) {
    for (n, &tok) in tokens.iter().enumerate() {
        out.row_mut(n).assign(&table.row(tok as usize));
    }
}

/// Accumulates `dout[n]` into `dtable[tokens[n]]`; `dout` (N, E), `dtable` (V, E).
pub fn embedding_backward<F: Float>(
    dtable: &mut Array2<F>,
    tokens: &[u32],
    dout: ArrayView2<'_, F>,
) {
    for (n, &tok) in tokens.iter().enumerate() {
        let mut row = dtable.row_mut(tok as usize);
        row += &dout.row(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn lookup_and_scatter_add() {
        let table = array![[1.0f64, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let mut out = Array2::zeros((3, 2));
        embedding_forward(&table, &[2, 0, 2], out.view_mut());
        assert_eq!(out, array![[5.0, 6.0], [1.0, 2.0], [5.0, 6.0]]);
        let mut d = Array2::zeros((3, 2));
        embedding_backward(
            &mut d,
            &[2, 0, 2],
            array![[1.0, 1.0], [2.0, 0.0], [0.5, 0.5]].view(),
        );
        assert_eq!(d, array![[2.0, 0.0], [0.0, 0.0], [1.5, 1.5]]);
    }
}
