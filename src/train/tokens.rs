//! Token sequences for training, in memory or memory-mapped from a prepared token file, and
//! that file's format.
//!
//! # Token file format, version 1 (`NAME.tokens`)
//!
//! A corpus tokenized once by `quill prepare` (or by `quill train` on a big corpus), read by
//! later runs memory-mapped, so resident memory does not grow with the corpus. All integers
//! are little-endian. The file is a 128-byte header, a JSON metadata block, zero padding to
//! the data offset (a multiple of 64, so the tokens are aligned for any reader), then the
//! tokens:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic, the ASCII bytes `QUILLTOK` |
//! | 8 | 4 | format version, u32: 1 |
//! | 12 | 4 | dtype: bytes per token, u32: 1 (u8 tokens, V ≤ 256), 2 (u16, V ≤ 65,536) or 4 (u32) |
//! | 16 | 8 | V, the vocabulary size, u64: every token is `< V` |
//! | 24 | 8 | N, the number of tokens, u64 |
//! | 32 | 8 | `val_start`, u64: tokens `[0, val_start)` are the training split, `[val_start, N)` the validation split |
//! | 40 | 8 | data offset, u64: where the tokens start (a multiple of 64, ≥ 128 + metadata length) |
//! | 48 | 8 | metadata length in bytes, u64 |
//! | 56 | 4 | CRC-32 of the N × dtype token bytes, u32 |
//! | 60 | 4 | CRC-32 of the metadata bytes, u32 |
//! | 64 | 32 | SHA-256 of the tokenizer's JSON (`Tokenizer::to_json`, UTF-8) |
//! | 96 | 28 | reserved, zero |
//! | 124 | 4 | CRC-32 of header bytes 0..124, u32 |
//! | 128 | metadata length | metadata, UTF-8 JSON (see `train::prepare::TokenMeta`) |
//! | data offset | N × dtype | the tokens, u16 or u32 each |
//!
//! CRC-32 is the IEEE/zlib polynomial (Python's `zlib.crc32`). The file is exactly
//! `data offset + N × dtype` bytes long. The metadata holds the tokenizer itself (its JSON, so
//! the file is self-contained), the corpus fingerprint a checkpoint records, every source file
//! (path, size, modification time, SHA-256) and the options it was prepared with.
//!
//! A reader checks, before any training: the magic, the version, the header checksum, the
//! file length, the metadata checksum, then (reading the whole data once) the data checksum
//! and that every token is `< V`. Any failure is an [`Error::TokenFile`] naming the file and
//! the problem. Files are written with [`crate::atomic::AtomicFile`]: a crash leaves the old
//! file or none, never a part.
//!
//! In Python: `h = struct.unpack_from("<8sIIQQQQQII32s", buf)` gives the fields in order and
//! `numpy.memmap(path, dtype={1: "u1", 2: "<u2", 4: "<u4"}[dtype], mode="r",
//! offset=data_offset, shape=(N,))` the tokens.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use memmap2::Mmap;

use crate::atomic::{AtomicFile, FailPoint};
use crate::checkpoint::CorpusInfo;
use crate::error::{Error, Result};

/// First 8 bytes of every token file.
pub const MAGIC: &[u8; 8] = b"QUILLTOK";
/// The format version this quill writes and reads.
pub const VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 128;
/// The data offset is a multiple of this.
const ALIGN: u64 = 64;
/// Largest metadata block accepted (checked before allocating).
const MAX_META: u64 = 1 << 30;
/// Bytes written or verified at a time.
const IO_CHUNK: usize = 8 << 20;

/// How tokens are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// 1 byte per token (V ≤ 256: most char vocabularies).
    U8,
    /// 2 bytes per token (V ≤ 65,536).
    U16,
    /// 4 bytes per token.
    U32,
}

impl Dtype {
    /// The narrowest type for a vocabulary of `vocab` tokens.
    pub fn for_vocab(vocab: usize) -> Self {
        if vocab <= 1 << 8 {
            Dtype::U8
        } else if vocab <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "u8",
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// token sequences

enum Store {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    Mapped {
        map: Mmap,
        /// Byte offset of token 0 in the map.
        offset: usize,
        dtype: Dtype,
    },
}

/// A read-only token sequence: owned in memory or a window of a memory-mapped token file.
/// Cheap to clone and to slice (the storage is shared).
#[derive(Clone)]
pub struct Tokens {
    store: Arc<Store>,
    start: usize,
    len: usize,
    vocab: usize,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("len", &self.len)
            .field("vocab", &self.vocab)
            .field("dtype", &self.dtype())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// Most tokens [`Tokens::counts`] reads.
pub const COUNT_ALL_UP_TO: usize = 1 << 24;

/// The tokens of a [`Tokens`], borrowed in their stored width.
#[derive(Clone, Copy, Debug)]
pub enum TokenView<'a> {
    /// 1-byte tokens.
    U8(&'a [u8]),
    /// 2-byte tokens.
    U16(&'a [u16]),
    /// 4-byte tokens.
    U32(&'a [u32]),
}

impl TokenView<'_> {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        match self {
            TokenView::U8(t) => t.len(),
            TokenView::U16(t) => t.len(),
            TokenView::U32(t) => t.len(),
        }
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Tokens {
    /// Owned tokens, stored in the narrowest width for `vocab`. Every id must be `< vocab`.
    pub fn from_ids(ids: &[u32], vocab: usize) -> Self {
        let mut buf = TokenBuf::new(vocab);
        buf.push(ids);
        buf.into_tokens()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// V: every token is `< V`.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Stored width.
    pub fn dtype(&self) -> Dtype {
        match &*self.store {
            Store::U8(_) => Dtype::U8,
            Store::U16(_) => Dtype::U16,
            Store::U32(_) => Dtype::U32,
            Store::Mapped { dtype, .. } => *dtype,
        }
    }

    /// Whether the tokens are read from a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(&*self.store, Store::Mapped { .. })
    }

    /// The tokens.
    pub fn view(&self) -> TokenView<'_> {
        let r = self.start..self.start + self.len;
        match &*self.store {
            Store::U8(v) => TokenView::U8(&v[r]),
            Store::U16(v) => TokenView::U16(&v[r]),
            Store::U32(v) => TokenView::U32(&v[r]),
            Store::Mapped { map, offset, dtype } => {
                let bytes =
                    &map[*offset + r.start * dtype.width()..*offset + r.end * dtype.width()];
                // Alignment and length were checked when the file was mapped.
                match dtype {
                    Dtype::U8 => TokenView::U8(bytes),
                    Dtype::U16 => TokenView::U16(bytemuck::cast_slice(bytes)),
                    Dtype::U32 => TokenView::U32(bytemuck::cast_slice(bytes)),
                }
            }
        }
    }

    /// Tokens `range` of this sequence (sharing the storage).
    pub fn slice(&self, range: Range<usize>) -> Tokens {
        assert!(range.start <= range.end && range.end <= self.len);
        Tokens {
            store: self.store.clone(),
            start: self.start + range.start,
            len: range.end - range.start,
            vocab: self.vocab,
        }
    }

    /// The tokens as u32 ids (a copy).
    pub fn to_vec(&self) -> Vec<u32> {
        match self.view() {
            TokenView::U8(t) => t.iter().map(|&x| x as u32).collect(),
            TokenView::U16(t) => t.iter().map(|&x| x as u32).collect(),
            TokenView::U32(t) => t.to_vec(),
        }
    }

    /// How often each id `< V` occurs: over every token when there are at most
    /// [`COUNT_ALL_UP_TO`], else over 256 evenly spaced runs of that many tokens in all (a
    /// corpus of gigabytes is not read whole for a unigram estimate). Mapped pages read here
    /// are released again.
    pub fn counts(&self) -> Vec<u64> {
        fn add<T: Copy + Into<u32>>(t: &[T], c: &mut [u64]) {
            for &x in t {
                if let Some(n) = c.get_mut(x.into() as usize) {
                    *n += 1;
                }
            }
        }
        let mut c = vec![0u64; self.vocab];
        let (k, w) = match self.len <= COUNT_ALL_UP_TO {
            true => (1, self.len),
            false => (256, COUNT_ALL_UP_TO / 256),
        };
        for i in 0..k {
            let a = (i * (self.len - w)).checked_div(k - 1).unwrap_or(0);
            let r = a..a + w;
            match self.view() {
                TokenView::U8(t) => add(&t[r.clone()], &mut c),
                TokenView::U16(t) => add(&t[r.clone()], &mut c),
                TokenView::U32(t) => add(&t[r.clone()], &mut c),
            }
            self.release(r);
        }
        c
    }

    /// Tells the OS that tokens `range` will not be read again soon: their pages leave this
    /// process's resident set (they stay in the page cache, and are read back from the file
    /// if touched again). Only whole pages inside the range are released. A no-op for tokens
    /// in memory; failures are ignored (it is advice).
    pub fn release(&self, range: Range<usize>) {
        #[cfg(unix)]
        if let Store::Mapped { map, offset, dtype } = &*self.store {
            let page = page_size();
            let w = dtype.width();
            let a = offset + (self.start + range.start.min(self.len)) * w;
            let b = offset + (self.start + range.end.min(self.len)) * w;
            let a = a.div_ceil(page) * page;
            let b = b / page * page;
            if b > a {
                // SAFETY: the map is a read-only shared mapping of a file that quill never
                // writes in place (token files are replaced by rename). MADV_DONTNEED on it
                // only drops page-table entries: a later read faults the same bytes back in
                // from the file, so no slice handed out by `view` observes a change.
                unsafe {
                    let _ =
                        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a);
                }
            }
        }
        #[cfg(not(unix))]
        let _ = range;
    }
}

#[cfg(unix)]
fn page_size() -> usize {
    // The mapping's own granularity; 4 KiB on the platforms quill runs on. A larger real page
    // size only makes `release` round inward less than it could.
    4096
}

/// Tokens being collected in memory, in the narrowest width for V.
pub(crate) enum TokenBuf {
    U8(Vec<u8>, usize),
    U16(Vec<u16>, usize),
    U32(Vec<u32>, usize),
}

impl TokenBuf {
    pub(crate) fn new(vocab: usize) -> Self {
        match Dtype::for_vocab(vocab) {
            Dtype::U8 => TokenBuf::U8(Vec::new(), vocab),
            Dtype::U16 => TokenBuf::U16(Vec::new(), vocab),
            Dtype::U32 => TokenBuf::U32(Vec::new(), vocab),
        }
    }

    pub(crate) fn push(&mut self, ids: &[u32]) {
        match self {
            TokenBuf::U8(v, _) => v.extend(ids.iter().map(|&x| x as u8)),
            TokenBuf::U16(v, _) => v.extend(ids.iter().map(|&x| x as u16)),
            TokenBuf::U32(v, _) => v.extend_from_slice(ids),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            TokenBuf::U8(v, _) => v.len(),
            TokenBuf::U16(v, _) => v.len(),
            TokenBuf::U32(v, _) => v.len(),
        }
    }

    pub(crate) fn into_tokens(self) -> Tokens {
        let (store, len, vocab) = match self {
            TokenBuf::U8(v, vocab) => {
                let n = v.len();
                (Store::U8(v), n, vocab)
            }
            TokenBuf::U16(v, vocab) => {
                let n = v.len();
                (Store::U16(v), n, vocab)
            }
            TokenBuf::U32(v, vocab) => {
                let n = v.len();
                (Store::U32(v), n, vocab)
            }
        };
        Tokens {
            store: Arc::new(store),
            start: 0,
            len,
            vocab,
        }
    }
}

/// The training and validation token sequences of a corpus and what they came from.
#[derive(Clone, Debug)]
pub struct TrainData {
    /// The training split.
    pub train: Tokens,
    /// The validation split (may be empty).
    pub val: Tokens,
    /// What checkpoints record about the corpus (the token counts are filled in here).
    pub corpus: CorpusInfo,
    /// SHA-256 of the JSON of the tokenizer that made the tokens.
    pub tokenizer_sha256: [u8; 32],
}

// ---------------------------------------------------------------------------------------------
// the header

/// The fixed header of a token file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Token width.
    pub dtype: Dtype,
    /// V.
    pub vocab: u64,
    /// N.
    pub n_tokens: u64,
    /// First validation token.
    pub val_start: u64,
    /// Where the tokens start.
    pub data_offset: u64,
    /// Metadata bytes at offset 128.
    pub meta_len: u64,
    /// CRC-32 of the token bytes.
    pub data_crc: u32,
    /// CRC-32 of the metadata.
    pub meta_crc: u32,
    /// SHA-256 of the tokenizer's JSON.
    pub tokenizer_sha256: [u8; 32],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.dtype.width() as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.vocab.to_le_bytes());
        b[24..32].copy_from_slice(&self.n_tokens.to_le_bytes());
        b[32..40].copy_from_slice(&self.val_start.to_le_bytes());
        b[40..48].copy_from_slice(&self.data_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.meta_len.to_le_bytes());
        b[56..60].copy_from_slice(&self.data_crc.to_le_bytes());
        b[60..64].copy_from_slice(&self.meta_crc.to_le_bytes());
        b[64..96].copy_from_slice(&self.tokenizer_sha256);
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header against the file's length.
    fn decode(b: &[u8; HEADER_LEN], file_len: u64, path: &Path) -> Result<Self> {
        let err = |msg: String| Error::TokenFile {
            path: path.to_path_buf(),
            msg,
        };
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if &b[0..8] != MAGIC {
            return Err(err("not a quill token file (no QUILLTOK magic)".into()));
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(err(format!(
                "format version {version}; this quill reads version {VERSION}"
            )));
        }
        if crc32fast::hash(&b[..124]) != u32_at(124) {
            return Err(err("header checksum mismatch: the file is damaged".into()));
        }
        let dtype = match u32_at(12) {
            1 => Dtype::U8,
            2 => Dtype::U16,
            4 => Dtype::U32,
            w => return Err(err(format!("unknown token width {w} bytes"))),
        };
        let h = Header {
            dtype,
            vocab: u64_at(16),
            n_tokens: u64_at(24),
            val_start: u64_at(32),
            data_offset: u64_at(40),
            meta_len: u64_at(48),
            data_crc: u32_at(56),
            meta_crc: u32_at(60),
            tokenizer_sha256: b[64..96].try_into().expect("32 bytes"),
        };
        let max_vocab: u64 = match dtype {
            Dtype::U8 => 1 << 8,
            Dtype::U16 => 1 << 16,
            Dtype::U32 => 1 << 32,
        };
        if h.vocab == 0 || h.vocab > max_vocab {
            return Err(err(format!(
                "vocabulary size {} does not fit {dtype} tokens",
                h.vocab
            )));
        }
        if h.val_start > h.n_tokens {
            return Err(err(format!(
                "validation start {} is past the {} tokens",
                h.val_start, h.n_tokens
            )));
        }
        if h.meta_len > MAX_META
            || !h.data_offset.is_multiple_of(ALIGN)
            || h.data_offset < HEADER_LEN as u64 + h.meta_len
        {
            return Err(err(format!(
                "bad layout: metadata of {} bytes, data at offset {}",
                h.meta_len, h.data_offset
            )));
        }
        let expected = h
            .n_tokens
            .checked_mul(dtype.width() as u64)
            .and_then(|d| d.checked_add(h.data_offset));
        if expected != Some(file_len) {
            return Err(err(format!(
                "is {file_len} bytes but its header describes {} ({} {dtype} tokens at offset \
                 {}): the file is truncated or damaged",
                expected.map_or("more than 2^64".into(), |e| e.to_string()),
                h.n_tokens,
                h.data_offset
            )));
        }
        Ok(h)
    }
}

// ---------------------------------------------------------------------------------------------
// writing

/// Writes a token file: header and metadata first (the header patched at the end, when the
/// counts and checksum are known), then tokens as they come; atomically committed by
/// [`TokenFileWriter::finish`]. Dropping it unfinished leaves no file.
///
/// Checksumming and writing run on a thread of their own, fed full buffers (at most three of
/// [`IO_CHUNK`] bytes exist), so encoding goes on while the kernel copies the last buffer.
pub struct TokenFileWriter {
    path: PathBuf,
    header: Header,
    buf: WriteBuf,
    /// Full buffers to the writer thread.
    to_writer: Option<SyncSender<WriteBuf>>,
    /// Emptied buffers back.
    spare: Receiver<WriteBuf>,
    buffers: usize,
    writer: Option<JoinHandle<std::io::Result<(AtomicFile, crc32fast::Hasher)>>>,
}

/// Buffers in use at most: one filling, one queued, one being written.
const WRITE_BUFFERS: usize = 3;

/// Tokens waiting to be written, already little-endian, in the file's width.
enum WriteBuf {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl WriteBuf {
    fn new(dtype: Dtype) -> Self {
        match dtype {
            Dtype::U8 => WriteBuf::U8(Vec::with_capacity(IO_CHUNK + 4096)),
            Dtype::U16 => WriteBuf::U16(Vec::with_capacity(IO_CHUNK / 2 + 4096)),
            Dtype::U32 => WriteBuf::U32(Vec::with_capacity(IO_CHUNK / 4 + 4096)),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            WriteBuf::U8(b) => b,
            WriteBuf::U16(b) => bytemuck::cast_slice(b),
            WriteBuf::U32(b) => bytemuck::cast_slice(b),
        }
    }

    fn clear(&mut self) {
        match self {
            WriteBuf::U8(b) => b.clear(),
            WriteBuf::U16(b) => b.clear(),
            WriteBuf::U32(b) => b.clear(),
        }
    }
}

impl TokenFileWriter {
    /// Starts `path` for tokens `< vocab` made by the tokenizer with JSON hash
    /// `tokenizer_sha256`, with `meta` (JSON) as the metadata block.
    pub fn create(
        path: &Path,
        vocab: usize,
        tokenizer_sha256: [u8; 32],
        meta: &[u8],
    ) -> Result<Self> {
        Self::create_with(path, vocab, tokenizer_sha256, meta, FailPoint::Never)
    }

    /// [`TokenFileWriter::create`] whose token writes fail at `fail` (tests).
    fn create_with(
        path: &Path,
        vocab: usize,
        tokenizer_sha256: [u8; 32],
        meta: &[u8],
        fail: FailPoint,
    ) -> Result<Self> {
        let io = |e: std::io::Error| Error::io(path, e);
        let mut file = AtomicFile::create(path).map_err(io)?;
        let data_offset = (HEADER_LEN as u64 + meta.len() as u64).div_ceil(ALIGN) * ALIGN;
        let dtype = Dtype::for_vocab(vocab);
        let header = Header {
            dtype,
            vocab: vocab as u64,
            n_tokens: 0,
            val_start: 0,
            data_offset,
            meta_len: meta.len() as u64,
            data_crc: 0,
            meta_crc: crc32fast::hash(meta),
            tokenizer_sha256,
        };
        // A placeholder header: a file cut short here is refused (its length does not match).
        file.write_all(&[0u8; HEADER_LEN]).map_err(io)?;
        file.write_all(meta).map_err(io)?;
        let pad = data_offset as usize - HEADER_LEN - meta.len();
        file.write_all(&vec![0u8; pad]).map_err(io)?;
        let mut file = file.fail_at(fail);
        let (to_writer, from_encoder) = sync_channel::<WriteBuf>(1);
        let (to_encoder, spare) = sync_channel::<WriteBuf>(WRITE_BUFFERS);
        let writer = std::thread::Builder::new()
            .name("token-writer".into())
            .spawn(move || {
                let mut crc = crc32fast::Hasher::new();
                for mut buf in from_encoder {
                    crc.update(buf.bytes());
                    file.write_all(buf.bytes())?;
                    buf.clear();
                    let _ = to_encoder.send(buf);
                }
                Ok((file, crc))
            })
            .map_err(io)?;
        Ok(TokenFileWriter {
            path: path.to_path_buf(),
            header,
            buf: WriteBuf::new(dtype),
            to_writer: Some(to_writer),
            spare,
            buffers: 1,
            writer: Some(writer),
        })
    }

    /// Appends tokens (each `< V`).
    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        for part in ids.chunks(IO_CHUNK / 4) {
            match &mut self.buf {
                WriteBuf::U8(b) => b.extend(part.iter().map(|&id| id as u8)),
                WriteBuf::U16(b) => b.extend(part.iter().map(|&id| (id as u16).to_le())),
                WriteBuf::U32(b) => b.extend(part.iter().map(|&id| id.to_le())),
            }
            if self.buf.bytes().len() >= IO_CHUNK {
                self.flush_buf()?;
            }
        }
        self.header.n_tokens += ids.len() as u64;
        Ok(())
    }

    /// Hands the filled buffer to the writer thread and takes an empty one.
    fn flush_buf(&mut self) -> Result<()> {
        if self.buf.bytes().is_empty() {
            return Ok(());
        }
        let next = match self.spare.try_recv() {
            Ok(b) => b,
            Err(_) if self.buffers < WRITE_BUFFERS => {
                self.buffers += 1;
                WriteBuf::new(self.header.dtype)
            }
            Err(_) => match self.spare.recv() {
                Ok(b) => b,
                // The writer stopped: its error says why.
                Err(_) => return Err(self.writer_error()),
            },
        };
        let full = std::mem::replace(&mut self.buf, next);
        let sent = self.to_writer.as_ref().map(|tx| tx.send(full));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.writer_error()),
        }
    }

    /// Joins the writer thread after it stopped early and returns why it did.
    fn writer_error(&mut self) -> Error {
        self.to_writer = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => Error::io(&self.path, e),
            Some(Err(_)) => Error::io(
                &self.path,
                std::io::Error::other("the writer thread panicked"),
            ),
            _ => Error::io(
                &self.path,
                std::io::Error::other("the writer thread stopped"),
            ),
        }
    }

    /// Tokens written so far.
    pub fn len(&self) -> u64 {
        self.header.n_tokens
    }

    /// Whether no token was written yet.
    pub fn is_empty(&self) -> bool {
        self.header.n_tokens == 0
    }

    /// Writes the final header (`val_start` = first validation token) and commits the file:
    /// fsync, rename over `path`, fsync of the directory.
    pub fn finish(mut self, val_start: u64) -> Result<Header> {
        self.flush_buf()?;
        self.to_writer = None;
        let (mut file, crc) = match self.writer.take().map(|w| w.join()) {
            Some(Ok(Ok(done))) => done,
            Some(Ok(Err(e))) => return Err(Error::io(&self.path, e)),
            _ => {
                return Err(Error::io(
                    &self.path,
                    std::io::Error::other("the writer thread panicked"),
                ))
            }
        };
        self.header.val_start = val_start.min(self.header.n_tokens);
        self.header.data_crc = crc.finalize();
        let io = |e: std::io::Error| Error::io(&self.path, e);
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&self.header.encode()).map_err(io)?;
        file.commit().map_err(io)?;
        Ok(self.header.clone())
    }
}

impl Drop for TokenFileWriter {
    /// Unfinished: the writer thread ends and its temporary file is removed before this
    /// returns.
    fn drop(&mut self) {
        self.to_writer = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// reading

/// The header and metadata of a token file, read and checked (not yet its data).
#[derive(Clone, Debug)]
pub struct TokenFileHead {
    /// Where it is.
    pub path: PathBuf,
    /// The fixed header.
    pub header: Header,
    /// The metadata block (UTF-8 JSON).
    pub meta: String,
}

/// Reads and checks a token file's header and metadata: magic, version, header checksum,
/// length, metadata checksum. Cheap (reads 128 bytes and the metadata).
pub fn read_head(path: &Path) -> Result<TokenFileHead> {
    let err = |msg: String| Error::TokenFile {
        path: path.to_path_buf(),
        msg,
    };
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < HEADER_LEN as u64 {
        return Err(err(format!(
            "is {len} bytes, shorter than the {HEADER_LEN}-byte header: truncated or not a token file"
        )));
    }
    let mut b = [0u8; HEADER_LEN];
    f.read_exact(&mut b).map_err(|e| Error::io(path, e))?;
    let header = Header::decode(&b, len, path)?;
    let mut meta = vec![0u8; header.meta_len as usize];
    f.read_exact(&mut meta).map_err(|e| Error::io(path, e))?;
    if crc32fast::hash(&meta) != header.meta_crc {
        return Err(err("metadata checksum mismatch: the file is damaged".into()));
    }
    let meta = String::from_utf8(meta).map_err(|_| err("metadata is not UTF-8".into()))?;
    Ok(TokenFileHead {
        path: path.to_path_buf(),
        header,
        meta,
    })
}

impl TokenFileHead {
    /// Reads all tokens once (plain reads, so nothing stays resident): checks the data
    /// checksum and that every token is `< V`. `progress(done, total)` is called per piece
    /// with bytes; an error from it stops the check.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64) -> Result<()>) -> Result<()> {
        let path = &self.path;
        let h = &self.header;
        let err = |msg: String| Error::TokenFile {
            path: path.to_path_buf(),
            msg,
        };
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        f.seek(SeekFrom::Start(h.data_offset))
            .map_err(|e| Error::io(path, e))?;
        let total = h.n_tokens * h.dtype.width() as u64;
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; IO_CHUNK];
        let mut done = 0u64;
        let w = h.dtype.width();
        while done < total {
            let n = (total - done).min(IO_CHUNK as u64) as usize;
            f.read_exact(&mut buf[..n])
                .map_err(|e| err(format!("cannot read the tokens: {e}")))?;
            crc.update(&buf[..n]);
            let max = match h.dtype {
                Dtype::U8 => buf[..n].iter().map(|&b| b as u64).max(),
                Dtype::U16 => buf[..n]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u64)
                    .max(),
                Dtype::U32 => buf[..n]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64)
                    .max(),
            };
            if let Some(m) = max.filter(|&m| m >= h.vocab) {
                let at = buf[..n]
                    .chunks_exact(w)
                    .position(|c| {
                        let mut v = [0u8; 8];
                        v[..w].copy_from_slice(c);
                        u64::from_le_bytes(v) == m
                    })
                    .unwrap_or(0) as u64;
                return Err(err(format!(
                    "token {} holds id {m}, outside the vocabulary of {}: the file is damaged",
                    done / w as u64 + at,
                    h.vocab
                )));
            }
            done += n as u64;
            progress(done, total)?;
        }
        if crc.finalize() != h.data_crc {
            return Err(err("data checksum mismatch: the tokens are damaged".into()));
        }
        Ok(())
    }

    /// Maps the tokens read-only (call [`TokenFileHead::verify`] first).
    pub fn map(&self) -> Result<Tokens> {
        let path = &self.path;
        let err = |msg: String| Error::TokenFile {
            path: path.to_path_buf(),
            msg,
        };
        if cfg!(target_endian = "big") {
            return Err(err(
                "token files are little-endian; this machine is big-endian".into(),
            ));
        }
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: quill never modifies a token file in place (it writes a new file and renames
        // it over the old one, which leaves this mapping on the old file). Another program
        // truncating the file while it is mapped would fault, as for any mapped file.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let h = &self.header;
        let offset = h.data_offset as usize;
        let n = h.n_tokens as usize;
        let end = offset + n * h.dtype.width();
        if map.len() != end {
            return Err(err(format!(
                "changed size while being opened ({} bytes, expected {end})",
                map.len()
            )));
        }
        let bytes = &map[offset..end];
        let aligned = match h.dtype {
            Dtype::U8 => true,
            Dtype::U16 => bytemuck::try_cast_slice::<u8, u16>(bytes).is_ok(),
            Dtype::U32 => bytemuck::try_cast_slice::<u8, u32>(bytes).is_ok(),
        };
        if !aligned {
            return Err(err("the tokens are not aligned in memory".into()));
        }
        Ok(Tokens {
            store: Arc::new(Store::Mapped {
                map,
                offset,
                dtype: h.dtype,
            }),
            start: 0,
            len: n,
            vocab: h.vocab as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_every_token_of_a_small_split_and_evenly_spaced_runs_of_a_large_one() {
        let t = Tokens::from_ids(&[3, 1, 3, 0, 3], 5);
        assert_eq!(t.counts(), [1, 1, 0, 3, 0]);
        assert_eq!(Tokens::from_ids(&[], 2).counts(), [0, 0]);
        let n = COUNT_ALL_UP_TO + 12_345;
        let ids: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let c = Tokens::from_ids(&ids, 4).counts();
        assert_eq!(c.iter().sum::<u64>(), COUNT_ALL_UP_TO as u64);
        assert!(c[..3]
            .iter()
            .all(|&k| k.abs_diff(COUNT_ALL_UP_TO as u64 / 3) <= 256));
        assert_eq!(c[3], 0);
    }

    fn write_file(dir: &Path, ids: &[u32], vocab: usize, val_start: u64) -> PathBuf {
        let p = dir.join("t.tokens");
        let mut w = TokenFileWriter::create(&p, vocab, [7; 32], br#"{"x":1}"#).unwrap();
        w.push(&ids[..ids.len() / 2]).unwrap();
        w.push(&ids[ids.len() / 2..]).unwrap();
        w.finish(val_start).unwrap();
        p
    }

    #[test]
    fn round_trip_in_both_widths() {
        let d = tempfile::tempdir().unwrap();
        for vocab in [65, 256, 257, 1 << 16, (1 << 16) + 1] {
            let ids: Vec<u32> = (0..1000).map(|i| (i * 7919) % vocab as u32).collect();
            let p = write_file(d.path(), &ids, vocab, 900);
            let head = read_head(&p).unwrap();
            assert_eq!(head.meta, r#"{"x":1}"#);
            assert_eq!(head.header.n_tokens, 1000);
            assert_eq!(head.header.val_start, 900);
            assert_eq!(head.header.tokenizer_sha256, [7; 32]);
            assert_eq!(head.header.dtype, Dtype::for_vocab(vocab));
            assert_eq!(head.header.data_offset % 64, 0);
            head.verify(&mut |_, _| Ok(())).unwrap();
            let t = head.map().unwrap();
            assert!(t.is_mapped());
            assert_eq!(t.to_vec(), ids);
            assert_eq!(t.slice(900..1000).to_vec(), &ids[900..]);
            t.release(0..1000);
            assert_eq!(
                t.slice(10..20).to_vec(),
                &ids[10..20],
                "readable after release"
            );
            let len = std::fs::metadata(&p).unwrap().len();
            assert_eq!(
                len,
                head.header.data_offset + 1000 * head.header.dtype.width() as u64
            );
        }
    }

    /// Resident file-backed memory of this process (`RssFile` of /proc/self/status), bytes.
    #[cfg(target_os = "linux")]
    fn rss_file() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_tokens_leave_the_resident_set() {
        let d = tempfile::tempdir().unwrap();
        let n = 48 << 20; // 48 MiB of u8 tokens
        let ids: Vec<u32> = (0..n as u32).map(|i| i % 200).collect();
        let p = write_file(d.path(), &ids, 200, n as u64);
        let t = read_head(&p).unwrap().map().unwrap();
        let before = rss_file();
        let TokenView::U8(v) = t.view() else {
            panic!("u8 tokens")
        };
        let sum: u64 = v.iter().step_by(1024).map(|&x| x as u64).sum();
        assert!(sum > 0);
        let touched = rss_file();
        assert!(touched >= before + (32 << 20), "{before} -> {touched}");
        t.release(0..n);
        let released = rss_file();
        assert!(released + (32 << 20) <= touched, "{touched} -> {released}");
        // Still readable: the pages come back from the file.
        assert_eq!(t.slice(n - 3..n).to_vec(), &ids[n - 3..]);
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let ids: Vec<u32> = (0..5000).map(|i| i % 60).collect();
        let p = write_file(d.path(), &ids, 65, 4500);
        let good = std::fs::read(&p).unwrap();
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&p, bytes).unwrap();
            let e = read_head(&p)
                .and_then(|h| h.verify(&mut |_, _| Ok(())))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("t.tokens"), "{want}: {e}");
        };
        check(&good[..good.len() - 1], "truncated");
        check(&good[..100], "truncated");
        let mut bad = good.clone();
        bad[0] = b'X';
        check(&bad, "not a quill token file");
        let mut bad = good.clone();
        bad[8] = 9;
        check(&bad, "version 9");
        let mut bad = good.clone();
        bad[20] ^= 1;
        check(&bad, "header checksum");
        let mut bad = good.clone();
        bad[130] ^= 1;
        check(&bad, "metadata checksum");
        let off = read_head(&write_file(d.path(), &ids, 65, 4500))
            .unwrap()
            .header
            .data_offset as usize;
        let mut bad = good.clone();
        bad[off + 2000] ^= 0x01;
        check(&bad, "data checksum");
        let mut bad = good.clone();
        bad[off + 1000] = 0xFF; // token 1000 becomes >= V
        check(&bad, "token 1000 holds id");
        std::fs::write(&p, &good).unwrap();
        read_head(&p).unwrap().verify(&mut |_, _| Ok(())).unwrap();
    }

    #[test]
    fn a_failed_write_is_an_error_and_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tokens");
        let mut w = TokenFileWriter::create_with(&p, 10, [0; 32], b"{}", FailPoint::Write).unwrap();
        let ids = vec![1u32; IO_CHUNK];
        // The writer thread fails on the first buffer; a later push or the finish says so.
        let e = w
            .push(&ids)
            .and_then(|()| w.push(&ids))
            .and_then(|()| w.push(&ids))
            .err()
            .or_else(|| w.finish(0).err())
            .expect("an error")
            .to_string();
        assert!(e.contains("simulated") && e.contains("x.tokens"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_unfinished_writer_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tokens");
        let mut w = TokenFileWriter::create(&p, 10, [0; 32], b"{}").unwrap();
        w.push(&[1, 2, 3]).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
