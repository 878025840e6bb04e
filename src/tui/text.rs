//! The generated text: a transcript of prompt + sampled pieces (each with the probability it
//! had when sampled) and its word-wrapped layout, extended incrementally as tokens stream in.

use std::sync::atomic::{AtomicU64, Ordering};

use ratatui::text::Span;

/// Source of [`Transcript::epoch`] values, unique in the process.
static EPOCHS: AtomicU64 = AtomicU64::new(1);

/// Display columns of one char when laid out: tabs take 4, other control chars 1 (they are
/// drawn as U+FFFD), carriage returns 0 (dropped).
pub fn char_width(c: char) -> usize {
    match c {
        '\t' => 4,
        '\r' => 0,
        c if c.is_control() => 1,
        c => {
            let mut buf = [0u8; 4];
            Span::raw(&*c.encode_utf8(&mut buf)).width()
        }
    }
}

/// Appends the display form of `c` (see [`char_width`]) to `out`.
pub fn push_display(c: char, out: &mut String) {
    match c {
        '\t' => out.push_str("    "),
        '\r' => {}
        c if c.is_control() => out.push('\u{FFFD}'),
        c => out.push(c),
    }
}

/// Prompt text followed by generated pieces, with the sampling probability of each piece.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transcript {
    text: String,
    /// Bytes of `text` that are the prompt.
    prompt_len: usize,
    /// Start byte and sampling probability of each generated piece, in order; a piece ends
    /// where the next one starts (the last one at the end of the text).
    pieces: Vec<(usize, f32)>,
    /// Generated tokens (pieces, including empty ones).
    tokens: usize,
    /// Renewed (process-wide unique) on every change that is not an append, so layouts know
    /// to start over; transcripts with the same epoch have one text the other starts with.
    epoch: u64,
}

impl Transcript {
    /// The whole text (prompt and generated), as generated.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Bytes of [`Transcript::text`] that are the prompt.
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Number of generated tokens.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Whether there is no text at all.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Changes whenever the text is replaced or cleared (not when it grows).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts over with `prompt`.
    pub fn reset(&mut self, prompt: &str) {
        self.text.clear();
        self.text.push_str(prompt);
        self.prompt_len = prompt.len();
        self.pieces.clear();
        self.tokens = 0;
        self.epoch = EPOCHS.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends one generated piece (possibly empty, e.g. half of a UTF-8 sequence) sampled
    /// with probability `prob`.
    pub fn push(&mut self, piece: &str, prob: f32) {
        self.tokens += 1;
        if piece.is_empty() {
            return;
        }
        self.pieces.push((self.text.len(), prob));
        self.text.push_str(piece);
    }

    /// Probability of the generated piece covering byte `at`, `None` inside the prompt.
    pub fn prob_at(&self, at: usize) -> Option<f32> {
        if at < self.prompt_len {
            return None;
        }
        let i = self.pieces.partition_point(|&(s, _)| s <= at);
        i.checked_sub(1).map(|i| self.pieces[i].1)
    }
}

/// Word-wrapped line ranges of a text for one width, kept up to date as the text grows.
#[derive(Clone, Debug, Default)]
pub struct Wrapped {
    width: usize,
    epoch: u64,
    len: usize,
    /// Byte ranges of the display lines, line breaks excluded.
    lines: Vec<(usize, usize)>,
}

impl Wrapped {
    /// Brings the layout up to date with `t` at `width` columns (at least 1) and returns the
    /// lines. Only the last line is laid out again when the text has just grown.
    pub fn update(&mut self, t: &Transcript, width: usize) -> &[(usize, usize)] {
        let width = width.max(1);
        let text = t.text();
        if width != self.width || t.epoch() != self.epoch || text.len() < self.len {
            self.width = width;
            self.epoch = t.epoch();
            self.lines.clear();
            wrap_from(text, 0, width, &mut self.lines);
        } else if text.len() > self.len {
            let from = self.lines.pop().map_or(0, |l| l.0);
            wrap_from(text, from, width, &mut self.lines);
        }
        self.len = text.len();
        &self.lines
    }

    /// The lines of the last [`Wrapped::update`].
    pub fn lines(&self) -> &[(usize, usize)] {
        &self.lines
    }
}

/// Word-wraps `text[from..]` (where `from` starts a line) into lines of at most `width`
/// columns, breaking after spaces where possible and inside a word otherwise; a space that
/// would overflow a line is dropped. The last line ends at the end of the text.
pub fn wrap_from(text: &str, from: usize, width: usize, out: &mut Vec<(usize, usize)>) {
    let mut start = from;
    let mut col = 0;
    // Byte offset just after the last space on this line: where the next line may start.
    let mut brk: Option<usize> = None;
    for (i, c) in text[from..].char_indices() {
        let i = i + from;
        if c == '\n' {
            out.push((start, i));
            (start, col, brk) = (i + 1, 0, None);
            continue;
        }
        let w = char_width(c);
        if col + w > width && col > 0 {
            if c == ' ' {
                out.push((start, i));
                (start, col, brk) = (i + 1, 0, None);
                continue;
            }
            match brk {
                Some(b) => {
                    out.push((start, b));
                    start = b;
                    col = text[b..i].chars().map(char_width).sum();
                    if col + w > width && col > 0 {
                        out.push((start, i));
                        (start, col) = (i, 0);
                    }
                }
                None => {
                    out.push((start, i));
                    (start, col) = (i, 0);
                }
            }
            brk = None;
        }
        col += w;
        if c == ' ' {
            brk = Some(i + 1);
        }
    }
    out.push((start, text.len()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(text: &str, width: usize) -> Vec<&str> {
        let mut out = Vec::new();
        wrap_from(text, 0, width, &mut out);
        out.iter().map(|&(s, e)| &text[s..e]).collect()
    }

    #[test]
    fn wraps_at_spaces_and_inside_long_words() {
        assert_eq!(wrap("the quick brown fox", 10), ["the quick ", "brown fox"]);
        assert_eq!(wrap("abcdefghijkl", 5), ["abcde", "fghij", "kl"]);
        assert_eq!(wrap("ab\n\ncd", 5), ["ab", "", "cd"]);
        assert_eq!(wrap("", 5), [""]);
        // The space that overflows is dropped, not carried to the next line.
        assert_eq!(wrap("abcde fgh", 5), ["abcde", "fgh"]);
        assert_eq!(wrap("ab\n", 5), ["ab", ""]);
    }

    #[test]
    fn wrapped_lines_fit_the_width() {
        let text = "ROMEO: But soft, what light through yonder window breaks?\n\tIt is the east, \
                    and Juliet is the sun. Ａｒｉｓｅ fair sun and kill the envious moon";
        for width in 1..30 {
            for (s, e) in {
                let mut v = Vec::new();
                wrap_from(text, 0, width, &mut v);
                v
            } {
                let w: usize = text[s..e].chars().map(char_width).sum();
                // Only a single char wider than the line may overflow it.
                let one = text[s..e].chars().count() == 1;
                assert!(w <= width || one, "width {width}: {:?}", &text[s..e]);
            }
        }
    }

    #[test]
    fn incremental_layout_equals_a_fresh_one() {
        let mut t = Transcript::default();
        t.reset("Once upon ");
        let mut inc = Wrapped::default();
        let words = "a time there was a very long word: abcdefghijklmnopqrstuvwxyz and\nmore";
        for (k, c) in words.chars().enumerate() {
            t.push(&c.to_string(), 0.5);
            if k % 3 == 0 {
                inc.update(&t, 12);
            }
        }
        let got = inc.update(&t, 12).to_vec();
        let mut fresh = Wrapped::default();
        assert_eq!(got, fresh.update(&t, 12));
        // A new width or a reset starts over.
        assert_ne!(inc.update(&t, 7).len(), got.len());
        t.reset("x");
        assert_eq!(inc.update(&t, 7), [(0, 1)]);
    }

    #[test]
    fn probabilities_follow_the_pieces() {
        let mut t = Transcript::default();
        t.reset("ab");
        t.push("cd", 0.25);
        t.push("", 0.5);
        t.push("e", 0.75);
        assert_eq!(t.text(), "abcde");
        assert_eq!(t.tokens(), 3);
        assert_eq!(t.prob_at(1), None);
        assert_eq!(t.prob_at(2), Some(0.25));
        assert_eq!(t.prob_at(3), Some(0.25));
        assert_eq!(t.prob_at(4), Some(0.75));
    }

    #[test]
    fn control_chars_have_a_display_form() {
        let mut s = String::new();
        for c in ['a', '\t', '\r', '\u{7}'] {
            push_display(c, &mut s);
        }
        assert_eq!(s, "a    \u{FFFD}");
        assert_eq!(char_width('Ａ'), 2);
        assert_eq!(char_width('\t'), 4);
    }
}
