"""Named sets of params (``presets/NAME.yaml``) as ``dvc exp run -S`` arguments.

    dvc exp run -n writeup $(fmnist presets writeup)

A preset is a partial params.yaml; this flattens it into ``--set-param section.key=value``
arguments, so the experiment is an ordinary DVC experiment, diffable like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fmnist.common import UserError

PRESETS = Path("presets")  # in the project, beside params.yaml


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def load_preset(name: str, folder: Path = PRESETS) -> dict[str, Any]:
    path = Path(name) if name.endswith((".yaml", ".yml")) else folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise UserError(f"no preset {name!r} (known in {folder}/: {known})")
    try:
        preset = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(preset, dict):
        raise UserError(f"{path} must hold a mapping of params sections")
    return preset


def set_args(preset: dict[str, Any]) -> list[str]:
    # JSON spelling of values is also YAML, which is how DVC parses -S values.
    return [f"--set-param={key}={json.dumps(value)}" for key, value in flatten(preset).items()]
