"""The raw IDX files: reading (every malformation named) and writing.

The IDX reader is our own so that every way a file can be malformed gives an error that
names the file.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from fmnist import NUM_CLASSES
from fmnist.common import UserError
from fmnist.files import atomic_path
from fmnist.params import RAW_FILES

# IDX type code -> big-endian numpy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_CODES = {v.newbyteorder("="): k for k, v in IDX_DTYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(UserError):
    pass


# The most any IDX file may hold once decompressed: Fashion-MNIST's largest is 47 MB;
# a gzip "bomb" of a few MB would otherwise inflate to gigabytes
MAX_IDX_BYTES = 256 << 20


def read_bytes(path: Path, limit: int = MAX_IDX_BYTES) -> bytes:
    """The file's content, decompressed when it is gzip (by magic, not by name); more
    than ``limit`` bytes either side of the decompression is an IdxError."""
    path = Path(path)
    if path.stat().st_size > limit:
        raise IdxError(f"{path}: over {limit:,} bytes, larger than any IDX file of the data")
    raw = path.read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(raw, limit + 1)
        if len(out) > limit:
            raise IdxError(f"{path}: decompresses to over {limit:,} bytes, larger than "
                           "any IDX file of the data")
        if not inflate.eof:
            raise IdxError(f"{path}: corrupt gzip stream (truncated)")
        return out
    except zlib.error as exc:
        raise IdxError(f"{path}: corrupt gzip stream ({exc})") from None


def parse_idx(buf: bytes, name: str) -> np.ndarray:
    if len(buf) < 4:
        raise IdxError(f"{name}: too short for an IDX header ({len(buf)} bytes)")
    if buf[0] != 0 or buf[1] != 0:
        raise IdxError(f"{name}: bad magic number {buf[:4].hex()} (not an IDX file)")
    code, ndim = buf[2], buf[3]
    if code not in IDX_DTYPES:
        raise IdxError(f"{name}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise IdxError(f"{name}: IDX file with zero dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IdxError(f"{name}: truncated header ({len(buf)} bytes, needs {header})")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(buf) - header
    if actual != expected:
        kind = "truncated" if actual < expected else "has trailing bytes"
        raise IdxError(
            f"{name}: {kind}: dimensions {dims} need {expected} data bytes, found {actual}"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        buf = read_bytes(path)
    except FileNotFoundError:
        raise IdxError(f"{path}: file not found") from None
    return parse_idx(buf, str(path))


def write_idx(path: str | Path, array: np.ndarray) -> str:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in .gz); return
    the SHA-256 of its content, as ``download.sha256`` in params.yaml states it (of the
    decompressed bytes: the same for any faithful mirror of the file)."""
    path = Path(path)
    native = array.dtype.newbyteorder("=")
    if native not in IDX_CODES:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    code = IDX_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    content = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(content, mtime=0) if path.suffix == ".gz" else content)
    return hashlib.sha256(content).hexdigest()


def raw_name(source_name: str) -> str:
    """The name ``download`` stores a source's file under: its content decompressed,
    so the name less ``.gz`` (``train-images-idx3-ubyte``, as the IDX format names it)."""
    return source_name.removesuffix(".gz")


def raw_paths(raw_dir: Path, prefix: str) -> tuple[Path, Path]:
    """The images and labels files of one split ('train' or 't10k') in ``raw_dir``, as
    ``download`` stores them (``params.RAW_FILES``, decompressed)."""
    images, labels = (raw_dir / raw_name(name) for name in RAW_FILES
                      if name.startswith(f"{prefix}-"))
    return images, labels


def load_raw_split(raw_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split ('train' or 't10k') of the raw IDX files."""
    img_path, lbl_path = raw_paths(raw_dir, prefix)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxError(f"{img_path}: expected uint8 images of 28x28, got {images.dtype} "
                       f"{images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxError(f"{lbl_path}: expected a 1-D uint8 label vector, got {labels.shape}")
    if len(images) != len(labels):
        raise IdxError(f"{lbl_path}: {len(labels)} labels for {len(images)} images in "
                       f"{img_path.name}")
    if len(labels) and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise IdxError(f"{lbl_path}: label {labels[bad]} at index {bad} is outside "
                       f"0..{NUM_CLASSES - 1}")
    return images, labels
