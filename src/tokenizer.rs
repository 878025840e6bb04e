//! Tokenizers: turn corpus text into token ids and back.
//!
//! One type, [`Tokenizer`], covers three kinds ([`TokenizerKind`]):
//!
//! * **char**: one token per Unicode scalar value (`char`, not byte). The vocabulary is the
//!   sorted set of distinct chars of the training text, so ids are deterministic. Round trips are
//!   exact for any text made of known chars. Text with chars outside the vocabulary is rejected
//!   with [`Error::UnknownChars`] (or, for prime text, optionally skipped, see
//!   [`UnknownPolicy`]). Char tokenizers have no special tokens and no end-of-text id.
//! * **word**: words and punctuation, trained with the HuggingFace `tokenizers` word-level
//!   trainer. Special tokens: `<unk>` (id 0), `<eos>` (id 1), `<eol>` (id 2); the rest of the
//!   vocabulary is the most frequent words (ties broken alphabetically), capped at
//!   `vocab_size` entries in total including the specials. Words outside the vocabulary encode
//!   as `<unk>`, and so does a literal `<unk>` in the text (a corpus already tokenized with
//!   `<unk>` markers, Penn Treebank style, keeps them as one token).
//! * **bpe**: byte-level BPE (GPT-2 style byte alphabet, no prefix space), trained with the
//!   `tokenizers` BPE trainer. All 256 bytes are always in the vocabulary, so any UTF-8 text
//!   encodes and `decode(encode(s)) == s` exactly (newlines, runs of spaces, non-ASCII).
//!   Special token: `<eos>` (id 0).
//!
//! Text is split at newlines before word/BPE encoding (the newline stays with its line for BPE),
//! both for training and for encoding, so encoding is the same whether a corpus is encoded whole
//! or line by line. Special tokens are never produced by encoding: literal text such as `<eos>`
//! in a corpus is encoded as ordinary text, and `<eos>` only exists for the caller to append
//! (between documents) and for generation to stop on ([`Tokenizer::eos_id`]). The one
//! exception is a word tokenizer's `<unk>`, which a literal `<unk>` in the text encodes to.
//!
//! Word and BPE training and encoding use the `tokenizers` trainers and models, but do the
//! (regex) pre-tokenization here rather than through `tokenizers`' per-byte alignment
//! bookkeeping, which makes them several times faster on a large corpus; tests check that the
//! vocabularies and ids are identical to the `tokenizers` pipeline. Texts over 1 MB are encoded
//! on all cores, in runs of whole lines.
//!
//! # Word pre-tokenization and joining rules
//!
//! A line is split into tokens, whitespace being dropped:
//! * numbers with inner separators: `\d+([.,:]\d+)+` (`3.14`, `1,000`, `10:30`);
//! * words: `\w+([-'’]\w+)*` (so `don't`, `well-known` and `o'clock` are one word);
//! * any other single non-space char is a punctuation token of its own (`...` is three `.`).
//!
//! The end of every line is the `<eol>` token. Decoding joins tokens with these rules:
//! 1. `<eol>` becomes `"\n"`; nothing is inserted at the start of a line.
//! 2. Otherwise tokens are separated by one space, except:
//!    * no space before a token starting with one of `, . ; : ! ? ' ’ ” ) ] } … %`;
//!    * no space after a token ending with one of `( [ { “ ‘`;
//!    * a straight double quote `"` alternates (per line) between opening (space before, none
//!      after) and closing (no space before).
//! 3. `<eos>` decodes to nothing; `<unk>` decodes to the text `<unk>`.
//!
//! So text that is already in this normal form (single spaces, punctuation attached, no
//! indentation or trailing spaces) round-trips exactly; other spacing is normalised.
//!
//! # Serialisation
//!
//! [`Tokenizer::to_json`] gives one self-contained JSON document that names its kind:
//! `{"kind":"char","chars":["\n"," ","a",...]}` or `{"kind":"word"|"bpe","hf":{...}}` where
//! `hf` is the `tokenizers` library's own JSON for the trained tokenizer.
//! [`Tokenizer::from_json`] checks what it loads (contiguous ids, no duplicates, the special
//! tokens and settings quill relies on) and reports damage as [`Error::Tokenizer`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::utils::SysRegex;
use tokenizers::{AddedToken, Model, SplitDelimiterBehavior, TokenizerImpl, Trainer};

use crate::error::{Error, Result};

/// Default vocabulary cap for word tokenizers.
pub const DEFAULT_WORD_VOCAB_SIZE: usize = 10_000;
/// Default vocabulary cap for BPE tokenizers.
pub const DEFAULT_BPE_VOCAB_SIZE: usize = 2_000;

/// Unknown-word token of word tokenizers.
pub const UNK_TOKEN: &str = "<unk>";
/// End-of-text token of word and BPE tokenizers.
pub const EOS_TOKEN: &str = "<eos>";
/// End-of-line token of word tokenizers.
pub const EOL_TOKEN: &str = "<eol>";

/// Regex of the word pre-tokenizer (matches the tokens; everything else, i.e. whitespace, is
/// dropped). See the module documentation. A literal `<unk>` (corpora such as the Penn
/// Treebank mark rare words with it) is one piece, which encodes as the `<unk>` token.
const WORD_PATTERN: &str = r"<unk>|\d+(?:[.,:]\d+)+|\w+(?:[-'’]\w+)*|[^\w\s]";

/// The pattern of word tokenizers made before `<unk>` was one piece (quill 0.1 until
/// 2026-11-27): their checkpoints still load and encode as they were trained.
const WORD_PATTERN_V1: &str = r"\d+(?:[.,:]\d+)+|\w+(?:[-'’]\w+)*|[^\w\s]";

/// Chars that take no space before them when a word tokenizer decodes.
const NO_SPACE_BEFORE: &[char] = &[
    ',', '.', ';', ':', '!', '?', '\'', '’', '”', ')', ']', '}', '…', '%',
];
/// Chars that take no space after them when a word tokenizer decodes.
const NO_SPACE_AFTER: &[char] = &['(', '[', '{', '“', '‘'];

/// Number of bytes: the base alphabet of byte-level BPE.
const N_BYTES: usize = 256;

/// Which kind of tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// One token per Unicode char.
    Char,
    /// Words and punctuation, with `<unk>`, `<eol>` and `<eos>`.
    Word,
    /// Byte-level byte-pair encoding, with `<eos>`.
    Bpe,
}

impl TokenizerKind {
    /// The lowercase name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Char => "char",
            TokenizerKind::Word => "word",
            TokenizerKind::Bpe => "bpe",
        }
    }
}

impl fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to do with prime text the vocabulary cannot represent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownPolicy {
    /// Char tokenizers refuse text with unknown chars ([`Error::UnknownChars`]).
    #[default]
    Error,
    /// Char tokenizers drop unknown chars (and report them).
    Skip,
}

/// Training options.
#[derive(Clone, Debug)]
pub struct TokenizerOptions {
    /// Cap on the vocabulary size V for word and BPE tokenizers, special tokens included
    /// (word needs at least 4, BPE at least 257: 256 bytes and `<eos>`). Ignored for char.
    pub vocab_size: usize,
    /// Word: minimum count for a word to enter the vocabulary. BPE: minimum count for a pair to
    /// be merged. Ignored for char.
    pub min_frequency: u64,
}

impl TokenizerOptions {
    /// Defaults for a kind: V cap 10000 (word) or 2000 (BPE); minimum frequency 1 (word) or 2
    /// (BPE, so that no merge is learnt from a single occurrence).
    pub fn for_kind(kind: TokenizerKind) -> Self {
        match kind {
            TokenizerKind::Char | TokenizerKind::Word => TokenizerOptions {
                vocab_size: DEFAULT_WORD_VOCAB_SIZE,
                min_frequency: 1,
            },
            TokenizerKind::Bpe => TokenizerOptions {
                vocab_size: DEFAULT_BPE_VOCAB_SIZE,
                min_frequency: 2,
            },
        }
    }
}

type WordHf =
    TokenizerImpl<WordLevel, NormalizerWrapper, Split, PostProcessorWrapper, DecoderWrapper>;
type BpeHf = TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, PostProcessorWrapper, ByteLevel>;

/// A trained tokenizer of any kind. Cheap to clone.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
    /// Canonical JSON, produced once when the tokenizer is built.
    json: Arc<str>,
}

enum Inner {
    Char(CharModel),
    Word(Box<WordModel>),
    Bpe(Box<BpeModel>),
}

/// Char vocabulary with a dense lookup table for the Basic Multilingual Plane.
struct CharModel {
    chars: Arc<[char]>,
    /// id of each BMP code point, `u32::MAX` when absent (65536 entries).
    bmp: Vec<u32>,
    /// ids of chars beyond the BMP.
    astral: HashMap<char, u32>,
}

struct WordModel {
    hf: WordHf,
    /// Token text by id.
    pieces: Arc<[String]>,
    unk: u32,
    eos: u32,
    eol: u32,
}

struct BpeModel {
    hf: BpeHf,
    splitter: ByteLevelSplitter,
    /// Bytes of each token by id (empty for `<eos>`).
    bytes: Arc<[Vec<u8>]>,
    eos: u32,
    /// The UTF-8 guard, built on first use.
    utf8: std::sync::OnceLock<Arc<Utf8Guard>>,
}

/// The JSON document of [`Tokenizer::to_json`].
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Stored {
    Char { chars: Vec<char> },
    Word { hf: serde_json::Value },
    Bpe { hf: serde_json::Value },
}

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Train on the (training split of the) corpus text.
    ///
    /// Errors: empty text, a `vocab_size` too small for the kind, or a word vocabulary with no
    /// word reaching `min_frequency`.
    pub fn train(kind: TokenizerKind, text: &str, opts: &TokenizerOptions) -> Result<Self> {
        if text.is_empty() {
            return Err(tok_err(format!(
                "cannot train a {kind} tokenizer on empty text"
            )));
        }
        let inner = match kind {
            TokenizerKind::Char => {
                let mut v = CharVocab::new();
                v.add(text);
                Inner::Char(CharModel::build(v.chars()))
            }
            TokenizerKind::Word => Inner::Word(Box::new(WordModel::train(text, opts)?)),
            TokenizerKind::Bpe => Inner::Bpe(Box::new(BpeModel::train(text, opts)?)),
        };
        Self::from_inner(inner)
    }

    /// A char tokenizer whose vocabulary is the chars counted in `vocab` (which may have been
    /// filled from a corpus streamed in pieces). The same ids as [`Tokenizer::train`] on the
    /// concatenated text. Errors when no char was counted.
    pub fn from_char_vocab(vocab: &CharVocab) -> Result<Self> {
        if vocab.is_empty() {
            return Err(tok_err("cannot train a char tokenizer on empty text"));
        }
        Self::from_inner(Inner::Char(CharModel::build(vocab.chars())))
    }

    /// A word tokenizer with a given vocabulary, id `i` being `pieces[i]` (a model trained
    /// elsewhere, see `checkpoint::import`). It must hold the special tokens `<unk>`, `<eos>`
    /// and `<eol>`; entries must be distinct, non-empty and free of whitespace. Text is split
    /// with quill's word pattern, so an entry that pattern never yields whole (`'s`, `U.S.`)
    /// can be decoded but is never produced by encoding ([`Tokenizer::word_splits_whole`]).
    pub fn word_from_vocab(pieces: &[String]) -> Result<Self> {
        if pieces.len() > u32::MAX as usize {
            return Err(tok_err("word vocabulary is too large"));
        }
        let mut vocab = HashMap::with_capacity(pieces.len());
        for (id, p) in pieces.iter().enumerate() {
            if p.is_empty() || p.chars().any(char::is_whitespace) {
                return Err(tok_err(format!(
                    "word vocabulary entry {id} ({p:?}) is empty or holds whitespace"
                )));
            }
            if let Some(first) = vocab.insert(p.clone(), id as u32) {
                return Err(tok_err(format!(
                    "word vocabulary entry {id} ({p:?}) repeats entry {first}"
                )));
            }
        }
        for special in [UNK_TOKEN, EOS_TOKEN, EOL_TOKEN] {
            if !vocab.contains_key(special) {
                return Err(tok_err(format!("word vocabulary has no {special} token")));
            }
        }
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token(UNK_TOKEN.to_string())
            .build()
            .map_err(hf_err("word model"))?;
        let mut hf = WordHf::new(model);
        hf.with_pre_tokenizer(Some(WordModel::pre_tokenizer()?));
        hf.add_special_tokens(
            &[UNK_TOKEN, EOS_TOKEN, EOL_TOKEN]
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect::<Vec<_>>(),
        );
        Self::from_inner(Inner::Word(Box::new(WordModel::from_hf(hf)?)))
    }

    /// Whether quill's word pattern yields `piece` as one whole token (what encoding can
    /// produce); false for entries such as `'s` or `U.S.` that it splits.
    pub fn word_splits_whole(piece: &str) -> bool {
        static RE: std::sync::OnceLock<Option<SysRegex>> = std::sync::OnceLock::new();
        RE.get_or_init(|| SysRegex::new(WORD_PATTERN).ok())
            .as_ref()
            .is_some_and(|re| re.find_iter(piece).collect::<Vec<_>>() == [(0, piece.len())])
    }

    /// SHA-256 of [`Tokenizer::to_json`] (its UTF-8 bytes): identifies the tokenizer, e.g. in
    /// the header of a prepared token file.
    pub fn sha256(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(self.json.as_bytes()).into()
    }

    /// Whether a char tokenizer knows every char of `vocab` (word and BPE: always true, they
    /// encode any text). Returns the chars it lacks, sorted.
    pub fn missing_chars(&self, vocab: &CharVocab) -> Vec<char> {
        match &*self.inner {
            Inner::Char(m) => vocab
                .chars()
                .into_iter()
                .filter(|&c| m.lookup(c).is_none())
                .collect(),
            _ => Vec::new(),
        }
    }

    fn from_inner(inner: Inner) -> Result<Self> {
        let stored = match &inner {
            Inner::Char(m) => Stored::Char {
                chars: m.chars.to_vec(),
            },
            Inner::Word(m) => Stored::Word {
                hf: serde_json::to_value(&m.hf)
                    .map_err(|e| tok_err(format!("cannot serialise word tokenizer: {e}")))?,
            },
            Inner::Bpe(m) => Stored::Bpe {
                hf: serde_json::to_value(&m.hf)
                    .map_err(|e| tok_err(format!("cannot serialise BPE tokenizer: {e}")))?,
            },
        };
        let json = serde_json::to_string(&stored)
            .map_err(|e| tok_err(format!("cannot serialise tokenizer: {e}")))?;
        Ok(Tokenizer {
            inner: Arc::new(inner),
            json: json.into(),
        })
    }

    /// The kind of this tokenizer.
    pub fn kind(&self) -> TokenizerKind {
        match &*self.inner {
            Inner::Char(_) => TokenizerKind::Char,
            Inner::Word(_) => TokenizerKind::Word,
            Inner::Bpe(_) => TokenizerKind::Bpe,
        }
    }

    /// Vocabulary size V: every id produced is `< V`, and every id `< V` is a token.
    pub fn vocab_size(&self) -> usize {
        match &*self.inner {
            Inner::Char(m) => m.chars.len(),
            Inner::Word(m) => m.pieces.len(),
            Inner::Bpe(m) => m.bytes.len(),
        }
    }

    /// Encode corpus text. Char: [`Error::UnknownChars`] listing the unknown chars (sorted,
    /// unique). Word: out-of-vocabulary words become `<unk>`, each line end `<eol>`. BPE: any
    /// text. No `<eos>` is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut ids)?;
        Ok(ids)
    }

    /// [`Tokenizer::encode`], appending to `ids` (a buffer reused across pieces of a corpus
    /// streamed from disk). On error `ids` may hold part of the text's tokens.
    pub fn encode_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        match &*self.inner {
            Inner::Char(m) => {
                let unknown = m.encode_into(text, ids);
                if unknown.is_empty() {
                    Ok(())
                } else {
                    Err(Error::UnknownChars(unknown))
                }
            }
            Inner::Word(m) => {
                ids.extend_from_slice(&encode_parallel(text, |part| m.encode(part, None))?);
                Ok(())
            }
            Inner::Bpe(m) => {
                ids.extend_from_slice(&encode_parallel(text, |part| m.encode(part))?);
                Ok(())
            }
        }
    }

    /// Encode prime text under a policy; returns the ids and the sorted, unique list of pieces
    /// that were unknown: chars skipped (char with [`UnknownPolicy::Skip`]) or words mapped to
    /// `<unk>` (word, under either policy). The caller warns naming them. BPE never has any.
    ///
    /// Char with [`UnknownPolicy::Error`] and unknown chars: [`Error::UnknownChars`].
    pub fn encode_prime(
        &self,
        text: &str,
        policy: UnknownPolicy,
    ) -> Result<(Vec<u32>, Vec<String>)> {
        match &*self.inner {
            Inner::Char(m) => {
                let mut ids = Vec::new();
                let unknown = m.encode_into(text, &mut ids);
                if unknown.is_empty() {
                    Ok((ids, Vec::new()))
                } else {
                    match policy {
                        UnknownPolicy::Error => Err(Error::UnknownChars(unknown)),
                        UnknownPolicy::Skip => {
                            Ok((ids, unknown.iter().map(|c| c.to_string()).collect()))
                        }
                    }
                }
            }
            Inner::Word(m) => {
                let mut unknown = BTreeSet::new();
                let ids = m.encode(text, Some(&mut unknown))?;
                Ok((ids, unknown.into_iter().collect()))
            }
            Inner::Bpe(m) => Ok((m.encode(text)?, Vec::new())),
        }
    }

    /// Decode ids to text. Ids `>= V` decode to U+FFFD. BPE byte sequences that are not valid
    /// UTF-8 decode to U+FFFD (as `String::from_utf8_lossy`). `<eos>` decodes to nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut dec = self.stream_decoder();
        let mut out = String::new();
        for &id in ids {
            dec.push_into(id, &mut out);
        }
        dec.finish_into(&mut out);
        out
    }

    /// Display form of one token for a UI table: whitespace and control chars made visible
    /// (`"\n"` as `⏎`, `" "` as `␣`, tab as `⇥`, CR as `␍`, other controls as `\u{..}`),
    /// special tokens by name (`<eol>` as `⏎`), BPE bytes that are not whole UTF-8 chars as
    /// `\xNN`. Ids `>= V` show as `<invalid id N>`.
    pub fn token_display(&self, id: u32) -> String {
        let invalid = || format!("<invalid id {id}>");
        match &*self.inner {
            Inner::Char(m) => match m.chars.get(id as usize) {
                Some(&c) => {
                    let mut s = String::new();
                    push_visible(c, &mut s);
                    s
                }
                None => invalid(),
            },
            Inner::Word(m) => {
                if id == m.eol {
                    "⏎".to_string()
                } else {
                    m.pieces.get(id as usize).cloned().unwrap_or_else(invalid)
                }
            }
            Inner::Bpe(m) => {
                if id == m.eos {
                    return EOS_TOKEN.to_string();
                }
                match m.bytes.get(id as usize) {
                    Some(bytes) => {
                        let mut s = String::new();
                        for chunk in bytes.utf8_chunks() {
                            chunk.valid().chars().for_each(|c| push_visible(c, &mut s));
                            for b in chunk.invalid() {
                                s.push_str(&format!("\\x{b:02X}"));
                            }
                        }
                        s
                    }
                    None => invalid(),
                }
            }
        }
    }

    /// A stream decoder that continues after `context` (e.g. the prime, already shown to the
    /// user): its output is discarded, but spacing and pending bytes carry over, so the first
    /// generated word is joined to the prime as it would be in a full decode.
    pub fn stream_decoder_after(&self, context: &[u32]) -> StreamDecoder {
        let mut d = self.stream_decoder();
        for &id in context {
            d.push(id);
        }
        d
    }

    /// Incremental decoder for streaming generation: feeding ids one by one and finishing gives
    /// exactly [`Tokenizer::decode`] of all of them.
    pub fn stream_decoder(&self) -> StreamDecoder {
        let state = match &*self.inner {
            Inner::Char(m) => StreamState::Char {
                chars: Arc::clone(&m.chars),
            },
            Inner::Word(m) => StreamState::Word {
                pieces: Arc::clone(&m.pieces),
                eos: m.eos,
                eol: m.eol,
                joiner: Joiner::new(),
            },
            Inner::Bpe(m) => StreamState::Bpe {
                bytes: Arc::clone(&m.bytes),
                pending: Vec::new(),
            },
        };
        StreamDecoder { state }
    }

    /// Id of the end-of-text token (word and BPE), for stopping generation. `None` for char.
    pub fn eos_id(&self) -> Option<u32> {
        match &*self.inner {
            Inner::Char(_) => None,
            Inner::Word(m) => Some(m.eos),
            Inner::Bpe(m) => Some(m.eos),
        }
    }

    /// For byte-level BPE models, the table of tokens that cannot continue valid UTF-8 (built
    /// once per tokenizer, shared); `None` for char and word models, whose output is always
    /// valid.
    pub fn utf8_guard(&self) -> Option<Arc<Utf8Guard>> {
        match &*self.inner {
            Inner::Bpe(m) => Some(Arc::clone(
                m.utf8.get_or_init(|| Arc::new(Utf8Guard::new(&m.bytes))),
            )),
            _ => None,
        }
    }

    /// Length in bytes of the text of each token of `ids`, for char and BPE models, whose
    /// decoding is exact (the lengths of an encoding add up to the text's); `None` for word
    /// models (decoding normalises spacing) and for ids outside the vocabulary.
    pub fn token_byte_lens(&self, ids: &[u32]) -> Option<Vec<usize>> {
        match &*self.inner {
            Inner::Char(m) => ids
                .iter()
                .map(|&i| m.chars.get(i as usize).map(|c| c.len_utf8()))
                .collect(),
            Inner::Bpe(m) => ids
                .iter()
                .map(|&i| m.bytes.get(i as usize).map(Vec::len))
                .collect(),
            Inner::Word(_) => None,
        }
    }

    /// Id of a special or ordinary token given its exact text (e.g. `"<eol>"`, `"the"`, `"a"`
    /// for char), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &*self.inner {
            Inner::Char(m) => {
                let mut it = token.chars();
                match (it.next(), it.next()) {
                    (Some(c), None) => m.lookup(c),
                    _ => None,
                }
            }
            Inner::Word(m) => m.hf.token_to_id(token),
            Inner::Bpe(m) => m.hf.token_to_id(token),
        }
    }

    /// Self-contained JSON of the tokenizer, including its kind. Deterministic: the same
    /// training text and options give the same JSON.
    pub fn to_json(&self) -> String {
        self.json.to_string()
    }

    /// Load a tokenizer from [`Tokenizer::to_json`] output. Garbage, truncated or inconsistent
    /// JSON (duplicate tokens, gaps in ids, missing special tokens) gives [`Error::Tokenizer`].
    pub fn from_json(s: &str) -> Result<Self> {
        let stored: Stored =
            serde_json::from_str(s).map_err(|e| tok_err(format!("invalid tokenizer JSON: {e}")))?;
        let inner = match stored {
            Stored::Char { chars } => Inner::Char(CharModel::from_chars(chars)?),
            Stored::Word { hf } => {
                // Parse from text: some `tokenizers` types only deserialise from borrowed strings.
                let hf: WordHf = serde_json::from_str(&hf.to_string())
                    .map_err(|e| tok_err(format!("invalid word tokenizer JSON: {e}")))?;
                Inner::Word(Box::new(WordModel::from_hf(hf)?))
            }
            Stored::Bpe { hf } => {
                // Parse from text: some `tokenizers` types only deserialise from borrowed strings.
                let hf: BpeHf = serde_json::from_str(&hf.to_string())
                    .map_err(|e| tok_err(format!("invalid BPE tokenizer JSON: {e}")))?;
                Inner::Bpe(Box::new(BpeModel::from_hf(hf)?))
            }
        };
        Self::from_inner(inner)
    }
}

/// Texts shorter than this are encoded on the calling thread.
const PARALLEL_MIN_BYTES: usize = 1 << 20;

/// Encode `text` with `f`, splitting it at line ends into one part per available core when it
/// is large. Word and BPE encode line by line, so the result is the same as `f(text)`.
fn encode_parallel<F>(text: &str, f: F) -> Result<Vec<u32>>
where
    F: Fn(&str) -> Result<Vec<u32>> + Sync,
{
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    encode_in_parts(text, threads.min(text.len() / PARALLEL_MIN_BYTES), f)
}

/// Encode `text` with `f` on `parts` threads, each given a run of whole lines.
fn encode_in_parts<F>(text: &str, parts: usize, f: F) -> Result<Vec<u32>>
where
    F: Fn(&str) -> Result<Vec<u32>> + Sync,
{
    if parts <= 1 {
        return f(text);
    }
    let mut pieces = Vec::with_capacity(parts);
    let mut rest = text;
    for i in (1..parts).rev() {
        let target = rest.len() / (i + 1);
        // Cut after the first newline at or past `target` (`rest` is split at char boundaries).
        let cut = rest.as_bytes()[target..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |p| target + p + 1);
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    pieces.push(rest);
    let results: Vec<Result<Vec<u32>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pieces.iter().map(|&part| scope.spawn(|| f(part))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(tok_err("an encoding thread panicked")))
            })
            .collect()
    });
    let mut ids = Vec::new();
    for r in results {
        ids.extend_from_slice(&r?);
    }
    Ok(ids)
}

/// Push `c` in a visible form (see [`Tokenizer::token_display`]).
fn push_visible(c: char, out: &mut String) {
    match c {
        ' ' => out.push('␣'),
        '\n' => out.push('⏎'),
        '\t' => out.push('⇥'),
        '\r' => out.push('␍'),
        c if c.is_control() || (c.is_whitespace() && c != ' ') => {
            out.extend(c.escape_unicode());
        }
        c => out.push(c),
    }
}

// ---------------------------------------------------------------------------------------------
// char

const BMP: usize = 0x1_0000;
/// Text is checked for pure ASCII (and then taken byte by byte) in blocks of this many bytes.
const ASCII_BLOCK: usize = 64;

/// The set of chars seen in a text, filled piece by piece (a corpus streamed from disk); a char
/// tokenizer's vocabulary is this set in code-point order ([`Tokenizer::from_char_vocab`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharVocab {
    /// Basic Multilingual Plane: one flag per code point (65536 entries).
    bmp: Vec<bool>,
    astral: BTreeSet<char>,
}

impl Default for CharVocab {
    fn default() -> Self {
        Self::new()
    }
}

impl CharVocab {
    /// No chars.
    pub fn new() -> Self {
        CharVocab {
            bmp: vec![false; BMP],
            astral: BTreeSet::new(),
        }
    }

    /// Counts the chars of `text`. ASCII blocks take a byte loop (most corpora are mostly
    /// ASCII); the rest is decoded.
    pub fn add(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let mut ascii = [false; 128];
        let mut i = 0;
        while i < bytes.len() {
            let block = &bytes[i..(i + ASCII_BLOCK).min(bytes.len())];
            if block.is_ascii() {
                for &b in block {
                    ascii[(b & 0x7F) as usize] = true;
                }
                i += block.len();
                continue;
            }
            let b = bytes[i];
            if b < 0x80 {
                ascii[b as usize] = true;
                i += 1;
                continue;
            }
            // A multi-byte char starts here (`text` is valid UTF-8, so `i` is a boundary).
            let c = text[i..]
                .chars()
                .next()
                .expect("non-empty at a char boundary");
            let u = c as usize;
            if u < BMP {
                self.bmp[u] = true;
            } else {
                self.astral.insert(c);
            }
            i += c.len_utf8();
        }
        for (seen, a) in self.bmp.iter_mut().zip(ascii) {
            *seen |= a;
        }
    }

    /// Adds every char of `other`.
    pub fn merge(&mut self, other: &CharVocab) {
        for (a, &b) in self.bmp.iter_mut().zip(&other.bmp) {
            *a |= b;
        }
        self.astral.extend(other.astral.iter().copied());
    }

    /// No char counted yet.
    pub fn is_empty(&self) -> bool {
        self.astral.is_empty() && !self.bmp.iter().any(|&s| s)
    }

    /// The chars, in code-point order.
    pub fn chars(&self) -> Vec<char> {
        self.bmp
            .iter()
            .enumerate()
            .filter(|(_, &s)| s)
            .filter_map(|(u, _)| char::from_u32(u as u32))
            .chain(self.astral.iter().copied())
            .collect()
    }
}

impl CharModel {
    /// Build from an id-ordered list that has no duplicates.
    fn build(chars: Vec<char>) -> Self {
        let mut bmp = vec![u32::MAX; BMP];
        let mut astral = HashMap::new();
        for (id, &c) in chars.iter().enumerate() {
            let u = c as usize;
            if u < BMP {
                bmp[u] = id as u32;
            } else {
                astral.insert(c, id as u32);
            }
        }
        CharModel {
            chars: chars.into(),
            bmp,
            astral,
        }
    }

    fn from_chars(chars: Vec<char>) -> Result<Self> {
        if chars.is_empty() {
            return Err(tok_err("char vocabulary is empty"));
        }
        if chars.len() > u32::MAX as usize {
            return Err(tok_err("char vocabulary is too large"));
        }
        let mut seen = HashSet::with_capacity(chars.len());
        for &c in &chars {
            if !seen.insert(c) {
                return Err(tok_err(format!(
                    "char vocabulary lists {c:?} more than once"
                )));
            }
        }
        Ok(Self::build(chars))
    }

    #[inline]
    fn lookup(&self, c: char) -> Option<u32> {
        let u = c as usize;
        if u < BMP {
            let id = self.bmp[u];
            (id != u32::MAX).then_some(id)
        } else {
            self.astral.get(&c).copied()
        }
    }

    /// Appends the ids of the known chars to `ids`; returns the sorted unique unknown chars.
    /// ASCII bytes take a table lookup without decoding.
    fn encode_into(&self, text: &str, ids: &mut Vec<u32>) -> Vec<char> {
        ids.reserve(text.len());
        let mut unknown = BTreeSet::new();
        let bytes = text.as_bytes();
        let ascii: &[u32; 128] = self.bmp[..128].try_into().expect("65536 entries");
        let mut i = 0;
        while i < bytes.len() {
            let block = &bytes[i..(i + ASCII_BLOCK).min(bytes.len())];
            if block.is_ascii() {
                let start = ids.len();
                ids.extend(block.iter().map(|&b| ascii[(b & 0x7F) as usize]));
                if !ids[start..].contains(&u32::MAX) {
                    i += block.len();
                    continue;
                }
                // An unknown ASCII char: redo the block char by char.
                ids.truncate(start);
            }
            let b = bytes[i];
            let (c, len) = if b < 0x80 {
                let id = self.bmp[b as usize];
                if id != u32::MAX {
                    ids.push(id);
                    i += 1;
                    continue;
                }
                (b as char, 1)
            } else {
                let c = text[i..].chars().next().expect("a char at a char boundary");
                (c, c.len_utf8())
            };
            match self.lookup(c) {
                Some(id) => ids.push(id),
                None => {
                    unknown.insert(c);
                }
            }
            i += len;
        }
        unknown.into_iter().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// word

fn hf_err(what: &str) -> impl Fn(tokenizers::Error) -> Error + '_ {
    move |e| tok_err(format!("{what}: {e}"))
}

/// Check that `vocab` maps tokens to exactly the ids `0..n` (n = number of tokens) and return
/// the tokens by id.
fn contiguous_vocab(vocab: HashMap<String, u32>, what: &str) -> Result<Vec<String>> {
    let n = vocab.len();
    let mut by_id: Vec<Option<String>> = vec![None; n];
    for (token, id) in vocab {
        let slot = by_id.get_mut(id as usize).ok_or_else(|| {
            tok_err(format!(
                "{what} vocabulary: id {id} of {token:?} is out of range for {n} tokens \
                 (duplicate or missing entries)"
            ))
        })?;
        if let Some(other) = slot {
            return Err(tok_err(format!(
                "{what} vocabulary: id {id} is used by both {other:?} and {token:?}"
            )));
        }
        *slot = Some(token);
    }
    // n tokens with distinct ids in 0..n: every slot is filled.
    Ok(by_id.into_iter().flatten().collect())
}

impl WordModel {
    fn pre_tokenizer() -> Result<Split> {
        Split::new(
            SplitPattern::Regex(WORD_PATTERN.to_string()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(hf_err("word pre-tokenizer"))
    }

    fn train(text: &str, opts: &TokenizerOptions) -> Result<Self> {
        if opts.vocab_size < 4 {
            return Err(Error::config(
                "vocab_size",
                format!(
                    "{} is too small for a word tokenizer (3 special tokens + at least 1 word)",
                    opts.vocab_size
                ),
            ));
        }
        let split = Self::pre_tokenizer()?;
        let mut trainer = WordLevelTrainer::builder()
            .vocab_size(opts.vocab_size)
            .min_frequency(opts.min_frequency)
            .show_progress(false)
            .special_tokens(
                [UNK_TOKEN, EOS_TOKEN, EOL_TOKEN]
                    .iter()
                    .map(|t| AddedToken::from(*t, true))
                    .collect(),
            )
            .build()
            .map_err(|e| tok_err(format!("word trainer: {e}")))?;
        // Same as `TokenizerImpl::train` with this pre-tokenizer (tested), without the cost of
        // `NormalizedString` alignment bookkeeping. A literal `<unk>` is the special token
        // already, not a word to count (the trainer would enter it twice).
        let regex = &split.regex;
        trainer
            .feed(text.lines(), |line| {
                Ok(regex
                    .find_iter(line)
                    .map(|(a, b)| &line[a..b])
                    .filter(|w| *w != UNK_TOKEN)
                    .map(str::to_string)
                    .collect())
            })
            .map_err(hf_err("word tokenizer training failed"))?;
        let mut model = WordLevel::builder()
            .unk_token(UNK_TOKEN.to_string())
            .build()
            .map_err(hf_err("word model"))?;
        let specials = trainer
            .train(&mut model)
            .map_err(hf_err("word tokenizer training failed"))?;
        if model.get_vocab_size() <= 3 {
            return Err(tok_err(format!(
                "no word occurs at least {} time(s) in the training text",
                opts.min_frequency
            )));
        }
        let mut hf = WordHf::new(model);
        hf.with_pre_tokenizer(Some(split));
        hf.add_special_tokens(&specials);
        Self::from_hf(hf)
    }

    fn from_hf(mut hf: WordHf) -> Result<Self> {
        // Special tokens are control tokens only: literal "<eos>" in text is ordinary text.
        hf.set_encode_special_tokens(true);
        // The split pattern decides what text becomes: only quill's own is accepted (a
        // crafted one could drop text silently or backtrack for seconds per line).
        match hf.get_pre_tokenizer() {
            Some(pt)
                if pt.invert
                    && pt.behavior == SplitDelimiterBehavior::Removed
                    && matches!(&pt.pattern, SplitPattern::Regex(r)
                        if r == WORD_PATTERN || r == WORD_PATTERN_V1) => {}
            _ => {
                return Err(tok_err(format!(
                    "word tokenizer must split with quill's pattern {WORD_PATTERN:?} (or the \
                     earlier {WORD_PATTERN_V1:?}; an inverted, removing regex split \
                     pre-tokenizer); this one does not"
                )))
            }
        }
        if hf.get_normalizer().is_some() || hf.get_post_processor().is_some() {
            return Err(tok_err(
                "word tokenizer has a normalizer or post-processor quill does not use",
            ));
        }
        let pieces = contiguous_vocab(hf.get_vocab(true), "word")?;
        if pieces.len() > u32::MAX as usize {
            return Err(tok_err("word vocabulary is too large"));
        }
        let id = |t: &str| {
            hf.token_to_id(t)
                .ok_or_else(|| tok_err(format!("word vocabulary has no {t} token")))
        };
        let (unk, eos, eol) = (id(UNK_TOKEN)?, id(EOS_TOKEN)?, id(EOL_TOKEN)?);
        if hf.get_model().unk_token != UNK_TOKEN {
            return Err(tok_err(format!(
                "word model's unknown token is {:?}, expected {UNK_TOKEN}",
                hf.get_model().unk_token
            )));
        }
        Ok(WordModel {
            hf,
            pieces: pieces.into(),
            unk,
            eos,
            eol,
        })
    }

    /// Encode line by line, `<eol>` after each newline. When `unknown` is given, the words that
    /// became `<unk>` are collected into it.
    ///
    /// Gives the same ids as `TokenizerImpl::encode` of each line (tested) but looks words up
    /// directly, which is several times faster.
    fn encode(&self, text: &str, mut unknown: Option<&mut BTreeSet<String>>) -> Result<Vec<u32>> {
        let Some(split) = self.hf.get_pre_tokenizer() else {
            return Err(tok_err("word tokenizer has no pre-tokenizer"));
        };
        let model = self.hf.get_model();
        let mut ids = Vec::with_capacity(text.len() / 4 + 1);
        for line in text.split_inclusive('\n') {
            let (content, eol) = match line.strip_suffix('\n') {
                Some(c) => (c, true),
                None => (line, false),
            };
            for (a, b) in split.regex.find_iter(content) {
                let word = &content[a..b];
                match model.token_to_id(word) {
                    Some(id) => ids.push(id),
                    None => {
                        ids.push(self.unk);
                        if let Some(unknown) = unknown.as_deref_mut() {
                            unknown.insert(word.to_string());
                        }
                    }
                }
            }
            if eol {
                ids.push(self.eol);
            }
        }
        Ok(ids)
    }
}

/// Joining state of the word decoder (see the module documentation).
#[derive(Clone, Debug)]
struct Joiner {
    line_start: bool,
    glue_next: bool,
    dquote_open: bool,
}

impl Joiner {
    fn new() -> Self {
        Joiner {
            line_start: true,
            glue_next: false,
            dquote_open: false,
        }
    }

    fn eol(&mut self, out: &mut String) {
        out.push('\n');
        *self = Joiner::new();
    }

    fn token(&mut self, tok: &str, out: &mut String) {
        let is_dquote = tok == "\"";
        let closing_quote = is_dquote && self.dquote_open;
        let starts_glued = tok
            .chars()
            .next()
            .is_some_and(|c| NO_SPACE_BEFORE.contains(&c));
        if !(self.line_start || self.glue_next || starts_glued || closing_quote) {
            out.push(' ');
        }
        out.push_str(tok);
        self.line_start = false;
        self.glue_next = (is_dquote && !self.dquote_open)
            || tok
                .chars()
                .next_back()
                .is_some_and(|c| NO_SPACE_AFTER.contains(&c));
        if is_dquote {
            self.dquote_open = !self.dquote_open;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BPE

/// GPT-2 byte-level alphabet: the char standing for each byte.
fn byte_chars() -> [char; N_BYTES] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut table = ['\0'; N_BYTES];
    let mut next = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next += 1;
            255 + next
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// The GPT-2 pre-tokenization regex, the one `tokenizers`' `ByteLevel` pre-tokenizer uses
/// (equality of the resulting encodings is tested).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Most distinct pre-tokenized pieces kept in the encoding cache before it is emptied.
const BPE_CACHE_CAP: usize = 1 << 20;

/// Splits text as `tokenizers`' byte-level pre-tokenizer (no prefix space) does and maps each
/// piece to byte-level chars.
struct ByteLevelSplitter {
    regex: SysRegex,
    byte_char: [char; N_BYTES],
}

impl ByteLevelSplitter {
    fn new() -> Result<Self> {
        Ok(ByteLevelSplitter {
            regex: SysRegex::new(GPT2_PATTERN).map_err(hf_err("byte-level regex"))?,
            byte_char: byte_chars(),
        })
    }

    /// Call `f` with each piece of `text` (regex matches and the gaps between them, like
    /// `SplitDelimiterBehavior::Isolated`), mapped to byte-level chars in a reused buffer.
    fn for_each_piece(&self, text: &str, mut f: impl FnMut(&str)) {
        let mut buf = String::new();
        self.split(text, |piece| {
            self.map_piece(piece, &mut buf);
            f(&buf);
        });
    }

    /// The byte-level chars of `piece`, into `buf`.
    fn map_piece(&self, piece: &str, buf: &mut String) {
        buf.clear();
        buf.extend(piece.bytes().map(|b| self.byte_char[b as usize]));
    }

    /// Call `f` with each piece of `text` as it is (not mapped). ASCII text takes a scanner
    /// equivalent to the regex (tested), several times faster; other text the regex.
    fn split<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) {
        if text.is_ascii() {
            split_ascii_gpt2(text, f);
            return;
        }
        let mut prev = 0;
        for (a, b) in self.regex.find_iter(text) {
            if a > prev {
                f(&text[prev..a]);
            }
            if b > a {
                f(&text[a..b]);
            }
            prev = b;
        }
        if prev < text.len() {
            f(&text[prev..]);
        }
    }
}

/// The pieces [`GPT2_PATTERN`] splits ASCII `text` into, without a regex: at each position the
/// first alternative that matches, as the regex engine takes it. On ASCII, `\s` is tab, LF,
/// VT, FF, CR and space, `\p{L}` the letters A–Z and a–z, `\p{N}` the digits; every char is
/// matched, so there are no gaps.
fn split_ascii_gpt2<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    fn ws(c: u8) -> bool {
        matches!(c, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
    }
    fn letter(c: u8) -> bool {
        c.is_ascii_alphabetic()
    }
    fn digit(c: u8) -> bool {
        c.is_ascii_digit()
    }
    fn other(c: u8) -> bool {
        !(ws(c) || letter(c) || digit(c))
    }
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        let c = b[i];
        // 's 't 're 've 'm 'll 'd
        if c == b'\'' && i + 1 < n {
            let rest = &b[i + 1..];
            let len =
                if rest.starts_with(b"re") || rest.starts_with(b"ve") || rest.starts_with(b"ll") {
                    3
                } else if matches!(rest[0], b's' | b't' | b'm' | b'd') {
                    2
                } else {
                    0
                };
            if len > 0 {
                f(&text[i..i + len]);
                i += len;
                continue;
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let first = if c == b' ' && i + 1 < n && !ws(b[i + 1]) {
            i + 1
        } else {
            i
        };
        if !ws(b[first]) {
            let class: fn(u8) -> bool = if letter(b[first]) {
                letter
            } else if digit(b[first]) {
                digit
            } else {
                other
            };
            let mut k = first + 1;
            while k < n && class(b[k]) {
                k += 1;
            }
            f(&text[i..k]);
            i = k;
            continue;
        }
        // `\s+(?!\S)`, then `\s+`: a run of whitespace followed by text leaves its last char
        // to the next piece (unless the run is one char).
        let mut k = i;
        while k < n && ws(b[k]) {
            k += 1;
        }
        if k < n && k - i >= 2 {
            k -= 1;
        }
        f(&text[i..k]);
        i = k;
    }
}

impl BpeModel {
    fn train(text: &str, opts: &TokenizerOptions) -> Result<Self> {
        if opts.vocab_size < N_BYTES + 1 {
            return Err(Error::config(
                "vocab_size",
                format!(
                    "{} is too small for a BPE tokenizer (256 bytes + <eos> = 257 at least)",
                    opts.vocab_size
                ),
            ));
        }
        let splitter = ByteLevelSplitter::new()?;
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(opts.vocab_size)
            .min_frequency(opts.min_frequency)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        // Same as `TokenizerImpl::train` with the byte-level pre-tokenizer (tested), without
        // the cost of `NormalizedString` alignment bookkeeping.
        trainer
            .feed(text.split_inclusive('\n'), |chunk| {
                let mut pieces = Vec::new();
                splitter.for_each_piece(chunk, |p| pieces.push(p.to_string()));
                Ok(pieces)
            })
            .map_err(hf_err("BPE training failed"))?;
        let mut model = BPE::default();
        let specials = trainer
            .train(&mut model)
            .map_err(hf_err("BPE training failed"))?;
        let mut hf = BpeHf::new(model);
        hf.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        hf.with_decoder(Some(ByteLevel::new(false, true, true)));
        hf.add_special_tokens(&specials);
        Self::from_hf(hf)
    }

    fn from_hf(mut hf: BpeHf) -> Result<Self> {
        hf.set_encode_special_tokens(true);
        match hf.get_pre_tokenizer() {
            Some(pt) if !pt.add_prefix_space && pt.use_regex => {}
            _ => {
                return Err(tok_err(
                    "BPE tokenizer must use the byte-level pre-tokenizer without prefix space",
                ))
            }
        }
        if hf.get_normalizer().is_some() || hf.get_post_processor().is_some() {
            return Err(tok_err(
                "BPE tokenizer has a normalizer or post-processor quill does not use",
            ));
        }
        let model = hf.get_model();
        if model.dropout.is_some()
            || model.continuing_subword_prefix.is_some()
            || model.end_of_word_suffix.is_some()
        {
            return Err(tok_err(
                "BPE model uses dropout or a subword prefix/suffix, which quill does not support",
            ));
        }
        let tokens = contiguous_vocab(hf.get_vocab(true), "BPE")?;
        if tokens.len() > u32::MAX as usize {
            return Err(tok_err("BPE vocabulary is too large"));
        }
        let eos = hf
            .token_to_id(EOS_TOKEN)
            .ok_or_else(|| tok_err(format!("BPE vocabulary has no {EOS_TOKEN} token")))?;
        let char_byte: HashMap<char, u8> = byte_chars()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let mut bytes = Vec::with_capacity(tokens.len());
        let mut single = [false; N_BYTES];
        for (id, token) in tokens.iter().enumerate() {
            if id as u32 == eos {
                bytes.push(Vec::new());
                continue;
            }
            let b = token
                .chars()
                .map(|c| char_byte.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| {
                    tok_err(format!(
                        "BPE token {id} ({token:?}) is not a byte-level token"
                    ))
                })?;
            if let [one] = b[..] {
                single[one as usize] = true;
            }
            bytes.push(b);
        }
        if let Some(missing) = single.iter().position(|&s| !s) {
            return Err(tok_err(format!(
                "BPE vocabulary lacks the single byte 0x{missing:02X}, so not every text can be encoded"
            )));
        }
        Ok(BpeModel {
            hf,
            splitter: ByteLevelSplitter::new()?,
            bytes: bytes.into(),
            eos,
            utf8: std::sync::OnceLock::new(),
        })
    }

    /// Encode chunk by chunk (a line and its newline). Gives the same ids as
    /// `TokenizerImpl::encode` of each chunk (tested) but caches the ids of each distinct
    /// pre-tokenized piece, which is several times faster on a corpus.
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let model = self.hf.get_model();
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        // Keyed by the raw piece: a hit costs no mapping to byte-level chars.
        let mut cache: HashMap<&str, Vec<u32>, foldhash::fast::RandomState> = HashMap::default();
        let mut mapped = String::new();
        let mut failure = None;
        for chunk in text.split_inclusive('\n') {
            self.splitter.split(chunk, |piece| {
                if let Some(cached) = cache.get(piece) {
                    ids.extend_from_slice(cached);
                    return;
                }
                self.splitter.map_piece(piece, &mut mapped);
                match model.tokenize(&mapped) {
                    Ok(tokens) => {
                        let piece_ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
                        ids.extend_from_slice(&piece_ids);
                        if cache.len() >= BPE_CACHE_CAP {
                            cache.clear();
                        }
                        cache.insert(piece, piece_ids);
                    }
                    Err(e) => failure = Some(e),
                }
            });
            if let Some(e) = failure.take() {
                return Err(tok_err(format!("BPE encoding failed: {e}")));
            }
        }
        Ok(ids)
    }
}

/// Append the complete UTF-8 text at the front of `pending` to `out`, invalid sequences as
/// U+FFFD (like `String::from_utf8_lossy`), and keep an incomplete sequence at the end.
pub(crate) fn drain_utf8(pending: &mut Vec<u8>, out: &mut String) {
    let start = decode_utf8_lossy(pending, out);
    pending.drain(..start);
}

/// Appends the UTF-8 text of `bytes` to `out`, invalid sequences as U+FFFD (like
/// `String::from_utf8_lossy`), stopping before an incomplete sequence at the end. Returns the
/// bytes consumed.
pub(crate) fn decode_utf8_lossy(bytes: &[u8], out: &mut String) -> usize {
    let mut start = 0;
    while start < bytes.len() {
        match std::str::from_utf8(&bytes[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = bytes.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&bytes[start..start + valid]));
                start += valid;
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start += n;
                    }
                    None => break,
                }
            }
        }
    }
    start
}

// ---------------------------------------------------------------------------------------------
// UTF-8 guard

/// States of a UTF-8 decoder between bytes: 0 expects a lead byte; the others expect
/// continuation bytes (how many are still needed, and the range the next one must lie in, as
/// RFC 3629 restricts the second byte after E0, ED, F0 and F4).
const UTF8_STATES: usize = 8;

/// The state after `b` in state `s`, `None` if `b` is not allowed there.
fn utf8_step(s: u8, b: u8) -> Option<u8> {
    if s == 0 {
        return match b {
            0x00..=0x7F => Some(0),
            0xC2..=0xDF => Some(1),
            0xE0 => Some(3),
            0xE1..=0xEC | 0xEE..=0xEF => Some(2),
            0xED => Some(4),
            0xF0 => Some(6),
            0xF1..=0xF3 => Some(5),
            0xF4 => Some(7),
            _ => None,
        };
    }
    // (lowest, highest next byte, state after it)
    let (lo, hi, next) = match s {
        1 => (0x80, 0xBF, 0),
        2 => (0x80, 0xBF, 1),
        3 => (0xA0, 0xBF, 1),
        4 => (0x80, 0x9F, 1),
        5 => (0x80, 0xBF, 2),
        6 => (0x90, 0xBF, 2),
        _ => (0x80, 0x8F, 2),
    };
    (lo..=hi).contains(&b).then_some(next)
}

/// Which tokens of a byte-level BPE vocabulary may come next so that the decoded text stays
/// valid UTF-8, given the bytes still pending in the decoder (an unfinished character).
/// Built once per tokenizer in O(total token bytes); looking up the ban list is O(pending
/// bytes). A token is banned when its bytes, appended to the pending ones, contain an invalid
/// sequence; end-of-text (no bytes) is banned while a character is unfinished. Every state
/// allows at least one single-byte token, so a guarded stream always has somewhere to go.
#[derive(Debug)]
pub struct Utf8Guard {
    banned: [Vec<u32>; UTF8_STATES],
}

impl Utf8Guard {
    fn new(bytes: &[Vec<u8>]) -> Self {
        let mut banned: [Vec<u32>; UTF8_STATES] = Default::default();
        for (id, b) in bytes.iter().enumerate() {
            for (s, list) in banned.iter_mut().enumerate() {
                let ok = if b.is_empty() {
                    s == 0
                } else {
                    b.iter()
                        .try_fold(s as u8, |st, &x| utf8_step(st, x))
                        .is_some()
                };
                if !ok {
                    list.push(id as u32);
                }
            }
        }
        Utf8Guard { banned }
    }

    /// The tokens that may not follow `pending` (the decoder's unfinished bytes, see
    /// [`StreamDecoder::pending_bytes`]).
    pub fn banned_after(&self, pending: &[u8]) -> &[u32] {
        let s = pending
            .iter()
            .try_fold(0u8, |st, &x| utf8_step(st, x))
            .unwrap_or(0);
        &self.banned[s as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// streaming

/// Incremental decoder for streaming generation (see [`Tokenizer::stream_decoder`]).
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    state: StreamState,
}

#[derive(Clone, Debug)]
enum StreamState {
    Char {
        chars: Arc<[char]>,
    },
    Word {
        pieces: Arc<[String]>,
        eos: u32,
        eol: u32,
        joiner: Joiner,
    },
    Bpe {
        bytes: Arc<[Vec<u8>]>,
        pending: Vec<u8>,
    },
}

impl StreamDecoder {
    /// Feed one generated id, get the text that became final (may be empty, e.g. an incomplete
    /// UTF-8 byte sequence in BPE, or `<eos>`).
    pub fn push(&mut self, id: u32) -> String {
        let mut out = String::new();
        self.push_into(id, &mut out);
        out
    }

    /// Flush anything pending at the end (an incomplete BPE byte sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.finish_into(&mut out);
        out
    }

    /// [`StreamDecoder::push`], appending to `out`.
    pub fn push_into(&mut self, id: u32, out: &mut String) {
        match &mut self.state {
            StreamState::Char { chars } => {
                out.push(chars.get(id as usize).copied().unwrap_or('\u{FFFD}'));
            }
            StreamState::Word {
                pieces,
                eos,
                eol,
                joiner,
            } => {
                if id == *eol {
                    joiner.eol(out);
                } else if id != *eos {
                    let tok = pieces.get(id as usize).map_or("\u{FFFD}", |s| s.as_str());
                    joiner.token(tok, out);
                }
            }
            StreamState::Bpe { bytes, pending } => {
                match bytes.get(id as usize) {
                    Some(b) => pending.extend_from_slice(b),
                    None => pending.extend_from_slice("\u{FFFD}".as_bytes()),
                }
                drain_utf8(pending, out);
            }
        }
    }

    /// The bytes of an unfinished UTF-8 character (BPE; empty for char and word models).
    pub fn pending_bytes(&self) -> &[u8] {
        match &self.state {
            StreamState::Bpe { pending, .. } => pending,
            _ => &[],
        }
    }

    /// Forgets the bytes of an unfinished character, so that finishing adds no U+FFFD.
    pub fn drop_pending(&mut self) {
        if let StreamState::Bpe { pending, .. } = &mut self.state {
            pending.clear();
        }
    }

    /// [`StreamDecoder::finish`], appending to `out`.
    pub fn finish_into(&mut self, out: &mut String) {
        if let StreamState::Bpe { pending, .. } = &mut self.state {
            drain_utf8(pending, out);
            if !pending.is_empty() {
                out.push_str(&String::from_utf8_lossy(pending));
                pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROSE: &str = "The cat sat on the mat. The dog sat on the log.\n\
        The cat saw the dog, and the dog saw the cat!\n\
        Was the cat happy? Yes (very happy); the dog wasn't.\n\
        He said \"hello\" to the cat: well-known words, 3.14 and 1,000 cats...\n";

    const NON_ASCII: &str = "naïve — 東京\nCafé crème, 東京 and naïve again. Ünïcödé 🎉!\n";

    fn opts(kind: TokenizerKind) -> TokenizerOptions {
        TokenizerOptions::for_kind(kind)
    }

    fn train(kind: TokenizerKind, text: &str) -> Tokenizer {
        Tokenizer::train(kind, text, &opts(kind)).unwrap()
    }

    #[test]
    fn utf8_guard_bans_exactly_the_tokens_that_break_utf8() {
        let t = train(TokenizerKind::Bpe, NON_ASCII);
        let g = t.utf8_guard().unwrap();
        assert!(train(TokenizerKind::Char, PROSE).utf8_guard().is_none());
        assert!(train(TokenizerKind::Word, PROSE).utf8_guard().is_none());
        let Inner::Bpe(m) = &*t.inner else {
            panic!("a BPE tokenizer")
        };
        let eos = t.eos_id().unwrap();
        // Reference: allowed iff the pending bytes and the token's are a valid UTF-8 prefix.
        let valid_prefix = |b: &[u8]| match std::str::from_utf8(b) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        };
        let pendings: [&[u8]; 9] = [
            &[],
            &[0xC3],
            &[0xE6],
            &[0xE6, 0x9D],
            &[0xF0, 0x9F],
            &[0xF0, 0x9F, 0x8E],
            &[0xE0],
            &[0xED],
            &[0xF4],
        ];
        for pending in pendings {
            let banned: HashSet<u32> = g.banned_after(pending).iter().copied().collect();
            for (id, b) in m.bytes.iter().enumerate() {
                let id = id as u32;
                let ok = if id == eos {
                    pending.is_empty()
                } else {
                    valid_prefix(&[pending, b.as_slice()].concat())
                };
                assert_eq!(!banned.contains(&id), ok, "{pending:x?} then {b:x?}");
            }
            assert!(
                banned.len() < m.bytes.len(),
                "{pending:x?}: nothing allowed"
            );
        }
        // Lone continuation bytes and bytes that never occur in UTF-8 are banned at a start.
        let start = g.banned_after(&[]);
        for byte in [0x80u8, 0xBF, 0xC0, 0xF5, 0xFF] {
            let id = m.bytes.iter().position(|b| b == &[byte]).unwrap() as u32;
            assert!(start.contains(&id), "{byte:x}");
        }
        // The same table is handed out again.
        assert!(Arc::ptr_eq(&g, &t.utf8_guard().unwrap()));
    }

    #[test]
    fn token_byte_lens_add_up_to_the_text_for_char_and_bpe() {
        for kind in [TokenizerKind::Char, TokenizerKind::Bpe] {
            let t = train(kind, NON_ASCII);
            let ids = t.encode(NON_ASCII).unwrap();
            let lens = t.token_byte_lens(&ids).unwrap();
            assert_eq!(lens.iter().sum::<usize>(), NON_ASCII.len(), "{kind:?}");
            assert!(t.token_byte_lens(&[u32::MAX]).is_none());
        }
        let w = train(TokenizerKind::Word, PROSE);
        assert!(w.token_byte_lens(&[0]).is_none());
    }

    #[test]
    fn char_vocab_is_sorted_unique_chars() {
        let t = train(TokenizerKind::Char, "banana\n");
        assert_eq!(t.kind(), TokenizerKind::Char);
        assert_eq!(t.vocab_size(), 4);
        assert_eq!(t.encode("abn\n").unwrap(), vec![1, 2, 3, 0]);
        assert_eq!(t.eos_id(), None);
    }

    #[test]
    fn char_round_trip_non_ascii_and_multiline() {
        let text = format!("{NON_ASCII}{PROSE}");
        let t = train(TokenizerKind::Char, &text);
        for s in ["naïve — 東京\n", NON_ASCII, PROSE, "🎉\n\n  東"] {
            let ids = t.encode(s).unwrap();
            assert_eq!(ids.len(), s.chars().count());
            assert_eq!(t.decode(&ids), s);
        }
    }

    #[test]
    fn char_unknown_chars_are_listed_sorted_unique() {
        let t = train(TokenizerKind::Char, "abc ");
        match t.encode("a zyz b") {
            Err(Error::UnknownChars(cs)) => assert_eq!(cs, vec!['y', 'z']),
            other => panic!("expected UnknownChars, got {other:?}"),
        }
        match t.encode_prime("a 東z", UnknownPolicy::Error) {
            Err(Error::UnknownChars(cs)) => assert_eq!(cs, vec!['z', '東']),
            other => panic!("expected UnknownChars, got {other:?}"),
        }
        let msg = t.encode("xa").unwrap_err().to_string();
        assert!(msg.contains("'x'"), "{msg}");
    }

    #[test]
    fn char_skip_policy_drops_and_reports() {
        let t = train(TokenizerKind::Char, "abc ");
        let (ids, unknown) = t.encode_prime("a zyz b", UnknownPolicy::Skip).unwrap();
        assert_eq!(t.decode(&ids), "a  b");
        assert_eq!(unknown, vec!["y".to_string(), "z".to_string()]);
        let (ids, unknown) = t.encode_prime("cab", UnknownPolicy::Error).unwrap();
        assert_eq!(ids, vec![3, 1, 2]);
        assert!(unknown.is_empty());
    }

    #[test]
    fn char_astral_chars_work() {
        let t = train(TokenizerKind::Char, "a🎉b😀");
        let ids = t.encode("😀a🎉").unwrap();
        assert_eq!(t.decode(&ids), "😀a🎉");
        assert_eq!(t.vocab_size(), 4);
    }

    #[test]
    fn word_round_trip_normalised_text() {
        let t = train(TokenizerKind::Word, PROSE);
        let ids = t.encode(PROSE).unwrap();
        assert!(!ids.contains(&t.token_id(UNK_TOKEN).unwrap()));
        assert_eq!(t.decode(&ids), PROSE);
        // Tokens are words and punctuation, not whole phrases.
        let ids = t.encode("the cat.").unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(t.token_display(ids[2]), ".");
        // Non-ASCII and multiple lines.
        let t = train(TokenizerKind::Word, NON_ASCII);
        assert_eq!(t.decode(&t.encode(NON_ASCII).unwrap()), NON_ASCII);
        let s = "naïve — 東京";
        assert_eq!(t.decode(&t.encode(s).unwrap()), s);
    }

    #[test]
    fn word_line_structure_and_spacing_normalised() {
        let t = train(TokenizerKind::Word, PROSE);
        let eol = t.token_id(EOL_TOKEN).unwrap();
        let ids = t.encode("the cat\n\nthe   dog\n").unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == eol).count(), 3);
        assert_eq!(t.decode(&ids), "the cat\n\nthe dog\n");
        assert_eq!(t.token_display(eol), "⏎");
    }

    #[test]
    fn word_oov_becomes_unk_and_is_reported() {
        let t = train(TokenizerKind::Word, PROSE);
        let unk = t.token_id(UNK_TOKEN).unwrap();
        let (ids, unknown) = t
            .encode_prime(
                "the zebra saw the aardvark and the zebra",
                UnknownPolicy::Error,
            )
            .unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == unk).count(), 3);
        assert_eq!(unknown, vec!["aardvark".to_string(), "zebra".to_string()]);
        assert_eq!(t.decode(&ids), "the <unk> saw the <unk> and the <unk>");
        let corpus_ids = t.encode("the zebra").unwrap();
        assert_eq!(corpus_ids, vec![t.token_id("the").unwrap(), unk]);
    }

    #[test]
    fn word_literal_unk_is_one_token_and_the_earlier_pattern_still_loads() {
        // A corpus already tokenized Penn Treebank style, with `<unk>` for rare words.
        let ptb = "the <unk> said the market fell <unk> points\nthe <unk> rose\n".repeat(20);
        let t = train(TokenizerKind::Word, &ptb);
        let unk = t.token_id(UNK_TOKEN).unwrap();
        assert_eq!(
            (t.token_id("<"), t.token_id("unk"), t.token_id(">")),
            (None, None, None)
        );
        let shown: Vec<String> = (0..t.vocab_size() as u32)
            .map(|i| t.token_display(i))
            .collect();
        assert_eq!(
            shown.iter().filter(|s| *s == UNK_TOKEN).count(),
            1,
            "{shown:?}"
        );
        let ids = t.encode("the <unk> said").unwrap();
        assert_eq!(
            ids,
            vec![t.token_id("the").unwrap(), unk, t.token_id("said").unwrap()]
        );
        assert_eq!(t.decode(&ids), "the <unk> said");
        let (pids, unknown) = t
            .encode_prime("the <unk> said", UnknownPolicy::Error)
            .unwrap();
        assert_eq!((pids, unknown), (ids, Vec::<String>::new()));

        // A tokenizer saved with the earlier pattern loads and splits as it was trained.
        let mut v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        v["hf"]["pre_tokenizer"]["pattern"]["Regex"] = serde_json::json!(WORD_PATTERN_V1);
        let old = Tokenizer::from_json(&v.to_string()).unwrap();
        assert_eq!(old.encode("the <unk> said").unwrap().len(), 5);
    }

    #[test]
    fn word_specials_and_eos() {
        let t = train(TokenizerKind::Word, PROSE);
        assert_eq!(t.token_id(UNK_TOKEN), Some(0));
        assert_eq!(t.eos_id(), Some(1));
        assert_eq!(t.token_id(EOL_TOKEN), Some(2));
        // <eos> decodes to nothing; literal "<eos>" in text is not the special token.
        let the = t.token_id("the").unwrap();
        assert_eq!(t.decode(&[the, 1, the]), "the the");
        assert!(!t.encode("the <eos> the").unwrap().contains(&1));
    }

    #[test]
    fn word_min_frequency_and_cap() {
        let text = "a a a a b b b c c d\n";
        let o = TokenizerOptions {
            vocab_size: 100,
            min_frequency: 2,
        };
        let t = Tokenizer::train(TokenizerKind::Word, text, &o).unwrap();
        assert_eq!(t.vocab_size(), 3 + 3); // a b c
        assert!(t.token_id("d").is_none());
        let o = TokenizerOptions {
            vocab_size: 5,
            min_frequency: 1,
        };
        let t = Tokenizer::train(TokenizerKind::Word, text, &o).unwrap();
        assert_eq!(t.vocab_size(), 5); // specials + the two most frequent
        assert!(t.token_id("a").is_some() && t.token_id("b").is_some());
        assert!(t.token_id("c").is_none());
        let o = TokenizerOptions {
            vocab_size: 3,
            min_frequency: 1,
        };
        assert!(Tokenizer::train(TokenizerKind::Word, text, &o).is_err());
        let o = TokenizerOptions {
            vocab_size: 100,
            min_frequency: 50,
        };
        assert!(Tokenizer::train(TokenizerKind::Word, text, &o).is_err());
    }

    #[test]
    fn bpe_round_trip_exact_any_text() {
        let text = format!("{PROSE}{NON_ASCII}{PROSE}");
        let t = train(TokenizerKind::Bpe, &text);
        assert_eq!(t.eos_id(), Some(0));
        for s in [
            PROSE,
            NON_ASCII,
            "naïve — 東京",
            "  two  spaces,\ttab\r\n\n\nand unseen: Ω≈ç√ 日本語 \u{1F600}  ",
            "<eos> literal <unk>",
            "",
        ] {
            let ids = t.encode(s).unwrap();
            assert!(!ids.contains(&0), "encoding must never produce <eos>");
            assert_eq!(t.decode(&ids), s);
            let (pids, unknown) = t.encode_prime(s, UnknownPolicy::Error).unwrap();
            assert_eq!(pids, ids);
            assert!(unknown.is_empty());
        }
        // Merges were learnt: fewer tokens than bytes.
        assert!(t.encode(PROSE).unwrap().len() < PROSE.len() / 2);
    }

    #[test]
    fn bpe_decode_matches_hf_decoder() {
        let t = train(TokenizerKind::Bpe, &format!("{PROSE}{NON_ASCII}"));
        let Inner::Bpe(m) = &*t.inner else {
            panic!("not bpe")
        };
        let ids = t.encode(NON_ASCII).unwrap();
        assert_eq!(m.hf.decode(&ids, true).unwrap(), t.decode(&ids));
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let ours: HashSet<char> = byte_chars().into_iter().collect();
        assert_eq!(alphabet, ours);
    }

    /// Varied text for checking our fast paths against the `tokenizers` pipeline.
    const MIXED: &str = "It's what they'll do: 12 345 x2 3.14 — don't!!  \t spaces   here \r\n\
        \n\n  indented\tline with 'quotes' and \"more\" ünïcödé 東京 🎉🎉 \u{1F600}x \
        ¿qué? (a) [b] {c} a--b a_b 'tis I'd we've they're I'm\n  \n trailing   ";

    #[test]
    fn word_fast_paths_match_hf_pipeline() {
        let text = format!("{PROSE}{NON_ASCII}{MIXED}");
        let o = TokenizerOptions {
            vocab_size: 60,
            min_frequency: 1,
        };
        let ours = Tokenizer::train(TokenizerKind::Word, &text, &o).unwrap();
        // Reference: train with `TokenizerImpl::train`.
        let model = WordLevel::builder()
            .unk_token(UNK_TOKEN.to_string())
            .build()
            .unwrap();
        let mut hf = WordHf::new(model);
        hf.with_pre_tokenizer(Some(WordModel::pre_tokenizer().unwrap()));
        let mut trainer = WordLevelTrainer::builder()
            .vocab_size(o.vocab_size)
            .min_frequency(o.min_frequency)
            .show_progress(false)
            .special_tokens(
                [UNK_TOKEN, EOS_TOKEN, EOL_TOKEN]
                    .iter()
                    .map(|t| AddedToken::from(*t, true))
                    .collect(),
            )
            .build()
            .unwrap();
        hf.train(&mut trainer, text.lines()).unwrap();
        let reference =
            Tokenizer::from_inner(Inner::Word(Box::new(WordModel::from_hf(hf).unwrap()))).unwrap();
        assert_eq!(ours.to_json(), reference.to_json());
        let Inner::Word(m) = &*ours.inner else {
            panic!("not word")
        };
        let mut expected = Vec::new();
        for line in text.split_inclusive('\n') {
            let content = line.strip_suffix('\n').unwrap_or(line);
            expected.extend_from_slice(m.hf.encode(content, false).unwrap().get_ids());
            if line.ends_with('\n') {
                expected.push(m.eol);
            }
        }
        assert_eq!(ours.encode(&text).unwrap(), expected);
        assert!(expected.contains(&m.unk));
    }

    #[test]
    fn bpe_fast_paths_match_hf_pipeline() {
        let text = format!("{PROSE}{NON_ASCII}{MIXED}").repeat(2);
        let o = TokenizerOptions {
            vocab_size: 400,
            min_frequency: 2,
        };
        let ours = Tokenizer::train(TokenizerKind::Bpe, &text, &o).unwrap();
        let mut hf = BpeHf::new(BPE::default());
        hf.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        hf.with_decoder(Some(ByteLevel::new(false, true, true)));
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(o.vocab_size)
            .min_frequency(o.min_frequency)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        hf.train(&mut trainer, text.split_inclusive('\n')).unwrap();
        let reference =
            Tokenizer::from_inner(Inner::Bpe(Box::new(BpeModel::from_hf(hf).unwrap()))).unwrap();
        assert_eq!(ours.to_json(), reference.to_json());
        let Inner::Bpe(m) = &*ours.inner else {
            panic!("not bpe")
        };
        let probe = format!("{MIXED}{PROSE} unseen: Ωμέγα ñandú\n\n   x");
        let mut expected = Vec::new();
        for chunk in probe.split_inclusive('\n') {
            expected.extend_from_slice(m.hf.encode(chunk, false).unwrap().get_ids());
        }
        assert_eq!(ours.encode(&probe).unwrap(), expected);
        assert_eq!(ours.decode(&expected), probe);
    }

    #[test]
    fn ascii_scanner_splits_as_the_gpt2_regex() {
        use rand::{Rng, SeedableRng};
        let splitter = ByteLevelSplitter::new().unwrap();
        let by_regex = |text: &str| -> Vec<String> {
            let mut v = Vec::new();
            let mut prev = 0;
            for (a, b) in splitter.regex.find_iter(text) {
                if a > prev {
                    v.push(text[prev..a].to_string());
                }
                if b > a {
                    v.push(text[a..b].to_string());
                }
                prev = b;
            }
            if prev < text.len() {
                v.push(text[prev..].to_string());
            }
            v
        };
        let by_scanner = |text: &str| -> Vec<String> {
            let mut v = Vec::new();
            split_ascii_gpt2(text, |p| v.push(p.to_string()));
            v
        };
        let mut cases: Vec<String> = [
            "",
            " ",
            "  ",
            "a",
            " a",
            "  a",
            "\t a",
            " \ta",
            "it's",
            "'s",
            "''s",
            " 's",
            "we're 'll",
            "'S 'LL 'Re",
            "x  \n",
            "end  ",
            "3.14, 1,000 and 10:30!",
            "a\x0b\x0cb",
            "\x1c\x1d x",
            "hello   world\n",
            "(\"quoted\")...",
            "a1b2 3c",
            "__init__",
            " --flag=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every ASCII byte, alone and after a space.
        for c in 1u8..128 {
            cases.push((c as char).to_string());
            cases.push(format!(" {}x", c as char));
        }
        let alphabet: Vec<char> = "'' \t\n\r\x0b\x0c\x1fstrevlmdSTRELD09xX.,;!?-_\"()"
            .chars()
            .chain((1u8..128).map(|b| b as char))
            .collect();
        let mut rng = rand_pcg::Pcg32::seed_from_u64(5);
        for _ in 0..3000 {
            let n = rng.random_range(0..24);
            cases.push(
                (0..n)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect(),
            );
        }
        for text in &cases {
            assert_eq!(by_scanner(text), by_regex(text), "{text:?}");
        }
    }

    #[test]
    fn encoding_in_parts_equals_whole() {
        let text = format!("{PROSE}{NON_ASCII}{MIXED}").repeat(3);
        for kind in [TokenizerKind::Word, TokenizerKind::Bpe] {
            let t = train(kind, &text);
            let whole = t.encode(&text).unwrap();
            for parts in [2, 3, 7] {
                let split = match &*t.inner {
                    Inner::Word(m) => encode_in_parts(&text, parts, |p| m.encode(p, None)),
                    Inner::Bpe(m) => encode_in_parts(&text, parts, |p| m.encode(p)),
                    Inner::Char(_) => unreachable!(),
                };
                assert_eq!(split.unwrap(), whole, "{kind} in {parts} parts");
            }
        }
        // No newline at all: one part does everything.
        let t = train(TokenizerKind::Bpe, "abc abc abc");
        let Inner::Bpe(m) = &*t.inner else {
            panic!("not bpe")
        };
        let ids = encode_in_parts("abc abc", 4, |p| m.encode(p)).unwrap();
        assert_eq!(t.decode(&ids), "abc abc");
    }

    #[test]
    fn bpe_stream_decoder_equals_full_decode() {
        let t = train(TokenizerKind::Bpe, PROSE);
        // Non-ASCII text never seen in training: multi-byte chars are split over byte tokens.
        let s = "naïve — 東京 🎉 çà\n";
        let ids = t.encode(s).unwrap();
        let mut dec = t.stream_decoder();
        let mut streamed = String::new();
        let mut empty_pushes = 0;
        for &id in &ids {
            let piece = dec.push(id);
            empty_pushes += piece.is_empty() as usize;
            streamed.push_str(&piece);
        }
        streamed.push_str(&dec.finish());
        assert_eq!(streamed, s);
        assert_eq!(streamed, t.decode(&ids));
        assert!(empty_pushes > 0, "mid-UTF-8 tokens should yield nothing");
        // A truncated sequence is flushed as U+FFFD, like the full decode.
        let cut = &ids[..ids.len() - 1];
        let cut_ids: Vec<u32> = t.encode("東").unwrap()[..1].to_vec();
        let mut dec = t.stream_decoder();
        let mut out: String = cut_ids.iter().map(|&i| dec.push(i)).collect();
        out.push_str(&dec.finish());
        assert_eq!(out, "\u{FFFD}");
        assert_eq!(t.decode(&cut_ids), "\u{FFFD}");
        let mut dec = t.stream_decoder();
        let mut out: String = cut.iter().map(|&i| dec.push(i)).collect();
        out.push_str(&dec.finish());
        assert_eq!(out, t.decode(cut));
    }

    #[test]
    fn word_and_char_stream_decoder_equal_full_decode() {
        for kind in [TokenizerKind::Word, TokenizerKind::Char] {
            let t = train(kind, PROSE);
            let ids = t.encode(PROSE).unwrap();
            let mut dec = t.stream_decoder();
            let mut out: String = ids.iter().map(|&i| dec.push(i)).collect();
            out.push_str(&dec.finish());
            assert_eq!(out, t.decode(&ids), "{kind}");
        }
    }

    #[test]
    fn bpe_vocab_cap_respected() {
        let text = PROSE.repeat(3);
        for cap in [257, 300, 320] {
            let o = TokenizerOptions {
                vocab_size: cap,
                min_frequency: 1,
            };
            let t = Tokenizer::train(TokenizerKind::Bpe, &text, &o).unwrap();
            assert_eq!(t.vocab_size(), cap);
            let ids = t.encode(&text).unwrap();
            assert!(ids.iter().all(|&i| (i as usize) < cap));
            assert_eq!(t.decode(&ids), text);
        }
        let o = TokenizerOptions {
            vocab_size: 256,
            min_frequency: 1,
        };
        assert!(Tokenizer::train(TokenizerKind::Bpe, &text, &o).is_err());
    }

    #[test]
    fn training_is_deterministic() {
        let text = format!("{PROSE}{NON_ASCII}").repeat(2);
        for kind in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
            let a = train(kind, &text).to_json();
            let b = train(kind, &text).to_json();
            assert_eq!(a, b, "{kind}");
        }
    }

    #[test]
    fn json_round_trip_all_kinds() {
        let text = format!("{PROSE}{NON_ASCII}");
        for kind in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
            let t = train(kind, &text);
            let json = t.to_json();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["kind"], kind.name());
            let u = Tokenizer::from_json(&json).unwrap();
            assert_eq!(u.kind(), kind);
            assert_eq!(u.vocab_size(), t.vocab_size());
            assert_eq!(u.to_json(), json);
            assert_eq!(u.encode(&text).unwrap(), t.encode(&text).unwrap());
            assert_eq!(
                u.decode(&u.encode(&text).unwrap()),
                t.decode(&t.encode(&text).unwrap())
            );
            assert_eq!(u.eos_id(), t.eos_id());
        }
    }

    fn expect_tok_err(json: &str) -> String {
        match Tokenizer::from_json(json) {
            Err(Error::Tokenizer(msg)) => msg,
            other => panic!("expected Error::Tokenizer for {json:.80}, got {other:?}"),
        }
    }

    #[test]
    fn from_json_rejects_damage() {
        for bad in [
            "",
            "garbage",
            "{}",
            "[1,2]",
            r#"{"kind":"morse"}"#,
            r#"{"kind":"char"}"#,
        ] {
            expect_tok_err(bad);
        }
        let msg = expect_tok_err(r#"{"kind":"char","chars":["a","b","a"]}"#);
        assert!(msg.contains("'a'"), "{msg}");
        expect_tok_err(r#"{"kind":"char","chars":[]}"#);
        expect_tok_err(r#"{"kind":"char","chars":["ab"]}"#);

        for kind in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
            let json = train(kind, PROSE).to_json();
            for cut in [json.len() / 3, json.len() / 2, json.len() - 1] {
                expect_tok_err(&json[..cut]);
            }
        }
    }

    #[test]
    fn from_json_rejects_inconsistent_vocab() {
        // Word: give "cat" the id of "dog" (duplicate id, so a gap).
        let t = train(TokenizerKind::Word, PROSE);
        let mut v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        let dog = v["hf"]["model"]["vocab"]["dog"].clone();
        v["hf"]["model"]["vocab"]["cat"] = dog;
        let msg = expect_tok_err(&v.to_string());
        assert!(msg.contains("vocabulary"), "{msg}");
        // Word: no <eol> token.
        let renamed = t.to_json().replace(EOL_TOKEN, "<xyz>");
        let msg = expect_tok_err(&renamed);
        assert!(msg.contains(EOL_TOKEN), "{msg}");

        // BPE: the token of byte 0x00 gets an id out of range.
        let t = train(TokenizerKind::Bpe, PROSE);
        let mut v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        let vocab = v["hf"]["model"]["vocab"].as_object_mut().unwrap();
        assert!(vocab.contains_key("Ā"));
        vocab.insert("Ā".to_string(), serde_json::json!(100_000));
        expect_tok_err(&v.to_string());
        // Word: another split pattern (here one that drops every digit) is refused.
        let t = train(TokenizerKind::Word, PROSE);
        let mut v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        let pattern = v["hf"]["pre_tokenizer"]["pattern"]["Regex"].clone();
        assert_eq!(pattern, serde_json::json!(WORD_PATTERN), "{v}");
        v["hf"]["pre_tokenizer"]["pattern"]["Regex"] = serde_json::json!(r"[a-z]+|[^\w\s]");
        let msg = expect_tok_err(&v.to_string());
        assert!(msg.contains("pattern"), "{msg}");

        // BPE: prefix space switched on.
        let t = train(TokenizerKind::Bpe, PROSE);
        let mut v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        v["hf"]["pre_tokenizer"]["add_prefix_space"] = serde_json::json!(true);
        expect_tok_err(&v.to_string());
    }

    #[test]
    fn token_display_makes_whitespace_visible() {
        let t = train(TokenizerKind::Char, "a b\n\tc");
        let show = |c: char| t.token_display(t.token_id(&c.to_string()).unwrap());
        assert_eq!(show(' '), "␣");
        assert_eq!(show('\n'), "⏎");
        assert_eq!(show('\t'), "⇥");
        assert_eq!(show('a'), "a");
        assert_eq!(t.token_display(999), "<invalid id 999>");

        let t = train(TokenizerKind::Bpe, "hello world\nhello world\n");
        assert_eq!(t.token_display(0), EOS_TOKEN);
        let ids = t.encode(" world").unwrap();
        let shown: String = ids.iter().map(|&i| t.token_display(i)).collect();
        assert_eq!(shown, "␣world");
        // A lone lead byte of a multi-byte char shows as hex.
        let ids = t.encode("東").unwrap();
        assert_eq!(t.token_display(ids[0]), "\\xE6");
    }

    #[test]
    fn empty_training_text_is_an_error() {
        for kind in [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe] {
            assert!(matches!(
                Tokenizer::train(kind, "", &opts(kind)),
                Err(Error::Tokenizer(_))
            ));
        }
    }

    #[test]
    fn out_of_range_ids_decode_to_replacement() {
        for kind in [TokenizerKind::Char, TokenizerKind::Bpe] {
            let t = train(kind, PROSE);
            let v = t.vocab_size() as u32;
            assert_eq!(t.decode(&[v + 7]), "\u{FFFD}", "{kind}");
        }
    }

    #[test]
    fn word_tokenizer_from_a_given_vocabulary() {
        let words: Vec<String> = ["<unk>", "the", "cat", "<eol>", ".", "<eos>"]
            .iter()
            .map(|w| w.to_string())
            .collect();
        let t = Tokenizer::word_from_vocab(&words).unwrap();
        assert_eq!(t.kind(), TokenizerKind::Word);
        assert_eq!(t.vocab_size(), 6);
        assert_eq!(
            t.encode("the cat.\nthe dog\n").unwrap(),
            vec![1, 2, 4, 3, 1, 0, 3]
        );
        assert_eq!(t.eos_id(), Some(5));
        // It survives the checkpoint's JSON round trip with the same ids.
        let back = Tokenizer::from_json(&t.to_json()).unwrap();
        assert_eq!(back.encode("cat the").unwrap(), vec![2, 1]);
        let err = |ws: &[&str]| {
            let v: Vec<String> = ws.iter().map(|w| w.to_string()).collect();
            Tokenizer::word_from_vocab(&v).unwrap_err().to_string()
        };
        assert!(err(&["<unk>", "<eos>", "the"]).contains("no <eol>"));
        assert!(err(&["<unk>", "<eos>", "<eol>", "a", "a"]).contains("repeats entry 3"));
        assert!(err(&["<unk>", "<eos>", "<eol>", "a b"]).contains("whitespace"));
        assert!(err(&["<unk>", "<eos>", "<eol>", ""]).contains("empty"));
        assert!(Tokenizer::word_splits_whole("don't"));
        assert!(Tokenizer::word_splits_whole("3.14"));
        assert!(!Tokenizer::word_splits_whole("'s"));
        assert!(!Tokenizer::word_splits_whole("U.S."));
        assert!(Tokenizer::word_splits_whole("<unk>"));
    }
}
