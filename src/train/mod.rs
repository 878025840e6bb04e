//! Training: corpus (files, documents, fingerprints), preparation (streaming tokenization into
//! memory or a memory-mapped token file), data batcher, optimizer, the BPTT loop.

pub mod batcher;
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod metrics;
pub mod optim;
pub mod prepare;
pub mod step;
pub mod tokens;
pub mod trainer;

pub use trainer::*;
