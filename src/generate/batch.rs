//! Batched generation: many samples at once, reproducible, each its own stream in the
//! [`Engine`].
//!
//! * [`plan`] expands a sweep (lists of temperatures, top-k, top-p, min-p, penalties and
//!   seeds, times a count, for every prime) into numbered [`SampleSpec`]s, ids 1..=N.
//! * [`generate`] runs them: at most [`GenConfig::max_batch`] streams at a time advance
//!   together in the engine (shards on every core); a finished stream's place goes to the
//!   next sample. The state after each distinct prime is computed once and every stream of
//!   that prime joins from it. Finished samples go to a sink callback in id order (for
//!   example [`super::output::SampleWriter`]); progress goes to a second callback.
//!
//! Reproducibility: a sample's text depends only on the model, its parameters, its seed and
//! its id (the stream rule of [`super::engine`]), never on the batch around it.
//!
//! [`generate_checked`] can also reject finished samples (a check callback, e.g. `quill sample
//! --max-copy` refusing texts copied from the corpus) and generate them again, up to a number
//! of tries: try `t` (0-based) of a sample is seeded with [`super::sample_seed`]`(seed, id,
//! t)`, so it too depends only on the model, parameters, seed, id and try number.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::nn::generator::{Generator, RowState};
use crate::nn::model::Model;
use crate::tokenizer::Tokenizer;

pub use super::engine::default_threads;
use super::engine::{Engine, Parked, Update};
use super::sampler::SamplingParams;
use super::stream::{start_tokens, StopStrings, Stream, StreamOutput, StreamSpec};

// ---------------------------------------------------------------------------------------------
// planning

/// Most samples one plan may hold.
pub const MAX_SAMPLES: usize = 1_000_000;

/// Default number of rows B of the shared generator.
pub const DEFAULT_MAX_BATCH: usize = 256;

// ---------------------------------------------------------------------------------------------
// planning

/// The values to sweep; the plan is their cross product, each combination `count` times.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// Softmax temperatures (0 is greedy).
    pub temperature: Vec<f32>,
    /// Top-k values (`None`: no top-k).
    pub top_k: Vec<Option<usize>>,
    /// Top-p values (1.0: off).
    pub top_p: Vec<f32>,
    /// Min-p values (0: off).
    pub min_p: Vec<f32>,
    /// Repetition penalties (1: off).
    pub repetition_penalty: Vec<f32>,
    /// Frequency penalties (0: off).
    pub frequency_penalty: Vec<f32>,
    /// Presence penalties (0: off).
    pub presence_penalty: Vec<f32>,
    /// Settings every sample shares: the repetition window and the UTF-8 guard (the swept
    /// fields of it are ignored).
    pub fixed: SamplingParams,
    /// User seeds; each sample's sampler is seeded with [`super::sample_seed`]`(seed, id)`.
    pub seed: Vec<u64>,
    /// Samples per combination.
    pub count: usize,
}

impl Default for Sweep {
    /// One combination of the default [`SamplingParams`], seed 0, once.
    fn default() -> Self {
        let p = SamplingParams::default();
        Sweep {
            temperature: vec![p.temperature],
            top_k: vec![p.top_k],
            top_p: vec![p.top_p],
            min_p: vec![p.min_p],
            repetition_penalty: vec![p.repetition_penalty],
            frequency_penalty: vec![p.frequency_penalty],
            presence_penalty: vec![p.presence_penalty],
            fixed: p,
            seed: vec![0],
            count: 1,
        }
    }
}

/// One planned sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleSpec {
    /// Sample id, 1-based; it names the output file and enters the sampler's seed.
    pub id: u64,
    /// Index of its prime in the prime list given to [`generate`] and [`super::output::SampleWriter`].
    pub prime: usize,
    /// Sampling parameters.
    pub params: SamplingParams,
    /// The user seed (before mixing with the id).
    pub seed: u64,
}

/// Expands a sweep over `n_primes` primes into samples with ids 1..=N, in the order
/// prime, temperature, top-k, top-p, min-p, repetition penalty, frequency penalty, presence
/// penalty, seed, repetition (the last varies fastest; a list of one value changes nothing, so
/// plans without the newer controls number their samples as before).
/// Errors on an empty list, `count == 0`, no primes, invalid sampling values, or more than
/// [`MAX_SAMPLES`] samples.
pub fn plan(n_primes: usize, sweep: &Sweep) -> Result<Vec<SampleSpec>> {
    let nonempty = |name: &'static str, len: usize| {
        if len == 0 {
            Err(Error::config(name, "needs at least one value"))
        } else {
            Ok(())
        }
    };
    nonempty("temperature", sweep.temperature.len())?;
    nonempty("top-k", sweep.top_k.len())?;
    nonempty("top-p", sweep.top_p.len())?;
    nonempty("min-p", sweep.min_p.len())?;
    nonempty("repetition-penalty", sweep.repetition_penalty.len())?;
    nonempty("frequency-penalty", sweep.frequency_penalty.len())?;
    nonempty("presence-penalty", sweep.presence_penalty.len())?;
    nonempty("seed", sweep.seed.len())?;
    nonempty("prime", n_primes)?;
    if sweep.count == 0 {
        return Err(Error::config("count", "must be at least 1"));
    }
    let total = [
        n_primes,
        sweep.temperature.len(),
        sweep.top_k.len(),
        sweep.top_p.len(),
        sweep.min_p.len(),
        sweep.repetition_penalty.len(),
        sweep.frequency_penalty.len(),
        sweep.presence_penalty.len(),
        sweep.seed.len(),
        sweep.count,
    ]
    .iter()
    .try_fold(1usize, |acc, &n| acc.checked_mul(n))
    .filter(|&n| n <= MAX_SAMPLES)
    .ok_or_else(|| {
        Error::config(
            "count",
            format!("the sweep asks for more than {MAX_SAMPLES} samples"),
        )
    })?;
    // Every combination of the swept values, the first list varying slowest.
    fn expand<T>(
        combos: Vec<SamplingParams>,
        values: &[T],
        set: impl Fn(&mut SamplingParams, &T),
    ) -> Vec<SamplingParams> {
        let mut out = Vec::with_capacity(combos.len() * values.len());
        for p in combos {
            for v in values {
                let mut q = p;
                set(&mut q, v);
                out.push(q);
            }
        }
        out
    }
    let mut combos = vec![sweep.fixed];
    combos = expand(combos, &sweep.temperature, |p, &v| p.temperature = v);
    combos = expand(combos, &sweep.top_k, |p, &v| p.top_k = v);
    combos = expand(combos, &sweep.top_p, |p, &v| p.top_p = v);
    combos = expand(combos, &sweep.min_p, |p, &v| p.min_p = v);
    combos = expand(combos, &sweep.repetition_penalty, |p, &v| {
        p.repetition_penalty = v
    });
    combos = expand(combos, &sweep.frequency_penalty, |p, &v| {
        p.frequency_penalty = v
    });
    combos = expand(combos, &sweep.presence_penalty, |p, &v| {
        p.presence_penalty = v
    });
    for params in &combos {
        params.validate()?;
    }
    let mut out = Vec::with_capacity(total);
    for prime in 0..n_primes {
        for &params in &combos {
            for &seed in &sweep.seed {
                for _ in 0..sweep.count {
                    out.push(SampleSpec {
                        id: out.len() as u64 + 1,
                        prime,
                        params,
                        seed,
                    });
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// generation

/// Settings of a [`generate`] run that are not per sample.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    /// Most tokens generated per sample (>= 1); an end-of-text token counts as one.
    pub length: usize,
    /// A sample ends at the first of these strings in its generated text, which is cut there
    /// (the stop string is not part of the text). Never searched in the prime.
    pub stop: Vec<String>,
    /// Most samples generated side by side (>= 1); bounds memory.
    pub max_batch: usize,
    /// Worker threads; the rows are split into this many shards, each with its own
    /// generator, stepped in parallel. 0: [`default_threads`].
    pub threads: usize,
}

impl Default for GenConfig {
    /// 500 tokens, no stop strings, [`DEFAULT_MAX_BATCH`] rows, all cores.
    fn default() -> Self {
        GenConfig {
            length: 500,
            stop: Vec::new(),
            max_batch: DEFAULT_MAX_BATCH,
            threads: 0,
        }
    }
}

/// A finished sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOutput {
    /// Index of its spec in the slice given to [`generate`].
    pub index: usize,
    /// Its id.
    pub id: u64,
    /// Its text, token count, stop reason and log-probability.
    pub output: StreamOutput,
    /// Tries it took (1 unless a [`Retry`] check rejected earlier tries).
    pub tries: u32,
    /// Whether the check rejected this try too (the last allowed one), so it is kept only
    /// because the tries ran out. Always false without a check.
    pub rejected: bool,
}

/// A [`Retry`] check's judgement of a finished try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The sample is done.
    Keep,
    /// Generate it again with the next try's seed (unless it was the last try).
    Retry,
}

/// Rejection and regeneration of finished samples in [`generate_checked`].
pub struct Retry<'a> {
    /// Most tries per sample (at least 1).
    pub max_tries: u32,
    /// Judges every finished try (`tries` and `rejected` not yet set).
    pub check: &'a mut dyn FnMut(&SampleOutput) -> Verdict,
}

impl std::fmt::Debug for Retry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("max_tries", &self.max_tries)
            .finish_non_exhaustive()
    }
}

/// Progress of a [`generate`] run, reported after every step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Samples handed to the sink.
    pub samples_done: usize,
    /// Samples planned.
    pub samples_total: usize,
    /// Tokens sampled so far, all samples together.
    pub tokens: u64,
    /// Token budget used: `length` for every finished sample plus the tokens of the running
    /// ones; reaches `budget_total` at the end (a smooth measure for an ETA).
    pub budget_done: u64,
    /// `length` × samples planned, plus `length` for every try generated again.
    pub budget_total: u64,
}

/// The progress callback's answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    #[default]
    Continue,
    /// Stop now: samples already finished are handed to the sink, running ones are dropped.
    Stop,
}

/// How a [`generate`] run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Samples handed to the sink.
    pub samples: usize,
    /// Tokens sampled, including those of samples dropped by a stop.
    pub tokens: u64,
    /// Whether the progress callback stopped the run early.
    pub interrupted: bool,
}

/// The state and next-token logits after the whole of each prime (each non-empty), one row
/// per prime, computed as one batch.
fn prime_states(model: &Arc<Model<f32>>, primes: &[&[u32]]) -> Vec<(RowState, Vec<f32>)> {
    let mut out = vec![None; primes.len()];
    let steps = primes.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut gen = Generator::new(Arc::clone(model), primes.len());
    let mut toks = vec![0u32; primes.len()];
    for t in 0..steps {
        for (r, p) in primes.iter().enumerate() {
            // Rows of shorter primes are done; what they are fed now is never looked at.
            toks[r] = p.get(t).copied().unwrap_or(0);
        }
        gen.step(&toks);
        for (r, p) in primes.iter().enumerate() {
            if t + 1 == p.len() {
                out[r] = Some((gen.row_state(r), gen.logits_row(r).to_vec()));
            }
        }
    }
    out.into_iter()
        .map(|s| s.expect("every prime is non-empty"))
        .collect()
}

/// Generates every sample of `samples` and hands each finished one to `sink`, in the order
/// of `samples`.
///
/// `primes` are token ids (an empty prime starts from [`start_tokens`]); each spec's `prime`
/// indexes them. At most `cfg.max_batch` samples run at once, in an [`Engine`] with up to
/// `cfg.threads` shards; a finished sample's place goes to the next one. `progress` is called
/// after every step; [`Control::Stop`] ends the run after handing the finished samples to the
/// sink. An error from `sink` ends the run and is returned.
///
/// Errors: invalid `cfg` or sampling values, a prime index out of range, prime ids outside
/// the vocabulary, or a tokenizer whose vocabulary does not match the model.
pub fn generate(
    model: &Arc<Model<f32>>,
    tokenizer: &Tokenizer,
    primes: &[Vec<u32>],
    samples: &[SampleSpec],
    cfg: &GenConfig,
    sink: &mut dyn FnMut(SampleOutput) -> Result<()>,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<Summary> {
    generate_checked(model, tokenizer, primes, samples, cfg, None, sink, progress)
}

/// [`generate`], with every finished try of a sample judged by `retry`'s check: a rejected
/// try is generated again with the next try number (a new seed, see the module docs), up to
/// `retry.max_tries` tries; the sample handed to the sink records the tries it took and
/// whether its last try was rejected too. Samples still reach the sink in plan order.
#[allow(clippy::too_many_arguments)]
pub fn generate_checked(
    model: &Arc<Model<f32>>,
    tokenizer: &Tokenizer,
    primes: &[Vec<u32>],
    samples: &[SampleSpec],
    cfg: &GenConfig,
    mut retry: Option<Retry<'_>>,
    sink: &mut dyn FnMut(SampleOutput) -> Result<()>,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<Summary> {
    if retry.as_ref().is_some_and(|r| r.max_tries == 0) {
        return Err(Error::config("max-tries", "must be at least 1"));
    }
    let v = model.config.vocab;
    if tokenizer.vocab_size() != v {
        return Err(Error::Shape(format!(
            "tokenizer has {} tokens, the model {v}",
            tokenizer.vocab_size()
        )));
    }
    if cfg.length == 0 {
        return Err(Error::config("length", "must be at least 1"));
    }
    if cfg.max_batch == 0 {
        return Err(Error::config("max-batch", "must be at least 1"));
    }
    StopStrings::new(&cfg.stop)?;
    let starts: Vec<Vec<u32>> = primes.iter().map(|p| start_tokens(p, tokenizer)).collect();
    if let Some(&bad) = starts.iter().flatten().find(|&&t| t as usize >= v) {
        return Err(Error::config(
            "prime",
            format!("token id {bad} is outside the vocabulary of {v}"),
        ));
    }
    let mut uses = vec![0usize; primes.len()];
    for s in samples {
        if s.prime >= primes.len() {
            return Err(Error::config(
                "prime",
                format!("sample {} uses prime {} of {}", s.id, s.prime, primes.len()),
            ));
        }
        s.params.validate()?;
        uses[s.prime] += 1;
    }

    let n = samples.len();
    let length = cfg.length as u64;
    let mut summary = Summary::default();
    let mut prog = Progress {
        samples_total: n,
        budget_total: length * n as u64,
        ..Progress::default()
    };
    if n == 0 {
        return Ok(summary);
    }

    let threads = match cfg.threads {
        0 => default_threads(),
        t => t,
    };
    let rows = cfg.max_batch.min(n);
    let mut engine = Engine::new(Arc::clone(model), threads.min(rows));
    // The next sample to admit, and samples to generate again with their next try number
    // (admitted before new ones).
    let mut next = 0usize;
    let mut again: VecDeque<(usize, u32)> = VecDeque::new();
    let mut attempts = vec![0u32; n];
    let mut cache: HashMap<usize, (RowState, Vec<f32>)> = HashMap::new();
    let mut finished: BTreeMap<usize, SampleOutput> = BTreeMap::new();
    let mut emit = 0usize; // next index to hand to the sink
    let mut budget_finished = 0u64;
    let mut tokens_finished = 0u64;
    let mut updates: Vec<Update> = Vec::new();

    loop {
        // Admit new samples into free places, each from its prime's state.
        let free = rows - engine.len();
        if free > 0 && (next < n || !again.is_empty()) {
            let mut admitted: Vec<usize> = Vec::with_capacity(free);
            while admitted.len() < free {
                if let Some((i, attempt)) = again.pop_front() {
                    attempts[i] = attempt;
                    admitted.push(i);
                } else if next < n {
                    admitted.push(next);
                    next += 1;
                } else {
                    break;
                }
            }
            let mut missing: Vec<usize> = admitted
                .iter()
                .map(|&i| samples[i].prime)
                .filter(|p| !cache.contains_key(p))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            let seqs: Vec<&[u32]> = missing.iter().map(|&p| starts[p].as_slice()).collect();
            for (p, st) in missing.iter().zip(prime_states(model, &seqs)) {
                cache.insert(*p, st);
            }
            for i in admitted {
                let spec = &samples[i];
                let p = spec.prime;
                let mut stream = Stream::new(
                    &StreamSpec {
                        prompt: primes[p].clone(),
                        params: spec.params,
                        seed: spec.seed,
                        id: spec.id,
                        attempt: attempts[i],
                        max_tokens: Some(cfg.length),
                        stop: cfg.stop.clone(),
                    },
                    tokenizer,
                )?;
                stream.skip_fed(starts[p].len());
                uses[p] -= 1;
                let (state, logits) = if uses[p] == 0 {
                    cache.remove(&p).expect("computed above")
                } else {
                    cache[&p].clone()
                };
                engine.join_parked(
                    i as u64,
                    Parked {
                        stream,
                        state,
                        logits: Some(logits),
                    },
                )?;
            }
        }
        if engine.is_empty() {
            break;
        }

        updates.clear();
        engine.step(&mut updates);
        for u in updates.drain(..) {
            if u.token.is_some() {
                summary.tokens += 1;
            }
            if let Some(f) = u.finished {
                let index = u.key as usize;
                budget_finished += length;
                tokens_finished += f.output.tokens as u64;
                let mut out = SampleOutput {
                    index,
                    id: samples[index].id,
                    output: f.output,
                    tries: attempts[index] + 1,
                    rejected: false,
                };
                if let Some(r) = retry.as_mut() {
                    if (r.check)(&out) == Verdict::Retry {
                        if out.tries < r.max_tries {
                            again.push_back((index, out.tries));
                            uses[samples[index].prime] += 1;
                            prog.budget_total += length;
                            continue;
                        }
                        out.rejected = true;
                    }
                }
                finished.insert(index, out);
            }
        }
        while let Some(out) = finished.remove(&emit) {
            sink(out)?;
            emit += 1;
            summary.samples += 1;
        }
        prog.samples_done = summary.samples;
        prog.tokens = summary.tokens;
        prog.budget_done = budget_finished + (summary.tokens - tokens_finished);
        if progress(&prog) == Control::Stop {
            summary.interrupted = true;
            break;
        }
    }
    // After a stop: everything finished, in order, gaps skipped.
    for (_, out) in std::mem::take(&mut finished) {
        sink(out)?;
        summary.samples += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::stream::StopReason;
    use crate::testutil;

    use crate::tokenizer::TokenizerKind;

    const TEXT: &str = "the cat sat on the mat. a dog ate the hat!\nthe end.\n";

    fn tok(kind: TokenizerKind) -> Tokenizer {
        testutil::tokenizer(kind, TEXT)
    }

    fn model(v: usize, hidden: usize, seed: u64) -> Arc<Model<f32>> {
        testutil::model(v, 8, hidden, 2, seed)
    }

    /// Runs `generate` and returns the outputs in sink order.
    fn run(
        m: &Arc<Model<f32>>,
        t: &Tokenizer,
        primes: &[Vec<u32>],
        specs: &[SampleSpec],
        cfg: &GenConfig,
    ) -> Vec<SampleOutput> {
        let mut outs = Vec::new();
        let s = generate(
            m,
            t,
            primes,
            specs,
            cfg,
            &mut |o| {
                outs.push(o);
                Ok(())
            },
            &mut |_| Control::Continue,
        )
        .unwrap();
        assert_eq!(s.samples, specs.len());
        assert!(!s.interrupted);
        outs
    }

    #[test]
    fn plan_is_the_cross_product_in_order() {
        let sw = Sweep {
            temperature: vec![0.5, 1.0],
            top_k: vec![None, Some(3)],
            top_p: vec![1.0],
            seed: vec![7, 8],
            count: 3,
            ..Sweep::default()
        };
        let p = plan(2, &sw).unwrap();
        assert_eq!(p.len(), 2 * 2 * 2 * 2 * 3);
        assert!(p.iter().enumerate().all(|(i, s)| s.id == i as u64 + 1));
        // last axis fastest: repetitions, then seed, then top-k, temperature, prime
        assert_eq!((p[0].seed, p[2].seed, p[3].seed), (7, 7, 8));
        assert_eq!(p[6].params.top_k, Some(3));
        assert_eq!(p[12].params.temperature, 1.0);
        assert_eq!((p[23].prime, p[24].prime), (0, 1));
        assert_eq!(plan(1, &Sweep::default()).unwrap().len(), 1);
    }

    #[test]
    fn plan_sweeps_the_newer_controls_after_top_p_and_before_the_seed() {
        let fixed = SamplingParams {
            repetition_window: 8,
            valid_utf8: true,
            // Swept fields of `fixed` are ignored.
            temperature: 3.0,
            ..SamplingParams::default()
        };
        let sw = Sweep {
            top_p: vec![1.0, 0.9],
            min_p: vec![0.0, 0.1],
            repetition_penalty: vec![1.0, 1.3],
            frequency_penalty: vec![0.0, 0.5],
            presence_penalty: vec![0.0, -0.5],
            seed: vec![1, 2],
            fixed,
            ..Sweep::default()
        };
        let p = plan(1, &sw).unwrap();
        assert_eq!(p.len(), 64);
        assert!(p.iter().all(|s| s.params.repetition_window == 8
            && s.params.valid_utf8
            && s.params.temperature == 0.8));
        // seed fastest, then presence, frequency, repetition, min-p, top-p
        assert_eq!((p[0].seed, p[1].seed), (1, 2));
        assert_eq!(
            (p[1].params.presence_penalty, p[2].params.presence_penalty),
            (0.0, -0.5)
        );
        assert_eq!(p[4].params.frequency_penalty, 0.5);
        assert_eq!(p[8].params.repetition_penalty, 1.3);
        assert_eq!(p[16].params.min_p, 0.1);
        assert_eq!(p[32].params.top_p, 0.9);
        for (field, sw) in [
            (
                "min-p",
                Sweep {
                    min_p: vec![1.5],
                    ..Sweep::default()
                },
            ),
            (
                "repetition-penalty",
                Sweep {
                    repetition_penalty: vec![0.0],
                    ..Sweep::default()
                },
            ),
            (
                "frequency-penalty",
                Sweep {
                    frequency_penalty: vec![2.5],
                    ..Sweep::default()
                },
            ),
            (
                "presence-penalty",
                Sweep {
                    presence_penalty: vec![],
                    ..Sweep::default()
                },
            ),
        ] {
            let e = plan(1, &sw).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn plan_rejects_bad_sweeps() {
        let bad = |sw: Sweep, n: usize, needle: &str| {
            let e = plan(n, &sw).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        bad(
            Sweep {
                count: 0,
                ..Sweep::default()
            },
            1,
            "count",
        );
        bad(
            Sweep {
                temperature: vec![],
                ..Sweep::default()
            },
            1,
            "temperature",
        );
        bad(
            Sweep {
                temperature: vec![0.5, -1.0],
                ..Sweep::default()
            },
            1,
            "temperature",
        );
        bad(
            Sweep {
                top_k: vec![Some(0)],
                ..Sweep::default()
            },
            1,
            "top",
        );
        bad(Sweep::default(), 0, "prime");
        bad(
            Sweep {
                count: MAX_SAMPLES,
                seed: vec![1, 2],
                ..Sweep::default()
            },
            1,
            "more than",
        );
    }

    #[test]
    fn a_sample_is_the_same_alone_and_in_a_batch_of_64() {
        let t = tok(TokenizerKind::Char);
        let m = model(t.vocab_size(), 40, 3);
        let primes: Vec<Vec<u32>> = ["the ", "", "a dog ate", "t"]
            .iter()
            .map(|p| t.encode(p).unwrap())
            .collect();
        let sw = Sweep {
            temperature: vec![0.0, 0.7, 1.3],
            top_k: vec![None, Some(5)],
            top_p: vec![1.0, 0.8],
            seed: vec![11],
            count: 1,
            ..Sweep::default()
        };
        let mut specs = plan(primes.len(), &sw).unwrap();
        specs.extend(
            plan(
                1,
                &Sweep {
                    count: 16,
                    ..Sweep::default()
                },
            )
            .unwrap(),
        );
        specs.truncate(64);
        for (i, s) in specs.iter_mut().enumerate() {
            s.id = i as u64 + 1;
        }
        assert_eq!(specs.len(), 64);
        let cfg = GenConfig {
            length: 30,
            stop: vec!["!".into()],
            max_batch: 64,
            threads: 1,
        };
        let batch = run(&m, &t, &primes, &specs, &cfg);
        assert!(batch.iter().enumerate().all(|(i, o)| o.index == i));
        for (i, spec) in specs.iter().enumerate() {
            let alone = run(&m, &t, &primes, std::slice::from_ref(spec), &cfg);
            assert_eq!(
                alone[0].output.text, batch[i].output.text,
                "sample {}",
                spec.id
            );
            assert_eq!(alone[0].output.tokens, batch[i].output.tokens);
            assert_eq!(alone[0].output.sum_logprob, batch[i].output.sum_logprob);
        }
        let small = run(
            &m,
            &t,
            &primes,
            &specs,
            &GenConfig {
                max_batch: 7,
                ..cfg.clone()
            },
        );
        assert_eq!(small, batch);
        // Shards on three threads, with refills and compaction in every shard.
        let sharded = run(
            &m,
            &t,
            &primes,
            &specs,
            &GenConfig {
                max_batch: 20,
                threads: 3,
                ..cfg.clone()
            },
        );
        assert_eq!(sharded, batch);
        // Different ids give different texts (the id enters the seed).
        let texts: std::collections::HashSet<_> =
            batch[48..].iter().map(|o| &o.output.text).collect();
        assert!(texts.len() > 8, "{texts:?}");
    }

    /// Stop strings cut the text where the unstopped sample first contains one.
    #[test]
    fn stop_strings_cut_at_the_first_occurrence() {
        let t = tok(TokenizerKind::Char);
        let m = model(t.vocab_size(), 16, 5);
        let primes = vec![t.encode("the").unwrap()];
        let specs = plan(
            1,
            &Sweep {
                temperature: vec![1.0],
                count: 20,
                ..Sweep::default()
            },
        )
        .unwrap();
        let long = GenConfig {
            length: 60,
            stop: vec![],
            max_batch: 8,
            threads: 2,
        };
        let free = run(&m, &t, &primes, &specs, &long);
        let stops = vec!["e".to_string(), "at".to_string()];
        let cut = run(
            &m,
            &t,
            &primes,
            &specs,
            &GenConfig {
                stop: stops.clone(),
                ..long
            },
        );
        let mut stopped = 0;
        for (f, c) in free.iter().zip(&cut) {
            assert!(f.output.stop == StopReason::Length && f.output.tokens == 60);
            assert!(
                !c.output.text.contains('e') && !c.output.text.contains("at"),
                "{c:?}"
            );
            match &c.output.stop {
                StopReason::StopString(s) => {
                    stopped += 1;
                    assert!(stops.contains(s));
                    assert!(
                        f.output.text.starts_with(&format!("{}{s}", c.output.text)),
                        "{f:?} {c:?}"
                    );
                    assert_eq!(
                        c.output.tokens,
                        c.output.text.chars().count() + s.chars().count()
                    );
                }
                StopReason::Length => assert_eq!(c.output.text, f.output.text),
                StopReason::EndOfText => panic!("char models have no end-of-text"),
            }
        }
        assert!(stopped > 10, "{stopped}");
    }

    /// The text of one sample generated on its own at try `attempt` (a session, not a batch).
    fn alone(
        m: &Arc<Model<f32>>,
        t: &Tokenizer,
        prime: &[u32],
        spec: &SampleSpec,
        len: usize,
        attempt: u32,
    ) -> String {
        let mut s = super::super::Session::new(Arc::clone(m), t.clone()).unwrap();
        s.start(&StreamSpec {
            params: spec.params,
            seed: spec.seed,
            id: spec.id,
            attempt,
            max_tokens: Some(len),
            ..StreamSpec::new(prime.to_vec())
        })
        .unwrap();
        while s.is_running() {
            s.step();
        }
        s.stream().unwrap().output().text
    }

    #[test]
    fn rejected_samples_are_generated_again_with_the_next_tries_seed() {
        let t = tok(TokenizerKind::Char);
        let m = model(t.vocab_size(), 16, 7);
        let primes = vec![t.encode("the").unwrap()];
        let specs = plan(
            1,
            &Sweep {
                temperature: vec![1.0],
                seed: vec![4],
                count: 6,
                ..Sweep::default()
            },
        )
        .unwrap();
        let cfg = GenConfig {
            length: 12,
            stop: vec![],
            max_batch: 4,
            threads: 2,
        };
        let plain = run(&m, &t, &primes, &specs, &cfg);
        // Even ids are rejected twice, id 5 always; at most 3 tries.
        let mut judged: HashMap<u64, Vec<String>> = HashMap::new();
        let mut check = |o: &SampleOutput| {
            let seen = judged.entry(o.id).or_default();
            seen.push(o.output.text.clone());
            if o.id == 5 || (o.id.is_multiple_of(2) && seen.len() <= 2) {
                Verdict::Retry
            } else {
                Verdict::Keep
            }
        };
        let mut outs = Vec::new();
        let mut last = Progress::default();
        let summary = generate_checked(
            &m,
            &t,
            &primes,
            &specs,
            &cfg,
            Some(Retry {
                max_tries: 3,
                check: &mut check,
            }),
            &mut |o| {
                outs.push(o);
                Ok(())
            },
            &mut |p| {
                last = *p;
                Control::Continue
            },
        )
        .unwrap();
        assert_eq!(summary.samples, 6);
        let got: Vec<(u64, u32, bool)> = outs.iter().map(|o| (o.id, o.tries, o.rejected)).collect();
        assert_eq!(
            got,
            [
                (1, 1, false),
                (2, 3, false),
                (3, 1, false),
                (4, 3, false),
                (5, 3, true),
                (6, 3, false)
            ]
        );
        // 6 first tries and 2 + 2 + 2 + 2 tries again.
        assert_eq!(last.budget_total, 14 * 12);
        assert_eq!(last.budget_done, last.budget_total);
        for (o, p) in outs.iter().zip(&plain) {
            let spec = &specs[o.index];
            let tries = &judged[&o.id];
            // Try 0 is the plain sample; try k is the sample seeded for try k, alone.
            assert_eq!(tries[0], p.output.text);
            for (k, text) in tries.iter().enumerate() {
                assert_eq!(
                    *text,
                    alone(&m, &t, &primes[0], spec, 12, k as u32),
                    "{o:?}"
                );
            }
            assert_eq!(o.output.text, *tries.last().unwrap());
        }
        assert_ne!(judged[&2][0], judged[&2][1]);
        // No tries at all is refused.
        let e = generate_checked(
            &m,
            &t,
            &primes,
            &specs,
            &cfg,
            Some(Retry {
                max_tries: 0,
                check: &mut |_| Verdict::Keep,
            }),
            &mut |_| Ok(()),
            &mut |_| Control::Continue,
        )
        .unwrap_err();
        assert!(e.to_string().contains("max-tries"), "{e}");
    }

    #[test]
    fn end_of_text_ends_word_samples() {
        let t = tok(TokenizerKind::Word);
        let eos = t.eos_id().unwrap();
        let mut mm = (*model(t.vocab_size(), 16, 1)).clone();
        mm.params.out_b[eos as usize] = 50.0;
        let m = Arc::new(mm);
        let specs = plan(1, &Sweep::default()).unwrap();
        let out = run(&m, &t, &[vec![]], &specs, &GenConfig::default());
        assert_eq!(out[0].output.stop, StopReason::EndOfText);
        assert_eq!(out[0].output.tokens, 1);
        assert_eq!(out[0].output.text, "");
        assert!(out[0].output.mean_logprob().unwrap() > -1e-3);
    }

    #[test]
    fn generate_rejects_bad_input_and_can_stop() {
        let t = tok(TokenizerKind::Char);
        let m = model(t.vocab_size(), 8, 1);
        let specs = plan(1, &Sweep::default()).unwrap();
        let go = |primes: &[Vec<u32>], specs: &[SampleSpec], cfg: &GenConfig| {
            generate(&m, &t, primes, specs, cfg, &mut |_| Ok(()), &mut |_| {
                Control::Continue
            })
        };
        let cfg = GenConfig::default();
        assert!(go(&[vec![999]], &specs, &cfg).is_err());
        assert!(go(&[], &specs, &cfg).is_err());
        let zero = GenConfig {
            length: 0,
            ..cfg.clone()
        };
        assert!(go(&[vec![]], &specs, &zero).is_err());
        let other = model(t.vocab_size() + 1, 8, 1);
        assert!(generate(
            &other,
            &t,
            &[vec![]],
            &specs,
            &cfg,
            &mut |_| Ok(()),
            &mut |_| Control::Continue
        )
        .is_err());

        // a stop after the first step hands over nothing unfinished
        let many = plan(
            1,
            &Sweep {
                count: 5,
                ..Sweep::default()
            },
        )
        .unwrap();
        let mut got = 0;
        let mut last = Progress::default();
        let s = generate(
            &m,
            &t,
            &[vec![]],
            &many,
            &cfg,
            &mut |_| {
                got += 1;
                Ok(())
            },
            &mut |p| {
                last = *p;
                Control::Stop
            },
        )
        .unwrap();
        assert!(s.interrupted);
        assert_eq!((got, s.samples, s.tokens), (0, 0, 5));
        assert_eq!(
            (last.tokens, last.budget_done, last.budget_total),
            (5, 5, 2500)
        );

        // sink errors end the run
        let e = generate(
            &m,
            &t,
            &[vec![]],
            &many,
            &GenConfig { length: 3, ..cfg },
            &mut |_| Err(Error::config("sink", "full")),
            &mut |_| Control::Continue,
        );
        assert!(e.unwrap_err().to_string().contains("full"));
    }
}
