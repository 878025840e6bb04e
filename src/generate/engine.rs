//! The generation engine: many [`Stream`]s advance together, one matrix product per layer per
//! step for all of them, and streams join and leave at any step (continuous batching).
//!
//! Every front end drives this one engine: `quill sample` (through [`super::Session`] for one
//! stream and [`super::batch::generate`] for many), the TUI, the training dashboard's samples,
//! `quill bench` and the server. None of them samples or decodes on its own.
//!
//! One [`Engine::step`]:
//! 1. every stream whose row holds fresh logits (everything it was given has been fed)
//!    samples one token ([`Stream::advance`]); streams that ended leave the engine;
//! 2. every remaining stream feeds one token (the next prompt token, or the token it just
//!    sampled) in one [`Generator::step`] per shard.
//!
//! So a prompt of n tokens costs n steps of its row, each generated token one more, and a
//! stream that ends never costs a step for its last token.
//!
//! Rows are split into shards, at most one per thread; each shard has its own [`Generator`]
//! (sharing the packed weights) and the shards step in parallel. A stream joins the smallest
//! shard; rows move between shards to keep them even.
//!
//! Reproducibility: a stream's text depends only on the model, its [`super::StreamSpec`]
//! (prompt, parameters, seed, id) and the tokenizer, never on the other streams, the number of
//! shards or when it joined: generator rows are computed independently and bit-identically
//! whatever the batch, and each stream has its own seeded sampler.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::nn::generator::{Generator, RowState};
use crate::nn::model::Model;

use super::sampler::{top_n, Sampled};
use super::stream::{Advance, Stream, StreamOutput};

/// Rows × V at or above which the per-row sampling work of a step is split across threads.
const PAR_MIN_WORK: usize = 1 << 15;

/// Number of threads for `threads == 0`: the cores this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |t| t.get())
}

/// A stream taken out of the engine with everything needed to continue it later.
#[derive(Clone, Debug)]
pub struct Parked {
    /// The stream.
    pub stream: Stream,
    /// Its row's recurrent state.
    pub state: RowState,
    /// Its row's next-token logits, when everything the stream was given had been fed.
    pub logits: Option<Vec<f32>>,
}

/// What happened to one stream in one step (only streams that sampled or ended report).
#[derive(Clone, Debug)]
pub struct Update {
    /// The key the stream joined with.
    pub key: u64,
    /// The token sampled, if one was.
    pub token: Option<Sampled>,
    /// Text that became final (may be empty; see [`Advance::text`]).
    pub text: String,
    /// Set when the stream ended in this step; it has left the engine.
    pub finished: Option<Finished>,
}

/// A stream's end.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Its result.
    pub output: StreamOutput,
    /// The stream itself, when it asked to be kept ([`Stream::set_park`]).
    pub parked: Option<Box<Parked>>,
}

/// One row: a stream and whether its generator row holds logits it has not sampled from.
#[derive(Debug)]
struct Row {
    key: u64,
    stream: Stream,
    fresh: bool,
}

/// Rows with their own generator; shards step in parallel.
#[derive(Debug)]
struct Shard {
    gen: Generator,
    rows: Vec<Row>,
    toks: Vec<u32>,
    advances: Vec<Option<Advance>>,
}

impl Shard {
    fn new(gen: Generator) -> Self {
        Shard {
            gen,
            rows: Vec::new(),
            toks: Vec::new(),
            advances: Vec::new(),
        }
    }

    /// Sampling (on `threads` threads when the work is big), departures, then one feed.
    fn step(&mut self, threads: usize, out: &mut Vec<Update>) {
        let n = self.rows.len();
        self.advances.clear();
        self.advances.resize(n, None);
        sample_rows(&self.gen, &mut self.rows, &mut self.advances, threads);
        // Departures, from the back so swap-removal keeps the indices still to visit.
        for i in (0..n).rev() {
            let Some(a) = self.advances[i].take() else {
                continue;
            };
            let key = self.rows[i].key;
            let finished = a.finished.map(|_| {
                let fresh = self.rows[i].fresh;
                let logits = fresh.then(|| self.gen.logits_row(i).to_vec());
                let state = self.gen.swap_remove_row(i);
                let row = self.rows.swap_remove(i);
                let output = row.stream.output();
                let parked = row.stream.parks().then(|| {
                    Box::new(Parked {
                        stream: row.stream,
                        state,
                        logits,
                    })
                });
                Finished { output, parked }
            });
            out.push(Update {
                key,
                token: a.token,
                text: a.text,
                finished,
            });
        }
        if self.rows.is_empty() {
            return;
        }
        self.toks.clear();
        for row in &mut self.rows {
            let t = row
                .stream
                .take_next()
                .expect("a running stream has a token to feed");
            self.toks.push(t);
        }
        self.gen.step(&self.toks);
        for row in &mut self.rows {
            row.fresh = !row.stream.is_feeding();
        }
    }

    fn find(&self, key: u64) -> Option<usize> {
        self.rows.iter().position(|r| r.key == key)
    }
}

/// Samples every row whose logits are fresh; results go to `advances` (aligned with `rows`).
fn sample_rows(
    gen: &Generator,
    rows: &mut [Row],
    advances: &mut [Option<Advance>],
    threads: usize,
) {
    let run = |offset: usize, rows: &mut [Row], out: &mut [Option<Advance>]| {
        for (i, (row, slot)) in rows.iter_mut().zip(out).enumerate() {
            if row.fresh {
                row.fresh = false;
                *slot = Some(row.stream.advance(gen.logits_row(offset + i)));
            }
        }
    };
    let work = rows.len() * gen.model().config.vocab;
    let threads = threads.min(rows.len());
    if threads <= 1 || work < PAR_MIN_WORK {
        run(0, rows, advances);
        return;
    }
    let chunk = rows.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let mut parts = rows
            .chunks_mut(chunk)
            .zip(advances.chunks_mut(chunk))
            .enumerate();
        let first = parts.next();
        for (ci, (r, a)) in parts {
            let run = &run;
            sc.spawn(move || run(ci * chunk, r, a));
        }
        if let Some((_, (r, a))) = first {
            run(0, r, a);
        }
    });
}

/// The engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    /// A generator without rows: the packed weights every shard forks from.
    base: Generator,
    shards: Vec<Shard>,
    threads: usize,
}

impl Engine {
    /// An engine for `model` with at most `threads` shards (0: [`default_threads`]); packs
    /// the weights once.
    pub fn new(model: Arc<Model<f32>>, threads: usize) -> Self {
        let threads = match threads {
            0 => default_threads(),
            t => t,
        };
        Engine {
            base: Generator::new(model, 0),
            shards: Vec::new(),
            threads,
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model<f32>> {
        self.base.model()
    }

    /// Streams in the engine.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.rows.len()).sum()
    }

    /// Whether no stream is in the engine.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard a new row goes to: the smallest, adding one while there are fewer than
    /// `threads`.
    fn shard_for_new_row(&mut self) -> usize {
        if self.shards.len() < self.threads && self.shards.iter().all(|s| !s.rows.is_empty()) {
            self.shards.push(Shard::new(self.base.fork()));
            return self.shards.len() - 1;
        }
        (0..self.shards.len())
            .min_by_key(|&i| self.shards[i].rows.len())
            .expect("at least one shard")
    }

    fn check_tokens(&self, stream: &Stream) -> Result<()> {
        let v = self.model().config.vocab;
        match stream.unfed().iter().find(|&&t| t as usize >= v) {
            Some(&bad) => Err(Error::config(
                "prime",
                format!("token id {bad} is outside the model's vocabulary of {v}"),
            )),
            None => Ok(()),
        }
    }

    /// Adds a stream under `key` (keys are the caller's; one stream per key). Its row starts
    /// from `state` (the state after the tokens the stream has marked fed), or from the zero
    /// state; it needs at least one token to feed. Errors on a token outside the vocabulary
    /// or nothing to feed.
    pub fn join(&mut self, key: u64, stream: Stream, state: Option<&RowState>) -> Result<()> {
        self.check_tokens(&stream)?;
        if !stream.is_feeding() {
            return Err(Error::config(
                "stream",
                "has nothing to feed; join it with its logits (Engine::join_parked)",
            ));
        }
        let s = self.shard_for_new_row();
        let sh = &mut self.shards[s];
        sh.gen.push_row(state);
        sh.rows.push(Row {
            key,
            stream,
            fresh: false,
        });
        Ok(())
    }

    /// Puts a parked stream back under `key`, exactly where it left off. Errors when it has
    /// nothing to feed and no logits to sample from, or tokens outside the vocabulary.
    pub fn join_parked(&mut self, key: u64, parked: Parked) -> Result<()> {
        self.check_tokens(&parked.stream)?;
        let v = self.model().config.vocab;
        let fresh = !parked.stream.is_feeding();
        let logits = match (&parked.logits, fresh) {
            (Some(l), true) if l.len() == v => Some(l),
            (_, true) => {
                return Err(Error::config(
                    "stream",
                    "has nothing to feed and no logits to sample from",
                ))
            }
            _ => None,
        };
        let s = self.shard_for_new_row();
        let sh = &mut self.shards[s];
        let r = sh.gen.push_row(Some(&parked.state));
        if let Some(l) = logits {
            sh.gen.set_row_logits(r, l);
        }
        sh.rows.push(Row {
            key,
            stream: parked.stream,
            fresh,
        });
        Ok(())
    }

    fn locate(&self, key: u64) -> Option<(usize, usize)> {
        self.shards
            .iter()
            .enumerate()
            .find_map(|(s, sh)| sh.find(key).map(|i| (s, i)))
    }

    /// Takes the stream `key` out (a client went away, a run was abandoned), with its state.
    pub fn leave(&mut self, key: u64) -> Option<Parked> {
        let (s, i) = self.locate(key)?;
        let sh = &mut self.shards[s];
        let logits = sh.rows[i].fresh.then(|| sh.gen.logits_row(i).to_vec());
        let state = sh.gen.swap_remove_row(i);
        let row = sh.rows.swap_remove(i);
        Some(Parked {
            stream: row.stream,
            state,
            logits,
        })
    }

    /// The stream `key`.
    pub fn stream(&self, key: u64) -> Option<&Stream> {
        let (s, i) = self.locate(key)?;
        Some(&self.shards[s].rows[i].stream)
    }

    /// The stream `key`, to change its parameters between steps.
    pub fn stream_mut(&mut self, key: u64) -> Option<&mut Stream> {
        let (s, i) = self.locate(key)?;
        Some(&mut self.shards[s].rows[i].stream)
    }

    /// The next-token logits of stream `key` when it has been fed everything (V).
    pub fn logits(&self, key: u64) -> Option<&[f32]> {
        let (s, i) = self.locate(key)?;
        let sh = &self.shards[s];
        sh.rows[i].fresh.then(|| sh.gen.logits_row(i))
    }

    /// The `n` most probable next tokens of stream `key` at `temperature` (for display; see
    /// [`top_n`]), when its logits are fresh.
    pub fn top_n(&self, key: u64, temperature: f32, n: usize) -> Option<Vec<(u32, f32)>> {
        self.logits(key).map(|l| top_n(l, temperature, n))
    }

    /// Moves rows from the largest shard to the smallest until they differ by at most one,
    /// and drops shards left empty.
    fn balance(&mut self) {
        self.shards.retain(|s| !s.rows.is_empty());
        loop {
            let Some(big) = (0..self.shards.len()).max_by_key(|&i| self.shards[i].rows.len())
            else {
                return;
            };
            let small = (0..self.shards.len())
                .min_by_key(|&i| self.shards[i].rows.len())
                .expect("non-empty");
            if self.shards[big].rows.len() <= self.shards[small].rows.len() + 1 {
                return;
            }
            let src = &mut self.shards[big];
            let i = src.rows.len() - 1;
            let logits = src.gen.logits_row(i).to_vec();
            let state = src.gen.swap_remove_row(i);
            let row = src.rows.pop().expect("non-empty");
            let dst = &mut self.shards[small];
            let r = dst.gen.push_row(Some(&state));
            dst.gen.set_row_logits(r, &logits);
            dst.rows.push(row);
        }
    }

    /// One step of every stream (see the module docs); what happened goes to `out` (appended;
    /// shards in order, rows in reverse).
    pub fn step(&mut self, out: &mut Vec<Update>) {
        self.balance();
        match self.shards.as_mut_slice() {
            [] => {}
            [only] => only.step(self.threads, out),
            shards => {
                let mut parts: Vec<Vec<Update>> = shards.iter().map(|_| Vec::new()).collect();
                std::thread::scope(|sc| {
                    let mut it = shards.iter_mut().zip(parts.iter_mut());
                    let first = it.next();
                    for (sh, part) in it {
                        sc.spawn(move || sh.step(1, part));
                    }
                    if let Some((sh, part)) = first {
                        sh.step(1, part);
                    }
                });
                for p in parts {
                    out.extend(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sampler::SamplingParams;
    use crate::generate::stream::StopReason;
    use crate::generate::stream::StreamSpec;
    use crate::testutil;

    use crate::tokenizer::{Tokenizer, TokenizerKind};

    use std::collections::HashMap;

    fn setup() -> (Arc<Model<f32>>, Tokenizer) {
        let t = testutil::tokenizer(
            TokenizerKind::Char,
            "the cat sat on the mat; a dog ate the hat!",
        );
        (testutil::model(t.vocab_size(), 8, 32, 2, 5), t)
    }

    fn spec(t: &Tokenizer, id: u64, prompt: &str, len: usize) -> StreamSpec {
        StreamSpec {
            prompt: t.encode(prompt).unwrap(),
            params: SamplingParams {
                temperature: 1.0 + (id % 3) as f32 * 0.2,
                top_k: id.is_multiple_of(2).then_some(5),
                top_p: 0.95,
                ..SamplingParams::default()
            },
            seed: 42,
            id,
            attempt: 0,
            max_tokens: Some(len),
            stop: vec!["!".into()],
        }
    }

    /// Runs streams to the end; joins `late` streams after `delay` steps.
    fn run(
        m: &Arc<Model<f32>>,
        t: &Tokenizer,
        threads: usize,
        now: &[StreamSpec],
        late: &[StreamSpec],
        delay: usize,
    ) -> HashMap<u64, (String, StreamOutput)> {
        let mut e = Engine::new(Arc::clone(m), threads);
        for s in now {
            e.join(s.id, Stream::new(s, t).unwrap(), None).unwrap();
        }
        let mut got: HashMap<u64, (String, StreamOutput)> = HashMap::new();
        let mut shown: HashMap<u64, String> = HashMap::new();
        let mut out = Vec::new();
        let mut steps = 0;
        while !e.is_empty() || steps <= delay {
            if steps == delay {
                for s in late {
                    e.join(s.id, Stream::new(s, t).unwrap(), None).unwrap();
                }
            }
            out.clear();
            e.step(&mut out);
            for u in out.drain(..) {
                shown.entry(u.key).or_default().push_str(&u.text);
                if let Some(f) = u.finished {
                    got.insert(u.key, (shown.remove(&u.key).unwrap(), f.output));
                }
            }
            steps += 1;
        }
        got
    }

    /// The reproducibility rule under continuous batching: a stream gives the same text
    /// alone, among many, joining late, and on one or three shards; the pieces handed out
    /// add up to the final text.
    #[test]
    fn a_stream_is_the_same_alone_and_among_others_joining_at_any_step() {
        let (m, t) = setup();
        let prompts = ["the ", "", "a dog", "t", "hat"];
        let specs: Vec<StreamSpec> = (1..=20)
            .map(|id| {
                spec(
                    &t,
                    id,
                    prompts[id as usize % 5],
                    10 + (id as usize * 7) % 25,
                )
            })
            .collect();
        let together = run(&m, &t, 1, &specs[..12], &specs[12..], 7);
        let sharded = run(&m, &t, 3, &specs[..5], &specs[5..], 3);
        assert_eq!(together.len(), 20);
        for s in &specs {
            let alone = run(&m, &t, 1, std::slice::from_ref(s), &[], 0);
            let (pieces, out) = &together[&s.id];
            assert_eq!(&alone[&s.id].1, out, "stream {}", s.id);
            assert_eq!(&sharded[&s.id].1, out, "stream {} sharded", s.id);
            assert_eq!(pieces, &out.text, "pieces of stream {}", s.id);
        }
        assert!(
            together
                .values()
                .any(|(_, o)| matches!(o.stop, StopReason::StopString(_))),
            "some stream ends at its stop string"
        );
        let texts: std::collections::HashSet<_> = together.values().map(|(_, o)| &o.text).collect();
        assert!(texts.len() > 15, "ids give different texts");
    }

    #[test]
    fn leave_and_park_continue_exactly() {
        let (m, t) = setup();
        let s = StreamSpec {
            max_tokens: None,
            stop: vec![],
            ..spec(&t, 3, "the", 0)
        };
        // Reference: 30 tokens straight.
        let mut e = Engine::new(Arc::clone(&m), 1);
        e.join(1, Stream::new(&s, &t).unwrap(), None).unwrap();
        let mut out = Vec::new();
        while e.stream(1).unwrap().tokens() < 30 {
            e.step(&mut out);
        }
        let want = e.stream(1).unwrap().text().to_string();
        // 12 tokens, leave (with fresh logits), come back in another engine among others.
        let mut a = Engine::new(Arc::clone(&m), 2);
        a.join(1, Stream::new(&s, &t).unwrap(), None).unwrap();
        a.join(2, Stream::new(&spec(&t, 9, "a", 100), &t).unwrap(), None)
            .unwrap();
        while a.stream(1).unwrap().tokens() < 12 {
            a.step(&mut out);
        }
        let parked = a.leave(1).unwrap();
        assert!(parked.logits.is_some());
        let mut b = Engine::new(Arc::clone(&m), 2);
        b.join(7, Stream::new(&spec(&t, 4, "o", 100), &t).unwrap(), None)
            .unwrap();
        b.join_parked(1, parked).unwrap();
        while b.stream(1).unwrap().tokens() < 30 {
            b.step(&mut out);
        }
        assert_eq!(b.stream(1).unwrap().text(), want);
        assert!(b.leave(99).is_none());
    }

    #[test]
    fn bad_joins_are_refused() {
        let (m, t) = setup();
        let mut e = Engine::new(m, 1);
        let mut s = Stream::new(&StreamSpec::new(vec![1]), &t).unwrap();
        s.skip_fed(1);
        assert!(e.join(1, s.clone(), None).is_err());
        let parked = Parked {
            stream: s,
            state: RowState::zeros(&e.model().config),
            logits: None,
        };
        assert!(e.join_parked(1, parked).is_err());
        assert!(e.is_empty());
    }
}
