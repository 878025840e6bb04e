//! Generation, written once for every caller.
//!
//! - [`sampler`]: one row of logits in, one token out (temperature, min-p, top-k, top-p, the
//!   repetition / frequency / presence penalties over the stream's history, ban lists;
//!   NaN-safe).
//! - [`stream`]: one text being generated: sampler + streaming decoder + stop strings +
//!   end-of-text + the UTF-8 guard of BPE models, and the shared rules (start tokens, seeds,
//!   stop reasons).
//! - [`engine`]: many streams stepped together (one matrix product per layer per step),
//!   joining and leaving at any step.
//! - [`session`]: one stream, interactively (pause, continue, re-steer, next-token
//!   distribution): `quill sample` to stdout and the TUI.
//! - [`batch`]: many planned samples (sweeps, primes) through the engine: `quill sample
//!   --out`, the dashboard's samples.
//! - [`output`]: sample files, manifest and JSONL, written atomically.

pub mod batch;
pub mod engine;
pub mod output;
pub mod sampler;
pub mod session;
pub mod stream;

pub use engine::{Engine, Update};
pub use sampler::{Sampled, Sampler, SamplingParams};
pub use session::Session;
pub use stream::{sample_seed, start_tokens, StopReason, Stream, StreamOutput, StreamSpec};
