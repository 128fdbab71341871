"""Training batches: the seeded epoch order, and augmentation of whole uint8 batches."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from fmnist.data import Split, Stats, to_input
from fmnist.params import Augment
from fmnist.seeds import derive_seed


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (a batch's random draws) on ``device``, without making the
    host wait: a plain copy from pageable memory to a GPU waits for every kernel already
    queued, so the host could not prepare the next step while the GPU runs this one."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment_batch(x: torch.Tensor, crop_padding: int, hflip: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a whole uint8 batch.

    Both come down to one gather: each output pixel's index into the padded image is
    computed for the batch at once, so there is no per-image Python work. The random
    draws (a few numbers per image) come from the CPU ``generator`` wherever ``x`` lives,
    so a batch is the same on a GPU as on the CPU; the pixel work runs on ``x``'s device.
    """
    n, h, w = x.shape
    p, dev = crop_padding, x.device
    cols = torch.arange(w, device=dev).expand(n, w)
    if hflip:
        flip = to_device(torch.rand(n, generator=generator) < 0.5, dev)
        cols = torch.where(flip[:, None], (w - 1) - cols, cols)
    if p:
        x = F.pad(x, (p, p, p, p))
        oy, ox = to_device(torch.randint(0, 2 * p + 1, (2, n, 1, 1), generator=generator),
                           dev)
    else:
        oy = ox = torch.zeros((n, 1, 1), dtype=torch.int64, device=dev)
    idx = (oy + torch.arange(h, device=dev)[None, :, None]) * (w + 2 * p) + ox \
        + cols[:, None, :]
    return x.reshape(n, -1).gather(1, idx.reshape(n, -1)).reshape(n, h, w)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's shard of a seeded permutation of ``range(n)`` for one epoch.

    Seeded by (seed, epoch) alone, so an epoch's order does not depend on what ran
    before it: a resumed run sees the same batches as an uninterrupted one, and the
    ranks of a distributed run see disjoint shards that together cover the epoch.
    """
    g = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
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
    return torch.where(to_device(mask, x.device), to_device(noise, x.device), x)


def train_batches(split: Split, batch_size: int, order: torch.Tensor, stats: Stats | None,
                  augment: Augment,
                  generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented, normalized training batches in ``order``, on the split's
    device (a split kept on the GPU is batched and augmented there).

    Augmentations that are off draw no random numbers, so turning one on leaves the
    others' draws as they were.
    """
    order = order.to(split.images.device)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = split.images[idx]
        if augment.crop_padding or augment.hflip:
            x = augment_batch(x, augment.crop_padding, augment.hflip, generator)
        if augment.erase:
            x = erase_batch(x, augment.erase, augment.erase_area, augment.erase_ratio,
                            generator)
        yield to_input(x, stats), split.labels[idx]
