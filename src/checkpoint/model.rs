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
    /// SHA-256 (lowercase hex) of the bytes it was loaded from.
    pub sha256: String,
}

/// A checkpoint file holding `model`'s weights and the metadata `meta` (anything that
/// serialises to a JSON object carrying [`ModelMeta`]'s fields); callers add further tensors
/// before saving.
pub fn build<M: Serialize>(model: &Model<f32>, meta: &M) -> Result<CheckpointFile> {
    let mut f = CheckpointFile::default();
    for (name, shape, data) in model.params.to_named("") {
        f.insert(name, shape, data)?;
    }
    f.set_meta(meta)?;
    Ok(f)
}

/// A checkpoint file read and checked as far as its model metadata goes.
#[derive(Debug)]
pub struct ReadCheckpoint {
    /// The parsed file (tensors not yet taken).
    pub file: CheckpointFile,
    /// Its model metadata.
    pub meta: ModelMeta,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
}

/// Most bytes of tokenizer JSON per vocabulary entry (plus [`TOKENIZER_JSON_BASE`]): far
/// more than any tokenizer quill writes needs, and a bound on what parsing one may cost.
pub const TOKENIZER_JSON_PER_TOKEN: usize = 1024;
/// Tokenizer JSON allowed on top of the per-token allowance.
pub const TOKENIZER_JSON_BASE: usize = 64 * 1024;

/// Reads a checkpoint file and checks its model metadata.
pub fn read(path: &Path) -> Result<ReadCheckpoint> {
    let (f, sha256) = CheckpointFile::load_hashed(path)?;
    check(f, sha256, path)
}

/// [`read`] on the bytes of a checkpoint already in memory; `path` names it in errors.
pub fn read_bytes(bytes: &[u8], path: &Path) -> Result<ReadCheckpoint> {
    let f = CheckpointFile::from_bytes(bytes, path)?;
    let sha256 = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(bytes));
    check(f, sha256, path)
}

/// Every field of the model metadata, checked before anything is built from it: the
/// metadata is read in place (no copy of the JSON), the model's sizes are validated, and the
/// tokenizer JSON is bounded by the vocabulary size before it is parsed.
fn check(f: CheckpointFile, sha256: String, path: &Path) -> Result<ReadCheckpoint> {
    let err = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let meta: ModelMeta = f
        .meta_as()
        .map_err(|e| err(format!("metadata is not a quill model description: {e}")))?;
    meta.model
        .validate()
        .map_err(|e| err(format!("model config: {e}")))?;
    let limit = meta
        .model
        .vocab
        .saturating_mul(TOKENIZER_JSON_PER_TOKEN)
        .saturating_add(TOKENIZER_JSON_BASE);
    if meta.tokenizer.len() > limit {
        return Err(err(format!(
            "tokenizer: {} bytes of JSON for a vocabulary of {}, more than the {limit} allowed",
            meta.tokenizer.len(),
            meta.model.vocab
        )));
    }
    let tokenizer =
        Tokenizer::from_json(&meta.tokenizer).map_err(|e| err(format!("tokenizer data: {e}")))?;
    if tokenizer.vocab_size() != meta.model.vocab {
        return Err(err(format!(
            "tokenizer has {} tokens but the model's vocabulary is {}",
            tokenizer.vocab_size(),
            meta.model.vocab
        )));
    }
    Ok(ReadCheckpoint {
        file: f,
        meta,
        tokenizer,
        sha256,
    })
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
    into_model(read(path)?, path)
}

/// [`load_model`] from the bytes of a checkpoint already in memory; `path` names it in
/// errors.
pub fn load_model_bytes(bytes: &[u8], path: &Path) -> Result<LoadedModel> {
    into_model(read_bytes(bytes, path)?, path)
}

/// The model of a checked checkpoint (tensor shapes are checked as they are taken).
pub fn into_model(mut r: ReadCheckpoint, path: &Path) -> Result<LoadedModel> {
    let params = take_params(&mut r.file, &r.meta.model, "", path)?;
    Ok(LoadedModel {
        model: Model {
            config: r.meta.model.clone(),
            params,
        },
        tokenizer: r.tokenizer,
        meta: r.meta,
        path: path.to_path_buf(),
        sha256: r.sha256,
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
