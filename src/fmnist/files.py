"""Generic file I/O that every module may use: atomic writes, folders swapped in whole,
and torch's save and load made deterministic and safe.

Outputs are written to a temporary path beside their target and renamed over it, so a
reader (or DVC) never sees a half-written file, whether the writer fails, is
interrupted or is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fmnist.common import first_line


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp's 0600 would surprise whoever shares the outputs
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; swap it in for ``path`` only on success.

    An output folder is either the old one or the complete new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save``, atomically, and the same bytes for the same tensors.

    Saved to a path, torch names the archive's folder inside the zip after the file,
    here a random temporary name: every run would then write a different file, and DVC
    would see new data where nothing changed. Saved to an open file, it is "archive".
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


class Unreadable(Exception):
    """A file that ``load_torch`` could not read as plain tensors and containers; its
    message is one line."""


def load_torch(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with ``weights_only=True`` (no pickled code runs) onto the CPU;
    every way a file can be damaged is an ``Unreadable`` with a one-line message."""
    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError,
            zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise Unreadable(first_line(exc, 120)) from None
