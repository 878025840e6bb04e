//! Model-level checkpoints: a trained model (and, for resumable checkpoints, the whole
//! training state) mapped onto a [`CheckpointFile`].
//!
//! Tensors (f32, PyTorch state-dict names and layouts, see [`Params::to_named`]):
//! - `embed.weight`, `rnn.{weight_ih,weight_hh,bias_ih,bias_hh}_l{k}`, `out.weight`, `out.bias`;
//! - resumable checkpoints add the Adam moments under `optim.m.` and `optim.v.` (same names
//!   after the prefix) and the carried state `state.h` and `state.c`, (L, B, H).
//!
//! Metadata (JSON, [`Meta`]): model config, tokenizer, training config and progress, RNG
//! state, loss history and the corpus fingerprint.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::checkpoint::format::CheckpointFile;
use crate::error::{Error, Result};
use crate::nn::model::{LstmState, Model, ModelConfig, Params};
use crate::tokenizer::Tokenizer;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::{Progress, TrainConfig};

/// What a checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Weights, optimizer moments, carried state and progress: `--resume` continues exactly.
    Full,
    /// Weights only (for sampling; small enough to ship).
    Weights,
}

/// The corpus a model was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusInfo {
    /// Path as given to `train`.
    pub path: PathBuf,
    /// Hex SHA-256 of its bytes.
    pub fingerprint: String,
    /// Training and validation token counts.
    pub train_tokens: usize,
    /// Validation token count.
    pub val_tokens: usize,
}

/// The JSON metadata stored in a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    /// Full or weights-only.
    pub kind: CheckpointKind,
    /// Architecture.
    pub model: ModelConfig,
    /// The tokenizer, as [`Tokenizer::to_json`].
    pub tokenizer: String,
    /// Training configuration.
    pub train: TrainConfig,
    /// Step, epoch, data cursor, timings, losses, RNG.
    pub progress: Progress,
    /// Adam hyper-parameters and step count.
    pub adam: AdamConfig,
    /// Adam's update count (for bias correction).
    pub adam_t: u64,
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
    /// Everything else the checkpoint says.
    pub meta: Meta,
    /// Where it was read from.
    pub path: PathBuf,
}

/// Everything needed to resume training.
#[derive(Clone, Debug)]
pub struct Resumable {
    /// Model, tokenizer and metadata.
    pub loaded: LoadedModel,
    /// Optimizer state.
    pub adam: Adam,
    /// Carried (h, c) of the B training streams.
    pub state: LstmState<f32>,
}

/// Builds the checkpoint file for `model` (+ training state when `full` is given).
pub fn build(
    model: &Model<f32>,
    meta: &Meta,
    full: Option<(&Adam, &LstmState<f32>)>,
) -> Result<CheckpointFile> {
    let mut f = CheckpointFile::default();
    for (name, shape, data) in model.params.to_named("") {
        f.insert(name, shape, data)?;
    }
    if let Some((adam, state)) = full {
        for (prefix, p) in [("optim.m.", &adam.m), ("optim.v.", &adam.v)] {
            for (name, shape, data) in p.to_named(prefix) {
                f.insert(name, shape, data)?;
            }
        }
        let (l, b, h) = (state.h.len(), state.batch(), model.config.hidden);
        let flat = |xs: &[Array2<f32>]| xs.iter().flat_map(|a| a.iter().copied()).collect();
        f.insert("state.h", vec![l, b, h], flat(&state.h))?;
        f.insert("state.c", vec![l, b, h], flat(&state.c))?;
    }
    f.meta = serde_json::to_value(meta).map_err(|e| Error::Shape(e.to_string()))?;
    Ok(f)
}

/// Writes a checkpoint atomically (temp file, fsync, rename).
pub fn save(
    path: &Path,
    model: &Model<f32>,
    meta: &Meta,
    full: Option<(&Adam, &LstmState<f32>)>,
) -> Result<()> {
    build(model, meta, full)?.save_atomic(path)
}

fn parse_meta(f: &CheckpointFile, path: &Path) -> Result<(Meta, Tokenizer)> {
    let err = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let meta: Meta = serde_json::from_value(f.meta.clone())
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
    Ok((meta, tokenizer))
}

fn take_params(
    f: &mut CheckpointFile,
    cfg: &ModelConfig,
    prefix: &str,
    path: &Path,
) -> Result<Params<f32>> {
    Params::from_named(cfg, prefix, |name, shape| f.take(name, shape, path))
}

/// Loads a model for inference (full or weights-only checkpoints).
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    let mut f = CheckpointFile::load(path)?;
    let (meta, tokenizer) = parse_meta(&f, path)?;
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

/// Loads everything `--resume` needs; weights-only checkpoints are refused with a message.
pub fn load_resumable(path: &Path) -> Result<Resumable> {
    let mut f = CheckpointFile::load(path)?;
    let (meta, tokenizer) = parse_meta(&f, path)?;
    if meta.kind != CheckpointKind::Full {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: "holds weights only (no optimizer state); it can be sampled from but not resumed"
                .into(),
        });
    }
    let cfg = meta.model.clone();
    let params = take_params(&mut f, &cfg, "", path)?;
    let mut adam = Adam::new(meta.adam, &cfg);
    adam.m = take_params(&mut f, &cfg, "optim.m.", path)?;
    adam.v = take_params(&mut f, &cfg, "optim.v.", path)?;
    adam.t = meta.adam_t;
    let b = meta.train.batch;
    let (l, h) = (cfg.layers, cfg.hidden);
    let mut state = LstmState::zeros(&cfg, b);
    for (name, dst) in [("state.h", &mut state.h), ("state.c", &mut state.c)] {
        let data = f.take(name, &[l, b, h], path)?;
        for (k, a) in dst.iter_mut().enumerate() {
            a.as_slice_mut()
                .expect("standard layout")
                .copy_from_slice(&data[k * b * h..(k + 1) * b * h]);
        }
    }
    Ok(Resumable {
        loaded: LoadedModel {
            model: Model {
                config: cfg,
                params,
            },
            tokenizer,
            meta,
            path: path.to_path_buf(),
        },
        adam,
        state,
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
