//! Checkpoints: the file format ([`format`]), the model schema on top of it ([`model`]) and
//! the import of plain PyTorch LSTM language models ([`import`]).

pub mod format;
pub mod import;
pub mod model;

pub use model::*;
