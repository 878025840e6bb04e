//! `quill tui`: the terminal UI. The terminal is set up by [`TerminalGuard`] and restored on
//! every way out: quit, error, panic (a panic hook) and SIGINT, SIGTERM or SIGHUP (a signal
//! handler that asks the UI loop to quit).

use std::io::{stdout, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;

use super::controls::ControlArgs;
use anyhow::Context;
use clap::Args;
use quill::checkpoint;
use quill::generate::sampler::SamplingParams;
use quill::tui::terminal::{self, TerminalGuard};
use quill::tui::{self, App, AppEvent, InputThread, ModelInfo, Options, Settings, WorkerHandle};

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct TuiArgs {
    /// Checkpoint to open [default: the newest *-best in checkpoints/, else the newest checkpoint there].
    path: Option<PathBuf>,
    /// Initial prompt.
    #[arg(long, default_value = "")]
    prime: String,
    /// Initial temperature (t/T change it).
    #[arg(long, short, default_value_t = 0.8)]
    temperature: f32,
    /// Initial top-k (k/K change it).
    #[arg(long)]
    top_k: Option<usize>,
    /// Initial top-p (p/P change it).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Tokens per run; 0 means until stopped (l/L change it).
    #[arg(long, short, default_value_t = 1000)]
    length: usize,
    /// Initial seed (n/N change it; r regenerates with the next one).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most tokens per second shown; 0 means as fast as the model goes ([ and ] change it).
    #[arg(long, default_value_t = 100)]
    speed: u32,
    /// Directory the checkpoint picker (o) lists, and where the default checkpoint is looked for.
    #[arg(long, default_value = "checkpoints")]
    checkpoints: PathBuf,
    /// Default directory for saved text (w).
    #[arg(long, default_value = "samples")]
    samples: PathBuf,
    /// Initial values of the other controls (keys in the help, ?).
    #[command(flatten)]
    controls: ControlArgs,
    /// Copy detection (u): the training corpus (files or folders, in training order), when it
    /// is no longer where the checkpoint says; it must be the same text (fingerprint).
    #[arg(long, value_name = "PATH")]
    corpus: Vec<PathBuf>,
    /// Copy detection (u): the --glob patterns the corpus folders were trained with.
    #[arg(long, value_name = "PATTERN")]
    corpus_glob: Vec<String>,
}

pub fn run(a: TuiArgs) -> anyhow::Result<ExitCode> {
    if a.controls.is_sweep() {
        anyhow::bail!("the TUI takes one value per control (lists are for `quill sample --out`)");
    }
    let sampling = a.controls.apply(SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        ..SamplingParams::default()
    });
    sampling.validate()?;
    let path = match &a.path {
        Some(p) => p.clone(),
        None => checkpoint::find_default(&a.checkpoints).with_context(|| {
            format!(
                "no checkpoint given and none found in {}/",
                a.checkpoints.display()
            )
        })?,
    };
    if !stdout().is_terminal() {
        anyhow::bail!(
            "quill tui needs a terminal (stdout is not one); use `quill sample` in pipes"
        );
    }
    let lm = checkpoint::load_model(&path)?;
    let info = ModelInfo::new(&lm.path, &lm.model.config, &lm.tokenizer);
    let opts = Options {
        settings: Settings {
            sampling,
            length: (a.length > 0).then_some(a.length),
            speed: (a.speed > 0).then_some(a.speed),
        },
        seed: a.seed,
        prompt: a.prime,
        checkpoints: a.checkpoints,
        samples: a.samples,
        copies: quill::copies::OpenOptions {
            corpus: a.corpus,
            globs: a.corpus_glob,
            cache: None,
        },
    };
    let (tx, rx) = mpsc::channel();
    let worker = WorkerHandle::spawn(lm.model, lm.tokenizer, tui::worker_sink(tx.clone()));
    let mut app = App::new(info, opts);
    // The worker needs the same initial settings as the panel shows.
    worker.send(tui::Command::Set(app.settings));

    // A UI without its worker would only hang: a panic anywhere ends the process.
    terminal::install_panic_hook(true);
    let sig_tx = tx.clone();
    // Fails only when a handler is already set; the in-UI Ctrl-C key still works then.
    let _ = ctrlc::set_handler(move || {
        let _ = sig_tx.send(AppEvent::Quit);
    });
    let (guard, mut term) = TerminalGuard::enter()?;
    let result = (|| -> anyhow::Result<()> {
        let input = InputThread::spawn(tx);
        let r = tui::run(&mut term, &mut app, &worker, &rx);
        input.stop();
        Ok(r?)
    })();
    drop(guard);
    worker.shutdown();
    result?;
    Ok(ExitCode::SUCCESS)
}
