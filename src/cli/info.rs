//! `quill info` and `quill export`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use quill::checkpoint::CheckpointKind;
use quill::train::checkpoint as train_checkpoint;

use super::common::{human_count, shown};

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Checkpoint file.
    path: PathBuf,
    /// Print the metadata as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InfoArgs) -> anyhow::Result<ExitCode> {
    // Written with `?`, so a closed pipe (`| head`) ends quietly instead of panicking.
    let mut out = std::io::stdout().lock();
    let (lm, m) = train_checkpoint::load_with_meta(&a.path)?;
    let m = &m;
    if a.json {
        let mut v = serde_json::to_value(m)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("tokenizer");
            o.insert(
                "tokenizer_kind".into(),
                serde_json::to_value(lm.tokenizer.kind())?,
            );
            o.insert("vocab_size".into(), lm.tokenizer.vocab_size().into());
            o.insert("params".into(), m.base.model.num_params().into());
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let c = &m.base.model;
    let p = &m.progress;
    writeln!(
        out,
        "checkpoint   {} ({:?})",
        shown(&a.path.display().to_string()),
        m.base.kind
    )?;
    writeln!(
        out,
        "model        {} layers x {} hidden, embed {}, dropout {}{}",
        c.layers,
        c.hidden,
        c.embed,
        c.dropout,
        if c.tie_weights { ", tied weights" } else { "" }
    )?;
    writeln!(
        out,
        "parameters   {} ({})",
        c.num_params(),
        human_count(c.num_params())
    )?;
    writeln!(
        out,
        "tokenizer    {:?}, vocabulary {}",
        lm.tokenizer.kind(),
        lm.tokenizer.vocab_size()
    )?;
    writeln!(
        out,
        "training     step {}, epoch {}, {:.1} min, {} tokens seen; batch {} x seq {}, lr {}, \
         started from forget bias {}",
        p.step,
        p.epoch,
        p.elapsed_secs / 60.0,
        p.tokens_seen,
        m.train.batch,
        m.train.seq,
        m.train.lr,
        m.train.forget_bias
    )?;
    writeln!(
        out,
        "regularised  {}{}",
        super::common::regularisation(&m.train),
        if m.train.ema > 0.0 {
            " (the weights shown are the average)"
        } else {
            ""
        }
    )?;
    let c = &m.base.corpus;
    let more = match (c.paths.len(), c.files) {
        (n, _) if n > 1 => format!(" and {} more path(s)", n - 1),
        _ => String::new(),
    };
    let files = c.files.map_or(String::new(), |f| format!("{f} files, "));
    writeln!(
        out,
        "corpus       {}{more} ({files}{} train / {} val tokens, {} {}…)",
        shown(&c.path.display().to_string()),
        c.train_tokens,
        c.val_tokens,
        if c.files.is_some() {
            "fingerprint"
        } else {
            "sha256"
        },
        shown(&c.fingerprint.chars().take(16).collect::<String>())
    )?;
    if !c.val_paths.is_empty() {
        let vals: Vec<String> = c
            .val_paths
            .iter()
            .map(|p| shown(&p.display().to_string()))
            .collect();
        writeln!(out, "val corpus   {}", vals.join(" "))?;
    }
    if let Some(h) = p.history.last() {
        writeln!(
            out,
            "losses       train {:.4}, val {}, best val {}",
            h.train_loss,
            h.val_loss.map_or("-".into(), |v| format!("{v:.4}")),
            p.best_val.map_or("-".into(), |v| format!("{v:.4}"))
        )?;
    }
    writeln!(out, "written by   quill {}", shown(&m.base.quill_version))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Checkpoint to read.
    input: PathBuf,
    /// Weights-only checkpoint to write.
    output: PathBuf,
}

pub fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let (lm, mut meta) = train_checkpoint::load_with_meta(&a.input)?;
    meta.base.kind = CheckpointKind::Weights;
    train_checkpoint::save(&a.output, &lm.model, &meta, None)?;
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.1} MB, weights only)",
        a.output.display(),
        size as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}
