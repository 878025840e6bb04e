//! `quill bench`: training and generation throughput on named configurations.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use quill::bench::{run_config, BenchConfig, BenchOptions, BenchResult, CONFIG_NAMES};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Configuration: p1 (char 2×512, B 64, T 64), p2 (char 1×128, B 32, T 64),
    /// p3 (word 2×200, V 10000, B 20, T 20) or all.
    #[arg(long, default_value = "all")]
    config: String,
    /// Print one JSON object per configuration instead of the table.
    #[arg(long)]
    json: bool,
    /// Untimed warm-up training steps.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Training steps per timed run.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Tokens per timed one-stream generation run.
    #[arg(long, default_value_t = 500)]
    gen_tokens: usize,
    /// Streams of the batched generation.
    #[arg(long, default_value_t = 256)]
    batch_streams: usize,
    /// Tokens per stream per timed batched generation run.
    #[arg(long, default_value_t = 20)]
    batch_gen_steps: usize,
    /// Seed of weights, tokens and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train with the recipe's regularisation (dropout, DropConnect, weight average; see
    /// `quill train`) instead of none (the PyTorch peer's work).
    #[arg(long)]
    regularised: bool,
}

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    // Written with `?`, so a closed pipe (`| head`) ends quietly instead of panicking.
    let mut out = std::io::stdout().lock();
    let names: Vec<&str> = if a.config == "all" {
        CONFIG_NAMES.to_vec()
    } else {
        vec![a.config.as_str()]
    };
    let configs = names
        .iter()
        .map(|n| BenchConfig::named(n))
        .collect::<quill::Result<Vec<_>>>()?;
    let opts = BenchOptions {
        warmup: a.warmup,
        runs: a.runs,
        steps: a.steps,
        gen_tokens: a.gen_tokens,
        batch_streams: a.batch_streams,
        batch_gen_steps: a.batch_gen_steps,
        seed: a.seed,
        regularise: a.regularised,
    };
    opts.validate()?;
    if !a.json {
        writeln!(
            out,
            "{:<4} {:<22} {:>12} {:>9} {:>8} {:>10} {:>13} {:>9}",
            "name",
            "model",
            "train tok/s",
            "ms/step",
            "GFLOP/s",
            "gen tok/s",
            "batch tok/s",
            "peak RSS"
        )?;
    }
    for cfg in &configs {
        let r = run_config(cfg, &opts)?;
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        } else {
            print_row(&mut out, cfg, &r)?;
        }
    }
    if !a.json {
        writeln!(
            out,
            "threads {}; GFLOP/s counts 6·(Σ_l 4H·(D_l+H) + H·V) FLOPs per training token; \
             batch = {} streams; medians of {} runs",
            quill::nn::threads(),
            opts.batch_streams,
            opts.runs
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_row(out: &mut impl Write, cfg: &BenchConfig, r: &BenchResult) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<4} {:<22} {:>12.0} {:>9.1} {:>8.1} {:>10.0} {:>13.0} {:>6.0} MB",
        r.name,
        cfg.description,
        r.train_tokens_per_s,
        r.train_ms_per_step,
        r.train_gflops,
        r.gen_tokens_per_s,
        r.batch_gen_tokens_per_s,
        r.peak_rss_bytes as f64 / 1e6
    )
}
