//! Generation: the sampler and batched generation.

pub mod batch;
pub mod sampler;
