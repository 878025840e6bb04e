//! One engine thread per loaded model: continuous batching for the HTTP requests.
//!
//! Requests arrive as [`Job`]s (their streams already built and checked) over a channel and
//! wait in a FIFO queue. Before every [`Engine::step`] the thread
//! 1. takes new jobs and messages (blocking only while it has nothing to do);
//! 2. drops queued jobs whose client went away, fails those past their deadline (and, while
//!    the server shuts down, every queued job);
//! 3. takes the streams of running jobs whose client went away (or that are past their
//!    deadline) out of the engine: a disconnected client frees its rows at the next step;
//! 4. admits jobs from the head of the queue while their streams fit in the free rows
//!    (`max_streams`): a job joins at the next step, all its streams together;
//! 5. steps every stream of the model in one batched step and sends each job what its
//!    streams produced ([`Event`]); a job whose streams all ended is done and its channel
//!    closes.
//!
//! Generation itself (prompt feeding, sampling, decoding, stop strings) is the engine's; a
//! stream's text depends only on its spec, never on the other requests in the batch.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::mpsc::UnboundedSender;

use super::api::{finish_reason, ApiError};
use super::metrics::ModelMetrics;
use crate::error::{Error, Result};
use crate::generate::{Engine, Stream, StreamOutput, Update};
use crate::nn::model::Model;

/// Bits of an engine key that hold the stream's index within its job.
const CHOICE_BITS: u32 = 16;
/// Most streams one job (and so one engine, see [`WorkerConfig::max_streams`]) may hold.
pub const MAX_STREAMS: usize = 1 << CHOICE_BITS;

/// What a job's streams produced, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Text of stream `choice` that became final (never empty). Sent only to jobs that asked
    /// for pieces.
    Piece {
        /// The stream's index in the job.
        choice: usize,
        /// The text.
        text: String,
        /// The probability its last token was sampled with.
        prob: Option<f32>,
    },
    /// Stream `choice` ended.
    Done {
        /// The stream's index in the job.
        choice: usize,
        /// Its whole text, token count and stop reason.
        output: StreamOutput,
    },
    /// The job was ended early (past its deadline, or the server shuts down); no more events
    /// follow.
    Failed(ApiError),
}

/// One request: its streams, where to send their events, and its deadline.
#[derive(Debug)]
pub struct Job {
    /// The streams, in choice order (at most [`MAX_STREAMS`]).
    pub streams: Vec<Stream>,
    /// Where the events go; a closed channel means the client went away.
    pub tx: UnboundedSender<Event>,
    /// Send [`Event::Piece`]s (streaming answers) or only [`Event::Done`]s.
    pub pieces: bool,
    /// When the request arrived (for the time to first token).
    pub arrived: Instant,
    /// When it is failed if not finished.
    pub deadline: Instant,
}

/// Settings of one model's engine thread.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Engine shards (threads); 0: all cores.
    pub threads: usize,
    /// Most streams in the engine at once (rows of the batch).
    pub max_streams: usize,
    /// Most jobs waiting in the queue.
    pub max_queue: usize,
    /// The per-request time limit (for the error message; deadlines come with the jobs).
    pub timeout: Duration,
}

enum Msg {
    Submit(Job),
    /// Fail queued jobs, refuse new ones, and end running ones at this instant.
    Shutdown(Instant),
}

/// Counters the HTTP side reads.
#[derive(Debug, Default)]
struct Shared {
    /// Jobs submitted and not yet admitted or dropped.
    pending: AtomicUsize,
    /// Streams in the engine.
    active: AtomicUsize,
}

/// The HTTP side's handle on one model's engine thread. Dropping it (every clone of the
/// server state) ends the thread once it has nothing left to do.
#[derive(Debug)]
pub struct Worker {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    cfg: WorkerConfig,
}

impl Worker {
    /// Starts the engine thread of `model`.
    pub fn spawn(
        name: &str,
        model: Arc<Model<f32>>,
        cfg: WorkerConfig,
        metrics: ModelMetrics,
    ) -> Result<(Worker, JoinHandle<()>)> {
        if cfg.max_streams == 0 || cfg.max_streams > MAX_STREAMS {
            return Err(Error::config(
                "max-streams",
                format!("{} (must be 1 to {MAX_STREAMS})", cfg.max_streams),
            ));
        }
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let mut state = Loop {
            engine: Engine::new(model, cfg.threads),
            rx,
            shared: Arc::clone(&shared),
            cfg: cfg.clone(),
            metrics,
            queue: VecDeque::new(),
            running: HashMap::new(),
            next_job: 0,
            closing: None,
            updates: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("engine {name}"))
            .spawn(move || state.run())
            .map_err(|e| Error::Serve(format!("cannot start the engine thread: {e}")))?;
        Ok((Worker { tx, shared, cfg }, thread))
    }

    /// Queues a job. Errors (429 with `Retry-After`) when `max_queue` jobs already wait, or
    /// (503) when the engine thread is gone.
    pub fn submit(&self, job: Job) -> std::result::Result<(), ApiError> {
        let max = self.cfg.max_queue;
        if self
            .shared
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p < max).then_some(p + 1)
            })
            .is_err()
        {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "{max} requests are already waiting for this model (--max-queue); retry later"
                ),
            )
            .retry_after(1));
        }
        self.tx.send(Msg::Submit(job)).map_err(|_| {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_stopped",
                "the model's engine has stopped",
            )
        })
    }

    /// Starts shutting down: queued jobs fail now, running ones at `at` unless they end
    /// first.
    pub fn shutdown(&self, at: Instant) {
        let _ = self.tx.send(Msg::Shutdown(at));
    }

    /// Jobs waiting (not yet admitted).
    pub fn queued(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Streams in the engine.
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }
}

/// A job whose streams are in the engine.
struct Running {
    tx: UnboundedSender<Event>,
    pieces: bool,
    arrived: Instant,
    deadline: Instant,
    /// Per stream: still in the engine, and when it last sampled.
    live: Vec<bool>,
    last_token: Vec<Option<Instant>>,
    left: usize,
    first_token_seen: bool,
}

struct Loop {
    engine: Engine,
    rx: Receiver<Msg>,
    shared: Arc<Shared>,
    cfg: WorkerConfig,
    metrics: ModelMetrics,
    queue: VecDeque<Job>,
    running: HashMap<u64, Running>,
    next_job: u64,
    closing: Option<Instant>,
    updates: Vec<Update>,
}

fn key(job: u64, choice: usize) -> u64 {
    (job << CHOICE_BITS) | choice as u64
}

impl Loop {
    fn timeout_error(&self) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the request did not finish within this server's limit of {} s (--timeout)",
                self.cfg.timeout.as_secs_f64()
            ),
        )
    }

    fn shutdown_error() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .retry_after(1)
    }

    fn run(&mut self) {
        loop {
            if self.engine.is_empty() && self.queue.is_empty() {
                // Nothing to do: wait for a message (or for the server to go away).
                match self.rx.recv() {
                    Ok(m) => self.on_msg(m),
                    Err(_) => return,
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(m) => self.on_msg(m),
                    Err(TryRecvError::Empty) => break,
                    // The server is gone; its clients with it.
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let now = Instant::now();
            self.sweep_queue(now);
            self.sweep_running(now);
            self.admit();
            self.publish();
            if self.engine.is_empty() {
                continue;
            }
            self.updates.clear();
            let mut updates = std::mem::take(&mut self.updates);
            self.engine.step(&mut updates);
            let now = Instant::now();
            for u in updates.drain(..) {
                self.route(u, now);
            }
            self.updates = updates;
            self.publish();
        }
    }

    fn publish(&self) {
        let active = self.engine.len();
        self.shared.active.store(active, Ordering::SeqCst);
        self.metrics.active.set(active as i64);
        self.metrics
            .queued
            .set(self.shared.pending.load(Ordering::SeqCst) as i64);
    }

    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Submit(job) => {
                if self.closing.is_some() {
                    self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                    let _ = job.tx.send(Event::Failed(Self::shutdown_error()));
                } else {
                    self.queue.push_back(job);
                }
            }
            Msg::Shutdown(at) => {
                self.closing = Some(at);
                for r in self.running.values_mut() {
                    r.deadline = r.deadline.min(at);
                }
            }
        }
    }

    /// Queued jobs: gone clients are dropped, expired ones (all of them while closing) fail.
    fn sweep_queue(&mut self, now: Instant) {
        let closing = self.closing.is_some();
        let timeout = self.timeout_error();
        let before = self.queue.len();
        self.queue.retain(|job| {
            if job.tx.is_closed() {
                return false;
            }
            if closing {
                let _ = job.tx.send(Event::Failed(Self::shutdown_error()));
                return false;
            }
            if now >= job.deadline {
                let _ = job.tx.send(Event::Failed(timeout.clone()));
                return false;
            }
            true
        });
        let gone = before - self.queue.len();
        if gone > 0 {
            self.shared.pending.fetch_sub(gone, Ordering::SeqCst);
        }
    }

    /// Running jobs whose client went away or whose deadline passed leave the engine.
    fn sweep_running(&mut self, now: Instant) {
        let mut ended: Vec<(u64, Option<ApiError>, &'static str)> = Vec::new();
        for (&id, r) in &self.running {
            if r.tx.is_closed() {
                ended.push((id, None, "disconnect"));
            } else if now >= r.deadline {
                let shutting = self.closing.is_some_and(|at| now >= at);
                if shutting {
                    ended.push((id, Some(Self::shutdown_error()), "shutdown"));
                } else {
                    ended.push((id, Some(self.timeout_error()), "timeout"));
                }
            }
        }
        for (id, err, reason) in ended {
            let r = self.running.remove(&id).expect("listed above");
            let mut left = 0;
            for (c, &live) in r.live.iter().enumerate() {
                if live && self.engine.leave(key(id, c)).is_some() {
                    left += 1;
                }
            }
            self.metrics.ended(reason, left);
            if let Some(e) = err {
                let _ = r.tx.send(Event::Failed(e));
            }
        }
    }

    /// Jobs from the head of the queue join while their streams fit.
    fn admit(&mut self) {
        while let Some(job) = self.queue.front() {
            if self.engine.len() + job.streams.len() > self.cfg.max_streams {
                break;
            }
            let job = self.queue.pop_front().expect("front exists");
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            let id = self.next_job;
            self.next_job += 1;
            let n = job.streams.len();
            let mut joined = 0;
            let mut failed = None;
            for (c, s) in job.streams.into_iter().enumerate() {
                match self.engine.join(key(id, c), s, None) {
                    Ok(()) => joined += 1,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                // Requests are checked before they are queued; this is a server bug.
                for c in 0..joined {
                    self.engine.leave(key(id, c));
                }
                let _ = job.tx.send(Event::Failed(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "engine_error",
                    e.to_string(),
                )));
                continue;
            }
            self.running.insert(
                id,
                Running {
                    tx: job.tx,
                    pieces: job.pieces,
                    arrived: job.arrived,
                    deadline: match self.closing {
                        Some(at) => job.deadline.min(at),
                        None => job.deadline,
                    },
                    live: vec![true; n],
                    last_token: vec![None; n],
                    left: n,
                    first_token_seen: false,
                },
            );
        }
    }

    /// Sends one stream's update to its job.
    fn route(&mut self, u: Update, now: Instant) {
        let id = u.key >> CHOICE_BITS;
        let c = (u.key & ((1 << CHOICE_BITS) - 1)) as usize;
        let Some(r) = self.running.get_mut(&id) else {
            return;
        };
        if u.token.is_some() {
            self.metrics.tokens.inc();
            if !r.first_token_seen {
                r.first_token_seen = true;
                self.metrics
                    .ttft
                    .observe(now.duration_since(r.arrived).as_secs_f64());
            }
            if let Some(t) = r.last_token[c] {
                self.metrics
                    .itl
                    .observe(now.duration_since(t).as_secs_f64());
            }
            r.last_token[c] = Some(now);
        }
        if r.pieces && !u.text.is_empty() {
            let _ = r.tx.send(Event::Piece {
                choice: c,
                text: u.text,
                prob: u.token.map(|t| t.prob),
            });
        }
        if let Some(f) = u.finished {
            r.live[c] = false;
            r.left -= 1;
            self.metrics.ended(finish_reason(&f.output.stop), 1);
            let _ = r.tx.send(Event::Done {
                choice: c,
                output: f.output,
            });
            if r.left == 0 {
                self.running.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{SamplingParams, StreamSpec};
    use crate::nn::model::ModelConfig;
    use crate::serve::metrics::Metrics;
    use crate::tokenizer::{Tokenizer, TokenizerKind, TokenizerOptions};
    use rand::SeedableRng;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn setup() -> (Arc<Model<f32>>, Tokenizer) {
        let t = Tokenizer::train(
            TokenizerKind::Char,
            "the cat sat on the mat; a dog ate the hat!",
            &TokenizerOptions::for_kind(TokenizerKind::Char),
        )
        .unwrap();
        let cfg = ModelConfig {
            vocab: t.vocab_size(),
            embed: 8,
            hidden: 16,
            layers: 1,
            dropout: 0.0,
            tie_weights: false,
        };
        let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
        (Arc::new(Model::new(cfg, &mut rng).unwrap()), t)
    }

    fn cfg(max_streams: usize, max_queue: usize) -> WorkerConfig {
        WorkerConfig {
            threads: 1,
            max_streams,
            max_queue,
            timeout: Duration::from_secs(600),
        }
    }

    fn job(t: &Tokenizer, n: usize, len: usize, seed: u64) -> (Job, UnboundedReceiver<Event>) {
        let (tx, rx) = unbounded_channel();
        let streams = (0..n)
            .map(|c| {
                let spec = StreamSpec {
                    params: SamplingParams::default(),
                    seed,
                    id: c as u64 + 1,
                    max_tokens: Some(len),
                    ..StreamSpec::new(t.encode("the ").unwrap())
                };
                Stream::new(&spec, t).unwrap()
            })
            .collect();
        let now = Instant::now();
        (
            Job {
                streams,
                tx,
                pieces: true,
                arrived: now,
                deadline: now + Duration::from_secs(600),
            },
            rx,
        )
    }

    /// Reads a job's events to the end: pieces joined per choice, and the outputs.
    fn drain(rx: &mut UnboundedReceiver<Event>, n: usize) -> (Vec<String>, Vec<StreamOutput>) {
        let mut pieces = vec![String::new(); n];
        let mut outs = vec![None; n];
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                Event::Piece { choice, text, .. } => pieces[choice].push_str(&text),
                Event::Done { choice, output } => outs[choice] = Some(output),
                Event::Failed(e) => panic!("failed: {e:?}"),
            }
        }
        (pieces, outs.into_iter().map(Option::unwrap).collect())
    }

    #[test]
    fn jobs_run_together_and_match_their_pieces() {
        let (m, t) = setup();
        let metrics = Metrics::new().unwrap();
        let (w, th) = Worker::spawn("t", m, cfg(8, 8), metrics.for_model("t")).unwrap();
        let (a, mut ra) = job(&t, 3, 40, 1);
        let (b, mut rb) = job(&t, 2, 25, 1);
        w.submit(a).unwrap();
        w.submit(b).unwrap();
        let (pa, oa) = drain(&mut ra, 3);
        let (pb, ob) = drain(&mut rb, 2);
        for (p, o) in pa.iter().zip(&oa).chain(pb.iter().zip(&ob)) {
            assert_eq!(p, &o.text);
        }
        // Same seed and id: the same text whatever the length limit and company.
        assert!(oa[0].text.starts_with(&ob[0].text));
        assert_eq!(oa.iter().map(|o| o.tokens).sum::<usize>(), 120);
        drop(w);
        th.join().unwrap();
    }

    #[test]
    fn the_queue_is_bounded_and_a_big_job_waits_for_rows() {
        let (m, t) = setup();
        let metrics = Metrics::new().unwrap();
        // max_queue 0: nothing can even be queued.
        let (w, th) =
            Worker::spawn("t", Arc::clone(&m), cfg(2, 0), metrics.for_model("t")).unwrap();
        let (a, _ra) = job(&t, 1, 5, 1);
        let e = w.submit(a).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(1));
        drop(w);
        th.join().unwrap();
        // Two rows: a job of two streams runs after a job of one, never beside it.
        let (w, th) = Worker::spawn("t", m, cfg(2, 4), metrics.for_model("u")).unwrap();
        let (a, mut ra) = job(&t, 1, 30, 1);
        let (b, mut rb) = job(&t, 2, 30, 2);
        w.submit(a).unwrap();
        w.submit(b).unwrap();
        drain(&mut ra, 1);
        drain(&mut rb, 2);
        assert_eq!(w.queued(), 0);
        drop(w);
        th.join().unwrap();
    }

    #[test]
    fn a_gone_client_frees_its_rows_and_deadlines_fail_jobs() {
        let (m, t) = setup();
        let metrics = Metrics::new().unwrap();
        let (w, th) = Worker::spawn("t", m, cfg(1, 4), metrics.for_model("t")).unwrap();
        // An endless job holds the only row until its client goes away.
        let (mut a, mut ra) = job(&t, 1, 1, 1);
        a.streams = vec![Stream::new(&StreamSpec::new(vec![]), &t).unwrap()];
        let (b, mut rb) = job(&t, 1, 10, 2);
        w.submit(a).unwrap();
        assert!(matches!(ra.blocking_recv(), Some(Event::Piece { .. })));
        w.submit(b).unwrap();
        drop(ra);
        let (_, ob) = drain(&mut rb, 1);
        assert_eq!(ob[0].tokens, 10);
        // A deadline already past: the job fails with a timeout.
        let (mut c, mut rc) = job(&t, 1, 10, 3);
        c.deadline = c.arrived;
        w.submit(c).unwrap();
        match rc.blocking_recv() {
            Some(Event::Failed(e)) => assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT),
            other => panic!("{other:?}"),
        }
        // Shutting down: a running job ends at the shutdown instant, new jobs fail.
        let (mut d, mut rd) = job(&t, 1, 1, 4);
        d.streams = vec![Stream::new(&StreamSpec::new(vec![]), &t).unwrap()];
        w.submit(d).unwrap();
        assert!(matches!(rd.blocking_recv(), Some(Event::Piece { .. })));
        w.shutdown(Instant::now());
        let last = std::iter::from_fn(|| rd.blocking_recv()).last();
        match last {
            Some(Event::Failed(e)) => assert_eq!(e.code, Some("shutting_down")),
            other => panic!("{other:?}"),
        }
        let (e, mut re) = job(&t, 1, 10, 5);
        w.submit(e).unwrap();
        assert!(matches!(re.blocking_recv(), Some(Event::Failed(_))));
        drop(w);
        th.join().unwrap();
        let text = metrics.encode().unwrap();
        assert!(text.contains("reason=\"disconnect\"} 1"), "{text}");
        assert!(text.contains("reason=\"shutdown\"} 1"), "{text}");
    }
}
