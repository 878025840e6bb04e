//! One generated text: its sampler, its streaming decoder, its stop strings and end-of-text,
//! and the rules every caller shares — where an empty prompt starts ([`start_tokens`]), how a
//! sampler is seeded ([`sample_seed`]) and why a text ends ([`StopReason`]).
//!
//! A [`Stream`] never touches the model: the [`super::engine::Engine`] owns the recurrent
//! state of its rows, feeds each stream's pending tokens and hands it the logits of its row;
//! [`Stream::advance`] is the one place where a token is sampled, decoded and checked against
//! the stop conditions.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::tokenizer::{StreamDecoder, Tokenizer, Utf8Guard};

use super::sampler::{Sampled, Sampler, SamplingParams};

/// SplitMix64 finaliser: a bijective, well-mixing map of 64-bit values.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sampler seed of stream `id` under user seed `seed`, at try `attempt`: a hash of them,
/// so neighbouring ids, seeds and tries give unrelated random streams. Every front end seeds
/// this way: `quill sample` to stdout is id 1, so its text equals the first sample of a batch
/// run with the same parameters; batch samples, server choices and dashboard panes are
/// numbered from 1.
///
/// `attempt` is 0 for a first try, which is all that most callers ever make (the seed is then
/// what it always was); a sample generated again (`quill sample --max-copy` rejected a try)
/// takes try 1, 2, ...: the hash of the try number is mixed in with the id's, so each try is
/// as reproducible as the first and depends only on seed, id and try.
pub fn sample_seed(seed: u64, id: u64, attempt: u32) -> u64 {
    let tweak = match attempt {
        0 => 0,
        a => mix64(u64::from(a) ^ 0x5254_5259_0000_0000),
    };
    mix64(seed ^ mix64(id ^ 0x5155_494C_4C00_0000) ^ tweak)
}

/// The tokens to condition on: the prime, or for an empty prime the start of a line (the
/// encoding of `"\n"`: `<eol>` for word models, the newline byte for BPE), which every
/// model has seen in training. End-of-text is only a fallback (training text never contains
/// it, so a model has not learnt what follows it), then token 0.
pub fn start_tokens(prime: &[u32], tok: &Tokenizer) -> Vec<u32> {
    if !prime.is_empty() {
        return prime.to_vec();
    }
    match (tok.encode("\n"), tok.eos_id()) {
        (Ok(v), _) if !v.is_empty() => v,
        (_, Some(eos)) => vec![eos],
        _ => vec![0],
    }
}

/// Finds the first occurrence of any of a set of stop strings in growing text.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Longest stop string in bytes.
    max_len: usize,
}

impl StopStrings {
    /// Errors on an empty stop string.
    pub fn new(stops: &[String]) -> Result<Self> {
        if stops.iter().any(|s| s.is_empty()) {
            return Err(Error::config("stop", "a stop string must not be empty"));
        }
        Ok(StopStrings {
            max_len: stops.iter().map(String::len).max().unwrap_or(0),
            stops: stops.to_vec(),
        })
    }

    /// Whether there are no stop strings.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// The stop strings.
    pub fn strings(&self) -> &[String] {
        &self.stops
    }

    /// The earliest occurrence `(byte position, stop index)` in `text` that ends after byte
    /// `old_len`, i.e. one completed by text appended since a previous check of
    /// `text[..old_len]` (pass 0 to search everything). Ties at one position go to the
    /// longest stop string, then to the first given.
    pub fn find(&self, text: &str, old_len: usize) -> Option<(usize, usize)> {
        if self.stops.is_empty() {
            return None;
        }
        let mut from = old_len.saturating_sub(self.max_len.saturating_sub(1));
        while from > 0 && !text.is_char_boundary(from) {
            from -= 1;
        }
        let hay = &text[from.min(text.len())..];
        let mut best: Option<(usize, usize)> = None;
        for (k, s) in self.stops.iter().enumerate() {
            if let Some(p) = hay.find(s.as_str()) {
                let better = match best {
                    None => true,
                    Some((bp, bk)) => p < bp || (p == bp && s.len() > self.stops[bk].len()),
                };
                if better {
                    best = Some((p, k));
                }
            }
        }
        best.map(|(p, k)| (from + p, k))
    }

    /// How many bytes of `text` can be shown without risking showing the start of a stop
    /// string that later text may complete (the whole text when there are no stop strings).
    /// Always on a char boundary.
    pub fn safe_len(&self, text: &str) -> usize {
        let mut n = text.len().saturating_sub(self.max_len.saturating_sub(1));
        while n > 0 && !text.is_char_boundary(n) {
            n -= 1;
        }
        n
    }
}

/// Why a stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// It reached its token limit.
    Length,
    /// The model produced the end-of-text token (word and BPE models).
    EndOfText,
    /// The generated text reached this stop string.
    StopString(String),
}

impl StopReason {
    /// `"length"`, `"end_of_text"` or `"stop_string"`, as in the manifest.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::Length => "length",
            StopReason::EndOfText => "end_of_text",
            StopReason::StopString(_) => "stop_string",
        }
    }
}

/// What a stream is asked to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSpec {
    /// The prompt as token ids; empty starts at a line start ([`start_tokens`]).
    pub prompt: Vec<u32>,
    /// Temperature, top-k, top-p, min-p, penalties, UTF-8 guard.
    pub params: SamplingParams,
    /// The user seed; the sampler is seeded with [`sample_seed`]`(seed, id, attempt)`.
    pub seed: u64,
    /// The stream's id (1-based in every front end).
    pub id: u64,
    /// The try: 0, or 1, 2, ... when a sample is generated again (see [`sample_seed`]).
    pub attempt: u32,
    /// Most tokens to sample (an end-of-text token counts); `None`: no limit.
    pub max_tokens: Option<usize>,
    /// The text ends at the first of these strings, which is cut off (never searched in the
    /// prompt).
    pub stop: Vec<String>,
}

impl StreamSpec {
    /// A spec with the default sampling parameters, seed 0, id 1, no limit, no stop strings.
    pub fn new(prompt: Vec<u32>) -> Self {
        StreamSpec {
            prompt,
            params: SamplingParams::default(),
            seed: 0,
            id: 1,
            attempt: 0,
            max_tokens: None,
            stop: Vec::new(),
        }
    }
}

/// A finished stream's result.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamOutput {
    /// The generated text, without the prompt and without a final stop string.
    pub text: String,
    /// Tokens sampled, including a final end-of-text token.
    pub tokens: usize,
    /// Why it ended.
    pub stop: StopReason,
    /// Sum over its tokens of the natural-log probability under the model (temperature 1,
    /// unfiltered).
    pub sum_logprob: f64,
}

impl StreamOutput {
    /// Mean log-probability per token, `None` if it is not finite (or no token was sampled).
    pub fn mean_logprob(&self) -> Option<f64> {
        let m = self.sum_logprob / self.tokens as f64;
        (self.tokens > 0 && m.is_finite()).then_some(m)
    }
}

/// What one [`Stream::advance`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Advance {
    /// The sampled token; `None` when the stream ended at its limit before sampling.
    pub token: Option<Sampled>,
    /// Text that became final with it (may be empty): decoded, and past every place where a
    /// stop string could still begin; at the end, everything not yet handed out.
    pub text: String,
    /// Set when the stream ended.
    pub finished: Option<StopReason>,
}

/// One text being generated. See the module docs.
#[derive(Clone, Debug)]
pub struct Stream {
    id: u64,
    sampler: Sampler,
    decoder: StreamDecoder,
    /// Byte-level BPE models: the tokens that would break UTF-8 (used when the parameters
    /// ask for valid UTF-8).
    utf8: Option<Arc<Utf8Guard>>,
    stops: StopStrings,
    eos: Option<u32>,
    max_tokens: Option<usize>,
    /// Tokens the model must be fed before the next sample (the prompt, then each sampled
    /// token), and how many of them have been fed.
    pending: Vec<u32>,
    fed: usize,
    /// Generated text (cut at a stop string) and how many bytes of it were handed out.
    text: String,
    emitted: usize,
    tokens: usize,
    sum_logprob: f64,
    done: Option<StopReason>,
    /// Keep the recurrent state when the stream ends (to continue it later).
    park: bool,
}

impl Stream {
    /// A stream for `spec` with `tok`'s decoder and end-of-text. Errors on invalid sampling
    /// parameters, an empty stop string, or a prompt token outside the vocabulary.
    pub fn new(spec: &StreamSpec, tok: &Tokenizer) -> Result<Self> {
        spec.params.validate()?;
        let stops = StopStrings::new(&spec.stop)?;
        let v = tok.vocab_size();
        let pending = start_tokens(&spec.prompt, tok);
        if let Some(&bad) = pending.iter().find(|&&t| t as usize >= v) {
            return Err(Error::config(
                "prime",
                format!("token id {bad} is outside the vocabulary of {v}"),
            ));
        }
        let mut sampler = Sampler::new(spec.params, sample_seed(spec.seed, spec.id, spec.attempt));
        sampler.set_context(&spec.prompt);
        Ok(Stream {
            id: spec.id,
            sampler,
            decoder: tok.stream_decoder_after(&spec.prompt),
            utf8: tok.utf8_guard(),
            stops,
            eos: tok.eos_id(),
            max_tokens: spec.max_tokens,
            pending,
            fed: 0,
            text: String::new(),
            emitted: 0,
            tokens: 0,
            sum_logprob: 0.0,
            done: None,
            park: false,
        })
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The sampling parameters.
    pub fn params(&self) -> SamplingParams {
        self.sampler.params()
    }

    /// New sampling parameters from the next token on (the caller validates them).
    pub fn set_params(&mut self, params: SamplingParams) {
        self.sampler.set_params(params);
    }

    /// The logits the next token would be sampled from: `logits` with the penalties and the
    /// UTF-8 guard of the parameters applied (for showing the distribution; borrowed as they
    /// are when the controls are off).
    pub fn effective_logits<'a>(&self, logits: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        let banned = match &self.utf8 {
            Some(g) if self.sampler.params().valid_utf8 => {
                g.banned_after(self.decoder.pending_bytes())
            }
            _ => &[],
        };
        match self.sampler.preview_adjusted(logits, banned) {
            Some(v) => std::borrow::Cow::Owned(v),
            None => std::borrow::Cow::Borrowed(logits),
        }
    }

    /// The generated text so far (cut at a stop string once one is found).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Tokens sampled so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Why it ended, once it has.
    pub fn done(&self) -> Option<&StopReason> {
        self.done.as_ref()
    }

    /// Whether prompt tokens are still to be fed.
    pub fn is_feeding(&self) -> bool {
        self.fed < self.pending.len()
    }

    /// The tokens still to feed before the next sample.
    pub fn unfed(&self) -> &[u32] {
        &self.pending[self.fed..]
    }

    /// Marks the first `n` pending tokens as fed: the caller joins the stream with the
    /// recurrent state after them (e.g. a prime's state computed once for many streams).
    pub fn skip_fed(&mut self, n: usize) {
        self.fed = (self.fed + n).min(self.pending.len());
    }

    /// The next token to feed; moves past it. `None` when nothing is pending.
    pub(crate) fn take_next(&mut self) -> Option<u32> {
        let t = *self.pending.get(self.fed)?;
        self.fed += 1;
        Some(t)
    }

    /// Keep the recurrent state when the stream ends, to continue it (see
    /// [`super::engine::Parked`]).
    pub fn set_park(&mut self, park: bool) {
        self.park = park;
    }

    pub(crate) fn parks(&self) -> bool {
        self.park
    }

    /// Lets a stream go on (also one that ended): `more` tokens past those sampled so far
    /// (`None`: no limit). The last sampled token, if it was not fed yet (a stream that ended
    /// at end-of-text, a stop string or its limit), is fed first.
    pub fn extend(&mut self, more: Option<usize>) {
        self.max_tokens = more.map(|m| self.tokens.saturating_add(m));
        self.done = None;
    }

    /// The result so far, as a finished stream reports it.
    pub fn output(&self) -> StreamOutput {
        StreamOutput {
            text: self.text.clone(),
            tokens: self.tokens,
            stop: self.done.clone().unwrap_or(StopReason::Length),
            sum_logprob: self.sum_logprob,
        }
    }

    /// Samples the next token from `logits` (the row's next-token logits, V) and takes it in:
    /// counts it, decodes it, looks for a stop string and the token limit, and queues it to be
    /// fed. A stream already at its limit ends without sampling.
    pub fn advance(&mut self, logits: &[f32]) -> Advance {
        debug_assert!(self.done.is_none() && !self.is_feeding());
        if self.max_tokens.is_some_and(|m| self.tokens >= m) {
            return self.end(None, StopReason::Length);
        }
        let s = match &self.utf8 {
            Some(g) if self.sampler.params().valid_utf8 => {
                let banned = g.banned_after(self.decoder.pending_bytes());
                self.sampler.sample_banning(logits, banned)
            }
            _ => self.sampler.sample(logits),
        };
        self.tokens += 1;
        self.sum_logprob += f64::from(s.logprob);
        self.pending.clear();
        self.pending.push(s.id);
        self.fed = 0;
        if Some(s.id) == self.eos {
            return self.end(Some(s), StopReason::EndOfText);
        }
        let old = self.text.len();
        self.decoder.push_into(s.id, &mut self.text);
        if self.stop_at_string(old) {
            return self.ended(Some(s));
        }
        if self.max_tokens.is_some_and(|m| self.tokens >= m) {
            return self.end(Some(s), StopReason::Length);
        }
        let safe = self.stops.safe_len(&self.text).max(self.emitted);
        let text = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        Advance {
            token: Some(s),
            text,
            finished: None,
        }
    }

    /// Looks for a stop string completed by text after byte `old`; cuts the text there.
    fn stop_at_string(&mut self, old: usize) -> bool {
        if self.text.len() == old {
            return false;
        }
        match self.stops.find(&self.text, old) {
            Some((pos, k)) => {
                self.text.truncate(pos);
                self.done = Some(StopReason::StopString(self.stops.strings()[k].clone()));
                true
            }
            None => false,
        }
    }

    /// Flushes the decoder (a stop string may still complete) and ends with `reason`.
    fn end(&mut self, token: Option<Sampled>, reason: StopReason) -> Advance {
        if self.sampler.params().valid_utf8 {
            // An unfinished character at the limit is left out rather than shown as U+FFFD.
            self.decoder.drop_pending();
        }
        let old = self.text.len();
        self.decoder.finish_into(&mut self.text);
        if !self.stop_at_string(old) {
            self.done = Some(reason);
        }
        self.ended(token)
    }

    /// The final advance: everything not yet handed out.
    fn ended(&mut self, token: Option<Sampled>) -> Advance {
        let end = self.text.len().max(self.emitted);
        let text = self.text.get(self.emitted..end).unwrap_or("").to_string();
        self.emitted = end;
        Advance {
            token,
            text,
            finished: self.done.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;
    use crate::tokenizer::TokenizerKind;

    #[test]
    fn sample_seeds_differ_by_id_and_seed() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..20 {
            for id in 1..50 {
                for attempt in 0..6 {
                    assert!(seen.insert(sample_seed(seed, id, attempt)));
                }
            }
        }
        assert_eq!(sample_seed(3, 9, 2), sample_seed(3, 9, 2));
        // Try 0 keeps the seed every earlier quill gave (texts stay reproducible).
        assert_eq!(
            sample_seed(0, 1, 0),
            mix64(mix64(1 ^ 0x5155_494C_4C00_0000))
        );
    }

    #[test]
    fn stop_strings_match_across_appends() {
        let st =
            StopStrings::new(&["END".to_string(), "ab".to_string(), "é!".to_string()]).unwrap();
        assert_eq!(st.find("xxEN", 0), None);
        // completed by the last append only
        assert_eq!(st.find("xxEND", 4), Some((2, 0)));
        // the earliest occurrence wins
        assert_eq!(st.find("zabEND", 3), Some((1, 1)));
        // multi-byte: old_len minus the window falls inside 'é'
        assert_eq!(st.find("ééé!", 6), Some((4, 2)));
        assert_eq!(st.safe_len("abcdé"), 4); // holds back 2 bytes, 'é' stays whole
        assert_eq!(st.safe_len("a"), 0);
        assert_eq!(StopStrings::default().safe_len("abc"), 3);
        assert!(StopStrings::new(&[String::new()]).is_err());
        // ties at one position: the longest
        let st = StopStrings::new(&["a".to_string(), "ab".to_string()]).unwrap();
        assert_eq!(st.find("xab", 0), Some((1, 1)));
    }

    fn tok(kind: TokenizerKind) -> Tokenizer {
        testutil::tokenizer(kind, "the cat sat on the mat.\nthe dog ate the hat.\n")
    }

    #[test]
    fn an_empty_prime_starts_at_a_line_start_the_model_has_seen() {
        for kind in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
            let t = tok(kind);
            let start = start_tokens(&[], &t);
            assert!(!start.is_empty(), "{kind:?}");
            assert_ne!(
                Some(start[0]),
                t.eos_id(),
                "{kind:?} starts from end-of-text"
            );
            // The start is what a line end in training text encodes to.
            assert_eq!(start, t.encode("\n").unwrap(), "{kind:?}");
            assert_eq!(start_tokens(&[5, 6], &t), vec![5, 6]);
        }
    }

    /// A one-hot row of logits for token `id`.
    fn onehot(v: usize, id: u32) -> Vec<f32> {
        let mut l = vec![-50.0f32; v];
        l[id as usize] = 50.0;
        l
    }

    #[test]
    fn advance_decodes_holds_back_and_cuts_at_a_stop_string() {
        let t = tok(TokenizerKind::Char);
        let v = t.vocab_size();
        let spec = StreamSpec {
            stop: vec!["at".into()],
            max_tokens: Some(10),
            params: SamplingParams::greedy(),
            ..StreamSpec::new(t.encode("the ").unwrap())
        };
        let mut s = Stream::new(&spec, &t).unwrap();
        assert_eq!(s.unfed(), t.encode("the ").unwrap().as_slice());
        while s.take_next().is_some() {}
        let mut shown = String::new();
        let mut last = None;
        for c in "mat".chars() {
            let id = t.encode(&c.to_string()).unwrap()[0];
            let a = s.advance(&onehot(v, id));
            assert_eq!(a.token.unwrap().id, id);
            assert_eq!(s.unfed(), &[id]);
            s.take_next();
            shown.push_str(&a.text);
            last = a.finished;
            if last.is_some() {
                break;
            }
        }
        // "m" is shown at once; "a" is held back (it may start "at"); "t" completes the stop.
        assert_eq!(shown, "m");
        assert_eq!(last, Some(StopReason::StopString("at".into())));
        assert_eq!(s.output().text, "m");
        assert_eq!(s.output().tokens, 3);
    }

    #[test]
    fn length_and_end_of_text_end_a_stream_and_extend_continues_it() {
        let t = tok(TokenizerKind::Word);
        let v = t.vocab_size();
        let eos = t.eos_id().unwrap();
        let the = t.encode("the").unwrap()[0];
        let spec = StreamSpec {
            max_tokens: Some(2),
            ..StreamSpec::new(vec![])
        };
        let mut s = Stream::new(&spec, &t).unwrap();
        // an empty prompt starts at a line start, not at end-of-text
        assert_eq!(s.unfed(), t.encode("\n").unwrap().as_slice());
        s.take_next();
        assert!(s.advance(&onehot(v, the)).finished.is_none());
        s.take_next();
        let a = s.advance(&onehot(v, the));
        assert_eq!(a.finished, Some(StopReason::Length));
        assert_eq!(s.output().text, "the the");
        // two more tokens; the first is end-of-text
        s.extend(Some(2));
        assert_eq!(s.unfed(), &[the]);
        s.take_next();
        let a = s.advance(&onehot(v, eos));
        assert_eq!(a.finished, Some(StopReason::EndOfText));
        assert_eq!(s.tokens(), 3);
        // continuing after end-of-text feeds it first
        s.extend(None);
        assert_eq!(s.unfed(), &[eos]);
        // a stream at its limit ends without sampling
        let mut z = Stream::new(
            &StreamSpec {
                max_tokens: Some(0),
                ..StreamSpec::new(vec![the])
            },
            &t,
        )
        .unwrap();
        z.take_next();
        let a = z.advance(&onehot(v, the));
        assert_eq!((a.token, a.finished), (None, Some(StopReason::Length)));
    }

    #[test]
    fn the_utf8_guard_keeps_a_bpe_stream_free_of_replacement_characters() {
        let t = testutil::tokenizer(
            TokenizerKind::Bpe,
            "naïve — 東京\nCafé crème, 東京 and naïve again. Ünïcödé 🎉!\n",
        );
        let v = t.vocab_size();
        // Every token equally likely: most single bytes break UTF-8 somewhere.
        let run = |valid_utf8: bool, seed: u64| {
            let spec = StreamSpec {
                params: SamplingParams {
                    temperature: 1.0,
                    valid_utf8,
                    ..SamplingParams::default()
                },
                seed,
                max_tokens: Some(101),
                ..StreamSpec::new(vec![])
            };
            let mut s = Stream::new(&spec, &t).unwrap();
            let logits = vec![0.0f32; v];
            loop {
                while s.take_next().is_some() {}
                if s.advance(&logits).finished.is_some() {
                    break;
                }
            }
            s.output()
        };
        let mut unguarded = 0;
        let mut non_ascii = 0;
        for seed in 0..20 {
            let out = run(true, seed);
            assert!(
                !out.text.contains('\u{FFFD}'),
                "seed {seed}: {:?}",
                out.text
            );
            non_ascii += out.text.chars().filter(|c| !c.is_ascii()).count();
            unguarded += run(false, seed).text.matches('\u{FFFD}').count();
        }
        // Without the guard the same model does print them; with it, multi-byte
        // characters still come out.
        assert!(unguarded > 20, "{unguarded}");
        assert!(non_ascii > 20, "{non_ascii}");
    }

    #[test]
    fn the_prompt_is_in_the_repetition_window() {
        let t = tok(TokenizerKind::Char);
        let v = t.vocab_size();
        let a = t.encode("a").unwrap()[0];
        let e = t.encode("e").unwrap()[0];
        // "a" and "e" equally likely; the prompt "a" makes "e" far more likely.
        let mut logits = vec![-30.0f32; v];
        logits[a as usize] = 2.0;
        logits[e as usize] = 2.0;
        let mut count_e = 0;
        for seed in 0..400 {
            let spec = StreamSpec {
                params: SamplingParams {
                    temperature: 1.0,
                    repetition_penalty: 3.0,
                    ..SamplingParams::default()
                },
                seed,
                max_tokens: Some(1),
                ..StreamSpec::new(vec![a])
            };
            let mut s = Stream::new(&spec, &t).unwrap();
            s.take_next();
            if s.advance(&logits).token.unwrap().id == e {
                count_e += 1;
            }
        }
        // P(e) = e^2 / (e^2 + e^(2/3)) = 0.79.
        assert!((250..380).contains(&count_e), "{count_e}");
    }

    #[test]
    fn bad_specs_are_refused() {
        let t = tok(TokenizerKind::Char);
        let bad = |spec: StreamSpec, needle: &str| {
            let e = Stream::new(&spec, &t).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        bad(StreamSpec::new(vec![9999]), "outside the vocabulary");
        bad(
            StreamSpec {
                stop: vec![String::new()],
                ..StreamSpec::new(vec![])
            },
            "stop",
        );
        let mut spec = StreamSpec::new(vec![]);
        spec.params.top_p = 0.0;
        bad(spec, "top-p");
    }
}
