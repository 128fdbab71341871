"""The prepared-data store (uint8 splits and pixel statistics) and model inputs.

Prepared splits are plain uint8/int64 tensors: training and evaluation hold them in
memory and batch by indexing, with no per-sample Python work. Training's own batching
(shuffling and augmentation) is in ``fmnist.batching``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist import CLASSES
from fmnist.common import UserError, first_line
from fmnist.files import Unreadable, atomic_dir, load_torch, save_torch, write_json

SPLITS = ("train", "val", "test")
STATS_FILE = "stats.json"
# What a training run reads of the prepared store (and what its resume state must match)
TRAINING_FILES = ("train.pt", "val.pt", STATS_FILE)


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, 28, 28)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float


def save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    save_torch({"images": torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))},
               path)


def check_prepared(prepared: str | Path, files: tuple[str, ...] = TRAINING_FILES) -> None:
    """Each of ``files`` is in the prepared store, or a one-line error says what to run."""
    for name in files:
        path = Path(prepared) / name
        if not path.exists():
            raise UserError(f"{path} not found: run `dvc repro preprocess` first")


def load_split(prepared: str | Path, split: str) -> Split:
    """One split of the prepared store, checked: uint8 28x28 images, int64 labels in
    0..9, one per image, as many as stats.json records."""
    name = split
    path = Path(prepared) / f"{split}.pt"
    check_prepared(prepared, (path.name,))
    try:
        obj = load_torch(path)
        split = Split(obj["images"], obj["labels"])
    except (Unreadable, TypeError, KeyError, IndexError) as exc:
        raise UserError(f"{path} is unreadable ({first_line(exc, 80)}): run "
                        "`dvc repro preprocess` (or `dvc pull preprocess`)") from None
    if not isinstance(split.images, torch.Tensor) or not isinstance(split.labels, torch.Tensor):
        raise UserError(f"{path} does not hold image and label tensors: run "
                        "`dvc repro preprocess`")
    fix = "run `dvc repro preprocess` (or `dvc pull preprocess`)"
    if split.images.dtype != torch.uint8 or split.images.dim() != 3 \
            or split.images.shape[1:] != (28, 28) or split.labels.dim() != 1 \
            or len(split.images) != len(split.labels):
        raise UserError(f"{path} does not hold 28x28 uint8 images with one label each: {fix}")
    if split.labels.dtype != torch.int64:
        raise UserError(f"{path}: labels are {split.labels.dtype}, not int64: {fix}")
    if len(split.labels) and not 0 <= int(split.labels.min()) <= int(split.labels.max()) \
            < len(CLASSES):
        bad = split.labels[(split.labels < 0) | (split.labels >= len(CLASSES))][0]
        raise UserError(f"{path}: label {int(bad)} is outside 0..{len(CLASSES) - 1}: {fix}")
    counts = _stats_counts(prepared)
    if name in counts and counts[name] != len(split):
        raise UserError(f"{path} holds {len(split)} images where {STATS_FILE} says "
                        f"{counts[name]}: the prepared store is a mix of two runs; {fix}")
    return split


def _stats_counts(prepared: str | Path) -> dict[str, int]:
    """The split sizes stats.json records (empty where it is not there: the split's own
    checks still run)."""
    if not (Path(prepared) / STATS_FILE).exists():
        return {}
    return read_stats(prepared)["counts"]


def read_stats(prepared: str | Path) -> dict[str, Any]:
    """``stats.json`` of the prepared store: the training split's pixel mean and std,
    and the images per split."""
    path = Path(prepared) / STATS_FILE
    check_prepared(prepared, (STATS_FILE,))
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        out = {"mean": float(d["mean"]), "std": float(d["std"]),
               "counts": {k: int(v) for k, v in d["counts"].items()}}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({type(exc).__name__}): run "
                        "`dvc repro preprocess`") from None
    if not (math.isfinite(out["mean"]) and math.isfinite(out["std"]) and out["std"] > 0):
        raise UserError(f"{path}: the pixel statistics must be finite with std > 0 (got "
                        f"mean {out['mean']}, std {out['std']}): run `dvc repro preprocess`")
    if any(v < 0 for v in out["counts"].values()):
        raise UserError(f"{path}: negative split sizes: run `dvc repro preprocess`")
    return out


def load_stats(prepared: str | Path) -> Stats:
    d = read_stats(prepared)
    return Stats(d["mean"], d["std"])


def write_prepared(out: Path, train: tuple[np.ndarray, np.ndarray],
                   val: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray]) -> dict:
    """Write the three splits and the training split's pixel statistics (in [0, 1] units)."""
    pixels = train[0].astype(np.float64) / 255.0
    if pixels.size and pixels.std() == 0:
        raise UserError("the training images are all one value (pixel std 0): no input "
                        "normalization is possible; check the raw data (`dvc repro download`)")
    stats = {
        "mean": float(pixels.mean()) if pixels.size else 0.0,
        "std": float(pixels.std()) if pixels.size else 1.0,
        "counts": {"train": len(train[1]), "val": len(val[1]), "test": len(test[1])},
        "classes": list(CLASSES),
    }
    with atomic_dir(out) as tmp:
        for name, (images, labels) in zip(SPLITS, (train, val, test), strict=True):
            save_split(tmp / f"{name}.pt", images, labels)
        write_json(tmp / STATS_FILE, stats)
    return stats


def to_input(x: torch.Tensor, stats: Stats | None) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), scaled to [0, 1] and optionally normalized."""
    x = x.unsqueeze(1).to(torch.float32)
    if stats is None:
        return x.mul_(1.0 / 255.0)
    return x.mul_(1.0 / (255.0 * stats.std)).sub_(stats.mean / stats.std)


def eval_batches(split: Split, batch_size: int,
                 stats: Stats | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        yield (to_input(split.images[start:start + batch_size], stats),
               split.labels[start:start + batch_size])
