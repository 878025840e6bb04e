//! Scoring existing text with a model: the loss of every line, paragraph or document of a
//! text, and of every token (for a heat map), from the evaluation code of
//! [`crate::train::evaluate_tokens_each`] (the same forward pass as `quill eval`).
//!
//! A text is tokenised once as a whole (char and BPE models; their tokens map back to exact
//! byte ranges of the text) and evaluated as B streams (see [`crate::train::eval_split`]): the
//! first token of each stream is only context and is not scored, so with B = 1 the scores of
//! all units add up to the sequential loss of the whole text. A token belongs to the unit its
//! first byte is in. Word models do not decode back to the exact text (spacing is
//! normalised), so their units are tokenised one by one and concatenated, and they have no
//! per-character heat map.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::nn::model::{Model, Workspace};
use crate::tokenizer::Tokenizer;
use crate::train::{eval_split, evaluate_tokens_each};

/// What one score covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A line with its line end.
    Line,
    /// Lines up to a blank line, with the blank lines after them.
    Paragraph,
    /// The whole text.
    Doc,
}

impl Unit {
    /// `"line"`, `"paragraph"` or `"doc"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Line => "line",
            Unit::Paragraph => "paragraph",
            Unit::Doc => "doc",
        }
    }
}

/// The score of one unit of a text.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitScore {
    /// 1-based number of the unit in its text.
    pub index: usize,
    /// 1-based line the unit starts on.
    pub line: usize,
    /// Its bytes in the text.
    pub range: Range<usize>,
    /// Tokens scored in it.
    pub tokens: usize,
    /// Characters those tokens cover.
    pub chars: usize,
    /// Sum of their losses, in nats.
    pub nats: f64,
}

impl UnitScore {
    /// Mean loss in nats per scored token; `None` when no token was scored.
    pub fn loss_per_token(&self) -> Option<f64> {
        (self.tokens > 0).then(|| self.nats / self.tokens as f64)
    }

    /// Bits per character of the scored tokens; `None` when they cover no character.
    pub fn bits_per_char(&self) -> Option<f64> {
        (self.chars > 0 && self.tokens > 0)
            .then(|| self.nats / std::f64::consts::LN_2 / self.chars as f64)
    }
}

/// The scores of one text.
#[derive(Clone, Debug, PartialEq)]
pub struct TextScore {
    /// Streams the tokens were split into (each from a zero state).
    pub streams: usize,
    /// Tokens of the text.
    pub tokens: usize,
    /// The whole text as one [`UnitScore`] (index 1, all of it).
    pub total: UnitScore,
    /// One per unit, in text order.
    pub units: Vec<UnitScore>,
    /// Char and BPE models: each token's bytes in the text and its loss in nats (`None`: not
    /// scored, the first token of a stream or the left-out tail). Empty for word models.
    pub token_losses: Vec<(Range<usize>, Option<f32>)>,
}

/// Byte ranges of the units of `text`, in order, covering it all (nothing for an empty text).
pub fn split_units(text: &str, unit: Unit) -> Vec<Range<usize>> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if b == b'\n' {
            lines.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < text.len() {
        lines.push(start..text.len());
    }
    match unit {
        Unit::Line => lines,
        Unit::Doc => {
            let mut all = Vec::new();
            if !text.is_empty() {
                all.push(0..text.len());
            }
            all
        }
        Unit::Paragraph => {
            let blank = |r: &Range<usize>| text[r.clone()].trim().is_empty();
            let mut out: Vec<Range<usize>> = Vec::new();
            // Whether the last paragraph has text, and whether its last line is blank.
            let (mut has_text, mut prev_blank) = (false, false);
            for l in lines {
                let b = blank(&l);
                match out.last_mut() {
                    // A line of text after blank ones ends a paragraph that has text.
                    Some(_) if !b && prev_blank && has_text => {
                        out.push(l.clone());
                        has_text = false;
                    }
                    Some(last) => last.end = l.end,
                    None => out.push(l.clone()),
                }
                has_text |= !b;
                prev_blank = b;
            }
            out
        }
    }
}

/// Scores `text` by `unit` with `model` (tokenised by `tok`), as `streams` parallel streams in
/// windows of `seq` tokens.
///
/// Errors: `streams` or `seq` 0, a text the tokenizer cannot encode, a tokenizer that does
/// not match the model, or a text of fewer than 2 tokens (nothing to score).
pub fn score_text(
    model: &Model<f32>,
    tok: &Tokenizer,
    text: &str,
    unit: Unit,
    streams: usize,
    seq: usize,
) -> Result<TextScore> {
    if streams == 0 {
        return Err(Error::config("streams", "must be at least 1"));
    }
    if seq == 0 {
        return Err(Error::config("seq", "must be at least 1"));
    }
    if tok.vocab_size() != model.config.vocab {
        return Err(Error::Shape(format!(
            "tokenizer has {} tokens, the model {}",
            tok.vocab_size(),
            model.config.vocab
        )));
    }
    let ranges = split_units(text, unit);
    // The tokens, and for each the unit it belongs to and (char/BPE) its bytes.
    let mut ids = tok.encode(text)?;
    let mut unit_of = Vec::with_capacity(ids.len());
    let mut spans = Vec::new();
    match tok.token_byte_lens(&ids) {
        Some(lens) if lens.iter().sum::<usize>() == text.len() => {
            let mut at = 0;
            let mut u = 0;
            for len in lens {
                while u + 1 < ranges.len() && at >= ranges[u].end {
                    u += 1;
                }
                unit_of.push(u);
                spans.push(at..at + len);
                at += len;
            }
        }
        _ => {
            ids.clear();
            for (u, r) in ranges.iter().enumerate() {
                let part = tok.encode(&text[r.clone()])?;
                unit_of.extend(std::iter::repeat_n(u, part.len()));
                ids.extend(part);
            }
        }
    }
    let (b, _) = eval_split(ids.len(), streams);
    if b == 0 {
        return Err(Error::config(
            "text",
            format!(
                "{} token(s) are too few to score (the first is only context; at least 2 are needed)",
                ids.len()
            ),
        ));
    }
    let mut losses: Vec<Option<f32>> = vec![None; ids.len()];
    let mut ws = Workspace::default();
    let mut unit_nats = vec![0.0f64; ranges.len()];
    let mut unit_tokens = vec![0usize; ranges.len()];
    evaluate_tokens_each(model, &mut ws, &ids, streams, seq, &mut |i, nats| {
        losses[i] = Some(nats as f32);
        unit_nats[unit_of[i]] += nats;
        unit_tokens[unit_of[i]] += 1;
    });

    // Characters covered by the scored tokens of each unit.
    let mut unit_chars = vec![0usize; ranges.len()];
    if spans.is_empty() {
        // Word models: a unit's characters in proportion to the share of its tokens scored.
        let mut n_tok = vec![0usize; ranges.len()];
        unit_of.iter().for_each(|&u| n_tok[u] += 1);
        for (u, r) in ranges.iter().enumerate() {
            let chars = text[r.clone()].chars().count();
            unit_chars[u] = (chars * unit_tokens[u]).div_ceil(n_tok[u].max(1));
        }
    } else {
        let bytes = text.as_bytes();
        for (i, span) in spans.iter().enumerate() {
            if losses[i].is_some() {
                let starts = bytes[span.clone()]
                    .iter()
                    .filter(|&&c| c & 0xC0 != 0x80)
                    .count();
                unit_chars[unit_of[i]] += starts;
            }
        }
    }

    let mut line = 1;
    let mut units = Vec::with_capacity(ranges.len());
    for (u, r) in ranges.iter().enumerate() {
        units.push(UnitScore {
            index: u + 1,
            line,
            range: r.clone(),
            tokens: unit_tokens[u],
            chars: unit_chars[u],
            nats: unit_nats[u],
        });
        line += text.as_bytes()[r.clone()]
            .iter()
            .filter(|&&c| c == b'\n')
            .count();
    }
    let total = UnitScore {
        index: 1,
        line: 1,
        range: 0..text.len(),
        tokens: unit_tokens.iter().sum(),
        chars: unit_chars.iter().sum(),
        nats: unit_nats.iter().sum(),
    };
    let token_losses = spans.into_iter().zip(losses).collect();
    Ok(TextScore {
        streams: b,
        tokens: ids.len(),
        total,
        units,
        token_losses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;
    use crate::tokenizer::TokenizerKind;
    use crate::train::evaluate_tokens;

    const TEXT: &str = "the cat sat.\n\nthe dog ate\nthe hat.\n\n\nnaïve end";

    #[test]
    fn units_cover_the_text_in_order() {
        let lines = split_units(TEXT, Unit::Line);
        assert_eq!(lines.len(), 7);
        assert_eq!(&TEXT[lines[1].clone()], "\n");
        assert_eq!(&TEXT[lines[6].clone()], "naïve end");
        let paras: Vec<&str> = split_units(TEXT, Unit::Paragraph)
            .into_iter()
            .map(|r| &TEXT[r])
            .collect();
        assert_eq!(
            paras,
            vec![
                "the cat sat.\n\n",
                "the dog ate\nthe hat.\n\n\n",
                "naïve end"
            ]
        );
        let doc = split_units(TEXT, Unit::Doc);
        assert_eq!((doc.len(), doc[0].clone()), (1, 0..TEXT.len()));
        assert!(split_units("", Unit::Doc).is_empty());
        let p = split_units("\n\nx", Unit::Paragraph);
        assert_eq!((p.len(), p[0].clone()), (1, 0..3));
    }

    #[test]
    fn unit_scores_add_up_to_the_evaluation_of_the_whole_text() {
        for kind in [TokenizerKind::Char, TokenizerKind::Bpe, TokenizerKind::Word] {
            let tok = testutil::tokenizer(kind, TEXT);
            let model = testutil::model(tok.vocab_size(), 8, 16, 2, 7);
            for (streams, seq) in [(1, 5), (3, 4), (1, 128)] {
                for unit in [Unit::Line, Unit::Paragraph, Unit::Doc] {
                    let s = score_text(&model, &tok, TEXT, unit, streams, seq).unwrap();
                    let ids = if kind == TokenizerKind::Word {
                        split_units(TEXT, unit)
                            .into_iter()
                            .flat_map(|r| tok.encode(&TEXT[r]).unwrap())
                            .collect()
                    } else {
                        tok.encode(TEXT).unwrap()
                    };
                    let (nats, n) =
                        evaluate_tokens(&model, &mut Workspace::default(), &ids, streams, seq);
                    let sum: f64 = s.units.iter().map(|u| u.nats).sum();
                    assert!(
                        (sum - nats).abs() < 1e-9 * nats.max(1.0),
                        "{kind:?} {unit:?}"
                    );
                    assert_eq!(s.units.iter().map(|u| u.tokens).sum::<usize>(), n);
                    assert_eq!(s.total.tokens, n);
                    assert_eq!(s.tokens, ids.len());
                    assert_eq!(s.streams, streams);
                    assert_eq!(s.units.first().map(|u| u.line), Some(1));
                    if kind != TokenizerKind::Word {
                        // Token spans tile the text; streams-many tokens are not scored.
                        let end = s.token_losses.iter().fold(0, |at, (r, _)| {
                            assert_eq!(r.start, at);
                            r.end
                        });
                        assert_eq!(end, TEXT.len());
                        let unscored = s.token_losses.iter().filter(|t| t.1.is_none()).count();
                        assert_eq!(unscored, ids.len() - n);
                    }
                }
            }
            // One stream: every token but the first is scored, so the characters are all
            // but the first token's.
            let s = score_text(&model, &tok, TEXT, Unit::Doc, 1, 16).unwrap();
            assert_eq!(s.total.tokens, s.tokens - 1);
            if kind == TokenizerKind::Char {
                assert_eq!(s.total.chars, TEXT.chars().count() - 1);
                let lines = score_text(&model, &tok, TEXT, Unit::Line, 1, 16).unwrap();
                assert_eq!(
                    lines.units.iter().map(|u| u.line).collect::<Vec<_>>(),
                    vec![1, 2, 3, 4, 5, 6, 7]
                );
                assert!(lines.units[1].bits_per_char().is_some());
            }
        }
    }

    #[test]
    fn bad_settings_and_short_texts_are_refused() {
        let tok = testutil::tokenizer(TokenizerKind::Char, TEXT);
        let model = testutil::model(tok.vocab_size(), 8, 16, 1, 7);
        let err = |text: &str, streams, seq| {
            score_text(&model, &tok, text, Unit::Line, streams, seq)
                .unwrap_err()
                .to_string()
        };
        assert!(err(TEXT, 0, 8).contains("streams"));
        assert!(err(TEXT, 1, 0).contains("seq"));
        assert!(err("t", 1, 8).contains("too few"));
        assert!(err("", 1, 8).contains("too few"));
        let other = testutil::model(tok.vocab_size() + 1, 8, 16, 1, 7);
        assert!(score_text(&other, &tok, TEXT, Unit::Line, 1, 8).is_err());
    }
}
