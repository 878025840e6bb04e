"""quill's prepared token file (`quill prepare`, src/train/tokens.rs), read and checked.

Layout (README "Token file format"): a 128-byte little-endian header, the metadata JSON at
offset 128, the tokens at a 64-aligned offset. Every check quill makes is made here too:
magic, version, the three CRC-32s, the exact length, the tokenizer's SHA-256 and every
token < V. Nothing is allocated from a header field before the field is checked.
"""

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"QUILLTOK"
VERSION = 1
HEADER_LEN = 128
MAX_META = 1 << 30
ALIGN = 64
_DTYPES = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


class TokenFileError(ValueError):
    """A token file that quill would refuse; the message names the file."""


@dataclass
class TokenFile:
    path: str
    vocab: int
    n_tokens: int
    val_start: int
    data_offset: int
    dtype: np.dtype
    data_crc: int
    meta: dict
    meta_text: str

    @property
    def tokenizer_json(self) -> str:
        return self.meta["tokenizer"]

    def tokens(self) -> np.ndarray:
        """All tokens, memory-mapped read-only."""
        if self.n_tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.data_offset,
                         shape=(self.n_tokens,))

    def train(self) -> np.ndarray:
        return self.tokens()[: self.val_start]

    def val(self) -> np.ndarray:
        return self.tokens()[self.val_start:]

    def corpus_info(self) -> dict:
        """What quill's checkpoints record about the corpus (`CorpusInfo`), exactly as
        `quill train --tokens` fills it in, so `quill train --resume` accepts the file."""
        m = self.meta
        paths = m.get("paths") or []
        files = sum(1 for s in m.get("sources") or [] if s.get("text_bytes", 0) > 0)
        info = {
            "path": paths[0] if paths else "",
            "fingerprint": m["fingerprint"],
            "train_tokens": self.val_start,
            "val_tokens": self.n_tokens - self.val_start,
        }
        if len(paths) > 1:
            info["paths"] = paths
        if files != 1:
            info["files"] = files
        if m.get("val_paths"):
            info["val_paths"] = m["val_paths"]
        return info

    def verify(self, chunk: int = 1 << 24) -> None:
        """Reads every token once: the data CRC-32 and every id < V."""
        crc = 0
        width = self.dtype.itemsize
        total = self.n_tokens * width
        done = 0
        with open(self.path, "rb") as f:
            f.seek(self.data_offset)
            while done < total:
                n = min(chunk, total - done)
                buf = f.read(n)
                if len(buf) != n:
                    raise TokenFileError(f"{self.path}: cannot read the tokens (file shrank?)")
                crc = zlib.crc32(buf, crc)
                arr = np.frombuffer(buf, dtype=self.dtype)
                if arr.size and int(arr.max()) >= self.vocab:
                    at = int(np.argmax(arr >= self.vocab))
                    raise TokenFileError(
                        f"{self.path}: token {done // width + at} holds id {int(arr[at])}, outside "
                        f"the vocabulary of {self.vocab}: the file is damaged")
                done += n
        if crc != self.data_crc:
            raise TokenFileError(f"{self.path}: data checksum mismatch: the tokens are damaged")


def read_head(path: str) -> TokenFile:
    """Header and metadata, checked (cheap: 128 bytes and the metadata)."""
    def err(msg):
        return TokenFileError(f"{path}: {msg}")

    size = os.stat(path).st_size
    if size < HEADER_LEN:
        raise err(f"is {size} bytes, shorter than the {HEADER_LEN}-byte header: truncated or "
                  "not a token file")
    with open(path, "rb") as f:
        b = f.read(HEADER_LEN)
        if b[:8] != MAGIC:
            raise err("not a quill token file (no QUILLTOK magic)")
        (version,) = struct.unpack_from("<I", b, 8)
        if version != VERSION:
            raise err(f"format version {version}; this reader reads version {VERSION}")
        if zlib.crc32(b[:124]) != struct.unpack_from("<I", b, 124)[0]:
            raise err("header checksum mismatch: the file is damaged")
        width, vocab, n, val_start, offset, meta_len, data_crc, meta_crc = struct.unpack_from(
            "<IQQQQQII", b, 12)
        tok_sha = b[64:96]
        if width not in _DTYPES:
            raise err(f"unknown token width {width} bytes")
        if vocab == 0 or vocab > 1 << (8 * width):
            raise err(f"vocabulary size {vocab} does not fit {width}-byte tokens")
        if val_start > n:
            raise err(f"validation start {val_start} is past the {n} tokens")
        if meta_len > MAX_META or offset % ALIGN != 0 or offset < HEADER_LEN + meta_len:
            raise err(f"bad layout: metadata of {meta_len} bytes, data at offset {offset}")
        if offset + n * width != size:
            raise err(f"is {size} bytes but its header describes {offset + n * width}: the file "
                      "is truncated or damaged")
        meta_bytes = f.read(meta_len)
    if zlib.crc32(meta_bytes) != meta_crc:
        raise err("metadata checksum mismatch: the file is damaged")
    try:
        text = meta_bytes.decode("utf-8")
        meta = json.loads(text)
        tok = meta["tokenizer"]
        meta["fingerprint"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise err(f"metadata is not a quill token file description: {e}") from None
    if hashlib.sha256(tok.encode("utf-8")).digest() != tok_sha:
        raise err("the tokenizer does not match the hash in the header")
    return TokenFile(path=path, vocab=vocab, n_tokens=n, val_start=val_start, data_offset=offset,
                     dtype=_DTYPES[width], data_crc=data_crc, meta=meta, meta_text=text)


def open_token_file(path: str, verify: bool = True) -> TokenFile:
    tf = read_head(path)
    if verify:
        tf.verify()
    return tf
