//! The generation worker: a thread that owns a generation [`Session`] (model, stream state,
//! sampler), takes [`Command`]s over a channel and streams [`WorkerEvent`]s back (each token with the
//! probability it was sampled with, and now and then the top-10 next-token distribution).
//!
//! Between two tokens it handles every pending command, so new sampling settings take effect
//! at the next token, and a stop or pause is immediate; a prompt is fed one token per step
//! for the same reason. Tokens can be paced to a maximum rate ([`Settings::speed`]) so people can watch
//! (and steer) the text as it is written.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint;
use crate::copies::{self, CacheStatus, CopyIndex, OpenOptions};
use crate::generate::{SamplingParams, Session, StreamSpec};
use crate::nn::model::{Model, ModelConfig};
use crate::tokenizer::{Tokenizer, TokenizerKind, UnknownPolicy};

/// Entries of the next-token distribution sent to the UI.
pub const DIST_TOP: usize = 10;
/// Minimum time between two distributions attached to tokens (the last token of a run always
/// carries one).
const DIST_EVERY: Duration = Duration::from_millis(30);

/// Sampling settings, applied between tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Temperature, top-k, top-p.
    pub sampling: SamplingParams,
    /// Tokens per run (generate or continue); `None`: until stopped.
    pub length: Option<usize>,
    /// At most this many tokens per second; `None`: as fast as the model goes.
    pub speed: Option<u32>,
}

impl Default for Settings {
    /// Temperature 0.8, no top-k/top-p, 1000 tokens, 100 tokens/s.
    fn default() -> Self {
        Settings {
            sampling: SamplingParams::default(),
            length: Some(1000),
            speed: Some(100),
        }
    }
}

/// What the open model is, for the status bar.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// File stem of the checkpoint.
    pub name: String,
    /// The checkpoint file.
    pub path: PathBuf,
    /// Tokenizer kind.
    pub kind: TokenizerKind,
    /// Trainable parameters.
    pub params: usize,
    /// Vocabulary size V.
    pub vocab: usize,
}

impl ModelInfo {
    /// Describes a model loaded from `path`.
    pub fn new(path: &Path, config: &ModelConfig, tokenizer: &Tokenizer) -> Self {
        ModelInfo {
            name: path.file_stem().map_or_else(
                || path.display().to_string(),
                |s| s.to_string_lossy().into(),
            ),
            path: path.to_path_buf(),
            kind: tokenizer.kind(),
            params: config.num_params(),
            vocab: tokenizer.vocab_size(),
        }
    }
}

/// Requests to the worker. `run` numbers (chosen by the UI, increasing) tag the events of a
/// run so the UI can drop those of a run it has already left.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Start over from `prompt` (zero state, fresh sampler seeded with `seed`).
    Generate {
        /// Run number.
        run: u64,
        /// Text to condition on; empty: a start token.
        prompt: String,
        /// Sampler seed.
        seed: u64,
        /// Settings for the run.
        settings: Settings,
    },
    /// Generate `settings.length` more tokens from the current state.
    Continue {
        /// Run number.
        run: u64,
        /// Settings for the run.
        settings: Settings,
    },
    /// Hold the current run.
    Pause,
    /// Go on with a held run.
    Resume,
    /// End the current run (the state is kept for a continue).
    Stop,
    /// New settings, from the next token on.
    Set(Settings),
    /// End any run and forget the state.
    Clear,
    /// Open another checkpoint.
    Load(PathBuf),
    /// Open the copy index of the checkpoint at this path (its training corpus, checked
    /// against the recorded fingerprint; the suffix array cached beside it). Generation waits
    /// while it is built: under a second for the bundled corpus.
    OpenCopies {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// Where the corpus is, if not where the checkpoint says.
        options: OpenOptions,
    },
    /// End the thread.
    Quit,
}

/// A copy index shared with the UI; two are equal when they are the same index.
#[derive(Clone, Debug)]
pub struct SharedIndex(pub Arc<CopyIndex>);

impl PartialEq for SharedIndex {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Why a run of the UI ended (a stream's own end is a [`crate::generate::StopReason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The requested length was reached.
    Length,
    /// Stopped on request.
    Stopped,
    /// The model sampled its end-of-text token.
    EndOfText,
}

/// What the worker reports.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerEvent {
    /// A run began; `skipped` lists prompt pieces the vocabulary does not have.
    Started {
        /// Run number.
        run: u64,
        /// Unknown prompt pieces (dropped, or `<unk>` for word models).
        skipped: Vec<String>,
    },
    /// One sampled token.
    Token {
        /// Run number.
        run: u64,
        /// Text that became final with it (may be empty).
        text: String,
        /// Its probability under the distribution it was sampled from.
        prob: f32,
        /// The next-token distribution after it, when due.
        dist: Option<Vec<(String, f32)>>,
    },
    /// The next-token distribution at the current position (after a settings change).
    Dist {
        /// Run number.
        run: u64,
        /// Top tokens (display form) and probabilities, most probable first.
        dist: Vec<(String, f32)>,
    },
    /// The run is held (acknowledges [`Command::Pause`]): no token comes until a resume.
    Paused {
        /// Run number.
        run: u64,
    },
    /// A run ended.
    Finished {
        /// Run number.
        run: u64,
        /// Tokens generated in the run.
        tokens: usize,
        /// Why.
        reason: RunEnd,
        /// Seconds since the run started.
        secs: f64,
        /// Whether a continue can pick up from here.
        can_continue: bool,
    },
    /// Another checkpoint is open (state cleared).
    Loaded(ModelInfo),
    /// The answer to [`Command::OpenCopies`].
    Copies {
        /// The checkpoint it was asked for.
        checkpoint: PathBuf,
        /// The index and a note on how it was obtained, or why it could not be opened.
        result: std::result::Result<(SharedIndex, String), String>,
    },
    /// A request failed; `run` when it belonged to one.
    Failed {
        /// Run number, if any.
        run: Option<u64>,
        /// What went wrong.
        msg: String,
    },
}

/// The UI's end of the worker.
#[derive(Debug)]
pub struct WorkerHandle {
    tx: Sender<Command>,
    handle: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Starts the worker on a model; its events go to `sink`, which returns false once nobody
    /// listens any more (the worker then ends).
    pub fn spawn(
        model: Model<f32>,
        tokenizer: Tokenizer,
        sink: impl FnMut(WorkerEvent) -> bool + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("quill-tui-worker".into())
            .spawn(move || match Session::new(Arc::new(model), tokenizer) {
                Ok(session) => Worker::new(session, Box::new(sink)).run(rx),
                Err(e) => {
                    let mut sink = sink;
                    sink(WorkerEvent::Failed {
                        run: None,
                        msg: format!("cannot open: {e}"),
                    });
                }
            })
            .ok();
        WorkerHandle { tx, handle }
    }

    /// Sends a command (ignored when the worker has ended).
    pub fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
    }

    /// Asks the worker to quit and waits for it.
    pub fn shutdown(mut self) {
        self.send(Command::Quit);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Opens the copy index of `checkpoint`; the note says whether the cache was used.
fn open_copies(
    checkpoint: &Path,
    options: &OpenOptions,
) -> std::result::Result<(SharedIndex, String), String> {
    let r = checkpoint::read(checkpoint).map_err(|e| e.to_string())?;
    let opened = copies::open(checkpoint, &r.meta.corpus, r.tokenizer.kind(), options)
        .map_err(|e| format!("copy detection: {e}"))?;
    let note = match &opened.cache {
        CacheStatus::Reused => "index loaded from its cache".to_string(),
        CacheStatus::Built { saved: Ok(()), .. } => "index built and cached".to_string(),
        CacheStatus::Built { saved: Err(e), .. } => format!("index built (not cached: {e})"),
    };
    Ok((SharedIndex(Arc::new(opened.index)), note))
}

type Sink = Box<dyn FnMut(WorkerEvent) -> bool + Send>;

struct Worker {
    session: Session,
    settings: Settings,
    sink: Sink,
    closed: bool,
    run: u64,
    /// A run is under way (stepping), unless paused.
    active: bool,
    paused: bool,
    /// Tokens generated in the current run.
    produced: usize,
    started: Instant,
    next_due: Instant,
    last_dist: Option<Instant>,
}

impl Worker {
    fn new(session: Session, sink: Sink) -> Self {
        Worker {
            session,
            settings: Settings::default(),
            sink,
            closed: false,
            run: 0,
            active: false,
            paused: false,
            produced: 0,
            started: Instant::now(),
            next_due: Instant::now(),
            last_dist: None,
        }
    }

    fn send(&mut self, ev: WorkerEvent) {
        if !(self.sink)(ev) {
            self.closed = true;
        }
    }

    fn run(mut self, rx: Receiver<Command>) {
        while !self.closed {
            let cmd = if self.active && !self.paused {
                let wait = if self.session.is_feeding() {
                    Duration::ZERO
                } else {
                    self.next_due.saturating_duration_since(Instant::now())
                };
                if wait.is_zero() {
                    match rx.try_recv() {
                        Ok(c) => Some(c),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Disconnected) => return,
                    }
                } else {
                    match rx.recv_timeout(wait) {
                        Ok(c) => Some(c),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            } else {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            };
            match cmd {
                Some(Command::Quit) => return,
                Some(c) => self.handle(c),
                None => self.advance(),
            }
        }
    }

    fn apply(&mut self, s: Settings) {
        self.settings = s;
        // The UI only offers valid values; an invalid one keeps the previous parameters.
        let _ = self.session.set_params(s.sampling);
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Generate {
                run,
                prompt,
                seed,
                settings,
            } => self.generate(run, &prompt, seed, settings),
            Command::Continue { run, settings } => self.continue_run(run, settings),
            Command::Pause => {
                if self.active && !self.paused {
                    self.paused = true;
                    let run = self.run;
                    self.send(WorkerEvent::Paused { run });
                }
            }
            Command::Resume => {
                self.paused = false;
                self.next_due = Instant::now();
            }
            Command::Stop => {
                if self.active {
                    self.finish(RunEnd::Stopped);
                }
            }
            Command::Set(s) => {
                self.apply(s);
                if !self.active && self.session.can_continue() {
                    let dist = self.dist();
                    let run = self.run;
                    self.send(WorkerEvent::Dist { run, dist });
                }
            }
            Command::Clear => {
                self.active = false;
                self.paused = false;
                self.session.clear();
            }
            Command::Load(path) => self.load(&path),
            Command::OpenCopies {
                checkpoint,
                options,
            } => {
                let result = open_copies(&checkpoint, &options);
                self.send(WorkerEvent::Copies { checkpoint, result });
            }
            Command::Quit => {}
        }
    }

    fn generate(&mut self, run: u64, prompt: &str, seed: u64, settings: Settings) {
        if self.active {
            self.finish(RunEnd::Stopped);
        }
        self.run = run;
        self.settings = settings;
        let tok = self.session.tokenizer();
        let started = tok
            .encode_prime(prompt, UnknownPolicy::Skip)
            .and_then(|(ids, skipped)| {
                let spec = StreamSpec {
                    params: settings.sampling,
                    seed,
                    ..StreamSpec::new(ids)
                };
                self.session.start(&spec).map(|()| skipped)
            });
        match started {
            Ok(skipped) => {
                self.begin();
                self.send(WorkerEvent::Started { run, skipped });
            }
            Err(e) => self.send(WorkerEvent::Failed {
                run: Some(run),
                msg: format!("cannot start from the prompt: {e}"),
            }),
        }
    }

    fn continue_run(&mut self, run: u64, settings: Settings) {
        if self.active {
            self.finish(RunEnd::Stopped);
        }
        self.apply(settings);
        if !self.session.can_continue() || !self.session.resume(None).unwrap_or(false) {
            self.send(WorkerEvent::Failed {
                run: Some(run),
                msg: "nothing to continue: generate first".into(),
            });
            return;
        }
        self.run = run;
        self.begin();
        self.send(WorkerEvent::Started {
            run,
            skipped: Vec::new(),
        });
    }

    fn begin(&mut self) {
        self.active = true;
        self.paused = false;
        self.produced = 0;
        self.started = Instant::now();
        self.next_due = self.started;
        self.last_dist = None;
    }

    fn load(&mut self, path: &Path) {
        if self.active {
            self.finish(RunEnd::Stopped);
        }
        let opened = checkpoint::load_model(path).and_then(|lm| {
            let info = ModelInfo::new(&lm.path, &lm.model.config, &lm.tokenizer);
            Session::new(Arc::new(lm.model), lm.tokenizer).map(|s| (s, info))
        });
        match opened {
            Ok((session, info)) => {
                self.session = session;
                self.send(WorkerEvent::Loaded(info));
            }
            Err(e) => self.send(WorkerEvent::Failed {
                run: None,
                msg: format!("cannot open: {e}"),
            }),
        }
    }

    /// Top tokens of the distribution at the current position.
    fn dist(&self) -> Vec<(String, f32)> {
        let tok = self.session.tokenizer();
        self.session
            .top_n(DIST_TOP)
            .into_iter()
            .map(|(id, p)| (tok.token_display(id), p))
            .collect()
    }

    /// One unit of work of the active run: one prompt token, or one generated token.
    fn advance(&mut self) {
        if self.session.is_feeding() {
            self.session.step();
            if !self.session.is_feeding() {
                let dist = self.dist();
                let run = self.run;
                self.send(WorkerEvent::Dist { run, dist });
            }
            return;
        }
        if self.settings.length.is_some_and(|n| self.produced >= n) {
            self.finish(RunEnd::Length);
            return;
        }
        let Some(u) = self.session.step() else {
            // Nothing is running (the stream ended earlier): the run is over.
            self.finish(RunEnd::Length);
            return;
        };
        if let Some(f) = &u.finished {
            if f.output.stop == crate::generate::StopReason::EndOfText {
                if !u.text.is_empty() {
                    let run = self.run;
                    let prob = u.token.map_or(1.0, |t| t.prob);
                    self.send(WorkerEvent::Token {
                        run,
                        text: u.text,
                        prob,
                        dist: None,
                    });
                }
                self.finish(RunEnd::EndOfText);
                return;
            }
        }
        self.produced += 1;
        let now = Instant::now();
        let last = self.settings.length.is_some_and(|n| self.produced >= n);
        let dist = if last || self.last_dist.is_none_or(|t| now - t >= DIST_EVERY) {
            self.last_dist = Some(now);
            Some(self.dist())
        } else {
            None
        };
        let run = self.run;
        self.send(WorkerEvent::Token {
            run,
            text: u.text,
            prob: u.token.map_or(1.0, |t| t.prob),
            dist,
        });
        if let Some(speed) = self.settings.speed.filter(|&s| s > 0) {
            let iv = Duration::from_secs_f64(1.0 / speed as f64);
            self.next_due = (self.next_due + iv).max(now);
        }
    }

    fn finish(&mut self, reason: RunEnd) {
        self.active = false;
        self.paused = false;
        if self.session.is_feeding() {
            // Stopped while feeding the prompt: the state is half a prompt, not worth continuing.
            self.session.clear();
        }
        let can_continue = self.session.can_continue();
        if can_continue {
            let dist = self.dist();
            let run = self.run;
            self.send(WorkerEvent::Dist { run, dist });
        }
        let ev = WorkerEvent::Finished {
            run: self.run,
            tokens: self.produced,
            reason,
            secs: self.started.elapsed().as_secs_f64(),
            can_continue,
        };
        self.send(ev);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::generate::batch::{self, GenConfig, SampleSpec};
    use crate::generate::sampler::top_n;
    use crate::generate::{sample_seed, start_tokens, Sampler};
    use crate::nn::generator::Generator;
    use crate::nn::model::Model;
    use crate::testutil;

    /// An untrained char model over a small alphabet.
    pub(crate) fn tiny_model() -> (Model<f32>, Tokenizer) {
        let tok = testutil::tokenizer(TokenizerKind::Char, "abcdefgh ijkl\nmnop");
        (
            (*testutil::model(tok.vocab_size(), 4, 8, 1, 3)).clone(),
            tok,
        )
    }

    /// A worker whose events arrive on the returned receiver.
    fn spawn(model: Model<f32>, tok: Tokenizer) -> (WorkerHandle, Receiver<WorkerEvent>) {
        let (tx, rx) = mpsc::channel();
        let w = WorkerHandle::spawn(model, tok, move |e| tx.send(e).is_ok());
        (w, rx)
    }

    fn next(rx: &Receiver<WorkerEvent>) -> WorkerEvent {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("worker event")
    }

    /// Collects events until the run's `Finished`.
    fn until_finished(rx: &Receiver<WorkerEvent>) -> (Vec<WorkerEvent>, WorkerEvent) {
        let mut evs = Vec::new();
        loop {
            let e = next(rx);
            if matches!(e, WorkerEvent::Finished { .. }) {
                return (evs, e);
            }
            evs.push(e);
        }
    }

    fn text_of(evs: &[WorkerEvent]) -> String {
        evs.iter()
            .filter_map(|e| match e {
                WorkerEvent::Token { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn fast(length: usize) -> Settings {
        Settings {
            length: Some(length),
            speed: None,
            ..Settings::default()
        }
    }

    #[test]
    fn generates_the_same_text_as_a_plain_sampling_loop() {
        let (model, tok) = tiny_model();
        let (w, rx) = spawn(model.clone(), tok.clone());
        w.send(Command::Generate {
            run: 1,
            prompt: "ab".into(),
            seed: 7,
            settings: fast(40),
        });
        let (evs, fin) = until_finished(&rx);
        assert!(matches!(&evs[0], WorkerEvent::Started { run: 1, skipped } if skipped.is_empty()));
        let WorkerEvent::Finished {
            run: 1,
            tokens: 40,
            reason: RunEnd::Length,
            can_continue: true,
            ..
        } = fin
        else {
            panic!("{fin:?}")
        };
        // The reference: a plain loop over the generator and a sampler seeded by the one rule.
        let mut gen = Generator::new(Arc::new(model), 1);
        let mut sampler = Sampler::new(fast(40).sampling, sample_seed(7, 1, 0));
        gen.feed(&tok.encode("ab").unwrap());
        let mut want = String::new();
        let mut probs = Vec::new();
        for _ in 0..40 {
            let s = sampler.sample(gen.logits_row(0));
            want.push_str(&tok.decode(&[s.id]));
            probs.push(s.prob);
            gen.step(&[s.id]);
        }
        assert_eq!(text_of(&evs), want);
        let got_probs: Vec<f32> = evs
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::Token { prob, .. } => Some(*prob),
                _ => None,
            })
            .collect();
        assert_eq!(got_probs, probs);
        // The last token carries the distribution at the end: 10 entries, sorted, summing <= 1.
        let last = evs.iter().rev().find_map(|e| match e {
            WorkerEvent::Token { dist, .. } => dist.clone(),
            _ => None,
        });
        let dist = last.expect("a distribution with the last token");
        assert_eq!(dist.len(), DIST_TOP);
        assert!(dist.windows(2).all(|w| w[0].1 >= w[1].1));
        w.shutdown();
    }

    #[test]
    fn continue_picks_up_where_the_run_ended() {
        let (model, tok) = tiny_model();
        let (w, rx) = spawn(model.clone(), tok.clone());
        w.send(Command::Generate {
            run: 1,
            prompt: String::new(),
            seed: 3,
            settings: fast(10),
        });
        let (a, _) = until_finished(&rx);
        w.send(Command::Continue {
            run: 2,
            settings: fast(15),
        });
        let (b, fin) = until_finished(&rx);
        assert!(matches!(
            fin,
            WorkerEvent::Finished {
                run: 2,
                tokens: 15,
                ..
            }
        ));
        // One run of 25 tokens gives the same text.
        w.send(Command::Generate {
            run: 3,
            prompt: String::new(),
            seed: 3,
            settings: fast(25),
        });
        let (c, _) = until_finished(&rx);
        assert_eq!(text_of(&a) + &text_of(&b), text_of(&c));
        w.shutdown();
    }

    #[test]
    fn stop_pause_and_live_settings() {
        let (model, tok) = tiny_model();
        let (w, rx) = spawn(model, tok);
        let slow = Settings {
            length: None,
            speed: Some(200),
            ..Settings::default()
        };
        w.send(Command::Generate {
            run: 1,
            prompt: "abc".into(),
            seed: 1,
            settings: slow,
        });
        // Tokens flow; greedy settings take effect: every later token has probability 1.
        let mut seen = 0;
        while seen < 3 {
            if let WorkerEvent::Token { .. } = next(&rx) {
                seen += 1;
            }
        }
        let greedy = Settings {
            sampling: SamplingParams::greedy(),
            ..slow
        };
        w.send(Command::Set(greedy));
        w.send(Command::Pause);
        // What was in flight arrives before the acknowledgement; after it, nothing comes
        // while paused.
        while !matches!(next(&rx), WorkerEvent::Paused { run: 1 }) {}
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        w.send(Command::Resume);
        for _ in 0..3 {
            match next(&rx) {
                WorkerEvent::Token { prob, .. } => assert_eq!(prob, 1.0),
                WorkerEvent::Dist { .. } => {}
                e => panic!("{e:?}"),
            }
        }
        w.send(Command::Stop);
        let (_, fin) = until_finished(&rx);
        assert!(matches!(
            fin,
            WorkerEvent::Finished {
                reason: RunEnd::Stopped,
                can_continue: true,
                ..
            }
        ));
        // Idle: a settings change re-sends the distribution at the new temperature.
        w.send(Command::Set(slow));
        assert!(matches!(next(&rx), WorkerEvent::Dist { run: 1, .. }));
        // After a clear there is nothing to continue.
        w.send(Command::Clear);
        w.send(Command::Continue {
            run: 2,
            settings: slow,
        });
        assert!(matches!(
            next(&rx),
            WorkerEvent::Failed { run: Some(2), .. }
        ));
        w.shutdown();
    }

    #[test]
    fn unknown_prompt_chars_are_skipped_and_reported() {
        let (model, tok) = tiny_model();
        let (w, rx) = spawn(model, tok);
        w.send(Command::Generate {
            run: 4,
            prompt: "aZb".into(),
            seed: 1,
            settings: fast(1),
        });
        assert_eq!(
            next(&rx),
            WorkerEvent::Started {
                run: 4,
                skipped: vec!["Z".into()]
            }
        );
        w.send(Command::Load(PathBuf::from("/nonexistent/x.safetensors")));
        let (_, fin) = until_finished(&rx);
        assert!(matches!(fin, WorkerEvent::Finished { run: 4, .. }));
        assert!(matches!(next(&rx), WorkerEvent::Failed { run: None, .. }));
        w.shutdown();
    }

    /// With an empty prompt, word and BPE models start from the line-start token (the
    /// encoding of "\n"), as `quill sample` does: the first distribution is the one after
    /// that token, and the text equals the batch sampler's for the same seed and id.
    #[test]
    fn an_empty_prompt_starts_at_a_line_start_for_word_and_bpe_models() {
        for kind in [TokenizerKind::Word, TokenizerKind::Bpe] {
            let tok = testutil::tokenizer(kind, "the cat sat on the mat.\nthe dog ate the hat.\n");
            let model = (*testutil::model(tok.vocab_size(), 8, 16, 1, 5)).clone();
            let start = start_tokens(&[], &tok);
            assert_eq!(start, tok.encode("\n").unwrap(), "{kind:?}");
            assert_ne!(Some(start[0]), tok.eos_id(), "{kind:?}");

            let (w, rx) = spawn(model.clone(), tok.clone());
            // The model's own distribution: no UTF-8 guard (BPE), which would ban bytes.
            let mut settings = fast(25);
            settings.sampling.valid_utf8 = false;
            w.send(Command::Generate {
                run: 1,
                prompt: String::new(),
                seed: 11,
                settings,
            });
            let (evs, _) = until_finished(&rx);
            w.shutdown();
            // The distribution once the start is fed: after <eol> / the newline byte.
            let first = evs
                .iter()
                .find_map(|e| match e {
                    WorkerEvent::Dist { dist, .. } => Some(dist.clone()),
                    _ => None,
                })
                .expect("a distribution after the start");
            let mut gen = Generator::new(Arc::new(model.clone()), 1);
            let after_start = gen.feed(&start).unwrap().to_vec();
            let want: Vec<(String, f32)> = top_n(&after_start, 0.8, DIST_TOP)
                .into_iter()
                .map(|(id, p)| (tok.token_display(id), p))
                .collect();
            assert_eq!(first, want, "{kind:?}");

            // The same text as `quill sample --seed 11` (sample id 1) from an empty prime.
            let mut texts = Vec::new();
            batch::generate(
                &Arc::new(model),
                &tok,
                &[Vec::new()],
                &[SampleSpec {
                    id: 1,
                    prime: 0,
                    params: settings.sampling,
                    seed: 11,
                }],
                &GenConfig {
                    length: 25,
                    ..GenConfig::default()
                },
                &mut |o| {
                    texts.push(o.output.text);
                    Ok(())
                },
                &mut |_| batch::Control::Continue,
            )
            .unwrap();
            let got = text_of(&evs);
            assert!(!got.is_empty(), "{kind:?}");
            assert!(
                texts[0].starts_with(&got),
                "{kind:?}: {got:?} vs {:?}",
                texts[0]
            );
        }
    }
}
