//! `quill eval`: loss of a model on any text file.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use quill::nn::model::Workspace;
use quill::train::corpus::Corpus;
use quill::train::{eval_split, evaluate_tokens};

use super::common::load_model;

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct EvalArgs {
    /// Checkpoint to evaluate [default: as for `sample`].
    #[arg(long, short)]
    checkpoint: Option<PathBuf>,
    /// Text file to score.
    #[arg(
        long,
        short,
        required_unless_present = "tokens",
        conflicts_with = "tokens"
    )]
    file: Option<PathBuf>,
    /// Score a token file made by `quill prepare` instead (made with the model's tokenizer).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Which part of the token file: its validation split, its training split, or all.
    #[arg(long, value_enum, default_value_t = Split::Val, requires = "tokens")]
    split: Split,
    /// Parallel streams the file is split into, each starting from a zero state (so the loss
    /// is slightly above the sequential one); 1 gives the exact sequential loss.
    #[arg(long, alias = "batch", default_value_t = 16)]
    streams: usize,
    /// Window length.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Replace invalid UTF-8 in the file instead of failing.
    #[arg(long)]
    lossy: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// A part of a token file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Split {
    /// The validation split.
    Val,
    /// The training split.
    Train,
    /// Every token.
    All,
}

/// Loss of the model on a split of a token file (the file's checksums are checked first).
fn eval_tokens(
    lm: &quill::checkpoint::LoadedModel,
    path: &std::path::Path,
    split: Split,
    streams: usize,
    seq: usize,
) -> anyhow::Result<(f64, usize, usize)> {
    use quill::train::tokens::TokenView;
    let (tokenizer, data, _) = quill::train::prepare::open_token_file(path, &mut |_| {})?;
    if tokenizer.sha256() != lm.tokenizer.sha256() {
        anyhow::bail!(
            "{}: made with another tokenizer than the model's ({})",
            path.display(),
            lm.path.display()
        );
    }
    let tokens = match split {
        Split::Val => data.val,
        Split::Train => data.train,
        Split::All => quill::train::tokens::read_head(path)?.map()?,
    };
    if tokens.len() < 2 {
        anyhow::bail!(
            "{}: the {split:?} split is too short to evaluate (fewer than 2 tokens)",
            path.display()
        );
    }
    let mut ws = Workspace::default();
    let (b, _) = eval_split(tokens.len(), streams);
    let (nats, n) = match tokens.view() {
        TokenView::U8(t) => evaluate_tokens(&lm.model, &mut ws, t, b, seq),
        TokenView::U16(t) => evaluate_tokens(&lm.model, &mut ws, t, b, seq),
        TokenView::U32(t) => evaluate_tokens(&lm.model, &mut ws, t, b, seq),
    };
    Ok((nats, n, b))
}

pub fn run(a: EvalArgs) -> anyhow::Result<ExitCode> {
    // Written with `?`, so a closed pipe (`| head`) ends quietly instead of panicking.
    let mut out = std::io::stdout().lock();
    if a.streams == 0 || a.seq == 0 {
        anyhow::bail!("invalid streams/seq: must be at least 1");
    }
    let lm = load_model(a.checkpoint.as_deref())?;
    let Some(file) = &a.file else {
        let path = a.tokens.as_ref().expect("clap requires --file or --tokens");
        let (nats, n, streams) = eval_tokens(&lm, path, a.split, a.streams, a.seq)?;
        let loss = nats / n as f64;
        if a.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "checkpoint": lm.path, "tokens_file": path, "split": format!("{:?}", a.split).to_lowercase(),
                    "tokens": n, "loss_per_token": loss, "perplexity": loss.exp(),
                    "tokenizer": lm.tokenizer.kind(), "streams": streams,
                })
            )?;
        } else {
            writeln!(out, "checkpoint      {}", lm.path.display())?;
            writeln!(
                out,
                "tokens          {} ({:?} split, {n} tokens scored)",
                path.display(),
                a.split
            )?;
            writeln!(out, "streams         {}", streams_note(streams))?;
            writeln!(out, "loss            {loss:.4} nats/token")?;
            writeln!(out, "perplexity      {:.3}", loss.exp())?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let corpus = Corpus::load(file, a.lossy)?;
    let tokens = lm
        .tokenizer
        .encode(&corpus.text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if tokens.len() < 2 {
        anyhow::bail!(
            "{}: too short to evaluate (fewer than 2 tokens)",
            file.display()
        );
    }
    let mut ws = Workspace::default();
    let (streams, _) = eval_split(tokens.len(), a.streams);
    let (nats, n) = evaluate_tokens(&lm.model, &mut ws, &tokens, a.streams, a.seq);
    let loss = nats / n as f64;
    // Bits per character: total bits over the characters those tokens cover, estimated
    // from the file's token/char ratio.
    let chars = corpus.text.chars().count() as f64 * n as f64 / tokens.len() as f64;
    let bpc = nats / std::f64::consts::LN_2 / chars;
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "checkpoint": lm.path, "file": file, "tokens": n, "loss_per_token": loss,
                "perplexity": loss.exp(), "bits_per_char": bpc,
                "tokenizer": lm.tokenizer.kind(), "streams": streams,
            })
        )?;
    } else {
        writeln!(out, "checkpoint      {}", lm.path.display())?;
        writeln!(
            out,
            "file            {} ({} tokens scored)",
            file.display(),
            n
        )?;
        writeln!(out, "streams         {}", streams_note(streams))?;
        writeln!(out, "loss            {loss:.4} nats/token")?;
        writeln!(out, "perplexity      {:.3}", loss.exp())?;
        writeln!(out, "bits per char   {bpc:.4}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How a file was split, for `eval` and `score`.
pub fn streams_note(streams: usize) -> String {
    if streams == 1 {
        "1 (sequential: the exact loss)".to_string()
    } else {
        format!(
            "{streams} (each from a zero state, so the loss is slightly above the sequential \
             one; --streams 1 gives it exactly)"
        )
    }
}
