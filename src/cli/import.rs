//! `quill import`: a plain PyTorch LSTM language model (safetensors + vocabulary file) made
//! into a quill checkpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use quill::checkpoint::import::{import, ImportOptions};

use super::common::human_count;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The model's weights: a safetensors file of its state dict (pytorch/examples'
    /// word_language_model names: encoder.weight, rnn.weight_ih_l0, ..., decoder.weight).
    #[arg(long)]
    weights: PathBuf,
    /// Its vocabulary: one word per line, line i being token id i.
    #[arg(long)]
    vocab: PathBuf,
    /// The quill checkpoint to write.
    #[arg(long, short)]
    out: PathBuf,
    /// The vocabulary entry that marks line ends in the source model, which becomes quill's
    /// `<eol>` ("none": none does).
    #[arg(long, default_value = "<eos>")]
    eol_token: String,
    /// Dropout recorded in the checkpoint (used only if it is trained further).
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
}

pub fn run(a: ImportArgs, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    let given = matches.value_source("eol_token") == Some(clap::parser::ValueSource::CommandLine);
    let opts = ImportOptions {
        eol_token: (a.eol_token != "none").then(|| a.eol_token.clone()),
        eol_token_given: given,
        dropout: a.dropout,
    };
    let imp = import(&a.weights, &a.vocab, &opts)?;
    imp.save(&a.out)?;
    let c = &imp.model.config;
    eprintln!("tensors ({}):", imp.dtype);
    for (src, quill) in &imp.mapping {
        eprintln!("  {src:<24} -> {quill}");
    }
    eprintln!(
        "model: {} layers x {} hidden, embed {}, vocabulary {}{}; {} parameters",
        c.layers,
        c.hidden,
        c.embed,
        c.vocab,
        if c.tie_weights { ", tied weights" } else { "" },
        human_count(c.num_params())
    );
    if let Some(e) = &imp.renamed_eol {
        eprintln!("vocabulary: {e:?} (line end) is quill's <eol>");
    }
    if !imp.added.is_empty() {
        eprintln!(
            "vocabulary: added {} (never predicted: zero weights, output bias {})",
            imp.added.join(", "),
            quill::checkpoint::import::ADDED_TOKEN_BIAS
        );
    }
    if !imp.not_whole.is_empty() {
        let shown: Vec<&str> = imp.not_whole.iter().take(8).map(String::as_str).collect();
        eprintln!(
            "warning: {} vocabulary entries are never produced when quill encodes text (its \
             word splitter cuts them: {}{}); they can still be generated",
            imp.not_whole.len(),
            shown.join(" "),
            if imp.not_whole.len() > 8 { " …" } else { "" }
        );
    }
    eprintln!("wrote {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
