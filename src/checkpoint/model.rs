//! The model schema of a checkpoint: a trained model's weights, its tokenizer and what every
//! checkpoint says about them, mapped onto a [`CheckpointFile`]. Training state (optimizer
//! moments, carried state, progress) is added on top by `train::checkpoint`; this module never
//! needs it.
//!
//! Tensors (f32, PyTorch state-dict names and layouts, see [`Params::to_named`]):
//! `embed.weight`, `rnn.{weight_ih,weight_hh,bias_ih,bias_hh}_l{k}`, `out.weight`, `out.bias`.
//!
//! Metadata (JSON): [`ModelMeta`]'s fields (model config, tokenizer, corpus fingerprint,
//! version) at the top level, beside whatever else the writer adds.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::CheckpointFile;
use crate::error::{Error, Result};
use crate::nn::model::{Model, ModelConfig, Params};
use crate::tokenizer::Tokenizer;

/// What a checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Weights, optimizer moments, carried state and progress: `--resume` continues exactly.
    Full,
    /// Weights only (for sampling; small enough to ship).
    Weights,
}

/// The corpus a model was trained on. Checkpoints written before corpora of many files
/// have only the first four fields; the others default to empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CorpusInfo {
    /// Path as given to `train` (the first, when several were given).
    pub path: PathBuf,
    /// The corpus fingerprint (`train::corpus::combined_fingerprint`): for one file, the hex
    /// SHA-256 of its bytes; for several, a hash over their hashes in order and the separator.
    pub fingerprint: String,
    /// Training token count.
    pub train_tokens: usize,
    /// Validation token count.
    pub val_tokens: usize,
    /// Every path given, when there were several (`path` is the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathBuf>,
    /// Files with text read, when not exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<usize>,
    /// The separate validation corpus (`--val-corpus`), if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_paths: Vec<PathBuf>,
}

/// The part of a checkpoint's metadata that every checkpoint has and inference reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Full or weights-only.
    pub kind: CheckpointKind,
    /// Architecture.
    pub model: ModelConfig,
    /// The tokenizer, as [`Tokenizer::to_json`].
    pub tokenizer: String,
    /// The training corpus.
    pub corpus: CorpusInfo,
    /// Version of quill that wrote the file.
    pub quill_version: String,
}

/// A model loaded for inference, with its tokenizer and metadata.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    /// The weights.
    pub model: Model<f32>,
    /// The tokenizer the model was trained with.
    pub tokenizer: Tokenizer,
    /// What the checkpoint says about the model.
    pub meta: ModelMeta,
    /// Where it was read from.
    pub path: PathBuf,
}

/// A checkpoint file holding `model`'s weights and the metadata `meta` (any JSON object that
/// carries [`ModelMeta`]'s fields); callers add further tensors before saving.
pub fn build(model: &Model<f32>, meta: serde_json::Value) -> Result<CheckpointFile> {
    let mut f = CheckpointFile::default();
    for (name, shape, data) in model.params.to_named("") {
        f.insert(name, shape, data)?;
    }
    f.meta = meta;
    Ok(f)
}

/// Reads a checkpoint file and checks its model metadata: the parsed file (tensors not yet
/// taken), the metadata and the tokenizer.
pub fn read(path: &Path) -> Result<(CheckpointFile, ModelMeta, Tokenizer)> {
    let f = CheckpointFile::load(path)?;
    let err = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let meta: ModelMeta = serde_json::from_value(f.meta.clone())
        .map_err(|e| err(format!("metadata is not a quill model description: {e}")))?;
    meta.model
        .validate()
        .map_err(|e| err(format!("model config: {e}")))?;
    let tokenizer =
        Tokenizer::from_json(&meta.tokenizer).map_err(|e| err(format!("tokenizer data: {e}")))?;
    if tokenizer.vocab_size() != meta.model.vocab {
        return Err(err(format!(
            "tokenizer has {} tokens but the model's vocabulary is {}",
            tokenizer.vocab_size(),
            meta.model.vocab
        )));
    }
    Ok((f, meta, tokenizer))
}

/// Takes the tensors of a [`Params`] stored under `prefix` out of `f`.
pub fn take_params(
    f: &mut CheckpointFile,
    cfg: &ModelConfig,
    prefix: &str,
    path: &Path,
) -> Result<Params<f32>> {
    Params::from_named(cfg, prefix, |name, shape| f.take(name, shape, path))
}

/// Loads a model for inference (full or weights-only checkpoints).
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    let (mut f, meta, tokenizer) = read(path)?;
    let params = take_params(&mut f, &meta.model, "", path)?;
    Ok(LoadedModel {
        model: Model {
            config: meta.model.clone(),
            params,
        },
        tokenizer,
        meta,
        path: path.to_path_buf(),
    })
}

/// The checkpoint `sample`/`tui` use when none is named: the newest `*-best.safetensors` in
/// `dir`, else the newest `*.safetensors`.
pub fn find_default(dir: &Path) -> Result<PathBuf> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut best: Option<(bool, std::time::SystemTime, PathBuf)> = None;
    for entry in rd.flatten() {
        let p = entry.path();
        if p.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let is_best = p
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| s.ends_with("-best"));
        let mtime = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        let key = (is_best, mtime, p);
        if best.as_ref().is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
            best = Some(key);
        }
    }
    best.map(|b| b.2).ok_or_else(|| Error::Checkpoint {
        path: dir.to_path_buf(),
        msg: "no checkpoint (*.safetensors) found here; train one with `quill train` or name one with --checkpoint".into(),
    })
}
