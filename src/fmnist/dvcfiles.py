"""DVC's files as a commit carries them (dvc.yaml, dvc.lock), bounded before any parser
sees them: a file that is too large, nested too deep, or whose aliases expand to too
many nodes (a "billion laughs") is one error naming it, not a hang in DVC's reader or a
RecursionError. The check walks the parser's event stream, which is flat: it costs one
pass over the text, whatever the file holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fmnist.common import UserError

MAX_BYTES = 4 << 20     # this project's dvc.lock is 18 kB
MAX_DEPTH = 64          # DVC's files nest 6 levels
MAX_NODES = 1_000_000   # scalars and collections once every alias is expanded


def check_size(size: int, where: str) -> None:
    if size > MAX_BYTES:
        raise UserError(f"{where}: {size:,} bytes, more than a DVC file holds "
                        f"({MAX_BYTES:,}); restore it from git")


def invalid(where: str, exc: yaml.YAMLError) -> UserError:
    return UserError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})")


def check_yaml(text: str, where: str) -> None:
    """Refuse ``text`` when it is larger, deeper or (aliases expanded) bigger than any
    DVC file of a pipeline; a UserError naming ``where`` otherwise."""
    check_size(len(text.encode(errors="replace")), where)
    sizes: dict[str, int] = {}          # anchor -> its node's size, aliases expanded
    stack: list[list[Any]] = [[None, 0]]  # open collections: [anchor, size so far]
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append([event.anchor, 1])
                if len(stack) > MAX_DEPTH:
                    raise UserError(f"{where}: nested more than {MAX_DEPTH} levels deep, "
                                    "deeper than any DVC file; restore it from git")
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                anchor, size = stack.pop()
            elif isinstance(event, yaml.ScalarEvent):
                anchor, size = event.anchor, 1
            elif isinstance(event, yaml.AliasEvent):
                anchor, size = None, sizes.get(event.anchor, 1)
            else:
                continue
            if anchor is not None:
                sizes[anchor] = size
            stack[-1][1] += size
            if stack[-1][1] > MAX_NODES:
                raise UserError(f"{where}: its aliases expand to more than {MAX_NODES:,} "
                                "nodes, far more than any DVC file; restore it from git")
    except yaml.YAMLError as exc:
        raise invalid(where, exc) from None


def load_yaml(text: str, where: str) -> Any:
    """``text`` parsed, once ``check_yaml`` has bounded it."""
    check_yaml(text, where)
    try:  # an undefined alias, a mapping as a key: errors the events alone do not show
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise invalid(where, exc) from None


def check_files(root: Path) -> None:
    """Bound ``root``'s dvc.yaml and dvc.lock before `dvc` (or anything) reads them."""
    for name in ("dvc.yaml", "dvc.lock"):
        path = root / name
        if path.is_file():
            check_size(path.stat().st_size, str(path))  # before reading it whole
            check_yaml(path.read_text(errors="replace"), str(path))


def lock_outs(lock: Any, stage: str, where: str) -> dict[str, str]:
    """path -> md5 of a stage's outputs in a parsed dvc.lock; a UserError where the
    file is not shaped as DVC writes it."""
    entry = lock["stages"].get(stage, {}) if isinstance(lock, dict) else None
    outs = entry.get("outs", []) if isinstance(entry, dict) else None
    if not isinstance(outs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("path"), str) for o in outs):
        raise UserError(f"{where}: stage {stage!r} is not shaped as DVC writes it "
                        "(outs: a list of path entries); `dvc repro` and commit it again")
    return {o["path"]: str(o.get("md5", "")) for o in outs}
