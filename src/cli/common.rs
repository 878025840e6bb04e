//! Helpers shared by subcommands.

use std::path::{Path, PathBuf};

use anyhow::Context;
use quill::checkpoint::{self, LoadedModel};

/// Default directory of checkpoints.
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// Resolves `--checkpoint` (or the newest best checkpoint in `checkpoints/`) and loads it.
pub fn load_model(path: Option<&Path>) -> anyhow::Result<LoadedModel> {
    let path: PathBuf = match path {
        Some(p) => p.to_path_buf(),
        None => checkpoint::find_default(Path::new(CHECKPOINT_DIR))
            .context("no --checkpoint given and none found in checkpoints/")?,
    };
    Ok(checkpoint::load_model(&path)?)
}

/// Human-readable parameter count: 3.2M, 850K.
pub fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.0}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Human-readable byte count in powers of 1000: 990 kB, 6.5 MB, 5.00 GB.
pub fn human_bytes(n: u64) -> String {
    let f = n as f64;
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} GB", f / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", f / 1e6),
        n if n >= 1_000 => format!("{:.0} kB", f / 1e3),
        n => format!("{n} B"),
    }
}

/// Text from a checkpoint as it may be printed to a terminal: control characters (escape
/// sequences, carriage returns, ...) are shown escaped instead of acted upon.
pub fn shown(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The regularisation of a training configuration, in one line (`quill train`, `quill info`).
pub fn regularisation(t: &quill::train::TrainConfig) -> String {
    format!(
        "dropout masks {:?}, input dropout {}, embedding dropout {}, weight drop {}, \
         weight average {}{}{}",
        t.dropout_mask,
        t.dropout_input,
        t.dropout_embed,
        t.weight_drop,
        if t.ema > 0.0 {
            t.ema.to_string()
        } else {
            "off".into()
        },
        match t.sampled_softmax {
            0 => String::new(),
            s => format!(", sampled softmax {s}"),
        },
        if t.shift_windows {
            ", shifted windows"
        } else {
            ""
        }
    )
}
