"""Small synthetic Fashion-MNIST look-alikes: IDX files with a learnable class structure.

The tests use these instead of the real data, so they need no network and no data
package. Each class is a fixed random pattern
plus per-image noise and a random shift, so a model can learn it but not in one step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist.idx import raw_name, write_idx
from fmnist.params import RAW_FILES


def make_split(n: int, seed: int, noise: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    templates = np.random.default_rng(12345).random((10, 28, 28)) > 0.65
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = templates[labels] * 180.0 + rng.normal(40.0, noise, (n, 28, 28))
    shifts = rng.integers(-1, 2, (n, 2))
    for i, (dy, dx) in enumerate(shifts):
        images[i] = np.roll(images[i], (int(dy), int(dx)), axis=(0, 1))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_dataset(out: str | Path, n_train: int = 600, n_test: int = 200,
                  seed: int = 0, compressed: bool = True) -> dict[str, str]:
    """Write the four IDX files into ``out``, as a source serves them (.gz) or, with
    ``compressed=False``, as ``download`` stores them; return source name -> SHA-256
    for params."""
    out = Path(out)
    train, test = make_split(n_train, seed), make_split(n_test, seed + 1)
    arrays = (train[0], train[1], test[0], test[1])
    return {name: write_idx(out / (name if compressed else raw_name(name)), arr)
            for name, arr in zip(RAW_FILES, arrays, strict=True)}
