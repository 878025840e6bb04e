//! `quill prepare`, and what it shares with `quill train`: the corpus and tokenizer flags and
//! the display of preparation (progress bar, skipped files, the tokenizer sample, reuse).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use quill::tokenizer::{TokenizerKind, TokenizerOptions};
use quill::train::corpus::Separator;
use quill::train::prepare::{
    prepare, PrepareEvent, PrepareOptions, Prepared, Stage, TokenizerPlan,
};

use super::common::{human_bytes, human_count};

/// Bundled default corpus.
pub const DEFAULT_CORPUS: &str = "corpora/shakespeare.txt";

/// The corpus and tokenizer flags of `train` and `prepare`.
#[derive(Debug, Args)]
pub struct CorpusArgs {
    /// Text to train on: files and directories (walked recursively in sorted order); several
    /// may follow one --corpus.
    #[arg(long, num_args = 1.., default_value = DEFAULT_CORPUS)]
    pub corpus: Vec<PathBuf>,
    /// Which files of the corpus directories to read: `*.txt` includes, `!drafts/**` excludes
    /// (repeatable; a pattern without `/` matches file names at any depth).
    #[arg(long = "glob", value_name = "PATTERN")]
    pub globs: Vec<String>,
    /// Between documents: `blank-line`, `eos` (end-of-text token), `none`, or a text with
    /// `\n`, `\t` escapes [default: blank-line for char, eos for word/BPE].
    #[arg(long)]
    pub separator: Option<String>,
    /// Leave out unreadable, non-UTF-8 or binary files (with a warning) instead of failing.
    #[arg(long)]
    pub skip_bad_files: bool,
    /// Replace invalid UTF-8 in the corpus instead of failing.
    #[arg(long)]
    pub lossy: bool,
    /// Fraction of the corpus (its end) held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f32,
    /// Validation text (files or directories) instead of the end of --corpus.
    #[arg(long, num_args = 1.., conflicts_with = "val_fraction")]
    pub val_corpus: Vec<PathBuf>,
    /// Token level [default: char].
    #[arg(long, value_enum)]
    pub tokenizer: Option<TokenizerKind>,
    /// Vocabulary cap for word/BPE tokenizers [default: 10000 word, 2000 bpe].
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Minimum count for a word/BPE token to enter the vocabulary.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Most text a word/BPE vocabulary is trained on, sampled evenly from the training part
    /// (e.g. 100MB, 1GB, 500MiB).
    #[arg(long, default_value = "100MB", value_parser = parse_size)]
    pub tokenizer_sample: u64,
}

/// A size in bytes: a number with an optional unit (`k`/`kB`, `M`/`MB`, `G`/`GB` in powers of
/// 1000, `KiB`, `MiB`, `GiB` in powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "kB" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "unknown unit {u:?} (use B, kB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 100MB"))?;
    let bytes = n * mult;
    if !(1.0..1e19).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

impl CorpusArgs {
    /// The tokenizer kind asked for.
    pub fn tokenizer_kind(&self) -> TokenizerKind {
        self.tokenizer.unwrap_or(TokenizerKind::Char)
    }

    /// The validation fraction in effect (0 with a separate validation corpus).
    pub fn effective_val_fraction(&self) -> f32 {
        if self.val_corpus.is_empty() {
            self.val_fraction
        } else {
            0.0
        }
    }

    /// Training the tokenizer these flags ask for.
    pub fn train_plan(&self) -> TokenizerPlan {
        let kind = self.tokenizer_kind();
        TokenizerPlan::Train {
            kind,
            options: TokenizerOptions {
                vocab_size: self.vocab_size.unwrap_or(match kind {
                    TokenizerKind::Bpe => 2000,
                    _ => 10_000,
                }),
                min_frequency: self.min_frequency,
            },
            sample_bytes: self.tokenizer_sample,
        }
    }

    /// Options for `train::prepare` (the token file and its threshold are the caller's).
    pub fn options(&self, plan: TokenizerPlan) -> anyhow::Result<PrepareOptions> {
        let separator = self
            .separator
            .as_deref()
            .map(Separator::parse)
            .transpose()?;
        Ok(PrepareOptions {
            paths: self.corpus.clone(),
            val_paths: self.val_corpus.clone(),
            globs: self.globs.clone(),
            separator,
            skip_bad_files: self.skip_bad_files,
            lossy: self.lossy,
            val_fraction: self.effective_val_fraction(),
            tokenizer: plan,
            token_file: None,
            write_threshold: 0,
            force: false,
            cancel: None,
        })
    }

    /// The default run name: the first corpus path's stem.
    pub fn default_name(&self) -> String {
        self.corpus
            .first()
            .and_then(|p| p.file_stem())
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string()
    }
}

/// Shows what preparation reports: a progress bar per pass for big corpora (on a terminal),
/// one line per notable event.
pub struct PrepareDisplay {
    bar: Option<(Stage, ProgressBar)>,
    quiet: bool,
    started: Instant,
    /// Whether anything was printed (so a plain small run prints nothing new).
    pub printed: bool,
}

/// Corpora smaller than this get no progress bar (they take well under a second).
const BAR_MIN_BYTES: u64 = 16 << 20;

impl PrepareDisplay {
    /// A display; `quiet` hides the progress bars (lines are still printed).
    pub fn new(quiet: bool) -> Self {
        PrepareDisplay {
            bar: None,
            quiet,
            started: Instant::now(),
            printed: false,
        }
    }

    fn line(&mut self, s: String) {
        match &self.bar {
            Some((_, b)) => b.println(s),
            None => eprintln!("{s}"),
        }
        self.printed = true;
    }

    /// Handles one event.
    pub fn on(&mut self, e: &PrepareEvent) {
        match e {
            PrepareEvent::Sources {
                files,
                val_files,
                bytes,
            } => {
                if *files > 1 || *val_files > 0 || *bytes >= BAR_MIN_BYTES {
                    let val = if *val_files > 0 {
                        format!(" + {val_files} validation file(s)")
                    } else {
                        String::new()
                    };
                    self.line(format!(
                        "corpus: {files} file(s){val}, {}",
                        human_bytes(*bytes)
                    ));
                }
            }
            PrepareEvent::Progress { stage, done, total } => {
                if self.quiet || *total < BAR_MIN_BYTES {
                    return;
                }
                if self.bar.as_ref().map(|(s, _)| s) != Some(stage) {
                    if let Some((_, b)) = self.bar.take() {
                        b.finish_and_clear();
                    }
                    let b = ProgressBar::new(*total);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{msg:9} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                        )
                        .expect("valid template"),
                    );
                    b.set_message(match stage {
                        Stage::Scan => "reading",
                        Stage::Encode => "encoding",
                        Stage::Verify => "verifying",
                    });
                    b.enable_steady_tick(Duration::from_millis(200));
                    self.bar = Some((*stage, b));
                }
                if let Some((_, b)) = &self.bar {
                    b.set_position(*done);
                }
            }
            PrepareEvent::Skipped { path, reason } => {
                self.line(format!("warning: left out {}: {reason}", path.display()))
            }
            PrepareEvent::Reusing { path } => self.line(format!(
                "using the prepared tokens in {} (sources unchanged)",
                path.display()
            )),
            PrepareEvent::Stale { path, reason } => self.line(format!(
                "{} does not fit this run ({reason}); preparing it again",
                path.display()
            )),
            PrepareEvent::TokenizerTrained {
                kind,
                vocab,
                sample_bytes,
                of_bytes,
                pieces,
            } => {
                let what = if *pieces == 0 {
                    format!("the whole training part ({})", human_bytes(*sample_bytes))
                } else {
                    format!(
                        "{} sampled evenly from the training part's {} ({pieces} pieces of whole lines; --tokenizer-sample)",
                        human_bytes(*sample_bytes),
                        human_bytes(*of_bytes)
                    )
                };
                self.line(format!("{kind} tokenizer: V = {vocab}, trained on {what}"));
            }
            PrepareEvent::RemovedOrphan { path, bytes } => self.line(format!(
                "removed {} ({}), left by an interrupted run",
                path.display(),
                human_bytes(*bytes)
            )),
            PrepareEvent::Written { path, bytes } => {
                let secs = self.started.elapsed().as_secs_f64();
                self.line(format!(
                    "wrote {} ({}) in {secs:.1} s",
                    path.display(),
                    human_bytes(*bytes)
                ))
            }
        }
    }

    /// Clears the progress bar.
    pub fn finish(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub data: CorpusArgs,
    /// Directory of the token file (`NAME.tokens`); `quill train --out DIR` finds it there.
    #[arg(long, default_value = "checkpoints")]
    out: PathBuf,
    /// Name of the token file [default: the corpus's stem].
    #[arg(long)]
    name: Option<String>,
    /// Prepare again even if the token file is up to date.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Whether an error is the user's Ctrl-C (exit status 130, not a failure to report).
pub fn is_interrupted(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<quill::Error>(),
        Some(quill::Error::Interrupted(_))
    )
}

pub fn run(args: PrepareArgs) -> anyhow::Result<ExitCode> {
    // Ctrl-C: the first stops at the next piece (no token file is left), a second at once.
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| args.data.default_name());
    if name.is_empty() || name.contains(['/', '\\']) {
        anyhow::bail!("invalid name: must be a non-empty file name without slashes");
    }
    quill::train::check_writable(&args.out)?;
    let path = args.out.join(format!("{name}.tokens"));
    let mut opts = args.data.options(args.data.train_plan())?;
    opts.token_file = Some(path.clone());
    opts.force = args.force;
    opts.cancel = Some(cancel);
    let start = Instant::now();
    let mut display = PrepareDisplay::new(args.quiet);
    let result = prepare(&opts, &mut |e| display.on(e));
    display.finish();
    let p = match result {
        Err(e @ quill::Error::Interrupted(_)) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(130));
        }
        r => r?,
    };
    summary(&p, start.elapsed().as_secs_f64());
    eprintln!(
        "train on it with the same corpus flags and --out {} (it is found and reused), or with \
         `quill train --tokens {}`",
        args.out.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// One line about a prepared corpus.
fn summary(p: &Prepared, secs: f64) {
    let (tr, va) = (p.data.train.len(), p.data.val.len());
    eprintln!(
        "{}: {} document(s), {} of text -> {} training + {} validation tokens ({} each, V = {}){}",
        p.token_file
            .as_ref()
            .map_or("in memory".into(), |f| f.display().to_string()),
        p.documents,
        human_bytes(p.text_bytes),
        human_count(tr),
        human_count(va),
        p.data.train.dtype(),
        p.tokenizer.vocab_size(),
        if p.reused {
            format!("; up to date, verified in {secs:.1} s")
        } else {
            format!(
                "; {secs:.1} s, {}/s",
                human_bytes((p.text_bytes as f64 / secs.max(1e-9)) as u64)
            )
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(
            parse_size("100MB"),
            Ok(quill::train::prepare::DEFAULT_TOKENIZER_SAMPLE),
            "the flag's default is the library's"
        );
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("MB").is_err());
    }
}
