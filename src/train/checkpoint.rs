//! Training checkpoints: the model schema of [`crate::checkpoint`] plus the training state,
//! so that `--resume` continues exactly.
//!
//! Tensors added to the model's: the Adam moments under `optim.m.` and `optim.v.` (the model's
//! names after the prefix) and the carried state `state.h` and `state.c`, (L, B, H).
//!
//! Metadata (JSON, [`TrainMeta`]): the model part ([`ModelMeta`]) and, beside it, the training
//! config, progress (step, epoch, data cursor, timings, losses, RNG) and Adam's settings.

use std::path::Path;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::config::{Progress, TrainConfig};
use super::optim::{Adam, AdamConfig};
use crate::checkpoint::{self, CheckpointKind, LoadedModel, ModelMeta};
use crate::error::{Error, Result};
use crate::nn::model::{LstmState, Model};

/// The JSON metadata of a checkpoint written by the trainer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainMeta {
    /// Model config, tokenizer, corpus, version (top-level keys of the JSON).
    #[serde(flatten)]
    pub base: ModelMeta,
    /// Training configuration.
    pub train: TrainConfig,
    /// Step, epoch, data cursor, timings, losses, RNG.
    pub progress: Progress,
    /// Adam hyper-parameters.
    pub adam: AdamConfig,
    /// Adam's update count (for bias correction).
    pub adam_t: u64,
}

/// Everything needed to resume training.
#[derive(Clone, Debug)]
pub struct Resumable {
    /// Model, tokenizer and model metadata.
    pub loaded: LoadedModel,
    /// The training record.
    pub meta: TrainMeta,
    /// Optimizer state.
    pub adam: Adam,
    /// Carried (h, c) of the B training streams.
    pub state: LstmState<f32>,
}

/// Writes a checkpoint of `model` with `meta` atomically (temp file, fsync, rename); with
/// `full`, the optimizer moments and carried state too.
pub fn save(
    path: &Path,
    model: &Model<f32>,
    meta: &TrainMeta,
    full: Option<(&Adam, &LstmState<f32>)>,
) -> Result<()> {
    let meta_json = serde_json::to_value(meta).map_err(|e| Error::Shape(e.to_string()))?;
    let mut f = checkpoint::build(model, meta_json)?;
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
    f.save_atomic(path)
}

fn parse_train_meta(json: &serde_json::Value, path: &Path) -> Result<TrainMeta> {
    serde_json::from_value(json.clone()).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("metadata has no training record: {e}"),
    })
}

/// Loads a model and the training record of its checkpoint (for `info` and `export`).
pub fn load_with_meta(path: &Path) -> Result<(LoadedModel, TrainMeta)> {
    let mut r = checkpoint::read(path)?;
    let meta = parse_train_meta(&r.file.meta, path)?;
    let params = checkpoint::take_params(&mut r.file, &r.meta.model, "", path)?;
    Ok((
        LoadedModel {
            model: Model {
                config: r.meta.model.clone(),
                params,
            },
            tokenizer: r.tokenizer,
            meta: r.meta,
            path: path.to_path_buf(),
            sha256: r.sha256,
        },
        meta,
    ))
}

/// Loads everything `--resume` needs; weights-only checkpoints are refused with a message.
pub fn load_resumable(path: &Path) -> Result<Resumable> {
    let r = checkpoint::read(path)?;
    let (mut f, base, tokenizer) = (r.file, r.meta, r.tokenizer);
    if base.kind != CheckpointKind::Full {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: "holds weights only (no optimizer state); it can be sampled from but not resumed"
                .into(),
        });
    }
    let meta = parse_train_meta(&f.meta, path)?;
    let cfg = base.model.clone();
    let params = checkpoint::take_params(&mut f, &cfg, "", path)?;
    let mut adam = Adam::new(meta.adam, &cfg);
    adam.m = checkpoint::take_params(&mut f, &cfg, "optim.m.", path)?;
    adam.v = checkpoint::take_params(&mut f, &cfg, "optim.v.", path)?;
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
            meta: base,
            path: path.to_path_buf(),
            sha256: r.sha256,
        },
        meta,
        adam,
        state,
    })
}
