"""The installed stack against ``requirements.lock``: every package, at its exact version.

``make install`` installs exactly the lock (with hashes, no dependency resolution);
``make lock`` re-resolves it (``tools/lock.py``). A training run records no digest of
the stack (only the torch version, in its timings); ``fmnist reproduce`` names each
package installed unlike the lock when a result is not bit-identical.
"""

from __future__ import annotations

import hashlib
import re
from importlib import metadata
from pathlib import Path

LOCK_FILE = "requirements.lock"
# Installed, never locked: the installers themselves and this project
NOT_LOCKED = frozenset({"pip", "fmnist"})


def canonical(name: str) -> str:
    """PEP 503's normalized name: ``Flufl.Lock`` and ``flufl-lock`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: str | Path = LOCK_FILE) -> dict[str, str]:
    """name -> version, from a requirements file of ``name==version`` lines."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def installed() -> dict[str, str]:
    """name -> version of every package this interpreter sees (local version labels,
    as torch's ``+cu130``, dropped: the lock pins the release)."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) not in NOT_LOCKED:
            out[canonical(name)] = dist.version.split("+")[0]
    return out


def differences(lock: str | Path = LOCK_FILE) -> list[str]:
    """One line per package installed at another version than the lock's, missing, or
    installed but not in the lock."""
    want, have = locked(lock), installed()
    lines = []
    for name in sorted(set(want) | set(have)):
        if name not in have:
            lines.append(f"{name}: locked {want[name]}, not installed")
        elif name not in want:
            lines.append(f"{name}: {have[name]} installed, not in {Path(lock).name}")
        elif want[name] != have[name]:
            lines.append(f"{name}: locked {want[name]}, installed {have[name]}")
    return lines


def digest() -> str:
    """A short hash of every installed package and version: equal digests, equal stacks."""
    text = "\n".join(f"{k}=={v}" for k, v in sorted(installed().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
