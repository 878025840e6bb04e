//! `quill sample`: stream generated text to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use quill::model::Generator;
use quill::sample::{Sampler, SamplingParams};
use quill::tokenizer::UnknownPolicy;

use super::common::load_model;

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct SampleArgs {
    /// Checkpoint to sample from [default: the newest *-best in checkpoints/, else the newest checkpoint there].
    #[arg(long, short)]
    checkpoint: Option<PathBuf>,
    /// Text to start from (it is printed, then continued).
    #[arg(long, default_value = "")]
    prime: String,
    /// Number of tokens to generate.
    #[arg(long, short, default_value_t = 500)]
    length: usize,
    /// Softmax temperature; 0 picks the most probable token every time.
    #[arg(long, short, default_value_t = 0.8)]
    temperature: f32,
    /// Sample only among the K most probable tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only among the most probable tokens whose probabilities add up to P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// What to do with prime characters the model has never seen.
    #[arg(long, value_enum, default_value_t = UnknownPolicy::Error)]
    unknown: UnknownPolicy,
}

pub fn run(a: SampleArgs) -> anyhow::Result<ExitCode> {
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
    };
    params.validate()?;
    if a.length == 0 {
        anyhow::bail!("invalid length: must be at least 1");
    }
    let lm = load_model(a.checkpoint.as_deref())?;
    let tok = &lm.tokenizer;
    let (prime, unknown) = tok.encode_prime(&a.prime, a.unknown)?;
    if !unknown.is_empty() {
        eprintln!(
            "warning: prime pieces not in the vocabulary ({}): {}",
            match a.unknown {
                UnknownPolicy::Skip => "skipped",
                UnknownPolicy::Error => "mapped to <unk>",
            },
            unknown.join(", ")
        );
    }
    let mut gen = Generator::new(Arc::new(lm.model), 1);
    let mut sampler = Sampler::new(params, a.seed);
    let start = prime_or_start(&prime, tok);
    gen.feed(&start);

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(a.prime.as_bytes())?;
    let mut dec = tok.stream_decoder();
    for _ in 0..a.length {
        let s = sampler.sample(gen.logits_row(0));
        if Some(s.id) == tok.eos_id() {
            break;
        }
        let piece = dec.push(s.id);
        out.write_all(piece.as_bytes())?;
        out.flush()?;
        gen.step(&[s.id]);
    }
    out.write_all(dec.finish().as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The tokens to condition on: the prime, or with an empty prime a start token (end-of-text
/// for word/BPE models, a newline for char models, else token 0).
pub fn prime_or_start(prime: &[u32], tok: &quill::tokenizer::Tokenizer) -> Vec<u32> {
    if !prime.is_empty() {
        return prime.to_vec();
    }
    if let Some(eos) = tok.eos_id() {
        return vec![eos];
    }
    match tok.encode("\n") {
        Ok(v) if !v.is_empty() => v,
        _ => vec![0],
    }
}
