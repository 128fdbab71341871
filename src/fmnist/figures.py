"""The PNG figures of the report: confusion heatmaps, training curves, mistakes grid."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmnist import CLASSES  # noqa: E402
from fmnist.files import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                    metadata={"Software": None})  # no version stamp: same bytes each run
    plt.close(fig)


def confusion_heatmap(cm: np.ndarray, title: str, path: Path) -> None:
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > threshold else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


REQUIRED_CURVES = ("epoch", "train_loss", "train_accuracy")


def read_curves(path: Path) -> dict[str, list[float]]:
    """The per-epoch curves a training stage wrote, checked: numbers in every column,
    the epoch and training columns present; else a one-line UserError naming the
    file and the stage that writes it."""
    from fmnist.common import UserError

    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        curves = {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}
        missing = [k for k in REQUIRED_CURVES if rows and k not in curves]
        if missing:
            raise ValueError(f"no column {missing[0]!r}")
        return curves
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a training curves file ({type(exc).__name__}: "
                        f"{str(exc)[:80]}): re-run the training stage that writes it "
                        "(`dvc repro`)") from None


def training_curves(tsv: Path, title: str, path: Path) -> bool:
    """Loss and accuracy per epoch; False (and no file) where the curves are empty."""
    c = read_curves(tsv)
    if not c:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, what in ((ax1, "loss"), (ax2, "accuracy")):
        ax.plot(c["epoch"], c[f"train_{what}"], marker="o", label="train")
        if f"val_{what}" in c:  # a final refit has no validation split
            ax.plot(c["epoch"], c[f"val_{what}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)
    return True


def misclassified_grid(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, n: int,
                       title: str, path: Path) -> None:
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    cols = max(1, min(5, len(order)))
    rows = max(1, math.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"true: {CLASSES[labels[i]]}\npred: {CLASSES[pred[i]]} "
                     f"({probs[i, pred[i]]:.2f})", fontsize=8)
    if len(order) == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle(title)
    _save(fig, path)
