"""A model, layer by layer, as a markdown table: for docs/models.md and the model cards."""

from __future__ import annotations

import torch
from torch import nn

from fmnist import models
from fmnist.markdown import md, table
from fmnist.models import INPUT_SHAPE, count_parameters


def layer_name(mod: nn.Module) -> str:
    """A short label for a layer, as the write-up's tables name them."""
    if isinstance(mod, nn.Conv2d):
        k, p = mod.kernel_size[0], mod.padding[0]
        return f"Conv {k}x{k}, {mod.in_channels}->{mod.out_channels}" + (f", pad {p}" if p else "")
    if isinstance(mod, nn.MaxPool2d):
        return f"MaxPool {mod.kernel_size}"
    if isinstance(mod, nn.Linear):
        return f"Dense {mod.in_features}->{mod.out_features}"
    if isinstance(mod, nn.Dropout | models.Dropout):
        return f"Dropout {mod.p:g}"
    if isinstance(mod, models.LocalResponseNorm):
        return f"LRN size {mod.size}"
    if isinstance(mod, models.ReLUMaxPool):
        return f"ReLU + MaxPool {mod.kernel_size}"
    return type(mod).__name__


def summary(model: nn.Module) -> list[tuple[str, tuple[int, ...], int]]:
    """(layer, output shape, trainable parameters) for each leaf module, in call order."""
    rows: list[tuple[str, tuple[int, ...], int]] = []
    hooks = []
    for module in model.modules():
        if len(list(module.children())) == 0:
            def hook(mod, _inp, out):
                rows.append((layer_name(mod), tuple(out.shape[1:]), count_parameters(mod)))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *INPUT_SHAPE))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return rows


def layer_table(model: nn.Module, title: str) -> str:
    """Markdown: a bold title line, then one row per layer and the total."""
    rows = [[str(i), f"`{label}`", "x".join(map(str, shape)), f"{n:,}"]
            for i, (label, shape, n) in enumerate(summary(model), 1)]
    rows.append(["", "**Total trainable**", "", f"**{count_parameters(model):,}**"])
    return (f"**{md(title)}** (input {'x'.join(map(str, INPUT_SHAPE))})\n\n"
            + table(["#", "Layer", "Output shape", "Parameters"], rows, "rllr"))
