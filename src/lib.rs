//! quill: an LSTM language model that learns a text corpus and writes new text in its style.
//!
//! Shapes are written with single letters throughout the crate:
//! B batch (parallel streams), T time steps in a window, D input size of a layer,
//! E embedding size, H hidden size, V vocabulary size, L number of layers.

pub mod atomic;
pub mod bench;
pub mod checkpoint;
pub mod error;
pub mod generate;
pub mod nn;
pub mod plot;
pub mod serve;
pub mod tokenizer;
pub mod train;
pub mod tui;

pub use error::{Error, Result};
