//! The checkpoint FILE layer: named f32 tensors plus caller-owned JSON metadata, stored as a
//! standard safetensors file, saved atomically and loaded as untrusted input.
//!
//! # Layout
//! A plain safetensors file: an 8-byte little-endian header length `N`, `N` bytes of JSON header
//! (padded with spaces to a multiple of 8), then the raw tensor data. Tensors are `F32`,
//! little-endian, row-major, stored back to back in name order. The header's `__metadata__`
//! string map holds:
//!
//! | key                    | value                                                        |
//! |------------------------|--------------------------------------------------------------|
//! | `format`               | `"pt"`, so PyTorch's `safetensors.torch.load_file` reads it  |
//! | `quill_magic`          | [`MAGIC`]                                                    |
//! | `quill_format_version` | [`FORMAT_VERSION`] in decimal                                |
//! | `quill_meta`           | the caller's JSON metadata, as a compact JSON string         |
//! | `quill_checksum`       | lowercase hex SHA-256, see below                             |
//!
//! # Checksum
//! SHA-256 over a length-prefixed stream (every integer a little-endian `u64`, every string its
//! byte length then its UTF-8 bytes):
//! the domain tag `b"quill-checkpoint-checksum-v1\0"`; the number of `__metadata__` entries other
//! than `quill_checksum`, then each such entry (key, value) in key order; the number of tensors,
//! then for each tensor in name order: name, rank, each dimension, data byte length, data bytes.
//! It therefore covers every name, shape, value and metadata entry; the JSON layout and data
//! offsets are not hashed but are fully validated structurally.
//!
//! The writer produces the header itself (not through `safetensors::serialize`, whose
//! `__metadata__` is a `HashMap` and would come out in random key order), so that the same
//! checkpoint always gives the same bytes. The layout is exactly what `safetensors::serialize`
//! produces for F32 tensors; the tests check both crates read each other's output. Parsing goes
//! through [`safetensors::SafeTensors::read_metadata`] after an own bounds pre-check.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::atomic::{self, FailPoint};
use crate::error::{Error, Result};

/// Version of the quill checkpoint layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Value of the `quill_magic` metadata entry that marks a file as a quill checkpoint.
pub const MAGIC: &str = "quill-checkpoint";

/// Largest JSON header accepted (the same bound the safetensors crate applies).
pub const MAX_HEADER_BYTES: usize = 100_000_000;

/// Largest checkpoint file [`CheckpointFile::load`] will read (8 GiB).
pub const MAX_FILE_BYTES: u64 = 8 << 30;

const KEY_FORMAT: &str = "format";
const KEY_MAGIC: &str = "quill_magic";
const KEY_VERSION: &str = "quill_format_version";
const KEY_META: &str = "quill_meta";
const KEY_CHECKSUM: &str = "quill_checksum";
/// Key safetensors reserves for the metadata map; no tensor may carry this name.
const RESERVED_NAME: &str = "__metadata__";
const CHECKSUM_DOMAIN: &[u8] = b"quill-checkpoint-checksum-v1\0";
/// Bytes per stored element (F32).
const ELEM_BYTES: usize = 4;

/// One named f32 tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first; `[]` is a scalar (one element).
    pub shape: Vec<usize>,
    /// `product(shape)` values in row-major order.
    pub data: Vec<f32>,
}

/// A checkpoint in memory: named tensors (sorted by name) plus free-form JSON metadata owned by
/// the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointFile {
    /// Tensors by name. Keep `data.len() == product(shape)`; [`CheckpointFile::insert`] checks it.
    pub tensors: BTreeMap<String, Tensor>,
    /// Caller-owned metadata (hyper-parameters, vocabulary, training state, ...) as JSON
    /// text, kept as text so a reader deserialises just the fields it needs, in place
    /// ([`CheckpointFile::meta_as`]), instead of building a tree of the whole document.
    pub meta: String,
}

impl Default for CheckpointFile {
    /// No tensors, `null` metadata.
    fn default() -> Self {
        CheckpointFile {
            tensors: BTreeMap::new(),
            meta: "null".to_string(),
        }
    }
}

/// Number of elements of `shape`, or `None` on overflow.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// `[2, 3]` style rendering of a shape for messages.
struct ShapeFmt<'a>(&'a [usize]);

impl fmt::Display for ShapeFmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

fn check_name(name: &str) -> Result<()> {
    if name == RESERVED_NAME {
        return Err(Error::config(
            "checkpoint tensor name",
            format!("{RESERVED_NAME:?} is reserved by the safetensors format"),
        ));
    }
    Ok(())
}

fn check_len(name: &str, shape: &[usize], len: usize) -> Result<()> {
    match element_count(shape) {
        Some(n) if n == len => Ok(()),
        Some(n) => Err(Error::Shape(format!(
            "tensor {name:?}: shape {} has {n} elements but {len} values were given",
            ShapeFmt(shape)
        ))),
        None => Err(Error::Shape(format!(
            "tensor {name:?}: element count of shape {} overflows",
            ShapeFmt(shape)
        ))),
    }
}

/// Incremental checksum over the length-prefixed stream described in the module docs.
struct Checksum(Sha256);

impl Checksum {
    /// Start the checksum and fold in all metadata entries except the checksum itself.
    fn new<'a>(metadata: impl IntoIterator<Item = (&'a str, &'a str)>, n_tensors: usize) -> Self {
        let mut entries: Vec<(&str, &str)> = metadata
            .into_iter()
            .filter(|(k, _)| *k != KEY_CHECKSUM)
            .collect();
        entries.sort_unstable();
        let mut c = Checksum(Sha256::new());
        c.0.update(CHECKSUM_DOMAIN);
        c.len(entries.len());
        for (k, v) in entries {
            c.str(k);
            c.str(v);
        }
        c.len(n_tensors);
        c
    }

    fn len(&mut self, n: usize) {
        self.0.update((n as u64).to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.update(s.as_bytes());
    }

    /// Fold in one tensor's name, shape and data byte length; its data bytes must follow.
    fn tensor_head(&mut self, name: &str, shape: &[usize], n_bytes: usize) {
        self.str(name);
        self.len(shape.len());
        for &d in shape {
            self.len(d);
        }
        self.len(n_bytes);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.0.update(b);
    }

    /// Fold in f32 values as their little-endian bytes, without a full copy.
    fn f32s(&mut self, data: &[f32]) {
        let mut buf = [0u8; 4096];
        for chunk in data.chunks(buf.len() / ELEM_BYTES) {
            let used = &mut buf[..chunk.len() * ELEM_BYTES];
            for (dst, v) in used.chunks_exact_mut(ELEM_BYTES).zip(chunk) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
            self.0.update(used);
        }
    }

    fn finish_hex(self) -> String {
        format!("{:x}", self.0.finalize())
    }
}

/// Serialise tensors with the given `__metadata__` entries (a `quill_checksum` entry is computed
/// and added here; one already present is replaced).
fn encode(
    tensors: &BTreeMap<String, Tensor>,
    mut metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    metadata.remove(KEY_CHECKSUM);
    let mut sum = Checksum::new(
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        tensors.len(),
    );
    for (name, t) in tensors {
        check_name(name)?;
        check_len(name, &t.shape, t.data.len())?;
        let n_bytes = t
            .data
            .len()
            .checked_mul(ELEM_BYTES)
            .ok_or_else(|| Error::Shape(format!("tensor {name:?}: byte size overflows")))?;
        sum.tensor_head(name, &t.shape, n_bytes);
        sum.f32s(&t.data);
    }
    metadata.insert(KEY_CHECKSUM.to_string(), sum.finish_hex());

    let mut header = String::from("{\"");
    header.push_str(RESERVED_NAME);
    header.push_str("\":");
    header.push_str(&json(&metadata)?);
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = t
            .data
            .len()
            .checked_mul(ELEM_BYTES)
            .and_then(|n| offset.checked_add(n))
            .ok_or_else(|| Error::Shape("checkpoint data size overflows".to_string()))?;
        header.push(',');
        header.push_str(&json(name)?);
        header.push_str(":{\"dtype\":\"F32\",\"shape\":");
        header.push_str(&json(&t.shape)?);
        header.push_str(&format!(",\"data_offsets\":[{offset},{end}]}}"));
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    if header.len() > MAX_HEADER_BYTES {
        return Err(Error::config(
            "checkpoint",
            format!(
                "header would be {} bytes, more than the {MAX_HEADER_BYTES}-byte limit (too many tensors or too much metadata)",
                header.len()
            ),
        ));
    }

    let total = 8usize
        .checked_add(header.len())
        .and_then(|n| n.checked_add(offset))
        .ok_or_else(|| Error::Shape("checkpoint size overflows".to_string()))?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for t in tensors.values() {
        for v in &t.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

/// Compact JSON of `v` (cannot fail for the strings, maps and shapes used here).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::config("checkpoint", e.to_string()))
}

/// Serde visitor that walks the header's top-level map and rejects any tensor whose
/// `data_offsets` point past the data region. Running it before the safetensors crate keeps that
/// crate's offset arithmetic (`end + 8 + N`, unchecked) far from overflow. It sees every entry,
/// duplicates included.
struct OffsetBound {
    data_len: u64,
}

impl<'de> DeserializeSeed<'de> for OffsetBound {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OffsetBound {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of tensor entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        /// The one field looked at; everything else in an entry is skipped unread.
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            data_offsets: Vec<u64>,
        }
        while let Some(key) = map.next_key::<String>()? {
            if key == RESERVED_NAME {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let entry: Entry = map.next_value()?;
            for o in entry.data_offsets {
                if o > self.data_len {
                    return Err(A::Error::custom(format!(
                        "tensor {key:?}: data offset {o} lies past the end of the {} data bytes",
                        self.data_len
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The parsed header of an untrusted safetensors file and its data region (the bytes after
/// the header), after [`precheck`]'s bounds checks.
fn header_and_data(bytes: &[u8]) -> std::result::Result<(Metadata, &[u8]), String> {
    let bad = |m: &dyn fmt::Display| format!("not a safetensors file, or truncated: {m}");
    precheck(bytes).map_err(|m| bad(&m))?;
    let (n, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| bad(&e))?;
    let data = 8usize
        .checked_add(n)
        .and_then(|start| bytes.get(start..))
        .ok_or_else(|| "not a safetensors file, or truncated".to_string())?;
    Ok((metadata, data))
}

/// Bounds checks before handing bytes to the safetensors crate: header length within limits and
/// within the file, every data offset within the data region.
fn precheck(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(format!(
            "file is only {} bytes, shorter than the 8-byte header length",
            bytes.len()
        ));
    };
    let mut arr = [0u8; 8];
    arr.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(arr);
    if n > MAX_HEADER_BYTES as u64 {
        return Err(format!(
            "declared header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit"
        ));
    }
    let n = n as usize; // <= MAX_HEADER_BYTES, fits any usize >= 32 bits
    let rest = bytes.len() - 8;
    if n > rest {
        return Err(format!(
            "declared header length {n} but only {rest} bytes follow"
        ));
    }
    let header = &bytes[8..8 + n];
    let mut de = serde_json::Deserializer::from_slice(header);
    OffsetBound {
        data_len: (rest - n) as u64,
    }
    .deserialize(&mut de)
    .map_err(|e| format!("invalid header: {e}"))
}

impl CheckpointFile {
    /// Add a tensor. Fails when `product(shape) != data.len()`, when the name is already present
    /// (two parameters mapped to one name is a bug), or when the name is the reserved
    /// `__metadata__`.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<()> {
        let name = name.into();
        check_name(&name)?;
        check_len(&name, &shape, data.len())?;
        if self.tensors.contains_key(&name) {
            return Err(Error::config(
                "checkpoint tensor name",
                format!("{name:?} inserted twice"),
            ));
        }
        self.tensors.insert(name, Tensor { shape, data });
        Ok(())
    }

    /// Borrow the data of tensor `name`, checking it has exactly `expected_shape`. Errors
    /// (`Error::Checkpoint` on `path_for_errors`) name the tensor and both shapes.
    pub fn get(
        &self,
        name: &str,
        expected_shape: &[usize],
        path_for_errors: &Path,
    ) -> Result<&[f32]> {
        let err = |msg: String| Error::Checkpoint {
            path: path_for_errors.to_path_buf(),
            msg,
        };
        let t = self.tensors.get(name).ok_or_else(|| {
            err(format!(
                "missing tensor {name:?} (expected shape {})",
                ShapeFmt(expected_shape)
            ))
        })?;
        if t.shape != expected_shape {
            return Err(err(format!(
                "tensor {name:?} has shape {}, expected {}",
                ShapeFmt(&t.shape),
                ShapeFmt(expected_shape)
            )));
        }
        if element_count(&t.shape) != Some(t.data.len()) {
            return Err(err(format!(
                "tensor {name:?} holds {} values, which does not fit its shape {}",
                t.data.len(),
                ShapeFmt(&t.shape)
            )));
        }
        Ok(&t.data)
    }

    /// Like [`CheckpointFile::get`] but removes the tensor and returns its data. On error the
    /// checkpoint is unchanged.
    pub fn take(
        &mut self,
        name: &str,
        expected_shape: &[usize],
        path_for_errors: &Path,
    ) -> Result<Vec<f32>> {
        self.get(name, expected_shape, path_for_errors)?;
        Ok(self
            .tensors
            .remove(name)
            .map(|t| t.data)
            .unwrap_or_default())
    }

    /// Sets the metadata to `v` as compact JSON.
    pub fn set_meta<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        self.meta = serde_json::to_string(v)
            .map_err(|e| Error::config("checkpoint metadata", e.to_string()))?;
        Ok(())
    }

    /// The metadata deserialised as `T` (fields `T` does not name are skipped, not stored).
    pub fn meta_as<'de, T: serde::Deserialize<'de>>(&'de self) -> serde_json::Result<T> {
        serde_json::from_str(&self.meta)
    }

    /// The metadata as a JSON tree (for tools and tests that edit it).
    pub fn meta_value(&self) -> serde_json::Result<serde_json::Value> {
        self.meta_as()
    }

    /// Serialise to bytes (safetensors layout, see the module docs). Deterministic: equal
    /// checkpoints give equal bytes. Fails on a tensor whose data does not fit its shape, a
    /// tensor named `__metadata__`, or metadata that is not JSON.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::from_str::<serde::de::IgnoredAny>(&self.meta)
            .map_err(|e| Error::config("checkpoint metadata", format!("not JSON: {e}")))?;
        let meta = self.meta.clone();
        let metadata = BTreeMap::from([
            (KEY_FORMAT.to_string(), "pt".to_string()),
            (KEY_MAGIC.to_string(), MAGIC.to_string()),
            (KEY_VERSION.to_string(), FORMAT_VERSION.to_string()),
            (KEY_META.to_string(), meta),
        ]);
        encode(&self.tensors, metadata)
    }

    /// Parse untrusted bytes. Never panics and allocates at most in proportion to `bytes.len()`.
    /// Every failure is an `Error::Checkpoint` on `path_for_errors`: not safetensors or truncated,
    /// not a quill checkpoint (magic), another format version, non-F32 tensor, checksum
    /// mismatch, invalid JSON metadata.
    pub fn from_bytes(bytes: &[u8], path_for_errors: &Path) -> Result<Self> {
        let err = |msg: String| Error::Checkpoint {
            path: path_for_errors.to_path_buf(),
            msg,
        };
        let (metadata, data) = header_and_data(bytes).map_err(err)?;

        let md = metadata.metadata().as_ref().ok_or_else(|| {
            err("not a quill checkpoint (the safetensors file has no __metadata__)".to_string())
        })?;
        match md.get(KEY_MAGIC) {
            None => {
                return Err(err(format!(
                    "not a quill checkpoint (no {KEY_MAGIC} in the safetensors metadata)"
                )))
            }
            Some(m) if m != MAGIC => {
                return Err(err(format!(
                    "not a quill checkpoint ({KEY_MAGIC} is {m:?}, expected {MAGIC:?})"
                )))
            }
            Some(_) => {}
        }
        let version = md
            .get(KEY_VERSION)
            .ok_or_else(|| err(format!("missing {KEY_VERSION} in the metadata")))?;
        let version: u32 = version
            .parse()
            .map_err(|_| err(format!("unreadable {KEY_VERSION} {version:?}")))?;
        if version != FORMAT_VERSION {
            let which = if version > FORMAT_VERSION {
                "newer"
            } else {
                "older"
            };
            return Err(err(format!(
                "written by a {which} quill checkpoint format {version}, this build reads format {FORMAT_VERSION}"
            )));
        }
        let expected_sum = md
            .get(KEY_CHECKSUM)
            .ok_or_else(|| err(format!("missing {KEY_CHECKSUM} in the metadata")))?;

        let infos: BTreeMap<String, &TensorInfo> = metadata.tensors().into_iter().collect();
        let mut sum = Checksum::new(
            md.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            infos.len(),
        );
        let mut raw: Vec<(&str, &TensorInfo, &[u8])> = Vec::with_capacity(infos.len());
        for (name, info) in &infos {
            if info.dtype != Dtype::F32 {
                return Err(err(format!(
                    "tensor {name:?} has dtype {}; quill checkpoints store only F32",
                    info.dtype
                )));
            }
            let slice = tensor_bytes(name, info, data, ELEM_BYTES).map_err(err)?;
            sum.tensor_head(name, &info.shape, slice.len());
            sum.bytes(slice);
            raw.push((name, info, slice));
        }
        if sum.finish_hex() != *expected_sum {
            return Err(err(
                "data is corrupted (checksum mismatch over tensor data and metadata)".to_string(),
            ));
        }
        let meta_str = md
            .get(KEY_META)
            .ok_or_else(|| err(format!("missing {KEY_META} in the metadata")))?;
        // Checked for syntax without building anything; kept as text.
        serde_json::from_str::<serde::de::IgnoredAny>(meta_str)
            .map_err(|e| err(format!("invalid JSON metadata in {KEY_META}: {e}")))?;
        let meta = meta_str.clone();

        let tensors = raw
            .into_iter()
            .map(|(name, info, slice)| {
                let data = slice
                    .chunks_exact(ELEM_BYTES)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (
                    name.to_string(),
                    Tensor {
                        shape: info.shape.clone(),
                        data,
                    },
                )
            })
            .collect();
        Ok(CheckpointFile { tensors, meta })
    }

    /// Save atomically: write to a temporary file `.NAME.tmp-PID-SEQ` in the target's directory,
    /// fsync it, rename it over `path`, fsync the directory. Creates missing parent directories.
    /// On failure the temporary file is removed and an existing file at `path` is untouched;
    /// errors name the path and the step that failed.
    pub fn save_atomic(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes, FailPoint::Never)
    }

    /// Load a checkpoint file. Refuses directories, non-regular files and files larger than
    /// [`MAX_FILE_BYTES`]; then parses with [`CheckpointFile::from_bytes`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = Self::read_bytes(path)?;
        Self::from_bytes(&bytes, path)
    }

    /// The bytes of a checkpoint file, refusing what [`CheckpointFile::load`] refuses
    /// (directories, non-regular files, files over [`MAX_FILE_BYTES`]).
    pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
        let io_err = |action: &str, cause| Error::CheckpointIo {
            path: path.to_path_buf(),
            action: action.to_string(),
            cause,
        };
        let err = |msg: String| Error::Checkpoint {
            path: path.to_path_buf(),
            msg,
        };
        let md = fs::metadata(path).map_err(|e| io_err("cannot read", e))?;
        if md.is_dir() {
            return Err(err("is a directory, not a checkpoint file".to_string()));
        }
        if !md.is_file() {
            return Err(err("is not a regular file".to_string()));
        }
        if md.len() > MAX_FILE_BYTES {
            return Err(err(format!(
                "file is {} bytes, larger than the {} GiB limit for a checkpoint",
                md.len(),
                MAX_FILE_BYTES >> 30
            )));
        }
        let file = fs::File::open(path).map_err(|e| io_err("cannot open", e))?;
        let mut bytes = Vec::with_capacity(usize::try_from(md.len()).unwrap_or(0));
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_err("cannot read", e))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(err(format!(
                "file grew past the {} GiB limit while being read",
                MAX_FILE_BYTES >> 30
            )));
        }
        Ok(bytes)
    }

    /// [`CheckpointFile::load`], also returning the SHA-256 (lowercase hex) of the very bytes
    /// that were parsed (what a manifest records, not a second read of the file).
    pub fn load_hashed(path: &Path) -> Result<(Self, String)> {
        let bytes = Self::read_bytes(path)?;
        let digest = format!("{:x}", Sha256::digest(&bytes));
        Ok((Self::from_bytes(&bytes, path)?, digest))
    }
}

/// A tensor of a plain safetensors file (not a quill checkpoint: any dtype, no checksum),
/// borrowed from the file's bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct ForeignTensor<'a> {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Its `product(shape) × size(dtype)` little-endian bytes.
    pub data: &'a [u8],
}

/// Bytes per element of the floating dtypes [`foreign_tensors`] accepts.
pub fn float_dtype_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F64 => Some(8),
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        _ => None,
    }
}

/// The tensors of a plain safetensors file (e.g. written by PyTorch's `save_file`), read as
/// untrusted input: the same bounds checks as quill checkpoints before the header is parsed,
/// then every tensor's offsets inside the data region and its byte length equal to its
/// shape times its dtype's size (F64, F32, F16 or BF16; any other dtype is an error naming
/// the tensor). Nothing is copied or converted: allocation is in proportion to the header.
pub fn foreign_tensors<'a>(
    bytes: &'a [u8],
    path_for_errors: &Path,
) -> Result<BTreeMap<String, ForeignTensor<'a>>> {
    let err = |msg: String| Error::Checkpoint {
        path: path_for_errors.to_path_buf(),
        msg,
    };
    let (metadata, data) = header_and_data(bytes).map_err(err)?;
    let mut out = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let size = float_dtype_size(info.dtype).ok_or_else(|| {
            err(format!(
                "tensor {name:?} has dtype {}; only F64, F32, F16 and BF16 tensors can be imported",
                info.dtype
            ))
        })?;
        let slice = tensor_bytes(&name, info, data, size).map_err(err)?;
        out.insert(
            name,
            ForeignTensor {
                dtype: info.dtype,
                shape: info.shape.clone(),
                data: slice,
            },
        );
    }
    Ok(out)
}

/// The data bytes of one tensor of a safetensors file: its offsets must lie inside `data` (the
/// region after the header) and its length must be its shape times `elem_bytes`.
fn tensor_bytes<'a>(
    name: &str,
    info: &TensorInfo,
    data: &'a [u8],
    elem_bytes: usize,
) -> std::result::Result<&'a [u8], String> {
    let (start, end) = info.data_offsets;
    let slice = data
        .get(start..end)
        .ok_or_else(|| format!("tensor {name:?}: data offsets [{start}, {end}] out of range"))?;
    let fits = element_count(&info.shape)
        .and_then(|n| n.checked_mul(elem_bytes))
        .is_some_and(|n| n == slice.len());
    if !fits {
        return Err(format!(
            "tensor {name:?}: shape {} does not match its {} data bytes",
            ShapeFmt(&info.shape),
            slice.len()
        ));
    }
    Ok(slice)
}

/// Writes a checkpoint's bytes to `path` through [`atomic`] (creating missing parent
/// directories), with a simulated failure at `fail` in tests.
fn write_atomic(path: &Path, bytes: &[u8], fail: FailPoint) -> Result<()> {
    let io_err = |action: String, cause| Error::CheckpointIo {
        path: path.to_path_buf(),
        action,
        cause,
    };
    if path.file_name().is_none() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: "path does not name a file".to_string(),
        });
    }
    let dir = atomic::parent_dir(path);
    fs::create_dir_all(&dir)
        .map_err(|e| io_err(format!("cannot create directory {}", dir.display()), e))?;
    if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: "is a directory; give a file path to save the checkpoint to".to_string(),
        });
    }
    atomic::write_with(path, bytes, fail).map_err(|e| io_err("cannot save".to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::dir_names;
    use serde_json::json;

    const P: &str = "test.qck";

    fn p() -> &'static Path {
        Path::new(P)
    }

    /// A small checkpoint exercising odd shapes, names and values (no NaN, so `==` works).
    fn sample() -> CheckpointFile {
        let mut cp = CheckpointFile::default();
        cp.insert(
            "embed.weight",
            vec![3, 2],
            vec![0.5, -1.25, 3.0e-8, 1.0e30, -0.0, 7.0],
        )
        .unwrap();
        cp.insert("lstm.0.bias", vec![4], vec![1.0, 2.0, 3.0, 4.0])
            .unwrap();
        cp.insert("scalar", vec![], vec![42.0]).unwrap();
        cp.insert("empty", vec![0, 5], vec![]).unwrap();
        cp.insert("ünï \"name\"", vec![1, 1], vec![f32::MIN_POSITIVE])
            .unwrap();
        cp.set_meta(&json!({
            "hidden": 8,
            "vocab": ["a", "b", "\n", "\u{1F600}"],
            "lr": 0.001,
            "nested": {"x": [1, null, true]}
        }))
        .unwrap();
        cp
    }

    fn empty_with_meta() -> CheckpointFile {
        CheckpointFile {
            tensors: BTreeMap::new(),
            meta: json!({"note": "no tensors"}).to_string(),
        }
    }

    /// A model-like checkpoint with deterministic values.
    fn model_like() -> CheckpointFile {
        let mut cp = CheckpointFile::default();
        let mut k = 0.0f32;
        let mut vals = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    k += 1.0;
                    (k * 0.37).sin()
                })
                .collect()
        };
        cp.insert("embed", vec![5, 3], vals(15)).unwrap();
        cp.insert("lstm.0.w_ih", vec![12, 3], vals(36)).unwrap();
        cp.insert("lstm.0.b", vec![12], vals(12)).unwrap();
        cp.insert("head.w", vec![5, 3], vals(15)).unwrap();
        cp.set_meta(&json!({"vocab": ["a", "b", "c", "d", " "], "step": 120, "seed": 7}))
            .unwrap();
        cp
    }

    fn header_len(bytes: &[u8]) -> usize {
        u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
    }

    /// A raw safetensors-shaped byte string: length prefix, header as given, data.
    fn raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    /// The `__metadata__` a current quill writes (without checksum), for tweaking.
    fn quill_md(meta: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (KEY_FORMAT.to_string(), "pt".to_string()),
            (KEY_MAGIC.to_string(), MAGIC.to_string()),
            (KEY_VERSION.to_string(), FORMAT_VERSION.to_string()),
            (KEY_META.to_string(), meta.to_string()),
        ])
    }

    fn load_err(bytes: &[u8]) -> String {
        CheckpointFile::from_bytes(bytes, p())
            .expect_err("damaged input must not load")
            .to_string()
    }

    #[test]
    fn insert_checks_shape_and_names() {
        let mut cp = CheckpointFile::default();
        let e = cp
            .insert("a", vec![2, 3], vec![0.0; 5])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[2, 3]") && e.contains("6 elements") && e.contains("5 values"),
            "{e}"
        );
        assert!(cp.insert("a", vec![usize::MAX, 2], vec![]).is_err());
        assert!(cp.insert("__metadata__", vec![1], vec![0.0]).is_err());
        cp.insert("a", vec![], vec![1.0]).unwrap();
        let e = cp.insert("a", vec![1], vec![2.0]).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        assert_eq!(cp.tensors["a"].data, vec![1.0]);
        assert_eq!(cp.tensors.len(), 1);
    }

    #[test]
    fn round_trip_bytes() {
        let cp = sample();
        let back = CheckpointFile::from_bytes(&cp.to_bytes().unwrap(), p()).unwrap();
        assert_eq!(back, cp);
        // -0.0 == 0.0 under PartialEq; check the sign bit survived.
        assert_eq!(
            back.tensors["embed.weight"].data[4].to_bits(),
            (-0.0f32).to_bits()
        );
        assert_eq!(back.tensors["empty"].shape, vec![0, 5]);
        assert_eq!(back.tensors["scalar"].shape, Vec::<usize>::new());
    }

    #[test]
    fn round_trip_keeps_exact_bit_patterns() {
        let special = [
            f32::NAN,
            f32::from_bits(0x7fc0_1234),
            f32::from_bits(0xffa0_0001),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(1),
            f32::MAX,
            -f32::MIN_POSITIVE,
        ];
        let mut cp = CheckpointFile::default();
        cp.insert("x", vec![2, 4], special.to_vec()).unwrap();
        let back = CheckpointFile::from_bytes(&cp.to_bytes().unwrap(), p()).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.tensors["x"].data), bits(&special));
    }

    #[test]
    fn to_bytes_is_deterministic_and_canonical() {
        let bytes = sample().to_bytes().unwrap();
        assert_eq!(bytes, sample().to_bytes().unwrap());
        let n = header_len(&bytes);
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        assert!(
            header.starts_with("{\"__metadata__\":{\"format\":\"pt\","),
            "{header}"
        );
        // Data region: all tensors' little-endian bytes back to back in name order.
        let cp = sample();
        let expected: Vec<u8> = cp
            .tensors
            .values()
            .flat_map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()))
            .collect();
        assert_eq!(&bytes[8 + n..], &expected[..]);
        // Different content gives a different checksum.
        let mut other = sample();
        other.tensors.get_mut("lstm.0.bias").unwrap().data[0] = 1.5;
        let md = |b: &[u8]| {
            SafeTensors::read_metadata(b)
                .unwrap()
                .1
                .metadata()
                .clone()
                .unwrap()[KEY_CHECKSUM]
                .clone()
        };
        let sum = md(&bytes);
        assert_eq!(sum.len(), 64);
        assert!(sum
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(sum, md(&other.to_bytes().unwrap()));
    }

    #[test]
    fn safetensors_crate_reads_our_bytes() {
        let cp = sample();
        let bytes = cp.to_bytes().unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), cp.tensors.len());
        for (name, t) in &cp.tensors {
            let view = st.tensor(name).unwrap();
            assert_eq!(view.dtype(), Dtype::F32);
            assert_eq!(view.shape(), &t.shape[..]);
            let le: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(view.data(), &le[..]);
        }
        let (_, md) = SafeTensors::read_metadata(&bytes).unwrap();
        let md = md.metadata().clone().unwrap();
        assert_eq!(md["format"], "pt");
        assert_eq!(md["quill_magic"], MAGIC);
        assert_eq!(md["quill_format_version"], "1");
        let meta: serde_json::Value = serde_json::from_str(&md["quill_meta"]).unwrap();
        assert_eq!(meta, cp.meta_value().unwrap());
        assert_eq!(md.len(), 5);
    }

    #[test]
    fn we_read_bytes_written_by_safetensors_serialize() {
        let cp = sample();
        let ours = cp.to_bytes().unwrap();
        let md = SafeTensors::read_metadata(&ours)
            .unwrap()
            .1
            .metadata()
            .clone();
        let le: Vec<(String, Vec<usize>, Vec<u8>)> = cp
            .tensors
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.shape.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = le
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
                )
            })
            .collect();
        let theirs = safetensors::serialize(views, md).unwrap();
        assert_eq!(CheckpointFile::from_bytes(&theirs, p()).unwrap(), cp);
        // Same layout: equal length, equal data region, equal header as JSON.
        assert_eq!(theirs.len(), ours.len());
        let (n1, n2) = (header_len(&ours), header_len(&theirs));
        assert_eq!(n1, n2);
        assert_eq!(ours[8 + n1..], theirs[8 + n2..]);
        let h =
            |b: &[u8], n: usize| serde_json::from_slice::<serde_json::Value>(&b[8..8 + n]).unwrap();
        assert_eq!(h(&ours, n1), h(&theirs, n2));
    }

    #[test]
    fn metadata_round_trip() {
        let metas = [
            serde_json::Value::Null,
            json!(1.5),
            json!("quotes \" backslash \\ newline \n emoji \u{1F600} nul \u{0}"),
            json!([1, "two", [3.25, false]]),
            json!({"a": {"b": {"c": [null, {"d": -1e-300}]}}, "big": u64::MAX, "neg": i64::MIN}),
        ];
        for meta in metas {
            for mut cp in [sample(), CheckpointFile::default()] {
                cp.set_meta(&meta).unwrap();
                let back = CheckpointFile::from_bytes(&cp.to_bytes().unwrap(), p()).unwrap();
                assert_eq!(back.meta_value().unwrap(), meta);
                assert_eq!(back, cp);
            }
        }
    }

    #[test]
    fn file_round_trip_creates_dirs_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("runs").join("a");
        let path = sub.join("model.qck");
        let cp = sample();
        cp.save_atomic(&path).unwrap();
        assert_eq!(CheckpointFile::load(&path).unwrap(), cp);
        assert_eq!(dir_names(&sub), vec!["model.qck"]);
        // Overwrite with different content.
        let other = model_like();
        other.save_atomic(&path).unwrap();
        assert_eq!(CheckpointFile::load(&path).unwrap(), other);
        assert_eq!(fs::read(&path).unwrap(), other.to_bytes().unwrap());
        assert_eq!(dir_names(&sub), vec!["model.qck"]);
    }

    #[test]
    fn truncation_at_every_cut_point_fails() {
        let bytes = sample().to_bytes().unwrap();
        for cut in 0..bytes.len() {
            let e = load_err(&bytes[..cut]);
            assert!(e.contains(P), "cut {cut}: {e}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        load_err(&longer);
    }

    #[test]
    fn every_bit_flip_in_tensor_data_is_a_checksum_error() {
        let bytes = sample().to_bytes().unwrap();
        let start = 8 + header_len(&bytes);
        assert!(bytes.len() - start >= 40);
        for i in start..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let e = load_err(&b);
                assert!(e.contains("checksum mismatch"), "byte {i} bit {bit}: {e}");
            }
        }
    }

    #[test]
    fn every_bit_flip_in_length_and_header_fails() {
        for cp in [sample(), empty_with_meta()] {
            let bytes = cp.to_bytes().unwrap();
            let end = 8 + header_len(&bytes);
            for i in 0..end {
                for bit in 0..8 {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    let e = load_err(&b);
                    assert!(e.contains(P), "byte {i} bit {bit}: {e}");
                }
            }
        }
    }

    #[test]
    fn foreign_or_wrong_magic_is_not_a_quill_checkpoint() {
        let mut md = quill_md("null");
        md.insert(KEY_MAGIC.to_string(), "something-else".to_string());
        let e = load_err(&encode(&sample().tensors, md).unwrap());
        assert!(
            e.contains("not a quill checkpoint") && e.contains("something-else"),
            "{e}"
        );

        let mut md = quill_md("null");
        md.remove(KEY_MAGIC);
        let e = load_err(&encode(&sample().tensors, md).unwrap());
        assert!(e.contains("not a quill checkpoint"), "{e}");

        // A plain safetensors file without any metadata.
        let e = load_err(&raw(
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("not a quill checkpoint"), "{e}");

        // Not safetensors at all.
        let e = load_err(b"hello, world! this is a text file\n");
        assert!(e.contains("not a safetensors file"), "{e}");
    }

    #[test]
    fn version_mismatch_says_newer_or_older() {
        let with_version = |v: &str| {
            let mut md = quill_md("null");
            md.insert(KEY_VERSION.to_string(), v.to_string());
            load_err(&encode(&sample().tensors, md).unwrap())
        };
        let e = with_version("2");
        assert!(
            e.contains("written by a newer quill checkpoint format 2, this build reads format 1"),
            "{e}"
        );
        let e = with_version("0");
        assert!(
            e.contains("written by an older") || e.contains("written by a older"),
            "{e}"
        );
        assert!(e.contains("format 0, this build reads format 1"), "{e}");
        let e = with_version("one");
        assert!(e.contains("unreadable"), "{e}");
    }

    #[test]
    fn non_f32_dtype_is_rejected() {
        let data = [0u8; 4];
        let view = safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &data).unwrap();
        let mut md: std::collections::HashMap<String, String> =
            quill_md("null").into_iter().collect();
        md.insert(KEY_CHECKSUM.to_string(), "0".repeat(64));
        let bytes = safetensors::serialize([("half", view)], Some(md)).unwrap();
        let e = load_err(&bytes);
        assert!(
            e.contains("\"half\"") && e.contains("F16") && e.contains("only F32"),
            "{e}"
        );
    }

    #[test]
    fn invalid_meta_json_and_missing_or_wrong_checksum() {
        let e = load_err(&encode(&sample().tensors, quill_md("{not json")).unwrap());
        assert!(e.contains("invalid JSON metadata"), "{e}");

        let mut md = quill_md("null");
        md.remove(KEY_META);
        let e = load_err(&encode(&sample().tensors, md).unwrap());
        assert!(e.contains("missing quill_meta"), "{e}");

        let header = r#"{"__metadata__":{"format":"pt","quill_magic":"quill-checkpoint","quill_format_version":"1","quill_meta":"null"}}"#;
        let e = load_err(&raw(header, &[]));
        assert!(e.contains("missing quill_checksum"), "{e}");

        let header = r#"{"__metadata__":{"format":"pt","quill_magic":"quill-checkpoint","quill_format_version":"1","quill_meta":"null","quill_checksum":"00"}}"#;
        let e = load_err(&raw(header, &[]));
        assert!(e.contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn huge_declared_sizes_with_tiny_file_fail_fast() {
        let md = r#""__metadata__":{"quill_magic":"quill-checkpoint","quill_format_version":"1"}"#;
        let cases = [
            // Shape of 2^60 elements, offsets claiming 2^62 bytes, 8 bytes of data.
            format!(
                r#"{{{md},"w":{{"dtype":"F32","shape":[1099511627776,1048576],"data_offsets":[0,4611686018427387904]}}}}"#
            ),
            // Offsets that fit the data but a shape whose byte size overflows usize.
            format!(
                r#"{{{md},"w":{{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}}}}"#
            ),
            format!(
                r#"{{{md},"w":{{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}}}"#
            ),
            // Offsets beyond usize / negative / non-integer.
            format!(
                r#"{{{md},"w":{{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}}}}"#
            ),
            format!(r#"{{{md},"w":{{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}}}}"#),
            format!(r#"{{{md},"w":{{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}}}}"#),
            // Duplicate key: the later entry must be bounds-checked too.
            format!(
                r#"{{{md},"w":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}},"w":{{"dtype":"U8","shape":[2305843009213693951],"data_offsets":[0,2305843009213693951]}}}}"#
            ),
        ];
        for h in &cases {
            load_err(&raw(h, &[0; 8]));
        }
        // Eight tensors whose offsets sum to just under 2^64: the end-of-data arithmetic inside
        // the safetensors crate would overflow on this; the pre-check rejects it first.
        let s: u64 = (1u64 << 61) - 1;
        let mut h = format!("{{{md}");
        for i in 0..8u64 {
            h.push_str(&format!(
                r#","t{i}":{{"dtype":"U8","shape":[{s}],"data_offsets":[{},{}]}}"#,
                i * s,
                (i + 1) * s
            ));
        }
        h.push('}');
        let e = load_err(&raw(&h, &[0; 8]));
        assert!(e.contains("past the end"), "{e}");

        // Header length fields that lie.
        let good = sample().to_bytes().unwrap();
        for n in [
            u64::MAX,
            1 << 40,
            MAX_HEADER_BYTES as u64 + 1,
            good.len() as u64 - 7,
            0,
            1,
        ] {
            let mut b = good.clone();
            b[..8].copy_from_slice(&n.to_le_bytes());
            load_err(&b);
        }
    }

    #[test]
    fn get_and_take_check_shapes() {
        let mut cp = sample();
        assert_eq!(
            cp.get("lstm.0.bias", &[4], p()).unwrap(),
            &[1.0, 2.0, 3.0, 4.0]
        );
        let e = cp.get("lstm.0.bias", &[2, 2], p()).unwrap_err().to_string();
        assert!(
            e.contains(P)
                && e.contains("\"lstm.0.bias\"")
                && e.contains("[4]")
                && e.contains("[2, 2]"),
            "{e}"
        );
        let e = cp.take("nope", &[3], p()).unwrap_err().to_string();
        assert!(
            e.contains("missing tensor \"nope\"") && e.contains("[3]"),
            "{e}"
        );
        // A failed take leaves the tensor in place; a successful one removes it.
        assert!(cp.take("embed.weight", &[2, 3], p()).is_err());
        assert_eq!(cp.take("embed.weight", &[3, 2], p()).unwrap().len(), 6);
        assert!(!cp.tensors.contains_key("embed.weight"));
        // Hand-built inconsistent tensor is caught too.
        cp.tensors.insert(
            "bad".into(),
            Tensor {
                shape: vec![3],
                data: vec![1.0],
            },
        );
        assert!(cp.get("bad", &[3], p()).is_err());
    }

    #[test]
    fn to_bytes_rejects_inconsistent_tensors() {
        let mut cp = sample();
        cp.tensors.insert(
            "bad".into(),
            Tensor {
                shape: vec![3],
                data: vec![1.0],
            },
        );
        assert!(matches!(cp.to_bytes(), Err(Error::Shape(_))));
        let mut cp = sample();
        cp.tensors.insert(
            RESERVED_NAME.into(),
            Tensor {
                shape: vec![1],
                data: vec![1.0],
            },
        );
        assert!(cp.to_bytes().is_err());
        // ... and save_atomic fails before touching the disk.
        let dir = tempfile::tempdir().unwrap();
        assert!(cp.save_atomic(&dir.path().join("m.qck")).is_err());
        assert!(dir_names(dir.path()).is_empty());
    }

    #[test]
    fn failed_save_keeps_old_file_and_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.qck");
        sample().save_atomic(&path).unwrap();
        let old = fs::read(&path).unwrap();
        let new = model_like().to_bytes().unwrap();
        for fail in [FailPoint::Write, FailPoint::Rename] {
            let e = write_atomic(&path, &new, fail).unwrap_err().to_string();
            assert!(
                e.contains(&*path.to_string_lossy()) && e.contains("simulated"),
                "{e}"
            );
            assert_eq!(fs::read(&path).unwrap(), old, "{fail:?}");
            assert_eq!(dir_names(dir.path()), vec!["model.qck"], "{fail:?}");
        }
        assert_eq!(CheckpointFile::load(&path).unwrap(), sample());
    }

    #[test]
    fn save_under_a_file_or_over_a_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.txt");
        fs::write(&file, b"keep me").unwrap();
        let path = file.join("model.qck");
        let e = sample().save_atomic(&path).unwrap_err().to_string();
        assert!(e.contains(&*path.to_string_lossy()), "{e}");
        assert_eq!(fs::read(&file).unwrap(), b"keep me");
        assert_eq!(dir_names(dir.path()), vec!["notes.txt"]);

        let target = dir.path().join("adir");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();
        let e = sample().save_atomic(&target).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        assert_eq!(dir_names(&target), vec!["inside"]);
        assert_eq!(dir_names(dir.path()), vec!["adir", "notes.txt"]);
    }

    #[test]
    fn load_refuses_missing_dirs_huge_and_garbage_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.qck");
        let e = CheckpointFile::load(&missing).unwrap_err().to_string();
        assert!(
            e.contains("missing.qck") && e.contains("cannot read"),
            "{e}"
        );

        let e = CheckpointFile::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");

        // Sparse file just over the cap: refused from its size, never read.
        let huge = dir.path().join("huge.qck");
        fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let e = CheckpointFile::load(&huge).unwrap_err().to_string();
        assert!(e.contains("huge.qck") && e.contains("8 GiB limit"), "{e}");

        let garbage = dir.path().join("garbage.qck");
        fs::write(&garbage, [0xffu8; 100]).unwrap();
        let e = CheckpointFile::load(&garbage).unwrap_err().to_string();
        assert!(
            e.contains("garbage.qck") && e.contains("not a safetensors file"),
            "{e}"
        );
    }

    fn seeds_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/checkpoint_load")
    }

    /// The fuzz seed corpus: valid files and damaged ones (a few refusal paths each).
    fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let small = sample().to_bytes().unwrap();
        let mut flipped = small.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x10;
        let mut md = quill_md("null");
        md.insert(KEY_VERSION.to_string(), "2".to_string());
        let huge = r#"{"__metadata__":{"quill_magic":"quill-checkpoint","quill_format_version":"1"},"w":{"dtype":"F32","shape":[1099511627776,1048576],"data_offsets":[0,4611686018427387904]}}"#;
        vec![
            ("valid-small.safetensors", small.clone()),
            (
                "valid-empty.safetensors",
                empty_with_meta().to_bytes().unwrap(),
            ),
            ("valid-model.safetensors", model_like().to_bytes().unwrap()),
            (
                "damaged-truncated.safetensors",
                small[..small.len() * 2 / 3].to_vec(),
            ),
            ("damaged-bitflip.safetensors", flipped),
            (
                "damaged-version2.safetensors",
                encode(&model_like().tensors, md).unwrap(),
            ),
            ("damaged-huge-shape.safetensors", raw(huge, &[0; 8])),
        ]
    }

    /// Regenerate the committed fuzz seeds: `cargo test --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files into fuzz/seeds; run by hand after a format change"]
    fn write_fuzz_seeds() {
        let dir = seeds_dir();
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in fuzz_seeds() {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn committed_fuzz_seeds_load_as_labelled() {
        let dir = seeds_dir();
        let mut seen = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let r = CheckpointFile::load(&path);
            if name.starts_with("valid-") {
                r.unwrap();
            } else {
                assert!(name.starts_with("damaged-"), "{name}");
                r.unwrap_err();
            }
            seen += 1;
        }
        assert!(
            seen >= fuzz_seeds().len(),
            "only {seen} seeds in {}",
            dir.display()
        );
    }

    /// Random mutation stress test standing in for fuzzing on stable: seeded, bounded, checks
    /// that `from_bytes` never panics and that anything it accepts is exactly the original.
    #[test]
    fn random_mutations_never_panic() {
        use rand::{Rng, SeedableRng};
        let seeds: Vec<(CheckpointFile, Vec<u8>)> = [sample(), empty_with_meta(), model_like()]
            .into_iter()
            .map(|cp| {
                let b = cp.to_bytes().unwrap();
                (cp, b)
            })
            .collect();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(0x5eed_c4ec);
        let (mut accepted, mut rejected) = (0usize, 0usize);
        for iter in 0..20_000 {
            let (orig, seed) = &seeds[rng.random_range(0..seeds.len())];
            let mut b = seed.clone();
            for _ in 0..rng.random_range(1..=3) {
                mutate(&mut b, &mut rng);
            }
            let r = std::panic::catch_unwind(|| CheckpointFile::from_bytes(&b, p()));
            match r {
                Err(_) => panic!("iteration {iter}: from_bytes panicked on {b:02x?}"),
                Ok(Ok(cp)) => {
                    assert_eq!(&cp, orig, "iteration {iter}: accepted altered content");
                    accepted += 1;
                }
                Ok(Err(_)) => rejected += 1,
            }
        }
        assert_eq!(accepted + rejected, 20_000);
        assert!(
            rejected > 18_000,
            "accepted {accepted}, rejected {rejected}"
        );
    }

    fn mutate(b: &mut Vec<u8>, rng: &mut impl rand::Rng) {
        let len = b.len();
        let at = |rng: &mut dyn rand::RngCore, n: usize| {
            if n == 0 {
                0
            } else {
                (rng.next_u64() % n as u64) as usize
            }
        };
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = at(rng, len);
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = at(rng, len);
                b[i] = rng.random();
            }
            2 => b.truncate(at(rng, len + 1)),
            3 => {
                let i = at(rng, len + 1);
                let n = rng.random_range(1..16);
                let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(i..i, ins);
            }
            4 if len > 0 => {
                let i = at(rng, len);
                let j = (i + rng.random_range(1..32)).min(len);
                b.drain(i..j);
            }
            5 if len >= 8 => {
                let n = u64::from_le_bytes(b[..8].try_into().unwrap());
                let choices = [
                    0,
                    1,
                    n.wrapping_sub(1),
                    n.wrapping_add(1),
                    n.wrapping_add(8),
                    len as u64,
                    u64::MAX,
                    rng.random(),
                ];
                let v = choices[rng.random_range(0..choices.len())];
                b[..8].copy_from_slice(&v.to_le_bytes());
            }
            6 if len > 0 => {
                let i = at(rng, len);
                let j = (i + rng.random_range(1..64)).min(len);
                let chunk = b[i..j].to_vec();
                let k = at(rng, len + 1);
                b.splice(k..k, chunk);
            }
            7 => {
                // Replace one ASCII digit (shapes, offsets, version) with another.
                let digits: Vec<usize> = (0..len).filter(|&i| b[i].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    let i = digits[at(rng, digits.len())];
                    b[i] = b"0123456789"[rng.random_range(0..10)];
                }
            }
            _ => {
                let n = rng.random_range(1..32);
                b.extend((0..n).map(|_| rng.random::<u8>()));
            }
        }
    }

    #[test]
    fn foreign_tensors_borrow_any_float_dtype_and_refuse_the_rest() {
        let f16 = [0u8, 0x3c, 0, 0xc0]; // 1.0, -2.0
        let f64b: Vec<u8> = [0.5f64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let i32b = [1u8, 0, 0, 0];
        let views = vec![
            (
                "a".to_string(),
                safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &f16).unwrap(),
            ),
            (
                "b".to_string(),
                safetensors::tensor::TensorView::new(Dtype::F64, vec![1, 1], &f64b).unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(views, None).unwrap();
        let t = foreign_tensors(&bytes, p()).unwrap();
        assert_eq!(t["a"].dtype, Dtype::F16);
        assert_eq!(t["a"].data, &f16);
        assert_eq!(t["b"].shape, vec![1, 1]);
        assert_eq!(float_dtype_size(Dtype::BF16), Some(2));
        // A quill checkpoint is a safetensors file too.
        assert_eq!(
            foreign_tensors(&sample().to_bytes().unwrap(), p())
                .unwrap()
                .len(),
            5
        );
        let ints = safetensors::serialize(
            vec![(
                "n".to_string(),
                safetensors::tensor::TensorView::new(Dtype::I32, vec![1], &i32b).unwrap(),
            )],
            None,
        )
        .unwrap();
        let e = foreign_tensors(&ints, p()).unwrap_err().to_string();
        assert!(e.contains("\"n\"") && e.contains("I32"), "{e}");
        for cut in 0..bytes.len() {
            assert!(foreign_tensors(&bytes[..cut], p()).is_err(), "cut {cut}");
        }
    }
}
