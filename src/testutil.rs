//! Small tokenizers and untrained models shared by the unit tests.

use std::path::Path;
use std::sync::Arc;

use rand::SeedableRng;

use crate::nn::model::{Model, ModelConfig};
use crate::tokenizer::{Tokenizer, TokenizerKind, TokenizerOptions};

/// A tokenizer of `kind` trained on `text`, keeping every token (up to 300).
pub(crate) fn tokenizer(kind: TokenizerKind, text: &str) -> Tokenizer {
    let opts = TokenizerOptions {
        vocab_size: 300,
        min_frequency: 1,
    };
    Tokenizer::train(kind, text, &opts).unwrap()
}

/// An untrained model: vocabulary V, embedding E, hidden H, L layers, no dropout, weights
/// drawn from `seed`.
pub(crate) fn model(v: usize, e: usize, h: usize, l: usize, seed: u64) -> Arc<Model<f32>> {
    let cfg = ModelConfig {
        vocab: v,
        embed: e,
        hidden: h,
        layers: l,
        dropout: 0.0,
        tie_weights: false,
    };
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    Arc::new(Model::new(cfg, &mut rng).unwrap())
}

/// The names in a directory, sorted.
pub(crate) fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
