//! Training: corpus, data batcher, optimizer, the BPTT loop.

pub mod batcher;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod metrics;
pub mod optim;
pub mod trainer;

pub use trainer::*;
