//! One stream at a time, interactively: the engine with a single row that can be paused (not
//! stepped), continued after it ended, re-steered between tokens and asked for its next-token
//! distribution. `quill sample` to stdout and the TUI use it.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::nn::model::Model;
use crate::tokenizer::Tokenizer;

use super::engine::{Engine, Parked, Update};
use super::sampler::{top_n, SamplingParams};
use super::stream::{Stream, StreamSpec};

/// The key of the session's one stream in its engine.
const KEY: u64 = 1;

/// See the module docs.
#[derive(Debug)]
pub struct Session {
    engine: Engine,
    tokenizer: Tokenizer,
    /// The stream after it ended (end-of-text, stop string, limit), kept to continue it.
    parked: Option<Parked>,
    updates: Vec<Update>,
}

impl Session {
    /// A session on `model` with its tokenizer. Errors when their vocabularies differ.
    pub fn new(model: Arc<Model<f32>>, tokenizer: Tokenizer) -> Result<Self> {
        let v = model.config.vocab;
        if tokenizer.vocab_size() != v {
            return Err(Error::Shape(format!(
                "tokenizer has {} tokens, the model {v}",
                tokenizer.vocab_size()
            )));
        }
        Ok(Session {
            engine: Engine::new(model, 1),
            tokenizer,
            parked: None,
            updates: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model<f32>> {
        self.engine.model()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Starts a new stream from `spec` (the zero state; any previous stream is dropped).
    pub fn start(&mut self, spec: &StreamSpec) -> Result<()> {
        let mut s = Stream::new(spec, &self.tokenizer)?;
        s.set_park(true);
        self.clear();
        self.engine.join(KEY, s, None)
    }

    /// Drops the stream.
    pub fn clear(&mut self) {
        self.engine.leave(KEY);
        self.parked = None;
    }

    /// The stream, running or ended.
    pub fn stream(&self) -> Option<&Stream> {
        self.engine
            .stream(KEY)
            .or(self.parked.as_ref().map(|p| &p.stream))
    }

    /// Whether a stream is running (stepping does something).
    pub fn is_running(&self) -> bool {
        !self.engine.is_empty()
    }

    /// Whether the running stream is still being fed its prompt.
    pub fn is_feeding(&self) -> bool {
        self.engine.stream(KEY).is_some_and(Stream::is_feeding)
    }

    /// One engine step: feeds one prompt token (nothing to report) or samples one token.
    /// `None` when nothing was sampled or no stream is running.
    pub fn step(&mut self) -> Option<Update> {
        self.updates.clear();
        self.engine.step(&mut self.updates);
        let mut u = self.updates.pop()?;
        if let Some(f) = u.finished.as_mut() {
            self.parked = f.parked.take().map(|p| *p);
        }
        Some(u)
    }

    /// Whether the stream can go on: it has been fed its whole prompt, running or ended.
    pub fn can_continue(&self) -> bool {
        self.parked.is_some() || self.engine.stream(KEY).is_some_and(|s| !s.is_feeding())
    }

    /// Lets the stream go on for `more` tokens (`None`: no limit), also one that ended.
    /// Returns false when there is nothing to continue.
    pub fn resume(&mut self, more: Option<usize>) -> Result<bool> {
        if let Some(s) = self.engine.stream_mut(KEY) {
            s.extend(more);
            return Ok(true);
        }
        let Some(mut p) = self.parked.take() else {
            return Ok(false);
        };
        p.stream.extend(more);
        self.engine.join_parked(KEY, p)?;
        Ok(true)
    }

    /// New sampling parameters from the next token on.
    pub fn set_params(&mut self, params: SamplingParams) -> Result<()> {
        params.validate()?;
        if let Some(s) = self.engine.stream_mut(KEY) {
            s.set_params(params);
        } else if let Some(p) = self.parked.as_mut() {
            p.stream.set_params(params);
        }
        Ok(())
    }

    /// The `n` most probable next tokens at the stream's position, at its temperature and
    /// with its penalties and UTF-8 guard (for display; empty while the prompt is being fed or
    /// without a stream).
    pub fn top_n(&self, n: usize) -> Vec<(u32, f32)> {
        let Some(stream) = self.stream() else {
            return Vec::new();
        };
        let t = stream.params().temperature;
        let logits = self
            .engine
            .logits(KEY)
            .or(self.parked.as_ref().and_then(|p| p.logits.as_deref()));
        logits.map_or_else(Vec::new, |l| top_n(&stream.effective_logits(l), t, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sampler::Sampler;
    use crate::generate::stream::{sample_seed, StopReason};
    use crate::nn::generator::Generator;
    use crate::testutil;

    use crate::tokenizer::TokenizerKind;

    fn setup(kind: TokenizerKind) -> (Arc<Model<f32>>, Tokenizer) {
        let t = testutil::tokenizer(kind, "the cat sat on the mat.\nthe dog ate the hat.\n");
        (testutil::model(t.vocab_size(), 8, 16, 1, 2), t)
    }

    /// The session gives what a plain loop over the generator and a sampler gives.
    #[test]
    fn a_session_matches_a_plain_sampling_loop() {
        let (m, t) = setup(TokenizerKind::Char);
        let mut s = Session::new(Arc::clone(&m), t.clone()).unwrap();
        let prompt = t.encode("the ").unwrap();
        let spec = StreamSpec {
            seed: 9,
            max_tokens: Some(40),
            ..StreamSpec::new(prompt.clone())
        };
        s.start(&spec).unwrap();
        let mut text = String::new();
        let mut probs = Vec::new();
        let mut end = None;
        while s.is_running() {
            if let Some(u) = s.step() {
                text.push_str(&u.text);
                probs.push(u.token.unwrap().prob);
                end = u.finished.map(|f| f.output.stop);
            }
        }
        assert_eq!(end, Some(StopReason::Length));
        let mut gen = Generator::new(m, 1);
        let mut sampler = Sampler::new(spec.params, sample_seed(9, 1, 0));
        gen.feed(&prompt);
        let mut want = String::new();
        let mut want_probs = Vec::new();
        for _ in 0..40 {
            let x = sampler.sample(gen.logits_row(0));
            want.push_str(&t.decode(&[x.id]));
            want_probs.push(x.prob);
            gen.step(&[x.id]);
        }
        assert_eq!(text, want);
        assert_eq!(probs, want_probs);
    }

    /// Pausing (not stepping), changing parameters and continuing after the end give the
    /// text of one uninterrupted stream with the same changes.
    #[test]
    fn continue_after_the_end_is_one_stream() {
        let (m, t) = setup(TokenizerKind::Char);
        let spec = StreamSpec {
            seed: 4,
            max_tokens: Some(10),
            ..StreamSpec::new(vec![])
        };
        let mut a = Session::new(Arc::clone(&m), t.clone()).unwrap();
        a.start(&spec).unwrap();
        let mut text = String::new();
        while a.is_running() {
            if let Some(u) = a.step() {
                text.push_str(&u.text);
            }
        }
        assert!(a.can_continue());
        assert!(!a.top_n(3).is_empty() || a.stream().unwrap().tokens() == 10);
        assert!(a.resume(Some(15)).unwrap());
        while a.is_running() {
            if let Some(u) = a.step() {
                text.push_str(&u.text);
            }
        }
        let mut b = Session::new(m, t).unwrap();
        b.start(&StreamSpec {
            max_tokens: Some(25),
            ..spec
        })
        .unwrap();
        let mut straight = String::new();
        while b.is_running() {
            if let Some(u) = b.step() {
                straight.push_str(&u.text);
            }
        }
        assert_eq!(text, straight);
        assert_eq!(text.chars().count(), 25);
    }

    #[test]
    fn the_distribution_shown_has_the_penalties_applied() {
        let (m, t) = setup(TokenizerKind::Char);
        let mut s = Session::new(m, t.clone()).unwrap();
        let spec = StreamSpec {
            params: SamplingParams {
                frequency_penalty: 2.0,
                presence_penalty: 1.0,
                ..SamplingParams::greedy()
            },
            ..StreamSpec::new(t.encode("the ").unwrap())
        };
        s.start(&spec).unwrap();
        for _ in 0..30 {
            s.step();
        }
        let raw = s.engine.logits(KEY).unwrap().to_vec();
        let shown = s.top_n(5);
        let st = s.stream().unwrap();
        assert_eq!(shown, top_n(&st.effective_logits(&raw), 0.0, 5));
        assert_ne!(
            shown,
            top_n(&raw, 0.0, 5),
            "the penalties change what is shown"
        );
        // Without controls the logits are shown as they are.
        s.set_params(SamplingParams::greedy()).unwrap();
        assert_eq!(s.top_n(5), top_n(&raw, 0.0, 5));
    }

    #[test]
    fn the_distribution_is_there_once_the_prompt_is_fed() {
        let (m, t) = setup(TokenizerKind::Word);
        let mut s = Session::new(m, t.clone()).unwrap();
        assert!(s.top_n(5).is_empty());
        s.start(&StreamSpec::new(t.encode("the cat").unwrap()))
            .unwrap();
        assert!(s.is_feeding() && !s.can_continue());
        assert!(s.step().is_none());
        assert!(s.is_feeding());
        assert!(s.step().is_none());
        assert!(!s.is_feeding() && s.can_continue());
        let d = s.top_n(5);
        assert_eq!(d.len(), 5);
        assert!(d.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(s.set_params(SamplingParams::greedy()).is_ok());
        let mut bad = SamplingParams::greedy();
        bad.temperature = -1.0;
        assert!(s.set_params(bad).is_err());
        assert_eq!(s.step().unwrap().token.unwrap().prob, 1.0);
    }
}
