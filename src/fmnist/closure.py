"""Which project files a script runs: its import closure inside the package.

Computed once, here, for two users: the test that keeps each stage's ``deps`` in
``dvc.yaml`` honest, and the resume fingerprint, so that a saved training state is
resumed only by the code that wrote it. Found with ``ast``: module-level and
function-level imports count alike, and importing any ``fmnist.X`` runs
``fmnist/__init__.py`` too.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE = __name__.split(".")[0]
SRC = Path(__file__).resolve().parents[1]  # the folder that holds the package


def _module_file(src: Path, module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = src.joinpath(*parts)
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def _imported_modules(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
            # `from fmnist import figures` imports the submodule fmnist.figures
            mods.update(f"{node.module}.{a.name}" for a in node.names)
    return mods


def import_closure(script: Path, src: Path = SRC) -> set[Path]:
    """``script`` and every package file (under ``src``) that running it executes."""
    seen: set[Path] = set()
    todo = [Path(script)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            parts = module.split(".")
            # every package on the way is imported too: fmnist/__init__.py
            for i in range(1, len(parts) + 1):
                f = _module_file(src, ".".join(parts[:i]))
                if f is not None and f not in seen:
                    todo.append(f)
    return seen


def module_closure(module: str, src: Path = SRC) -> set[Path]:
    """The closure of a package module, e.g. ``fmnist.train``."""
    path = _module_file(src, module)
    if path is None:
        raise ValueError(f"no module {module} under {src}")
    return import_closure(path, src)


def files_digest(paths: Iterable[Path], root: Path) -> str:
    """SHA-256 over files' paths (relative to ``root``) and contents, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode())
        h.update(b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
