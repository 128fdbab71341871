"""Raw IDX files -> the prepared store: train/val/test tensors and the train split's stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from fmnist.common import UserError
from fmnist.data import write_prepared
from fmnist.idx import load_raw_split
from fmnist.params import PARAMS_FILE, PreprocessParams


def split_validation(images: np.ndarray, labels: np.ndarray, val_size: int, seed: int,
                     source: str | Path = PARAMS_FILE) -> tuple[
                         tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Hold out a seeded, class-stratified validation set of ``val_size`` images; both
    sides keep at least one image of every class."""
    if val_size == 0:
        return (images, labels), (images[:0], labels[:0])
    check_split(labels, val_size, source)
    idx_train, idx_val = train_test_split(
        np.arange(len(labels)), test_size=val_size, random_state=seed, stratify=labels)
    idx_train.sort()
    idx_val.sort()
    return (images[idx_train], labels[idx_train]), (images[idx_val], labels[idx_val])


def check_split(labels: np.ndarray, val_size: int, source: str | Path = PARAMS_FILE) -> None:
    """A UserError where ``val_size`` images cannot be held out of ``labels`` with every
    class on both sides (``fmnist check-params`` asks too, before DVC removes outputs)."""
    if val_size == 0:
        return
    key = f"{source}: preprocess.val_size: {val_size}"
    if val_size >= len(labels):
        raise UserError(f"{key} leaves no training images (the training split has "
                        f"{len(labels)})")
    n_classes = len(np.unique(labels))
    if val_size < n_classes:
        raise UserError(f"{key} is fewer than the {n_classes} classes: a stratified "
                        "split needs one image per class")
    if len(labels) - val_size < n_classes:
        raise UserError(f"{key} leaves {len(labels) - val_size} training images for "
                        f"{n_classes} classes: at most {len(labels) - n_classes}")


def preprocess(params: PreprocessParams, raw_dir: str | Path, out_dir: str | Path,
               source: str | Path = PARAMS_FILE) -> dict:
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    train_images, train_labels = load_raw_split(raw_dir, "train")
    test = load_raw_split(raw_dir, "t10k")
    train, val = split_validation(train_images, train_labels, params.val_size, params.seed,
                                  source)
    return write_prepared(out_dir, train, val, test)
