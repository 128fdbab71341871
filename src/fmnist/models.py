"""The models: LeNet-5 and the scaled-down AlexNet, their layers, each one's ``arch``
schema beside it, and the registry (``MODELS``) that everything else iterates over.

Adding a model is one ``Spec`` in ``MODELS`` below, its ``train_NAME`` section in
``params.yaml`` and its ``train-NAME`` stage in ``dvc.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from fmnist import NUM_CLASSES
from fmnist.common import UserError
from fmnist.params import PARAMS_FILE, Strict, TrainParams, load_section, validate

INPUT_SHAPE = (1, 28, 28)


# ---------------------------------------------------------------- local response norm


def _band(channels: int, size: int, scale: float, dtype: torch.dtype,
          device: torch.device) -> torch.Tensor:
    """(C, C) matrix whose column c holds ``scale`` at rows c - size//2 .. c + (size-1)//2:
    multiplying a (rows, C) matrix by it sums each channel's window, zeros past the edges.
    Built where it is used: a copy from the host would make the host wait for the GPU."""
    i = torch.arange(channels, device=device)
    j, c = i[:, None], i[None, :]
    return ((j >= c - size // 2) & (j <= c + (size - 1) // 2)).to(dtype) * scale


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C): a view for channels-last tensors (the models' layout)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _unrows(m: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    n, c, h, w = shape
    return m.view(n, h, w, c).permute(0, 3, 1, 2)


class _LRNFunction(torch.autograd.Function):
    """LRN with a hand-written backward.

    Autograd through ``torch.nn.LocalResponseNorm`` (pad + avg_pool3d + pow) costs a
    large share of the AlexNet's CPU training step (docs/speed.md). Here each channel's
    window sum is one matrix product of the (pixels, channels) view of the activations
    with a banded (C, C) matrix, and the gradient is analytic: a few passes over the
    activations instead of a dozen. Tested against torch's module.

    Under mixed precision the input arrives in bf16 or fp16, whose 8 (11) bits of
    mantissa would lose the small ``alpha/n * sum(x^2)`` next to ``k``: the squares, the
    sums, the scale and the gradient are computed in fp32 and only the result is
    rounded back. fp64 stays fp64.
    """

    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        # autocast would run the window-sum product in bf16: it is off in here
        with torch.autocast(x.device.type, enabled=False):
            return _LRNFunction._forward(ctx, x, size, alpha, beta, k)

    @staticmethod
    def _forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        xr = _rows(x).to(work)
        band = _band(x.shape[1], size, alpha / size, work, x.device)
        d = torch.mm(xr * xr, band).add_(k)
        # d^-0.75 (AlexNet's beta) as rsqrt(d * sqrt(d)): three cheap ops instead of pow
        scale = torch.rsqrt(d * torch.sqrt(d)) if beta == 0.75 else d.pow(-beta)
        y = torch.empty(xr.shape, dtype=x.dtype, device=x.device)
        torch.mul(xr, scale, out=y)  # rounded once, straight into x's dtype
        if ctx.needs_input_grad[0]:  # inference (evaluate, predict) keeps nothing
            ctx.save_for_backward(x, scale, scale / d, band)
        ctx.beta = beta
        return _unrows(y, x.shape)

    @staticmethod
    def backward(ctx, g):
        with torch.autocast(g.device.type, enabled=False):
            return _LRNFunction._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        x, scale, r, band = ctx.saved_tensors
        # dy_c/dx_j = scale_c [c == j] - (2 alpha beta / n) x_c x_j d_c^(-beta-1), j in W(c)
        xr, gr = _rows(x).to(scale.dtype), _rows(g).to(scale.dtype)
        s = torch.mm(gr * xr * r, band.T)  # band holds alpha/n; .T: the window transposed
        grad = torch.addcmul(gr * scale, xr, s, value=-2.0 * ctx.beta)
        return _unrows(grad.to(g.dtype), x.shape), None, None, None, None


class LocalResponseNorm(nn.Module):
    """Drop-in for ``torch.nn.LocalResponseNorm`` (same arithmetic, faster backward)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError("LocalResponseNorm expects (N, C, H, W) input")
        return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class Dropout(nn.Module):
    """Inverted dropout, as ``torch.nn.Dropout``: zero each element with probability p.

    The keep-mask is drawn a byte per element: ``random_`` fills 64-bit integers over
    their whole range (every bit uniform and independent), and each of their bytes is
    compared with ``256 p``. That takes one draw of the CPU generator per 8 elements,
    where ``torch.rand`` takes one per element and ``bernoulli_`` is slower still
    (measured in docs/speed.md). It is exact where ``256 p`` is
    a whole number (0.5, 0.25, ...); any other ``p`` draws ``torch.rand`` as before. The
    mask is applied as a product with the scaled mask in the input's dtype (one multiply
    forward and backward, where ``torch.where`` took twice as long): exact where
    ``1/(1-p)`` is, as for the default 0.5; in bf16 another ``p`` rounds the scale once,
    by at most 2**-9 of it.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * self.keep_mask(x).to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """True for each element kept, each with probability 1 - p, independently."""
        threshold = self.p * 256
        if not threshold.is_integer():
            return torch.rand(x.shape, device=x.device) >= self.p
        n = x.numel()
        words = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device)
        words.random_(torch.iinfo(torch.int64).min, None)  # None: up to int64's max
        return words.view(torch.uint8)[:n].view(x.shape) >= int(threshold)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLUMaxPool(nn.Module):
    """ReLU then max-pooling, computed as max-pooling then ReLU.

    The two orders give exactly the same values and gradients: max is monotone, ties
    resolve to the same (first) element of a window, and ReLU passes a gradient exactly
    where the pooled maximum is positive (tested, ties included). Pooling first runs the
    ReLU and its backward on a quarter of the elements (the gain: docs/speed.md).
    """

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.nn.functional.max_pool2d(x, self.kernel_size))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


# ---------------------------------------------------------------- the models


class LeNetArch(Strict):
    """LeNet-5 as in the write-up has nothing to tune: its 44,426 parameters are fixed."""


class LeNet5(nn.Module):
    def __init__(self, arch: LeNetArch | None = None):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), ReLUMaxPool(2),     # 6x24x24 -> 6x12x12
            nn.Conv2d(6, 16, 5), ReLUMaxPool(2),    # 16x8x8 -> 16x4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AlexNetArch(Strict):
    channels: list[int] = Field(min_length=3, max_length=16)
    fc: int = Field(ge=1, le=65536)
    dropout: float = Field(ge=0, lt=1)
    lrn: bool
    lrn_size: int = Field(ge=1, le=64)

    @field_validator("channels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(not 1 <= c <= 4096 for c in v):
            raise ValueError("every channel width must be between 1 and 4096")
        return v


class AlexNetSmall(nn.Module):
    """(CNN -> RN -> MP)^2 -> (CNN^k -> MP) -> (FC -> DO)^2 -> Linear, for 28x28x1 input.

    ``channels`` holds the widths of the first block's 5x5 convolution, the second
    block's 3x3 convolution, then the third block's 3x3 convolutions (three as committed;
    the original code's variant has two). Each max-pool halves: 28 -> 14 -> 7 -> 3.
    """

    def __init__(self, arch: AlexNetArch):
        super().__init__()
        a, c = arch, arch.channels

        def norm() -> list[nn.Module]:
            return [LocalResponseNorm(a.lrn_size)] if a.lrn else []

        layers: list[nn.Module] = [nn.Conv2d(1, c[0], 5, padding=2), nn.ReLU(), *norm(),
                                   nn.MaxPool2d(2),
                                   nn.Conv2d(c[0], c[1], 3, padding=1), nn.ReLU(), *norm(),
                                   nn.MaxPool2d(2)]
        for cin, cout in zip(c[1:-1], c[2:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c[-1] * 3 * 3, a.fc), nn.ReLU(), Dropout(a.dropout),
            nn.Linear(a.fc, a.fc), nn.ReLU(), Dropout(a.dropout),
            nn.Linear(a.fc, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Spec:
    """One model: its name, title, arch schema and builder. Its params section
    (``train_NAME``), stage (``train-NAME``) and params type follow from the name."""

    name: str
    title: str
    arch: type[Strict]
    build: Callable[[Any], nn.Module]

    @property
    def section(self) -> str:
        return f"train_{self.name}"

    @property
    def stage(self) -> str:
        return f"train-{self.name}"

    @property
    def params(self) -> type[TrainParams]:
        return TrainParams[self.arch]

    def load_params(self, path: str | Path = PARAMS_FILE) -> TrainParams:
        """The ``train_NAME`` section of ``path``, validated, its ``arch`` typed."""
        return load_section(self.section, self.params, path)


MODELS: dict[str, Spec] = {s.name: s for s in (
    Spec("lenet", "LeNet-5", LeNetArch, LeNet5),
    Spec("alexnet", "Scaled-down AlexNet", AlexNetArch, AlexNetSmall),
)}


def spec(name: str) -> Spec:
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r} (known: {', '.join(MODELS)}; their "
                        f"stages: {', '.join(s.stage for s in MODELS.values())})") from None


def build_model(name: str, arch: Strict | dict[str, Any] | None = None,
                where: str | None = None, source: str | Path = PARAMS_FILE) -> nn.Module:
    """Build model ``name`` from its ``arch`` (a typed arch, or a dict that is validated:
    errors name the file ``source`` and the key ``where``)."""
    s = spec(name)
    if not isinstance(arch, s.arch):
        arch = validate(s.arch, arch or {}, where or f"{s.section}.arch", source)
    return s.build(arch)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Bytes per trainable parameter in training: weights, gradients and two Adam moments
# (fp32); activations come on top, so the bound is a floor of what training needs
TRAINING_BYTES_PER_PARAM = 16


def fits_in_memory(s: Spec, params: TrainParams, where: str) -> None:
    """Refuse an architecture whose training state alone exceeds this machine's memory
    (counted on PyTorch's meta device: no memory is allocated), before any stage starts
    and is killed for it with no line."""
    import os

    with torch.device("meta"):
        n = count_parameters(s.build(params.arch))
    need = n * TRAINING_BYTES_PER_PARAM
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise UserError(f"{where}.arch: {n:,} parameters need at least {need / 2**30:.1f} "
                        f"GiB to train (weights, gradients, Adam's moments), more than this "
                        f"machine's {have / 2**30:.1f} GiB; make the model smaller")
