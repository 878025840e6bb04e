//! Subcommands of the `quill` binary. This is the only place that prints.

mod bench;
mod common;
mod controls;
mod eval;
mod import;
mod info;
mod plot;
mod prepare;
mod sample;
mod score;
mod serve;
mod train;
mod tui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// quill: an LSTM language model that learns any text and writes new text in its style.
#[derive(Debug, Parser)]
#[command(name = "quill", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model on a text corpus (default: the bundled Shakespeare corpus).
    Train(Box<train::TrainArgs>),
    /// Tokenize a corpus once into a token file that `train` reads memory-mapped.
    Prepare(Box<prepare::PrepareArgs>),
    /// Generate text from a trained model, streamed to stdout.
    Sample(sample::SampleArgs),
    /// Loss, perplexity and bits per character of a model on a text file.
    Eval(eval::EvalArgs),
    /// Loss of every line, paragraph or file of some text under one model or two side by side.
    Score(score::ScoreArgs),
    /// Describe a checkpoint: configuration, parameter count, vocabulary, progress, losses.
    Info(info::InfoArgs),
    /// Write a weights-only copy of a checkpoint (for sampling and sharing; not resumable).
    Export(info::ExportArgs),
    /// Make a plain PyTorch LSTM language model (safetensors + vocabulary file) a quill checkpoint.
    Import(import::ImportArgs),
    /// Interactive terminal UI: generate, steer temperature/top-k/top-p live, see token probabilities.
    Tui(tui::TuiArgs),
    /// Time training and generation on named configurations (p1, p2, p3).
    Bench(bench::BenchArgs),
    /// Draw loss curves (train and validation per step) from metrics logs to a PNG or SVG.
    Plot(plot::PlotArgs),
    /// Serve models over HTTP: OpenAI-style completions API, continuous batching, playground page.
    Serve(serve::ServeArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    let sub = matches.subcommand().map(|(_, m)| m);
    match cli.command {
        Command::Train(a) => train::run(*a, sub.expect("train has matches")),
        Command::Prepare(a) => prepare::run(*a),
        Command::Sample(a) => sample::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Score(a) => score::run(a),
        Command::Info(a) => info::run(a),
        Command::Export(a) => info::export(a),
        Command::Import(a) => import::run(a, sub.expect("import has matches")),
        Command::Tui(a) => tui::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Serve(a) => serve::run(a),
    }
}

/// Whether an error is a closed stdout (e.g. `quill sample | head`), which is not a failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        super::Cli::command().debug_assert();
    }
}
