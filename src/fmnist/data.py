"""IDX files, the prepared-data store, and in-memory batching.

The IDX reader is our own so that every way a file can be malformed gives an error that
names the file. Prepared splits are plain uint8/int64 tensors: training holds them in
memory and batches by indexing, with no per-sample Python work.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from fmnist import CLASSES
from fmnist.common import UserError, atomic_path, write_json

if TYPE_CHECKING:
    from fmnist.params import Augment

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
SPLITS = ("train", "val", "test")


class IdxError(UserError):
    pass


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (by magic, not by name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise IdxError(f"{path}: corrupt gzip stream ({exc})") from None
    return raw


def sha256_content(path: Path) -> str:
    """SHA-256 of the decompressed bytes: the same for any faithful mirror of a file."""
    return hashlib.sha256(read_bytes(path)).hexdigest()


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


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in .gz)."""
    path = Path(path)
    native = array.dtype.newbyteorder("=")
    if native not in IDX_CODES:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    code = IDX_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def load_raw_split(raw_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split ('train' or 't10k') of the raw IDX files."""
    img_path = raw_dir / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = raw_dir / f"{prefix}-labels-idx1-ubyte.gz"
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxError(f"{img_path}: expected uint8 images of 28x28, got {images.dtype} "
                       f"{images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxError(f"{lbl_path}: expected a 1-D uint8 label vector, got {labels.shape}")
    if len(images) != len(labels):
        raise IdxError(f"{lbl_path}: {len(labels)} labels for {len(images)} images in "
                       f"{img_path.name}")
    if len(labels) and labels.max() >= len(CLASSES):
        bad = int(np.argmax(labels >= len(CLASSES)))
        raise IdxError(f"{lbl_path}: label {labels[bad]} at index {bad} is outside "
                       f"0..{len(CLASSES) - 1}")
    return images, labels


# ---------------------------------------------------------------- prepared store


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, 28, 28)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save``, atomically, and the same bytes for the same tensors.

    Saved to a path, torch names the archive's folder inside the zip after the file,
    here a random temporary name: every run would then write a different file, and DVC
    would see new data where nothing changed. Saved to an open file, it is "archive".
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    save_torch({"images": torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))},
               path)


def load_split(prepared: str | Path, split: str) -> Split:
    path = Path(prepared) / f"{split}.pt"
    if not path.exists():
        raise UserError(f"{path} not found: run `dvc repro preprocess` first")
    obj = torch.load(path, weights_only=True)
    return Split(obj["images"], obj["labels"])


def load_stats(prepared: str | Path) -> Stats:
    path = Path(prepared) / "stats.json"
    if not path.exists():
        raise UserError(f"{path} not found: run `dvc repro preprocess` first")
    d = json.loads(path.read_text())
    return Stats(float(d["mean"]), float(d["std"]))


def write_prepared(out: Path, train: tuple[np.ndarray, np.ndarray],
                   val: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray]) -> dict:
    """Write the three splits and the training split's pixel statistics (in [0, 1] units)."""
    pixels = train[0].astype(np.float64) / 255.0
    stats = {
        "mean": float(pixels.mean()) if pixels.size else 0.0,
        "std": float(pixels.std()) if pixels.size else 1.0,
        "counts": {"train": len(train[1]), "val": len(val[1]), "test": len(test[1])},
        "classes": list(CLASSES),
    }
    for name, (images, labels) in zip(SPLITS, (train, val, test), strict=True):
        save_split(out / f"{name}.pt", images, labels)
    write_json(out / "stats.json", stats)
    return stats


# ---------------------------------------------------------------- batching


def augment_batch(x: torch.Tensor, crop_padding: int, hflip: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a whole uint8 batch.

    Both come down to one gather: each output pixel's index into the padded image is
    computed for the batch at once, so there is no per-image Python work.
    """
    n, h, w = x.shape
    p = crop_padding
    cols = torch.arange(w).expand(n, w)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flip[:, None], (w - 1) - cols, cols)
    if p:
        x = F.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator)
        ox = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator)
    else:
        oy = ox = torch.zeros((n, 1, 1), dtype=torch.int64)
    idx = (oy + torch.arange(h)[None, :, None]) * (w + 2 * p) + ox + cols[:, None, :]
    return x.reshape(n, -1).gather(1, idx.reshape(n, -1)).reshape(n, h, w)


def to_input(x: torch.Tensor, stats: Stats | None) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), scaled to [0, 1] and optionally normalized."""
    x = x.unsqueeze(1).to(torch.float32)
    if stats is None:
        return x.mul_(1.0 / 255.0)
    return x.mul_(1.0 / (255.0 * stats.std)).sub_(stats.mean / stats.std)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's shard of a seeded permutation of ``range(n)`` for one epoch.

    Seeded by (seed, epoch) alone, so an epoch's order does not depend on what ran
    before it: a resumed run sees the same batches as an uninterrupted one, and the
    ranks of a distributed run see disjoint shards that together cover the epoch.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[rank::world]


def erase_batch(x: torch.Tensor, prob: float, area: tuple[float, float],
                ratio: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al., 2017) of a whole uint8 batch, without a Python loop.

    Each image, with probability ``prob``, gets one rectangle of uniform random noise.
    Its area is a uniform fraction in ``area`` of the image's, its aspect ratio
    (height/width) log-uniform in ``ratio``; a side that comes out longer than the
    image is cut to fit, where torchvision's RandomErasing would draw again.
    """
    n, h, w = x.shape
    apply = torch.rand(n, generator=generator) < prob
    frac = torch.empty(n).uniform_(area[0], area[1], generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    pixels, r = frac * (h * w), log_r.exp()
    eh = (pixels * r).sqrt().round().clamp(1, h).long()
    ew = (pixels / r).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    x0 = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    mask = ((rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None])
            & (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None])
            & apply[:, None, None])
    noise = torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=generator)
    return torch.where(mask, noise, x)


def train_batches(split: Split, batch_size: int, order: torch.Tensor, stats: Stats | None,
                  augment: Augment,
                  generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented, normalized training batches in ``order``.

    Augmentations that are off draw no random numbers, so turning one on leaves the
    others' draws as they were.
    """
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = split.images[idx]
        if augment.crop_padding or augment.hflip:
            x = augment_batch(x, augment.crop_padding, augment.hflip, generator)
        if augment.erase:
            x = erase_batch(x, augment.erase, augment.erase_area, augment.erase_ratio,
                            generator)
        yield to_input(x, stats), split.labels[idx]


def eval_batches(split: Split, batch_size: int,
                 stats: Stats | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        yield (to_input(split.images[start:start + batch_size], stats),
               split.labels[start:start + batch_size])
