//! quill: an LSTM language model that learns a text corpus and writes new text in its style.
//!
//! # Map
//! The data flows through one stage per module, left to right:
//!
//! ```text
//! corpus ──▶ tokenizer ──▶ batches ──▶ model ──▶ optimizer ──▶ checkpoint ──▶ generate ──▶ CLI / TUI / files
//! ```
//!
//! | stage | module | what it owns |
//! |---|---|---|
//! | corpus | [`train::corpus`] | reading text files (UTF-8 checks, line endings, fingerprint) |
//! | tokenizer | [`tokenizer`] | char / word / BPE vocabularies, encode, streaming decode |
//! | batches | [`train::batcher`] | B streams over the token sequence, windows of T, epochs |
//! | model | [`nn::model`] on [`nn`]'s layers | forward, loss, backward; [`nn::generator`] steps it one token at a time |
//! | optimizer | [`train::optim`] | Adam/AdamW, clipping, learning-rate schedule |
//! | training loop | [`train::trainer`] | truncated BPTT, validation, events; [`train::metrics`] the metrics log |
//! | checkpoint | [`checkpoint`] (file format, model schema), [`train::checkpoint`] (resumable state) | safetensors files, written through [`atomic`] |
//! | generate | [`generate`] | sampler, stream, the engine (continuous batching), session, batch runner, sample files |
//! | scoring | [`score`] | loss per line / paragraph / document of existing text, on the evaluation of [`train::trainer`] |
//! | copy detection | [`copies`] | the corpus's suffix array (cached beside the checkpoint): spans of generated text copied from it |
//! | front ends | `cli` (binary), [`tui`] (generation UI, training dashboard), [`plot`], [`bench`] | printing, terminals, images, timing |
//!
//! Errors are typed ([`error`]); the library never prints: progress goes through callbacks and
//! channels, and only the binary's `cli` module writes to stdout/stderr.
//!
//! Shapes are written with single letters throughout the crate:
//! B batch (parallel streams), T time steps in a window, D input size of a layer,
//! E embedding size, H hidden size, V vocabulary size, L number of layers.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod atomic;
pub mod bench;
pub mod checkpoint;
pub mod copies;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod nn;
pub mod plot;
pub mod score;
pub mod serve;
#[cfg(test)]
mod testutil;
pub mod tokenizer;
pub mod train;
pub mod tui;

pub use error::{Error, Result};
