//! Preparing a corpus for training: from files on disk (any number, any size) to token
//! sequences, in two streaming passes, never holding the corpus text in memory.
//!
//! 1. **Scan** ([`scan`]): the sources are resolved ([`resolve`]) and each file is read once
//!    in pieces: its SHA-256 (the fingerprint), UTF-8 and NUL checks (a bad file is an error
//!    naming it, or is left out with a warning under `skip_bad_files`), the size of its
//!    normalised text, and what the tokenizer needs: the char set (char), or a bounded,
//!    evenly spread sample of the training part (word and BPE, see [`Sampler`]).
//! 2. **Encode** ([`Scanned::finish`]): the tokenizer is trained (or the given one is used),
//!    then every file is read again and encoded in line-aligned pieces (the same tokens as
//!    encoding the joined text whole), documents joined with the [`Separator`], into memory or
//!    into a token file (`train::tokens`), whichever `token_file` and `write_threshold` say.
//!
//! The validation split is the tail of the training stream ([`split_text`]'s rule applied to
//! the stream, an end-of-text separator counting as a newline) or, with `val_paths`, a corpus
//! of its own placed after the training tokens.
//!
//! A token file is reused instead of scanning when its sources are unchanged (same files, in
//! the same order, with the size and modification time recorded) and it was prepared with the
//! same options (tokenizer settings or the very tokenizer, separator, `lossy`,
//! `skip_bad_files`, validation fraction); its data is then verified (checksum, ids < V)
//! before use. A damaged token file is an error, never silently replaced.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::corpus::{
    combined_fingerprint, resolve, split_target, split_text, DocReader, Separator, Source,
};
use super::tokens::{read_head, TokenBuf, TokenFileHead, TokenFileWriter, Tokens, TrainData};
use crate::checkpoint::CorpusInfo;
use crate::error::{Error, Result};
use crate::tokenizer::{CharVocab, Tokenizer, TokenizerKind, TokenizerOptions};

/// Default bound on the text word and BPE tokenizers are trained on: 100 MB.
pub const DEFAULT_TOKENIZER_SAMPLE: u64 = 100_000_000;
/// Corpora of at least this many bytes get a token file by default (`quill train`).
pub const AUTO_TOKEN_FILE_BYTES: u64 = 50_000_000;
/// Size of one piece of the tokenizer sample.
const SAMPLE_PIECE: u64 = 1 << 20;
/// Pending text is encoded once it reaches this many bytes (at the last line end).
const ENCODE_CHUNK: usize = 4 << 20;

/// How the tokenizer is obtained.
#[derive(Clone, Debug)]
pub enum TokenizerPlan {
    /// Trained on the corpus: char on its char set, word/BPE on a sample of the training part
    /// of at most `sample_bytes` bytes.
    Train {
        /// Kind.
        kind: TokenizerKind,
        /// Vocabulary options (word/BPE).
        options: TokenizerOptions,
        /// Bound on the word/BPE training text.
        sample_bytes: u64,
    },
    /// This one (a resumed checkpoint's).
    Use(Tokenizer),
}

impl TokenizerPlan {
    fn kind(&self) -> TokenizerKind {
        match self {
            TokenizerPlan::Train { kind, .. } => *kind,
            TokenizerPlan::Use(t) => t.kind(),
        }
    }

    fn spec(&self) -> Option<TrainSpec> {
        match self {
            TokenizerPlan::Train {
                kind,
                options,
                sample_bytes,
            } => Some(match kind {
                TokenizerKind::Char => TrainSpec {
                    kind: *kind,
                    vocab_size: 0,
                    min_frequency: 0,
                    sample_bytes: 0,
                },
                _ => TrainSpec {
                    kind: *kind,
                    vocab_size: options.vocab_size,
                    min_frequency: options.min_frequency,
                    sample_bytes: *sample_bytes,
                },
            }),
            TokenizerPlan::Use(_) => None,
        }
    }
}

/// What to prepare and where.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Files and directories of the training corpus, in order.
    pub paths: Vec<PathBuf>,
    /// Files and directories of a separate validation corpus (then `val_fraction` must be 0).
    pub val_paths: Vec<PathBuf>,
    /// `--glob` patterns for the directories walked.
    pub globs: Vec<String>,
    /// Between documents; `None`: the tokenizer kind's default.
    pub separator: Option<Separator>,
    /// Leave unreadable, non-UTF-8 or binary files out (with a warning) instead of failing.
    pub skip_bad_files: bool,
    /// Replace invalid UTF-8 with U+FFFD.
    pub lossy: bool,
    /// The tail of the training stream held out for validation.
    pub val_fraction: f32,
    /// How the tokenizer is obtained.
    pub tokenizer: TokenizerPlan,
    /// Where the token file is (reused when valid) or goes.
    pub token_file: Option<PathBuf>,
    /// Write `token_file` only when the sources hold at least this many bytes (0: always) or
    /// it exists (and is out of date); otherwise the tokens stay in memory.
    pub write_threshold: u64,
    /// Prepare again even when `token_file` is valid for these options.
    pub force: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop: preparation ends with [`Error::Interrupted`]
    /// at the next piece, leaving no token file behind.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl PrepareOptions {
    fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(Error::Interrupted(
                "the corpus was being prepared; no token file was written".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// A stage of preparation, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Pass 1: reading, checking and fingerprinting the files.
    Scan,
    /// Pass 2: encoding.
    Encode,
    /// Checking a reused token file.
    Verify,
}

/// What preparation reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum PrepareEvent {
    /// The sources were found.
    Sources {
        /// Training files.
        files: usize,
        /// Validation files.
        val_files: usize,
        /// Their bytes.
        bytes: u64,
    },
    /// Bytes done of a stage.
    Progress {
        /// Which pass.
        stage: Stage,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// A file was left out (`skip_bad_files`).
    Skipped {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A token file is reused.
    Reusing {
        /// The file.
        path: PathBuf,
    },
    /// A token file exists but does not fit this run; it is prepared again.
    Stale {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The tokenizer was trained.
    TokenizerTrained {
        /// Kind.
        kind: TokenizerKind,
        /// Its V.
        vocab: usize,
        /// Bytes of text it was trained on.
        sample_bytes: u64,
        /// Bytes of the training part the sample was drawn from.
        of_bytes: u64,
        /// Pieces the sample was made of (0: the whole training part).
        pieces: usize,
    },
    /// A temporary token file left by a run that was killed was removed.
    RemovedOrphan {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The token file was written.
    Written {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
}

/// Which corpus a file belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Training (and, with a validation fraction, its tail validation).
    Train,
    /// The separate validation corpus.
    Val,
}

/// A source file as recorded in a token file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Canonical path.
    pub path: PathBuf,
    /// Training or validation.
    pub role: Role,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// Hex SHA-256 of its bytes (absent when skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Bytes of normalised text it gave.
    pub text_bytes: u64,
    /// Why it was left out, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Tokenizer training settings, as recorded (char: kind only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Kind.
    pub kind: TokenizerKind,
    /// Vocabulary cap (word/BPE).
    pub vocab_size: usize,
    /// Minimum frequency (word/BPE).
    pub min_frequency: u64,
    /// Sample bound (word/BPE).
    pub sample_bytes: u64,
}

/// The metadata block of a token file (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenMeta {
    /// quill version that wrote it.
    pub quill_version: String,
    /// The tokenizer, as `Tokenizer::to_json` (hashed in the header).
    pub tokenizer: String,
    /// The corpus fingerprint checkpoints record.
    pub fingerprint: String,
    /// Training paths as given.
    pub paths: Vec<PathBuf>,
    /// Validation paths as given.
    pub val_paths: Vec<PathBuf>,
    /// `--glob` patterns.
    pub globs: Vec<String>,
    /// Between documents.
    pub separator: Separator,
    /// Invalid UTF-8 replaced.
    pub lossy: bool,
    /// Bad files left out.
    pub skip_bad_files: bool,
    /// The tail held out for validation.
    pub val_fraction: f32,
    /// How the tokenizer was trained; `null` when it was given (a resumed run's).
    pub trained_tokenizer: Option<TrainSpec>,
    /// Training documents (files with text).
    pub documents: usize,
    /// Validation documents.
    pub val_documents: usize,
    /// Bytes of normalised text, separators included.
    pub text_bytes: u64,
    /// Every file found, in order.
    pub sources: Vec<SourceRecord>,
}

/// A corpus ready for training.
#[derive(Debug)]
pub struct Prepared {
    /// The tokenizer the tokens were made with.
    pub tokenizer: Tokenizer,
    /// The tokens and what checkpoints record.
    pub data: TrainData,
    /// The token file the tokens are mapped from, if any.
    pub token_file: Option<PathBuf>,
    /// Whether an existing token file was reused.
    pub reused: bool,
    /// Training and validation documents.
    pub documents: usize,
    /// Bytes of normalised text.
    pub text_bytes: u64,
}

struct Doc {
    path: PathBuf,
    role: Role,
    text_bytes: u64,
    ends_with_newline: bool,
    bytes: u64,
}

enum State {
    Reuse {
        head: TokenFileHead,
        meta: Box<TokenMeta>,
    },
    Fresh {
        docs: Vec<Doc>,
        records: Vec<SourceRecord>,
        fingerprint: String,
        chars: Option<CharVocab>,
        sample: Option<Sampler>,
    },
}

/// The result of the first pass (or of finding a reusable token file): the corpus
/// fingerprint is known, nothing is encoded yet.
pub struct Scanned {
    opts: PrepareOptions,
    separator: Separator,
    total_bytes: u64,
    state: State,
}

impl Scanned {
    /// The corpus fingerprint (what a checkpoint records; compare before resuming).
    pub fn fingerprint(&self) -> &str {
        match &self.state {
            State::Reuse { meta, .. } => &meta.fingerprint,
            State::Fresh { fingerprint, .. } => fingerprint,
        }
    }

    /// Bytes of the source files.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

/// Reads the corpus and prepares it: [`scan`], then [`Scanned::finish`].
pub fn prepare(opts: &PrepareOptions, on_event: &mut dyn FnMut(&PrepareEvent)) -> Result<Prepared> {
    scan(opts, on_event)?.finish(on_event)
}

fn corpus_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Corpus {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Pass 1 (see the module docs), or the check that an existing token file can be reused.
pub fn scan(opts: &PrepareOptions, on_event: &mut dyn FnMut(&PrepareEvent)) -> Result<Scanned> {
    if !(0.0..0.9).contains(&opts.val_fraction) {
        return Err(Error::config(
            "val-fraction",
            format!("{} is outside [0, 0.9)", opts.val_fraction),
        ));
    }
    if !opts.val_paths.is_empty() && opts.val_fraction != 0.0 {
        return Err(Error::config(
            "val-fraction",
            "a separate validation corpus is given: the validation fraction must be 0",
        ));
    }
    let kind = opts.tokenizer.kind();
    let separator = opts
        .separator
        .clone()
        .unwrap_or_else(|| Separator::default_for(kind));
    if separator == Separator::EndOfText && kind == TokenizerKind::Char {
        return Err(Error::config(
            "separator",
            "the char tokenizer has no end-of-text token; use --separator blank-line, none or \
             a text",
        ));
    }
    if let TokenizerPlan::Train { sample_bytes, .. } = opts.tokenizer {
        if sample_bytes == 0 {
            return Err(Error::config("tokenizer-sample", "must be at least 1 byte"));
        }
    }
    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    let resolve_role = |paths: &[PathBuf], skipped: &mut Vec<(PathBuf, String)>| {
        let mut note = |p: &Path, why: String| skipped.push((p.to_path_buf(), why));
        resolve(
            paths,
            &opts.globs,
            if opts.skip_bad_files {
                Some(&mut note)
            } else {
                None
            },
        )
    };
    let train = resolve_role(&opts.paths, &mut skipped)?;
    let val = if opts.val_paths.is_empty() {
        Vec::new()
    } else {
        resolve_role(&opts.val_paths, &mut skipped)?
    };
    for (path, reason) in skipped {
        on_event(&PrepareEvent::Skipped { path, reason });
    }
    let total_bytes = train.iter().chain(&val).map(|s| s.bytes).sum();
    on_event(&PrepareEvent::Sources {
        files: train.len(),
        val_files: val.len(),
        bytes: total_bytes,
    });
    if let (Some(path), false) = (&opts.token_file, opts.force) {
        if path.exists() {
            let head = read_head(path)?;
            let meta: TokenMeta =
                serde_json::from_str(&head.meta).map_err(|e| Error::TokenFile {
                    path: path.clone(),
                    msg: format!("metadata is not a quill token file description: {e}"),
                })?;
            match differs(&meta, &head, opts, &separator, &train, &val) {
                None => {
                    on_event(&PrepareEvent::Reusing { path: path.clone() });
                    return Ok(Scanned {
                        opts: opts.clone(),
                        separator,
                        total_bytes,
                        state: State::Reuse {
                            head,
                            meta: Box::new(meta),
                        },
                    });
                }
                Some(reason) => on_event(&PrepareEvent::Stale {
                    path: path.clone(),
                    reason,
                }),
            }
        }
    }
    let state = scan_files(opts, &separator, &train, &val, total_bytes, on_event)?;
    Ok(Scanned {
        opts: opts.clone(),
        separator,
        total_bytes,
        state,
    })
}

/// Why an existing token file does not fit this run, or `None` when it does.
fn differs(
    meta: &TokenMeta,
    head: &TokenFileHead,
    opts: &PrepareOptions,
    separator: &Separator,
    train: &[Source],
    val: &[Source],
) -> Option<String> {
    match &opts.tokenizer {
        TokenizerPlan::Use(t) => {
            if t.sha256() != head.header.tokenizer_sha256 {
                return Some("it was made with another tokenizer than the checkpoint's".into());
            }
        }
        plan => {
            if meta.trained_tokenizer != plan.spec() {
                let show = |s: &Option<TrainSpec>| match s {
                    None => "a given tokenizer".to_string(),
                    Some(s) if s.kind == TokenizerKind::Char => "char".to_string(),
                    Some(s) => format!(
                        "{} (vocabulary {}, min frequency {}, sample {} bytes)",
                        s.kind, s.vocab_size, s.min_frequency, s.sample_bytes
                    ),
                };
                return Some(format!(
                    "tokenizer {} was asked for, the file has {}",
                    show(&plan.spec()),
                    show(&meta.trained_tokenizer)
                ));
            }
        }
    }
    if &meta.separator != separator {
        return Some(format!(
            "separator {} was asked for, the file has {}",
            separator.describe(),
            meta.separator.describe()
        ));
    }
    if meta.lossy != opts.lossy || meta.skip_bad_files != opts.skip_bad_files {
        return Some("--lossy or --skip-bad-files differs".into());
    }
    if meta.val_fraction != opts.val_fraction {
        return Some(format!(
            "validation fraction {} was asked for, the file has {}",
            opts.val_fraction, meta.val_fraction
        ));
    }
    let now: Vec<(&Path, Role, u64, u64)> = train
        .iter()
        .map(|s| (s, Role::Train))
        .chain(val.iter().map(|s| (s, Role::Val)))
        .map(|(s, r)| (s.canonical.as_path(), r, s.bytes, s.mtime_ns))
        .collect();
    let recorded: std::collections::HashMap<&Path, &SourceRecord> =
        meta.sources.iter().map(|r| (r.path.as_path(), r)).collect();
    let current: std::collections::HashSet<&Path> = now.iter().map(|n| n.0).collect();
    if let Some(&(p, ..)) = now.iter().find(|n| !recorded.contains_key(n.0)) {
        return Some(format!("{} is new", p.display()));
    }
    if let Some(r) = meta
        .sources
        .iter()
        .find(|r| !current.contains(r.path.as_path()))
    {
        return Some(format!(
            "{} is no longer part of the corpus",
            r.path.display()
        ));
    }
    if now.len() != meta.sources.len() {
        return Some("the files differ".into());
    }
    for (rec, &(p, role, bytes, mtime)) in meta.sources.iter().zip(&now) {
        if rec.path != p || rec.role != role {
            return Some("the order of the files changed".into());
        }
        if rec.bytes != bytes || rec.mtime_ns != mtime {
            return Some(format!(
                "{} changed (size or modification time)",
                p.display()
            ));
        }
    }
    None
}

struct DocScan {
    sha256: String,
    text_bytes: u64,
    ends_with_newline: bool,
    bytes: u64,
    mtime_ns: u64,
}

/// Pass 1 over every file.
fn scan_files(
    opts: &PrepareOptions,
    separator: &Separator,
    train: &[Source],
    val: &[Source],
    total_bytes: u64,
    on_event: &mut dyn FnMut(&PrepareEvent),
) -> Result<State> {
    let kind = opts.tokenizer.kind();
    let mut chars = (kind == TokenizerKind::Char).then(CharVocab::new);
    let train_bytes: u64 = train.iter().map(|s| s.bytes).sum();
    let mut sample = match &opts.tokenizer {
        TokenizerPlan::Train {
            kind: TokenizerKind::Word | TokenizerKind::Bpe,
            sample_bytes,
            ..
        } => Some(Sampler::new(
            train_bytes,
            opts.val_fraction,
            *sample_bytes,
            SAMPLE_PIECE,
        )),
        _ => None,
    };
    let mut docs: Vec<Doc> = Vec::new();
    let mut records = Vec::new();
    let mut done = 0u64;
    let mut at = 0u64; // sampler coordinate of the current training file's start
    for (src, role) in train
        .iter()
        .map(|s| (s, Role::Train))
        .chain(val.iter().map(|s| (s, Role::Val)))
    {
        let prev_in_role = docs.iter().rev().find(|d| d.role == role);
        let sep_before = prev_in_role.map(|d| d.ends_with_newline);
        let mark = sample.as_ref().map(Sampler::mark);
        let mut doc_chars = if opts.skip_bad_files {
            chars.as_ref().map(|_| CharVocab::new())
        } else {
            None
        };
        let result = {
            let chars_ref = match (&mut doc_chars, &mut chars) {
                (Some(d), _) => Some(d),
                (None, Some(c)) => Some(c),
                _ => None,
            };
            let sampler = if role == Role::Train {
                sample.as_mut()
            } else {
                None
            };
            scan_doc(
                src,
                opts.lossy,
                separator,
                sep_before,
                at,
                chars_ref,
                sampler,
                &mut |read| {
                    on_event(&PrepareEvent::Progress {
                        stage: Stage::Scan,
                        done: done + read,
                        total: total_bytes,
                    });
                    opts.check_cancel()
                },
            )
        };
        done += src.bytes;
        if role == Role::Train {
            at += src.bytes;
        }
        match result {
            Ok(d) => {
                if let (Some(dc), Some(c)) = (&doc_chars, &mut chars) {
                    c.merge(dc);
                }
                if d.text_bytes > 0 {
                    docs.push(Doc {
                        path: src.path.clone(),
                        role,
                        text_bytes: d.text_bytes,
                        ends_with_newline: d.ends_with_newline,
                        bytes: d.bytes,
                    });
                }
                records.push(SourceRecord {
                    path: src.canonical.clone(),
                    role,
                    bytes: d.bytes,
                    mtime_ns: d.mtime_ns,
                    sha256: Some(d.sha256),
                    text_bytes: d.text_bytes,
                    skipped: None,
                });
            }
            Err(e) if opts.skip_bad_files && !matches!(e, Error::Interrupted(_)) => {
                if let (Some(s), Some(m)) = (&mut sample, mark) {
                    s.rollback(m);
                }
                let reason = match &e {
                    Error::Corpus { msg, .. } => msg.clone(),
                    other => other.to_string(),
                };
                on_event(&PrepareEvent::Skipped {
                    path: src.path.clone(),
                    reason: reason.clone(),
                });
                records.push(SourceRecord {
                    path: src.canonical.clone(),
                    role,
                    bytes: src.bytes,
                    mtime_ns: src.mtime_ns,
                    sha256: None,
                    text_bytes: 0,
                    skipped: Some(reason),
                });
            }
            Err(e) => return Err(e),
        }
    }
    for role in [Role::Train, Role::Val] {
        let n = docs.iter().filter(|d| d.role == role).count();
        let sources = if role == Role::Train { train } else { val };
        if n == 0 && !sources.is_empty() {
            let first = &sources[0].path;
            return Err(if sources.len() == 1 {
                corpus_err(first, "file is empty")
            } else {
                corpus_err(
                    &if role == Role::Train {
                        opts.paths[0].clone()
                    } else {
                        opts.val_paths[0].clone()
                    },
                    format!(
                        "none of its {} files has any text (empty or left out)",
                        sources.len()
                    ),
                )
            });
        }
        // Separator text is part of the corpus: its chars are in a char vocabulary.
        if let (Some(c), true) = (&mut chars, n > 1) {
            c.add(separator.text_after(false).unwrap_or(""));
        }
    }
    let shas = |role: Role| -> Vec<&str> {
        records
            .iter()
            .filter(|r| r.role == role && r.text_bytes > 0)
            .filter_map(|r| r.sha256.as_deref())
            .collect()
    };
    let fingerprint = combined_fingerprint(&shas(Role::Train), &shas(Role::Val), separator);
    Ok(State::Fresh {
        docs,
        records,
        fingerprint,
        chars,
        sample,
    })
}

/// Pass 1 over one file.
#[allow(clippy::too_many_arguments)]
fn scan_doc(
    src: &Source,
    lossy: bool,
    separator: &Separator,
    sep_before: Option<bool>,
    at: u64,
    mut chars: Option<&mut CharVocab>,
    mut sample: Option<&mut Sampler>,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<DocScan> {
    let mut r = DocReader::open(&src.path, lossy, true)?;
    let mut text_bytes = 0u64;
    let mut last = 0u8;
    while let Some(chunk) = r.next_chunk()? {
        if text_bytes == 0 {
            if let (Some(s), Some(prev_nl)) = (sample.as_deref_mut(), sep_before) {
                s.separator(separator.text_after(prev_nl).unwrap_or(if prev_nl {
                    ""
                } else {
                    "\n"
                }));
            }
        }
        if let Some(c) = chars.as_deref_mut() {
            c.add(chunk);
        }
        if let Some(s) = sample.as_deref_mut() {
            s.feed(chunk, at + text_bytes, text_bytes == 0);
        }
        text_bytes += chunk.len() as u64;
        last = *chunk.as_bytes().last().unwrap_or(&last);
        progress(r.bytes_read)?;
    }
    if let Some(s) = sample {
        s.end_doc();
    }
    let bytes = r.bytes_read;
    let mtime_ns = std::fs::metadata(&src.path)
        .map(|m| super::corpus::mtime_ns(&m))
        .unwrap_or(src.mtime_ns);
    Ok(DocScan {
        sha256: r.finish(),
        text_bytes,
        ends_with_newline: last == b'\n',
        bytes,
        mtime_ns,
    })
}

impl Scanned {
    /// Pass 2 (or the verification and mapping of a reused token file).
    pub fn finish(self, on_event: &mut dyn FnMut(&PrepareEvent)) -> Result<Prepared> {
        let Scanned {
            opts,
            separator,
            total_bytes,
            state,
        } = self;
        match state {
            State::Reuse { head, meta } => {
                let tokenizer = tokenizer_of(&head, &meta)?;
                head.verify(&mut |done, total| {
                    on_event(&PrepareEvent::Progress {
                        stage: Stage::Verify,
                        done,
                        total,
                    });
                    opts.check_cancel()
                })?;
                let tokens = head.map()?;
                let data = train_data(
                    &tokens,
                    head.header.val_start as usize,
                    &meta,
                    &opts,
                    &tokenizer,
                );
                Ok(Prepared {
                    tokenizer,
                    data,
                    token_file: Some(head.path.clone()),
                    reused: true,
                    documents: meta.documents + meta.val_documents,
                    text_bytes: meta.text_bytes,
                })
            }
            State::Fresh {
                docs,
                records,
                fingerprint,
                chars,
                sample,
            } => {
                let tokenizer = match &opts.tokenizer {
                    TokenizerPlan::Train { kind, options, .. } => match (kind, chars, sample) {
                        (TokenizerKind::Char, Some(c), _) => Tokenizer::from_char_vocab(&c)?,
                        (kind, _, Some(s)) => {
                            let (text, pieces, of) = s.into_text(opts.val_fraction);
                            let t = Tokenizer::train(*kind, &text, options)?;
                            on_event(&PrepareEvent::TokenizerTrained {
                                kind: *kind,
                                vocab: t.vocab_size(),
                                sample_bytes: text.len() as u64,
                                of_bytes: of,
                                pieces,
                            });
                            t
                        }
                        _ => unreachable!("the scan collects what the plan needs"),
                    },
                    TokenizerPlan::Use(t) => {
                        if let Some(c) = &chars {
                            let missing = t.missing_chars(c);
                            if !missing.is_empty() {
                                return Err(Error::UnknownChars(missing));
                            }
                        }
                        t.clone()
                    }
                };
                let train_docs = docs.iter().filter(|d| d.role == Role::Train).count();
                let val_docs = docs.len() - train_docs;
                let text_len = |role: Role| -> u64 {
                    let mut n = 0;
                    let mut prev: Option<&Doc> = None;
                    for d in docs.iter().filter(|d| d.role == role) {
                        if let Some(p) = prev {
                            n += separator
                                .text_after(p.ends_with_newline)
                                .map_or(0, |t| t.len() as u64);
                        }
                        n += d.text_bytes;
                        prev = Some(d);
                    }
                    n
                };
                let (train_len, val_len) = (text_len(Role::Train), text_len(Role::Val));
                let meta = TokenMeta {
                    quill_version: env!("CARGO_PKG_VERSION").to_string(),
                    tokenizer: tokenizer.to_json(),
                    fingerprint,
                    paths: opts.paths.clone(),
                    val_paths: opts.val_paths.clone(),
                    globs: opts.globs.clone(),
                    separator: separator.clone(),
                    lossy: opts.lossy,
                    skip_bad_files: opts.skip_bad_files,
                    val_fraction: opts.val_fraction,
                    trained_tokenizer: opts.tokenizer.spec(),
                    documents: train_docs,
                    val_documents: val_docs,
                    text_bytes: train_len + val_len,
                    sources: records,
                };
                // Written when big enough, or to replace one that is out of date.
                let to_file = opts
                    .token_file
                    .as_ref()
                    .filter(|p| total_bytes >= opts.write_threshold || p.exists());
                let mut out = match to_file {
                    Some(path) => {
                        for orphan in crate::atomic::orphaned_temps(path) {
                            let bytes = std::fs::metadata(&orphan).map_or(0, |m| m.len());
                            if std::fs::remove_file(&orphan).is_ok() {
                                on_event(&PrepareEvent::RemovedOrphan {
                                    path: orphan,
                                    bytes,
                                });
                            }
                        }
                        let json = serde_json::to_vec(&meta).map_err(|e| Error::TokenFile {
                            path: path.clone(),
                            msg: format!("cannot serialise metadata: {e}"),
                        })?;
                        Out::File(TokenFileWriter::create(
                            path,
                            tokenizer.vocab_size(),
                            tokenizer.sha256(),
                            &json,
                        )?)
                    }
                    None => Out::Memory(TokenBuf::new(tokenizer.vocab_size())),
                };
                let encode_total: u64 = docs.iter().map(|d| d.bytes).sum();
                let mut done = 0u64;
                let cancel = opts.clone();
                let mut progress = |n: u64| {
                    done += n;
                    on_event(&PrepareEvent::Progress {
                        stage: Stage::Encode,
                        done,
                        total: encode_total,
                    });
                    cancel.check_cancel()
                };
                let cut = (opts.val_fraction > 0.0)
                    .then(|| (split_target(train_len, opts.val_fraction), train_len));
                let train_iter = docs.iter().filter(|d| d.role == Role::Train);
                let (n_train, cut_at) = encode_docs(
                    train_iter,
                    &tokenizer,
                    &separator,
                    opts.lossy,
                    cut,
                    &mut out,
                    &mut progress,
                )?;
                let val_start = if opts.val_paths.is_empty() {
                    cut_at
                } else {
                    let val_iter = docs.iter().filter(|d| d.role == Role::Val);
                    encode_docs(
                        val_iter,
                        &tokenizer,
                        &separator,
                        opts.lossy,
                        None,
                        &mut out,
                        &mut progress,
                    )?;
                    n_train
                };
                let (tokens, token_file) = match out {
                    Out::Memory(buf) => (buf.into_tokens(), None),
                    Out::File(w) => {
                        let path = to_file.expect("writing a file").clone();
                        w.finish(val_start)?;
                        let head = read_head(&path)?;
                        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                        on_event(&PrepareEvent::Written {
                            path: path.clone(),
                            bytes,
                        });
                        (head.map()?, Some(path))
                    }
                };
                let data = train_data(&tokens, val_start as usize, &meta, &opts, &tokenizer);
                Ok(Prepared {
                    tokenizer,
                    data,
                    token_file,
                    reused: false,
                    documents: train_docs + val_docs,
                    text_bytes: meta.text_bytes,
                })
            }
        }
    }
}

/// The tokenizer stored in a token file, checked against the header's hash.
fn tokenizer_of(head: &TokenFileHead, meta: &TokenMeta) -> Result<Tokenizer> {
    let err = |msg: String| Error::TokenFile {
        path: head.path.clone(),
        msg,
    };
    let t = Tokenizer::from_json(&meta.tokenizer).map_err(|e| err(format!("{e}")))?;
    if t.sha256() != head.header.tokenizer_sha256 {
        return Err(err(
            "the tokenizer does not match the hash in the header".into()
        ));
    }
    if t.vocab_size() as u64 != head.header.vocab {
        return Err(err(format!(
            "the tokenizer has {} tokens, the header says {}",
            t.vocab_size(),
            head.header.vocab
        )));
    }
    Ok(t)
}

fn train_data(
    tokens: &Tokens,
    val_start: usize,
    meta: &TokenMeta,
    opts: &PrepareOptions,
    tokenizer: &Tokenizer,
) -> TrainData {
    let n = tokens.len();
    let val_start = val_start.min(n);
    let files = meta.sources.iter().filter(|s| s.text_bytes > 0).count();
    let paths = if opts.paths.is_empty() {
        &meta.paths
    } else {
        &opts.paths
    };
    TrainData {
        train: tokens.slice(0..val_start),
        val: tokens.slice(val_start..n),
        corpus: CorpusInfo {
            path: paths.first().cloned().unwrap_or_default(),
            fingerprint: meta.fingerprint.clone(),
            train_tokens: val_start,
            val_tokens: n - val_start,
            paths: if paths.len() > 1 {
                paths.clone()
            } else {
                Vec::new()
            },
            files: (files != 1).then_some(files),
            val_paths: meta.val_paths.clone(),
        },
        tokenizer_sha256: tokenizer.sha256(),
    }
}

/// Opens a prepared token file for training as it is (`quill train --tokens`): checks it
/// whole, maps it, and returns its tokenizer, data and metadata.
pub fn open_token_file(
    path: &Path,
    on_event: &mut dyn FnMut(&PrepareEvent),
) -> Result<(Tokenizer, TrainData, TokenMeta)> {
    let head = read_head(path)?;
    let meta: TokenMeta = serde_json::from_str(&head.meta).map_err(|e| Error::TokenFile {
        path: path.to_path_buf(),
        msg: format!("metadata is not a quill token file description: {e}"),
    })?;
    let tokenizer = tokenizer_of(&head, &meta)?;
    head.verify(&mut |done, total| {
        on_event(&PrepareEvent::Progress {
            stage: Stage::Verify,
            done,
            total,
        });
        Ok(())
    })?;
    let tokens = head.map()?;
    let opts = PrepareOptions {
        paths: meta.paths.clone(),
        val_paths: meta.val_paths.clone(),
        globs: meta.globs.clone(),
        separator: Some(meta.separator.clone()),
        skip_bad_files: meta.skip_bad_files,
        lossy: meta.lossy,
        val_fraction: meta.val_fraction,
        tokenizer: TokenizerPlan::Use(tokenizer.clone()),
        token_file: Some(path.to_path_buf()),
        write_threshold: 0,
        force: false,
        cancel: None,
    };
    let data = train_data(
        &tokens,
        head.header.val_start as usize,
        &meta,
        &opts,
        &tokenizer,
    );
    Ok((tokenizer, data, meta))
}

impl TrainData {
    /// The tokens of one in-memory text (a [`super::corpus::Corpus`]), split with
    /// [`split_text`]'s rule, through the same encoder as files.
    pub fn from_text(
        text: &str,
        corpus: CorpusInfo,
        tokenizer: &Tokenizer,
        val_fraction: f32,
    ) -> Result<Self> {
        let mut out = Out::Memory(TokenBuf::new(tokenizer.vocab_size()));
        let len = text.len() as u64;
        let cut = (val_fraction > 0.0).then(|| (split_target(len, val_fraction), len));
        let mut enc = Encoder::new(tokenizer, cut, ENCODE_CHUNK);
        let wrap = |e: Error| match e {
            e @ Error::Corpus { .. } => e,
            e => corpus_err(&corpus.path, e.to_string()),
        };
        enc.feed(text, &mut out).map_err(wrap)?;
        let val_start = enc.finish(&mut out).map_err(wrap)? as usize;
        let Out::Memory(buf) = out else {
            unreachable!("memory output")
        };
        let tokens = buf.into_tokens();
        let n = tokens.len();
        Ok(TrainData {
            train: tokens.slice(0..val_start),
            val: tokens.slice(val_start..n),
            corpus: CorpusInfo {
                train_tokens: val_start,
                val_tokens: n - val_start,
                ..corpus
            },
            tokenizer_sha256: tokenizer.sha256(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// pass 2

enum Out {
    Memory(TokenBuf),
    File(TokenFileWriter),
}

impl Out {
    fn push(&mut self, ids: &[u32]) -> Result<()> {
        match self {
            Out::Memory(b) => {
                b.push(ids);
                Ok(())
            }
            Out::File(w) => w.push(ids),
        }
    }
}

/// Encodes documents of one role in order, separators between them. Returns the tokens
/// written and where the validation tail starts (relative to this role's first token; the
/// token count when `cut` is `None`).
fn encode_docs<'a>(
    docs: impl Iterator<Item = &'a Doc>,
    tokenizer: &Tokenizer,
    separator: &Separator,
    lossy: bool,
    cut: Option<(u64, u64)>,
    out: &mut Out,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<(u64, u64)> {
    let start = match out {
        Out::Memory(b) => b.len() as u64,
        Out::File(w) => w.len(),
    };
    let mut enc = Encoder::new(tokenizer, cut, ENCODE_CHUNK);
    let mut prev: Option<&Doc> = None;
    for doc in docs {
        let wrap = |e: Error| match e {
            e @ (Error::Corpus { .. } | Error::Io { .. } | Error::TokenFile { .. }) => e,
            e => corpus_err(&doc.path, e.to_string()),
        };
        if let Some(p) = prev {
            match separator.text_after(p.ends_with_newline) {
                Some(t) => enc.feed(t, out).map_err(wrap)?,
                None => {
                    let eos = tokenizer.eos_id().ok_or_else(|| {
                        Error::config("separator", "the tokenizer has no end-of-text token")
                    })?;
                    enc.end_of_text(eos, out).map_err(wrap)?;
                }
            }
        }
        let mut r = DocReader::open(&doc.path, lossy, false)?;
        let mut text_bytes = 0u64;
        let mut read = 0u64;
        while let Some(chunk) = r.next_chunk()? {
            text_bytes += chunk.len() as u64;
            enc.feed(chunk, out).map_err(wrap)?;
            progress(r.bytes_read - read)?;
            read = r.bytes_read;
        }
        if text_bytes != doc.text_bytes {
            return Err(corpus_err(
                &doc.path,
                format!(
                    "changed while being prepared ({} bytes of text, {} a moment ago); run again",
                    text_bytes, doc.text_bytes
                ),
            ));
        }
        prev = Some(doc);
    }
    let cut_at = enc.finish(out)?;
    let end = match out {
        Out::Memory(b) => b.len() as u64,
        Out::File(w) => w.len(),
    };
    Ok((end - start, cut_at))
}

#[derive(Clone, Copy, Debug)]
enum Cut {
    /// No validation tail.
    Off,
    /// Looking for the split: the first newline at or after `target` (a char boundary at or
    /// after it, really) whose next byte is not the end `total`.
    Searching { target: u64, total: u64 },
    /// Validation starts at this token.
    At(u64),
}

/// Streaming encoder of one token stream: text is buffered until a line end so word and BPE
/// pieces are encoded exactly as the whole text would be (they encode line by line), and the
/// train/validation split of [`split_text`] is found on the way.
struct Encoder<'a> {
    tok: &'a Tokenizer,
    /// Char tokenizers may encode any piece (one token per char).
    char_mode: bool,
    /// Encode once this much text is pending.
    flush_at: usize,
    pending: String,
    /// Stream position (bytes) of `pending[0]`.
    pos: u64,
    /// Tokens emitted.
    n: u64,
    cut: Cut,
    /// Char mode: tokens before the split point when it was passed inside a piece that ended
    /// mid-line (used when no newline follows).
    fallback: Option<u64>,
    /// Ids of the piece being encoded (reused).
    ids: Vec<u32>,
}

impl<'a> Encoder<'a> {
    fn new(tok: &'a Tokenizer, cut: Option<(u64, u64)>, flush_at: usize) -> Self {
        Encoder {
            tok,
            char_mode: tok.kind() == TokenizerKind::Char,
            flush_at,
            pending: String::new(),
            pos: 0,
            n: 0,
            cut: match cut {
                Some((target, total)) => Cut::Searching { target, total },
                None => Cut::Off,
            },
            fallback: None,
            ids: Vec::new(),
        }
    }

    fn feed(&mut self, text: &str, out: &mut Out) -> Result<()> {
        self.pending.push_str(text);
        if self.pending.len() >= self.flush_at {
            if let Some(k) = memchr::memrchr(b'\n', self.pending.as_bytes()) {
                self.encode_front(k + 1, out)?;
            } else if self.char_mode {
                self.encode_front(self.pending.len(), out)?;
            }
        }
        Ok(())
    }

    fn end_of_text(&mut self, eos: u32, out: &mut Out) -> Result<()> {
        self.encode_front(self.pending.len(), out)?;
        out.push(&[eos])?;
        self.n += 1;
        if let Cut::Searching { target, total } = self.cut {
            if self.pos >= target && self.pos < total {
                self.cut = Cut::At(self.n);
            }
        }
        Ok(())
    }

    /// Encodes what is pending; returns where the validation tail starts.
    fn finish(&mut self, out: &mut Out) -> Result<u64> {
        self.encode_front(self.pending.len(), out)?;
        Ok(match self.cut {
            Cut::At(c) => c,
            Cut::Off => self.n,
            Cut::Searching { .. } => self.fallback.unwrap_or(self.n),
        })
    }

    fn emit(&mut self, text: &str, out: &mut Out) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        self.ids.clear();
        self.tok.encode_into(text, &mut self.ids)?;
        out.push(&self.ids)?;
        self.n += self.ids.len() as u64;
        Ok(())
    }

    /// Encodes `pending[..k]` (`k` a char boundary; a line end unless flushing everything).
    fn encode_front(&mut self, k: usize, out: &mut Out) -> Result<()> {
        if k == 0 {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let seg = &pending[..k];
        let ps = self.pos;
        let end = ps + k as u64;
        let mut split: Option<usize> = None;
        let mut use_fallback = false;
        if let Cut::Searching { target, total } = self.cut {
            if target < end {
                // `s`: where the search starts in `seg` (the first char boundary at or after
                // the target when it lies in this piece).
                let s = if target >= ps {
                    let mut s = (target - ps) as usize;
                    while !seg.is_char_boundary(s) {
                        s += 1;
                    }
                    Some(s)
                } else {
                    None
                };
                let from = s.unwrap_or(0);
                match memchr::memchr(b'\n', &seg.as_bytes()[from..]) {
                    Some(j) if ps + (from + j) as u64 + 1 < total => split = Some(from + j + 1),
                    found => {
                        let last = found.is_some() || end == total;
                        if last {
                            match s {
                                Some(s) => split = Some(s),
                                None => use_fallback = true,
                            }
                        } else if let (Some(s), true) = (s, self.char_mode) {
                            self.fallback = Some(self.n + seg[..s].chars().count() as u64);
                        }
                    }
                }
            }
        }
        let result = (|| {
            if use_fallback {
                self.cut = Cut::At(self.fallback.unwrap_or(self.n));
            }
            match split {
                Some(j) => {
                    self.emit(&seg[..j], out)?;
                    self.cut = Cut::At(self.n);
                    self.emit(&seg[j..], out)
                }
                None => self.emit(seg, out),
            }
        })();
        self.pos = end;
        self.pending = pending;
        self.pending.drain(..k);
        result
    }
}

// ---------------------------------------------------------------------------------------------
// the tokenizer sample

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PState {
    /// Waiting for the next piece's start.
    Seek,
    /// At a piece's start, skipping to the next line start.
    SkipLine,
    /// Taking text.
    Take,
}

/// The text word and BPE tokenizers are trained on. When the training files hold at most
/// `sample_bytes` bytes, it is the training part exactly (the joined text up to the
/// validation split, as [`split_text`] cuts it). Otherwise it is `⌈sample_bytes / 1 MiB⌉`
/// pieces of about 1 MiB each, whole lines, starting at evenly spaced points of the first
/// `1 − val_fraction` of the training bytes (positions counted in file bytes), joined with
/// newlines. Documents are joined with their separator's text (a newline for end-of-text).
#[derive(Debug)]
struct Sampler {
    whole: bool,
    out: String,
    piece: u64,
    starts: Vec<u64>,
    next: usize,
    region_end: u64,
    state: PState,
    taken: u64,
    pieces: usize,
}

#[derive(Clone, Copy, Debug)]
struct SampleMark {
    len: usize,
    next: usize,
    state: PState,
    taken: u64,
    pieces: usize,
}

impl Sampler {
    /// A sampler for `train_bytes` bytes of training files; pieces of about `piece` bytes.
    fn new(train_bytes: u64, val_fraction: f32, sample_bytes: u64, piece: u64) -> Self {
        let whole = train_bytes <= sample_bytes;
        let region_end = split_target(train_bytes, val_fraction);
        let piece = piece.min(sample_bytes).max(1);
        let n = if whole {
            0
        } else {
            sample_bytes.div_ceil(piece)
        };
        Sampler {
            whole,
            out: String::new(),
            piece,
            starts: (0..n).map(|k| k * region_end / n).collect(),
            next: 0,
            region_end,
            state: PState::Seek,
            taken: 0,
            pieces: 0,
        }
    }

    fn mark(&self) -> SampleMark {
        SampleMark {
            len: self.out.len(),
            next: self.next,
            state: self.state,
            taken: self.taken,
            pieces: self.pieces,
        }
    }

    fn rollback(&mut self, m: SampleMark) {
        self.out.truncate(m.len);
        self.next = m.next;
        self.state = m.state;
        self.taken = m.taken;
        self.pieces = m.pieces;
    }

    /// Separator text before a document (whole mode only: pieces never span documents).
    fn separator(&mut self, text: &str) {
        if self.whole {
            self.out.push_str(text);
        }
    }

    /// Text of a training file; `at`: its position in the training bytes.
    fn feed(&mut self, text: &str, at: u64, doc_start: bool) {
        if self.whole {
            self.out.push_str(text);
            return;
        }
        if doc_start && self.state == PState::SkipLine {
            self.state = PState::Take;
        }
        let b = text.as_bytes();
        let mut i = 0usize;
        loop {
            match self.state {
                PState::Seek => {
                    let Some(&s) = self.starts.get(self.next) else {
                        return;
                    };
                    if s >= at + b.len() as u64 {
                        return;
                    }
                    let mut off = (s.saturating_sub(at) as usize).max(i);
                    while !text.is_char_boundary(off) {
                        off += 1;
                    }
                    i = off;
                    self.state = if doc_start && i == 0 {
                        PState::Take
                    } else {
                        PState::SkipLine
                    };
                }
                PState::SkipLine => match memchr::memchr(b'\n', &b[i..]) {
                    Some(j) => {
                        i += j + 1;
                        self.state = PState::Take;
                    }
                    None => return,
                },
                PState::Take => {
                    if i >= b.len() {
                        return;
                    }
                    if at + i as u64 >= self.region_end {
                        self.end_piece(u64::MAX);
                        return;
                    }
                    let rest = &text[i..];
                    if self.taken < self.piece {
                        let mut j = ((self.piece - self.taken) as usize).min(rest.len());
                        while !rest.is_char_boundary(j) {
                            j += 1;
                        }
                        self.out.push_str(&rest[..j]);
                        self.taken += j as u64;
                        i += j;
                        continue;
                    }
                    // A piece ends at a line end (at most 4 pieces' worth for a huge line).
                    let limit = (4 * self.piece).saturating_sub(self.taken) as usize;
                    match memchr::memchr(b'\n', rest.as_bytes()) {
                        Some(j) if j < limit => {
                            self.out.push_str(&rest[..=j]);
                            i += j + 1;
                            self.end_piece(at + i as u64);
                        }
                        _ if rest.len() >= limit => {
                            let mut j = limit;
                            while !rest.is_char_boundary(j) {
                                j += 1;
                            }
                            self.out.push_str(&rest[..j]);
                            i += j;
                            self.end_piece(at + i as u64);
                        }
                        _ => {
                            self.out.push_str(rest);
                            self.taken += rest.len() as u64;
                            return;
                        }
                    }
                }
            }
        }
    }

    fn end_piece(&mut self, now: u64) {
        if self.taken > 0 || self.state == PState::Take {
            if !self.out.is_empty() && !self.out.ends_with('\n') {
                self.out.push('\n');
            }
            if self.taken > 0 {
                self.pieces += 1;
            }
        }
        self.taken = 0;
        self.state = PState::Seek;
        self.next += 1;
        while self.starts.get(self.next).is_some_and(|&s| s < now) {
            self.next += 1;
        }
        if now == u64::MAX {
            self.next = self.starts.len();
        }
    }

    fn end_doc(&mut self) {
        if !self.whole && self.state == PState::Take && self.taken > 0 {
            self.end_piece(0);
        }
    }

    /// The sample, the number of pieces (0: whole training part) and the bytes it was drawn
    /// from.
    fn into_text(self, val_fraction: f32) -> (String, usize, u64) {
        if self.whole {
            let len = self.out.len() as u64;
            let train = split_text(&self.out, val_fraction).0.to_string();
            (train, 0, split_target(len, val_fraction))
        } else {
            (self.out, self.pieces, self.region_end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::corpus::split_text;

    fn tok(kind: TokenizerKind, text: &str) -> Tokenizer {
        let opts = TokenizerOptions {
            vocab_size: if kind == TokenizerKind::Bpe { 300 } else { 50 },
            min_frequency: 1,
        };
        Tokenizer::train(kind, text, &opts).unwrap()
    }

    /// The old in-memory path: split the text, encode both parts.
    fn reference(t: &Tokenizer, text: &str, f: f32) -> (Vec<u32>, Vec<u32>) {
        let (a, b) = split_text(text, f);
        (t.encode(a).unwrap(), t.encode(b).unwrap())
    }

    /// The streaming encoder fed in pieces of `step` bytes, flushing every `flush` bytes.
    fn streamed(
        t: &Tokenizer,
        text: &str,
        f: f32,
        step: usize,
        flush: usize,
    ) -> (Vec<u32>, Vec<u32>) {
        let mut out = Out::Memory(TokenBuf::new(t.vocab_size()));
        let len = text.len() as u64;
        let cut = (f > 0.0).then(|| (split_target(len, f), len));
        let mut enc = Encoder::new(t, cut, flush);
        let mut i = 0;
        while i < text.len() {
            let mut j = (i + step).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            enc.feed(&text[i..j], &mut out).unwrap();
            i = j;
        }
        let c = enc.finish(&mut out).unwrap() as usize;
        let Out::Memory(buf) = out else {
            unreachable!()
        };
        let all = buf.into_tokens().to_vec();
        (all[..c].to_vec(), all[c..].to_vec())
    }

    #[test]
    fn streaming_encoding_and_split_equal_the_in_memory_path() {
        let texts = [
            "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
                .repeat(5),
            "one long line without any newline at all, ééé 東京".repeat(3),
            "a\nb\nc\nd\n".to_string(),
            "line\n".repeat(20) + "tail without newline ü",
            "x".repeat(50) + "\n",
            "ends\nwith one newline\n".to_string(),
        ];
        for text in &texts {
            for kind in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
                let t = tok(kind, text);
                for f in [0.0, 0.05, 0.1, 0.3, 0.5, 0.89] {
                    let want = reference(&t, text, f);
                    for (step, flush) in [(1, 1), (3, 5), (7, 16), (1000, 1 << 20), (13, 2)] {
                        let got = streamed(&t, text, f, step, flush);
                        assert_eq!(got, want, "{kind} f={f} step={step} flush={flush} {text:?}");
                    }
                }
            }
        }
    }

    fn options(dir: &Path) -> PrepareOptions {
        let corpus = dir.join("c.txt");
        std::fs::write(&corpus, "some text\n".repeat(100)).unwrap();
        PrepareOptions {
            paths: vec![corpus],
            val_paths: Vec::new(),
            globs: Vec::new(),
            separator: None,
            skip_bad_files: false,
            lossy: false,
            val_fraction: 0.1,
            tokenizer: TokenizerPlan::Train {
                kind: TokenizerKind::Char,
                options: TokenizerOptions::for_kind(TokenizerKind::Char),
                sample_bytes: DEFAULT_TOKENIZER_SAMPLE,
            },
            token_file: Some(dir.join("c.tokens")),
            write_threshold: 0,
            force: false,
            cancel: None,
        }
    }

    #[test]
    fn a_cancelled_preparation_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let mut opts = options(d.path());
        opts.cancel = Some(Arc::new(AtomicBool::new(true)));
        let e = prepare(&opts, &mut |_| {}).unwrap_err();
        assert!(matches!(e, Error::Interrupted(_)), "{e}");
        let mut names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["c.txt"]);
    }

    #[test]
    fn temporary_files_of_killed_runs_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let opts = options(d.path());
        let orphan = d.path().join(".c.tokens.tmp-4194305-0");
        std::fs::write(&orphan, b"half a token file").unwrap();
        let mut events = Vec::new();
        prepare(&opts, &mut |e| events.push(e.clone())).unwrap();
        if Path::new("/proc/self").exists() {
            assert!(!orphan.exists());
            assert!(events.contains(&PrepareEvent::RemovedOrphan {
                path: orphan,
                bytes: 17
            }));
        }
        assert!(d.path().join("c.tokens").is_file());
    }

    #[test]
    fn sampler_is_the_training_part_when_small_and_spread_pieces_when_big() {
        // 1000 numbered lines of 10 bytes: "line 0000\n" ...
        let text: String = (0..1000).map(|i| format!("line {i:04}\n")).collect();
        let feed = |s: &mut Sampler, docs: &[&str]| {
            let mut at = 0;
            for d in docs {
                for (k, part) in [&d[..d.len() / 3], &d[d.len() / 3..]].iter().enumerate() {
                    s.feed(part, at, k == 0);
                    at += part.len() as u64;
                }
                s.end_doc();
            }
        };
        let mut s = Sampler::new(10_000, 0.1, 10_000, 1000);
        feed(&mut s, &[&text]);
        let (sample, pieces, of) = s.into_text(0.1);
        assert_eq!(sample, split_text(&text, 0.1).0);
        assert_eq!((pieces, of), (0, split_target(10_000, 0.1)));

        // 8 pieces of about 100 bytes, spread over the first 90%, in two documents.
        let mut s = Sampler::new(10_000, 0.1, 800, 100);
        feed(&mut s, &[&text[..5000], &text[5000..]]);
        let (sample, pieces, of) = s.into_text(0.1);
        assert_eq!(of, split_target(10_000, 0.1));
        assert_eq!(pieces, 8, "{sample}");
        let lines: Vec<usize> = sample
            .lines()
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert!((70..=90).contains(&lines.len()), "{} lines", lines.len());
        // Whole lines, in order, from each eighth of the training part, none from the tail.
        assert!(lines.windows(2).all(|w| w[0] < w[1]));
        for k in 0..8 {
            let lo = k * 900 / 8;
            assert!(
                lines.iter().any(|&l| (lo..lo + 112).contains(&l)),
                "no line from eighth {k}: {lines:?}"
            );
        }
        assert!(lines.iter().all(|&l| l < 900), "{lines:?}");
    }
}
