"""A trained model as ONNX, in standard operators only, and its check against PyTorch.

The exported graph takes float32 images of shape (N, 1, 28, 28) with pixels in [0, 1]
(``uint8 / 255``) and returns the 10 logits; the input normalization of the model's
``meta.json`` is inside the graph, so a program outside this project needs nothing
else. The model's name, classes, recorded test-time view and input contract are in the
file's metadata (key ``fmnist``, a JSON object).

The project's inference layers become standard operators: the LRN (whose training form
is an autograd Function with a hand-written backward) a 1x1 convolution of the squares
with its banded window matrix, then Add, Pow, Mul; the pool-first ReLU + MaxPool
MaxPool then Relu; dropout, the identity at inference, nothing. Exported with
PyTorch's ``torch.export``-based exporter; the file is the same bytes run to run: the
exporter's per-node debug metadata (stack traces with absolute paths, FX node names)
is dropped and the producer version carries no build tag.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmnist import CLASSES
from fmnist.common import UserError
from fmnist.data import Split
from fmnist.files import atomic_path
from fmnist.inference import input_stats, predict_logits
from fmnist.models import INPUT_SHAPE, Dropout, LocalResponseNorm, _band
from fmnist.predict import ONNX_META_KEY
from fmnist.views import SINGLE

INPUT_NAME, OUTPUT_NAME = "images", "logits"


class LRNOps(nn.Module):
    """``LocalResponseNorm`` in plain operators: each channel's window sum of squares is
    a 1x1 convolution with the same banded matrix, then ``x * (k + sum)^-beta``. Works
    for any window size (ONNX's own LRN centres an even window one channel off from
    PyTorch's)."""

    def __init__(self, lrn: LocalResponseNorm, channels: int):
        super().__init__()
        self.k, self.beta = lrn.k, lrn.beta
        band = _band(channels, lrn.size, lrn.alpha / lrn.size, torch.float32,
                     torch.device("cpu"))
        self.register_buffer("window", band.T.contiguous()[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.conv2d(x * x, self.window)
        return x * (s + self.k).pow(-self.beta)


class Normalized(nn.Module):
    """Pixels in [0, 1] -> the model's normalized input -> logits."""

    def __init__(self, model: nn.Module, mean: float, std: float):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def export_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference in standard operators: each LRN as ``LRNOps``
    (sized by the convolution before it), dropout gone."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        channels = None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                channels = child.out_channels
            if isinstance(child, LocalResponseNorm):
                if channels is None:
                    raise ValueError("an LRN without a convolution before it")
                setattr(parent, name, LRNOps(child, channels))
            elif isinstance(child, Dropout | nn.Dropout):
                setattr(parent, name, nn.Identity())
    return model


def onnx_metadata(meta: dict[str, Any], tta: str) -> dict[str, Any]:
    return {"model": meta["model"], "title": meta["title"], "classes": list(CLASSES),
            "tta": tta, "input": "float32 (N, 1, 28, 28), pixels / 255: a light garment "
            "on black", "output": "logits (N, 10); softmax for probabilities"}


def export_onnx(model: nn.Module, meta: dict[str, Any], tta: str, path: Path,
                opset: int) -> None:
    import onnx

    norm = meta.get("normalize") or {"mean": 0.0, "std": 1.0}
    form = Normalized(export_form(model), norm["mean"], norm["std"]).eval()
    example = torch.zeros(2, *INPUT_SHAPE)  # a batch of 1 would be specialized
    program = torch.onnx.export(
        form, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
        verbose=False)
    proto = program.model_proto
    strip_debug(proto)
    proto.producer_version = torch.__version__.split("+")[0]
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(onnx_metadata(meta, tta),
                                                       sort_keys=True)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString(deterministic=True))


def strip_debug(proto) -> None:
    """Drop what the exporter records for debugging: per-node and per-graph metadata
    (stack traces with absolute paths, FX node names, module paths) and doc strings."""
    def graphs(g):
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from graphs(attr.g)
                for sub in attr.graphs:
                    yield from graphs(sub)

    for g in graphs(proto.graph):
        del g.metadata_props[:]
        g.doc_string = ""
        for node in g.node:
            del node.metadata_props[:]
            node.doc_string = ""
        for value in (*g.input, *g.output, *g.value_info, *g.initializer):
            if hasattr(value, "metadata_props"):
                del value.metadata_props[:]
            value.doc_string = ""
    for f in proto.functions:
        del f.metadata_props[:]
        for node in f.node:
            del node.metadata_props[:]
    proto.doc_string = ""


@dataclass(frozen=True)
class Agreement:
    images: int
    same_class: int
    max_abs_logit_diff: float

    @property
    def bound(self) -> float:
        """The power of ten above the largest difference: what the card states, since
        ONNX Runtime's kernels (and so the last digits) differ from CPU to CPU."""
        return 10.0 ** math.ceil(math.log10(self.max_abs_logit_diff)) \
            if self.max_abs_logit_diff > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "same_class": self.same_class,
                "max_abs_logit_diff": self.max_abs_logit_diff}


def check_onnx(path: Path, model: nn.Module, meta: dict[str, Any], split: Split,
               batch_size: int, tolerance: float, threads: int = 0) -> Agreement:
    """ONNX Runtime against PyTorch (fp32, one view) on every image of ``split``; a
    UserError unless every predicted class agrees and every logit is within
    ``tolerance``."""
    from fmnist.predict import OnnxModel  # noqa: PLC0415 (onnxruntime: only here)

    torch_logits = predict_logits(model, split, input_stats(meta), batch_size,
                                  torch.device("cpu")).numpy()
    onnx_logits = OnnxModel(path, batch_size, threads).logits(split.images.numpy(), SINGLE)
    agreement = Agreement(
        images=len(split),
        same_class=int((torch_logits.argmax(1) == onnx_logits.argmax(1)).sum()),
        max_abs_logit_diff=float(np.abs(torch_logits - onnx_logits).max(initial=0.0)))
    if agreement.same_class != agreement.images or \
            not agreement.max_abs_logit_diff < tolerance:
        raise UserError(
            f"{path}: ONNX Runtime disagrees with PyTorch on the test split: "
            f"{agreement.images - agreement.same_class} of {agreement.images} classes "
            f"differ, largest logit difference {agreement.max_abs_logit_diff:.3g} "
            f"(allowed: < {tolerance:g})")
    return agreement
