//! Checkpoints: the file format ([`format`]) and the model schema on top of it ([`model`]).

pub mod format;
pub mod model;

pub use model::*;
