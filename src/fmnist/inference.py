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
from fmnist.views import MIRROR, SINGLE, VIEWS


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
def predict_views(model: nn.Module, split: Split, stats: Stats | None, batch_size: int,
                  device: torch.device, amp: str = "none",
                  views: tuple[str, ...] = VIEWS) -> dict[str, torch.Tensor]:
    """Logits (float32, on the CPU) for every image of ``split``, in order, in each of
    ``views`` (some of ``fmnist.views.VIEWS``), in one pass: each image's own logits are
    computed once and serve both views."""
    if not views or set(views) - set(VIEWS):
        raise ValueError(f"unknown test-time views {views!r} (known: {', '.join(VIEWS)})")
    model.eval()
    out: dict[str, list[torch.Tensor]] = {view: [] for view in views}
    for x, _ in eval_batches(split, batch_size, stats):
        x = x.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x).float()
            if MIRROR in out:
                out[MIRROR].append(((logits + model(x.flip(-1)).float()) / 2).cpu())
        if SINGLE in out:
            out[SINGLE].append(logits.cpu())
    return {view: torch.cat(o) if o else torch.empty(0, NUM_CLASSES) for view, o in out.items()}


def predict_logits(model: nn.Module, split: Split, stats: Stats | None, batch_size: int,
                   device: torch.device, amp: str = "none",
                   view: str = SINGLE) -> torch.Tensor:
    """``predict_views`` of one view."""
    return predict_views(model, split, stats, batch_size, device, amp, (view,))[view]


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()
