//! Token sampling: one row of logits (length V) in, one sampled token id out.
//!
//! The [`Sampler`] is called once per generated token per stream, so it keeps its scratch
//! buffers between calls and allocates nothing once they have grown to V. Cost per call:
//! * the exponentials use the numeric core's branch-free polynomial `exp`
//!   ([`crate::nn::fast::exp_or_zero`], about 1-2 ulp) that the compiler vectorises; a
//!   temperature other than 1 costs a second exp pass (the logprob needs the
//!   temperature-1 partition sum);
//! * without top-k/top-p nothing is sorted: a two-level cumulative walk (block sums of 64
//!   tokens, then inside one block);
//! * top-k/top-p never sort V: tokens are packed as `u64` keys (probability bits, id), a
//!   radix histogram over the top 12 float bits finds the bucket where the k-th token or
//!   the nucleus boundary falls, every token above it is in, and only that bucket gets a
//!   selection (`select_nth_unstable_by`) or a quickselect-style nucleus search.
//!
//! Measured on the loaded 2-core dev box (test profile, opt-level 2, CPU time): V = 10000:
//! greedy ~22 us, T = 1 ~26 us, T = 0.8 ~43 us, top-k 40 ~70 us, top-p 0.9 ~85-110 us;
//! V = 65: 0.2-1 us.
//!
//! Controls that change the logits before the softmax (they cost nothing when off: the row
//! is then sampled as it comes; when on, it is copied once into a scratch row and edited):
//! * repetition penalty r over the last N tokens of the context (prompt and generated text),
//!   CTRL / Hugging Face semantics: each distinct token among them has a positive logit
//!   divided by r and a negative one multiplied by r;
//! * frequency and presence penalties (OpenAI semantics) over the generated tokens:
//!   `logit -= frequency * count + presence * (count > 0)`;
//! * a ban list (the UTF-8 guard of byte-level BPE models, see
//!   [`crate::tokenizer::Utf8Guard`]): banned tokens get `-inf`.
//!
//! Then temperature, min-p (keep tokens whose tempered probability is at least `min_p` times
//! the top token's), top-k, top-p. The reported `logprob` is always under the model's own
//! logits (before the penalties), so mean log-probabilities stay comparable.
//!
//! Tempered probabilities below ~1.6e-38 of the top token's (exponent under -87) count as 0
//! and are never drawn.
//!
//! Logits conventions shared by everything in this module:
//! * NaN logits are treated as `-inf` (probability 0); nothing here panics on them.
//! * `+inf` logits share all the probability mass equally; every finite logit gets 0.
//! * If every logit is `-inf`/NaN there is no distribution: sampling returns id 0 with
//!   `prob` 1 and `logprob` `-inf`.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::error::{Error, Result};
use crate::nn::fast::exp_or_zero;

/// Ranges of tokens at most this long are sorted outright in the nucleus search.
const NUCLEUS_SORT_LEN: usize = 32;

/// Sampling parameters.
///
/// * `temperature`: divides the logits before the softmax; 0 means greedy (argmax).
/// * `top_k`: keep only the k most probable tokens (`None`: all; k >= V: all).
/// * `top_p`: nucleus sampling, keep the smallest set of most probable tokens whose
///   cumulative probability is >= `top_p` (1.0: off). Applied after top-k, on the
///   renormalised remainder.
/// * `min_p`: keep only tokens whose probability (after temperature) is at least `min_p`
///   times the most probable token's (0: off). Applied before top-k and top-p.
/// * `repetition_penalty` (1: off) over the last `repetition_window` tokens of the context,
///   `frequency_penalty` and `presence_penalty` (0: off) over the generated tokens; see the
///   module docs.
/// * `valid_utf8` (on by default): for byte-level BPE models, never sample a token that would
///   make the output invalid UTF-8 (no U+FFFD in the text); no effect for char and word
///   models.
///
/// [`SamplingParams::validate`] rejects bad values. The [`Sampler`] itself never panics on
/// them: a negative or NaN temperature acts as 0, `top_k == Some(0)` acts as 1, `top_p <= 0`
/// keeps only the most probable token and a NaN `top_p` is off; a NaN or non-positive
/// repetition penalty, NaN penalties and a NaN `min_p` are off.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature, >= 0 and finite; 0 means argmax.
    pub temperature: f32,
    /// Keep only the k most probable tokens; `None` keeps all. Must not be `Some(0)`.
    pub top_k: Option<usize>,
    /// Nucleus threshold in (0, 1]; 1.0 disables top-p.
    pub top_p: f32,
    /// Min-p threshold in [0, 1]; 0 disables it.
    #[serde(default)]
    pub min_p: f32,
    /// Repetition penalty, > 0 (1: off; above 1 discourages repeats, below 1 favours them).
    #[serde(default = "one")]
    pub repetition_penalty: f32,
    /// How many of the latest context tokens the repetition penalty looks at, >= 1.
    #[serde(default = "default_window")]
    pub repetition_window: usize,
    /// Frequency penalty in [-2, 2] (0: off).
    #[serde(default)]
    pub frequency_penalty: f32,
    /// Presence penalty in [-2, 2] (0: off).
    #[serde(default)]
    pub presence_penalty: f32,
    /// Only sample tokens that keep a byte-level BPE model's output valid UTF-8.
    #[serde(default = "on")]
    pub valid_utf8: bool,
}

fn one() -> f32 {
    1.0
}

fn default_window() -> usize {
    DEFAULT_REPETITION_WINDOW
}

/// Tokens the repetition penalty looks back over unless told otherwise.
pub const DEFAULT_REPETITION_WINDOW: usize = 64;
/// Largest repetition window.
pub const MAX_REPETITION_WINDOW: usize = 1 << 20;
/// Largest absolute frequency or presence penalty (OpenAI's range).
pub const MAX_PENALTY: f32 = 2.0;

/// `valid_utf8`'s default when a serialised value leaves it out.
fn on() -> bool {
    true
}

impl Default for SamplingParams {
    /// Temperature 0.8, no top-k, no top-p, every other control off.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repetition_window: DEFAULT_REPETITION_WINDOW,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            valid_utf8: true,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: temperature 0, no filtering.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether any control that edits the logits (penalties) is on.
    fn penalises(&self) -> bool {
        let r = self.repetition_penalty;
        (r > 0.0 && r != 1.0) || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0
    }

    /// Check the parameters: temperature must be finite and >= 0, `top_k` must not be
    /// `Some(0)`, `top_p` must lie in (0, 1], `min_p` in [0, 1], the repetition penalty must
    /// be finite and > 0 with a window of 1 to [`MAX_REPETITION_WINDOW`] tokens, the
    /// frequency and presence penalties in [-2, 2].
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if t.is_nan() || t < 0.0 || t.is_infinite() {
            return Err(Error::config(
                "temperature",
                format!("{t} (must be a finite number >= 0; 0 means greedy)"),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::config(
                "top-k",
                "0 (must be >= 1; leave it unset to keep all tokens)",
            ));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::config(
                "top-p",
                format!("{p} (must be in (0, 1]; 1 disables nucleus sampling)"),
            ));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(Error::config(
                "min-p",
                format!("{m} (must be in [0, 1]; 0 disables min-p)"),
            ));
        }
        let r = self.repetition_penalty;
        if !(r > 0.0 && r.is_finite()) {
            return Err(Error::config(
                "repetition-penalty",
                format!("{r} (must be a finite number > 0; 1 disables it)"),
            ));
        }
        let w = self.repetition_window;
        if !(1..=MAX_REPETITION_WINDOW).contains(&w) {
            return Err(Error::config(
                "repetition-window",
                format!("{w} (must be 1 to {MAX_REPETITION_WINDOW} tokens)"),
            ));
        }
        for (name, v) in [
            ("frequency-penalty", self.frequency_penalty),
            ("presence-penalty", self.presence_penalty),
        ] {
            if !(-MAX_PENALTY..=MAX_PENALTY).contains(&v) {
                return Err(Error::config(
                    name,
                    format!("{v} (must be in [-2, 2]; 0 disables it)"),
                ));
            }
        }
        Ok(())
    }
}

/// One sampled token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    /// Token id, in `0..V`.
    pub id: u32,
    /// Probability under the distribution actually sampled from (after temperature, top-k
    /// and top-p, renormalised). 1 for greedy decoding.
    pub prob: f32,
    /// Natural-log probability under the model's own softmax (temperature 1, unfiltered).
    pub logprob: f32,
}

/// Seeded token sampler with reusable scratch buffers (no heap allocation per call once the
/// buffers have grown to V).
///
/// Every call with temperature > 0 draws exactly one `f64` from the generator; greedy calls
/// (temperature 0) draw nothing. Same seed and same sequence of logits and parameters give
/// the same ids.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Pcg64Mcg,
    /// Unnormalised probabilities `exp((x - max) / temperature)`, length V.
    probs: Vec<f32>,
    /// Mass of each block of [`BLOCK`] consecutive tokens, length ceil(V / BLOCK).
    blocks: Vec<f64>,
    /// Candidates for top-k/top-p as packed [`key`]s (probability and id), length <= V.
    keys: Vec<u64>,
    /// The context for the penalties: the prompt, then every sampled token.
    history: Vec<u32>,
    /// How many tokens of `history` are the prompt.
    n_prompt: usize,
    /// How often each generated token occurs (grown to V when first needed), for the
    /// frequency and presence penalties, and the distinct generated tokens in order of first
    /// appearance; they cover `history[n_prompt..counted]`.
    counts: Vec<u32>,
    seen: Vec<u32>,
    counted: usize,
    /// The logits after the penalties and the ban list, length V.
    adjusted: Vec<f32>,
}

impl Sampler {
    /// A sampler with the given parameters and RNG seed.
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self {
            params,
            rng: Pcg64Mcg::seed_from_u64(seed),
            probs: Vec::new(),
            keys: Vec::new(),
            blocks: Vec::new(),
            history: Vec::new(),
            n_prompt: 0,
            counts: Vec::new(),
            seen: Vec::new(),
            counted: 0,
            adjusted: Vec::new(),
        }
    }

    /// Sets the context the penalties start from (the prompt), forgetting all history. The
    /// repetition penalty looks at the prompt too; the frequency and presence penalties only at
    /// the tokens sampled afterwards.
    pub fn set_context(&mut self, prompt: &[u32]) {
        self.history.clear();
        self.history.extend_from_slice(prompt);
        self.n_prompt = prompt.len();
        self.seen.iter().for_each(|&t| self.counts[t as usize] = 0);
        self.seen.clear();
        self.counted = self.n_prompt;
    }

    /// The current parameters.
    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// Replace the parameters; takes effect at the next [`Sampler::sample`] call.
    pub fn set_params(&mut self, params: SamplingParams) {
        self.params = params;
    }

    /// Restart the random stream from `seed` (as if freshly built with it).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Pcg64Mcg::seed_from_u64(seed);
    }

    /// The generator state as a JSON string, for saving a session and resuming it exactly
    /// with [`Sampler::restore_rng_state`].
    pub fn rng_state(&self) -> String {
        // Serialising two plain integers into a String cannot fail.
        serde_json::to_string(&self.rng).unwrap_or_default()
    }

    /// Restore a generator state produced by [`Sampler::rng_state`].
    pub fn restore_rng_state(&mut self, state: &str) -> Result<()> {
        self.rng = serde_json::from_str(state)
            .map_err(|e| Error::config("sampler rng state", e.to_string()))?;
        Ok(())
    }

    /// Sample one token id from one row of logits (length V), with the penalties of the
    /// parameters applied; the token joins the sampler's history.
    ///
    /// Temperature 0 (or negative/NaN) returns the argmax (ties: lowest id) and consumes no
    /// randomness. Otherwise: softmax(logits / temperature), then min-p, then top-k, then
    /// top-p on the renormalised rest, then one uniform draw walked along the cumulative
    /// distribution.
    /// Empty logits give id 0 with `prob` 0 and `logprob` `-inf`; all `-inf`/NaN logits give
    /// id 0 with `prob` 1 and `logprob` `-inf` (see the module docs).
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        self.sample_banning(logits, &[])
    }

    /// [`Sampler::sample`] with the tokens of `banned` excluded (given `-inf` logits). When
    /// every token is banned or `-inf` there is no distribution (see the module docs).
    pub fn sample_banning(&mut self, logits: &[f32], banned: &[u32]) -> Sampled {
        let s = if banned.is_empty() && !self.params.penalises() {
            self.sample_row(logits)
        } else {
            if self.params.frequency_penalty != 0.0 || self.params.presence_penalty != 0.0 {
                self.count_generated(logits.len());
            }
            let mut adjusted = std::mem::take(&mut self.adjusted);
            self.adjust(logits, banned, &mut adjusted);
            let mut s = self.sample_row(&adjusted);
            self.adjusted = adjusted;
            s.logprob = log_prob(logits, s.id);
            s
        };
        self.history.push(s.id);
        s
    }

    /// `out` = `logits` with the repetition, frequency and presence penalties applied and
    /// the banned tokens at `-inf`. Generated tokens not yet in `counts` (the last sampled
    /// one, or all since the penalties were off) are counted on the fly.
    fn adjust(&self, logits: &[f32], banned: &[u32], out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(logits);
        let p = self.params;
        let r = p.repetition_penalty;
        if r > 0.0 && r != 1.0 {
            let from = self.history.len().saturating_sub(p.repetition_window);
            for &t in &self.history[from..] {
                // From the original logit, so a token seen twice is penalised once.
                if let Some(&x) = logits.get(t as usize) {
                    out[t as usize] = if x > 0.0 { x / r } else { x * r };
                }
            }
        }
        let off_if_nan = |x: f32| if x.is_nan() { 0.0 } else { x };
        let (f, pr) = (
            off_if_nan(p.frequency_penalty),
            off_if_nan(p.presence_penalty),
        );
        if f != 0.0 || pr != 0.0 {
            let fresh = &self.history[self.counted.max(self.n_prompt)..];
            let counted = |t: u32| self.counts.get(t as usize).copied().unwrap_or(0);
            let in_fresh = |t: u32| fresh.iter().filter(|&&x| x == t).count() as u32;
            let mut penalise = |t: u32, c: u32| {
                if let Some(x) = out.get_mut(t as usize) {
                    *x -= f * c as f32 + pr;
                }
            };
            for &t in &self.seen {
                penalise(t, counted(t) + in_fresh(t));
            }
            for (i, &t) in fresh.iter().enumerate() {
                if counted(t) == 0 && !fresh[..i].contains(&t) {
                    penalise(t, in_fresh(t));
                }
            }
        }
        for &t in banned {
            if let Some(x) = out.get_mut(t as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
    }

    /// The logits the next [`Sampler::sample_banning`] would sample from, penalties and
    /// `banned` applied, without changing the sampler (for showing the distribution); `None`
    /// when nothing would change them.
    pub fn preview_adjusted(&self, logits: &[f32], banned: &[u32]) -> Option<Vec<f32>> {
        if banned.is_empty() && !self.params.penalises() {
            return None;
        }
        let mut out = Vec::with_capacity(logits.len());
        self.adjust(logits, banned, &mut out);
        Some(out)
    }

    /// Brings `counts` and `seen` up to date with the generated tokens.
    fn count_generated(&mut self, v: usize) {
        // Only the tokens not counted yet: the history can be long.
        let fresh = &self.history[self.counted..];
        let need = v.max(fresh.iter().map(|&t| t as usize + 1).max().unwrap_or(0));
        if self.counts.len() < need {
            self.counts.resize(need, 0);
        }
        for &t in &self.history[self.counted..] {
            let c = &mut self.counts[t as usize];
            if *c == 0 {
                self.seen.push(t);
            }
            *c += 1;
        }
        self.counted = self.history.len();
    }

    /// Samples from one row as it is (no penalties, no history).
    fn sample_row(&mut self, logits: &[f32]) -> Sampled {
        let v = logits.len();
        if v == 0 {
            return Sampled {
                id: 0,
                prob: 0.0,
                logprob: f32::NEG_INFINITY,
            };
        }
        let (amax, m) = argmax(logits);
        let t = self.params.temperature;
        // Greedy: temperature 0, or an invalid (negative/NaN) one.
        if t.is_nan() || t <= 0.0 {
            return Sampled {
                id: amax as u32,
                prob: 1.0,
                logprob: log_prob_with_max(logits, amax, m),
            };
        }
        let r: f64 = self.rng.random();
        if m == f32::NEG_INFINITY {
            return Sampled {
                id: 0,
                prob: 1.0,
                logprob: f32::NEG_INFINITY,
            };
        }

        // Unnormalised tempered probabilities (vectorised exp), their per-block and total
        // mass, and the temperature-1 partition sum for the logprob (shared when t == 1).
        tempered_exp(logits, m, t, &mut self.probs);
        let min_p_on = self.params.min_p > 0.0;
        if min_p_on {
            // The top token's tempered probability is probs[amax] (1 for a finite maximum).
            let floor = self.params.min_p * self.probs[amax];
            self.probs.iter_mut().for_each(|p| {
                if *p < floor {
                    *p = 0.0
                }
            });
        }
        let s_t = block_sums(&self.probs, &mut self.blocks);
        let s_1 = if t == 1.0 && !min_p_on {
            s_t
        } else {
            partition_sum(logits, m)
        };
        let ln_z1 = s_1.ln() as f32;

        let (k, nucleus) = effective_filter(&self.params, v);
        let probs = &self.probs;
        let (id, total) = if k == v && !nucleus {
            // No filtering: walk the block sums, then inside one block; no sort, no index.
            (walk_blocks(r * s_t, probs, &self.blocks, amax), s_t)
        } else {
            let top_p = self.params.top_p as f64;
            let (n, total) = filter_candidates(probs, k, nucleus, top_p, &mut self.keys);
            let items = self.keys[..n]
                .iter()
                .map(|&c| (key_id(c) as usize, key_p(c)));
            (walk(r * total, items, amax), total)
        };
        Sampled {
            id: id as u32,
            prob: (probs[id] as f64 / total) as f32,
            logprob: shift(logits[id], m) - ln_z1,
        }
    }
}

/// The n most probable tokens under softmax(logits / temperature), sorted by probability
/// descending (ties: lowest id first), as `(id, prob)`. For display: temperature 0 (and any
/// non-positive or NaN temperature) is treated as 1. Returns fewer than n pairs when V < n,
/// and nothing when all logits are `-inf`/NaN.
pub fn top_n(logits: &[f32], temperature: f32, n: usize) -> Vec<(u32, f32)> {
    let (_, m) = argmax(logits);
    if logits.is_empty() || n == 0 || m == f32::NEG_INFINITY {
        return Vec::new();
    }
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let mut probs = Vec::new();
    tempered_exp(logits, m, t, &mut probs);
    let z = block_sums(&probs, &mut Vec::new());
    let mut keys: Vec<u64> = probs
        .iter()
        .enumerate()
        .map(|(i, &p)| key(p, i as u32))
        .collect();
    let n = n.min(keys.len());
    if n < keys.len() {
        keys.select_nth_unstable_by(n - 1, desc);
        keys.truncate(n);
    }
    keys.sort_unstable_by(desc);
    keys.into_iter()
        .map(|c| (key_id(c), (key_p(c) as f64 / z) as f32))
        .collect()
}

/// ln p(id) under softmax(logits), computed stably. NaN logits count as `-inf`. Returns
/// `-inf` when `id` is out of range or all logits are `-inf`/NaN.
pub fn log_prob(logits: &[f32], id: u32) -> f32 {
    if id as usize >= logits.len() {
        return f32::NEG_INFINITY;
    }
    let (_, m) = argmax(logits);
    log_prob_with_max(logits, id as usize, m)
}

/// Index of the largest logit (ties: lowest id; NaN counts as `-inf`) and its value.
/// Returns `(0, -inf)` when there is no finite-or-`+inf` logit.
fn argmax(logits: &[f32]) -> (usize, f32) {
    let mut best = 0;
    let mut m = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if x > m {
            m = x;
            best = i;
        }
    }
    (best, m)
}

/// `x - m` for a logit x and the row maximum m, with NaN as `-inf` and the `+inf` maximum
/// case handled (every `+inf` logit becomes 0, everything else `-inf`).
#[inline]
fn shift(x: f32, m: f32) -> f32 {
    if m == f32::INFINITY {
        if x == f32::INFINITY {
            0.0
        } else {
            f32::NEG_INFINITY
        }
    } else if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x - m
    }
}

/// `exp(d / t)` for a shifted logit d <= 0 and temperature t > 0; exactly 0 for d = `-inf`
/// (also when t is `+inf`, where `-inf / inf` would be NaN).
#[inline]
fn exp_shifted(d: f32, t: f32) -> f32 {
    if d == f32::NEG_INFINITY {
        0.0
    } else {
        (d / t).exp()
    }
}

/// ln softmax(logits)[id] given the row maximum m (from [`argmax`]).
fn log_prob_with_max(logits: &[f32], id: usize, m: f32) -> f32 {
    if m == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    shift(logits[id], m) - partition_sum(logits, m).ln() as f32
}

/// Pack an unnormalised probability p >= 0 (not NaN) and a token id into one `u64` such
/// that sorting keys in *descending* integer order sorts by probability descending, ties
/// by lowest id first (a total order, so selections and sorts have one well-defined answer,
/// with no lookups in the comparator). Non-negative f32 bit patterns order like the values.
#[inline]
fn key(p: f32, id: u32) -> u64 {
    ((p.to_bits() as u64) << 32) | (u32::MAX - id) as u64
}

/// The probability packed in a [`key`].
#[inline]
fn key_p(k: u64) -> f32 {
    f32::from_bits((k >> 32) as u32)
}

/// The token id packed in a [`key`].
#[inline]
fn key_id(k: u64) -> u32 {
    u32::MAX - k as u32
}

/// Total probability mass of packed candidates.
fn key_mass(keys: &[u64]) -> f64 {
    keys.iter().map(|&k| key_p(k) as f64).sum()
}

/// Effective `(k, nucleus_on)` for V tokens, mapping invalid values to their documented
/// meaning (top_k 0 acts as 1; top_p <= 0 keeps only the top token; NaN top_p is off).
fn effective_filter(p: &SamplingParams, v: usize) -> (usize, bool) {
    let mut k = p.top_k.map_or(v, |k| k.clamp(1, v));
    let mut nucleus = p.top_p < 1.0;
    if p.top_p <= 0.0 {
        k = 1;
        nucleus = false;
    }
    if k == 1 {
        nucleus = false;
    }
    (k, nucleus)
}

/// Tokens per block in the two-level cumulative walk.
const BLOCK: usize = 64;

/// Fill `out` (length V) with the unnormalised probabilities exp((x - m) / t) of a logits
/// row whose maximum (NaN as `-inf`) is m, m not `-inf`, t > 0.
fn tempered_exp(logits: &[f32], m: f32, t: f32, out: &mut Vec<f32>) {
    out.clear();
    out.resize(logits.len(), 0.0);
    if m.is_finite() {
        // NaN and -inf logits give NaN or -inf arguments, which fast_exp maps to 0.
        for (o, &x) in out.iter_mut().zip(logits) {
            *o = exp_or_zero((x - m) / t);
        }
    } else {
        for (o, &x) in out.iter_mut().zip(logits) {
            *o = exp_shifted(shift(x, m), t);
        }
    }
}

/// sum exp(x - m) over a logits row with maximum m (not `-inf`), in f64.
fn partition_sum(logits: &[f32], m: f32) -> f64 {
    if !m.is_finite() {
        return logits
            .iter()
            .map(|&x| exp_shifted(shift(x, m), 1.0) as f64)
            .sum();
    }
    // exp into a stack block first: a plain map vectorises, a fused exp-and-sum does not.
    let mut buf = [0f32; BLOCK];
    let mut total = 0.0;
    for c in logits.chunks(BLOCK) {
        let b = &mut buf[..c.len()];
        for (o, &x) in b.iter_mut().zip(c) {
            *o = exp_or_zero(x - m);
        }
        total += sum_block(b);
    }
    total
}

/// Sum of at most [`BLOCK`] values in 8 independent f32 lanes (SIMD at opt-level 3), as
/// f64. Relative error at most a few 1e-6; the block sums themselves add up in f64.
#[inline(always)]
fn sum_block(c: &[f32]) -> f64 {
    let mut acc = [0f32; 8];
    let mut it = c.chunks_exact(8);
    for c8 in &mut it {
        for (a, &x) in acc.iter_mut().zip(c8) {
            *a += x;
        }
    }
    let rest: f32 = it.remainder().iter().sum();
    (acc.iter().sum::<f32>() + rest) as f64
}

/// Sum `probs`, writing the sum of each block of [`BLOCK`] tokens to `blocks`.
/// Returns the total.
fn block_sums(probs: &[f32], blocks: &mut Vec<f64>) -> f64 {
    blocks.clear();
    blocks.extend(probs.chunks(BLOCK).map(sum_block));
    blocks.iter().sum()
}

/// Two-level cumulative walk: find the block where the running block mass first exceeds u
/// (u in [0, total)), then walk inside it. Rounding can leave u past every block: then the
/// last positive-mass token is returned (`fallback` if none has any).
fn walk_blocks(u: f64, probs: &[f32], blocks: &[f64], fallback: usize) -> usize {
    let mut acc = 0.0f64;
    let mut last_block = None;
    for (b, &mass) in blocks.iter().enumerate() {
        if mass > 0.0 {
            last_block = Some(b);
            if u < acc + mass {
                let start = b * BLOCK;
                let inner = probs[start..].iter().take(BLOCK).copied();
                let items = inner.enumerate().map(|(i, p)| (start + i, p));
                return walk(u - acc, items, fallback);
            }
            acc += mass;
        }
    }
    match last_block {
        Some(b) => {
            let start = b * BLOCK;
            let inner = probs[start..].iter().take(BLOCK).copied();
            // u past the end: the walk returns the block's last positive token.
            walk(
                f64::INFINITY,
                inner.enumerate().map(|(i, p)| (start + i, p)),
                fallback,
            )
        }
        None => fallback,
    }
}

/// Below this V the candidate filter skips the radix histogram (zeroing it would cost more
/// than it saves).
const RADIX_MIN_V: usize = 512;

/// Radix buckets for the candidate filter are the top 12 bits of an f32 (sign, exponent,
/// 3 mantissa bits): for p in [0, 1] that is 1017 buckets, 8 per octave.
const RADIX_SHIFT: u32 = 20;

/// Number of radix buckets: enough for every p in [0, 1].
const N_BUCKETS: usize = (0x3F80_0000 >> RADIX_SHIFT) + 1;

/// Radix bucket of an unnormalised probability p in [0, 1] (larger is more probable;
/// anything above 1 shares the top bucket). Monotone: a larger p never gets a smaller
/// bucket, so the tokens of the top buckets are always a prefix of the probability order.
#[inline]
fn bucket(p: f32) -> usize {
    ((p.to_bits() >> RADIX_SHIFT) as usize).min(N_BUCKETS - 1)
}

/// Sort order of packed [`key`]s: most probable first, ties by lowest id.
#[inline]
fn desc(a: &u64, b: &u64) -> std::cmp::Ordering {
    b.cmp(a)
}

/// Apply top-k (when k < V) and then top-p (when `nucleus`) to unnormalised probabilities
/// `probs` (in [0, 1], V >= 1). Leaves the surviving candidates as packed [`key`]s in
/// `keys[..n]` and returns `(n, their total mass)`.
///
/// For large V a radix histogram (count and mass per bucket) finds the boundary bucket where
/// the running count reaches k, or the running mass reaches the top-p target: every token in
/// a higher bucket is in, and only the boundary bucket's tokens need a selection or nucleus
/// search. Cost O(V) plus work on one bucket, never a full sort.
fn filter_candidates(
    probs: &[f32],
    k: usize,
    nucleus: bool,
    top_p: f64,
    keys: &mut Vec<u64>,
) -> (usize, f64) {
    let v = probs.len();
    keys.clear();
    // Full capacity up front: the candidate count varies per row, V bounds it.
    keys.reserve(v);
    if v <= RADIX_MIN_V {
        keys.extend(probs.iter().enumerate().map(|(i, &p)| key(p, i as u32)));
        if k < v {
            keys.select_nth_unstable_by(k - 1, desc);
        }
        let cand = &mut keys[..k];
        return if nucleus {
            let target = top_p * key_mass(cand);
            nucleus_prefix(cand, target)
        } else {
            (k, key_mass(cand))
        };
    }

    let mut counts = [0u32; N_BUCKETS];
    let mut mass = [0f64; N_BUCKETS];
    if k < v {
        // Top-k picks its boundary by count alone.
        for &p in probs {
            counts[bucket(p)] += 1;
        }
    } else {
        for &p in probs {
            let b = bucket(p);
            counts[b] += 1;
            mass[b] += p as f64;
        }
    }
    let target_p = top_p * mass.iter().sum::<f64>();
    // From the most probable bucket down: count and mass strictly above the boundary.
    let (mut n_above, mut m_above, mut boundary) = (0usize, 0.0f64, 0usize);
    for b in (0..N_BUCKETS).rev() {
        let (c, w) = (counts[b] as usize, mass[b]);
        let reached = if k < v {
            n_above + c >= k
        } else {
            m_above + w >= target_p
        };
        // b == 0: only rounding can get here unreached; keep everything.
        if reached || b == 0 {
            boundary = b;
            break;
        }
        n_above += c;
        m_above += w;
    }
    // Tokens above the boundary first (in id order), then the boundary bucket's tokens.
    let n_b = counts[boundary] as usize;
    keys.resize(n_above + n_b, 0);
    let (mut ia, mut ib) = (0, n_above);
    for (i, &p) in probs.iter().enumerate() {
        let b = bucket(p);
        if b > boundary {
            keys[ia] = key(p, i as u32);
            ia += 1;
        } else if b == boundary {
            keys[ib] = key(p, i as u32);
            ib += 1;
        }
    }

    if k < v {
        // Top-k: all of the above, plus the best (k - n_above) of the boundary bucket.
        let need = k - n_above;
        if n_b > need {
            keys[n_above..].select_nth_unstable_by(need - 1, desc);
        }
        let cand = &mut keys[..k];
        if nucleus {
            let target = top_p * key_mass(cand);
            nucleus_prefix(cand, target)
        } else {
            (k, key_mass(cand))
        }
    } else {
        // Top-p alone: all of the above, plus the nucleus of the boundary bucket for the
        // mass still missing.
        let (n, m) = nucleus_prefix(&mut keys[n_above..], target_p - m_above);
        (n_above + n, m_above + m)
    }
}

/// Walk `(id, unnormalised prob)` pairs, returning the first id whose cumulative mass
/// exceeds `u` (u in [0, total)). Rounding can leave u past the last bucket: then the last
/// id with positive mass is returned (`fallback` if none has any).
#[inline]
fn walk(u: f64, items: impl Iterator<Item = (usize, f32)>, fallback: usize) -> usize {
    let mut acc = 0.0f64;
    let mut last = fallback;
    for (i, p) in items {
        if p > 0.0 {
            acc += p as f64;
            last = i;
            if u < acc {
                return i;
            }
        }
    }
    last
}

/// Nucleus (top-p) search over packed candidates (see [`key`]).
///
/// Reorders `cand` so that its first n entries are the smallest set of most probable
/// candidates whose mass is >= `target` (at least one; all of them if their whole mass
/// falls short, which only rounding can cause), and returns `(n, mass of those n)`.
/// `cand` must hold a prefix of the probability order (e.g. all tokens, or the top k).
/// Works by repeated halving with `select_nth_unstable_by` (expected O(len)), sorting only
/// the final short range.
fn nucleus_prefix(cand: &mut [u64], target: f64) -> (usize, f64) {
    // Invariant: cand[..lo] are the lo most probable (in some order), with mass acc < target,
    // and the answer n lies in (lo, hi].
    let (mut lo, mut hi, mut acc) = (0usize, cand.len(), 0.0f64);
    while hi - lo > NUCLEUS_SORT_LEN {
        let mid = lo + (hi - lo) / 2;
        cand[lo..hi].select_nth_unstable_by(mid - lo, desc);
        let upper = key_mass(&cand[lo..mid]);
        if acc + upper >= target {
            hi = mid;
        } else {
            acc += upper;
            lo = mid;
        }
    }
    cand[lo..hi].sort_unstable_by(desc);
    for (j, &c) in cand.iter().enumerate().take(hi).skip(lo) {
        acc += key_p(c) as f64;
        if acc >= target {
            return (j + 1, acc);
        }
    }
    // Only reachable through rounding: keep the whole range.
    (hi, acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random logits in roughly [-scale, scale].
    fn rand_logits(v: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        (0..v)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
            .collect()
    }

    fn softmax(logits: &[f32], t: f32) -> Vec<f64> {
        let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = logits
            .iter()
            .map(|&x| ((x as f64 - m) / t as f64).exp())
            .collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect()
    }

    fn params(temperature: f32, top_k: Option<usize>, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            ..SamplingParams::default()
        }
    }

    /// Indices sorted by probability descending, ties by id (reference for filters).
    fn sorted_ids(logits: &[f32]) -> Vec<usize> {
        let mut ids: Vec<usize> = (0..logits.len()).collect();
        ids.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        ids
    }

    #[test]
    fn same_seed_same_ids_different_seed_differs() {
        let rows: Vec<Vec<f32>> = (0..200).map(|s| rand_logits(65, s, 3.0)).collect();
        for p in [
            params(0.8, None, 1.0),
            params(1.0, Some(10), 1.0),
            params(1.3, None, 0.9),
        ] {
            let run = |seed| {
                let mut s = Sampler::new(p, seed);
                rows.iter().map(|r| s.sample(r).id).collect::<Vec<_>>()
            };
            assert_eq!(run(7), run(7));
            assert_ne!(run(7), run(8));
        }
        // reseed restarts the stream.
        let mut s = Sampler::new(params(1.0, None, 1.0), 3);
        let a: Vec<u32> = rows.iter().map(|r| s.sample(r).id).collect();
        s.reseed(3);
        let b: Vec<u32> = rows.iter().map(|r| s.sample(r).id).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn rng_state_roundtrip_resumes_stream() {
        let rows: Vec<Vec<f32>> = (0..50).map(|s| rand_logits(100, s, 2.0)).collect();
        let mut s = Sampler::new(SamplingParams::default(), 11);
        for r in &rows[..10] {
            s.sample(r);
        }
        let state = s.rng_state();
        let rest: Vec<u32> = rows[10..].iter().map(|r| s.sample(r).id).collect();
        let mut t = Sampler::new(SamplingParams::default(), 999);
        t.restore_rng_state(&state).unwrap();
        let again: Vec<u32> = rows[10..].iter().map(|r| t.sample(r).id).collect();
        assert_eq!(rest, again);
        assert!(t.restore_rng_state("not json").is_err());
    }

    #[test]
    fn temperature_zero_is_argmax_and_uses_no_randomness() {
        let mut greedy = Sampler::new(SamplingParams::greedy(), 1);
        for seed in 0..100 {
            let l = rand_logits(1 + (seed as usize * 37) % 500, seed, 5.0);
            let want = sorted_ids(&l)[0];
            let got = greedy.sample(&l);
            assert_eq!(got.id as usize, want);
            assert_eq!(got.prob, 1.0);
        }
        // Ties go to the lowest id.
        assert_eq!(greedy.sample(&[1.0, 3.0, 3.0, 2.0]).id, 1);
        // No randomness consumed: interleaving greedy calls does not change the stream.
        let rows: Vec<Vec<f32>> = (0..30).map(|s| rand_logits(50, s, 2.0)).collect();
        let mut a = Sampler::new(params(1.0, None, 1.0), 5);
        let ids_a: Vec<u32> = rows.iter().map(|r| a.sample(r).id).collect();
        let mut b = Sampler::new(params(1.0, None, 1.0), 5);
        let mut ids_b = Vec::new();
        for r in &rows {
            b.set_params(SamplingParams::greedy());
            b.sample(r);
            b.set_params(params(1.0, None, 1.0));
            ids_b.push(b.sample(r).id);
        }
        assert_eq!(ids_a, ids_b);
    }

    #[test]
    fn top_k_never_outside_k_largest() {
        let l = rand_logits(300, 42, 1.0); // flat-ish, so many tokens are plausible
        let k = 7;
        let allowed: Vec<usize> = sorted_ids(&l)[..k].to_vec();
        let mut s = Sampler::new(params(1.5, Some(k), 1.0), 9);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let x = s.sample(&l);
            assert!(
                allowed.contains(&(x.id as usize)),
                "id {} outside top-k",
                x.id
            );
            seen.insert(x.id);
        }
        assert_eq!(
            seen.len(),
            k,
            "all k candidates should appear in 2000 draws"
        );
        // k >= V keeps everything: same stream as no top-k.
        let mut a = Sampler::new(params(1.0, Some(1000), 1.0), 4);
        let mut b = Sampler::new(params(1.0, None, 1.0), 4);
        for _ in 0..200 {
            assert_eq!(a.sample(&l), b.sample(&l));
        }
    }

    #[test]
    fn top_p_never_outside_nucleus() {
        let l = rand_logits(500, 17, 4.0);
        for top_p in [0.3f32, 0.75, 0.95] {
            // Reference nucleus from a full sort.
            let p = softmax(&l, 1.0);
            let ids = sorted_ids(&l);
            let mut cum = 0.0;
            let mut n = 0;
            while cum < top_p as f64 {
                cum += p[ids[n]];
                n += 1;
            }
            let allowed: std::collections::HashSet<u32> =
                ids[..n].iter().map(|&i| i as u32).collect();
            let mut s = Sampler::new(params(1.0, None, top_p), 21);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..2000 {
                let x = s.sample(&l);
                assert!(
                    allowed.contains(&x.id),
                    "top_p {top_p}: id {} outside",
                    x.id
                );
                // prob is renormalised over the nucleus.
                let want = p[x.id as usize] / cum;
                assert!((x.prob as f64 - want).abs() < 1e-4 * want.max(1e-3));
                seen.insert(x.id);
            }
            assert!(seen.len() > n / 2, "nucleus of {n} barely explored");
        }
    }

    #[test]
    fn nucleus_prefix_matches_full_sort() {
        for seed in 0..40u64 {
            let v = 1 + (seed as usize * 131) % 3000;
            let l = rand_logits(v, seed, 1.0 + seed as f32 * 0.3);
            let probs: Vec<f32> = l.iter().map(|&x| x.exp()).collect();
            let top_p = [0.01f32, 0.5, 0.9, 0.999][seed as usize % 4];
            let mut cand: Vec<u64> = (0..v).map(|i| key(probs[i], i as u32)).collect();
            let total: f64 = probs.iter().map(|&p| p as f64).sum();
            let (n, mass) = nucleus_prefix(&mut cand, top_p as f64 * total);
            let mut ids: Vec<u32> = (0..v as u32).collect();
            ids.sort_by(|&a, &b| {
                probs[b as usize]
                    .total_cmp(&probs[a as usize])
                    .then(a.cmp(&b))
            });
            let mut cum = 0.0;
            let mut want = 0;
            while want < v && cum < top_p as f64 * total {
                cum += probs[ids[want] as usize] as f64;
                want += 1;
            }
            assert_eq!(n, want, "seed {seed}");
            let mut got: Vec<u32> = cand[..n].iter().map(|&c| key_id(c)).collect();
            got.sort_unstable();
            let mut exp: Vec<u32> = ids[..want].to_vec();
            exp.sort_unstable();
            assert_eq!(got, exp, "seed {seed}");
            assert!((mass - cum).abs() < 1e-9 * total);
        }
    }

    #[test]
    fn walk_blocks_matches_plain_walk() {
        let mut rng = Pcg64Mcg::seed_from_u64(4);
        for v in [1usize, 63, 64, 65, 200, 1000] {
            let mut probs: Vec<f32> = (0..v).map(|_| rng.random::<f32>()).collect();
            // Zero whole blocks and single entries, as -inf logits do.
            probs.iter_mut().skip(64).take(64).for_each(|p| *p = 0.0);
            probs.iter_mut().step_by(7).for_each(|p| *p = 0.0);
            let mut blocks = Vec::new();
            let total = block_sums(&probs, &mut blocks);
            for j in 0..500 {
                let u = total * j as f64 / 500.0;
                let plain = walk(u, probs.iter().copied().enumerate(), 0);
                assert_eq!(walk_blocks(u, &probs, &blocks, 0), plain, "v {v} u {u}");
                assert!(probs[plain] > 0.0 || probs.iter().all(|&p| p == 0.0));
            }
            let last = (0..v).rev().find(|&i| probs[i] > 0.0).unwrap_or(0);
            assert_eq!(walk_blocks(total * 1.5, &probs, &blocks, 0), last);
        }
    }

    #[test]
    fn key_order_is_prob_desc_then_id_asc() {
        let items = [
            (0.5f32, 3u32),
            (0.5, 1),
            (1.0, 9),
            (0.0, 0),
            (1e-40, 2),
            (0.25, 7),
        ];
        let mut keys: Vec<u64> = items.iter().map(|&(p, i)| key(p, i)).collect();
        keys.sort_unstable_by(desc);
        let got: Vec<(f32, u32)> = keys.iter().map(|&k| (key_p(k), key_id(k))).collect();
        assert_eq!(
            got,
            vec![
                (1.0, 9),
                (0.5, 1),
                (0.5, 3),
                (0.25, 7),
                (1e-40, 2),
                (0.0, 0)
            ]
        );
        assert_eq!(key_id(key(0.3, u32::MAX)), u32::MAX);
    }

    #[test]
    fn bucket_is_monotone_and_in_range() {
        let mut rng = Pcg64Mcg::seed_from_u64(0);
        let mut ps: Vec<f32> = (0..2000)
            .map(|_| (-rng.random::<f32>() * 120.0).exp())
            .collect();
        ps.extend([
            0.0,
            1.0,
            0.5,
            0.25,
            f32::MIN_POSITIVE,
            1e-45,
            2.0,
            f32::INFINITY,
        ]);
        ps.sort_by(f32::total_cmp);
        assert!(ps.windows(2).all(|w| bucket(w[0]) <= bucket(w[1])));
        assert_eq!(bucket(1.0), N_BUCKETS - 1);
        assert_eq!(bucket(f32::INFINITY), N_BUCKETS - 1);
        assert_eq!(bucket(0.0), 0);
        // 8 buckets per octave.
        assert_eq!(bucket(0.5) + 8, bucket(1.0));
        assert!(bucket(0.5) == bucket(0.51) && bucket(0.51) < bucket(0.57));
    }

    #[test]
    fn filters_match_reference_on_wide_and_tied_logits() {
        for seed in 0..40u64 {
            let v = [65usize, 300, 2000, 10_000, 700][seed as usize % 5];
            let scale = [0.5f32, 5.0, 60.0, 400.0][seed as usize % 4];
            let mut l = rand_logits(v, seed, scale);
            if seed % 2 == 0 {
                // Coarse quantisation creates many ties.
                l.iter_mut().for_each(|x| *x = (*x * 4.0 / scale).round());
            }
            let t = [0.7f32, 1.0, 1.6][(seed as usize / 2) % 3];
            let (k, top_p) = match seed % 3 {
                0 => (Some(1 + seed as usize % 17), 1.0),
                1 => (None, [0.5f32, 0.9, 0.99][(seed as usize / 3) % 3]),
                _ => (Some(25), 0.8),
            };
            // Reference: full sort (ties by id), top-k, then top-p on the renormalised rest.
            let p = softmax(&l, t);
            let mut ids: Vec<usize> = (0..v).collect();
            ids.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            ids.truncate(k.unwrap_or(v).min(v));
            let kept: f64 = ids.iter().map(|&i| p[i]).sum();
            let mut cum = 0.0;
            let mut n = 0;
            while n < ids.len() && cum < top_p as f64 * kept {
                cum += p[ids[n]];
                n += 1;
            }
            let allowed = &ids[..n];
            let mut s = Sampler::new(params(t, k, top_p), seed);
            for _ in 0..200 {
                let x = s.sample(&l);
                let pos = allowed.iter().position(|&i| i == x.id as usize);
                assert!(
                    pos.is_some(),
                    "seed {seed}: id {} outside {allowed:?}",
                    x.id
                );
                let want = p[x.id as usize] / cum;
                assert!(
                    (x.prob as f64 - want).abs() < 1e-4 * want.max(1e-3),
                    "seed {seed}: prob {} want {want}",
                    x.prob
                );
            }
        }
    }

    #[test]
    fn top_k_then_top_p_combined() {
        // Probabilities (t=1) proportional to 8,4,2,1,1 (+ tiny rest).
        let l = [8f32.ln(), 4f32.ln(), 2f32.ln(), 0.0, 0.0, -30.0, -30.0];
        // top_k 4 -> {0,1,2,3} mass 15; top_p 0.78 -> {0} has 8/15 < 0.78, {0,1} has 0.8.
        // Top-p before top-k would see mass 16, where {0,1} is only 0.75, and keep id 2 too.
        let mut s = Sampler::new(params(1.0, Some(4), 0.78), 2);
        let mut counts = [0usize; 7];
        for _ in 0..3000 {
            let x = s.sample(&l);
            counts[x.id as usize] += 1;
            let want = [8.0 / 12.0, 4.0 / 12.0][x.id as usize];
            assert!((x.prob - want).abs() < 1e-5);
        }
        assert_eq!(counts[2..], [0; 5]);
        assert!(counts[0] > counts[1] && counts[1] > 0);
    }

    #[test]
    fn empirical_frequencies_match_softmax() {
        let l = rand_logits(20, 5, 2.0);
        let p = softmax(&l, 1.0);
        let draws = 20_000;
        let mut s = Sampler::new(params(1.0, None, 1.0), 1234);
        let mut counts = [0usize; 20];
        for _ in 0..draws {
            counts[s.sample(&l).id as usize] += 1;
        }
        let mut chi2 = 0.0;
        for i in 0..20 {
            let e = p[i] * draws as f64;
            chi2 += (counts[i] as f64 - e).powi(2) / e;
            assert!((counts[i] as f64 / draws as f64 - p[i]).abs() < 0.012);
        }
        // 19 degrees of freedom: P(chi2 > 43.8) = 0.001.
        assert!(chi2 < 43.8, "chi2 {chi2}");
    }

    /// Draws `n` samples of `l` from copies of `base` (same history), each reseeded, and
    /// returns the frequency of each id.
    fn frequencies(base: &Sampler, l: &[f32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; l.len()];
        for i in 0..n {
            let mut s = base.clone();
            s.reseed(i as u64);
            counts[s.sample(l).id as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    /// Asserts the empirical frequencies match `want` (chi-square at P = 0.001 over the
    /// tokens with positive probability; tokens with none never drawn).
    fn assert_matches(freq: &[f64], want: &[f64], n: usize) {
        let mut chi2 = 0.0;
        let mut tokens = 0;
        for (i, (&f, &w)) in freq.iter().zip(want).enumerate() {
            if w == 0.0 {
                assert_eq!(f, 0.0, "id {i} has probability 0 but was drawn");
                continue;
            }
            chi2 += (f - w).powi(2) * n as f64 / w;
            tokens += 1;
        }
        // Critical values of chi-square at P = 0.001 for 1..=9 degrees of freedom
        // (tokens - 1).
        let crit = [10.8, 13.8, 16.3, 18.5, 20.5, 22.5, 24.3, 26.1, 27.9][tokens - 2];
        assert!(
            chi2 < crit,
            "chi2 {chi2} over {tokens} tokens: {freq:?} vs {want:?}"
        );
    }

    /// Makes the sampler generate `ids` (one-hot rows), so they join its history.
    fn generate(s: &mut Sampler, v: usize, ids: &[u32]) {
        for &id in ids {
            let mut row = vec![-1e4f32; v];
            row[id as usize] = 1e4;
            assert_eq!(s.sample(&row).id, id);
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits_in_the_window() {
        let l = [2.0f32, 1.0, -1.0, 0.5, 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            repetition_penalty: 2.0,
            repetition_window: 3,
            ..SamplingParams::default()
        };
        let mut base = Sampler::new(p, 0);
        // Prompt [0, 2], then 2 is generated again and 3 too: the window of 3 is [2, 2, 3],
        // so 0 (outside it) is not penalised and 2 only once.
        base.set_context(&[0, 2]);
        generate(&mut base, 5, &[2, 3]);
        let n = 20_000;
        let want = softmax(&[2.0, 1.0, -2.0, 0.25, 0.0], 1.0);
        assert_matches(&frequencies(&base, &l, n), &want, n);
        // The logprob stays the model's own.
        let mut s = base.clone();
        let x = s.sample(&l);
        assert!((x.logprob - log_prob(&l, x.id)).abs() < 1e-6);
        assert!((x.prob as f64 - want[x.id as usize]).abs() < 1e-5);
        // A wider window reaches the prompt's 0; penalty 1 is off.
        let mut wide = base.clone();
        wide.set_params(SamplingParams {
            repetition_window: 4,
            ..p
        });
        let want = softmax(&[1.0, 1.0, -2.0, 0.25, 0.0], 1.0);
        assert_matches(&frequencies(&wide, &l, n), &want, n);
        let mut off = base.clone();
        off.set_params(SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        });
        assert_matches(&frequencies(&off, &l, n), &softmax(&l, 1.0), n);
    }

    #[test]
    fn frequency_and_presence_penalties_count_generated_tokens_only() {
        let l = [1.0f32, 1.0, 1.0, 1.0];
        let p = SamplingParams {
            temperature: 1.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..SamplingParams::default()
        };
        let mut base = Sampler::new(p, 0);
        // The prompt's 1 does not count; 0 was generated twice, 3 once.
        base.set_context(&[1, 1]);
        generate(&mut base, 4, &[0, 3, 0]);
        let n = 20_000;
        let want = softmax(&[1.0 - 1.0 - 0.25, 1.0, 1.0, 1.0 - 0.5 - 0.25], 1.0);
        assert_matches(&frequencies(&base, &l, n), &want, n);
        // Negative penalties favour what was generated; turned on late, they still count
        // every token generated since the start.
        let mut late = Sampler::new(SamplingParams::default(), 0);
        late.set_context(&[1, 1]);
        generate(&mut late, 4, &[0, 3, 0]);
        late.set_params(SamplingParams {
            temperature: 1.0,
            frequency_penalty: -0.5,
            presence_penalty: 0.0,
            ..SamplingParams::default()
        });
        let want = softmax(&[2.0, 1.0, 1.0, 1.5], 1.0);
        assert_matches(&frequencies(&late, &l, n), &want, n);
        // A new context forgets the counts.
        let mut fresh = base.clone();
        fresh.set_context(&[]);
        assert_matches(&frequencies(&fresh, &l, n), &softmax(&l, 1.0), n);
    }

    #[test]
    fn min_p_keeps_tokens_at_least_min_p_times_the_top_one() {
        // Probabilities proportional to 8, 4, 2, 1, 0.5 (t = 1).
        let l: Vec<f32> = [8f32, 4.0, 2.0, 1.0, 0.5].iter().map(|x| x.ln()).collect();
        let n = 20_000;
        for (min_p, t, want) in [
            // 0.2 * 8 = 1.6: keeps 8, 4, 2.
            (0.2f32, 1.0f32, vec![8.0, 4.0, 2.0, 0.0, 0.0]),
            // exactly at the threshold is kept: 0.125 * 8 = 1.
            (0.125, 1.0, vec![8.0, 4.0, 2.0, 1.0, 0.0]),
            // after temperature 0.5 the weights are 64, 16, 4, 1, .25: 0.05 * 64 = 3.2.
            (0.05, 0.5, vec![64.0, 16.0, 4.0, 0.0, 0.0]),
        ] {
            let total: f64 = want.iter().sum();
            let want: Vec<f64> = want.iter().map(|w| w / total).collect();
            let base = Sampler::new(
                SamplingParams {
                    temperature: t,
                    min_p,
                    ..SamplingParams::default()
                },
                0,
            );
            assert_matches(&frequencies(&base, &l, n), &want, n);
            let mut s = base.clone();
            for _ in 0..200 {
                let x = s.sample(&l);
                assert!((x.prob as f64 - want[x.id as usize]).abs() < 1e-5, "{x:?}");
                assert!((x.logprob - log_prob(&l, x.id)).abs() < 1e-5);
            }
        }
        // min-p 1 keeps only the top token (and ties with it).
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                min_p: 1.0,
                ..SamplingParams::default()
            },
            1,
        );
        assert!((0..100).all(|_| s.sample(&[0.0, 3.0, 3.0, 1.0]).id != 0));
    }

    #[test]
    fn banned_tokens_are_never_drawn_and_the_rest_keep_their_ratios() {
        let l = rand_logits(10, 4, 2.0);
        let banned = [0u32, 3, 7, 9];
        let mut want = softmax(&l, 1.0);
        banned.iter().for_each(|&b| want[b as usize] = 0.0);
        let total: f64 = want.iter().sum();
        want.iter_mut().for_each(|w| *w /= total);
        let n = 20_000;
        let mut counts = [0usize; 10];
        let mut s = Sampler::new(params(1.0, None, 1.0), 5);
        for _ in 0..n {
            let x = s.sample_banning(&l, &banned);
            counts[x.id as usize] += 1;
            assert!((x.logprob - log_prob(&l, x.id)).abs() < 1e-5);
        }
        let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
        assert_matches(&freq, &want, n);
        // Greedy skips a banned argmax; the history grew by one token per draw.
        let mut g = Sampler::new(SamplingParams::greedy(), 0);
        assert_eq!(g.sample_banning(&[5.0, 1.0, 4.0], &[0]).id, 2);
        assert_eq!(s.history.len(), n);
    }

    #[test]
    fn the_preview_shows_the_penalised_logits_without_touching_the_sampler() {
        let l = [1.0f32, 1.0, 1.0, 1.0];
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 0.5,
                ..SamplingParams::default()
            },
            0,
        );
        generate(&mut s, 4, &[2, 2]);
        let before = s.history.clone();
        assert_eq!(
            s.preview_adjusted(&l, &[0]).unwrap(),
            [f32::NEG_INFINITY, 1.0, 0.0, 1.0]
        );
        assert_eq!(s.history, before);
        let plain = Sampler::new(SamplingParams::default(), 0);
        assert!(plain.preview_adjusted(&l, &[]).is_none());
    }

    #[test]
    fn the_controls_at_their_defaults_change_nothing() {
        // Same seed, same rows: the default controls give exactly the plain sampler's ids,
        // probabilities and logprobs (the golden samples depend on it).
        let rows: Vec<Vec<f32>> = (0..300).map(|s| rand_logits(300, s, 4.0)).collect();
        for p in [params(0.8, None, 1.0), params(1.0, Some(20), 0.9)] {
            let mut a = Sampler::new(p, 3);
            let mut b = Sampler::new(p, 3);
            b.set_context(&[1, 2, 3]);
            for r in &rows {
                let x = a.sample_row(r);
                assert_eq!(x, b.sample(r));
            }
            assert!(
                b.adjusted.is_empty(),
                "no scratch row is used at the defaults"
            );
        }
    }

    #[test]
    fn penalties_survive_nan_and_odd_values_without_panicking() {
        for p in [
            SamplingParams {
                repetition_penalty: f32::NAN,
                frequency_penalty: f32::NAN,
                presence_penalty: f32::INFINITY,
                min_p: f32::NAN,
                ..SamplingParams::default()
            },
            SamplingParams {
                repetition_penalty: -1.0,
                repetition_window: 0,
                ..SamplingParams::default()
            },
            SamplingParams {
                repetition_penalty: f32::INFINITY,
                repetition_window: usize::MAX,
                min_p: 5.0,
                ..SamplingParams::default()
            },
        ] {
            let mut s = Sampler::new(p, 1);
            s.set_context(&[0, 7, 99]);
            for _ in 0..50 {
                assert!(s.sample(&[0.5, f32::NAN, 2.0, -1.0]).id < 4);
            }
        }
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let l = rand_logits(30, 8, 2.0);
        let top = sorted_ids(&l)[0] as u32;
        let freq_top = |t: f32| {
            let mut s = Sampler::new(params(t, None, 1.0), 77);
            (0..4000).filter(|_| s.sample(&l).id == top).count() as f64 / 4000.0
        };
        let (cold, warm, hot) = (freq_top(0.3), freq_top(1.0), freq_top(3.0));
        assert!(
            cold > warm + 0.1 && warm > hot + 0.02,
            "{cold} {warm} {hot}"
        );
        assert!((cold - softmax(&l, 0.3)[top as usize]).abs() < 0.03);
    }

    #[test]
    fn prob_and_logprob_against_hand_computation() {
        // logits ln(1), ln(2), ln(3), ln(4): model probs 0.1, 0.2, 0.3, 0.4.
        let l = [0.0f32, 2f32.ln(), 3f32.ln(), 4f32.ln()];
        let mut s = Sampler::new(params(0.5, None, 1.0), 3);
        // Temperature 0.5 squares the ratios: 1, 4, 9, 16 over 30.
        for _ in 0..200 {
            let x = s.sample(&l);
            let i = x.id as usize;
            let sq = [1.0f32, 4.0, 9.0, 16.0][i] / 30.0;
            assert!((x.prob - sq).abs() < 1e-6, "{x:?}");
            let lp = ((i + 1) as f32 / 10.0).ln();
            assert!((x.logprob - lp).abs() < 1e-5, "{x:?}");
        }
        let g = Sampler::new(SamplingParams::greedy(), 0).sample(&l);
        assert_eq!((g.id, g.prob), (3, 1.0));
        assert!((g.logprob - 0.4f32.ln()).abs() < 1e-6);
        assert!((log_prob(&l, 1) - 0.2f32.ln()).abs() < 1e-6);
        assert_eq!(log_prob(&l, 4), f32::NEG_INFINITY);
        // Stable for huge logits.
        assert!((log_prob(&[1000.0, 1000.0], 0) - 0.5f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn nan_and_infinite_logits_do_not_panic() {
        let mut s = Sampler::new(params(1.0, None, 0.9), 0);
        let l = [f32::NAN, 1.0, f32::NAN, 0.5];
        for _ in 0..200 {
            let x = s.sample(&l);
            assert!(x.id == 1 || x.id == 3);
            assert!(x.prob.is_finite() && x.logprob.is_finite());
        }
        assert_eq!(s.sample(&[f32::NAN, f32::NEG_INFINITY]).id, 0);
        assert_eq!(
            s.sample(&[f32::NAN; 3]).logprob,
            f32::NEG_INFINITY,
            "no distribution"
        );
        assert_eq!(s.sample(&[]).id, 0);
        let x = s.sample(&[0.0, f32::INFINITY, 3.0]);
        assert_eq!((x.id, x.prob, x.logprob), (1, 1.0, 0.0));
        let mut g = Sampler::new(SamplingParams::greedy(), 0);
        assert_eq!(g.sample(&[f32::NAN, -1.0, f32::NAN]).id, 1);
        assert_eq!(g.sample(&[f32::NAN, f32::NAN]).id, 0);
        assert!(top_n(&[f32::NAN; 4], 1.0, 2).is_empty());
        // Invalid params degrade instead of panicking.
        for p in [
            params(f32::NAN, None, 1.0),
            params(-1.0, None, 1.0),
            params(f32::INFINITY, Some(0), f32::NAN),
            params(1.0, None, 0.0),
        ] {
            let mut s = Sampler::new(p, 1);
            for _ in 0..20 {
                assert!(s.sample(&[0.1, 2.0, 0.3]).id < 3);
            }
        }
        // top_p <= 0 keeps only the top token.
        let mut s = Sampler::new(params(1.0, None, 0.0), 1);
        assert!((0..50).all(|_| s.sample(&[0.1, 2.0, 1.9]).id == 1));
    }

    #[test]
    fn scratch_buffers_are_reused() {
        // First call: a very peaked row (few top-p candidates); later: flat rows (many),
        // different filters, shorter rows. No buffer may move or grow after the first call.
        let mut s = Sampler::new(params(0.9, None, 0.9), 1);
        s.sample(&rand_logits(4000, 1, 400.0));
        let ptrs = |s: &Sampler| (s.probs.as_ptr(), s.keys.as_ptr(), s.blocks.as_ptr());
        let caps = |s: &Sampler| (s.probs.capacity(), s.keys.capacity(), s.blocks.capacity());
        let (p0, c0) = (ptrs(&s), caps(&s));
        for seed in 0..30u64 {
            let k = [None, Some(3000), Some(50)][seed as usize % 3];
            s.set_params(params(0.9, k, [0.999, 1.0][seed as usize % 2]));
            s.sample(&rand_logits(4000 - seed as usize * 10, seed, 0.5));
        }
        assert_eq!((ptrs(&s), caps(&s)), (p0, c0));
    }

    #[test]
    fn validate_rejects_bad_params() {
        assert!(SamplingParams::default().validate().is_ok());
        assert!(SamplingParams::greedy().validate().is_ok());
        assert!(params(1.0, Some(1), 1e-3).validate().is_ok());
        for (p, word) in [
            (params(-0.1, None, 1.0), "temperature"),
            (params(f32::NAN, None, 1.0), "temperature"),
            (params(f32::INFINITY, None, 1.0), "temperature"),
            (params(1.0, Some(0), 1.0), "top-k"),
            (params(1.0, None, 0.0), "top-p"),
            (params(1.0, None, 1.01), "top-p"),
            (params(1.0, None, f32::NAN), "top-p"),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(word), "{p:?}: {e}");
        }
        let d = SamplingParams::default();
        for (p, word) in [
            (SamplingParams { min_p: -0.1, ..d }, "min-p"),
            (SamplingParams { min_p: 1.5, ..d }, "min-p"),
            (
                SamplingParams {
                    min_p: f32::NAN,
                    ..d
                },
                "min-p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..d
                },
                "repetition-penalty",
            ),
            (
                SamplingParams {
                    repetition_penalty: f32::INFINITY,
                    ..d
                },
                "repetition-penalty",
            ),
            (
                SamplingParams {
                    repetition_window: 0,
                    ..d
                },
                "repetition-window",
            ),
            (
                SamplingParams {
                    repetition_window: MAX_REPETITION_WINDOW + 1,
                    ..d
                },
                "repetition-window",
            ),
            (
                SamplingParams {
                    frequency_penalty: 2.01,
                    ..d
                },
                "frequency-penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: -2.5,
                    ..d
                },
                "presence-penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: f32::NAN,
                    ..d
                },
                "presence-penalty",
            ),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(word), "{p:?}: {e}");
        }
        for ok in [
            SamplingParams {
                min_p: 1.0,
                repetition_penalty: 0.5,
                ..d
            },
            SamplingParams {
                frequency_penalty: -2.0,
                presence_penalty: 2.0,
                ..d
            },
        ] {
            assert!(ok.validate().is_ok(), "{ok:?}");
        }
        assert_eq!((d.temperature, d.top_k, d.top_p), (0.8, None, 1.0));
        // Parameters saved before the newer controls existed read with them off.
        let old: SamplingParams =
            serde_json::from_str(r#"{"temperature":0.5,"top_k":null,"top_p":0.9}"#).unwrap();
        assert_eq!(
            old,
            SamplingParams {
                temperature: 0.5,
                top_p: 0.9,
                ..d
            }
        );
        let json = serde_json::to_string(&params(0.7, Some(5), 0.9)).unwrap();
        let back: SamplingParams = serde_json::from_str(&json).unwrap();
        assert_eq!(back, params(0.7, Some(5), 0.9));
    }

    #[test]
    fn top_n_sorted_and_correct() {
        let l = rand_logits(1000, 3, 4.0);
        let p = softmax(&l, 2.0);
        let ids = {
            let mut ids: Vec<usize> = (0..l.len()).collect();
            ids.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            ids
        };
        let top = top_n(&l, 2.0, 10);
        assert_eq!(top.len(), 10);
        for (j, &(id, prob)) in top.iter().enumerate() {
            assert_eq!(id as usize, ids[j]);
            assert!((prob as f64 - p[ids[j]]).abs() < 1e-6);
        }
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        // Temperature 0 is shown as temperature 1; n > V gives V; ties by lowest id.
        let small = [1.0f32, 2.0, 2.0];
        let t0 = top_n(&small, 0.0, 10);
        assert_eq!(t0, top_n(&small, 1.0, 10));
        assert_eq!(t0.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert!((t0.iter().map(|x| x.1).sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(top_n(&small, 1.0, 0).is_empty());
    }
}
