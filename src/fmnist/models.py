"""LeNet-5, the scaled-down AlexNet, their layers, and the name -> model registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist.common import UserError
from fmnist.params import AlexNetArch, LeNetArch, Strict, validate

NUM_CLASSES = 10
INPUT_SHAPE = (1, 28, 28)


# ---------------------------------------------------------------- local response norm


def _window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Sum over a channel window [c - before, c + after] with zeros past the edges."""
    c = t.shape[1]
    padded = torch.nn.functional.pad(t, (0, 0, 0, 0, before, after))
    out = padded[:, 0:c].clone()
    for i in range(1, before + after + 1):
        out += padded[:, i:i + c]
    return out


class _LRNFunction(torch.autograd.Function):
    """LRN with a hand-written backward.

    Autograd through ``torch.nn.LocalResponseNorm`` (pad + avg_pool3d + pow) costs
    15-25% of the AlexNet's CPU training step; the same arithmetic as a few shifted adds
    with an analytic gradient costs a fraction of that. Tested against torch's module.

    Under mixed precision the input arrives in bf16 or fp16, whose 8 (11) bits of
    mantissa would lose the small ``alpha/n * sum(x^2)`` next to ``k``: the sums, the
    scale and the gradient are computed in fp32 and only the result is rounded back.
    An fp32 or fp64 input is used as it is (no copy, the same bits as before).
    """

    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        dtype = x.dtype
        if dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        before, after = size // 2, (size - 1) // 2
        d = _window_sum(x * x, before, after).mul_(alpha / size).add_(k)
        # d^-0.75 (AlexNet's beta) as rsqrt(d * sqrt(d)): three cheap ops instead of pow
        scale = torch.rsqrt(d * torch.sqrt(d)) if beta == 0.75 else d.pow(-beta)
        y = x * scale
        ctx.save_for_backward(x, d, scale)
        ctx.hyper = (size, alpha, beta, dtype)
        return y.to(dtype)

    @staticmethod
    def backward(ctx, g):
        x, d, scale = ctx.saved_tensors
        size, alpha, beta, dtype = ctx.hyper
        g = g.to(x.dtype)
        before, after = size // 2, (size - 1) // 2
        # dy_c/dx_j = scale_c [c == j] - (2 alpha beta / n) x_c x_j d_c^(-beta-1), j in W(c)
        t = g * x * scale / d
        s = _window_sum(t, after, before)  # transpose of the forward window
        grad = g * scale - (2.0 * alpha * beta / size) * x * s
        return grad.to(dtype), None, None, None, None


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

    The keep-mask comes from ``torch.rand`` instead of ``bernoulli_``, whose CPU kernel
    takes three times as long for the AlexNet's 4096-wide layers; the distribution of
    the mask is the same.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLUMaxPool(nn.Module):
    """ReLU then max-pooling, computed as max-pooling then ReLU.

    The two orders give exactly the same values and gradients: max is monotone, ties
    resolve to the same (first) element of a window, and ReLU passes a gradient exactly
    where the pooled maximum is positive (tested, ties included). Pooling first runs the
    ReLU and its backward on a quarter of the elements: LeNet trains 6-10% faster on the
    CPU, where those two ops on its 6x24x24 activation took 14% of the step.
    """

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.nn.functional.max_pool2d(x, self.kernel_size))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


# ---------------------------------------------------------------- the models


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


class AlexNetSmall(nn.Module):
    """(CNN -> RN -> MP)^2 -> (CNN^k -> MP) -> (FC -> DO)^2 -> Linear, for 28x28x1 input.

    ``channels`` holds the widths of the first block's 5x5 convolution, the second
    block's 3x3 convolution, then the third block's 3x3 convolutions (three by default;
    the original code's variant has two). Each max-pool halves: 28 -> 14 -> 7 -> 3.
    """

    def __init__(self, arch: AlexNetArch | None = None):
        super().__init__()
        a = arch or AlexNetArch()
        c = a.channels

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
    arch: type[Strict]
    build: Callable[[Any], nn.Module]
    title: str


REGISTRY: dict[str, Spec] = {
    "lenet": Spec(LeNetArch, LeNet5, "LeNet-5"),
    "alexnet": Spec(AlexNetArch, AlexNetSmall, "Scaled-down AlexNet"),
}


def spec(name: str) -> Spec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown model {name!r} (known: {', '.join(REGISTRY)})") from None


def build_model(name: str, arch: Strict | dict[str, Any] | None = None,
                where: str | None = None, source: str | Path = "params.yaml") -> nn.Module:
    """Build model ``name`` from its ``arch`` (a typed arch, or a dict that is validated:
    errors name the file ``source`` and the key ``where``)."""
    s = spec(name)
    if not isinstance(arch, s.arch):
        arch = validate(s.arch, arch or {}, where or f"{name}.arch", source)
    return s.build(arch)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
