"""The one seed derivation of the project.

Every random stream of a run (the epoch's sample order, its augmentations, dropout) is
seeded from the run's ``seed`` and where it is used: ``derive_seed(seed, stream,
epoch, rank)``. Nothing depends on what ran before, so a resumed run repeats exactly
the draws of an uninterrupted one and needs no saved RNG state, and the ranks of a
distributed run draw independent streams. Hashing (rather than mixing with primes)
keeps nearby inputs, such as seed 1 epoch 2 and seed 2 epoch 1, far apart.
"""

from __future__ import annotations

import hashlib

STREAMS = ("order", "augment", "torch")


def derive_seed(seed: int, stream: str, epoch: int = 0, rank: int = 0) -> int:
    """A 63-bit seed for ``stream`` ("order", "augment" or "torch") of an epoch and rank."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}")
    digest = hashlib.sha256(f"{seed}/{stream}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
