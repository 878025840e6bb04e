//! Import of a plain PyTorch LSTM language model (`quill import`): a safetensors file with
//! the state dict of `nn.Embedding` → `nn.LSTM` → `nn.Linear` (pytorch/examples'
//! word_language_model names, or the other names of [`NAME_TABLE`]) plus its vocabulary, one
//! word per line in id order, made into a quill model and word tokenizer.
//!
//! The file is untrusted input: its header is bounds-checked before it is parsed
//! ([`format::foreign_tensors`]), every tensor's name is mapped and its shape checked
//! against the architecture the embedding and the LSTM imply, and the model's sizes are
//! validated, all before any tensor is converted or allocated; a missing, misshapen or
//! unknown tensor is an error naming it. Values must be finite.
//!
//! Vocabulary: quill's word tokenizer needs `<unk>`, `<eos>` (end of text) and `<eol>` (end
//! of line). word_language_model marks line ends with `<eos>`, so that entry is renamed
//! `<eol>` ([`ImportOptions::eol_token`]); specials still missing are appended after the
//! model's words with zero embedding and output rows and an output bias of
//! [`ADDED_TOKEN_BIAS`], so the model never predicts them and its probabilities for its own
//! words are unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use sha2::{Digest, Sha256};

use super::format::{self, CheckpointFile, ForeignTensor};
use super::{CheckpointKind, CorpusInfo, ModelMeta};
use crate::error::{Error, Result};
use crate::nn::model::{Model, ModelConfig, Params};
use crate::tokenizer::{Tokenizer, EOL_TOKEN, EOS_TOKEN, UNK_TOKEN};
use crate::train::checkpoint::{self as train_checkpoint, TrainMeta};
use crate::train::config::{Progress, TrainConfig};
use crate::train::optim::AdamConfig;

/// Source names of the embedding, the output weight and the output bias (first column: the
/// quill name; then the accepted source names, word_language_model's first). A leading
/// `module.` (DistributedDataParallel) or `model.` on every name is dropped first.
pub const NAME_TABLE: &[(&str, &[&str])] = &[
    (
        "embed.weight",
        &["encoder.weight", "embed.weight", "embedding.weight"],
    ),
    (
        "out.weight",
        &["decoder.weight", "out.weight", "fc.weight", "linear.weight"],
    ),
    (
        "out.bias",
        &["decoder.bias", "out.bias", "fc.bias", "linear.bias"],
    ),
];

/// Module names accepted for the `nn.LSTM`: `{prefix}{kind}_l{k}` becomes `rnn.{kind}_l{k}`.
pub const LSTM_PREFIXES: &[&str] = &["rnn.", "lstm."];

/// The `nn.LSTM` tensor kinds of each layer.
pub const LSTM_KINDS: &[&str] = &["weight_ih", "weight_hh", "bias_ih", "bias_hh"];

/// Output bias of special tokens added to the vocabulary: far enough below any logit that
/// their probability is zero in f32.
pub const ADDED_TOKEN_BIAS: f32 = -1e4;

/// Largest vocabulary file read (bytes).
pub const MAX_VOCAB_FILE_BYTES: u64 = 1 << 30;

/// How to import.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportOptions {
    /// The vocabulary entry that marks a line end in the source model, renamed `<eol>`
    /// (word_language_model: `<eos>`); `None` renames nothing. An explicitly given entry
    /// that is not in the vocabulary is an error; the default is skipped when absent.
    pub eol_token: Option<String>,
    /// Whether `eol_token` was given by the user (then it must exist).
    pub eol_token_given: bool,
    /// Dropout recorded for further training.
    pub dropout: f32,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            eol_token: Some(EOS_TOKEN.to_string()),
            eol_token_given: false,
            dropout: 0.0,
        }
    }
}

/// An imported model and what the import did.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The model (vocabulary V = the source's plus the added specials).
    pub model: Model<f32>,
    /// The word tokenizer built from the vocabulary.
    pub tokenizer: Tokenizer,
    /// (source name, quill name) of every tensor taken, in quill's order.
    pub mapping: Vec<(String, String)>,
    /// Element type of the source tensors.
    pub dtype: Dtype,
    /// The source's line-end entry renamed `<eol>`, if any.
    pub renamed_eol: Option<String>,
    /// Special tokens appended to the vocabulary.
    pub added: Vec<String>,
    /// Vocabulary entries quill's word splitter never yields whole (decodable, never
    /// produced by encoding text), in id order.
    pub not_whole: Vec<String>,
    /// Where the weights came from.
    pub source: PathBuf,
    /// SHA-256 of the weights file.
    pub source_sha256: String,
}

fn err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// What a source tensor name maps to.
fn classify(name: &str) -> Option<(String, Option<usize>)> {
    for (quill, sources) in NAME_TABLE {
        if sources.contains(&name) {
            return Some((quill.to_string(), None));
        }
    }
    let rest = LSTM_PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
    let (kind, layer) = rest.rsplit_once("_l")?;
    if !LSTM_KINDS.contains(&kind) || layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let k: usize = layer.parse().ok()?;
    Some((format!("rnn.{kind}_l{k}"), Some(k)))
}

/// Why a name no entry of the table maps is refused, for the message.
fn unsupported(name: &str) -> String {
    if name.ends_with("_reverse") {
        format!(
            "{name:?}: bidirectional LSTMs cannot be imported (quill's LSTM is one-directional)"
        )
    } else if name.contains("weight_hr") {
        format!("{name:?}: LSTMs with projections (proj_size) cannot be imported")
    } else {
        format!("{name:?} is not a tensor of an Embedding → LSTM → Linear model")
    }
}

/// The data of `t` as f32 (from F64, F32, F16 or BF16), refusing NaN and infinity.
fn to_f32(name: &str, t: &ForeignTensor<'_>, path: &Path) -> Result<Vec<f32>> {
    let v: Vec<f32> = match t.dtype {
        Dtype::F32 => t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => t
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::F16 => t
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => t
            .data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(err(
                path,
                format!("tensor {name:?} has dtype {other}, which cannot be imported"),
            ))
        }
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(err(
            path,
            format!("tensor {name:?} holds a non-finite value (element {i}) in f32"),
        ));
    }
    Ok(v)
}

fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

/// Reads the vocabulary file: one entry per line (a final newline is optional, `\r\n`
/// accepted), each non-empty, without whitespace, and distinct. Errors name the line.
pub fn read_vocab(path: &Path) -> Result<Vec<String>> {
    let io = |e| Error::io(path, e);
    let md = std::fs::metadata(path).map_err(io)?;
    if !md.is_file() {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            msg: "is not a regular file".into(),
        });
    }
    if md.len() > MAX_VOCAB_FILE_BYTES {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            msg: format!(
                "is {} bytes, more than the {} allowed for a vocabulary",
                md.len(),
                MAX_VOCAB_FILE_BYTES
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Corpus {
        path: path.to_path_buf(),
        msg: format!(
            "is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    if body.is_empty() {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            msg: "holds no vocabulary entry".into(),
        });
    }
    for (i, line) in body.split('\n').enumerate() {
        let w = line.strip_suffix('\r').unwrap_or(line);
        let bad = |msg: String| Error::Corpus {
            path: path.to_path_buf(),
            msg: format!("line {}: {msg}", i + 1),
        };
        if w.is_empty() {
            return Err(bad("empty entry".into()));
        }
        if w.chars().any(char::is_whitespace) {
            return Err(bad(format!("{w:?} holds whitespace")));
        }
        if let Some(first) = seen.insert(w, i + 1) {
            return Err(bad(format!("{w:?} repeats line {first}")));
        }
        out.push(w.to_string());
    }
    Ok(out)
}

/// Imports the model in `weights` with the vocabulary in `vocab`.
pub fn import(weights: &Path, vocab: &Path, opts: &ImportOptions) -> Result<Imported> {
    let bytes = CheckpointFile::read_bytes(weights)?;
    let source_sha256 = format!("{:x}", Sha256::digest(&bytes));
    let raw = format::foreign_tensors(&bytes, weights)?;
    if raw.is_empty() {
        return Err(err(weights, "holds no tensors"));
    }

    // Names: drop a common wrapper prefix, then map every tensor through the table.
    let strip = ["module.", "model."]
        .into_iter()
        .find(|p| raw.keys().all(|k| k.starts_with(p)))
        .unwrap_or("");
    let mut by_quill: BTreeMap<String, (String, ForeignTensor<'_>)> = BTreeMap::new();
    let mut layers = 0usize;
    let mut unknown = Vec::new();
    for (name, t) in raw {
        let short = &name[strip.len()..];
        match classify(short) {
            Some((quill, layer)) => {
                if let Some(k) = layer {
                    layers = layers.max(k + 1);
                }
                if let Some((other, _)) = by_quill.get(&quill) {
                    return Err(err(
                        weights,
                        format!("tensors {other:?} and {name:?} both map to quill's {quill:?}"),
                    ));
                }
                by_quill.insert(quill, (name, t));
            }
            None => unknown.push(unsupported(&name)),
        }
    }
    if !unknown.is_empty() {
        let n = unknown.len();
        unknown.truncate(5);
        return Err(err(
            weights,
            format!(
                "{n} tensor(s) quill cannot map: {}{}; accepted names: {}",
                unknown.join("; "),
                if n > 5 { "; …" } else { "" },
                accepted_names()
            ),
        ));
    }
    let source = |q: &str| need(&by_quill, q, weights);

    // The architecture, from the embedding and the first layer's recurrent weight.
    let (emb_name, emb) = source("embed.weight")?;
    let [v, e] = emb.shape[..] else {
        return Err(err(
            weights,
            format!(
                "tensor {emb_name:?} has shape {}, expected (V, E)",
                shape_str(&emb.shape)
            ),
        ));
    };
    if layers == 0 {
        return Err(err(
            weights,
            "no LSTM tensors (rnn.weight_ih_l0, rnn.weight_hh_l0, ...)".to_string(),
        ));
    }
    let (hh_name, hh) = source("rnn.weight_hh_l0")?;
    let h = match hh.shape[..] {
        [rows, h] if rows == 4 * h && h > 0 => h,
        [rows, h] if rows == 3 * h && h > 0 => {
            return Err(err(
                weights,
                format!(
                    "tensor {hh_name:?} has shape {} = (3H, H): a GRU, which quill cannot import (LSTMs only)",
                    shape_str(&hh.shape)
                ),
            ))
        }
        [rows, h] if rows == h && h > 0 => {
            return Err(err(
                weights,
                format!(
                    "tensor {hh_name:?} has shape {} = (H, H): a plain RNN, which quill cannot import (LSTMs only)",
                    shape_str(&hh.shape)
                ),
            ))
        }
        _ => {
            return Err(err(
                weights,
                format!(
                    "tensor {hh_name:?} has shape {}, expected (4H, H)",
                    shape_str(&hh.shape)
                ),
            ))
        }
    };
    let has_bias = (0..layers).any(|k| {
        by_quill.contains_key(&format!("rnn.bias_ih_l{k}"))
            || by_quill.contains_key(&format!("rnn.bias_hh_l{k}"))
    });
    let tied = !by_quill.contains_key("out.weight");
    if tied && e != h {
        return Err(err(
            weights,
            format!(
                "missing tensor decoder.weight (quill's \"out.weight\"); without it the output \
                 layer would share the embedding, which needs embed = hidden (here {e} and {h})"
            ),
        ));
    }

    // Every shape checked before anything is converted.
    let mut expected: Vec<(String, Vec<usize>)> = vec![("embed.weight".into(), vec![v, e])];
    for k in 0..layers {
        let d = if k == 0 { e } else { h };
        expected.push((format!("rnn.weight_ih_l{k}"), vec![4 * h, d]));
        expected.push((format!("rnn.weight_hh_l{k}"), vec![4 * h, h]));
        if has_bias {
            expected.push((format!("rnn.bias_ih_l{k}"), vec![4 * h]));
            expected.push((format!("rnn.bias_hh_l{k}"), vec![4 * h]));
        }
    }
    if !tied {
        expected.push(("out.weight".into(), vec![v, h]));
    }
    expected.push(("out.bias".into(), vec![v]));
    for (q, shape) in &expected {
        let (src, t) = source(q)?;
        if &t.shape != shape {
            return Err(err(
                weights,
                format!(
                    "tensor {src:?} (quill's {q:?}) has shape {}, expected {} for V = {v}, E = {e}, H = {h}",
                    shape_str(&t.shape),
                    shape_str(shape)
                ),
            ));
        }
    }
    if by_quill.len() != expected.len() {
        let extra: Vec<&str> = by_quill
            .iter()
            .filter(|(q, _)| !expected.iter().any(|(n, _)| n == *q))
            .map(|(_, (src, _))| src.as_str())
            .collect();
        return Err(err(
            weights,
            format!(
                "tensor(s) {extra:?} do not fit a {layers}-layer LSTM{}",
                if has_bias { "" } else { " without biases" }
            ),
        ));
    }
    let dtype = emb.dtype;

    // The vocabulary: V entries; the line-end entry renamed; missing specials appended.
    let mut words = read_vocab(vocab)?;
    if words.len() != v {
        return Err(Error::Corpus {
            path: vocab.to_path_buf(),
            msg: format!(
                "has {} entries, but the model's embedding {emb_name:?} has {v} rows; give the \
                 vocabulary the model was trained with (one word per line, in id order)",
                words.len()
            ),
        });
    }
    let mut renamed_eol = None;
    if let Some(eol) = &opts.eol_token {
        match words.iter().position(|w| w == eol) {
            Some(_) if eol == EOL_TOKEN => {}
            Some(i) => {
                if words.iter().any(|w| w == EOL_TOKEN) {
                    return Err(Error::Corpus {
                        path: vocab.to_path_buf(),
                        msg: format!(
                            "holds both {eol:?} (to be renamed {EOL_TOKEN}) and {EOL_TOKEN}"
                        ),
                    });
                }
                words[i] = EOL_TOKEN.to_string();
                renamed_eol = Some(eol.clone());
            }
            None if opts.eol_token_given => {
                return Err(Error::Corpus {
                    path: vocab.to_path_buf(),
                    msg: format!("has no entry {eol:?} (given as the line-end token)"),
                })
            }
            None => {}
        }
    }
    let mut added = Vec::new();
    for special in [UNK_TOKEN, EOS_TOKEN, EOL_TOKEN] {
        if !words.iter().any(|w| w == special) {
            words.push(special.to_string());
            added.push(special.to_string());
        }
    }
    let config = ModelConfig {
        vocab: words.len(),
        embed: e,
        hidden: h,
        layers,
        dropout: opts.dropout,
        tie_weights: tied,
    };
    config
        .validate()
        .map_err(|x| err(weights, format!("model config: {x}")))?;
    let tokenizer = Tokenizer::word_from_vocab(&words).map_err(|x| Error::Corpus {
        path: vocab.to_path_buf(),
        msg: x.to_string(),
    })?;
    let not_whole = words[..v]
        .iter()
        .filter(|w| {
            ![UNK_TOKEN, EOS_TOKEN, EOL_TOKEN].contains(&w.as_str())
                && !Tokenizer::word_splits_whole(w)
        })
        .cloned()
        .collect();

    // Convert, padding the added rows.
    let extra = added.len();
    let mut mapping = Vec::new();
    let params = Params::from_named(&config, "", |q, shape| {
        let Some((src, t)) = by_quill.get(q) else {
            // No biases in the source: zeros.
            return Ok(vec![0.0; shape.iter().product()]);
        };
        mapping.push((src.clone(), q.to_string()));
        let mut data = to_f32(src, t, weights)?;
        match q {
            "embed.weight" => data.resize(data.len() + extra * e, 0.0),
            "out.weight" => data.resize(data.len() + extra * h, 0.0),
            "out.bias" => data.resize(data.len() + extra, ADDED_TOKEN_BIAS),
            _ => {}
        }
        if data.len() != shape.iter().product::<usize>() {
            return Err(err(
                weights,
                format!(
                    "tensor {src:?} does not fit quill's {q:?} {}",
                    shape_str(shape)
                ),
            ));
        }
        Ok(data)
    })?;
    Ok(Imported {
        model: Model { config, params },
        tokenizer,
        mapping,
        dtype,
        renamed_eol,
        added,
        not_whole,
        source: weights.to_path_buf(),
        source_sha256,
    })
}

/// The source tensor mapped to quill's `q`, or an error naming the source names accepted.
#[allow(clippy::type_complexity)]
fn need<'m, 'a>(
    by_quill: &'m BTreeMap<String, (String, ForeignTensor<'a>)>,
    q: &str,
    path: &Path,
) -> Result<&'m (String, ForeignTensor<'a>)> {
    by_quill.get(q).ok_or_else(|| {
        let sources = NAME_TABLE
            .iter()
            .find(|(n, _)| *n == q)
            .map_or_else(|| q.to_string(), |(_, s)| s.join(" or "));
        err(
            path,
            format!(
                "missing tensor {sources} (quill's {q:?}); accepted names: {}",
                accepted_names()
            ),
        )
    })
}

fn accepted_names() -> String {
    let mut names: Vec<String> = NAME_TABLE.iter().map(|(_, s)| s[0].to_string()).collect();
    names.insert(
        1,
        format!(
            "{{{}}}{{{}}}_l{{k}}",
            LSTM_PREFIXES.join(","),
            LSTM_KINDS.join(",")
        ),
    );
    names.join(", ")
}

impl Imported {
    /// The metadata of the imported model's checkpoint: weights only; the corpus is recorded
    /// as the source file (its path and SHA-256), with no tokens; the training record is
    /// quill's defaults at step 0 (so `quill info` reads it).
    pub fn meta(&self, name: &str, out_dir: &Path) -> TrainMeta {
        let train = TrainConfig {
            name: name.to_string(),
            out: out_dir.to_path_buf(),
            ..TrainConfig::default()
        };
        TrainMeta {
            base: ModelMeta {
                kind: CheckpointKind::Weights,
                model: self.model.config.clone(),
                tokenizer: self.tokenizer.to_json(),
                corpus: CorpusInfo {
                    path: self.source.clone(),
                    fingerprint: self.source_sha256.clone(),
                    ..CorpusInfo::default()
                },
                quill_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            progress: Progress::new(train.seed),
            train,
            adam: AdamConfig::default(),
            adam_t: 0,
        }
    }

    /// Writes the quill checkpoint to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty() && !s.contains('\\'))
            .unwrap_or("imported");
        let dir = crate::atomic::parent_dir(path);
        train_checkpoint::save(path, &self.model, &self.meta(name, &dir), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_maps_word_language_model_names() {
        assert_eq!(
            classify("encoder.weight"),
            Some(("embed.weight".into(), None))
        );
        assert_eq!(classify("decoder.bias"), Some(("out.bias".into(), None)));
        assert_eq!(
            classify("rnn.weight_hh_l12"),
            Some(("rnn.weight_hh_l12".into(), Some(12)))
        );
        assert_eq!(
            classify("lstm.bias_ih_l0"),
            Some(("rnn.bias_ih_l0".into(), Some(0)))
        );
        for bad in [
            "rnn.weight_ih_l0_reverse",
            "rnn.weight_hr_l0",
            "rnn.weight_ih_l",
            "rnn.weight_ih_lx",
            "transformer.layers.0.linear1.weight",
        ] {
            assert_eq!(classify(bad), None, "{bad}");
        }
        assert!(unsupported("rnn.weight_ih_l0_reverse").contains("bidirectional"));
        assert!(unsupported("rnn.weight_hr_l0").contains("proj"));
    }

    #[test]
    fn half_precision_values_convert_exactly() {
        let vals = [1.5f32, -0.25, 65504.0, 0.0];
        let f16: Vec<u8> = vals
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = vals
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        let f64b: Vec<u8> = vals
            .iter()
            .flat_map(|&x| (x as f64).to_le_bytes())
            .collect();
        let p = Path::new("w.safetensors");
        for (dtype, data) in [
            (Dtype::F16, &f16),
            (Dtype::BF16, &bf16),
            (Dtype::F64, &f64b),
        ] {
            let t = ForeignTensor {
                dtype,
                shape: vec![4],
                data,
            };
            let got = to_f32("x", &t, p).unwrap();
            if dtype == Dtype::BF16 {
                // 65504 is not a bf16 value; it rounds to 65536.
                assert_eq!(got, vec![1.5, -0.25, 65536.0, 0.0]);
            } else {
                assert_eq!(got, vals.to_vec());
            }
        }
        let nan = f32::NAN.to_le_bytes();
        let t = ForeignTensor {
            dtype: Dtype::F32,
            shape: vec![1],
            data: &nan,
        };
        let e = to_f32("decoder.bias", &t, p).unwrap_err().to_string();
        assert!(
            e.contains("decoder.bias") && e.contains("non-finite"),
            "{e}"
        );
    }
}
