//! Truncated-BPTT batching: the token sequence cut into B parallel streams, read in windows
//! of T steps.
//!
//! With N tokens, each stream has S = ⌊N / B⌋ consecutive tokens: stream b covers
//! `tokens[b·S .. (b+1)·S]`. Window w reads inputs at positions w·T .. w·T+T of every stream
//! and targets one position later, so an epoch has ⌊(S − 1) / T⌋ windows and consecutive
//! windows continue each stream exactly where the last one ended (which is what makes carrying
//! (h, c) from window to window meaningful).
//!
//! A phase P (0 ≤ P < T) starts every stream's windows P tokens later: window w then reads
//! positions P + w·T .. P + w·T + T, and an epoch has ⌊(S − 1 − P) / T⌋ windows. Training
//! with `--shift-windows` gives each epoch after the first its own phase, so a token is not
//! always at the same place in its window (the aim of AWD-LSTM's variable BPTT length).

use crate::error::{Error, Result};

/// Window geometry over a token sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batcher {
    /// Streams B.
    pub b: usize,
    /// Window length T.
    pub t: usize,
    /// Tokens per stream S.
    pub stream_len: usize,
    /// Tokens each stream skips before its first window, P (0 ≤ P < T).
    pub phase: usize,
}

impl Batcher {
    /// Geometry for `n` tokens; errors when there is not even one window.
    pub fn new(n: usize, b: usize, t: usize) -> Result<Self> {
        if b == 0 || t == 0 {
            return Err(Error::config(
                "batch/seq",
                "batch and seq must be at least 1",
            ));
        }
        let min = Self::min_tokens(b, t);
        if n < min {
            return Err(Error::config(
                "corpus size",
                format!(
                    "{n} tokens is too few for batch {b} and seq {t}: need at least {min} \
                     (B × (T + 1)); use a smaller --batch or --seq or a larger corpus"
                ),
            ));
        }
        Ok(Batcher {
            b,
            t,
            stream_len: n / b,
            phase: 0,
        })
    }

    /// The same streams with the windows starting `phase` tokens in; the phase is reduced to
    /// below T, and to what still leaves one window.
    pub fn with_phase(self, phase: usize) -> Self {
        let fits = self.stream_len - 1 - self.t; // ≥ 0: `new` asks for S ≥ T + 1
        Batcher {
            phase: (phase % self.t).min(fits),
            ..self
        }
    }

    /// Fewest tokens that give one window: B · (T + 1).
    pub fn min_tokens(b: usize, t: usize) -> usize {
        b.saturating_mul(t.saturating_add(1))
    }

    /// Windows per epoch.
    pub fn windows(&self) -> usize {
        (self.stream_len - 1 - self.phase) / self.t
    }

    /// Writes window `w`'s inputs and targets, each (T·B) time-major: entry `t·B + b`.
    /// `tokens` may be stored in any width (u16 or u32).
    pub fn fill<T: Copy + Into<u32>>(&self, tokens: &[T], w: usize, x: &mut [u32], y: &mut [u32]) {
        let (b_n, t_n, s) = (self.b, self.t, self.stream_len);
        debug_assert!(w < self.windows());
        for b in 0..b_n {
            // Stream b's window: T + 1 consecutive tokens (the last is only a target).
            let start = b * s + self.phase + w * t_n;
            let run = &tokens[start..start + t_n + 1];
            for t in 0..t_n {
                x[t * b_n + b] = run[t].into();
                y[t * b_n + b] = run[t + 1].into();
            }
        }
    }

    /// The token ranges the B streams read in windows `from..to` (each stream's part, in
    /// stream order): what can be released from memory once those windows are done.
    pub fn consumed(
        &self,
        from: usize,
        to: usize,
    ) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.b).map(move |b| {
            let base = b * self.stream_len + self.phase;
            base + from * self.t..base + to * self.t
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_continue_across_windows() {
        let tokens: Vec<u32> = (0..100).collect();
        let bt = Batcher::new(tokens.len(), 4, 5).unwrap();
        assert_eq!(bt.stream_len, 25);
        assert_eq!(bt.windows(), 4);
        let (mut x, mut y) = (vec![0; 20], vec![0; 20]);
        bt.fill(&tokens, 0, &mut x, &mut y);
        assert_eq!(&x[..4], &[0, 25, 50, 75]);
        assert_eq!(&y[..4], &[1, 26, 51, 76]);
        bt.fill(&tokens, 1, &mut x, &mut y);
        // window 1 starts where window 0 ended in every stream
        assert_eq!(&x[..4], &[5, 30, 55, 80]);
        assert_eq!(&x[16..], &[9, 34, 59, 84]);
        assert_eq!(&y[16..], &[10, 35, 60, 85]);
    }

    #[test]
    fn narrow_tokens_fill_the_same_windows() {
        let wide: Vec<u32> = (0..100).collect();
        let narrow: Vec<u16> = (0..100).collect();
        let byte: Vec<u8> = (0..100).collect();
        let bt = Batcher::new(100, 4, 5).unwrap();
        let (mut x1, mut y1, mut x2, mut y2) = (vec![0; 20], vec![0; 20], vec![0; 20], vec![0; 20]);
        let (mut x3, mut y3) = (vec![0; 20], vec![0; 20]);
        for w in 0..bt.windows() {
            bt.fill(&wide, w, &mut x1, &mut y1);
            bt.fill(&narrow, w, &mut x2, &mut y2);
            bt.fill(&byte, w, &mut x3, &mut y3);
            assert_eq!((&x1, &y1), (&x2, &y2));
            assert_eq!((&x1, &y1), (&x3, &y3));
        }
        let ranges: Vec<_> = bt.consumed(1, 3).collect();
        assert_eq!(ranges, vec![5..15, 30..40, 55..65, 80..90]);
    }

    #[test]
    fn a_phase_starts_every_stream_later_and_keeps_one_window() {
        let tokens: Vec<u32> = (0..100).collect();
        let bt = Batcher::new(tokens.len(), 4, 5).unwrap().with_phase(3);
        assert_eq!((bt.phase, bt.windows()), (3, 4)); // (25 − 1 − 3) / 5
        let (mut x, mut y) = (vec![0; 20], vec![0; 20]);
        bt.fill(&tokens, 0, &mut x, &mut y);
        assert_eq!(&x[..4], &[3, 28, 53, 78]);
        bt.fill(&tokens, 3, &mut x, &mut y);
        // the last window's last target is still inside its stream
        assert_eq!(&y[16..], &[23, 48, 73, 98]);
        let ranges: Vec<_> = bt.consumed(1, 3).collect();
        assert_eq!(ranges, vec![8..18, 33..43, 58..68, 83..93]);
        assert_eq!(bt.with_phase(0), Batcher::new(100, 4, 5).unwrap());
        // reduced below T, and to what leaves one window (S = 7, T = 5: at most 1)
        assert_eq!(bt.with_phase(7).phase, 2);
        let short = Batcher::new(28, 4, 5).unwrap().with_phase(4);
        assert_eq!((short.phase, short.windows()), (1, 1));
    }

    #[test]
    fn too_small_corpus_names_minimum() {
        let e = Batcher::new(10, 4, 5).unwrap_err().to_string();
        assert!(e.contains("need at least 24"), "{e}");
    }
}
