//! Training checkpoints: the model schema of [`crate::checkpoint`] plus the training state,
//! so that `--resume` continues exactly.
//!
//! Tensors added to the model's: the Adam moments under `optim.m.` and `optim.v.` (the model's
//! names after the prefix) and the carried state `state.h` and `state.c`, (L, B, H). A run
//! that keeps a weight average (`ema` > 0) writes the average as the model, so sampling,
//! evaluation and export use it, and the raw training weights under `train.`.
//!
//! Metadata (JSON, [`TrainMeta`]): the model part ([`ModelMeta`]) and, beside it, the training
//! config, progress (step, epoch, data cursor, timings, losses, RNG) and Adam's settings.

use std::path::Path;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::config::{Progress, TrainConfig};
use super::optim::{Adam, AdamConfig};
use crate::checkpoint::format::CheckpointFile;
use crate::checkpoint::{self, CheckpointKind, LoadedModel, ModelMeta, ReadCheckpoint};
use crate::error::{Error, Result};
use crate::nn::model::{LstmState, Model, Params};

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
    /// The weight average (`loaded.model` then holds the raw training weights).
    pub average: Option<Params<f32>>,
}

/// What a full checkpoint holds beside the model.
#[derive(Clone, Copy, Debug)]
pub struct TrainState<'a> {
    /// Optimizer state.
    pub adam: &'a Adam,
    /// Carried (h, c) of the B training streams.
    pub state: &'a LstmState<f32>,
    /// The weight average, written as the model (the raw weights go under `train.`).
    pub average: Option<&'a Params<f32>>,
}

/// The checkpoint file of `model` with `meta`; with `full`, the optimizer moments, the
/// carried state and the weight average too.
pub fn build(
    model: &Model<f32>,
    meta: &TrainMeta,
    full: Option<TrainState<'_>>,
) -> Result<CheckpointFile> {
    let average = full.and_then(|t| t.average);
    let mut f = match average {
        Some(avg) => {
            let shown = Model {
                config: model.config.clone(),
                params: avg.clone(),
            };
            let mut f = checkpoint::build(&shown, meta)?;
            for (name, shape, data) in model.params.to_named("train.") {
                f.insert(name, shape, data)?;
            }
            f
        }
        None => checkpoint::build(model, meta)?,
    };
    if let Some(TrainState { adam, state, .. }) = full {
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
    Ok(f)
}

/// [`build`], written atomically to `path` (temp file, fsync, rename).
pub fn save(
    path: &Path,
    model: &Model<f32>,
    meta: &TrainMeta,
    full: Option<TrainState<'_>>,
) -> Result<()> {
    build(model, meta, full)?.save_atomic(path)
}

impl TrainMeta {
    /// Checks every field of the training record (the model part is checked on reading);
    /// errors name the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.train
            .validate()
            .map_err(|e| format!("training config: {e}"))?;
        let p = &self.progress;
        let finite = |name: &str, v: f64, ok: bool| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(format!("progress.{name}: {v} is not a valid value"))
            }
        };
        finite("elapsed_secs", p.elapsed_secs, p.elapsed_secs >= 0.0)?;
        finite("lr_scale", p.lr_scale as f64, p.lr_scale > 0.0)?;
        finite("loss_acc", p.loss_acc.0, true)?;
        if let Some(b) = p.best_val {
            finite("best_val", b, true)?;
        }
        let a = &self.adam;
        for (name, v, ok) in [
            ("beta1", a.beta1, (0.0..1.0).contains(&a.beta1)),
            ("beta2", a.beta2, (0.0..1.0).contains(&a.beta2)),
            ("eps", a.eps, a.eps > 0.0),
            ("weight_decay", a.weight_decay, a.weight_decay >= 0.0),
        ] {
            if !(v.is_finite() && ok) {
                return Err(format!("adam.{name}: {v} is outside its range"));
            }
        }
        Ok(())
    }
}

/// The training record of a checkpoint's metadata, read in place and validated.
fn parse_train_meta(f: &CheckpointFile, path: &Path) -> Result<TrainMeta> {
    let err = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let meta: TrainMeta = f
        .meta_as()
        .map_err(|e| err(format!("metadata has no training record: {e}")))?;
    meta.validate().map_err(err)?;
    Ok(meta)
}

/// Loads a model and the training record of its checkpoint (for `info` and `export`).
pub fn load_with_meta(path: &Path) -> Result<(LoadedModel, TrainMeta)> {
    let r = checkpoint::read(path)?;
    let meta = parse_train_meta(&r.file, path)?;
    Ok((checkpoint::into_model(r, path)?, meta))
}

/// Loads everything `--resume` needs; weights-only checkpoints are refused with a message.
pub fn load_resumable(path: &Path) -> Result<Resumable> {
    resumable(checkpoint::read(path)?, path)
}

/// [`load_resumable`] from the bytes of a checkpoint already in memory; `path` names it in
/// errors.
pub fn load_resumable_bytes(bytes: &[u8], path: &Path) -> Result<Resumable> {
    resumable(checkpoint::read_bytes(bytes, path)?, path)
}

/// Every field is validated before anything is allocated from it; the optimizer moments and
/// the carried state are built from tensors whose shapes were checked against their data, so
/// nothing larger than the file can be asked for.
fn resumable(r: ReadCheckpoint, path: &Path) -> Result<Resumable> {
    let err = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    if r.meta.kind != CheckpointKind::Full {
        return Err(err(
            "holds weights only (no optimizer state); it can be sampled from but not resumed"
                .into(),
        ));
    }
    let meta = parse_train_meta(&r.file, path)?;
    let cfg = r.meta.model.clone();
    let mut f = r.file;
    let raw = if meta.train.ema > 0.0 {
        Some(checkpoint::take_params(&mut f, &cfg, "train.", path)?)
    } else {
        None
    };
    let m = checkpoint::take_params(&mut f, &cfg, "optim.m.", path)?;
    let v = checkpoint::take_params(&mut f, &cfg, "optim.v.", path)?;
    let (l, b, h) = (cfg.layers, meta.train.batch, cfg.hidden);
    let hs = f.take("state.h", &[l, b, h], path)?;
    let cs = f.take("state.c", &[l, b, h], path)?;
    let layers = |data: Vec<f32>| -> Result<Vec<Array2<f32>>> {
        data.chunks_exact(b * h)
            .map(|c| Array2::from_shape_vec((b, h), c.to_vec()).map_err(|e| err(e.to_string())))
            .collect()
    };
    let state = LstmState {
        h: layers(hs)?,
        c: layers(cs)?,
    };
    let sha256 = r.sha256;
    let mut loaded = checkpoint::into_model(
        ReadCheckpoint {
            file: f,
            meta: r.meta,
            tokenizer: r.tokenizer,
            sha256,
        },
        path,
    )?;
    let adam = Adam {
        config: meta.adam,
        m,
        v,
        t: meta.adam_t,
    };
    let average = raw.map(|raw| std::mem::replace(&mut loaded.model.params, raw));
    Ok(Resumable {
        loaded,
        meta,
        adam,
        state,
        average,
    })
}
