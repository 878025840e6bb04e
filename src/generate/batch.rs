//! Batched generation: many samples at once, reproducible, written to files with a manifest.
//!
//! * [`plan`] expands a sweep (lists of temperatures, top-k, top-p and seeds, times a count,
//!   for every prime) into numbered [`SampleSpec`]s, ids 1..=N.
//! * [`generate`] runs them as one batch: all active streams advance together through one
//!   shared [`Generator`] (one matrix product per layer per step), at most
//!   [`GenConfig::max_batch`] rows at a time, split into one shard (own generator) per
//!   thread so that both the matrix products and the element-wise work use every core. Rows
//!   that finish are refilled with the next samples, and shards shrink once nothing is left
//!   to admit. Finished samples go to a
//!   sink callback in id order; progress goes to a second callback.
//! * [`SampleWriter`] writes each sample atomically to `DIR/0001.txt`, ... and the manifest
//!   `DIR/manifest.jsonl` (or everything into one JSONL file), refusing to overwrite.
//!
//! Reproducibility: a sample's text depends only on the model, its parameters, its seed and
//! its id, never on the batch around it. Each sample has its own [`Sampler`], seeded with
//! [`sample_seed`]`(seed, id)`; its prime is run on its own row (the recurrent state after all
//! but the last prime token is computed once per distinct prime and copied into each row);
//! and every operation of a generator step is row-wise, so a row's numbers do not depend on
//! which or how many other rows share the step.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::error::{Error, Result};
use crate::generate::sampler::{Sampler, SamplingParams};
use crate::nn::model::{Generator, LstmState, Model};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Most samples one plan may hold.
pub const MAX_SAMPLES: usize = 1_000_000;

/// Default number of rows B of the shared generator.
pub const DEFAULT_MAX_BATCH: usize = 256;

/// Rows × V at or above which the per-row sampling work of a step is split across threads.
const PAR_MIN_WORK: usize = 1 << 15;

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
    /// User seeds; each sample's sampler is seeded with [`sample_seed`]`(seed, id)`.
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
    /// Index of its prime in the prime list given to [`generate`] and [`SampleWriter`].
    pub prime: usize,
    /// Sampling parameters.
    pub params: SamplingParams,
    /// The user seed (before mixing with the id).
    pub seed: u64,
}

/// Expands a sweep over `n_primes` primes into samples with ids 1..=N, in the order
/// prime, temperature, top-k, top-p, seed, repetition (the last varies fastest).
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
    let mut out = Vec::with_capacity(total);
    for prime in 0..n_primes {
        for &temperature in &sweep.temperature {
            for &top_k in &sweep.top_k {
                for &top_p in &sweep.top_p {
                    let params = SamplingParams {
                        temperature,
                        top_k,
                        top_p,
                    };
                    params.validate()?;
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
        }
    }
    Ok(out)
}

/// SplitMix64 finaliser: a bijective, well-mixing map of 64-bit values.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sampler seed of sample `id` under user seed `seed`: a hash of both, so neighbouring
/// ids and seeds give unrelated random streams.
pub fn sample_seed(seed: u64, id: u64) -> u64 {
    mix64(seed ^ mix64(id ^ 0x5155_494C_4C00_0000))
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

// ---------------------------------------------------------------------------------------------
// stop strings

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

/// Why a sample ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// It reached [`GenConfig::length`] tokens.
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

/// A finished sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOutput {
    /// Index of its spec in the slice given to [`generate`].
    pub index: usize,
    /// Its id.
    pub id: u64,
    /// The generated text, without the prime and without a final stop string.
    pub text: String,
    /// Tokens sampled, including a final end-of-text token.
    pub tokens: usize,
    /// Why it ended.
    pub stop: StopReason,
    /// Sum over its tokens of the natural-log probability under the model (temperature 1,
    /// unfiltered).
    pub sum_logprob: f64,
}

impl SampleOutput {
    /// Mean log-probability per token, `None` if it is not finite (or no token was sampled).
    pub fn mean_logprob(&self) -> Option<f64> {
        let m = self.sum_logprob / self.tokens as f64;
        (self.tokens > 0 && m.is_finite()).then_some(m)
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
    /// `length` × samples planned.
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

/// One running sample: its row's sampler, decoder and text so far.
#[derive(Debug)]
struct Row {
    index: usize,
    sampler: Sampler,
    decoder: StreamDecoder,
    text: String,
    tokens: usize,
    sum_logprob: f64,
    /// Token to feed at the next step.
    next: u32,
    done: Option<StopReason>,
}

/// What every row's step needs to know.
struct StepCtx<'a> {
    length: usize,
    eos: Option<u32>,
    stops: &'a StopStrings,
}

impl Row {
    /// Samples one token from `logits` (V) and updates text, counters and `done`.
    fn advance(&mut self, logits: &[f32], ctx: &StepCtx<'_>) {
        let s = self.sampler.sample(logits);
        self.tokens += 1;
        self.sum_logprob += f64::from(s.logprob);
        if Some(s.id) == ctx.eos {
            self.finish(StopReason::EndOfText, ctx);
            return;
        }
        let piece = self.decoder.push(s.id);
        if self.append(&piece, ctx) {
            return;
        }
        if self.tokens >= ctx.length {
            self.finish(StopReason::Length, ctx);
            return;
        }
        self.next = s.id;
    }

    /// Appends decoded text; on a stop string cuts the text there, sets `done` and returns true.
    fn append(&mut self, piece: &str, ctx: &StepCtx<'_>) -> bool {
        if piece.is_empty() {
            return false;
        }
        let old = self.text.len();
        self.text.push_str(piece);
        if let Some((pos, k)) = ctx.stops.find(&self.text, old) {
            self.text.truncate(pos);
            self.done = Some(StopReason::StopString(ctx.stops.strings()[k].clone()));
            return true;
        }
        false
    }

    /// Flushes the decoder (a stop string may still complete) and ends with `reason`.
    fn finish(&mut self, reason: StopReason, ctx: &StepCtx<'_>) {
        let tail = self.decoder.finish();
        if !self.append(&tail, ctx) {
            self.done = Some(reason);
        }
    }
}

/// Flat copy of one row's recurrent state: per layer h then c, each H.
fn capture_row(state: &LstmState<f32>, r: usize, out: &mut [f32]) {
    let h = state.h.first().map_or(0, |a| a.ncols());
    for (l, chunk) in out.chunks_exact_mut(2 * h).enumerate() {
        let (ho, co) = chunk.split_at_mut(h);
        ho.iter_mut()
            .zip(state.h[l].row(r))
            .for_each(|(d, s)| *d = *s);
        co.iter_mut()
            .zip(state.c[l].row(r))
            .for_each(|(d, s)| *d = *s);
    }
}

/// Inverse of [`capture_row`].
fn write_row(state: &mut LstmState<f32>, r: usize, src: &[f32]) {
    let h = state.h.first().map_or(0, |a| a.ncols());
    for (l, chunk) in src.chunks_exact(2 * h).enumerate() {
        let (hs, cs) = chunk.split_at(h);
        state.h[l]
            .row_mut(r)
            .iter_mut()
            .zip(hs)
            .for_each(|(d, s)| *d = *s);
        state.c[l]
            .row_mut(r)
            .iter_mut()
            .zip(cs)
            .for_each(|(d, s)| *d = *s);
    }
}

/// The recurrent state after feeding all but the last token of each prime (each non-empty),
/// one row per prime, computed as one batch.
fn prime_states(model: &Arc<Model<f32>>, primes: &[&[u32]]) -> Vec<Vec<f32>> {
    let cfg = &model.config;
    let width = 2 * cfg.layers * cfg.hidden;
    let mut out = vec![vec![0.0f32; width]; primes.len()];
    let steps = primes
        .iter()
        .map(|p| p.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    if steps == 0 {
        return out;
    }
    let mut gen = Generator::new(Arc::clone(model), primes.len());
    let mut toks = vec![0u32; primes.len()];
    for t in 0..steps {
        for (r, p) in primes.iter().enumerate() {
            toks[r] = if t + 1 < p.len() { p[t] } else { 0 };
        }
        gen.step(&toks);
        for (r, p) in primes.iter().enumerate() {
            if t + 2 == p.len() {
                capture_row(gen.state(), r, &mut out[r]);
            }
        }
    }
    out
}

/// Advances every running row by one sampled token, on several threads when the work is big.
fn advance_rows(gen: &Generator, slots: &mut [Option<Row>], ctx: &StepCtx<'_>, threads: usize) {
    let run = |offset: usize, part: &mut [Option<Row>]| {
        for (i, slot) in part.iter_mut().enumerate() {
            if let Some(row) = slot {
                row.advance(gen.logits_row(offset + i), ctx);
            }
        }
    };
    let work = slots.len() * gen.model().config.vocab;
    let threads = threads.min(slots.len());
    if threads <= 1 || work < PAR_MIN_WORK {
        run(0, slots);
        return;
    }
    let chunk = slots.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let mut parts = slots.chunks_mut(chunk).enumerate();
        let first = parts.next();
        for (ci, part) in parts {
            let run = &run;
            sc.spawn(move || run(ci * chunk, part));
        }
        if let Some((_, part)) = first {
            run(0, part);
        }
    });
}

/// A share of the rows with its own generator; shards step in parallel, one per thread.
struct Shard {
    gen: Generator,
    slots: Vec<Option<Row>>,
    toks: Vec<u32>,
}

impl Shard {
    fn new(model: &Arc<Model<f32>>, rows: usize) -> Self {
        Shard {
            gen: Generator::new(Arc::clone(model), rows),
            slots: (0..rows).map(|_| None).collect(),
            toks: vec![0; rows],
        }
    }

    fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Rebuilds the shard with only its running rows.
    fn compact(&mut self, model: &Arc<Model<f32>>) {
        let keep: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].is_some())
            .collect();
        let mut small = Shard::new(model, keep.len());
        let mut state = small.gen.state().clone();
        let mut buf = vec![0.0f32; 2 * model.config.layers * model.config.hidden];
        for (r, &i) in keep.iter().enumerate() {
            capture_row(self.gen.state(), i, &mut buf);
            write_row(&mut state, r, &buf);
            small.slots[r] = self.slots[i].take();
        }
        small.gen.set_state(state);
        *self = small;
    }

    /// One generator step for every row, then one sampled token per running row.
    fn step(&mut self, ctx: &StepCtx<'_>, threads: usize) {
        for (t, s) in self.toks.iter_mut().zip(&self.slots) {
            *t = s.as_ref().map_or(0, |r| r.next);
        }
        self.gen.step(&self.toks);
        advance_rows(&self.gen, &mut self.slots, ctx, threads);
    }
}

/// Number of worker threads for `threads == 0`: the cores this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |t| t.get())
}

/// Generates every sample of `samples` as one batch and hands each finished one to `sink`,
/// in the order of `samples`.
///
/// `primes` are token ids (an empty prime starts from [`start_tokens`]); each spec's `prime`
/// indexes them. At most `cfg.max_batch` samples run at once, split into `cfg.threads`
/// shards that step in parallel; a finished row is refilled with the next sample.
/// `progress` is called after every step; [`Control::Stop`] ends the run after handing the
/// finished samples to the sink. An error from `sink` ends the run and is returned.
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
    let stops = StopStrings::new(&cfg.stop)?;
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
    let ctx = StepCtx {
        length: cfg.length,
        eos: tokenizer.eos_id(),
        stops: &stops,
    };
    let threads = match cfg.threads {
        0 => default_threads(),
        t => t,
    };
    let mut summary = Summary::default();
    let mut prog = Progress {
        samples_total: n,
        budget_total: length * n as u64,
        ..Progress::default()
    };
    if n == 0 {
        return Ok(summary);
    }

    let rows = cfg.max_batch.min(n);
    let n_shards = threads.min(rows);
    let mut shards: Vec<Shard> = (0..n_shards)
        .map(|s| Shard::new(model, (s + 1) * rows / n_shards - s * rows / n_shards))
        .collect();
    let mut next = 0usize; // next sample to admit
    let mut cache: HashMap<usize, Vec<f32>> = HashMap::new();
    let mut finished: BTreeMap<usize, SampleOutput> = BTreeMap::new();
    let mut emit = 0usize; // next index to hand to the sink
    let mut budget_finished = 0u64;

    loop {
        // Admit new samples into free rows, shard by shard.
        let free: Vec<(usize, usize)> = shards
            .iter()
            .enumerate()
            .flat_map(|(s, sh)| {
                (0..sh.slots.len())
                    .filter(|&i| sh.slots[i].is_none())
                    .map(move |i| (s, i))
            })
            .collect();
        if !free.is_empty() && next < n {
            let take = free.len().min(n - next);
            let admitted = next..next + take;
            next += take;
            let mut missing: Vec<usize> = admitted
                .clone()
                .map(|i| samples[i].prime)
                .filter(|p| !cache.contains_key(p))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            let seqs: Vec<&[u32]> = missing.iter().map(|&p| starts[p].as_slice()).collect();
            for (p, st) in missing.iter().zip(prime_states(model, &seqs)) {
                cache.insert(*p, st);
            }
            let mut states: Vec<Option<LstmState<f32>>> = shards.iter().map(|_| None).collect();
            for (&(s, slot), i) in free.iter().zip(admitted) {
                let spec = &samples[i];
                let p = spec.prime;
                let state = states[s].get_or_insert_with(|| shards[s].gen.state().clone());
                write_row(state, slot, &cache[&p]);
                uses[p] -= 1;
                if uses[p] == 0 {
                    cache.remove(&p);
                }
                shards[s].slots[slot] = Some(Row {
                    index: i,
                    sampler: Sampler::new(spec.params, sample_seed(spec.seed, spec.id)),
                    decoder: tokenizer.stream_decoder_after(&primes[p]),
                    text: String::new(),
                    tokens: 0,
                    sum_logprob: 0.0,
                    next: *starts[p].last().expect("start tokens are never empty"),
                    done: None,
                });
            }
            for (sh, st) in shards.iter_mut().zip(states) {
                if let Some(st) = st {
                    sh.gen.set_state(st);
                }
            }
        }

        // Nothing left to admit: drop idle shards, shrink half-idle ones.
        if next == n {
            shards.retain(|sh| sh.active() > 0);
            for sh in &mut shards {
                if sh.active() * 2 <= sh.slots.len() {
                    sh.compact(model);
                }
            }
        }
        let active: usize = shards.iter().map(Shard::active).sum();
        if active == 0 {
            break;
        }

        if let [only] = shards.as_mut_slice() {
            only.step(&ctx, threads);
        } else {
            let ctx = &ctx;
            std::thread::scope(|sc| {
                let (first, rest) = shards.split_first_mut().expect("at least one shard");
                for sh in rest {
                    sc.spawn(move || sh.step(ctx, 1));
                }
                first.step(ctx, 1);
            });
        }
        summary.tokens += active as u64;

        let mut running = 0u64;
        for slot in shards.iter_mut().flat_map(|sh| sh.slots.iter_mut()) {
            let Some(row) = slot else { continue };
            let Some(stop) = row.done.take() else {
                running += row.tokens as u64;
                continue;
            };
            let row = slot.take().expect("checked above");
            budget_finished += length;
            finished.insert(
                row.index,
                SampleOutput {
                    index: row.index,
                    id: samples[row.index].id,
                    text: row.text,
                    tokens: row.tokens,
                    stop,
                    sum_logprob: row.sum_logprob,
                },
            );
        }
        while let Some(out) = finished.remove(&emit) {
            sink(out)?;
            emit += 1;
            summary.samples += 1;
        }
        prog.samples_done = summary.samples;
        prog.tokens = summary.tokens;
        prog.budget_done = budget_finished + running;
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

// ---------------------------------------------------------------------------------------------
// output

/// Output layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One text file per sample (`DIR/0001.txt`, ...) plus `DIR/manifest.jsonl`.
    #[default]
    Files,
    /// One JSONL file: the manifest with each sample's text in it.
    Jsonl,
}

/// Name of the manifest in an output directory.
pub const MANIFEST: &str = "manifest.jsonl";

/// File written for `--format jsonl` when the output path is a directory.
pub const JSONL_DEFAULT_NAME: &str = "samples.jsonl";

/// The checkpoint a run used, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its path (absolute where it can be resolved).
    pub path: String,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

impl CheckpointInfo {
    /// Resolves and hashes the checkpoint file at `path`.
    pub fn of_file(path: &Path) -> Result<Self> {
        let mut f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
        }
        let shown = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(CheckpointInfo {
            path: shown.to_string_lossy().into_owned(),
            sha256: crate::train::corpus::hex(&hasher.finalize()),
        })
    }
}

/// One manifest line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// Sample id.
    pub id: u64,
    /// The sample's file, relative to the manifest's directory (files format only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Checkpoint path.
    pub checkpoint: String,
    /// SHA-256 of the checkpoint file.
    pub checkpoint_sha256: String,
    /// The prime text.
    pub prime: String,
    /// Temperature.
    pub temperature: f32,
    /// Top-k (`null`: off).
    pub top_k: Option<usize>,
    /// Top-p.
    pub top_p: f32,
    /// User seed.
    pub seed: u64,
    /// Tokens generated.
    pub tokens: usize,
    /// `"length"`, `"end_of_text"` or `"stop_string"`.
    pub stop_reason: String,
    /// The stop string that ended the sample, if one did.
    pub stop_string: Option<String>,
    /// Mean natural-log probability per generated token (`null` if not finite).
    pub mean_logprob: Option<f64>,
    /// Prime plus generated text (jsonl format only; the files format has it in `file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh hidden temporary path `.NAME.tmp-PID-SEQ` next to `path`, created with
/// `create_new` (it never follows or replaces an existing entry).
fn create_temp(path: &Path) -> io::Result<(PathBuf, fs::File)> {
    let dir = parent_dir(path);
    let name = path.file_name().unwrap_or_default();
    loop {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(tmp);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An I/O error on `path` whose message says which step failed.
fn step_err(path: &Path, step: &str, e: io::Error) -> Error {
    Error::io(path, io::Error::new(e.kind(), format!("{step}: {e}")))
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory, fsync, rename.
/// On failure the temporary file is removed and `path` is untouched. `fail_write` simulates
/// a failing write (tests).
fn write_atomic(path: &Path, bytes: &[u8], fail_write: bool) -> Result<()> {
    let (tmp, mut f) =
        create_temp(path).map_err(|e| step_err(path, "cannot create a temporary file", e))?;
    let res = (|| {
        if fail_write {
            f.write_all(&bytes[..bytes.len() / 2])?;
            return Err(io::Error::other("simulated: no space left on device"));
        }
        f.write_all(bytes)?;
        f.sync_all()
    })()
    .map_err(|e| step_err(path, &format!("cannot write {}", tmp.display()), e))
    .and_then(|()| {
        fs::rename(&tmp, path)
            .map_err(|e| step_err(path, &format!("cannot rename {} to it", tmp.display()), e))
    });
    if res.is_err() {
        drop(f);
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Fsyncs a directory so renames in it are durable (best effort; not every platform can).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes finished samples: each as its own file (atomically) plus a manifest line, or as a
/// line of one JSONL file. The manifest (or JSONL file) is streamed to a temporary file and
/// renamed into place by [`SampleWriter::finish`]; dropping an unfinished writer removes it.
#[derive(Debug)]
pub struct SampleWriter {
    format: OutputFormat,
    dir: PathBuf,
    /// The manifest or the JSONL output.
    target: PathBuf,
    tmp: Option<(PathBuf, io::BufWriter<fs::File>)>,
    width: usize,
    checkpoint: CheckpointInfo,
    primes: Vec<String>,
    samples: Vec<SampleSpec>,
    written: usize,
    fail_after: Option<usize>,
}

impl SampleWriter {
    /// Prepares `out` for the samples of `samples` (prime texts in `primes`).
    ///
    /// [`OutputFormat::Files`]: `out` is a directory, created if missing; sample files are
    /// named by id with at least 4 digits. [`OutputFormat::Jsonl`]: `out` is the JSONL file,
    /// or an existing directory to hold [`JSONL_DEFAULT_NAME`].
    ///
    /// Without `force`, any file the run would write that already exists is an error of
    /// kind [`io::ErrorKind::AlreadyExists`]. Also checks that the directory is writable
    /// (creating and removing a probe file), so a read-only directory fails before any work.
    pub fn create(
        out: &Path,
        format: OutputFormat,
        force: bool,
        checkpoint: CheckpointInfo,
        primes: &[String],
        samples: &[SampleSpec],
    ) -> Result<Self> {
        let (dir, target) = match format {
            OutputFormat::Files => {
                if out.exists() && !out.is_dir() {
                    return Err(Error::io(
                        out,
                        io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "exists and is not a directory",
                        ),
                    ));
                }
                (out.to_path_buf(), out.join(MANIFEST))
            }
            OutputFormat::Jsonl => {
                if out.is_dir() {
                    (out.to_path_buf(), out.join(JSONL_DEFAULT_NAME))
                } else {
                    (parent_dir(out), out.to_path_buf())
                }
            }
        };
        fs::create_dir_all(&dir)
            .map_err(|e| step_err(&dir, "cannot create the output directory", e))?;
        let max_id = samples.iter().map(|s| s.id).max().unwrap_or(0);
        let width = max_id.to_string().len().max(4);
        let mut w = SampleWriter {
            format,
            dir,
            target,
            tmp: None,
            width,
            checkpoint,
            primes: primes.to_vec(),
            samples: samples.to_vec(),
            written: 0,
            fail_after: None,
        };
        if !force {
            let mut clash: Vec<PathBuf> = Vec::new();
            if w.target.exists() {
                clash.push(w.target.clone());
            }
            if format == OutputFormat::Files {
                clash.extend(
                    samples
                        .iter()
                        .map(|s| w.dir.join(w.file_name(s.id)))
                        .filter(|p| p.symlink_metadata().is_ok()),
                );
            }
            if let Some(first) = clash.first() {
                let more = match clash.len() {
                    1 => String::new(),
                    k => format!(" (and {} more)", k - 1),
                };
                return Err(Error::io(
                    first,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("already exists{more}; not overwriting it"),
                    ),
                ));
            }
        }
        if w.target.is_dir() {
            return Err(Error::io(
                &w.target,
                io::Error::new(io::ErrorKind::AlreadyExists, "is a directory"),
            ));
        }
        // The manifest's temporary file doubles as the writability probe.
        let (tmp, f) = create_temp(&w.target)
            .map_err(|e| step_err(&w.dir, "cannot write to the output directory", e))?;
        w.tmp = Some((tmp, io::BufWriter::new(f)));
        Ok(w)
    }

    /// File name of sample `id`: `0001.txt`.
    pub fn file_name(&self, id: u64) -> String {
        format!("{id:0w$}.txt", w = self.width)
    }

    /// The manifest (files) or JSONL output path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Samples written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Writes one finished sample: its file (prime + generated text, atomically) and its
    /// manifest line, or its JSONL line.
    pub fn write(&mut self, out: &SampleOutput) -> Result<()> {
        let spec = *self.samples.get(out.index).ok_or_else(|| {
            Error::config("sample", format!("index {} is not in the plan", out.index))
        })?;
        let prime = self.primes.get(spec.prime).cloned().unwrap_or_default();
        let content = format!("{prime}{}", out.text);
        let mut rec = ManifestRecord {
            id: spec.id,
            file: None,
            checkpoint: self.checkpoint.path.clone(),
            checkpoint_sha256: self.checkpoint.sha256.clone(),
            prime,
            temperature: spec.params.temperature,
            top_k: spec.params.top_k,
            top_p: spec.params.top_p,
            seed: spec.seed,
            tokens: out.tokens,
            stop_reason: out.stop.as_str().to_string(),
            stop_string: match &out.stop {
                StopReason::StopString(s) => Some(s.clone()),
                _ => None,
            },
            mean_logprob: out.mean_logprob(),
            text: None,
        };
        let fail = self.fail_after.is_some_and(|k| self.written >= k);
        match self.format {
            OutputFormat::Files => {
                let name = self.file_name(spec.id);
                write_atomic(&self.dir.join(&name), content.as_bytes(), fail)?;
                rec.file = Some(name);
            }
            OutputFormat::Jsonl => rec.text = Some(content),
        }
        let (tmp, f) = self.tmp.as_mut().ok_or_else(|| {
            Error::io(
                &self.target,
                io::Error::other("the writer was already finished"),
            )
        })?;
        let mut line = serde_json::to_string(&rec)
            .map_err(|e| Error::io(&*tmp, io::Error::other(e.to_string())))?;
        line.push('\n');
        f.write_all(line.as_bytes())
            .map_err(|e| step_err(tmp, "cannot write", e))?;
        self.written += 1;
        Ok(())
    }

    /// Flushes and fsyncs the manifest (or JSONL file) and renames it into place; returns
    /// its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let Some((tmp, f)) = self.tmp.take() else {
            return Ok(self.target.clone());
        };
        let res = f
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .map_err(|e| step_err(&tmp, "cannot write", e))
            .and_then(|()| {
                fs::rename(&tmp, &self.target).map_err(|e| {
                    step_err(
                        &self.target,
                        &format!("cannot rename {} to it", tmp.display()),
                        e,
                    )
                })
            });
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res?;
        sync_dir(&self.dir);
        Ok(self.target.clone())
    }
}

impl Drop for SampleWriter {
    fn drop(&mut self) {
        if let Some((tmp, f)) = self.tmp.take() {
            drop(f);
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::model::ModelConfig;
    use crate::tokenizer::{TokenizerKind, TokenizerOptions};
    use rand::SeedableRng;

    const TEXT: &str = "the cat sat on the mat. a dog ate the hat!\nthe end.\n";

    fn tok(kind: TokenizerKind) -> Tokenizer {
        let opts = TokenizerOptions {
            vocab_size: if kind == TokenizerKind::Bpe { 300 } else { 100 },
            min_frequency: 1,
        };
        Tokenizer::train(kind, TEXT, &opts).unwrap()
    }

    fn model(v: usize, hidden: usize, seed: u64) -> Arc<Model<f32>> {
        let cfg = ModelConfig {
            vocab: v,
            embed: 8,
            hidden,
            layers: 2,
            dropout: 0.0,
            tie_weights: false,
        };
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        Arc::new(Model::new(cfg, &mut rng).unwrap())
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
    fn sample_seeds_differ_by_id_and_seed() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..20 {
            for id in 1..50 {
                assert!(seen.insert(sample_seed(seed, id)));
            }
        }
        assert_eq!(sample_seed(3, 9), sample_seed(3, 9));
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

    /// The reproducibility rule: every sample of a 64-sample batch with mixed primes and
    /// parameters equals the same sample generated alone, and runs with small batches
    /// (refills, compaction) agree too.
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
            assert_eq!(alone[0].text, batch[i].text, "sample {}", spec.id);
            assert_eq!(alone[0].tokens, batch[i].tokens);
            assert_eq!(alone[0].sum_logprob, batch[i].sum_logprob);
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
        let texts: std::collections::HashSet<_> = batch[48..].iter().map(|o| &o.text).collect();
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
            assert!(f.stop == StopReason::Length && f.tokens == 60);
            assert!(!c.text.contains('e') && !c.text.contains("at"), "{c:?}");
            match &c.stop {
                StopReason::StopString(s) => {
                    stopped += 1;
                    assert!(stops.contains(s));
                    assert!(f.text.starts_with(&format!("{}{s}", c.text)), "{f:?} {c:?}");
                    assert_eq!(c.tokens, c.text.chars().count() + s.chars().count());
                }
                StopReason::Length => assert_eq!(c.text, f.text),
                StopReason::EndOfText => panic!("char models have no end-of-text"),
            }
        }
        assert!(stopped > 10, "{stopped}");
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
        assert_eq!(out[0].stop, StopReason::EndOfText);
        assert_eq!(out[0].tokens, 1);
        assert_eq!(out[0].text, "");
        assert!(out[0].mean_logprob().unwrap() > -1e-3);
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

    fn output(index: usize, id: u64, text: &str) -> SampleOutput {
        SampleOutput {
            index,
            id,
            text: text.into(),
            tokens: 4,
            stop: StopReason::StopString("\n".into()),
            sum_logprob: -2.0,
        }
    }

    fn ck() -> CheckpointInfo {
        CheckpointInfo {
            path: "/m.safetensors".into(),
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn writer_writes_files_and_manifest_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        let primes = vec!["P:".to_string()];
        let specs = plan(
            1,
            &Sweep {
                count: 2,
                ..Sweep::default()
            },
        )
        .unwrap();
        let mut w =
            SampleWriter::create(&out, OutputFormat::Files, false, ck(), &primes, &specs).unwrap();
        w.write(&output(0, 1, "one")).unwrap();
        w.write(&output(1, 2, "two")).unwrap();
        // the manifest appears only when finished
        assert!(!out.join(MANIFEST).exists());
        assert_eq!(w.finish().unwrap(), out.join(MANIFEST));
        assert_eq!(fs::read_to_string(out.join("0001.txt")).unwrap(), "P:one");
        let lines: Vec<ManifestRecord> = fs::read_to_string(out.join(MANIFEST))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].file.as_deref(), Some("0002.txt"));
        assert_eq!(lines[1].stop_reason, "stop_string");
        assert_eq!(lines[1].stop_string.as_deref(), Some("\n"));
        assert_eq!(lines[1].mean_logprob, Some(-0.5));
        assert_eq!(lines[1].temperature, 0.8);
        assert!(lines[1].text.is_none());
        // only the two samples and the manifest: no temporary files left
        assert_eq!(fs::read_dir(&out).unwrap().count(), 3);

        let again = SampleWriter::create(&out, OutputFormat::Files, false, ck(), &primes, &specs);
        let e = again.unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let mut w =
            SampleWriter::create(&out, OutputFormat::Files, true, ck(), &primes, &specs).unwrap();
        w.write(&output(0, 1, "uno")).unwrap();
        drop(w); // unfinished: the old manifest stays, the temporary one goes
        assert_eq!(fs::read_to_string(out.join("0001.txt")).unwrap(), "P:uno");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 3);

        // jsonl into a directory
        let mut w =
            SampleWriter::create(&out, OutputFormat::Jsonl, false, ck(), &primes, &specs).unwrap();
        w.write(&output(0, 1, "x")).unwrap();
        let p = w.finish().unwrap();
        assert_eq!(p, out.join(JSONL_DEFAULT_NAME));
        let r: ManifestRecord =
            serde_json::from_str(fs::read_to_string(p).unwrap().trim()).unwrap();
        assert_eq!((r.text.as_deref(), r.file), (Some("P:x"), None));
    }

    #[test]
    fn a_failed_write_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let specs = plan(
            1,
            &Sweep {
                count: 2,
                ..Sweep::default()
            },
        )
        .unwrap();
        let mut w = SampleWriter::create(
            dir.path(),
            OutputFormat::Files,
            false,
            ck(),
            &[String::new()],
            &specs,
        )
        .unwrap();
        w.fail_after = Some(1);
        w.write(&output(0, 1, "fine")).unwrap();
        let e = w.write(&output(1, 2, "broken")).unwrap_err().to_string();
        assert!(e.contains("0002.txt") && e.contains("no space"), "{e}");
        drop(w);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("0001.txt")]);
    }

    #[test]
    fn output_below_a_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        let specs = plan(1, &Sweep::default()).unwrap();
        let e = SampleWriter::create(
            &file.join("sub"),
            OutputFormat::Files,
            false,
            ck(),
            &[String::new()],
            &specs,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot create the output directory"), "{e}");
        let e = SampleWriter::create(
            &file,
            OutputFormat::Files,
            true,
            ck(),
            &[String::new()],
            &specs,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn checkpoint_info_hashes_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        fs::write(&p, b"abc").unwrap();
        let c = CheckpointInfo::of_file(&p).unwrap();
        assert_eq!(
            c.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(CheckpointInfo::of_file(&dir.path().join("none")).is_err());
    }
}
