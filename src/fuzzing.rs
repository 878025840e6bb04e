//! The fuzz targets' bodies (`fuzz/fuzz_targets/*` call these), kept in the library so that
//! every build compiles them and `tests/fuzz_replay.rs` replays their seed and crash corpora
//! in CI. Each takes arbitrary bytes and must never panic (except on a broken invariant,
//! which is the bug being looked for), abort or allocate beyond proportion to its input.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::checkpoint::format::CheckpointFile;
use crate::generate::{Session, StreamSpec};
use crate::nn::model::ModelConfig;
use crate::tokenizer::{Tokenizer, TokenizerKind, TokenizerOptions, UnknownPolicy};
use crate::train::corpus::Corpus;
use crate::train::{TrainConfig, Trainer};

const TEXT: &str = "ROMEO: O, she doth teach the torches to burn bright!\n\
JULIET: Good night, good night! Parting is such sweet sorrow, 東京 1,234.5\n";

/// Arbitrary bytes as a checkpoint file: parsing never panics, and whatever is accepted
/// re-encodes to bytes that load back and re-encode identically.
pub fn checkpoint_bytes(data: &[u8]) {
    let path = Path::new("fuzz-input.safetensors");
    if let Ok(cp) = CheckpointFile::from_bytes(data, path) {
        let bytes = cp
            .to_bytes()
            .expect("an accepted checkpoint must re-encode");
        let again = CheckpointFile::from_bytes(&bytes, path).expect("re-encoded bytes must load");
        assert_eq!(again.to_bytes().expect("re-encode"), bytes);
    }
}

/// Small full (resumable) checkpoints, one per tokenizer kind, whose metadata the fuzzer
/// replaces.
fn bases() -> &'static [CheckpointFile] {
    static BASES: OnceLock<Vec<CheckpointFile>> = OnceLock::new();
    BASES.get_or_init(|| {
        let text = TEXT.repeat(4);
        let corpus = Corpus {
            path: "fuzz-corpus.txt".into(),
            text: text.clone(),
            fingerprint: "0".repeat(64),
        };
        [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe]
            .into_iter()
            .map(|kind| {
                let opts = TokenizerOptions {
                    vocab_size: 300,
                    min_frequency: 1,
                };
                let tok = Tokenizer::train(kind, &text, &opts).expect("fuzz base tokenizer");
                let model = ModelConfig {
                    vocab: 0,
                    embed: 4,
                    hidden: 4,
                    layers: 1,
                    dropout: 0.0,
                    tie_weights: false,
                };
                let cfg = TrainConfig {
                    batch: 2,
                    seq: 4,
                    val_fraction: 0.0,
                    ..TrainConfig::default()
                };
                Trainer::new(&corpus, tok, model, cfg)
                    .and_then(|t| t.checkpoint())
                    .expect("fuzz base checkpoint")
            })
            .collect()
    })
}

/// The metadata of a valid full checkpoint of each kind (seeds for [`checkpoint_meta`]: the
/// byte selecting the base, then the JSON).
pub fn checkpoint_meta_seeds() -> Vec<Vec<u8>> {
    bases()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut v = vec![i as u8];
            v.extend_from_slice(b.meta.as_bytes());
            v
        })
        .collect()
}

/// The first byte picks a base checkpoint (char, word, BPE); the rest is its metadata JSON.
/// The file (with a valid checksum) goes through every loader: inference, resume, and a few
/// generated tokens when it loads.
pub fn checkpoint_meta(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(meta) = std::str::from_utf8(rest) else {
        return;
    };
    let mut f = bases()[which as usize % 3].clone();
    f.meta = meta.to_string();
    let Ok(bytes) = f.to_bytes() else {
        return; // not JSON: refused before any file exists
    };
    let path = Path::new("fuzz-meta.safetensors");
    if let Ok(lm) = crate::checkpoint::load_model_bytes(&bytes, path) {
        let mut s = Session::new(Arc::new(lm.model), lm.tokenizer).expect("vocabularies match");
        let spec = StreamSpec {
            max_tokens: Some(4),
            ..StreamSpec::new(Vec::new())
        };
        s.start(&spec).expect("a default stream starts");
        while s.is_running() {
            s.step();
        }
    }
    let _ = crate::train::checkpoint::load_resumable_bytes(&bytes, path);
}

/// The JSON of a tokenizer of each kind (seeds for [`tokenizer_json`]).
pub fn tokenizer_json_seeds() -> Vec<Vec<u8>> {
    [TokenizerKind::Char, TokenizerKind::Word, TokenizerKind::Bpe]
        .into_iter()
        .map(|kind| {
            let opts = TokenizerOptions {
                vocab_size: 300,
                min_frequency: 1,
            };
            let t = Tokenizer::train(kind, TEXT, &opts).expect("seed tokenizer");
            t.to_json().into_bytes()
        })
        .collect()
}

/// Arbitrary bytes as tokenizer JSON: loading never panics; a tokenizer that loads encodes,
/// decodes (whole and streaming) and round-trips through its JSON.
pub fn tokenizer_json(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = Tokenizer::from_json(s) else {
        return;
    };
    if let Ok(ids) = t.encode(TEXT) {
        let _ = t.decode(&ids);
        let mut d = t.stream_decoder();
        for &id in &ids {
            d.push(id);
        }
        d.finish();
    }
    let _ = t.encode_prime(TEXT, UnknownPolicy::Skip);
    for id in 0..t.vocab_size().min(64) as u32 {
        t.token_display(id);
    }
    let again = Tokenizer::from_json(&t.to_json()).expect("a loaded tokenizer round-trips");
    assert_eq!(again.vocab_size(), t.vocab_size());
}
