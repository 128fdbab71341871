"""Named sets of params (``presets/NAME.yaml``) as ``dvc exp run -S`` arguments.

    dvc exp run -n writeup $(fmnist presets writeup)

A preset is a partial params.yaml; this flattens it into ``--set-param section.key=value``
arguments, so the experiment is an ordinary DVC experiment, diffable like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmnist.common import UserError
from fmnist.params import read_params

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
    preset = read_params(path)  # YAML 1.2, as DVC will read the values
    for key, value in flatten(preset).items():
        if not isinstance(value, str | int | float | bool | list) or (
                isinstance(value, list) and not all(isinstance(v, str | int | float | bool)
                                                    for v in value)):
            raise UserError(f"{path}: {key}: {type(value).__name__} values cannot be "
                            "set with `dvc exp run -S`; use numbers, strings, booleans "
                            "or lists of them")
    return preset


def set_args(preset: dict[str, Any]) -> list[str]:
    # JSON spelling of values is also YAML, which is how DVC parses -S values.
    return [f"--set-param={key}={json.dumps(value)}" for key, value in flatten(preset).items()]


def shell_words(args: list[str]) -> str:
    """``args`` quoted for a POSIX shell: the README's ``eval "dvc exp run ...
    $(fmnist presets NAME)"`` keeps a value holding a space as one word."""
    import shlex

    return " ".join(shlex.quote(a) for a in args)
