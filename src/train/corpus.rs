//! Reading training text: which files make the corpus, how each is decoded, how documents are
//! joined, the corpus fingerprint and the train/validation split rule.
//!
//! * **Sources** ([`resolve`]): every path given is a file or a directory. A directory is walked
//!   recursively in sorted order (byte order of the path components), skipping hidden entries
//!   (names starting with `.`); `--glob` patterns choose among the files found there: a file
//!   is taken when it matches at least one include pattern (or there is none) and no exclude
//!   pattern (`!PATTERN`). A pattern without `/` matches the file name at any depth (`*.txt`),
//!   one with `/` the path relative to the directory (`drafts/**`); `*` never crosses `/`,
//!   `**` does. Files named explicitly are always taken. A file reached twice is read once.
//! * **Documents** ([`DocReader`]): each file is read in pieces of 8 MiB, never whole. It must
//!   be UTF-8 (`lossy` replaces invalid sequences with U+FFFD, as `String::from_utf8_lossy`
//!   does) without NUL bytes; CRLF and lone CR become LF. Empty files are left out.
//! * **Joining** ([`Separator`]): documents are joined with a separator, placed between
//!   documents (never after the last): a blank line (char tokenizers' default), the
//!   tokenizer's end-of-text token (word and BPE's default) or any text.
//! * **Fingerprint** ([`combined_fingerprint`]): one file's is the hex SHA-256 of its bytes as
//!   read; several files' is the SHA-256 of their hashes in order and the separator, so a
//!   checkpoint records what it was trained on in one string.
//!
//! [`Corpus`] is one file loaded whole (`quill eval`, tests); training streams through
//! `train::prepare` instead.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::tokenizer::{decode_utf8_lossy, TokenizerKind};

/// Bytes read from a file at a time.
pub const READ_CHUNK: usize = 8 << 20;

/// A corpus loaded into memory as text.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Where it came from.
    pub path: PathBuf,
    /// The text, with CRLF and lone CR normalised to LF.
    pub text: String,
    /// Hex SHA-256 of the file's bytes as read.
    pub fingerprint: String,
}

impl Corpus {
    /// Reads `path` whole. Invalid UTF-8 is an error naming the byte offset unless `lossy`,
    /// which replaces invalid sequences with U+FFFD. Empty files, directories and missing
    /// files get their own messages.
    pub fn load(path: &Path, lossy: bool) -> Result<Self> {
        let err = |msg: String| Error::Corpus {
            path: path.to_path_buf(),
            msg,
        };
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(err("is a directory, expected a text file".into()));
        }
        let mut reader = DocReader::open(path, lossy, true)?;
        let mut text = String::with_capacity(meta.len() as usize);
        while let Some(chunk) = reader.next_chunk()? {
            text.push_str(chunk);
        }
        if text.is_empty() {
            return Err(err("file is empty".into()));
        }
        Ok(Corpus {
            path: path.to_path_buf(),
            text,
            fingerprint: reader.finish(),
        })
    }

    /// Splits the text into training and validation parts (see [`split_text`]).
    pub fn split(&self, val_fraction: f32) -> (&str, &str) {
        split_text(&self.text, val_fraction)
    }
}

/// CRLF and lone CR become LF. Reuses the allocation when there is no CR.
pub fn normalize_newlines(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// The train/validation split: the last `val_fraction` of the text's bytes is validation, its
/// start moved forward to just after the first newline at or after that point (so no line is
/// cut), unless that newline is the text's last byte; then the split stays at the first char
/// boundary at or after the point. `train::prepare` applies the same rule to a corpus streamed
/// in pieces (an end-of-text separator counting as a newline there).
pub fn split_text(text: &str, val_fraction: f32) -> (&str, &str) {
    if val_fraction <= 0.0 {
        return (text, "");
    }
    let mut cut = split_target(text.len() as u64, val_fraction) as usize;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    if let Some(nl) = text[cut..].find('\n') {
        // Prefer a line start, unless that would leave no validation text.
        if cut + nl + 1 < text.len() {
            cut += nl + 1;
        }
    }
    text.split_at(cut)
}

/// Where the validation part of `len` bytes of text starts before moving to a line start.
pub fn split_target(len: u64, val_fraction: f32) -> u64 {
    (((len as f64) * (1.0 - val_fraction as f64)) as u64).min(len)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// separators

/// What goes between two documents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "text")]
pub enum Separator {
    /// A newline if the document's last line is not ended, then an empty line.
    BlankLine,
    /// The tokenizer's end-of-text token (word and BPE only).
    EndOfText,
    /// This text, verbatim (empty: documents run on).
    Text(String),
}

impl Separator {
    /// The default for a tokenizer kind: a blank line for char, end-of-text for word and BPE.
    pub fn default_for(kind: TokenizerKind) -> Self {
        match kind {
            TokenizerKind::Char => Separator::BlankLine,
            _ => Separator::EndOfText,
        }
    }

    /// Parses `--separator`: `blank-line`, `eos`, `none`, or text in which `\n`, `\t` and `\\`
    /// are escapes.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "blank-line" => Separator::BlankLine,
            "eos" => Separator::EndOfText,
            "none" => Separator::Text(String::new()),
            _ => {
                let mut out = String::new();
                let mut it = s.chars();
                while let Some(c) = it.next() {
                    if c != '\\' {
                        out.push(c);
                        continue;
                    }
                    match it.next() {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some('\\') => out.push('\\'),
                        other => {
                            return Err(Error::config(
                                "separator",
                                format!(
                                    "unknown escape \\{} in {s:?} (known: \\n, \\t, \\\\)",
                                    other.map_or(String::new(), String::from)
                                ),
                            ))
                        }
                    }
                }
                Separator::Text(out)
            }
        })
    }

    /// The text placed after a document whose text ended with `last` (`None` for
    /// [`Separator::EndOfText`], which is a token, not text).
    pub fn text_after(&self, ends_with_newline: bool) -> Option<&str> {
        match self {
            Separator::BlankLine if ends_with_newline => Some("\n"),
            Separator::BlankLine => Some("\n\n"),
            Separator::EndOfText => None,
            Separator::Text(t) => Some(t),
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Separator::BlankLine => "a blank line".into(),
            Separator::EndOfText => "the end-of-text token".into(),
            Separator::Text(t) if t.is_empty() => "nothing".into(),
            Separator::Text(t) => format!("{t:?}"),
        }
    }
}

/// The fingerprint of a corpus: for one training file and no validation files, the hex
/// SHA-256 of its bytes (what quill has always recorded); otherwise the hex SHA-256 of the
/// text `quill corpus v1\n`, `separator JSON\n`, then `train HASH\n` per training file and
/// `val HASH\n` per validation file, in order.
pub fn combined_fingerprint(train: &[&str], val: &[&str], separator: &Separator) -> String {
    if let ([one], []) = (train, val) {
        return one.to_string();
    }
    let mut h = Sha256::new();
    h.update(b"quill corpus v1\n");
    let sep = serde_json::to_string(separator).unwrap_or_default();
    h.update(format!("separator {sep}\n").as_bytes());
    for t in train {
        h.update(format!("train {t}\n").as_bytes());
    }
    for v in val {
        h.update(format!("val {v}\n").as_bytes());
    }
    hex(&h.finalize())
}

// ---------------------------------------------------------------------------------------------
// sources

/// A file of the corpus, found by [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The path as found: a given path, or a given directory joined with the file's path
    /// inside it.
    pub path: PathBuf,
    /// Its canonical (absolute, resolved) path: the identity of the file.
    pub canonical: PathBuf,
    /// Size in bytes when resolved.
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 if unknown).
    pub mtime_ns: u64,
}

/// Nanoseconds since the epoch of a file's modification time (0 when unavailable).
pub fn mtime_ns(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
}

/// Include and exclude patterns of `--glob`.
struct Globs {
    include: Option<GlobSet>,
    exclude: GlobSet,
    patterns: Vec<String>,
}

impl Globs {
    fn new(patterns: &[String]) -> Result<Self> {
        let mut include = GlobSetBuilder::new();
        let mut exclude = GlobSetBuilder::new();
        let mut any_include = false;
        for p in patterns {
            let (neg, pat) = match p.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, p.as_str()),
            };
            let pat = pat.trim_start_matches("./");
            if pat.is_empty() {
                return Err(Error::config("glob", format!("{p:?} is an empty pattern")));
            }
            let full = if pat.contains('/') {
                pat.trim_start_matches('/').to_string()
            } else {
                format!("**/{pat}")
            };
            let glob = GlobBuilder::new(&full)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::config("glob", format!("{p:?}: {e}")))?;
            if neg {
                exclude.add(glob);
            } else {
                include.add(glob);
                any_include = true;
            }
        }
        let build =
            |b: GlobSetBuilder| b.build().map_err(|e| Error::config("glob", format!("{e}")));
        Ok(Globs {
            include: if any_include {
                Some(build(include)?)
            } else {
                None
            },
            exclude: build(exclude)?,
            patterns: patterns.to_vec(),
        })
    }

    fn takes(&self, rel: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(rel)) && !self.exclude.is_match(rel)
    }
}

/// Path relative to a walked directory, with `/` separators.
fn rel_string(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Told of an entry left out of a walk: its path and why.
pub type OnSkip<'a> = dyn FnMut(&Path, String) + 'a;

/// The files of a corpus: `paths` in the order given, each directory walked recursively in
/// sorted order with `globs` applied (see the module docs). A missing path, an unreadable
/// directory entry (unless `on_skip` is given, which is then told instead) or a directory
/// with no matching file is an error naming it; so is an empty list of paths.
pub fn resolve(
    paths: &[PathBuf],
    globs: &[String],
    mut on_skip: Option<&mut OnSkip<'_>>,
) -> Result<Vec<Source>> {
    if paths.is_empty() {
        return Err(Error::config("corpus", "no path given"));
    }
    let globs = Globs::new(globs)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |out: &mut Vec<Source>, path: PathBuf, meta: &std::fs::Metadata| -> Result<()> {
        let canonical = std::fs::canonicalize(&path).map_err(|e| Error::io(&path, e))?;
        if seen.insert(canonical.clone()) {
            out.push(Source {
                path,
                canonical,
                bytes: meta.len(),
                mtime_ns: mtime_ns(meta),
            });
        }
        Ok(())
    };
    for root in paths {
        let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
        if meta.is_file() {
            push(&mut out, root.clone(), &meta)?;
            continue;
        }
        if !meta.is_dir() {
            return Err(Error::Corpus {
                path: root.clone(),
                msg: "is neither a regular file nor a directory".into(),
            });
        }
        let before = out.len();
        let mut hidden = 0usize;
        let mut filtered = 0usize;
        let walk = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().unwrap_or(root).to_path_buf();
                    let msg = match e.io_error() {
                        Some(io) => format!("cannot read: {io}"),
                        None => e.to_string(),
                    };
                    match on_skip.as_deref_mut() {
                        Some(f) => {
                            f(&path, msg);
                            continue;
                        }
                        None => {
                            return Err(Error::Corpus {
                                path,
                                msg: format!("{msg} (--skip-bad-files leaves it out)"),
                            })
                        }
                    }
                }
            };
            if entry.depth() > 0 && entry.file_name().to_string_lossy().starts_with('.') {
                hidden += 1;
                continue;
            }
            if !entry.file_type().is_file() {
                continue;
            }
            if !globs.takes(&rel_string(entry.path(), root)) {
                filtered += 1;
                continue;
            }
            let meta = entry.metadata().map_err(|e| Error::Corpus {
                path: entry.path().to_path_buf(),
                msg: format!("cannot read: {e}"),
            })?;
            push(&mut out, entry.path().to_path_buf(), &meta)?;
        }
        if out.len() == before {
            let why = if filtered > 0 {
                format!(
                    "no file matches --glob {} ({filtered} file(s) left out)",
                    globs.patterns.join(" --glob ")
                )
            } else if hidden > 0 {
                "no files (hidden files and directories, whose names start with '.', are skipped)"
                    .to_string()
            } else {
                "the directory is empty: no files to train on".to_string()
            };
            return Err(Error::Corpus {
                path: root.clone(),
                msg: why,
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// reading a document

/// One file read as normalised text, piece by piece: UTF-8 checked (or repaired when lossy),
/// NUL bytes refused, CRLF and lone CR turned into LF, optionally hashed (SHA-256 of the raw
/// bytes). Memory use is a few buffers of [`READ_CHUNK`] bytes whatever the file's size.
pub struct DocReader {
    file: File,
    path: PathBuf,
    lossy: bool,
    hasher: Option<Sha256>,
    /// Raw bytes `raw[..filled]` (`filled` is its length); `raw[consumed..filled]` is an
    /// incomplete UTF-8 sequence carried to the next read.
    raw: Vec<u8>,
    filled: usize,
    consumed: usize,
    /// Normalised or repaired text when it differs from the raw bytes.
    text: String,
    /// File offset of `raw[0]`.
    offset: u64,
    /// The last piece ended with a CR (already emitted as LF): a leading LF is dropped.
    pending_cr: bool,
    eof: bool,
    /// Raw bytes read so far.
    pub bytes_read: u64,
}

impl DocReader {
    /// Opens `path`; with `hash`, [`DocReader::finish`] gives the SHA-256 of its bytes.
    pub fn open(path: &Path, lossy: bool, hash: bool) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(DocReader {
            file,
            path: path.to_path_buf(),
            lossy,
            hasher: hash.then(Sha256::new),
            raw: Vec::new(),
            filled: 0,
            consumed: 0,
            text: String::new(),
            offset: 0,
            pending_cr: false,
            eof: false,
            bytes_read: 0,
        })
    }

    fn err(&self, msg: String) -> Error {
        Error::Corpus {
            path: self.path.clone(),
            msg,
        }
    }

    /// Fills `raw` after the carried bytes: up to [`READ_CHUNK`] bytes, fewer only at the end.
    /// (`read_to_end` on a `take` reads into the spare capacity without zeroing it first.)
    fn read_more(&mut self) -> Result<()> {
        let carry = self.filled - self.consumed;
        self.raw.copy_within(self.consumed..self.filled, 0);
        self.raw.truncate(carry);
        self.offset += self.consumed as u64;
        self.raw.reserve_exact(READ_CHUNK);
        let n = (&self.file)
            .take(READ_CHUNK as u64)
            .read_to_end(&mut self.raw)
            .map_err(|e| Error::io(&self.path, e))?;
        self.eof = n < READ_CHUNK;
        if let Some(h) = &mut self.hasher {
            h.update(&self.raw[carry..]);
        }
        self.bytes_read += n as u64;
        self.filled = self.raw.len();
        self.consumed = 0;
        Ok(())
    }

    /// The next piece of text (never empty), or `None` at the end of the file.
    pub fn next_chunk(&mut self) -> Result<Option<&str>> {
        loop {
            if self.eof && self.consumed >= self.filled {
                return Ok(None);
            }
            self.read_more()?;
            if self.filled == 0 {
                continue;
            }
            let raw = &self.raw[..self.filled];
            if let Some(i) = memchr::memchr(0, raw) {
                return Err(self.err(format!(
                    "contains a NUL byte at offset {}; this looks like a binary file \
                     (--glob or --skip-bad-files leaves it out)",
                    self.offset + i as u64
                )));
            }
            // Decode: `raw[..consumed]` is whole UTF-8 text (lossy: repaired into `text`).
            let repaired = self.lossy;
            if repaired {
                self.text.clear();
                self.consumed = decode_utf8_lossy(raw, &mut self.text);
                if self.eof && self.consumed < self.filled {
                    // An incomplete sequence at the very end: one replacement char, as
                    // `String::from_utf8_lossy` gives.
                    self.text.push('\u{FFFD}');
                    self.consumed = self.filled;
                }
            } else {
                match std::str::from_utf8(raw) {
                    Ok(_) => self.consumed = self.filled,
                    Err(e) if e.error_len().is_none() && !self.eof => {
                        self.consumed = e.valid_up_to()
                    }
                    Err(e) => {
                        return Err(self.err(format!(
                            "not valid UTF-8 text (invalid byte at offset {}); is it a binary \
                             file? Use --lossy to replace invalid sequences (or \
                             --skip-bad-files to leave such files out)",
                            self.offset + e.valid_up_to() as u64
                        )))
                    }
                }
            }
            // Normalise line endings.
            let has_cr = if repaired {
                self.text.contains('\r')
            } else {
                memchr::memchr(b'\r', &self.raw[..self.consumed]).is_some()
            };
            let skip_lf = std::mem::take(&mut self.pending_cr);
            if has_cr || skip_lf {
                let src = if repaired {
                    std::mem::take(&mut self.text)
                } else {
                    // Whole, validated UTF-8.
                    String::from_utf8(self.raw[..self.consumed].to_vec())
                        .map_err(|e| self.err(format!("internal UTF-8 error: {e}")))?
                };
                self.text.clear();
                let mut s = src.as_str();
                if skip_lf {
                    s = s.strip_prefix('\n').unwrap_or(s);
                }
                let b = s.as_bytes();
                let mut start = 0;
                for i in memchr::memchr_iter(b'\r', b) {
                    self.text.push_str(&s[start..i]);
                    if i + 1 < b.len() {
                        if b[i + 1] != b'\n' {
                            self.text.push('\n');
                        }
                    } else {
                        self.text.push('\n');
                        self.pending_cr = true;
                    }
                    start = i + 1;
                }
                self.text.push_str(&s[start..]);
                if self.text.is_empty() {
                    continue;
                }
                return Ok(Some(&self.text));
            }
            if repaired {
                if self.text.is_empty() {
                    continue;
                }
                return Ok(Some(&self.text));
            }
            if self.consumed == 0 {
                continue;
            }
            let s = std::str::from_utf8(&self.raw[..self.consumed])
                .map_err(|e| self.err(format!("internal UTF-8 error: {e}")))?;
            return Ok(Some(s));
        }
    }

    /// Hex SHA-256 of the bytes read (empty string when opened without hashing).
    pub fn finish(self) -> String {
        self.hasher.map_or(String::new(), |h| hex(&h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn crlf_is_normalised_and_split_is_at_line_start() {
        let f = write(b"one\r\ntwo\r\nthree\rfour\n");
        let c = Corpus::load(f.path(), false).unwrap();
        assert_eq!(c.text, "one\ntwo\nthree\nfour\n");
        let (tr, va) = c.split(0.5);
        assert_eq!(format!("{tr}{va}"), c.text);
        assert!(tr.ends_with('\n'));
        assert!(!va.is_empty());
    }

    #[test]
    fn invalid_utf8_reports_offset_or_is_replaced() {
        let f = write(b"abc\xffdef");
        let e = Corpus::load(f.path(), false).unwrap_err().to_string();
        assert!(e.contains("offset 3"), "{e}");
        let c = Corpus::load(f.path(), true).unwrap();
        assert_eq!(c.text, "abc\u{fffd}def");
    }

    #[test]
    fn empty_dir_and_missing_files_are_errors() {
        let f = write(b"");
        assert!(Corpus::load(f.path(), false)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let d = tempfile::tempdir().unwrap();
        assert!(Corpus::load(d.path(), false)
            .unwrap_err()
            .to_string()
            .contains("directory"));
        let missing = d.path().join("nope.txt");
        assert!(Corpus::load(&missing, false)
            .unwrap_err()
            .to_string()
            .contains("nope.txt"));
    }

    #[test]
    fn split_handles_non_ascii_boundaries() {
        let t = "ééééé\nüüü\n東京東京\n";
        for i in 0..=10 {
            let (a, b) = split_text(t, i as f32 / 10.0);
            assert_eq!(format!("{a}{b}"), t);
        }
    }

    /// Reads a file through [`DocReader`] with a given read size.
    fn read_all(bytes: &[u8], lossy: bool) -> Result<(String, String)> {
        let f = write(bytes);
        let mut r = DocReader::open(f.path(), lossy, true)?;
        let mut text = String::new();
        while let Some(c) = r.next_chunk()? {
            assert!(!c.is_empty());
            text.push_str(c);
        }
        Ok((text, r.finish()))
    }

    #[test]
    fn reader_matches_whole_file_decoding_across_piece_boundaries() {
        // Multi-byte chars, CRLF pairs and invalid bytes straddling the 8 MiB boundary.
        for shift in 0..5 {
            let mut bytes = vec![b'a'; READ_CHUNK - shift];
            bytes.extend_from_slice("é東\r\n\r\rx\u{1F600}\r".as_bytes());
            bytes.extend_from_slice(b"\nlast\r");
            let want = normalize_newlines(String::from_utf8(bytes.clone()).unwrap());
            let (got, sha) = read_all(&bytes, false).unwrap();
            assert!(got == want, "shift {shift}");
            assert_eq!(sha, hex(&Sha256::digest(&bytes)));
            let mut bad = bytes.clone();
            bad.insert(READ_CHUNK - 1, 0xE6); // a lead byte whose sequence never completes
            bad.push(0xF0); // and an incomplete sequence at the very end
            let want = normalize_newlines(String::from_utf8_lossy(&bad).into_owned());
            let (got, _) = read_all(&bad, true).unwrap();
            assert!(got == want, "lossy, shift {shift}");
            let e = read_all(&bad, false).unwrap_err().to_string();
            let at = std::str::from_utf8(&bad).unwrap_err().valid_up_to();
            assert!(e.contains(&format!("offset {at}")), "{e}");
        }
    }

    #[test]
    fn nul_bytes_are_refused_with_their_offset() {
        let e = read_all(b"text\0more", false).unwrap_err().to_string();
        assert!(e.contains("NUL byte at offset 4"), "{e}");
    }

    #[test]
    fn separators_parse_and_place_text() {
        assert_eq!(Separator::parse("eos").unwrap(), Separator::EndOfText);
        assert_eq!(
            Separator::parse("blank-line").unwrap(),
            Separator::BlankLine
        );
        assert_eq!(
            Separator::parse("none").unwrap(),
            Separator::Text(String::new())
        );
        assert_eq!(
            Separator::parse("\\n---\\t\\\\\\n").unwrap(),
            Separator::Text("\n---\t\\\n".into())
        );
        assert!(Separator::parse("a\\q").is_err());
        assert_eq!(Separator::BlankLine.text_after(true), Some("\n"));
        assert_eq!(Separator::BlankLine.text_after(false), Some("\n\n"));
        assert_eq!(Separator::EndOfText.text_after(false), None);
    }

    #[test]
    fn fingerprint_of_one_file_is_its_hash_and_of_several_covers_order_and_separator() {
        let sep = Separator::BlankLine;
        assert_eq!(combined_fingerprint(&["abc"], &[], &sep), "abc");
        let ab = combined_fingerprint(&["a", "b"], &[], &sep);
        assert_ne!(ab, combined_fingerprint(&["b", "a"], &[], &sep));
        assert_ne!(
            ab,
            combined_fingerprint(&["a", "b"], &[], &Separator::EndOfText)
        );
        assert_ne!(
            combined_fingerprint(&["a"], &["b"], &sep),
            combined_fingerprint(&["a", "b"], &[], &sep)
        );
    }

    fn touch(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn names(sources: &[Source], root: &Path) -> Vec<String> {
        sources.iter().map(|s| rel_string(&s.path, root)).collect()
    }

    #[test]
    fn directories_are_walked_sorted_with_globs_and_hidden_entries_skipped() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "b.txt",
            "a.txt",
            "sub/z.txt",
            "sub/a.md",
            "sub/deeper/c.txt",
            ".hidden.txt",
            ".git/config.txt",
            "drafts/x.txt",
        ] {
            touch(r, f, "x\n");
        }
        let all = resolve(&[r.to_path_buf()], &[], None).unwrap();
        assert_eq!(
            names(&all, r),
            [
                "a.txt",
                "b.txt",
                "drafts/x.txt",
                "sub/a.md",
                "sub/deeper/c.txt",
                "sub/z.txt"
            ]
        );
        let txt = resolve(
            &[r.to_path_buf()],
            &["*.txt".into(), "!drafts/**".into()],
            None,
        )
        .unwrap();
        assert_eq!(
            names(&txt, r),
            ["a.txt", "b.txt", "sub/deeper/c.txt", "sub/z.txt"]
        );
        let top = resolve(&[r.to_path_buf()], &["sub/*.txt".into()], None).unwrap();
        assert_eq!(names(&top, r), ["sub/z.txt"]);
        // Several paths keep their order; a file reached twice is read once; explicitly
        // named files ignore the globs.
        let several = resolve(
            &[r.join("sub/a.md"), r.join("sub"), r.join("a.txt")],
            &["*.txt".into()],
            None,
        )
        .unwrap();
        assert_eq!(
            names(&several, r),
            ["sub/a.md", "sub/deeper/c.txt", "sub/z.txt", "a.txt"]
        );
    }

    #[test]
    fn empty_directories_and_globs_matching_nothing_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let e = resolve(&[d.path().to_path_buf()], &[], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("directory is empty"), "{e}");
        touch(d.path(), "a.txt", "x");
        let e = resolve(&[d.path().to_path_buf()], &["*.md".into()], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no file matches --glob *.md"), "{e}");
        let e = resolve(&[d.path().join("missing")], &[], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let e = resolve(&[d.path().to_path_buf()], &["!".into()], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty pattern"), "{e}");
    }
}
