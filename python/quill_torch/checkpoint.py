"""quill checkpoint files (src/checkpoint/format.rs), written and read without torch.

A plain safetensors file: an 8-byte little-endian header length N, N bytes of JSON (padded
with spaces to a multiple of 8), then the F32 tensors back to back in name order. The
header's `__metadata__` holds `format: pt`, `quill_magic`, `quill_format_version`,
`quill_meta` (the JSON metadata) and `quill_checksum`: SHA-256 over a length-prefixed stream
(domain tag, metadata entries but the checksum in key order, then each tensor's name, rank,
dimensions, byte length and bytes). quill refuses a file whose checksum does not match, so
this writer computes it exactly as quill does; the reader checks it the same way.

Files are written atomically: a temporary file in the target's directory, fsync, rename over
the target, fsync of the directory. An interrupted save leaves the previous file intact.
"""

import hashlib
import itertools
import json
import os
import struct

import numpy as np

MAGIC = "quill-checkpoint"
FORMAT_VERSION = 1
CHECKSUM_DOMAIN = b"quill-checkpoint-checksum-v1\0"
MAX_HEADER_BYTES = 100_000_000
MAX_FILE_BYTES = 8 << 30

_tmp_seq = itertools.count()


class CheckpointError(ValueError):
    """A checkpoint quill would refuse; the message names the file."""


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _checksum(metadata: dict, tensors: dict) -> str:
    """`tensors`: name -> (shape, little-endian f32 bytes)."""
    h = hashlib.sha256()
    h.update(CHECKSUM_DOMAIN)
    entries = sorted((k, v) for k, v in metadata.items() if k != "quill_checksum")
    h.update(_u64(len(entries)))
    for k, v in entries:
        for s in (k, v):
            b = s.encode("utf-8")
            h.update(_u64(len(b)))
            h.update(b)
    h.update(_u64(len(tensors)))
    for name in sorted(tensors, key=lambda s: s.encode("utf-8")):
        shape, data = tensors[name]
        b = name.encode("utf-8")
        h.update(_u64(len(b)))
        h.update(b)
        h.update(_u64(len(shape)))
        for d in shape:
            h.update(_u64(d))
        h.update(_u64(len(data)))
        h.update(data)
    return h.hexdigest()


def encode(tensors: dict, meta: dict) -> bytes:
    """`tensors`: name -> numpy array (any float type; stored as little-endian f32)."""
    raw = {}
    for name, a in tensors.items():
        a = np.ascontiguousarray(np.asarray(a, dtype="<f4"))
        raw[name] = (list(a.shape), a.tobytes())
    md = {
        "format": "pt",
        "quill_magic": MAGIC,
        "quill_format_version": str(FORMAT_VERSION),
        "quill_meta": json.dumps(meta, separators=(",", ":"), allow_nan=False),
    }
    md["quill_checksum"] = _checksum(md, raw)
    header = {"__metadata__": dict(sorted(md.items()))}
    offset = 0
    names = sorted(raw, key=lambda s: s.encode("utf-8"))
    for name in names:
        shape, data = raw[name]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    if len(h) > MAX_HEADER_BYTES:
        raise CheckpointError(f"header would be {len(h)} bytes, more than quill accepts")
    return b"".join([_u64(len(h)), h] + [raw[n][1] for n in names])


def write_atomic(path: str, data: bytes) -> None:
    """Temporary file beside `path`, fsync, rename over `path`, fsync of the directory."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}-{next(_tmp_seq)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(path: str, tensors: dict, meta: dict) -> None:
    write_atomic(path, encode(tensors, meta))


def load(path: str):
    """Reads and checks a quill checkpoint: returns (tensors as f32 numpy arrays, meta dict)."""
    def err(msg):
        return CheckpointError(f"{path}: {msg}")

    size = os.stat(path).st_size
    if size > MAX_FILE_BYTES:
        raise err(f"file is {size} bytes, larger than the limit for a checkpoint")
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise err("not a safetensors file, or truncated")
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > MAX_HEADER_BYTES or 8 + n > len(buf):
        raise err(f"declared header length {n} does not fit the file")
    try:
        header = json.loads(buf[8:8 + n])
        md = header.pop("__metadata__")
    except (ValueError, KeyError) as e:
        raise err(f"not a safetensors file, or truncated: {e}") from None
    if md.get("quill_magic") != MAGIC:
        raise err("not a quill checkpoint (no quill_magic in the safetensors metadata)")
    if md.get("quill_format_version") != str(FORMAT_VERSION):
        raise err(f"quill checkpoint format {md.get('quill_format_version')!r}; this reader "
                  f"reads {FORMAT_VERSION}")
    data = memoryview(buf)[8 + n:]
    raw, arrays = {}, {}
    for name, info in header.items():
        if info.get("dtype") != "F32":
            raise err(f"tensor {name!r} has dtype {info.get('dtype')}; quill stores only F32")
        shape = [int(d) for d in info["shape"]]
        start, end = info["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= start <= end <= len(data)) or end - start != 4 * count:
            raise err(f"tensor {name!r}: shape {shape} does not match data offsets {start}..{end}")
        b = bytes(data[start:end])
        raw[name] = (shape, b)
        arrays[name] = np.frombuffer(b, dtype="<f4").reshape(shape).astype(np.float32)
    if _checksum(md, raw) != md.get("quill_checksum"):
        raise err("data is corrupted (checksum mismatch over tensor data and metadata)")
    try:
        meta = json.loads(md["quill_meta"])
    except (KeyError, ValueError) as e:
        raise err(f"invalid quill_meta: {e}") from None
    return arrays, meta
