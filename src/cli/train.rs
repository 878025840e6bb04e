//! `quill train`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use quill::nn::dropout::MaskShape;
use quill::nn::model::ModelConfig;
use quill::plot::{write_plot, PlotOptions};
use quill::tokenizer::{Tokenizer, TokenizerKind};
use quill::train::budget::{self, Limit, Recipe};
use quill::train::checkpoint;
use quill::train::config::DEFAULT_DROPOUT;
use quill::train::metrics::RunMetrics;
use quill::train::optim::Schedule;
use quill::train::prepare::{open_token_file, scan, TokenizerPlan, AUTO_TOKEN_FILE_BYTES};
use quill::train::tokens::TrainData;
use quill::train::trainer::check_same_corpus;
use quill::train::{Control, Event, Summary, TrainConfig, Trainer};
use quill::tui::dashboard::{
    run_ui, Controls, DashboardState, Input, SampleText, TrainHook, UiExit, UiOptions,
};
use quill::tui::limits::TEMP_MAX;
use quill::tui::terminal::{self, TerminalGuard};

use super::common::human_count;
use super::prepare::{CorpusArgs, PrepareDisplay};

/// The corpus named in messages: the token file or the first corpus path.
fn corpus_label(args: &TrainArgs) -> String {
    match &args.tokens {
        Some(t) => t.display().to_string(),
        None => args.data.corpus[0].display().to_string(),
    }
}

/// The model and regularisation a new run trains with, in one line.
fn describe(m: &ModelConfig, c: &TrainConfig) -> String {
    format!(
        "model {} x {} (embed {}{}, forget bias {}), batch {} x seq {}, lr {}; dropout {}; {}",
        m.layers,
        m.hidden,
        m.embed,
        if m.tie_weights { ", tied" } else { "" },
        c.forget_bias,
        c.batch,
        c.seq,
        c.lr,
        m.dropout,
        super::common::regularisation(c)
    )
}

/// Time limit of a `train` with no limit flags, so the default run ends within ~10 minutes.
const DEFAULT_MINUTES: f64 = 8.0;

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct TrainArgs {
    #[command(flatten)]
    data: CorpusArgs,
    /// Train on a prepared token file (from `quill prepare`) as it is, tokenizer included.
    #[arg(long, conflicts_with_all = [
        "corpus", "globs", "separator", "skip_bad_files", "lossy", "val_fraction",
        "val_corpus", "tokenizer", "vocab_size", "min_frequency", "tokenizer_sample", "prepare",
    ])]
    tokens: Option<PathBuf>,
    /// Tokenize into a token file `OUT/NAME.tokens` that later runs reuse and that training
    /// reads memory-mapped: `auto` for corpora of 50 MB or more, `always`, or `never` (tokens
    /// in memory). A valid existing file is used in `auto` and `always`.
    #[arg(long, value_enum, default_value_t = PrepareMode::Auto)]
    prepare: PrepareMode,
    /// LSTM layers L [default: the recipe's].
    #[arg(long)]
    layers: Option<usize>,
    /// Hidden size H [default: the recipe's].
    #[arg(long)]
    hidden: Option<usize>,
    /// Embedding size E [default: the recipe's: 64 for char, = hidden otherwise].
    #[arg(long)]
    embed: Option<usize>,
    /// Dropout on each layer's output while training, in [0, 1) [default: the recipe's].
    #[arg(long)]
    dropout: Option<f32>,
    /// Shape of the dropout masks: `stream` holds one mask per stream for a whole window
    /// (locked, variational dropout), `element` draws one per element [default: stream].
    #[arg(long, value_enum)]
    dropout_mask: Option<MaskShapeArg>,
    /// Dropout on the embedded inputs of layer 0, in [0, 1) [default: the recipe's].
    #[arg(long)]
    dropout_input: Option<f32>,
    /// Embedding dropout: drop whole tokens of the vocabulary for a window, in [0, 1)
    /// [default: the recipe's].
    #[arg(long)]
    dropout_embed: Option<f32>,
    /// DropConnect on the recurrent weights W_h, one mask per step, in [0, 1) [default: the
    /// recipe's].
    #[arg(long)]
    weight_drop: Option<f32>,
    /// Sampled softmax while training: score each target against N candidates drawn from the
    /// training tokens' frequencies instead of the whole vocabulary (word and BPE models:
    /// faster steps); 0 = the full softmax. Validation, eval and sampling always use the full
    /// one [default: the recipe's].
    #[arg(long, value_name = "N")]
    sampled_softmax: Option<usize>,
    /// Start each epoch after the first a random 0 to T − 1 tokens into every stream, so that
    /// a token is not always at the same place in its window (`--shift-windows false` turns
    /// it off) [default: the recipe's].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    shift_windows: Option<bool>,
    /// Decay of the moving average of the weights that validation uses and checkpoints hold
    /// as the model, in [0, 1); 0 turns it off [default: the recipe's].
    #[arg(long)]
    ema: Option<f32>,
    /// Initial bias of the forget gates of a new model [default: the recipe's; 1 without
    /// one].
    #[arg(long)]
    forget_bias: Option<f32>,
    /// Share input embedding and output weights (needs embed = hidden) [default: the
    /// recipe's: on for word and BPE].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tie_weights: Option<bool>,
    /// Parallel streams B [default: the recipe's].
    #[arg(long)]
    batch: Option<usize>,
    /// Window length T (truncated BPTT) [default: the recipe's].
    #[arg(long)]
    seq: Option<usize>,
    /// Peak learning rate (Adam) [default: the recipe's].
    #[arg(long)]
    lr: Option<f32>,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Learning-rate decay after warm-up.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    schedule: Schedule,
    /// Final learning rate as a fraction of --lr (cosine).
    #[arg(long, default_value_t = 0.1)]
    min_lr_ratio: f32,
    /// AdamW decoupled weight decay (0 = Adam).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 5.0)]
    clip: f32,
    /// Random seed (initialisation, dropout).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Validate every N steps (0 = only at the end).
    #[arg(long, default_value_t = 200)]
    eval_every: u64,
    /// Write NAME-latest every N steps (0 = only at the end).
    #[arg(long, default_value_t = 200)]
    save_every: u64,
    /// Stop after N steps in total.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Stop after N epochs (fractions allowed).
    #[arg(long)]
    epochs: Option<f64>,
    /// Stop after N minutes of training [default: 8 when no other limit is given]. The
    /// recipe (model size, batch, dropout, weight average) is chosen for this budget.
    #[arg(long, visible_alias = "minutes")]
    max_minutes: Option<f64>,
    /// Stop this run after N steps without changing the planned schedule (resume later).
    #[arg(long)]
    steps_this_run: Option<u64>,
    /// Directory for checkpoints and the metrics log.
    #[arg(long, default_value = "checkpoints")]
    out: PathBuf,
    /// Checkpoint name prefix [default: the corpus file's stem].
    #[arg(long)]
    name: Option<String>,
    /// Continue from a full checkpoint (e.g. checkpoints/NAME-latest.safetensors).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar; one line per evaluation instead.
    #[arg(long)]
    quiet: bool,
    /// Live dashboard: loss charts, speed, samples from the current weights; keys pause,
    /// save, change the sample temperature and quit. Without a terminal: the progress bar.
    #[arg(long, conflicts_with = "quiet")]
    dashboard: bool,
    /// Dashboard: sample every N steps from the current weights (0 = only on the `n` key).
    #[arg(long, default_value_t = 100)]
    sample_every: u64,
    /// Dashboard: tokens per sample.
    #[arg(long, default_value_t = 300)]
    sample_length: usize,
    /// Dashboard: sample temperatures, one pane each (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.5, 1.0])]
    sample_temperatures: Vec<f32>,
}

/// `--dropout-mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MaskShapeArg {
    /// One mask per stream, held over the window (locked dropout).
    Stream,
    /// One mask per element.
    Element,
}

impl From<MaskShapeArg> for MaskShape {
    fn from(a: MaskShapeArg) -> Self {
        match a {
            MaskShapeArg::Stream => MaskShape::Stream,
            MaskShapeArg::Element => MaskShape::Element,
        }
    }
}

/// When `quill train` writes a token file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PrepareMode {
    /// For corpora of 50 MB or more.
    Auto,
    /// Always.
    Always,
    /// Never: tokens in memory.
    Never,
}

impl TrainArgs {
    /// The limits of this run, for the recipe.
    fn limits(&self) -> Vec<Limit> {
        let mut v = Vec::new();
        v.extend(self.max_minutes.map(Limit::Minutes));
        v.extend(self.epochs.map(Limit::Epochs));
        v.extend(self.max_steps.map(Limit::Steps));
        v
    }

    /// The training configuration: flags given, then the recipe's choices (a new run, once
    /// the corpus is read), then the library's defaults.
    fn train_config(&self, recipe: Option<&Recipe>) -> TrainConfig {
        let no_limit =
            self.max_steps.is_none() && self.epochs.is_none() && self.max_minutes.is_none();
        // The library's defaults, with the recipe's choices over them; flags given win.
        let d = recipe.map_or_else(TrainConfig::default, |r| {
            r.train_config(TrainConfig::default())
        });
        TrainConfig {
            dropout_mask: self.dropout_mask.map(Into::into).unwrap_or(d.dropout_mask),
            dropout_input: self.dropout_input.unwrap_or(d.dropout_input),
            dropout_embed: self.dropout_embed.unwrap_or(d.dropout_embed),
            weight_drop: self.weight_drop.unwrap_or(d.weight_drop),
            sampled_softmax: self.sampled_softmax.unwrap_or(d.sampled_softmax),
            shift_windows: self.shift_windows.unwrap_or(d.shift_windows),
            ema: self.ema.unwrap_or(d.ema),
            forget_bias: self.forget_bias.unwrap_or(d.forget_bias),
            batch: self.batch.unwrap_or(d.batch),
            seq: self.seq.unwrap_or(d.seq),
            lr: self.lr.unwrap_or(d.lr),
            warmup_steps: self.warmup,
            schedule: self.schedule,
            min_lr_ratio: self.min_lr_ratio,
            weight_decay: self.weight_decay,
            clip: self.clip,
            seed: self.seed,
            val_fraction: self.data.effective_val_fraction(),
            eval_every: self.eval_every,
            save_every: self.save_every,
            max_steps: self.max_steps,
            epochs: self.epochs,
            max_minutes: if no_limit {
                Some(DEFAULT_MINUTES)
            } else {
                self.max_minutes
            },
            name: self.name.clone().unwrap_or_else(|| match &self.tokens {
                Some(t) => t
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("model")
                    .to_string(),
                None => self.data.default_name(),
            }),
            out: self.out.clone(),
        }
    }

    /// The architecture: flags given, then the recipe's choices, then 2 × 256 (E 64 for
    /// char, = H otherwise). The recipe's tied weights apply only where E = H.
    fn model_config(&self, kind: TokenizerKind, recipe: Option<&Recipe>) -> ModelConfig {
        let hidden = self.hidden.or(recipe.map(|r| r.hidden)).unwrap_or(256);
        let embed = self.embed.unwrap_or(match (kind, recipe) {
            // The recipe's E = H holds for the H given on the command line too.
            (TokenizerKind::Char, Some(r)) if r.embed == r.hidden => hidden,
            (TokenizerKind::Char, Some(r)) => r.embed,
            (TokenizerKind::Char, None) => 64,
            _ => hidden,
        });
        let tie_weights = self
            .tie_weights
            .unwrap_or(recipe.is_some_and(|r| r.tie_weights) && embed == hidden);
        ModelConfig {
            vocab: 1, // set from the tokenizer
            embed,
            hidden,
            layers: self.layers.or(recipe.map(|r| r.layers)).unwrap_or(2),
            dropout: self
                .dropout
                .or(recipe.map(|r| r.dropout))
                .unwrap_or(DEFAULT_DROPOUT),
            tie_weights,
        }
    }

    /// On `--resume`, architecture flags given explicitly must agree with the checkpoint.
    fn check_resume(
        &self,
        path: &std::path::Path,
        m: &ModelConfig,
        kind: TokenizerKind,
    ) -> anyhow::Result<()> {
        let given = [
            ("layers", self.layers, m.layers),
            ("hidden", self.hidden, m.hidden),
            ("embed", self.embed, m.embed),
        ];
        for (name, flag, ck) in given {
            if let Some(v) = flag {
                if v != ck {
                    anyhow::bail!(
                        "{}: the checkpoint has {name} {ck}, but --{name} {v} was given; \
                         a resumed run keeps the checkpoint's architecture",
                        path.display()
                    );
                }
            }
        }
        if let Some(k) = self.data.tokenizer {
            if k != kind {
                anyhow::bail!(
                    "{}: the checkpoint uses the {kind:?} tokenizer, but --tokenizer {k:?} was given",
                    path.display()
                );
            }
        }
        if let Some(v) = self.forget_bias {
            anyhow::bail!(
                "{}: --forget-bias {v} only initialises a new model; a resumed run goes on \
                 from the checkpoint's weights",
                path.display()
            );
        }
        if self.tie_weights == Some(true) && !m.tie_weights {
            anyhow::bail!("{}: the checkpoint's weights are not tied", path.display());
        }
        Ok(())
    }
}

/// On `--resume`: the checkpoint's training configuration, with the flags given on this
/// command line taking precedence; the output directory is always this command line's.
fn resumed_config(args: &TrainArgs, m: &clap::ArgMatches, old: &TrainConfig) -> TrainConfig {
    let given = |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let new = args.train_config(None);
    let mut c = old.clone();
    macro_rules! take {
        ($($field:ident = $flag:literal),*) => {$( if given($flag) { c.$field = new.$field.clone(); } )*};
    }
    take!(
        batch = "batch",
        seq = "seq",
        lr = "lr",
        warmup_steps = "warmup",
        schedule = "schedule",
        min_lr_ratio = "min_lr_ratio",
        weight_decay = "weight_decay",
        clip = "clip",
        dropout_mask = "dropout_mask",
        dropout_input = "dropout_input",
        dropout_embed = "dropout_embed",
        weight_drop = "weight_drop",
        sampled_softmax = "sampled_softmax",
        shift_windows = "shift_windows",
        ema = "ema",
        seed = "seed",
        val_fraction = "val_fraction",
        eval_every = "eval_every",
        save_every = "save_every",
        name = "name"
    );
    // Where this run writes is the user's choice (--out, or its default), never a directory
    // named inside a checkpoint that may come from anyone.
    c.out = new.out;
    if given("max_steps") || given("epochs") || given("max_minutes") {
        c.max_steps = args.max_steps;
        c.epochs = args.epochs;
        c.max_minutes = args.max_minutes;
    }
    c
}

impl TrainArgs {
    fn check_dashboard_flags(&self) -> anyhow::Result<()> {
        if !self.dashboard {
            return Ok(());
        }
        let n = self.sample_temperatures.len();
        if !(1..=4).contains(&n) {
            anyhow::bail!("invalid sample-temperatures: give 1 to 4 values, got {n}");
        }
        if let Some(t) = self
            .sample_temperatures
            .iter()
            .find(|t| !(t.is_finite() && (0.0..=TEMP_MAX).contains(*t)))
        {
            anyhow::bail!("invalid sample-temperatures: {t} is outside [0, {TEMP_MAX}]");
        }
        if !(1..=10_000).contains(&self.sample_length) {
            anyhow::bail!(
                "invalid sample-length: {} is outside 1..=10000",
                self.sample_length
            );
        }
        Ok(())
    }
}

/// Where the corpus's tokens come from: prepared (streamed from the files, into memory or a
/// token file) or a token file given with --tokens. `plan` is how the tokenizer is obtained.
fn load_data(
    args: &TrainArgs,
    config: &TrainConfig,
    plan: TokenizerPlan,
    resume: Option<(&std::path::Path, &quill::checkpoint::CorpusInfo)>,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<(Tokenizer, TrainData)> {
    let mut display = PrepareDisplay::new(args.quiet);
    let result = (|| -> anyhow::Result<(Tokenizer, TrainData)> {
        if let Some(t) = &args.tokens {
            let (tokenizer, data, meta) = open_token_file(t, &mut |e| display.on(e))?;
            if meta.val_fraction != config.val_fraction {
                anyhow::bail!(
                    "{}: prepared with a validation fraction of {}; this run asks for {} \
                     (leave --val-fraction out or prepare again)",
                    t.display(),
                    meta.val_fraction,
                    config.val_fraction
                );
            }
            return Ok((tokenizer, data));
        }
        let mut opts = args.data.options(plan)?;
        opts.cancel = Some(cancel.clone());
        if args.prepare != PrepareMode::Never {
            opts.token_file = Some(config.out.join(format!("{}.tokens", config.name)));
            opts.write_threshold = match args.prepare {
                PrepareMode::Always => 0,
                _ => AUTO_TOKEN_FILE_BYTES,
            };
            quill::train::check_writable(&config.out)?;
        }
        let scanned = scan(&opts, &mut |e| display.on(e))?;
        if let Some((ck, recorded)) = resume {
            check_same_corpus(recorded, scanned.fingerprint(), &opts.paths[0], ck)?;
        }
        let p = scanned.finish(&mut |e| display.on(e))?;
        Ok((p.tokenizer, p.data))
    })();
    display.finish();
    result
}

pub fn run(args: TrainArgs, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    // Ctrl-C / SIGTERM: while the corpus is prepared, the first stops it (no token file is
    // left); while training, it finishes the step, saves and exits; a second exits at once
    // (files are written atomically, so nothing on disk is half-written).
    let interrupts = Arc::new(AtomicUsize::new(0));
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let interrupts = interrupts.clone();
        let cancel = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            cancel.store(true, Ordering::SeqCst);
            if interrupts.fetch_add(1, Ordering::SeqCst) >= 1 {
                terminal::restore();
                std::process::exit(130);
            }
        });
    }
    match train(args, matches, interrupts, cancel) {
        Err(e) if super::prepare::is_interrupted(&e) => {
            eprintln!("{e:#}");
            Ok(ExitCode::from(130))
        }
        r => r,
    }
}

/// `--resume` without `--corpus`: train on the corpus the checkpoint records, when its
/// paths are still there (the fingerprint check that follows makes sure it is the same text);
/// otherwise say which corpus to pass. The paths are only read, never written.
fn use_recorded_corpus(
    args: &mut TrainArgs,
    recorded: &quill::checkpoint::CorpusInfo,
    checkpoint: &std::path::Path,
    val_given: bool,
) -> anyhow::Result<()> {
    let paths = if recorded.paths.is_empty() {
        vec![recorded.path.clone()]
    } else {
        recorded.paths.clone()
    };
    let shown = |ps: &[PathBuf]| {
        ps.iter()
            .map(|p| super::common::shown(&p.display().to_string()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let val: &[PathBuf] = if val_given { &[] } else { &recorded.val_paths };
    if let Some(missing) = paths.iter().chain(val).find(|p| !p.exists()) {
        anyhow::bail!(
            "{}: was trained on {} ({} is not there from this directory); pass that corpus \
             with --corpus PATH... (and the --glob, --separator and --val-corpus flags it was \
             prepared with)",
            checkpoint.display(),
            shown(&paths),
            super::common::shown(&missing.display().to_string())
        );
    }
    eprintln!(
        "training on the corpus the checkpoint records: {}",
        shown(&paths)
    );
    args.data.corpus = paths;
    if !val.is_empty() {
        args.data.val_corpus = val.to_vec();
    }
    Ok(())
}

fn train(
    mut args: TrainArgs,
    matches: &clap::ArgMatches,
    interrupts: Arc<AtomicUsize>,
    cancel: Arc<AtomicBool>,
) -> anyhow::Result<ExitCode> {
    let mut config = args.train_config(None);
    config.validate()?;
    args.check_dashboard_flags()?;
    if args.resume.is_none() {
        let mut check = args.model_config(args.data.tokenizer_kind(), None);
        check.vocab = 1;
        check.validate()?;
    }
    if let Some(t) = &args.tokens {
        // The split is the token file's.
        let head = quill::train::tokens::read_head(t)?;
        let meta: quill::train::prepare::TokenMeta = serde_json::from_str(&head.meta)
            .map_err(|e| anyhow::anyhow!("{}: not a quill token file: {e}", t.display()))?;
        config.val_fraction = meta.val_fraction;
    }

    let mut trainer = match args.resume.clone() {
        Some(path) => {
            let path = &path;
            let r = checkpoint::load_resumable(path)?;
            args.check_resume(path, &r.loaded.model.config, r.loaded.tokenizer.kind())?;
            let mut config = resumed_config(&args, matches, &r.meta.train);
            if !args.data.val_corpus.is_empty() {
                config.val_fraction = 0.0;
            }
            eprintln!(
                "resuming {} at step {} (epoch {})",
                path.display(),
                r.meta.progress.step,
                r.meta.progress.epoch
            );
            let plan = TokenizerPlan::Use(r.loaded.tokenizer.clone());
            let recorded = r.meta.base.corpus.clone();
            let given =
                |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
            if args.tokens.is_none() && !given("corpus") {
                use_recorded_corpus(&mut args, &recorded, path, given("val_corpus"))?;
            }
            let (_, data) = load_data(&args, &config, plan, Some((path, &recorded)), &cancel)?;
            Trainer::resume_data(data, r, config)?
        }
        None => {
            let (tokenizer, data) =
                load_data(&args, &config, args.data.train_plan(), None, &cancel)?;
            let recipe = budget::recipe(tokenizer.kind(), data.train.len(), &args.limits());
            let model_config = args.model_config(tokenizer.kind(), Some(&recipe));
            let config = TrainConfig {
                val_fraction: config.val_fraction,
                ..args.train_config(Some(&recipe))
            };
            eprintln!("{}", describe(&model_config, &config));
            Trainer::from_data(data, tokenizer, model_config, config)
                .with_context(|| format!("training on {}", corpus_label(&args)))?
        }
    };

    let use_dashboard =
        args.dashboard && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if args.dashboard && !use_dashboard {
        eprintln!("--dashboard needs a terminal (stdin and stdout); showing the progress bar");
    }
    let mut last_samples = Vec::new();
    let summary = if use_dashboard {
        match run_dashboard(&args, &mut trainer, &interrupts)? {
            Some((summary, samples)) => {
                last_samples = samples;
                summary
            }
            None => run_with_bar(&args, &mut trainer, &interrupts)?,
        }
    } else {
        run_with_bar(&args, &mut trainer, &interrupts)?
    };
    if let Some(s) = last_samples.first() {
        eprintln!("last sample (step {}, T={:.1}):", s.step, s.temperature);
        eprintln!("{}", s.text.trim_end());
    }
    eprintln!(
        "done: {} steps ({} this run, {}), {:.0} tokens/s; final val loss {}; best {}",
        summary.steps,
        summary.steps_this_run,
        summary.reason,
        summary.tokens_per_s,
        summary.val_loss.map_or("-".into(), |v| format!("{v:.4}")),
        summary.best_val.map_or("-".into(), |v| format!("{v:.4}")),
    );
    eprintln!("latest checkpoint: {}", summary.latest.display());
    if summary.best_val.is_some() {
        eprintln!(
            "best checkpoint:   {}",
            trainer.config.checkpoint_path("best").display()
        );
    }
    let metrics = trainer.config.metrics_path();
    eprintln!("metrics log:       {}", metrics.display());
    let plot = trainer
        .config
        .out
        .join(format!("{}-loss.png", trainer.config.name));
    match RunMetrics::read(&metrics).and_then(|m| write_plot(&plot, &[m], &PlotOptions::default()))
    {
        Ok(()) => eprintln!("loss plot:         {}", plot.display()),
        Err(e) => eprintln!("warning: no loss plot: {e}"),
    }
    Ok(if interrupts.load(Ordering::SeqCst) > 0 {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// Training with the progress bar (or, with --quiet, one line per validation).
fn run_with_bar(
    args: &TrainArgs,
    trainer: &mut Trainer,
    interrupts: &Arc<AtomicUsize>,
) -> anyhow::Result<Summary> {
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1000)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut last_val: Option<f64> = None;
    let mut smooth: Option<f64> = None;
    let quiet = args.quiet;
    let steps_this_run = args.steps_this_run;
    let mut on_event = |e: &Event| -> Control {
        match e {
            Event::Start {
                params,
                train_tokens,
                val_tokens,
                windows_per_epoch,
                start_step,
                planned_steps,
            } => {
                bar.println(format!(
                    "model {} parameters; {} training / {} validation tokens; {} windows per epoch{}{}",
                    human_count(*params),
                    train_tokens,
                    val_tokens,
                    windows_per_epoch,
                    if *start_step > 0 { format!("; from step {start_step}") } else { String::new() },
                    planned_steps.map(|s| format!("; {s} steps planned")).unwrap_or_default(),
                ));
            }
            Event::Step(s) => {
                smooth = Some(smooth.map_or(s.loss, |m| 0.95 * m + 0.05 * s.loss));
                if let Some(p) = s.progress {
                    bar.set_position((p * 1000.0).round() as u64);
                }
                bar.set_message(format!(
                    "step {} ep {:.2} loss {:.3} val {} lr {:.1e} {:.0} tok/s",
                    s.step,
                    s.epoch,
                    smooth.unwrap_or(s.loss),
                    last_val.map_or("-".into(), |v| format!("{v:.3}")),
                    s.lr,
                    s.tokens_per_s
                ));
            }
            Event::Eval {
                step,
                val_loss,
                best,
            } => {
                last_val = Some(*val_loss);
                let line = format!(
                    "step {step}: val loss {val_loss:.4} nats/token{}",
                    if *best { " (best)" } else { "" }
                );
                if quiet {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
            }
            Event::Saved { .. } | Event::Weights { .. } => {}
            Event::Warning(w) => bar.println(format!("warning: {w}")),
        }
        if interrupts.load(Ordering::SeqCst) > 0 {
            Control::Stop
        } else {
            Control::Continue
        }
    };
    let summary = trainer.run(steps_this_run, &mut on_event)?;
    bar.finish_and_clear();
    Ok(summary)
}

/// Training under the dashboard: the UI runs on its own thread, training here. Returns the
/// summary and the last samples, or `None` if the terminal could not be set up (the caller
/// falls back to the progress bar).
fn run_dashboard(
    args: &TrainArgs,
    trainer: &mut Trainer,
    interrupts: &Arc<AtomicUsize>,
) -> anyhow::Result<Option<(Summary, Vec<SampleText>)>> {
    let mut state = DashboardState::new(
        &trainer.config.name,
        &args.sample_temperatures,
        args.sample_every,
    );
    if args.resume.is_some() {
        if let Ok(m) = RunMetrics::read(&trainer.config.metrics_path()) {
            state.load_history(&m);
        }
    }
    let controls = Arc::new(Controls::new(interrupts.clone()));
    let (tx, rx) = mpsc::channel();
    let mut hook = TrainHook::new(tx, controls.clone(), args.sample_every);
    if args.resume.is_some() {
        hook.sample_weights(trainer.progress.step, Arc::new(trainer.eval_model()));
    }
    let tokenizer = trainer.tokenizer.clone();
    let opts = UiOptions {
        sample_len: args.sample_length,
        seed: args.seed,
        ..UiOptions::default()
    };
    let (guard, mut term) = match TerminalGuard::enter() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot start the dashboard ({e}); showing the progress bar");
            return Ok(None);
        }
    };
    terminal::install_panic_hook(false);
    let ui_controls = controls.clone();
    let ui = std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || {
            let mut input = |timeout: Duration| -> std::io::Result<Option<Input>> {
                use crossterm::event::{self, Event as Term};
                if !event::poll(timeout)? {
                    return Ok(None);
                }
                Ok(match event::read()? {
                    Term::Key(k) => Some(Input::Key(k)),
                    Term::Resize(..) => Some(Input::Resize),
                    _ => None,
                })
            };
            let r = run_ui(
                &mut term,
                &mut state,
                &rx,
                &ui_controls,
                &tokenizer,
                &mut input,
                &opts,
            );
            if let Ok(UiExit::ForceQuit) = r {
                // Second Ctrl-C: leave at once (checkpoints are written atomically).
                terminal::restore();
                eprintln!("interrupted");
                std::process::exit(130);
            }
            (r, state)
        })
        .context("starting the dashboard thread")?;
    let result = trainer.run(args.steps_this_run, &mut |e| hook.on_event(e));
    hook.finish();
    drop(hook);
    // The UI ends within a frame once it sees `Done`; a terminal that went away can keep its
    // key poll from ever returning, and then it is left behind rather than waited for.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !ui.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let joined = ui.is_finished().then(|| ui.join());
    drop(guard);
    let samples = match joined {
        None => {
            eprintln!("warning: the terminal stopped answering; training was stopped and saved");
            Vec::new()
        }
        Some(Ok((Ok(_), state))) => state.samples.into_iter().flatten().collect(),
        Some(Ok((Err(e), _))) => {
            eprintln!("warning: the dashboard failed ({e}); training was stopped and saved");
            Vec::new()
        }
        Some(Err(_)) => {
            eprintln!("warning: the dashboard crashed; training was stopped and saved");
            Vec::new()
        }
    };
    Ok(Some((result?, samples)))
}
