//! `quill sample`: stream generated text to stdout, or (with `--out`) generate many samples at
//! once into files with a manifest.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use quill::checkpoint::LoadedModel;
use quill::copies::{self, CacheStatus, CopyIndex, CopyReport};
use quill::generate::batch::{self, Control, GenConfig, Retry, SampleSpec, Sweep, Verdict};
use quill::generate::output::{CheckpointInfo, CopyFields, OutputFormat, SampleWriter};
use quill::generate::stream::StopStrings;
use quill::generate::{SamplingParams, Session, StreamSpec};
use quill::tokenizer::UnknownPolicy;

use super::common::load_model;
use super::controls::ControlArgs;

/// A `--top-k` value: a number, or `none` for no top-k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopK(Option<usize>);

impl FromStr for TopK {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "none" | "off" | "all" => Ok(TopK(None)),
            n => n
                .parse::<usize>()
                .map(|k| TopK(Some(k)))
                .map_err(|e| format!("{e} (expected a whole number or 'none')")),
        }
    }
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
#[command(group(clap::ArgGroup::new("copy_check").multiple(true)))]
pub struct SampleArgs {
    /// Checkpoint to sample from [default: the newest *-best in checkpoints/, else the newest checkpoint there].
    #[arg(long, short)]
    checkpoint: Option<PathBuf>,
    /// Text to start from (it is printed, then continued; with --out every file starts with it).
    #[arg(long, default_value = "", conflicts_with = "prime_file")]
    prime: String,
    /// With --out: a file of primes, one per line (empty lines are skipped); every prime gets
    /// the whole sweep.
    #[arg(long, value_name = "FILE", requires = "out")]
    prime_file: Option<PathBuf>,
    /// Use the whole --prime-file, newlines included (CRLF read as LF), as one prime.
    #[arg(long, requires = "prime_file")]
    prime_whole: bool,
    /// Number of tokens to generate (per sample).
    #[arg(long, short, default_value_t = 500)]
    length: usize,
    /// Softmax temperature; 0 picks the most probable token every time. With --out a
    /// comma-separated list sweeps over the values.
    #[arg(long, short, value_delimiter = ',', default_value = "0.8")]
    temperature: Vec<f32>,
    /// Sample only among the K most probable tokens ('none': all). List with --out.
    #[arg(long, value_delimiter = ',', default_value = "none")]
    top_k: Vec<TopK>,
    /// Sample only among the most probable tokens whose probabilities add up to P. List with --out.
    #[arg(long, value_delimiter = ',', default_value = "1.0")]
    top_p: Vec<f32>,
    /// Random seed: the same seed gives the same text. List with --out.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seed: Vec<u64>,
    /// End at the first occurrence of this string in the generated text, which is not
    /// written (repeatable).
    #[arg(long, value_name = "STRING")]
    stop: Vec<String>,
    /// What to do with prime characters the model has never seen.
    #[arg(long, value_enum, default_value_t = UnknownPolicy::Error)]
    unknown: UnknownPolicy,
    /// Batch mode: samples per combination of the sweep values [default: 1].
    #[arg(long, short = 'n', requires = "out")]
    count: Option<usize>,
    /// Batch mode: write the samples to this directory (DIR/0001.txt, ..., DIR/manifest.jsonl),
    /// or with --format jsonl to this JSONL file.
    #[arg(long, short, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Batch mode output: one file per sample plus a manifest, or one JSONL file [default: files].
    #[arg(long, value_enum, requires = "out")]
    format: Option<OutputFormat>,
    /// Batch mode: overwrite existing sample files and manifest.
    #[arg(long, requires = "out")]
    force: bool,
    /// Batch mode: most samples generated side by side (bounds memory) [default: 256].
    #[arg(long, requires = "out")]
    max_batch: Option<usize>,
    /// Batch mode: worker threads, each stepping its own share of the samples [default: all cores].
    #[arg(long, requires = "out")]
    threads: Option<usize>,
    #[command(flatten)]
    controls: ControlArgs,
    /// Report how much of the generated text is copied verbatim from the training corpus: the
    /// longest copied span (characters, and where in the corpus) and the share of the text's
    /// 12-character n-grams found there. To stdout: a report on stderr after the text; with
    /// --out: fields of the manifest.
    #[arg(long, group = "copy_check")]
    check_copies: bool,
    /// Generate a sample again while its longest span copied from the corpus is longer than N
    /// characters (each try has its own seed: same seed and id, next try number); implies
    /// --check-copies.
    #[arg(long, value_name = "N", group = "copy_check")]
    max_copy: Option<usize>,
    /// With --max-copy: most tries per sample; the last try is kept even when it copies more
    /// (the manifest and the report say so).
    #[arg(long, value_name = "K", default_value_t = 5, requires = "max_copy")]
    max_tries: u32,
    /// Copy detection: the training corpus (files or folders, in training order), when it is
    /// no longer where the checkpoint says; it must be the same text (fingerprint).
    #[arg(long, value_name = "PATH", requires = "copy_check")]
    corpus: Vec<PathBuf>,
    /// Copy detection: the --glob patterns the corpus folders were trained with.
    #[arg(long, value_name = "PATTERN", requires = "copy_check")]
    corpus_glob: Vec<String>,
}

impl SampleArgs {
    fn copies_wanted(&self) -> bool {
        self.check_copies || self.max_copy.is_some()
    }
}

/// Opens the copy index of the model (reading and checking its corpus, reusing or building
/// the cached suffix array) and says on stderr what it did.
fn open_copies(lm: &LoadedModel, a: &SampleArgs) -> anyhow::Result<CopyIndex> {
    let started = Instant::now();
    let opts = copies::OpenOptions {
        corpus: a.corpus.clone(),
        globs: a.corpus_glob.clone(),
        cache: None,
    };
    let opened = copies::open_for(lm, &opts).map_err(|e| anyhow::anyhow!("copy detection: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let idx = &opened.index;
    let what = format!(
        "{} file(s), {} of text",
        idx.docs().len(),
        super::common::human_bytes(idx.text_len() as u64)
    );
    let cache = opened.cache_path.display();
    match &opened.cache {
        CacheStatus::Reused => {
            eprintln!(
                "copies: corpus checked and index loaded from {cache} ({what}) in {secs:.2} s"
            )
        }
        CacheStatus::Built { stale, saved } => {
            if let Some(why) = stale {
                eprintln!("copies: the cached index {cache} {why}; building it again");
            }
            eprintln!("copies: corpus index built ({what}) in {secs:.2} s");
            if let Err(e) = saved {
                eprintln!(
                    "warning: copies: cannot cache the index ({e}); it is built again next time"
                );
            }
        }
    }
    Ok(opened.index)
}

/// The manifest fields of a sample's copy check.
fn copy_fields(r: &CopyReport) -> CopyFields {
    CopyFields {
        longest_copy: r.longest,
        longest_copy_file: r
            .source
            .as_ref()
            .map(|s| s.file.to_string_lossy().into_owned()),
        longest_copy_line: r.source.as_ref().map(|s| s.line),
        copied_fraction: r.copied_fraction(),
        tries: None,
        max_copy_exceeded: None,
    }
}

/// The report of `quill sample --check-copies` to stdout, printed on stderr.
fn print_copy_report(text: &str, r: &CopyReport) {
    match &r.source {
        Some(src) => {
            let span: String = text[r.longest_range.clone()].chars().take(80).collect();
            let more = if r.longest > 80 { "…" } else { "" };
            eprintln!(
                "copies: longest span copied from the corpus: {} characters, {span:?}{more}, at {} \
                 line {} ({} occurrence{})",
                r.longest,
                src.file.display(),
                src.line,
                src.occurrences,
                if src.occurrences == 1 { "" } else { "s" }
            );
        }
        None => eprintln!("copies: no character of the text occurs in the corpus"),
    }
    match r.copied_fraction() {
        Some(f) => eprintln!(
            "copies: {} of the text's {} {}-character n-grams occur in the corpus ({:.1}%)",
            r.ngrams_found,
            r.ngrams,
            copies::NGRAM,
            100.0 * f
        ),
        None => eprintln!(
            "copies: the text is shorter than {} characters: no n-gram fraction",
            copies::NGRAM
        ),
    }
}

pub fn run(a: SampleArgs) -> anyhow::Result<ExitCode> {
    if a.length == 0 {
        anyhow::bail!("invalid length: must be at least 1");
    }
    if a.out.is_some() {
        return run_batch(a);
    }
    if a.temperature.len() > 1
        || a.top_k.len() > 1
        || a.top_p.len() > 1
        || a.seed.len() > 1
        || a.controls.is_sweep()
    {
        anyhow::bail!("several values (a sweep) need --out DIR to write the samples to");
    }
    let params = a.controls.apply(SamplingParams {
        temperature: a.temperature[0],
        top_k: a.top_k[0].0,
        top_p: a.top_p[0],
        ..SamplingParams::default()
    });
    params.validate()?;
    StopStrings::new(&a.stop)?;
    if a.max_tries == 0 {
        anyhow::bail!("invalid max-tries: must be at least 1");
    }
    let lm = load_model(a.checkpoint.as_deref())?;
    let (prime, unknown) = lm.tokenizer.encode_prime(&a.prime, a.unknown)?;
    warn_unknown(&unknown, a.unknown);
    let index = if a.copies_wanted() {
        Some(open_copies(&lm, &a)?)
    } else {
        None
    };
    if let (Some(limit), Some(index)) = (a.max_copy, &index) {
        return run_stdout_limited(a, lm, prime, params, index, limit);
    }
    // Sample id 1 under the seed: the same text as the first file of a batch run.
    let spec = StreamSpec {
        params,
        seed: a.seed[0],
        id: 1,
        max_tokens: Some(a.length),
        stop: a.stop.clone(),
        ..StreamSpec::new(prime)
    };
    let mut session = Session::new(Arc::new(lm.model), lm.tokenizer)?;
    session.start(&spec)?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(a.prime.as_bytes())?;
    out.flush()?;
    // Text is printed as it becomes final (with stop strings, a few bytes are held back
    // until it is clear they do not start one).
    let mut text = String::new();
    while session.is_running() {
        if let Some(u) = session.step() {
            if !u.text.is_empty() {
                out.write_all(u.text.as_bytes())?;
                out.flush()?;
                text.push_str(&u.text);
            }
        }
    }
    out.write_all(b"\n")?;
    out.flush()?;
    if let Some(index) = &index {
        print_copy_report(&text, &index.check(&text));
    }
    Ok(ExitCode::SUCCESS)
}

/// `quill sample --max-copy N` to stdout: sample 1 of a one-sample batch run, generated again
/// while it copies more than N characters, then printed (tries are not shown as they run).
fn run_stdout_limited(
    a: SampleArgs,
    lm: LoadedModel,
    prime: Vec<u32>,
    params: SamplingParams,
    index: &CopyIndex,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let spec = SampleSpec {
        id: 1,
        prime: 0,
        params,
        seed: a.seed[0],
    };
    let cfg = GenConfig {
        length: a.length,
        stop: a.stop.clone(),
        max_batch: 1,
        threads: 1,
    };
    let mut check = |o: &batch::SampleOutput| {
        if index.check(&o.output.text).longest > limit {
            Verdict::Retry
        } else {
            Verdict::Keep
        }
    };
    let mut kept = None;
    batch::generate_checked(
        &Arc::new(lm.model),
        &lm.tokenizer,
        &[prime],
        &[spec],
        &cfg,
        Some(Retry {
            max_tries: a.max_tries,
            check: &mut check,
        }),
        &mut |o| {
            kept = Some(o);
            Ok(())
        },
        &mut |_| Control::Continue,
    )?;
    let o = kept.context("the sample was not generated")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(a.prime.as_bytes())?;
    out.write_all(o.output.text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    let r = index.check(&o.output.text);
    print_copy_report(&o.output.text, &r);
    if o.rejected {
        eprintln!(
            "copies: still more than --max-copy {limit} characters after {} tries (the last is shown)",
            o.tries
        );
    } else {
        eprintln!(
            "copies: try {} of at most {} kept (longest copy {} <= {limit})",
            o.tries, a.max_tries, r.longest
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A library error as one message: its text already names the path and the I/O cause, which
/// the error chain would print a second time.
fn flat(e: quill::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn warn_unknown(unknown: &[String], policy: UnknownPolicy) {
    if !unknown.is_empty() {
        eprintln!(
            "warning: prime pieces not in the vocabulary ({}): {}",
            match policy {
                UnknownPolicy::Skip => "skipped",
                UnknownPolicy::Error => "mapped to <unk>",
            },
            unknown.join(", ")
        );
    }
}

/// The primes of a batch run: `--prime`, or the lines (or whole text) of `--prime-file`.
fn read_primes(a: &SampleArgs) -> anyhow::Result<Vec<String>> {
    let Some(path) = &a.prime_file else {
        return Ok(vec![a.prime.clone()]);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read prime file {}", path.display()))?;
    if a.prime_whole {
        // Line ends are normalised as in corpora.
        return Ok(vec![text.replace("\r\n", "\n")]);
    }
    let primes: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if primes.is_empty() {
        anyhow::bail!(
            "prime file {} has no primes (empty lines are skipped)",
            path.display()
        );
    }
    Ok(primes)
}

fn run_batch(a: SampleArgs) -> anyhow::Result<ExitCode> {
    let out = a.out.clone().expect("batch mode has --out");
    let primes = read_primes(&a)?;
    let sweep = a.controls.sweep(Sweep {
        temperature: a.temperature.clone(),
        top_k: a.top_k.iter().map(|k| k.0).collect(),
        top_p: a.top_p.clone(),
        seed: a.seed.clone(),
        count: a.count.unwrap_or(1),
        ..Sweep::default()
    });
    let samples = batch::plan(primes.len(), &sweep)?;
    let cfg = GenConfig {
        length: a.length,
        stop: a.stop.clone(),
        max_batch: a.max_batch.unwrap_or(batch::DEFAULT_MAX_BATCH),
        threads: a.threads.unwrap_or(0),
    };
    StopStrings::new(&cfg.stop)?;
    if cfg.max_batch == 0 {
        anyhow::bail!("invalid max-batch: must be at least 1");
    }
    // Several shards already keep every core busy, each with its own matrix products; the
    // matrix library's own threads would only compete with them. Set before the first matrix
    // product (the library reads it once) and before this process starts any thread.
    let shards = match cfg.threads {
        0 => batch::default_threads(),
        t => t,
    }
    .min(cfg.max_batch)
    .min(samples.len());
    if shards > 1 && std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", "1");
    }

    if a.max_tries == 0 {
        anyhow::bail!("invalid max-tries: must be at least 1");
    }
    let lm = load_model(a.checkpoint.as_deref())?;
    let checkpoint = CheckpointInfo::of_model(&lm);
    let index = if a.copies_wanted() {
        Some(open_copies(&lm, &a)?)
    } else {
        None
    };
    let tok = lm.tokenizer;
    let mut unknown = Vec::new();
    let mut encoded = Vec::with_capacity(primes.len());
    for p in &primes {
        let (ids, unk) = tok.encode_prime(p, a.unknown)?;
        unknown.extend(unk);
        encoded.push(ids);
    }
    unknown.sort();
    unknown.dedup();
    warn_unknown(&unknown, a.unknown);

    let format = a.format.unwrap_or_default();
    let mut writer = SampleWriter::create(&out, format, a.force, checkpoint, &primes, &samples)
        .map_err(|e| match &e {
            quill::Error::Io { cause, .. }
                if cause.kind() == std::io::ErrorKind::AlreadyExists
                    && cause.to_string().contains("not overwriting") =>
            {
                anyhow::anyhow!("{e}; pass --force to overwrite")
            }
            _ => flat(e),
        })?;

    // Ctrl-C / SIGTERM: the first stops after the current step and writes what is finished
    // (and the manifest); a second exits at once (every file is written atomically).
    let interrupts = Arc::new(AtomicUsize::new(0));
    {
        let interrupts = interrupts.clone();
        let _ = ctrlc::set_handler(move || {
            if interrupts.fetch_add(1, Ordering::SeqCst) >= 1 {
                std::process::exit(130);
            }
        });
    }

    let total = samples.len();
    let bar = ProgressBar::new(a.length as u64 * total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let model = Arc::new(lm.model);
    let limit = a.max_copy;
    let mut check = |o: &batch::SampleOutput| match (&index, limit) {
        (Some(index), Some(n)) if index.check(&o.output.text).longest > n => Verdict::Retry,
        _ => Verdict::Keep,
    };
    let retry = limit.is_some().then_some(Retry {
        max_tries: a.max_tries,
        check: &mut check,
    });
    // Samples that took more than one try, and those still over the limit.
    let (mut retried, mut exceeded) = (0usize, 0usize);
    let result = batch::generate_checked(
        &model,
        &tok,
        &encoded,
        &samples,
        &cfg,
        retry,
        &mut |o| {
            let fields = index.as_ref().map(|index| {
                let mut f = copy_fields(&index.check(&o.output.text));
                if limit.is_some() {
                    f.tries = Some(o.tries);
                    f.max_copy_exceeded = Some(o.rejected);
                    retried += usize::from(o.tries > 1);
                    exceeded += usize::from(o.rejected);
                }
                f
            });
            writer.write_with_copies(&o, fields)
        },
        &mut |p| {
            bar.set_position(p.budget_done);
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{}/{} samples, {:.0} tokens/s",
                p.samples_done,
                p.samples_total,
                p.tokens as f64 / secs
            ));
            if interrupts.load(Ordering::SeqCst) > 0 {
                Control::Stop
            } else {
                Control::Continue
            }
        },
    );
    bar.finish_and_clear();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let written = writer.written();
            return Err(flat(e).context(format!(
                "writing samples to {} ({written} of {total} written, no manifest)",
                out.display()
            )));
        }
    };
    let target = writer.finish().map_err(flat)?;
    let secs = started.elapsed().as_secs_f64();
    let where_ = match format {
        OutputFormat::Files => format!("{} (manifest {})", out.display(), target.display()),
        OutputFormat::Jsonl => target.display().to_string(),
    };
    eprintln!(
        "{} {} of {total} samples ({} tokens) to {where_} in {secs:.1} s: {:.0} tokens/s",
        if summary.interrupted {
            "interrupted: wrote"
        } else {
            "wrote"
        },
        summary.samples,
        summary.tokens,
        summary.tokens as f64 / secs.max(1e-9)
    );
    if let Some(n) = limit {
        eprintln!(
            "copies: {retried} sample(s) generated again for copying more than {n} characters; \
             {exceeded} still over the limit after {} tries (max_copy_exceeded in the manifest)",
            a.max_tries
        );
    }
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
