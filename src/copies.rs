//! Copy detection: how much of a generated text was copied verbatim from the training corpus.
//!
//! A [`CopyIndex`] holds the corpus text (its files' normalised text, documents joined by a
//! NUL byte, which no corpus file contains, so no match crosses from one file into the next)
//! and its suffix array, built with `libsais`. [`CopyIndex::check`] then finds, for every
//! character of a text, the longest piece starting there that occurs in the corpus (the
//! *matching statistics*, by binary search over the suffix array), and reports:
//!
//! * the **longest copied span**, in characters, with one place it occurs (file, line, byte
//!   offset in the file's normalised text) and how often it occurs;
//! * the **copied fraction**: the share of the text's character n-grams, n = [`NGRAM`] = 12,
//!   that occur in the corpus (`None` for a text shorter than 12 characters). A 12-character
//!   piece of English is rarely repeated by chance, so this counts copying, not common words.
//!
//! Texts and the corpus are compared as bytes of UTF-8: a span is counted in whole characters.
//!
//! # Which corpus, and the cache
//! [`open`] finds the corpus the checkpoint records (or the paths given instead), reads it the
//! way training did (`train::corpus`: CRLF to LF, invalid UTF-8 replaced), and checks its
//! fingerprint against the one the checkpoint records; a missing or changed corpus is an error
//! that says so. The suffix array is cached beside the checkpoint in `CHECKPOINT.copies`
//! ([`cache_path`]), written atomically, and reused while the corpus fingerprint and text are
//! the same. The cache file is read as untrusted input: its sizes must match the corpus before
//! anything is allocated, its checksums must match, and every entry must point into the text;
//! anything else rebuilds the index (and says why).
//!
//! Cache format (little-endian): the 8-byte magic `QUILLCPY`, a u32 version (1), a u32
//! fingerprint length (at most [`MAX_FINGERPRINT`]) and the fingerprint's bytes, zero padding
//! to a multiple of 4, a u64 text length n, the CRC-32 of the index text and of the suffix
//! array's bytes (u32 each), then the suffix array: n i32 entries.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::atomic::AtomicFile;
use crate::checkpoint::{CorpusInfo, LoadedModel};
use crate::error::{Error, Result};
use crate::tokenizer::TokenizerKind;
use crate::train::corpus::{combined_fingerprint, resolve, DocReader, Separator};

/// n of the character n-grams counted by [`CopyReport::copied_fraction`].
pub const NGRAM: usize = 12;

/// Largest corpus text an index can hold (the suffix array's entries are i32).
pub const MAX_TEXT: usize = i32::MAX as usize;

/// Longest corpus fingerprint a cache file may carry.
pub const MAX_FINGERPRINT: usize = 1024;

const MAGIC: &[u8; 8] = b"QUILLCPY";
const VERSION: u32 = 1;

/// One file of the indexed corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    /// The file.
    pub path: PathBuf,
    /// Where its text starts in the index text.
    pub start: usize,
    /// Bytes of its normalised text.
    pub len: usize,
}

/// Where a copied span occurs in the corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySource {
    /// The corpus file.
    pub file: PathBuf,
    /// Line (1-based) where the span starts.
    pub line: usize,
    /// Byte offset of the span in the file's normalised text (line ends as LF).
    pub offset: usize,
    /// How many times the span occurs in the whole corpus.
    pub occurrences: usize,
}

/// What [`CopyIndex::check`] found in one text.
#[derive(Clone, Debug, PartialEq)]
pub struct CopyReport {
    /// Characters of the longest span of the text that occurs verbatim in the corpus (0 when
    /// the text is empty or none of its characters occurs).
    pub longest: usize,
    /// Byte range of that span in the checked text (the first, when several are as long).
    pub longest_range: Range<usize>,
    /// One occurrence of it in the corpus (the first in corpus order); `None` when `longest`
    /// is 0.
    pub source: Option<CopySource>,
    /// The text's character n-grams (n = [`NGRAM`]): characters - 11, or 0.
    pub ngrams: usize,
    /// How many of them occur in the corpus.
    pub ngrams_found: usize,
}

impl CopyReport {
    /// Share of the text's 12-character n-grams found in the corpus; `None` when the text has
    /// none (fewer than 12 characters).
    pub fn copied_fraction(&self) -> Option<f64> {
        (self.ngrams > 0).then(|| self.ngrams_found as f64 / self.ngrams as f64)
    }
}

/// A corpus indexed for copy detection. See the module docs.
pub struct CopyIndex {
    /// Documents' text joined by NUL bytes.
    text: Vec<u8>,
    /// Suffix array of `text`: every start position, in the order of the suffixes there.
    sa: Vec<i32>,
    docs: Vec<Doc>,
    fingerprint: String,
}

impl std::fmt::Debug for CopyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyIndex")
            .field("text_bytes", &self.text.len())
            .field("docs", &self.docs.len())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The longest corpus match starting at one character of a checked text.
#[derive(Clone, Copy, Debug)]
struct Match {
    /// Byte offset of the character in the checked text.
    at: usize,
    /// Whole characters matched.
    chars: usize,
    /// Bytes of those characters.
    bytes: usize,
}

impl CopyIndex {
    /// An index of `docs` (path and normalised text, in corpus order), recorded as having
    /// corpus fingerprint `fingerprint`. Errors when the text is larger than [`MAX_TEXT`].
    pub fn build(docs: Vec<(PathBuf, String)>, fingerprint: String) -> Result<Self> {
        let (text, docs) = join_docs(docs)?;
        let sa = suffix_array(&text)?;
        Ok(CopyIndex {
            text,
            sa,
            docs,
            fingerprint,
        })
    }

    /// The corpus fingerprint it was built for.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The indexed files.
    pub fn docs(&self) -> &[Doc] {
        &self.docs
    }

    /// Bytes of indexed text (documents and one separator byte between two).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Bytes of memory the index holds (text and suffix array).
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.sa.capacity() * 4
    }

    /// Longest span copied from the corpus and the share of 12-grams found, for `text`.
    pub fn check(&self, text: &str) -> CopyReport {
        let ms = self.matching_statistics(text);
        let nchars = ms.len();
        let ngrams = nchars.saturating_sub(NGRAM - 1);
        let ngrams_found = ms.iter().filter(|m| m.chars >= NGRAM).count();
        // The first of the longest.
        let best = ms
            .iter()
            .fold(None::<Match>, |b, m| match b {
                Some(b) if b.chars >= m.chars => Some(b),
                _ => Some(*m),
            })
            .filter(|m| m.chars > 0);
        let (longest, longest_range, source) = match best {
            Some(m) => {
                let span = &text.as_bytes()[m.at..m.at + m.bytes];
                (m.chars, m.at..m.at + m.bytes, self.locate(span))
            }
            None => (0, 0..0, None),
        };
        CopyReport {
            longest,
            longest_range,
            source,
            ngrams,
            ngrams_found,
        }
    }

    /// Byte ranges of `text` covered by a 12-character piece that occurs in the corpus, in
    /// order, merged where they touch or overlap (what the TUI underlines).
    pub fn copied_ranges(&self, text: &str) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for m in self.matching_statistics(text) {
            if m.chars < NGRAM {
                continue;
            }
            let r = m.at..m.at + m.bytes;
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        out
    }

    /// For every character of `text`, the longest match in the corpus starting there.
    ///
    /// A match at one character, less its first character, is a match at the next one, so
    /// each search starts from the range of that known prefix and only extends it; the
    /// total work is about (characters + extensions) × log(corpus bytes).
    fn matching_statistics(&self, text: &str) -> Vec<Match> {
        let q = text.as_bytes();
        let mut out = Vec::with_capacity(text.len());
        let mut known = 0usize; // bytes known to match at the current character
        let mut chars: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        chars.push(q.len());
        for ci in 0..chars.len() - 1 {
            let at = chars[ci];
            let known_here = known.min(q.len() - at);
            let (bytes, _) = self.extend(&q[at..], known_here);
            // Whole characters in q[at..at + bytes].
            let end = at + bytes;
            let last = chars.partition_point(|&b| b <= end) - 1;
            let whole = last.saturating_sub(ci);
            out.push(Match {
                at,
                chars: whole,
                bytes: chars[ci + whole] - at,
            });
            let clen = chars[ci + 1] - at;
            known = bytes.saturating_sub(clen);
        }
        out
    }

    /// The suffix-array range of suffixes that start with `p` (empty when `p` does not occur).
    fn range_of(&self, p: &[u8]) -> Range<usize> {
        let n = self.text.len();
        let suffix = |s: i32| {
            let s = s as usize;
            &self.text[s..(s + p.len()).min(n)]
        };
        let lo = self.sa.partition_point(|&s| suffix(s) < p);
        let hi = lo + self.sa[lo..].partition_point(|&s| suffix(s) <= p);
        lo..hi
    }

    /// The longest prefix of `q` that occurs in the corpus, given that its first `known` bytes
    /// do: its length in bytes and its suffix-array range. A NUL byte in `q` never matches.
    fn extend(&self, q: &[u8], known: usize) -> (usize, Range<usize>) {
        let n = self.text.len();
        let mut k = known;
        let mut r = self.range_of(&q[..k]);
        if r.is_empty() {
            // Only when `known` was wrong (it never is) or the corpus is empty.
            k = 0;
            r = 0..self.sa.len();
        }
        // The byte at `s + k` of a suffix, or -1 past the end (shorter suffixes sort first).
        let byte = |s: i32, k: usize| -> i16 {
            let i = s as usize + k;
            if i < n {
                i16::from(self.text[i])
            } else {
                -1
            }
        };
        while k < q.len() && q[k] != 0 && !r.is_empty() {
            let c = i16::from(q[k]);
            let part = &self.sa[r.clone()];
            let lo = part.partition_point(|&s| byte(s, k) < c);
            let hi = lo + part[lo..].partition_point(|&s| byte(s, k) <= c);
            if lo == hi {
                break;
            }
            r = r.start + lo..r.start + hi;
            k += 1;
        }
        (k, r)
    }

    /// The first occurrence (in corpus order) of `span`, which occurs in the corpus.
    fn locate(&self, span: &[u8]) -> Option<CopySource> {
        let r = self.range_of(span);
        let pos = self.sa[r.clone()].iter().copied().min()? as usize;
        let d = self
            .docs
            .partition_point(|d| d.start <= pos)
            .checked_sub(1)?;
        let doc = &self.docs[d];
        let offset = pos - doc.start;
        let line = 1 + memchr::memchr_iter(b'\n', &self.text[doc.start..pos]).count();
        Some(CopySource {
            file: doc.path.clone(),
            line,
            offset,
            occurrences: r.len(),
        })
    }
}

/// Documents joined with NUL bytes, and where each starts.
fn join_docs(docs: Vec<(PathBuf, String)>) -> Result<(Vec<u8>, Vec<Doc>)> {
    let total = docs
        .iter()
        .map(|(_, t)| t.len())
        .sum::<usize>()
        .saturating_add(docs.len().saturating_sub(1));
    if total > MAX_TEXT {
        let path = docs.first().map(|d| d.0.clone()).unwrap_or_default();
        return Err(Error::Corpus {
            path,
            msg: format!("{total} bytes of text; copy detection indexes at most {MAX_TEXT} bytes"),
        });
    }
    let mut text = Vec::with_capacity(total);
    let mut out = Vec::with_capacity(docs.len());
    for (i, (path, t)) in docs.into_iter().enumerate() {
        if i > 0 {
            text.push(0);
        }
        out.push(Doc {
            path,
            start: text.len(),
            len: t.len(),
        });
        text.extend_from_slice(t.as_bytes());
    }
    Ok((text, out))
}

/// The suffix array of `text` (libsais, one thread).
fn suffix_array(text: &[u8]) -> Result<Vec<i32>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    libsais::SuffixArrayConstruction::for_text(text)
        .in_owned_buffer32()
        .single_threaded()
        .run()
        .map(|r| r.into_vec())
        .map_err(|e| Error::Corpus {
            path: PathBuf::new(),
            msg: format!("cannot build the suffix array: {e}"),
        })
}

// ---------------------------------------------------------------------------------------------
// opening: the corpus a checkpoint records, its fingerprint, the cache

/// Where [`open`] looks for the corpus and keeps the index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Corpus files and folders to read instead of those the checkpoint records (which must
    /// still have the recorded fingerprint).
    pub corpus: Vec<PathBuf>,
    /// `--glob` patterns for the folders, as given to `quill train`.
    pub globs: Vec<String>,
    /// The cache file; `None`: [`cache_path`] of the checkpoint.
    pub cache: Option<PathBuf>,
}

/// What happened to the cache file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// The cached suffix array was valid and used.
    Reused,
    /// The index was built: `stale` says why a cache file there was not used (`None`: there
    /// was none); `saved` whether the new one was written (else why not).
    Built {
        /// Why an existing cache file was not used.
        stale: Option<String>,
        /// `Ok` when the cache was written, else the reason it was not.
        saved: std::result::Result<(), String>,
    },
}

/// An opened index and how it was obtained.
#[derive(Debug)]
pub struct Opened {
    /// The index.
    pub index: CopyIndex,
    /// The cache file.
    pub cache_path: PathBuf,
    /// Whether it was reused or built (and saved).
    pub cache: CacheStatus,
}

/// The cache file of a checkpoint: `CHECKPOINT.copies` beside it.
pub fn cache_path(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".copies");
    checkpoint.with_file_name(name)
}

/// [`open`] for a loaded model.
pub fn open_for(lm: &LoadedModel, opts: &OpenOptions) -> Result<Opened> {
    open(&lm.path, &lm.meta.corpus, lm.tokenizer.kind(), opts)
}

/// Opens the copy index of the model at `checkpoint`, trained on `corpus` with a tokenizer of
/// `kind` (which decides the default document separator): reads the corpus, checks its
/// fingerprint, then reuses or builds (and caches) the suffix array. See the module docs.
pub fn open(
    checkpoint: &Path,
    corpus: &CorpusInfo,
    kind: TokenizerKind,
    opts: &OpenOptions,
) -> Result<Opened> {
    let read = read_corpus(checkpoint, corpus, kind, opts)?;
    let cache_path = opts.cache.clone().unwrap_or_else(|| cache_path(checkpoint));
    let ReadCorpus {
        text,
        docs,
        fingerprint,
    } = read;
    let stale = match load_cache(&cache_path, &fingerprint, &text) {
        Ok(sa) => {
            return Ok(Opened {
                index: CopyIndex {
                    text,
                    sa,
                    docs,
                    fingerprint,
                },
                cache_path,
                cache: CacheStatus::Reused,
            })
        }
        Err(CacheMiss::Absent) => None,
        Err(CacheMiss::Invalid(why)) => Some(why),
    };
    let sa = suffix_array(&text)?;
    let index = CopyIndex {
        text,
        sa,
        docs,
        fingerprint,
    };
    let saved = save_cache(&cache_path, &index).map_err(|e| e.to_string());
    Ok(Opened {
        index,
        cache_path,
        cache: CacheStatus::Built { stale, saved },
    })
}

/// A corpus as read for the index: documents joined by NUL bytes, where each is.
struct ReadCorpus {
    text: Vec<u8>,
    docs: Vec<Doc>,
    fingerprint: String,
}

/// The first 12 characters of a fingerprint, for messages.
fn short(fp: &str) -> String {
    fp.chars().take(12).collect()
}

/// Reads the training files (text and hash) and the validation files (hash), and checks the
/// corpus fingerprint against the recorded one (trying every separator training could have
/// used when there are several files).
fn read_corpus(
    checkpoint: &Path,
    corpus: &CorpusInfo,
    kind: TokenizerKind,
    opts: &OpenOptions,
) -> Result<ReadCorpus> {
    let given = !opts.corpus.is_empty();
    let paths: Vec<PathBuf> = if given {
        opts.corpus.clone()
    } else if !corpus.paths.is_empty() {
        corpus.paths.clone()
    } else if !corpus.path.as_os_str().is_empty() {
        vec![corpus.path.clone()]
    } else {
        return Err(Error::Checkpoint {
            path: checkpoint.to_path_buf(),
            msg: "records no training corpus; name it with --corpus".into(),
        });
    };
    let hint = if given {
        ""
    } else {
        " (the checkpoint records this path from training; --corpus names where the corpus is now)"
    };
    let missing = |e: Error| -> Error {
        match e {
            Error::Io { path, cause } => Error::Corpus {
                path,
                msg: format!("cannot read the training corpus: {cause}{hint}"),
            },
            other => other,
        }
    };
    let sources = resolve(&paths, &opts.globs, None).map_err(missing)?;
    // The documents go straight into the index text (no second copy of the corpus).
    let size: u64 = sources.iter().map(|s| s.bytes + 1).sum();
    let mut text: Vec<u8> = Vec::with_capacity(size.min(MAX_TEXT as u64) as usize);
    let mut docs = Vec::with_capacity(sources.len());
    let mut train_sha = Vec::with_capacity(sources.len());
    for s in &sources {
        let mut r = DocReader::open(&s.path, true, true).map_err(missing)?;
        let start = text.len() + usize::from(!docs.is_empty());
        let mut len = 0usize;
        while let Some(chunk) = r.next_chunk()? {
            if start + len + chunk.len() > MAX_TEXT {
                return Err(Error::Corpus {
                    path: s.path.clone(),
                    msg: format!("copy detection indexes at most {MAX_TEXT} bytes of text"),
                });
            }
            if len == 0 && !docs.is_empty() {
                text.push(0);
            }
            text.extend_from_slice(chunk.as_bytes());
            len += chunk.len();
        }
        // Empty files are not documents, nor in the fingerprint (as in training).
        if len > 0 {
            train_sha.push(r.finish());
            docs.push(Doc {
                path: s.path.clone(),
                start,
                len,
            });
        }
    }
    let mut val_sha = Vec::new();
    if !corpus.val_paths.is_empty() {
        for s in resolve(&corpus.val_paths, &opts.globs, None).map_err(missing)? {
            let mut r = DocReader::open(&s.path, true, true).map_err(missing)?;
            let mut any = false;
            while let Some(chunk) = r.next_chunk()? {
                any |= !chunk.is_empty();
            }
            if any {
                val_sha.push(r.finish());
            }
        }
    }
    let recorded = corpus.fingerprint.as_str();
    let train: Vec<&str> = train_sha.iter().map(String::as_str).collect();
    let val: Vec<&str> = val_sha.iter().map(String::as_str).collect();
    let mut candidates = vec![
        Separator::default_for(kind),
        Separator::BlankLine,
        Separator::EndOfText,
        Separator::Text(String::new()),
    ];
    candidates.dedup();
    let found = candidates
        .iter()
        .map(|sep| combined_fingerprint(&train, &val, sep))
        .find(|fp| recorded.is_empty() || fp == recorded);
    match found {
        Some(fingerprint) => Ok(ReadCorpus {
            text,
            docs,
            fingerprint,
        }),
        None => {
            let now = combined_fingerprint(&train, &val, &candidates[0]);
            let several = if train.len() + val.len() > 1 {
                " (for a corpus of several files: the same files in the same order, with \
                 --corpus-glob if training used --glob)"
            } else {
                ""
            };
            Err(Error::Corpus {
                path: paths[0].clone(),
                msg: format!(
                    "has changed since {} was trained on it: fingerprint {}… now, {}… recorded; \
                     copy detection needs the training corpus as it was{several}",
                    checkpoint.display(),
                    short(&now),
                    short(recorded)
                ),
            })
        }
    }
}

/// Why a cache file was not used.
enum CacheMiss {
    Absent,
    Invalid(String),
}

/// Bytes before the suffix array for a fingerprint of `fp_len` bytes.
fn header_len(fp_len: usize) -> usize {
    let before_pad = 8 + 4 + 4 + fp_len;
    before_pad.div_ceil(4) * 4 + 8 + 4 + 4
}

fn save_cache(path: &Path, index: &CopyIndex) -> std::io::Result<()> {
    let fp = index.fingerprint.as_bytes();
    if fp.len() > MAX_FINGERPRINT {
        return Err(std::io::Error::other("the corpus fingerprint is too long"));
    }
    let sa_bytes: &[u8] = bytemuck::cast_slice(&index.sa);
    let mut head = Vec::with_capacity(header_len(fp.len()));
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(fp.len() as u32).to_le_bytes());
    head.extend_from_slice(fp);
    while head.len() % 4 != 0 {
        head.push(0);
    }
    head.extend_from_slice(&(index.text.len() as u64).to_le_bytes());
    head.extend_from_slice(&crc32fast::hash(&index.text).to_le_bytes());
    let mut sa_crc = crc32fast::Hasher::new();
    let mut w = BufWriter::with_capacity(1 << 20, AtomicFile::create(path)?);
    if cfg!(target_endian = "little") {
        sa_crc.update(sa_bytes);
        head.extend_from_slice(&sa_crc.clone().finalize().to_le_bytes());
        w.write_all(&head)?;
        w.write_all(sa_bytes)?;
    } else {
        let le: Vec<u8> = index.sa.iter().flat_map(|v| v.to_le_bytes()).collect();
        sa_crc.update(&le);
        head.extend_from_slice(&sa_crc.clone().finalize().to_le_bytes());
        w.write_all(&head)?;
        w.write_all(&le)?;
    }
    w.into_inner().map_err(|e| e.into_error())?.commit()
}

/// The cached suffix array for `text` with fingerprint `fingerprint`, if `path` holds a valid
/// one. Sizes are checked against the text before anything is allocated.
fn load_cache(
    path: &Path,
    fingerprint: &str,
    text: &[u8],
) -> std::result::Result<Vec<i32>, CacheMiss> {
    let bad = |why: &str| CacheMiss::Invalid(why.to_string());
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CacheMiss::Absent),
        // Never open a FIFO or device (that could block or never end).
        Ok(m) if !m.is_file() => return Err(bad("is not a regular file")),
        _ => {}
    }
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CacheMiss::Absent),
        Err(e) => return Err(CacheMiss::Invalid(format!("cannot be read: {e}"))),
    };
    let size = f
        .metadata()
        .map_err(|e| CacheMiss::Invalid(format!("cannot be read: {e}")))?
        .len();
    let mut fixed = [0u8; 16];
    f.read_exact(&mut fixed)
        .map_err(|_| bad("is too short to be a copy index"))?;
    if &fixed[..8] != MAGIC {
        return Err(bad("is not a quill copy index"));
    }
    let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(CacheMiss::Invalid(format!(
            "is of version {version}, this quill writes {VERSION}"
        )));
    }
    let fp_len = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes")) as usize;
    if fp_len > MAX_FINGERPRINT {
        return Err(bad("is damaged (fingerprint length out of range)"));
    }
    let head_len = header_len(fp_len);
    let want = head_len as u64 + 4 * text.len() as u64;
    if size != want {
        return Err(CacheMiss::Invalid(format!(
            "is {size} bytes, an index of this corpus takes {want}: it is damaged or of \
             another corpus"
        )));
    }
    let mut rest = vec![0u8; head_len - 16];
    f.read_exact(&mut rest)
        .map_err(|e| CacheMiss::Invalid(format!("cannot be read: {e}")))?;
    let (fp, tail) = rest.split_at(fp_len);
    if fp != fingerprint.as_bytes() {
        return Err(bad("was built for another corpus"));
    }
    let tail = &tail[tail.len() - 16..];
    let n = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
    let text_crc = u32::from_le_bytes(tail[8..12].try_into().expect("4 bytes"));
    let sa_crc = u32::from_le_bytes(tail[12..16].try_into().expect("4 bytes"));
    if n != text.len() as u64 || text_crc != crc32fast::hash(text) {
        return Err(bad("was built from other text (another quill version?)"));
    }
    let mut sa = vec![0i32; text.len()];
    f.read_exact(bytemuck::cast_slice_mut(&mut sa))
        .map_err(|e| CacheMiss::Invalid(format!("cannot be read: {e}")))?;
    if crc32fast::hash(bytemuck::cast_slice(&sa)) != sa_crc {
        return Err(bad("is damaged (checksum mismatch)"));
    }
    let len = text.len() as u64;
    for v in sa.iter_mut() {
        *v = i32::from_le(*v);
        if *v < 0 || *v as u64 >= len {
            return Err(bad("is damaged (an entry points outside the text)"));
        }
    }
    Ok(sa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn index(docs: &[&str]) -> CopyIndex {
        CopyIndex::build(
            docs.iter()
                .enumerate()
                .map(|(i, t)| (PathBuf::from(format!("doc{i}.txt")), t.to_string()))
                .collect(),
            "fp".into(),
        )
        .unwrap()
    }

    /// Whether `piece` occurs inside one of `docs`.
    fn occurs(docs: &[&str], piece: &str) -> bool {
        docs.iter().any(|d| d.contains(piece))
    }

    /// The brute-force reference: longest span (chars) and n-grams found.
    fn reference(docs: &[&str], text: &str) -> (usize, usize, usize) {
        let chars: Vec<char> = text.chars().collect();
        let mut longest = 0;
        for i in 0..chars.len() {
            for j in (i + 1..=chars.len()).rev() {
                if j - i <= longest {
                    break;
                }
                let s: String = chars[i..j].iter().collect();
                if occurs(docs, &s) {
                    longest = j - i;
                    break;
                }
            }
        }
        let ngrams = chars.len().saturating_sub(NGRAM - 1);
        let found = (0..ngrams)
            .filter(|&i| occurs(docs, &chars[i..i + NGRAM].iter().collect::<String>()))
            .count();
        (longest, ngrams, found)
    }

    fn random_text(rng: &mut rand_pcg::Pcg64, alphabet: &[char], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect()
    }

    #[test]
    fn longest_span_and_fraction_match_brute_force_on_random_texts() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(16);
        for round in 0..120 {
            let alphabet: &[char] = match round % 3 {
                0 => &['a', 'b'],
                1 => &['a', 'b', 'c', ' ', '\n'],
                _ => &['a', 'é', '東', 'b'],
            };
            let n_docs = 1 + round % 3;
            let docs: Vec<String> = (0..n_docs)
                .map(|_| {
                    let len = rng.random_range(0..200);
                    random_text(&mut rng, alphabet, len)
                })
                .collect();
            let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
            let idx = index(&refs);
            // Generated texts: random, or pieces of the corpus glued together.
            let text = if round % 2 == 0 || docs.iter().all(|d| d.is_empty()) {
                let len = rng.random_range(0..80);
                random_text(&mut rng, alphabet, len)
            } else {
                let mut t = String::new();
                for _ in 0..3 {
                    let d: Vec<char> = docs[rng.random_range(0..docs.len())].chars().collect();
                    if d.is_empty() {
                        continue;
                    }
                    let a = rng.random_range(0..d.len());
                    let b = rng.random_range(a..=d.len().min(a + 40));
                    t.extend(&d[a..b]);
                    t.push('z');
                }
                t
            };
            let r = idx.check(&text);
            let (longest, ngrams, found) = reference(&refs, &text);
            assert_eq!(r.longest, longest, "round {round}: {docs:?} / {text:?}");
            assert_eq!((r.ngrams, r.ngrams_found), (ngrams, found), "round {round}");
            let span = &text[r.longest_range.clone()];
            assert_eq!(span.chars().count(), longest);
            match &r.source {
                Some(src) => {
                    let d = &docs[src.file.to_str().unwrap()[3..4].parse::<usize>().unwrap()];
                    assert!(d[src.offset..].starts_with(span), "round {round}");
                    assert_eq!(src.line, 1 + d[..src.offset].matches('\n').count());
                    let count = (0..d.len())
                        .filter(|&i| d.is_char_boundary(i) && d[i..].starts_with(span))
                        .count();
                    assert!(src.occurrences >= count.max(1));
                }
                None => assert_eq!(longest, 0),
            }
        }
    }

    #[test]
    fn copied_ranges_cover_exactly_the_found_ngrams() {
        let corpus = "To be, or not to be, that is the question:\nWhether 'tis nobler";
        let idx = index(&[corpus]);
        let text = "He said: to be, that is the question: whether or not.";
        let ranges = idx.copied_ranges(text);
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut covered = vec![false; text.len()];
        for i in 0..chars.len().saturating_sub(NGRAM - 1) {
            let s = chars[i].0;
            let e = chars.get(i + NGRAM).map_or(text.len(), |c| c.0);
            if corpus.contains(&text[s..e]) {
                covered[s..e].iter_mut().for_each(|c| *c = true);
            }
        }
        let mut got = vec![false; text.len()];
        for r in &ranges {
            got[r.clone()].iter_mut().for_each(|c| *c = true);
        }
        assert_eq!(got, covered);
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        assert_eq!(&text[ranges[0].clone()], " to be, that is the question:");
        let r = idx.check(text);
        assert_eq!(r.longest, 29);
        let src = r.source.unwrap();
        assert_eq!((src.line, src.offset, src.occurrences), (1, 13, 1));
    }

    #[test]
    fn matches_never_cross_documents_and_short_texts_have_no_fraction() {
        let idx = index(&["abcdef", "ghijkl"]);
        assert_eq!(idx.check("efgh").longest, 2);
        let r = idx.check("abc");
        assert_eq!((r.ngrams, r.copied_fraction()), (0, None));
        assert_eq!(idx.check("").longest, 0);
        assert_eq!(idx.check("\0ab").longest, 2);
        let empty = index(&[]);
        assert_eq!(empty.check("anything at all").longest, 0);
        let src = idx.check("ijk").source.unwrap();
        assert_eq!((src.file, src.offset), (PathBuf::from("doc1.txt"), 2));
    }

    fn corpus_info(path: &Path, fingerprint: &str) -> CorpusInfo {
        CorpusInfo {
            path: path.to_path_buf(),
            fingerprint: fingerprint.to_string(),
            ..CorpusInfo::default()
        }
    }

    fn sha(bytes: &[u8]) -> String {
        crate::train::corpus::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes))
    }

    #[test]
    fn the_cache_is_reused_rebuilt_when_damaged_and_the_corpus_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("c.txt");
        let body = "the quick brown fox jumps over the lazy dog\r\nand runs away\n";
        std::fs::write(&corpus, body).unwrap();
        let ck = dir.path().join("m.safetensors");
        let info = corpus_info(&corpus, &sha(body.as_bytes()));
        let opts = OpenOptions::default();
        let open = || open(&ck, &info, TokenizerKind::Char, &opts);
        let first = open().unwrap();
        assert_eq!(first.cache_path, dir.path().join("m.safetensors.copies"));
        assert_eq!(
            first.cache,
            CacheStatus::Built {
                stale: None,
                saved: Ok(())
            }
        );
        let again = open().unwrap();
        assert_eq!(again.cache, CacheStatus::Reused);
        assert_eq!(again.index.sa, first.index.sa);
        // CRLF was read as LF, as in training.
        assert_eq!(again.index.check("dog\nand").longest, 7);

        // Damage: a flipped byte in the suffix array, a truncation, garbage.
        let cache = first.cache_path.clone();
        let good = std::fs::read(&cache).unwrap();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (flipped, "checksum"),
            (good[..good.len() - 3].to_vec(), "bytes"),
            (b"garbage".to_vec(), "too short"),
            (b"NOTQUILLxxxxxxxxxxxx".to_vec(), "not a quill copy index"),
        ];
        for (bytes, why) in cases {
            std::fs::write(&cache, &bytes).unwrap();
            let o = open().unwrap();
            match &o.cache {
                CacheStatus::Built {
                    stale: Some(s),
                    saved: Ok(()),
                } => assert!(s.contains(why), "{s}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(o.index.sa, first.index.sa);
            assert_eq!(std::fs::read(&cache).unwrap(), good);
        }
        // An entry pointing outside the text, with a matching checksum.
        let mut outside = good.clone();
        let at = good.len() - 4;
        outside[at..].copy_from_slice(&(body.len() as i32 + 5).to_le_bytes());
        let crc = crc32fast::hash(&outside[good.len() - 4 * first.index.sa.len()..]);
        let crc_at = good.len() - 4 * first.index.sa.len() - 4;
        outside[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&cache, &outside).unwrap();
        match open().unwrap().cache {
            CacheStatus::Built { stale: Some(s), .. } => assert!(s.contains("outside"), "{s}"),
            other => panic!("{other:?}"),
        }

        // The corpus changed: a clear error, naming both fingerprints.
        std::fs::write(&corpus, "something else entirely\n").unwrap();
        let e = open().unwrap_err().to_string();
        assert!(
            e.contains("has changed since") && e.contains("c.txt"),
            "{e}"
        );
        // --corpus points elsewhere: the original text at another path is fine.
        let moved = dir.path().join("moved.txt");
        std::fs::write(&moved, body).unwrap();
        let opts2 = OpenOptions {
            corpus: vec![moved.clone()],
            ..OpenOptions::default()
        };
        let o = super::open(&ck, &info, TokenizerKind::Char, &opts2).unwrap();
        assert_eq!(o.cache, CacheStatus::Reused);
        // A missing corpus: a message that says what to do.
        std::fs::remove_file(&corpus).unwrap();
        let e = open().unwrap_err().to_string();
        assert!(
            e.contains("cannot read the training corpus") && e.contains("--corpus"),
            "{e}"
        );
        // A cache that cannot be written is reported, the index still works.
        let ro = OpenOptions {
            corpus: vec![moved],
            cache: Some(dir.path().join("no/such/dir/x.copies")),
            ..OpenOptions::default()
        };
        let o = super::open(&ck, &info, TokenizerKind::Char, &ro).unwrap();
        assert!(matches!(o.cache, CacheStatus::Built { saved: Err(_), .. }));
        assert_eq!(o.index.check("lazy dog").longest, 8);
    }

    #[test]
    fn corpora_of_several_files_are_checked_with_their_separator() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("d/a.txt");
        let b = dir.path().join("d/b.txt");
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        std::fs::write(&a, "first file text\n").unwrap();
        std::fs::write(&b, "second file text\n").unwrap();
        // Empty files are no documents, as in training (also not in the fingerprint).
        std::fs::write(dir.path().join("d/0-empty.txt"), "").unwrap();
        std::fs::write(dir.path().join("d/c-empty.txt"), "").unwrap();
        let shas = [sha(b"first file text\n"), sha(b"second file text\n")];
        let refs: Vec<&str> = shas.iter().map(String::as_str).collect();
        let ck = dir.path().join("m.safetensors");
        for (kind, sep) in [
            (TokenizerKind::Char, Separator::BlankLine),
            (TokenizerKind::Word, Separator::EndOfText),
            (TokenizerKind::Char, Separator::Text(String::new())),
        ] {
            let fp = combined_fingerprint(&refs, &[], &sep);
            let info = CorpusInfo {
                path: dir.path().join("d"),
                paths: vec![dir.path().join("d")],
                fingerprint: fp,
                files: Some(2),
                ..CorpusInfo::default()
            };
            let o = open(&ck, &info, kind, &OpenOptions::default()).unwrap();
            assert_eq!(o.index.docs().len(), 2);
            assert_eq!(o.index.text, b"first file text\n\0second file text\n");
            assert_eq!((o.index.docs()[1].start, o.index.docs()[1].len), (17, 17));
            let r = o.index.check("file text\nsecond");
            assert_eq!(r.longest, "file text\n".len());
            assert_eq!(r.source.unwrap().file, a);
        }
        let info = CorpusInfo {
            path: dir.path().join("d"),
            fingerprint: combined_fingerprint(&refs, &[], &Separator::Text("--".into())),
            ..CorpusInfo::default()
        };
        let e = open(&ck, &info, TokenizerKind::Char, &OpenOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("same files in the same order"), "{e}");
    }
}
