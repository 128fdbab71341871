"""Inference with a model: logits over a split, its test-time views, loss and accuracy.

Used by training-time validation, by ``evaluate`` and by any command that classifies
images, so all of them see the same inputs and the same views.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fmnist import NUM_CLASSES
from fmnist.common import UserError
from fmnist.data import Split, Stats, eval_batches
from fmnist.runtime import autocast

# Test-time views: each image once, or the mean of the logits of each image and its
# mirror image (the models train with horizontal flips, so both are images they know).
VIEWS = ("none", "hflip")


def input_stats(meta: dict[str, Any]) -> Stats | None:
    """How a trained model's inputs were normalized, from its ``meta.json``: a finite
    mean and a positive std, or a UserError naming the file."""
    norm = meta.get("normalize")
    if not norm:
        return None
    try:
        mean, std = norm["mean"], norm["std"]
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                 for v in (mean, std)) and std > 0
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"meta.json of {meta.get('model', 'the model')}: normalize must hold "
                        f"a finite mean and a positive std (got {str(norm)[:80]}); "
                        "re-run its training stage")
    return Stats(float(mean), float(std))


@torch.no_grad()
def predict_logits(model: nn.Module, split: Split, stats: Stats | None, batch_size: int,
                   device: torch.device, amp: str = "none",
                   view: str = "none") -> torch.Tensor:
    """Logits (float32, on the CPU) for every image of ``split``, in order, in one of
    the ``VIEWS``."""
    if view not in VIEWS:
        raise ValueError(f"unknown test-time view {view!r}")
    model.eval()
    out = []
    for x, _ in eval_batches(split, batch_size, stats):
        x = x.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x).float()
            if view == "hflip":
                logits = (logits + model(x.flip(-1)).float()) / 2
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.empty(0, NUM_CLASSES)


@torch.no_grad()
def predict_views(model: nn.Module, split: Split, stats: Stats | None, batch_size: int,
                  device: torch.device, amp: str = "none") -> dict[str, torch.Tensor]:
    """The logits of every one of the ``VIEWS`` in one pass: each image's own logits are
    computed once and serve both views. The same numbers as ``predict_logits`` per view
    (the same batches, the same operations)."""
    model.eval()
    plain, mirrored = [], []
    for x, _ in eval_batches(split, batch_size, stats):
        x = x.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x).float()
            mirrored.append(((logits + model(x.flip(-1)).float()) / 2).cpu())
        plain.append(logits.cpu())
    if not plain:
        return {view: torch.empty(0, NUM_CLASSES) for view in VIEWS}
    return {"none": torch.cat(plain), "hflip": torch.cat(mirrored)}


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()
